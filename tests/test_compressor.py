"""The config-driven pipeline: validation, a full run, resume after kill -9, refusals, disk errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from kslim.compressor import Compressor, load_config, validate_config
from kslim.errors import ConfigError, KslimFileError

BASE = {"model": {"reference": "vgg"}, "strategies": [{"export": {}}]}


def _cfg(**over):
    cfg = json.loads(json.dumps(BASE))
    cfg.update(over)
    return cfg


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "cfg, path, words",
    [
        (_cfg(strategies=[{"prunex": {}}]), "strategies[0]", "prune"),
        (_cfg(strategies=[{"prune": {"importance": "l3", "ratios": 0.5}}]), "strategies[0].prune.importance", "fpgm"),
        (_cfg(strategies=[{"prune": {"ratios": 1.5}}]), "strategies[0].prune.ratios", "maximum"),
        (_cfg(strategies=[{"prune": {"ratios": "half"}}]), "strategies[0].prune.ratios", "number"),
        (_cfg(strategies=[{"prune": {"ratios": 0.5, "flops_reduction": 0.5}}]), "strategies[0].prune", "exactly one"),
        (_cfg(strategies=[{"quant_aware": {"weight_bits": 9}}]), "strategies[0].quant_aware.weight_bits", "8"),
        (_cfg(strategies=[{"quant_post_static": {"algo": "kl2"}}]), "strategies[0].quant_post_static.algo", "KL"),
        (_cfg(model={"reference": "vgg", "colour": 1}), "model", "colour"),
        (_cfg(model={"reference": "alexnet"}), "model.reference", "mobilenet_v1"),
        (_cfg(data={"batch_size": "big"}), "data.batch_size", "integer"),
        (_cfg(data={"source": "hook"}), "data.hook", "hook"),
        (_cfg(strategies=[]), "strategies", "non-empty"),
        (_cfg(unknown_top=1), "(top level)", "unknown_top"),
    ],
)
def test_config_errors_name_the_field(cfg, path, words):
    with pytest.raises(ConfigError) as e:
        validate_config(cfg)
    assert e.value.path == path
    assert words in str(e.value)


def test_config_defaults_and_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: {reference: resnet}\nstrategies:\n  - prune: {ratios: 0.3}\n  - export:\n")
    cfg = load_config(f)
    assert cfg["seed"] == 0 and cfg["data"]["source"] == "small" and cfg["train"]["epochs"] == 1
    assert cfg["strategies"] == [{"prune": {"ratios": 0.3}}, {"export": {}}]


def test_malformed_yaml_and_missing_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model: [reference\nstrategies: x\n")
    with pytest.raises(ConfigError, match="malformed YAML.*line"):
        load_config(f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_config(empty)


def test_demo_config_is_valid():
    from importlib.resources import files

    cfg = load_config(str(files("kslim.compressor") / "configs" / "demo.yaml"))
    assert [next(iter(s)) for s in cfg["strategies"]][:3] == ["prune", "distill", "quant_aware"]


def test_example_configs_are_valid():
    examples = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))
    assert len(examples) >= 8
    names = set()
    for f in examples:
        cfg = load_config(f)
        names |= {next(iter(s)) for s in cfg["strategies"]}
    assert names == {"prune", "distill", "quant_aware", "quant_post_static", "quant_post_dynamic", "export", "profile"}


# ----------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    """A small VGG-style model, trained one short epoch, saved as .keras."""
    import keras

    from kslim.datasets import fashion_mnist_small, preprocess
    from kslim.models import compile_classifier, vgg

    keras.utils.set_random_seed(0)
    (x, y), _ = fashion_mnist_small()
    model = compile_classifier(vgg(width=0.25, hidden=32))
    model.fit(preprocess(x[:1024]), y[:1024], epochs=1, batch_size=64, verbose=0)
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return path


def _run_config(model_path, strategies, **extra):
    cfg = {
        "name": "test",
        "model": {"path": str(model_path)},
        "data": {"source": "small", "train_limit": 256, "test_limit": 128, "batch_size": 64},
        "train": {"epochs": 1, "learning_rate": 0.001},
        "report": {"latency_runs": 5},
        "strategies": strategies,
    }
    cfg.update(extra)
    return cfg


def test_prune_then_export_run(tmp_path, tiny_model_path):
    cfg = _run_config(tiny_model_path, [
        {"prune": {"ratios": 0.5, "fine_tune": {"epochs": 1}}},
        {"export": {"quantize": "dynamic"}},
        {"profile": {"runs": 5}},
    ])
    result = Compressor(cfg, out=tmp_path / "run", verbose=0).run()
    rows = result.rows
    assert [r["stage"] for r in rows] == ["baseline", "1. prune", "2. export", "3. profile"]
    assert rows[1]["params"] < rows[0]["params"]
    assert rows[1]["macs"] < rows[0]["macs"]
    assert rows[2]["kind"] == "tflite" and rows[2]["bytes"] < rows[1]["bytes"]
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["latency_ms"] > 0
    run = tmp_path / "run"
    for rel in ("config.yaml", "state.json", "final.tflite", "report.md", "report.html",
                "stages/01_prune/model.keras", "stages/01_prune/pruned.keras", "stages/02_export/model.tflite"):
        assert (run / rel).is_file(), rel
    assert json.loads((run / "state.json").read_text())["finished"] is True
    report = (run / "report.md").read_text()
    assert "1. prune" in report and "accuracy" in report
    from kslim.lite import LiteModel

    lite = LiteModel.load(run / "final.tflite")
    x = np.random.default_rng(0).uniform(size=(4, 28, 28, 1)).astype("float32")
    assert lite.predict(x).shape == (4, 10)
    # a second start into the same folder is refused
    with pytest.raises(KslimFileError, match="already holds a run"):
        Compressor(cfg, out=run, verbose=0).run()


@pytest.mark.parametrize("how", [
    {"sensitivity": {"ratios": [0.3, 0.6], "eval_samples": 64, "flops_reduction": 0.4}},
    pytest.param({"sensitivity": {"ratios": [0.3, 0.6], "eval_samples": 64, "max_loss": 0.5}},
                 marks=pytest.mark.slow),  # the same sensitivity pass as -flops, another threshold rule
    pytest.param({"auto": {"flops_reduction": 0.4, "max_trials": 2, "eval_samples": 64}},
                 marks=pytest.mark.slow),  # auto_prune itself is tested in tests/test_nas.py
], ids=["sensitivity-flops", "sensitivity-loss", "auto"])
def test_searched_prune_stage(tmp_path, tiny_model_path, how):
    """The sensitivity and auto strategies (examples/prune_sensitivity.yaml, prune_auto.yaml) prune and
    record their ratios."""
    cfg = _run_config(tiny_model_path, [{"prune": {"importance": "l2", **how, "fine_tune": {"epochs": 1}}}])
    result = Compressor(cfg, out=tmp_path / "run", verbose=0).run()
    base, pruned = result.rows[0], result.rows[1]
    assert pruned["macs"] < base["macs"]
    info = json.loads((tmp_path / "run" / "stages" / "01_prune" / "pruned_info.json").read_text())
    assert info["ratios"] and all(0.0 <= r < 1.0 for r in info["ratios"].values())
    if "flops_reduction" in how.get("sensitivity", how.get("auto")):
        assert pruned["macs"] <= 0.6 * base["macs"] * 1.01  # at least the 40 % target removed
    if "auto" in how:
        assert 0.0 <= info["score"] <= 1.0


def _cli(args, env=None, cwd=None):
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    return subprocess.run([sys.executable, "-m", "kslim", *args], capture_output=True, text=True, env=e,
                          cwd=cwd, timeout=600)


def _final_weights(run):
    import keras

    import kslim.quant  # noqa: F401

    state = json.loads((run / "state.json").read_text())
    last = state["stages"][str(max(int(k) for k in state["stages"] if k != "base"))]
    return keras.models.load_model(run / last["model"]).get_weights()


def test_resume_after_kill_reaches_the_same_result(tmp_path, tiny_model_path):
    """kill -9 at three points (after pruning, mid fine-tuning, after a finished stage), resume each time:
    the final model equals an uninterrupted run's."""
    cfg = _run_config(tiny_model_path, [
        {"prune": {"ratios": 0.5, "fine_tune": {"epochs": 2}}},
        {"quant_aware": {"epochs": 1}},
        {"export": {}},
    ])
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))

    ref = _cli(["compress", str(cfg_file), "--out", str(tmp_path / "ref"), "--verbose", "0"])
    assert ref.returncode == 0, ref.stderr[-3000:]

    run = tmp_path / "killed"
    p = _cli(["compress", str(cfg_file), "--out", str(run), "--verbose", "0"], env={"KSLIM_CRASH_AT": "1:prune:pruned"})
    assert p.returncode == -9, p.stderr[-3000:]
    for point in ("1:prune:epoch0", "2:quant_aware:done"):
        p = _cli(["compress", str(cfg_file), "--resume", str(run), "--verbose", "0"], env={"KSLIM_CRASH_AT": point})
        assert p.returncode == -9, (point, p.stderr[-3000:])
        assert not json.loads((run / "state.json").read_text())["finished"]
    p = _cli(["compress", str(cfg_file), "--resume", str(run), "--verbose", "0"])
    assert p.returncode == 0, p.stderr[-3000:]
    assert "final model" in p.stdout

    for a, b in zip(_final_weights(tmp_path / "ref"), _final_weights(run)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    ref_bytes = (tmp_path / "ref" / "final.tflite").read_bytes()
    assert ref_bytes == (run / "final.tflite").read_bytes()


def test_resume_refuses_another_config(tmp_path, tiny_model_path):
    cfg = _run_config(tiny_model_path, [{"export": {}}])
    Compressor(cfg, out=tmp_path / "run", verbose=0).run()
    other = _run_config(tiny_model_path, [{"export": {"quantize": "float16"}}])
    with pytest.raises(ConfigError, match=r"another config.*strategies\[0\]\.export\.quantize"):
        Compressor(other, out=tmp_path / "run", verbose=0).run(resume=True)
    with pytest.raises(KslimFileError, match="not a kslim run directory"):
        Compressor(cfg, out=tmp_path / "empty", verbose=0).run(resume=True)


def test_disk_full_while_checkpointing_leaves_state_intact(tmp_path, tiny_model_path, monkeypatch):
    import errno

    import kslim.compressor.training as training

    cfg = _run_config(tiny_model_path, [{"prune": {"ratios": 0.5, "fine_tune": {"epochs": 1}}}, {"export": {}}])
    run = tmp_path / "run"

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    real = training.np.savez
    monkeypatch.setattr(training.np, "savez", full)
    with pytest.raises(KslimFileError, match="No space left.*resume"):
        Compressor(cfg, out=run, verbose=0).run()
    state = json.loads((run / "state.json").read_text())
    assert state["finished"] is False and "1" not in state["stages"]
    assert not list(run.rglob(".*.npz")), "a temp file was left behind"
    monkeypatch.setattr(training.np, "savez", real)
    result = Compressor(cfg, out=run, verbose=0).run(resume=True)
    assert result.final_tflite.is_file()


def test_cli_compress_errors(tmp_path):
    from kslim.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {reference: vgg}\nstrategies:\n  - squash: {}\n")
    assert main(["compress", str(bad), "--out", str(tmp_path / "r")]) == 1
    assert main(["compress", str(tmp_path / "missing.yaml")]) == 1
    assert main(["compress", "--resume", str(tmp_path / "nowhere")]) == 1


def test_data_hook(tmp_path, tiny_model_path):
    hook = tmp_path / "mydata.py"
    hook.write_text(
        "import numpy as np\n"
        "def load():\n"
        "    rng = np.random.default_rng(0)\n"
        "    x = rng.integers(0, 255, size=(96, 28, 28), dtype=np.uint8)\n"
        "    y = rng.integers(0, 10, size=96)\n"
        "    return (x, y), (x[:32], y[:32])\n"
    )
    cfg = _run_config(tiny_model_path, [{"export": {}}])
    cfg["data"] = {"source": "hook", "hook": f"{hook}:load"}
    result = Compressor(cfg, out=tmp_path / "run", verbose=0).run()
    assert result.rows[0]["accuracy"] is not None
    cfg["data"] = {"source": "hook", "hook": f"{hook}:nothing"}
    with pytest.raises(ConfigError, match="no function 'nothing'"):
        Compressor(cfg, out=tmp_path / "run2", verbose=0).run()


# ----------------------------------------------------------------------------- review fixes
class _Crash(Exception):
    pass


def _crash_at(point):
    def crash(name):
        if name == point:
            raise _Crash(name)
    return crash


def test_resume_from_stored_config_resolves_paths_from_the_config_folder(tmp_path, tiny_model_path, monkeypatch,
                                                                          capsys):
    """`kslim compress --resume RUN` (no CONFIG) from another cwd: relative paths still resolve from the
    folder of the config the run was started with."""
    import shutil

    import kslim.compressor.compressor as comp_mod
    from kslim.cli import main

    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copyfile(tiny_model_path, proj / "tiny.keras")
    (proj / "relhook.py").write_text(
        "import numpy as np\n"
        "def load():\n"
        "    rng = np.random.default_rng(0)\n"
        "    x = rng.integers(0, 255, size=(64, 28, 28), dtype=np.uint8)\n"
        "    y = rng.integers(0, 10, size=64)\n"
        "    return (x, y), (x[:32], y[:32])\n"
    )
    cfg = _run_config("tiny.keras", [{"export": {}}])
    cfg["data"] = {"source": "hook", "hook": "relhook.py:load"}
    (proj / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(comp_mod, "crash_point", _crash_at("base:done"))
    with pytest.raises(_Crash):
        Compressor(str(proj / "cfg.yaml"), out=run, verbose=0).run()
    monkeypatch.setattr(comp_mod, "crash_point", _crash_at(None))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["compress", "--resume", str(run), "--verbose", "0"]) == 0, capsys.readouterr().err
    assert json.loads((run / "state.json").read_text())["finished"] is True


def test_prune_info_survives_a_resume(tmp_path, tiny_model_path, monkeypatch):
    """A crash right after pruned.keras is saved: the resumed stage still reports ratio/reduction."""
    import kslim.compressor.strategies as strategies
    from kslim.compressor import RunDir
    from kslim.compressor.compressor import _Context

    cfg = validate_config(_run_config(tiny_model_path, [{"prune": {"flops_reduction": 0.3, "fine_tune": {"epochs": 0}}}]))
    params = cfg["strategies"][0]["prune"]
    run = RunDir(tmp_path / "run")

    def stage():
        ctx = _Context(cfg, None, run, tmp_path, 0)
        ctx.model = strategies._load_keras(tiny_model_path)
        strategies.run_prune(ctx, params, run.stage_dir(1, "prune"), "1:prune")
        return ctx

    monkeypatch.setattr(strategies, "crash_point", _crash_at("1:prune:pruned"))
    with pytest.raises(_Crash):
        stage()
    monkeypatch.setattr(strategies, "crash_point", _crash_at(None))
    ctx = stage()
    assert ctx.info["reduction"] >= 0.3 and 0 < ctx.info["ratio"] < 1
    assert ctx.info["macs_before"] > ctx.info["macs_after"] > 0


def test_long_one_line_yaml_config(tmp_path):
    """A YAML string longer than a file name can be is a config, never a raw OSError."""
    text = json.dumps(_cfg(name="x" * 300))
    assert "\n" not in text and len(text) > 300
    comp = Compressor(text, out=tmp_path / "run", verbose=0)
    assert comp.config["name"] == "x" * 300 and comp.base_dir == Path.cwd()
    with pytest.raises(ConfigError, match="squash"):
        Compressor(json.dumps(_cfg(name="x" * 300, strategies=[{"squash": {}}])), out=tmp_path / "r2")
    with pytest.raises(ConfigError, match="does not exist"):
        Compressor("y" * 300, out=tmp_path / "r3")


def test_distill_uses_train_batch_size(tmp_path, tiny_model_path):
    import kslim.compressor.strategies as strategies
    from kslim.compressor import RunDir
    from kslim.compressor.compressor import _Context
    from kslim.compressor.data import PipelineData

    cfg = validate_config(_run_config(
        tiny_model_path, [{"distill": {"teacher": {"path": str(tiny_model_path)}, "epochs": 1}}],
        train={"epochs": 1, "learning_rate": 0.001, "batch_size": 32},
    ))
    cfg["data"]["train_limit"] = 64
    data = PipelineData(cfg["data"])
    sizes, real = [], data.train

    def spy(seed, batch_size=None):
        sizes.append(batch_size)
        return real(seed, batch_size)

    data.train = spy
    run = RunDir(tmp_path / "run")
    ctx = _Context(cfg, data, run, tmp_path, 0)
    ctx.model = strategies._load_keras(tiny_model_path)
    strategies.run_distill(ctx, cfg["strategies"][0]["distill"], run.stage_dir(1, "distill"), "1:distill")
    assert sizes == [32]


def test_corrupt_run_state_names_the_file(tmp_path):
    from kslim.compressor import RunDir

    cfg = validate_config(BASE)
    run = RunDir(tmp_path / "run")
    run.start(cfg)
    run.state_file.write_bytes(b"\xff\xfe\x00 not json \x81")
    with pytest.raises(KslimFileError, match="state.json"):
        run.resume(cfg)
    run.state_file.write_text("[1, 2]")
    with pytest.raises(KslimFileError, match="state.json"):
        run.resume(cfg)


def test_stage_plot_keeps_the_matplotlib_backend(tmp_path):
    import matplotlib

    from kslim.compressor.report import plot_stages

    old = matplotlib.get_backend()
    matplotlib.use("pdf")
    try:
        rows = [{"stage": "baseline", "accuracy": 0.8, "bytes": 1000, "latency_ms": 1.0},
                {"stage": "1. prune", "accuracy": 0.7, "bytes": 500, "latency_ms": None}]
        path = plot_stages(rows, tmp_path / "stages.png")
        assert matplotlib.get_backend() == "pdf"
    finally:
        matplotlib.use(old)
    assert path.read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- issue 17
def test_config_reports_every_error_at_once():
    cfg = _cfg(data={"batch_size": "big"}, strategies=[
        {"prune": {"importance": "l3", "ratios": 0.5}}, {"quant_post_static": {"algo": "kl2"}}, {"squash": {}}])
    with pytest.raises(ConfigError) as e:
        validate_config(cfg)
    paths = [p for p, _ in e.value.errors]
    assert {"data.batch_size", "strategies[0].prune.importance", "strategies[1].quant_post_static.algo",
            "strategies[2]"} <= set(paths)
    assert e.value.path == paths[0] and f"{len(paths)} errors" in str(e.value)
    for p in paths:
        assert p in str(e.value)


def _fake_tensorflow(tmp_path):
    """A folder whose tensorflow/keras packages refuse to import: put first on PYTHONPATH."""
    for name in ("tensorflow", "keras"):
        (tmp_path / "fake" / name).mkdir(parents=True)
        (tmp_path / "fake" / name / "__init__.py").write_text(f"raise ImportError('{name} imported by the test')\n")
    return str(tmp_path / "fake")


def test_missing_model_and_hook_reported_before_tensorflow_and_any_run_dir(tmp_path):
    """Through the real CLI, with TensorFlow made unimportable: both problems in one error, no run directory."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {path: nowhere.keras}\ndata: {source: hook, hook: nohook.py:load}\n"
                   "strategies:\n  - distill: {teacher: {path: noteacher.keras}}\n")
    run = tmp_path / "run"
    p = _cli(["compress", str(cfg), "--out", str(run)], env={"PYTHONPATH": _fake_tensorflow(tmp_path)})
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr and "imported by the test" not in p.stderr
    assert p.stderr.startswith("kslim compress: error: the config has 3 errors:")
    for words in ("model.path", "nowhere.keras", "strategies[0].distill.teacher.path", "data.hook", "nohook.py"):
        assert words in p.stderr
    assert not run.exists()


def test_headers_resume_line_report_and_layer_table(tmp_path, tiny_model_path, monkeypatch, capsys):
    """Stage headers with an estimate, the resume line, and a report whose two renderings hold the same
    content (context, baseline -> final, per-stage rows with the latency spread, per-layer pruning table)."""
    import re

    import kslim.compressor.training as training

    cfg = _run_config(tiny_model_path, [{"prune": {"ratios": 0.5, "fine_tune": {"epochs": 2}}}, {"export": {}}])
    run = tmp_path / "run"
    monkeypatch.setattr(training, "crash_point", _crash_at("1:prune:epoch0"))
    with pytest.raises(_Crash):
        Compressor(cfg, out=run, verbose=0, progress=True).run()
    out = capsys.readouterr().out
    assert re.search(r"\[1/2\] prune: L1 filter pruning of vgg_w0.25 \([\d,]+ params, .* MACs\): 50 % of the "
                     r"channels of every prunable group, then fine-tuning 2 epochs", out), out
    assert re.search(r"fine-tuning vgg_w0.25 \([\d,]+ params.*\) for 2 epochs on 256 images, (about|a few)", out)
    monkeypatch.setattr(training, "crash_point", _crash_at(None))
    result = Compressor(cfg, out=run, verbose=0, progress=True).run(resume=True)
    out = capsys.readouterr().out
    assert f"resuming {run} at stage 01_prune, 0 stages done" in out
    assert "continuing at epoch 2/2 (1 finished epoch(s) restored" in out and "[2/2] export:" in out

    md = (run / "report.md").read_text()
    page = (run / "report.html").read_text()
    text = re.sub(r"<[^>]+>", " ", page)
    for words in ("Baseline → final", "top-1 accuracy", "Pruning per layer (1. prune)", "conv1_1", "8 → 4",
                  "latency p5–p95 (ms)", "interleaved rounds", "Model:", "host:"):
        assert words in md and words in text, words
    assert md.count("| ") and all(html_cell in text for html_cell in re.findall(r"\| ([^|]+?) (?=\|)", md)[:40])
    layers = (run / "stages" / "01_prune" / "layers.csv").read_text().splitlines()
    assert layers[0] == "layer,type,channels_before,channels_after,macs_before,macs_after" and len(layers) > 5
    for r in result.rows:
        assert r["latency_p5_ms"] <= r["latency_ms"] <= r["latency_p95_ms"]


def test_stage_latencies_are_measured_together_interleaved(monkeypatch):
    import kslim.lite
    from kslim.lite import measure_latencies

    calls = []

    class Rep:
        def __init__(self, name, runs):
            self.timings_ms, self.mean_ms = [float(len(name))] * runs, float(len(name))

    monkeypatch.setattr(kslim.lite, "profile", lambda lite, runs, **kw: (calls.append(lite), Rep(lite, runs))[1])
    stats = measure_latencies({"a": "a", "bb": "bb", "ccc": "ccc"}, runs=10, rounds=5)
    assert calls == ["a", "bb", "ccc"] * 5
    assert stats["bb"] == {"median_ms": 2.0, "p5_ms": 2.0, "p95_ms": 2.0, "runs": 10, "round_medians_ms": [2.0] * 5}


def test_stage_plot_is_labelled_and_readable(tmp_path, monkeypatch):
    import kslim._plot
    from kslim.compressor.report import plot_stages

    figs = []
    real = kslim._plot.save_figure
    monkeypatch.setattr(kslim._plot, "save_figure", lambda fig, *a, **k: (figs.append(fig), real(fig, *a, **k))[1])
    rows = [{"stage": "baseline", "accuracy": 0.84, "bytes": 3_210_000, "latency_ms": 0.38, "latency_p5_ms": 0.35,
             "latency_p95_ms": 0.45},
            {"stage": "1. prune", "accuracy": 0.83, "bytes": 1_600_000, "latency_ms": 0.2, "latency_p5_ms": 0.19,
             "latency_p95_ms": 0.26}]
    plot_stages(rows, tmp_path / "stages.png")
    (fig,) = figs
    fig.canvas.draw()
    assert fig.get_size_inches()[0] * fig.dpi <= 1040  # shown at its own size in the HTML
    for ax in fig.axes:
        assert ax.get_ylabel()
        assert ax.yaxis.get_offset_text().get_text() == ""
        labels = ax.get_yticklabels() + ax.get_xticklabels()
        assert all(t.get_fontsize() >= 10 for t in labels)
        assert not any("e" in t.get_text() for t in ax.get_yticklabels())


def test_compress_quick(tmp_path, tiny_model_path, capsys):
    """`kslim compress --quick`: data limits and 1 epoch per stage, said in the stage headers."""
    from kslim.cli import main

    cfg = _run_config(tiny_model_path, [{"prune": {"ratios": 0.5, "fine_tune": {"epochs": 3}}}],
                      train={"epochs": 4, "learning_rate": 0.001})
    cfg["data"] = {"source": "small"}
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["compress", str(f), "--quick", "--out", str(run), "--verbose", "0"]) == 0
    out = capsys.readouterr().out
    assert "[1/1] prune:" in out and "[quick: 512 training / 256 test images, 1 epoch]" in out
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert stored["quick"] is True and stored["name"] == "test-quick"
    assert stored["data"]["train_limit"] == 512 and stored["data"]["test_limit"] == 256
    assert stored["strategies"][0]["prune"]["fine_tune"]["epochs"] == 1 and stored["train"]["epochs"] == 1
    assert len((run / "logs" / "01_prune_fine_tune.csv").read_text().splitlines()) == 2  # header + 1 epoch


@pytest.mark.parametrize("name", ["taylor", "apoz"])
def test_prune_stage_with_a_data_driven_importance(tmp_path, tiny_model_path, name):
    """The YAML importance enum is the whole registry: data-driven ones read the run's training data."""
    import kslim.compressor.strategies as strategies
    from kslim.compressor import RunDir
    from kslim.compressor.compressor import _Context

    cfg = validate_config(_run_config(tiny_model_path, [{"prune": {
        "importance": name, "ratios": 0.5, "importance_samples": 32, "fine_tune": {"epochs": 0}}}]))
    from kslim.compressor.data import PipelineData

    run = RunDir(tmp_path / "run")
    ctx = _Context(cfg, PipelineData(cfg["data"], base_dir=tmp_path), run, tmp_path, 0)
    ctx.model = strategies._load_keras(tiny_model_path)
    before = ctx.model.count_params()
    strategies.run_prune(ctx, cfg["strategies"][0]["prune"], run.stage_dir(1, "prune"), "1:prune")
    assert ctx.model.count_params() < before


def test_reference_model_without_pretrain_epochs_starts_from_the_shipped_weights(tmp_path, monkeypatch, capsys):
    """{reference: mobilenet_v1} loads kslim's converged weights (nothing is trained, the header says so);
    with pretrain_epochs, or at settings kslim ships no weights for, it trains on the data instead."""
    import kslim.models.zoo as zoo
    from kslim.compressor import Compressor
    from kslim.compressor.strategies import _reference_args

    monkeypatch.setattr(zoo, "train", lambda *a, **k: pytest.fail("the shipped reference model was retrained"))
    cfg = {"name": "shipped", "model": {"reference": "mobilenet_v1"}, "strategies": [{"export": {}}],
           "data": {"source": "small", "train_limit": 64, "test_limit": 500}, "report": {"latency_runs": 1}}
    result = Compressor(cfg, out=tmp_path / "run", verbose=1).run()
    assert "kslim's shipped weights" in capsys.readouterr().out
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["stages"]["base"]["row"]["accuracy"] > 0.88  # 92.84 % on the full test set
    assert result.final_tflite.is_file()
    ctx = type("Ctx", (), {"config": {"seed": 0, "data": {"source": "small"}}})()
    assert _reference_args(ctx, {"reference": "mobilenet_v1", "pretrain_epochs": 2})["source"] == "small"
    assert _reference_args(ctx, {"reference": "vgg"})["source"] == "shipped"
    assert _reference_args(ctx, {"reference": "vgg", "width": 0.25})["epochs"] == 3   # no shipped weights


def test_distill_pairs_take_every_builtin_loss(tmp_path, tiny_model_path):
    """The YAML pair losses are kslim.distill's built-ins: dkd on the logits (with alpha/beta) and fsp
    between two pairs of layers run in the pipeline's distill step."""
    import keras

    import kslim.compressor.strategies as strategies
    from kslim.compressor import RunDir
    from kslim.compressor.compressor import _Context
    from kslim.compressor.data import PipelineData

    model = strategies._load_keras(tiny_model_path)
    convs = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    same = next((a, b) for a, b in zip(convs, convs[1:])
                if model.get_layer(a).output.shape[1:3] == model.get_layer(b).output.shape[1:3])
    logits = model.layers[-1].name
    cfg = validate_config(_run_config(tiny_model_path, [{"distill": {"teacher": {"path": str(tiny_model_path)},
                                                                     "epochs": 1, "pairs": [
        {"teacher": logits, "student": logits, "loss": "dkd", "alpha": 1.0, "beta": 2.0, "temperature": 2.0},
        {"teacher": list(same), "student": list(same), "loss": "fsp", "weight": 0.1}]}}]))
    cfg["data"]["train_limit"] = 64
    run = RunDir(tmp_path / "run")
    ctx = _Context(cfg, PipelineData(cfg["data"]), run, tmp_path, 0)
    ctx.model = model
    strategies.run_distill(ctx, cfg["strategies"][0]["distill"], run.stage_dir(1, "distill"), "1:distill")
    assert ctx.model.count_params() == model.count_params()


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_fine_tune_strategy_and_its_schedule(tmp_path, tiny_model_path, schedule):
    """``fine_tune`` trains the current model with hard labels; ``schedule: cosine`` decays the learning rate
    to 0 over the step's epochs (its iteration count is checkpointed, so a resume continues the decay),
    ``constant`` keeps it."""
    import kslim.compressor.strategies as strategies
    from kslim.compressor import RunDir
    from kslim.compressor.compressor import _Context
    from kslim.compressor.data import PipelineData
    from kslim.compressor.training import _optimizer_variables

    cfg = validate_config(_run_config(tiny_model_path, [{"fine_tune": {"epochs": 2, "schedule": schedule}}]))
    cfg["data"]["train_limit"] = 128
    run = RunDir(tmp_path / "run")
    ctx = _Context(cfg, PipelineData(cfg["data"]), run, tmp_path, 0)
    ctx.model = strategies._load_keras(tiny_model_path)
    before = [w.copy() for w in ctx.model.get_weights()]
    strategies.run_fine_tune(ctx, cfg["strategies"][0]["fine_tune"], run.stage_dir(1, "fine_tune"), "1:fine_tune")
    opt = ctx.model.optimizer
    assert int(opt.iterations) == 2 * 2  # 2 epochs of 128 images, batch 64
    assert any(id(v) == id(opt.iterations) for v in _optimizer_variables(ctx.model))
    lr = float(np.asarray(opt.learning_rate))
    assert (lr < 1e-9) if schedule == "cosine" else lr == pytest.approx(1e-3)
    assert any(not np.array_equal(a, b) for a, b in zip(before, ctx.model.get_weights()))
    assert (run.stage_dir(1, "fine_tune") / "ckpt" / "fine_tune" / "train.npz").is_file()


def test_schedule_is_validated():
    with pytest.raises(ConfigError, match="schedule"):
        validate_config(_run_config("m.keras", [{"fine_tune": {"schedule": "linear"}}]))
