"""The ``kslim`` command line: info, flops, demo (with a stub model), --help of every command, bad input."""

import json
import shutil
import subprocess
import sys

import keras
import pytest
from keras import layers

from kslim.cli import build_parser, main

# conv 3x3, 1 -> 4 channels on 8x8 ("same"), then Dense 256 -> 2: 9*4*64 + 256*2 MACs
TINY_MACS = 9 * 1 * 4 * 64 + 256 * 2


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny.keras"
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv"),
        layers.Flatten(name="flat"),
        layers.Dense(2, use_bias=False, name="out"),
    ], name="tiny")
    model.save(path)
    return path


@pytest.fixture(scope="module")
def shapeless_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "shapeless.keras"
    model = keras.Sequential([keras.Input((None, None, 1)), layers.Conv2D(4, 3, use_bias=False, name="conv")])
    model.save(path)
    return path


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_info(capsys):
    code, out, _ = run(capsys, "info")
    assert code == 0
    lines = [line.split(None, 1) for line in out.splitlines()]
    assert ["keras", keras.__version__] in lines
    assert {"kslim", "python", "tensorflow", "ai-edge-litert", "keras-tuner", "numpy"} <= {k for k, _ in lines}


def test_no_command_prints_help(capsys):
    code, out, _ = run(capsys)
    assert code == 2 and "usage: kslim" in out


def test_help_of_every_command(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"info", "demo", "flops"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert f"usage: kslim {name}" in capsys.readouterr().out


def test_flops(capsys, tiny_model, tmp_path):
    code, out, _ = run(capsys, "flops", str(tiny_model))
    assert code == 0
    assert f"{TINY_MACS:,}" in out and f"{2 * TINY_MACS:,}" in out
    assert "conv" not in out.split("per sample")[0]

    report = tmp_path / "r.json"
    code, out, _ = run(capsys, "flops", str(tiny_model), "--detail", "--json", str(report))
    assert code == 0 and "conv" in out and "(None, 8, 8, 4)" in out
    data = json.loads(report.read_text())
    assert data["macs"] == TINY_MACS and [r["name"] for r in data["rows"]] == ["conv", "flat", "out"]


def test_flops_input_shape(capsys, shapeless_model):
    code, _, err = run(capsys, "flops", str(shapeless_model))
    assert code == 1
    assert err.startswith("kslim flops: error:") and "--input-shape" in err and "shapeless.keras" in err
    code, out, _ = run(capsys, "flops", str(shapeless_model), "--input-shape", "10,10,1")
    assert code == 0 and f"{9 * 4 * 64:,}" in out
    code, _, err = run(capsys, "flops", str(shapeless_model), "--input-shape", "ten,10")
    assert code == 1 and "--input-shape 'ten,10'" in err


def test_flops_bad_files(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "garbage.h5").write_bytes(b"\x00\x01garbage")
    (tmp_path / "garbage.keras").write_bytes(b"PK\x03\x04 not really a zip")
    cases = {
        str(tmp_path / "missing.keras"): "does not exist",
        str(tmp_path / "notes.txt"): "not a Keras model archive",
        str(tmp_path / "garbage.h5"): "not an HDF5",
        str(tmp_path / "garbage.keras"): "not a Keras model archive",
        str(tmp_path): "folder",
    }
    for path, message in cases.items():
        code, out, err = run(capsys, "flops", path)
        assert code == 1, path
        assert err.startswith("kslim flops: error:") and path in err and message in err, err
        assert "Traceback" not in err


def test_demo_bad_arguments(capsys):
    code, _, err = run(capsys, "demo", "--model", "alexnet")
    assert code == 1 and "alexnet" in err
    code, _, err = run(capsys, "demo", "--epochs", "0")
    assert code == 1 and "--epochs" in err


def test_demo_with_stub_model(capsys, monkeypatch, tmp_path):
    """The demo pipeline (prune -> distill -> QAT -> export -> profile) with untrained tiny models
    instead of trained ones, on --quick data slices."""
    import kslim.models
    from kslim.lite import LiteModel
    from kslim.models import build

    calls = []

    def fake_pretrained(name, source="small", epochs=3, seed=0, verbose=1, **kwargs):
        calls.append((name, epochs, kwargs.get("width")))
        return kslim.models.Pretrained(build(name, width=kwargs.get("width", 0.25)), 0.1234)

    monkeypatch.setattr(kslim.models, "pretrained", fake_pretrained)
    out_dir = tmp_path / "run"
    code, out, _ = run(capsys, "demo", "--quick", "--model", "vgg", "--width", "0.25", "--teacher", "vgg",
                       "--epochs", "2", "--out", str(out_dir))
    assert code == 0
    assert calls == [("vgg", 2, 0.25), ("vgg", 2, None)]
    state = json.loads((out_dir / "state.json").read_text())
    assert state["finished"] is True
    rows = [state["stages"]["base"]["row"]] + [state["stages"][str(i)]["row"] for i in range(1, 6)]
    assert [r["stage"] for r in rows] == ["baseline", "1. prune", "2. distill", "3. quant_aware", "4. export",
                                          "5. profile"]
    assert rows[1]["macs"] <= 0.5 * rows[0]["macs"]
    lite = LiteModel.load(out_dir / "final.tflite")
    kinds = {t["dtype"].__name__ for t in lite.tensors()}
    assert "int8" in kinds and "int32" in kinds
    assert "| 4. export |" in (out_dir / "report.md").read_text()
    assert "final int8 model" in out


def test_console_script(tiny_model):
    exe = shutil.which("kslim")
    cmd = [exe] if exe else [sys.executable, "-m", "kslim"]
    result = subprocess.run([*cmd, "flops", str(tiny_model)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"{TINY_MACS:,}" in result.stdout
