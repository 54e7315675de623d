"""``kslim convert``, ``kslim profile``, ``kslim latency-table build|predict``."""

import json

import numpy as np
import pytest

from kslim.cli import main


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    import keras
    from keras import layers

    from kslim._io import atomic_save_model

    keras.utils.set_random_seed(0)
    inp = keras.Input((28, 28, 1))
    x = layers.Conv2D(8, 3, strides=2, activation="relu")(inp)
    x = layers.DepthwiseConv2D(3, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    m = keras.Model(inp, layers.Dense(10)(x), name="clinet")
    path = tmp_path_factory.mktemp("cli") / "clinet.keras"
    atomic_save_model(m, path)
    return path


def test_convert_float_and_int8(keras_file, tmp_path, capsys):
    from kslim.lite import LiteModel

    out = tmp_path / "f.tflite"
    assert main(["convert", str(keras_file), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "CONV_2D x1" in text and "max abs diff" in text
    assert LiteModel.load(out).ops()["DEPTHWISE_CONV_2D"] == 1
    q = tmp_path / "q.tflite"
    assert main(["convert", str(keras_file), "-o", str(q), "--quantize", "int8", "--calibration-samples", "50"]) == 0
    assert "argmax agreement" in capsys.readouterr().out  # bundled Fashion-MNIST used for calibration
    assert any(t["dtype"] == np.int8 for t in LiteModel.load(q).tensors())


def test_profile_and_tables(keras_file, tmp_path, capsys):
    tfl = tmp_path / "m.tflite"
    assert main(["convert", str(keras_file), "-o", str(tfl), "--no-check"]) == 0
    rep, png = tmp_path / "rep.json", tmp_path / "ops.png"
    assert main(["profile", str(tfl), "--runs", "20", "--warmup", "2", "--op-profile", "--json", str(rep),
                 "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "median" in out and "DEPTHWISE_CONV_2D" in out
    doc = json.loads(rep.read_text())
    assert doc["runs"] == 20 and len(doc["timings_ms"]) == 20 and len(doc["ops"]) == 4
    assert png.read_bytes()[:4] == b"\x89PNG"

    table = tmp_path / "t.csv"
    assert main(["latency-table", "build", str(tfl), str(keras_file), "-o", str(table), "--runs", "20",
                 "--repeats", "1"]) == 0
    assert "op configurations" in capsys.readouterr().out
    pred_json, pred_png = tmp_path / "p.json", tmp_path / "p.png"
    assert main(["latency-table", "predict", str(tfl), "--table", str(table), "--json", str(pred_json),
                 "--plot", str(pred_png)]) == 0
    out = capsys.readouterr().out
    assert "ms predicted at 1 thread" in out and "fallback" not in out
    res = json.loads(pred_json.read_text())
    assert res[0]["predicted_ms"] > 0 and res[0]["fallback_ops"] == 0
    assert pred_png.read_bytes()[:4] == b"\x89PNG"


def test_cli_bad_input(keras_file, tmp_path, capsys):
    assert main(["profile", str(tmp_path / "none.tflite")]) == 1
    assert "kslim profile: error:" in capsys.readouterr().err
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"garbage!garbage!")
    assert main(["profile", str(bad)]) == 1
    assert "TFL3" in capsys.readouterr().err
    tfl = tmp_path / "m.tflite"
    assert main(["convert", str(keras_file), "-o", str(tfl), "--no-check"]) == 0
    capsys.readouterr()
    assert main(["profile", str(tfl), "--device", "adb", "--adb", str(tmp_path / "no-adb")]) == 1
    assert "platform-tools" in capsys.readouterr().err
    assert main(["profile", str(tfl), "--device", "ssh"]) == 1
    assert "--host" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing.keras")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["latency-table", "predict", str(tfl), "--table", str(tmp_path / "none.json")]) == 1
    assert "latency-table build" in capsys.readouterr().err
