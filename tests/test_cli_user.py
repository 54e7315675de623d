"""The command line on a user's own model and data, checks before the work, help texts (issue 17: 3, 5, 8).

The read-only-output cases run the real ``kslim`` in a subprocess.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from kslim.cli import build_parser, main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def cli(*args, timeout=120):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "kslim", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory):
    """A 16x16x3 classifier with 3 classes: no Fashion-MNIST default fits it."""
    from kslim.models import vgg

    keras.utils.set_random_seed(0)
    m = vgg(input_shape=(16, 16, 3), num_classes=3, width=0.25, hidden=8, name="rgb")
    path = tmp_path_factory.mktemp("user") / "rgb.keras"
    m.save(path)
    return path


@pytest.fixture(scope="module")
def user_data(tmp_path_factory):
    """The same 12 labelled 16x16x3 images as a folder (one sub-folder per class), an .npz and a data hook."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(12, 20, 20, 3), dtype=np.uint8)
    y = np.repeat(np.arange(3), 4)
    for i, (img, label) in enumerate(zip(x, y)):
        folder = root / "images" / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        keras.utils.save_img(folder / f"{i}.png", img)
    small = (x[:, :16, :16, :] / 255.0).astype(np.float32)
    np.savez(root / "data.npz", x=small, y=y)
    (root / "hook.py").write_text(
        "import numpy as np\n"
        f"def load():\n    d = np.load({str(root / 'data.npz')!r})\n    return (d['x'], d['y']), (d['x'], d['y'])\n")
    return {"folder": root / "images", "npz": root / "data.npz", "hook": f"{root / 'hook.py'}:load"}


# ------------------------------------------------------------------------------------ 5. the user's data
def test_default_data_only_for_fashion_mnist_shaped_models(rgb_model, tmp_path, capsys):
    code, _, err = run(capsys, "quantize", rgb_model, "-o", tmp_path / "q.tflite")
    assert code == 1 and "(16, 16, 3)" in err and "--calib" in err and "folder of images" in err
    code, _, err = run(capsys, "sensitivity", rgb_model, "--checkpoint", tmp_path / "s.json")
    assert code == 1 and "(16, 16, 3)" in err and "--data" in err


def test_quantize_calibrates_and_evaluates_on_an_image_folder(rgb_model, user_data, tmp_path, capsys):
    out = tmp_path / "q.tflite"
    code, text, err = run(capsys, "quantize", rgb_model, "-o", out, "--calib", user_data["folder"], "--batches", "1",
                          "--batch-size", "8", "--algo", "abs_max", "--eval", user_data["folder"])
    assert code == 0, err
    assert f"8 images from {user_data['folder']}" in text
    assert f"top-1 accuracy of the .tflite on 12 images from {user_data['folder']}" in text
    assert out.is_file()


def test_sensitivity_on_an_npz_and_convert_int8_from_a_hook(rgb_model, user_data, tmp_path, capsys):
    code, text, err = run(capsys, "sensitivity", rgb_model, "--data", user_data["npz"], "--ratios", "0.5",
                          "--checkpoint", tmp_path / "s.json", "-q")
    assert code == 0, err
    assert (tmp_path / "s.json").is_file()
    code, text, err = run(capsys, "convert", rgb_model, "-o", tmp_path / "c.tflite", "--quantize", "int8",
                          "--calibration-data", user_data["hook"], "--calibration-samples", "12")
    assert code == 0, err
    assert "calibrated on 12 train samples from the data hook" in text


def test_random_calibration_is_explicit_and_labelled(rgb_model, tmp_path, capsys):
    code, text, err = run(capsys, "convert", rgb_model, "-o", tmp_path / "r.tflite", "--quantize", "int8",
                          "--random-calibration", "--calibration-samples", "16")
    assert code == 0, err
    assert "RANDOM" in err and "RANDOM inputs (--random-calibration)" in text


def test_data_errors_name_the_option(rgb_model, user_data, tmp_path, capsys):
    np.savez(tmp_path / "wrong.npz", x=np.zeros((4, 28, 28, 1), np.float32))
    np.savez(tmp_path / "nox.npz", images=np.zeros((4, 16, 16, 3), np.float32))
    cases = {
        str(tmp_path / "wrong.npz"): "does not match the model input",
        str(tmp_path / "nox.npz"): "expected arrays 'x'",
        str(tmp_path / "missing.npz"): "no such file",
        "something": "not a folder",
    }
    for spec, words in cases.items():
        code, _, err = run(capsys, "quantize", rgb_model, "-o", tmp_path / "q.tflite", "--calib", spec)
        assert code == 1 and err.startswith("kslim quantize: error: --calib") and words in err, err
    code, _, err = run(capsys, "sensitivity", rgb_model, "--data", tmp_path / "wrong.npz",
                       "--checkpoint", tmp_path / "s.json")
    assert code == 1 and "--data" in err


