"""``kslim quantize`` and ``kslim quant-debug`` through ``kslim.cli.main``."""

import json

import numpy as np
import pytest

from kslim.cli import main


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    m = keras.Sequential([
        keras.Input((28, 28, 1), name="input"),
        layers.Conv2D(4, 3, strides=2, activation="relu", name="conv1"),
        layers.DepthwiseConv2D(3, activation="relu", name="dw"),
        layers.Conv2D(8, 1, activation="relu", name="pw"),
        layers.GlobalAveragePooling2D(name="pool"),
        layers.Dense(10, name="logits"),
    ], name="cli_tiny")
    path = tmp_path_factory.mktemp("cli") / "tiny.keras"
    m.save(path)
    return path


def test_quantize_static_with_bundled_calibration(model_path, tmp_path, capsys):
    from kslim.lite import LiteModel

    out = tmp_path / "tiny_int8.tflite"
    rc = main(["quantize", str(model_path), "-o", str(out), "--mode", "static", "--algo", "mse",
               "--calib", "small", "--batches", "2", "--batch-size", "16", "--int8-io"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "algo=mse, 32 calibration samples" in text and str(out) in text
    lite = LiteModel.load(out)
    assert lite.input_details[0]["dtype"] == np.int8
    assert any(d["dtype"] == np.int8 and len(d["shape"]) == 4 for d in lite.tensors())


def test_quantize_float16_skip_and_static_with_npy(model_path, tmp_path):
    from kslim.lite import LiteModel

    rc = main(["quantize", str(model_path), "--mode", "float16", "--skip", "logits"])
    assert rc == 0
    lite = LiteModel.load(model_path.with_name("tiny_fp16.tflite"))  # default output name
    logits_w = [d for d in lite.tensors() if "logits" in d["name"] and len(d["shape"]) == 2]
    assert logits_w and all(d["dtype"] == np.float32 for d in logits_w)
    assert any(d["dtype"] == np.float16 for d in lite.tensors())
    npy = tmp_path / "calib.npy"
    np.save(npy, np.random.default_rng(0).uniform(0, 1, (40, 28, 28, 1)).astype(np.float32))
    rc = main(["quantize", str(model_path), "-o", str(tmp_path / "s.tflite"), "--algo", "abs_max",
               "--calib", str(npy), "--batches", "1"])
    assert rc == 0 and (tmp_path / "s.tflite").is_file()


def test_quant_debug_command(model_path, tmp_path, capsys):
    js, png = tmp_path / "report.json", tmp_path / "report.png"
    rc = main(["quant-debug", str(model_path), "--algo", "abs_max", "--calib-batches", "2", "--batches", "1",
               "--batch-size", "16", "--json", str(js), "--plot", str(png)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "conv1" in text and "SNR dB" in text
    data = json.loads(js.read_text())
    assert data["algo"] == "abs_max" and data["rows"] and png.stat().st_size > 1000


def test_cli_errors(model_path, tmp_path, capsys):
    assert main(["quantize", str(tmp_path / "missing.keras")]) == 1
    assert "missing.keras" in capsys.readouterr().err
    assert main(["quantize", str(model_path), "--calib", str(tmp_path / "nope.npy")]) == 1
    assert "nope.npy" in capsys.readouterr().err
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((4, 10, 10, 1), np.float32))
    assert main(["quantize", str(model_path), "--calib", str(bad), "--algo", "abs_max"]) == 1
    assert "does not match the model input" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["quantize", str(model_path), "--algo", "entropy"])
    assert "invalid choice" in capsys.readouterr().err


def test_quantize_with_litert_recipe_and_mixed_budget(model_path, tmp_path, capsys):
    """--recipe goes through LiteRT's quantizer with kslim's --algo ranges; --size-budget chooses int4
    weights per layer and says what it moved; converter-only flags are refused before any work."""
    pytest.importorskip("ai_edge_quantizer")
    from kslim.lite import LiteModel
    from kslim.quant import tensor_types

    rc = main(["quantize", str(model_path), "--recipe", "int16x8", "--algo", "mse", "--calib", "small",
               "--batches", "1", "--batch-size", "16"])
    assert rc == 0 and "LiteRT quantizer recipe int16x8, algo=mse" in capsys.readouterr().out
    assert "INT16" in tensor_types(LiteModel.load(model_path.with_name("tiny_int16x8.tflite")).content)
    out = tmp_path / "mixed.tflite"
    rc = main(["quantize", str(model_path), "-o", str(out), "--size-budget", "0.99", "--calib", "small",
               "--batches", "1", "--batch-size", "16"])
    text = capsys.readouterr().out
    assert rc == 0 and "met: True" in text and "mixed precision" in text
    assert "INT4" in tensor_types(LiteModel.load(out).content)
    assert main(["quantize", str(model_path), "--recipe", "int8", "--per-tensor"]) == 1
    assert "--per-tensor belongs to the converter path" in capsys.readouterr().err
    assert main(["quantize", str(model_path), "--recipe", "int8", "--size-budget", "0.5"]) == 1
    assert "exclude each other" in capsys.readouterr().err
