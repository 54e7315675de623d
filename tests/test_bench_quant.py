"""scripts/bench_quant.py without training: arguments, the per-seed QAT verdicts (medians, >= 3 seeds, the
printed precision, the noise band), resuming from saved rows, the rendering and the README headline row
(issue 16)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
SETTINGS = {"qat_lr": 1e-4, "train_images": 60000, "test_images": 10000}


@pytest.fixture(scope="module")
def bq():
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location("_bench_test_quant", SCRIPTS / "bench_quant.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(variant, acc, seed=None, model="mobilenet_v1", base=0.92, nbytes=1000, qat_images=30000):
    r = {"model": model, "variant": variant, "seed": seed, "qat_images": qat_images if seed is not None else None,
         "accuracy": acc, "delta_pt": 100 * (acc - base), "bytes": nbytes, "bytes_ratio": nbytes / 1000,
         "latency_ms": 0.2, "latency_p10_ms": 0.19, "latency_p90_ms": 0.25, "latency_all_ms": 0.1, "seconds": 1.0,
         "date": "2026-12-04 18:00 UTC"}
    if seed is not None:
        r["settings"] = dict(SETTINGS)
    return r


def _result(qat_deltas_pt, control_deltas_pt=None, base=0.92):
    rows = [_row("float32", base), _row("ptq_abs_max", base - 0.003), _row("ptq_mse", base - 0.001),
            _row("converter_int8", base - 0.002), _row("dynamic_int8", base - 0.001, nbytes=270)]
    for s, d in enumerate(qat_deltas_pt):
        rows.append(_row("qat_int8", base + d / 100, seed=s))
    for s, d in enumerate(control_deltas_pt or []):
        rows.append(_row("float32_finetuned", base + d / 100, seed=s))
    return {"rows": rows, "test_samples": 10000, "qat_images": 30000}


def _target(targets, start):
    hits = [t for t in targets if t["what"].startswith(start)]
    assert len(hits) == 1, [t["what"] for t in targets]
    return hits[0]


def test_qat_verdict_is_the_median_over_three_seeds_with_the_noise_band(bq):
    t = _target(bq.check_targets(_result([-0.5, -0.1, 0.3])), "mobilenet_v1: QAT int8 accuracy vs float32")
    assert t["met"] and "-0.10 pt" in t["value"] and "per seed -0.50, -0.10, +0.30" in t["value"]
    assert "median over 3 seed(s)" in t["what"] and "30,000-image" in t["what"]
    # binomial band of 92 % on 10,000 images: 1.96 * sqrt(.92 * .08 / 1e4) = 0.53 pt
    assert "±0.53 pt" in t["value"] and "10,000 images" in t["value"]
    assert not _target(bq.check_targets(_result([-0.5, -0.3, 0.3])), "mobilenet_v1: QAT int8 accuracy")["met"]


def test_fewer_than_three_seeds_never_meet_the_qat_target(bq):
    t = _target(bq.check_targets(_result([0.5, 0.5])), "mobilenet_v1: QAT int8 accuracy vs float32")
    assert not t["met"] and "median over 2 seed(s)" in t["what"]


def test_qat_verdict_at_the_printed_precision(bq):
    # -0.2000001 pt prints as -0.20 and meets ">= -0.2"; -0.206 prints as -0.21 and does not
    assert _target(bq.check_targets(_result([-0.2000001] * 3)), "mobilenet_v1: QAT int8 accuracy")["met"]
    assert not _target(bq.check_targets(_result([-0.206] * 3)), "mobilenet_v1: QAT int8 accuracy")["met"]


def test_control_is_the_median_of_per_seed_differences(bq):
    # per seed QAT - control: -0.1-0.4 = -0.5, 0.0-0.0 = 0.0, -0.3-(-0.4) = +0.1 -> median 0.0
    t = _target(bq.check_targets(_result([-0.1, 0.0, -0.3], [0.4, 0.0, -0.4])), "mobilenet_v1: QAT int8 vs float32 "
                "given the same fine-tune")
    assert t["met"] and "+0.00 pt" in t["value"] and "per seed -0.50, +0.00, +0.10" in t["value"]


def test_ptq_and_dynamic_verdicts(bq):
    ts = bq.check_targets(_result([0.0] * 3))
    best = _target(ts, "mobilenet_v1: best PTQ algo (mse)")
    assert best["met"] and "-0.10 pt" in best["value"]
    assert _target(ts, "mobilenet_v1: best PTQ algo vs converter")["met"]           # 91.90 % >= 91.80 %
    assert _target(ts, "mobilenet_v1: dynamic int8 bytes")["met"]                   # -73 %
    res = _result([0.0] * 3)
    res["rows"] = [r for r in res["rows"] if r["variant"] != "ptq_mse"]
    res["rows"].append(_row("converter_int8", 0.919))
    res["rows"] = [r for r in res["rows"] if not (r["variant"] == "converter_int8" and r["accuracy"] < 0.919)]
    assert not _target(bq.check_targets(res), "mobilenet_v1: best PTQ algo vs converter")["met"]  # 91.70 < 91.90


def test_no_qat_rows_is_reported_not_met(bq):
    res = _result([])
    t = _target(bq.check_targets(res), "mobilenet_v1: QAT int8 accuracy vs float32")
    assert t["value"] == "not run" and not t["met"]


def test_merge_replaces_rows_of_the_same_key(bq):
    old = [_row("qat_int8", 0.90, seed=0), _row("qat_int8", 0.91, seed=1), _row("float32", 0.92)]
    new = [_row("qat_int8", 0.95, seed=1), _row("float32", 0.93), _row("qat_int8", 0.94, seed=1, qat_images=60000)]
    out = {bq.row_key(r): r["accuracy"] for r in bq.merged(old, new)}
    assert out == {("mobilenet_v1", "qat_int8", 0, 30000): 0.90, ("mobilenet_v1", "qat_int8", 1, 30000): 0.95,
                   ("mobilenet_v1", "float32", None, None): 0.93, ("mobilenet_v1", "qat_int8", 1, 60000): 0.94}


@pytest.mark.parametrize("argv, message", [(["--seeds", "a"], "--seeds"), (["--seeds", ","], "--seeds"),
                                           (["--qat-images", "0"], "--qat-images")])
def test_bad_arguments_are_refused(bq, argv, message, capsys):
    with pytest.raises(SystemExit):
        bq.parse_args(argv)
    assert message in capsys.readouterr().err


def test_quick_arguments(bq):
    a = bq.parse_args(["--quick", "--seeds", "3,4"])
    assert a.seeds == [3] and a.models == ["mobilenet_v1"] and a.qat_images == 512 and len(a.algos) == 3
    assert bq.command_line(bq.parse_args([])) == "nice -n 10 python scripts/bench_quant.py --seeds 0,1,2"
    assert bq.command_line(bq.parse_args(["--qat-lr", "0.001", "--rounds", "7"])).endswith(
        " --qat-lr 0.001 --rounds 7")                                # a non-default setting reproduces
    assert "--rounds" not in bq.command_line(bq.parse_args(["--quick"]))  # --quick's own 2 rounds


def test_resume_skips_saved_seeded_rows_and_writes_json_and_md(bq, tmp_path, monkeypatch):
    """main() with the measurement replaced: the saved rows reach measure_model, new rows are merged, the
    fragment is written (JSON + md) and a second run keeps the first run's rows."""
    import numpy as np

    calls = []

    def fake_measure(name, args, train, test, saved, log):
        calls.append(sorted(k for k in saved if k[0] == name))
        done = {k[2] for k in saved if k[0] == name and k[1] == "qat_int8"}
        rows = [_row("float32", 0.92, model=name), _row("ptq_mse", 0.918, model=name),
                _row("converter_int8", 0.917, model=name), _row("dynamic_int8", 0.919, model=name, nbytes=260)]
        for s in args.seeds:
            if s not in done:
                rows += [_row("qat_int8", 0.921, seed=s, model=name), _row("float32_finetuned", 0.92, seed=s, model=name)]
        return rows, {}, {"params": 10, "keras_accuracy": 0.92, "shipped": {"command": "train", "seed": 0}}

    x = np.zeros((4, 28, 28, 1), np.float32)
    y = np.zeros(4, np.int32)
    monkeypatch.setattr(bq, "measure_model", fake_measure)
    monkeypatch.setattr(bq, "load_full", lambda quick: ((np.zeros((60000, 1, 1, 1), np.float32), y),
                                                        (x.repeat(2500, 0), y.repeat(2500))))
    out = tmp_path / "bench"
    assert bq.main(["--models", "mobilenet_v1", "--seeds", "0,1", "--out", str(out)]) == 0
    saved = json.loads((out / "quant.json").read_text())
    assert {(r["variant"], r["seed"]) for r in saved["rows"]} >= {("qat_int8", 0), ("qat_int8", 1)}
    assert saved["seeds"] == [0, 1] and saved["test_samples"] == 10000
    assert bq.main(["--models", "mobilenet_v1", "--seeds", "0,1,2", "--out", str(out)]) == 0
    assert ("mobilenet_v1", "qat_int8", 1, 30000) in calls[1]
    saved = json.loads((out / "quant.json").read_text())
    assert saved["seeds"] == [0, 1, 2]
    t = _target(saved["targets"], "mobilenet_v1: QAT int8 accuracy vs float32")
    assert t["met"] and "median over 3 seed(s)" in t["what"]
    md = (out / "quant.md").read_text()
    assert "| mobilenet_v1 | qat_int8 | 2 | 92.10 | +0.10 |" in md and "0.200 (0.190-0.250)" in md
    assert "all 10,000 test images" in md and "seeds [0, 1, 2]" in md
    assert len(saved["commands"]) == 2

    # the README headline row reads the QAT verdict of this table, with its data label
    from _headline import ROWS

    make = dict(ROWS)["quant"]
    rows = make(saved)
    assert len(rows) == 1 and "QAT int8 accuracy vs float32" in rows[0][0]
    assert "converged nets, all 10,000 test images" in rows[0][3]


def test_render_rewrites_md_from_saved_json(bq, tmp_path):
    res = _result([0.1, 0.0, -0.1], [0.0, 0.0, 0.0])
    res.update({"command": "c", "date": "d", "platform": "p", "cpu": "cpu", "cores": 2, "load_average": [1, 1, 1],
                "data": "all 10,000 test images", "calib_samples": 256, "qat_lr": 1e-4, "seeds": [0, 1, 2],
                "models": {"mobilenet_v1": {"params": 5, "keras_accuracy": 0.92, "shipped": {}}},
                "failed": {"mobilenet_v1/ptq_KL": "ValueError: boom"}, "notes": ["n"]})
    path = tmp_path / "quant.json"
    path.write_text(json.dumps(res))
    assert bq.main(["--render", str(path)]) == 0
    md = (tmp_path / "quant.md").read_text()
    assert "| mobilenet_v1 | ptq_KL | | failed: ValueError: boom |" in md
    assert "| mobilenet_v1: QAT int8 accuracy vs float32 (30,000-image fine-tune, median over 3 seed(s)) |" in md