def test_unsafe_loads_a_lambda_model_the_user_trusts(tmp_path, capsys):
    m = keras.Sequential([keras.Input((8,)), layers.Lambda(lambda t: t * 2.0, name="double"),
                          layers.Dense(2, name="out")])
    path = tmp_path / "lam.keras"
    m.save(path)
    code, _, err = run(capsys, "flops", path)
    assert code == 1 and "--unsafe" in err and "safe_mode" not in err
    code, out, err = run(capsys, "flops", path, "--unsafe")
    assert code == 0, err
    assert "16" in out  # 8 x 2 MACs


# ------------------------------------------------------------------------------------ 3. checks before the work
def test_ratios_are_checked_before_the_model_loads(tmp_path, capsys):
    missing = tmp_path / "missing.keras"
    out = tmp_path / "x.keras"
    for args, words in ((["--ratios", "1.5"], "--ratios: 1.5"), (["--flops-reduction", "0"], "--flops-reduction: 0.0"),
                        (["--ratios", "conv=1.2"], "--ratios 'conv': 1.2"), (["--max-loss", "-1"], "--max-loss")):
        code, _, err = run(capsys, "prune", missing, "-o", out, *args)
        assert code == 1 and words in err and "missing" not in err, err
    code, _, err = run(capsys, "sensitivity", missing, "--ratios", "0.5,1.0", "--checkpoint", tmp_path / "s.json")
    assert code == 1 and "1.0" in err and "missing" not in err


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder nobody can write into (a chmod-ed one; as root, where modes do not bind, /sys)."""
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    for candidate in (d, Path("/sys")):
        try:
            fd, probe = tempfile.mkstemp(dir=candidate)
        except OSError:
            yield candidate
            break
        os.close(fd)
        os.unlink(probe)
    else:
        pytest.skip("no read-only folder on this machine")
    d.chmod(0o755)


def test_read_only_outputs_fail_first_in_one_line(readonly_dir, rgb_model, tmp_path):
    """Through the real CLI: a one-line kslim error naming the user's path, before the model loads (no
    TensorFlow import: each command answers in a few seconds), no traceback, no hidden temp file."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{path: {rgb_model}}}\nstrategies:\n  - export: {{}}\n")
    cases = {
        "prune": ["prune", rgb_model, "-o", readonly_dir / "p.keras", "--ratios", "0.5"],
        "quantize": ["quantize", rgb_model, "-o", readonly_dir / "q.tflite", "--calib", "nowhere.npz"],
        "compress": ["compress", cfg, "--out", readonly_dir / "run"],
    }
    for name, args in cases.items():
        p = cli(*args)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 1, (name, p.stderr)
        assert len(lines) == 1 and lines[0].startswith(f"kslim {name}: error:"), (name, p.stderr)
        assert str(readonly_dir) in lines[0] and "cannot write" in lines[0], lines[0]
        assert "Traceback" not in p.stderr and f"{os.sep}." not in lines[0].split("cannot write")[1]
    assert not (readonly_dir / "run").exists()


def test_atomic_write_errors_name_the_target(readonly_dir):
    from kslim._io import atomic_write_text
    from kslim.errors import KslimFileError

    with pytest.raises(KslimFileError) as e:
        atomic_write_text(readonly_dir / "x.txt", "hello")
    assert str(e.value).startswith(f"cannot write {readonly_dir / 'x.txt'}:") and "/." not in str(e.value)


# ------------------------------------------------------------------------------------ 8. rough edges
def _parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_option_has_help_and_shows_its_default():
    for parser in _parsers(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            if action.help is argparse.SUPPRESS:  # a kslim 0.1 flag kept for one release, hidden from --help
                continue
            text = formatter._get_help_string(action)
            assert action.help, (parser.prog, action.option_strings)
            if action.default not in (None, False):
                assert "default" in text, (parser.prog, action.option_strings, text)
        parser.format_help()  # every %(default)s expands


def test_demo_help_has_no_literal_double_percent(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = capsys.readouterr().out
    assert "%%" not in out and "-50 % MACs" in out


def test_prune_says_of_what_its_percentages_are(capsys, tmp_path):
    m = keras.Sequential([keras.Input((8, 8, 1)), layers.Conv2D(8, 3, name="c1"), layers.Conv2D(8, 3, name="c2"),
                          layers.GlobalAveragePooling2D(), layers.Dense(2, name="fc")])
    m.save(tmp_path / "m.keras")
    code, out, err = run(capsys, "prune", tmp_path / "m.keras", "-o", tmp_path / "s.keras", "--ratios", "0.5")
    assert code == 0, err
    assert "of the original" in out and "MACs" in out


def test_no_litert_info_line(tmp_path):
    """The XNNPACK INFO line LiteRT prints on its first interpreter is silenced at its logger; errors stay."""
    from kslim._litert_log import quiet_litert_info

    m = keras.Sequential([keras.Input((4,)), layers.Dense(2)])
    from kslim.lite import convert

    convert(m, check=False).save(tmp_path / "m.tflite")
    p = cli("profile", tmp_path / "m.tflite", "--runs", "3", "--warmup", "1")
    assert p.returncode == 0, p.stderr
    assert "XNNPACK delegate" not in p.stderr and "peak memory of the process" in p.stdout
    if sys.platform.startswith("linux"):
        assert quiet_litert_info() is True
