"""``kslim prune`` and ``kslim sensitivity`` through ``kslim.cli.main``."""

import json

import keras
import pytest

from kslim.cli import main


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(8, 3, strides=2, use_bias=False, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, name="conv2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.Conv2D(8, 3, name="conv3")(x)  # feeds the classifier: kept by default
    x = keras.layers.ReLU(name="relu3")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    model = keras.Model(inputs, outputs, name="cli_tiny")
    path = tmp_path_factory.mktemp("cli") / "m.keras"
    model.save(path)
    return path


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_prune_ratio(model_path, tmp_path, capsys):
    out_path = tmp_path / "small.keras"
    code, out, err = run(["prune", model_path, "-o", out_path, "--ratios", "0.5"], capsys)
    assert code == 0, err
    small = keras.models.load_model(out_path)
    assert small.get_layer("conv1").filters == 4 and small.get_layer("conv2").filters == 8
    assert "params" in out


def test_prune_ratios_round_to_and_skip(model_path, tmp_path, capsys):
    out_path = tmp_path / "small.keras"
    code, _, err = run(["prune", model_path, "-o", out_path, "--ratios", "conv2=0.3", "--round-to", "4",
                        "--importance", "fpgm"], capsys)
    assert code == 0, err
    small = keras.models.load_model(out_path)
    assert small.get_layer("conv1").filters == 8 and small.get_layer("conv2").filters == 12
    code, _, err = run(["prune", model_path, "-o", out_path, "--ratios", "0.5", "--skip", "conv1"], capsys)
    assert code == 0, err
    small = keras.models.load_model(out_path)
    assert small.get_layer("conv1").filters == 8 and small.get_layer("conv2").filters == 8


def test_prune_flops_target(model_path, tmp_path, capsys):
    from kslim.analysis import flops

    out_path = tmp_path / "small.keras"
    code, out, err = run(["prune", model_path, "-o", out_path, "--flops-reduction", "0.5"], capsys)
    assert code == 0, err
    before = flops(keras.models.load_model(model_path)).macs
    after = flops(keras.models.load_model(out_path)).macs
    assert after <= 0.55 * before
    assert "MACs" in out


def test_sensitivity_resume_plot_and_prune_from_it(model_path, tmp_path, capsys):
    ckpt, png = tmp_path / "sens.json", tmp_path / "sens.png"
    argv = ["sensitivity", model_path, "--limit", "200", "--ratios", "0.25,0.5", "--checkpoint", ckpt,
            "--plot", png]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    data = json.loads(ckpt.read_text())
    assert set(data["sensitivities"]) == {"conv1", "conv2"}
    assert all(set(c) == {"0.25", "0.5"} for c in data["sensitivities"].values())
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "conv2" in out
    mtime = ckpt.stat().st_mtime_ns
    code, _, err = run(argv, capsys)  # complete checkpoint: nothing recomputed or rewritten
    assert code == 0, err
    assert ckpt.stat().st_mtime_ns == mtime

    out_path = tmp_path / "small.keras"
    code, out, err = run(["prune", model_path, "-o", out_path, "--max-loss", "0.5", "--sensitivity", ckpt], capsys)
    assert code == 0, err
    assert keras.models.load_model(out_path).count_params() < keras.models.load_model(model_path).count_params()
    code, out, err = run(["prune", model_path, "-o", out_path, "--flops-reduction", "0.2", "--sensitivity", ckpt],
                         capsys)
    assert code == 0, err
    assert "sensitivity threshold" in out


def test_errors(model_path, tmp_path, capsys):
    out_path = tmp_path / "x.keras"
    code, _, err = run(["prune", tmp_path / "missing.keras", "-o", out_path, "--ratios", "0.5"], capsys)
    assert code == 1 and "missing.keras" in err
    code, _, err = run(["prune", model_path, "-o", out_path, "--ratios", "ghost=0.5"], capsys)
    assert code == 1 and "ghost" in err
    code, _, err = run(["prune", model_path, "-o", out_path, "--ratios", "1.5"], capsys)
    assert code == 1 and "1.5" in err
    code, _, err = run(["prune", model_path, "-o", out_path, "--max-loss", "0.1"], capsys)
    assert code == 1 and "--sensitivity" in err
    code, _, err = run(["sensitivity", model_path, "--checkpoint", tmp_path / "s.json", "--ratios", "0.5,1.0"],
                       capsys)
    assert code == 1 and "1.0" in err
    assert not out_path.exists()
    with pytest.raises(SystemExit):
        main(["prune", str(model_path), "-o", str(out_path)])  # no --ratios/--flops-reduction/--max-loss
