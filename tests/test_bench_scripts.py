"""Smoke tests of the benchmark entry point: argument parsing and BENCHMARKS.md rendering (no training)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load(name):
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(f"_bench_test_{name}", SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench():
    return _load("bench")


@pytest.fixture(scope="module")
def render():
    return _load("render_benchmarks")


# ------------------------------------------------------------------------------------ bench.py
def test_tables_default_all_in_order(bench):
    args = bench.parse_args([])
    assert args.tables == [t for t in bench.TABLES if t not in bench.ON_REQUEST]
    assert bench.parse_args(["--tables", "prune_methods"]).tables == ["prune_methods"]
    assert not args.quick and not args.render_only


def test_tables_subset_keeps_order_and_dedups(bench):
    args = bench.parse_args(["--tables", "cost", "peers", "cost", "--quick"])
    assert args.tables == ["cost", "peers"]
    assert args.quick


def test_unknown_table_is_refused(bench, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--tables", "pruning"])
    assert "invalid choice: 'pruning'" in capsys.readouterr().err


def test_every_table_script_exists(bench):
    for table, (script, stems, *_rest) in bench.TABLES.items():
        assert (SCRIPTS / script).is_file(), f"{table}: scripts/{script} missing"
        assert stems


def test_run_table_reports_a_missing_script(bench, tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "benchmarks").mkdir()
    entry = bench.run_table("cost", quick=True, root=tmp_path, logs=tmp_path, log=lambda m: None)
    assert entry["status"] == "missing"
    assert "bench_cost.py" in entry["error"]


def test_run_table_records_a_failing_script(bench, tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "scripts" / "bench_cost.py").write_text("import sys\nprint('boom: no data')\nsys.exit(3)\n")
    entry = bench.run_table("cost", quick=True, root=tmp_path, logs=tmp_path, log=lambda m: None)
    assert entry["status"] == "failed" and entry["returncode"] == 3
    assert "boom: no data" in entry["error"]
    assert entry["fragments"] == []
    assert (tmp_path / "cost.log").read_text().strip() == "boom: no data"


def test_ensure_tfmot_does_not_install_when_present(bench, monkeypatch):
    monkeypatch.setattr(bench.importlib.util, "find_spec", lambda name: object())

    def no_pip(*a, **k):
        raise AssertionError("pip must not run when the peer is installed")

    monkeypatch.setattr(bench.subprocess, "run", no_pip)
    assert bench.ensure_tfmot(log=lambda m: None) is True


def test_ensure_tfmot_installs_no_deps_as_argument_list(bench, monkeypatch):
    monkeypatch.setattr(bench.importlib.util, "find_spec", lambda name: None if name == "tf_keras" else object())
    calls = []

    class Done:
        returncode = 0

    monkeypatch.setattr(bench.subprocess, "run", lambda cmd, **kw: calls.append((cmd, kw)) or Done())
    assert bench.ensure_tfmot(log=lambda m: None)
    (cmd, kw), = calls
    assert isinstance(cmd, list) and "shell" not in kw
    assert cmd[1:5] == ["-m", "pip", "install", "--no-deps"]
    assert set(bench.TFMOT_PACKAGES) <= set(cmd)


def test_helpers(bench):
    assert bench.median([3, None, 1, 2]) == 2
    assert bench.median([None]) is None
    assert bench.gzip_size(b"\0" * 10000) < 100
    m = bench.machine()
    assert m["cores"] >= 1 and m["python"].count(".") == 2


@pytest.mark.parametrize("name", ["bench_peers_tfmot", "bench_combined", "bench_cost"])
def test_quick_flags(name):
    mod = _load(name)
    full, quick = mod.parse_args([]), mod.parse_args(["--quick"])
    assert len(quick.seeds if hasattr(quick, "seeds") else [0]) == 1
    assert quick != full


def test_peer_script_keeps_tfmot_out_of_this_process():
    mod = _load("bench_peers_tfmot")
    assert "tensorflow_model_optimization" not in sys.modules
    assert "tf_keras" not in sys.modules
    args = mod.parse_args(["--quick"])
    assert args.width == 0.25 and args.seeds == [0] and args.worker is None


def test_combined_configs_validate():
    mod = _load("bench_combined")
    from kslim.compressor import validate_config

    args = mod.parse_args(["--quick", "--rows", *mod.RUNS])
    runs = mod.configs(args, 0, "/tmp/s.keras", "/tmp/t.keras")
    assert set(runs) == {"baseline", "finetuned", "distill", "prune", "prune_all", "prune_all_pt"}
    for cfg, stages in runs.values():
        validated = validate_config(cfg)
        for idx in stages.values():  # every row points at an export stage
            assert "export" in validated["strategies"][idx - 1]
    full = mod.parse_args(["--seeds", "0,1"])
    assert full.rows == ["baseline", "finetuned", "prune", "prune_all", "prune_all_pt"]
    assert mod.configs(full, 0, "a", "b")["prune_all"][0]["strategies"][0]["prune"]["keep_classifier"] is False
    pt, pt_rows = mod.configs(full, 0, "a", "b")["prune_all_pt"]  # prune_all with per-tensor weight scales
    assert pt["strategies"][0] == mod.configs(full, 0, "a", "b")["prune_all"][0]["strategies"][0]
    assert pt["strategies"][2]["quant_aware"]["weight_quantize_type"] == "abs_max"
    assert list(pt_rows) == ["pruned -50% MACs (hessian, classifier input too) + per-tensor QAT int8"]
    assert "baseline" not in mod.configs(full, 1, "/tmp/s.keras", "/tmp/t.keras")  # untrained: one seed only
    cfg = mod.configs(full, 0, "/tmp/s.keras", "/tmp/t.keras")["prune"][0]
    assert cfg["data"] == {"source": "full", "batch_size": 128}  # all 60,000 training, all 10,000 test images
    assert cfg["train"]["schedule"] == "cosine"


def test_combined_targets_judge_the_median_of_per_seed_drops():
    mod = _load("bench_combined")
    ctl, lab = mod.CONTROL, "pruned -50% MACs (hessian) + QAT int8"

    def result(per_seed_ctl, per_seed_row, bytes_row=140_000):
        rows = [{"row": "baseline", "accuracy": 0.93, "per_seed": {"0": 0.93}, "bytes": 1_000_000},
                {"row": ctl, "accuracy": 0.93, "per_seed": per_seed_ctl, "bytes": 1_000_000},
                {"row": lab, "accuracy": 0.92, "per_seed": per_seed_row, "bytes": bytes_row}]
        return {"rows": rows, "settings": {"test_images": 10000}}

    t = mod.check_targets(result({"0": 0.93, "1": 0.93, "2": 0.93}, {"0": 0.925, "1": 0.90, "2": 0.921}))
    assert [x["met"] for x in t] == [True, True]  # 86.0 % smaller; drops +0.50/+3.00/+0.90 -> median +0.90
    assert "+0.90 pt" in t[1]["value"] and "noise ±0.50" in t[1]["value"]
    t = mod.check_targets(result({"0": 0.93, "1": 0.93}, {"0": 0.93, "1": 0.93}, bytes_row=141_000))
    assert [x["met"] for x in t] == [False, False]  # 85.9 % smaller; 2 seeds are not enough


# ------------------------------------------------------------------------------------ render_benchmarks.py
def _write(d, name, text):
    (d / name).write_text(text, encoding="utf-8")


def test_render_orders_demotes_and_reports(render, tmp_path):
    _write(tmp_path, "prune.md", "## Filter pruning\n\n| a | b |\n|---|---|\n| 1 | 0.1234 |\n\n```\n# not a heading\n```\n")
    _write(tmp_path, "peers_tfmot.md", "<!-- section: prune -->\n### Peer prune\nP-FIG 0.777\n"
                                       "<!-- section: quant -->\n### Peer quant\nQ-FIG 0.888\n")
    _write(tmp_path, "cost.md", "## Cost\nC-FIG 1.5 s\n")
    _write(tmp_path, "bench_status.json", json.dumps({
        "tables": {"quant": {"script": "scripts/bench_quant.py", "status": "failed", "started": "x",
                             "command": "python scripts/bench_quant.py", "seconds": 90.0,
                             "error": "exit 1; ImportError: nope"}}}))
    text = render.render(tmp_path, quick=True, date="2030-01-01 00:00 UTC",
                         machine={"cpu": "TestCPU", "cores": 2, "python": "3.11.0", "load_avg_1_5_15": [5.0, 1, 1]})
    assert "Smoke run" in text and "TestCPU" in text and "2030-01-01" in text
    assert "machine was shared" in text
    # fixed order of the tables, fragments kept verbatim (figures untouched), headings demoted
    order = [text.index(f"## {n}. ") for n in range(1, 8)]
    assert order == sorted(order)
    assert "| 1 | 0.1234 |" in text and "### Filter pruning" in text and "\n# not a heading" in text
    # the peer fragment is split: its prune part under table 1, its quant part under table 2
    t1, t2, t3 = text.index("## 1. "), text.index("## 2. "), text.index("## 3. ")
    assert t1 < text.index("P-FIG 0.777") < t2 < text.index("Q-FIG 0.888") < t3
    assert "<!-- section" not in text
    # failed and missing tables are said so
    assert "`scripts/bench_quant.py` failed" in text and "ImportError: nope" in text
    assert "`benchmarks/distill.md` does not exist" in text
    assert text.count("**Anchor.**") == len(render.SECTIONS)
    assert "| quant | `python scripts/bench_quant.py` | failed | 1.5 | x |" in text


def test_render_main_writes_file(render, tmp_path):
    _write(tmp_path, "cost.md", "C-FIG\n")
    out = tmp_path / "B.md"
    assert render.main(["--bench-dir", str(tmp_path), "--out", str(out)]) == 0
    assert "C-FIG" in out.read_text() and "Smoke run" not in out.read_text()


def test_split_and_demote(render):
    parts = render.split_sections("intro\n<!-- section: a -->\nA\n<!-- section: b-2 -->\nB\n")
    assert parts == {None: "intro", "a": "A", "b-2": "B"}
    assert render.demote("# T\n```\n# c\n```\n## U") == "## T\n```\n# c\n```\n### U"


def test_command_line_drops_output_folders(bench):
    cmd = bench.command_line("scripts/bench_cost.py", ["--repeats", "1", "--out", "/tmp/x", "--workdir=/w", "--quick"])
    assert cmd == "python scripts/bench_cost.py --repeats 1 --quick"


def _peer_row(table, tool, acc, failed=False):
    if failed:
        return {"table": table, "tool": tool, "variant": "v", "failed": True}
    return {"table": table, "tool": tool, "variant": f"{tool}-{table}", "accuracy": acc, "delta_pt": 1.0,
            "bytes": 1000, "gzip_bytes": 900, "latency_ms_1t": 1.0, "latency_ms_all": 0.5, "speedup_1t": 1.0,
            "step_ratio": 1.5, "step_cpu_ratio": 1.25}


def test_peer_fragment_has_both_sections_and_reports_failure(render):
    mod = _load("bench_peers_tfmot")
    res = {"command": "python scripts/bench_peers_tfmot.py", "date": "d", "load_end": [1, 1, 1],
           "machine": {"cpu": "C", "cores": 2, "platform": "P", "load_avg_1_5_15": [1, 1, 1]},
           "settings": {"model": "m", "pretrain_epochs": 3, "train_images": 10, "test_images": 5, "seeds": [0],
                        "epochs": 1, "batch_size": 128, "flops_target": 0.5, "kslim_kernel_sparsity": 0.47,
                        "kslim_macs_ratio": 0.5, "tfmot_kernel_sparsity": None},
           "tfmot_float_keras_acc": None, "baseline_keras_acc": 0.8, "kslim_float_step_ms": 10.0,
           "tfmot_float_step_ms": None, "anchors": mod.ANCHORS, "tfmot_error": "ImportError: no tfmot",
           "rows": [_peer_row("both", "-", 0.8), _peer_row("prune", "kslim", 0.81234),
                    _peer_row("prune", "tfmot", 0, failed=True), _peer_row("quant", "kslim", 0.79876),
                    _peer_row("quant", "tfmot", 0, failed=True)]}
    md = mod.markdown(res)
    parts = render.split_sections(md)
    assert "0.8123" in parts["prune"] and "0.7988" not in parts["prune"]
    assert "0.7988" in parts["quant"] and "1.25x" in parts["quant"]
    for part in ("prune", "quant"):
        assert "FAILED" in parts[part] and "ImportError: no tfmot" in parts[part]


def test_ptq_only_run_replaces_its_groups_and_supersedes_old_failures():
    """bench_ptq --only G: the saved rows of other groups stay, G's rows come from the new run, and a
    failure the new run measured successfully disappears."""
    mod = _load("bench_ptq")

    def row(backend, recipe, algo="-", extra="", acc=0.9):
        return {"backend": backend, "recipe": recipe, "algo": algo, "extra": extra, "accuracy": acc,
                "delta_pt": 0.0, "group": mod.group_of(backend, recipe, extra)}

    saved = {"command": "full", "date": "d0", "models": [{"model": "m", "rows": [
        row("float", "float32"), row("converter", "int8", "KL"), row("converter", "int8", "mse", "adaround 5 it")],
        "failed": {"litert int4_weight_only adaround 5 it": "TypeError: in user code:"}}]}
    new = {"command": "full --only rounding", "date": "d1", "models": [{"model": "m", "rows": [
        row("float", "float32", acc=0.91), row("converter", "int8", "mse", "adaround 5 it", 0.8),
        row("litert", "int4_weight_only", "-", "adaround 5 it", 0.7)], "failed": {}}]}
    out = mod.merged(saved, new, {"rounding"})
    rows = out["models"][0]["rows"]
    assert [(r["backend"], r["extra"]) for r in rows] == [
        ("float", ""), ("converter", ""), ("converter", "adaround 5 it"), ("litert", "adaround 5 it")]
    assert rows[0]["accuracy"] == 0.91 and rows[2]["accuracy"] == 0.8 and rows[2]["run"] == "d1"
    assert out["models"][0]["failed"] == {} and out["commands"] == ["full", "full --only rounding"]
    assert mod.group_of("keras", "int8", "model.quantize") == "peers" and mod.group_of("litert", "int8x4", "") == "mixed"


# ------------------------------------------------------------------------------------ bench_prune_methods.py
def _pm_row(model, seed, group, method, target, acc):
    return {"model": model, "seed": seed, "group": group, "method": method, "target": target, "tflite_acc": acc,
            "macs": 1_000_000, "params": 100, "tflite_bytes": 400, "latency_ms": 0.1}


def test_a_row_saved_with_its_runs_baseline_is_judged_against_it_not_a_later_rerun():
    pm = _load("bench_prune_methods")
    # seed 0's baseline was re-run later (0.92); the l1 row was measured in a run whose baseline scored 0.90
    rows = [_pm_row("m", 0, "baseline", "baseline + fine-tune", 0, 0.92),
            dict(_pm_row("m", 0, "criteria", "l1, local", 50, 0.89), base_acc=0.90),
            _pm_row("m", 0, "criteria", "l2, local", 50, 0.89)]  # saved before base_acc: the latest baseline
    summ = {s["method"]: s for s in pm.summary(rows)}
    assert summ["l1, local"]["drop_pt"] == pytest.approx(1.0) and summ["l1, local"]["base_acc"] == pytest.approx(0.90)
    assert summ["l2, local"]["drop_pt"] == pytest.approx(3.0)
    # a row with its own baseline needs no saved baseline row of its seed
    assert [s["drop_pt"] for s in pm.summary(rows[1:2])] == [pytest.approx(1.0)]
    # and its figure is dated by its own run, not by the later re-run of the seed's baseline
    dated = [dict(rows[0], date="2026-12-09 08:00 UTC"), dict(rows[1], date="2026-12-07 10:00 UTC"),
             dict(rows[2], date="2026-12-06 10:00 UTC")]
    summ = {s["method"]: s for s in pm.summary(dated)}
    assert summ["l1, local"]["date"] == "2026-12-07 10:00 UTC" and summ["l2, local"]["date"] == "2026-12-09 08:00 UTC"


def test_prune_methods_table_drops_are_per_seed_and_latency_rows_are_not_candidates(tmp_path):
    pm = _load("bench_prune_methods")
    rows = [_pm_row("m", s, "baseline", "baseline + fine-tune", 0, base) for s, base in ((0, 0.90), (1, 0.92))]
    rows += [_pm_row("m", 0, "criteria", "l1, local", 50, 0.89), _pm_row("m", 1, "criteria", "l1, local", 50, 0.90),
             _pm_row("m", 0, "criteria", "l1, local", 70, 0.80),
             _pm_row("m", 0, "latency", "NetAdapt (l1) to that latency", 50, 0.95)]
    summ = {(s["method"], s["target"]): s for s in pm.summary(rows)}
    l1 = summ[("l1, local", 50)]
    assert l1["seeds"] == [0, 1] and l1["drop_pt"] == pytest.approx(1.5)  # (1 + 2) / 2 against each seed's own base
    assert l1["drop_sd"] == pytest.approx(0.7071, abs=1e-3) and summ[("l1, local", 70)]["drop_sd"] is None
    targets = pm.check_targets(rows)
    assert [t["met"] for t in targets] == [False, False]  # NetAdapt's -5 pt row is at equal latency, not MACs
    assert "l1, local" in targets[0]["what"] and targets[0]["value"].startswith(
        "+1.50 pt median of per-seed drops (per seed +1.00, +2.00; mean +1.50); test-set noise ±")
    # a re-run of one (model, seed, method, target) replaces its row, others stay
    again = pm.merged(rows, [_pm_row("m", 0, "criteria", "l1, local", 50, 0.90)])
    assert len(again) == len(rows) and {r["tflite_acc"] for r in again if r["method"] == "l1, local" and
                                        r["seed"] == 0 and r["target"] == 50} == {0.90}
    result = {"rows": rows, "targets": targets, "command": "c", "date": "d", "platform": "p", "cpu": "c",
              "cores": 2, "load_average": [0, 0, 0], "data": "data", "notes": ["n"]}
    pm.write_markdown(result, tmp_path / "pm.md")
    text = (tmp_path / "pm.md").read_text()
    assert "| criteria | l1, local | -50 % | 0,1 |" in text and "**MISSED**" in text


def test_prune_methods_latency_column_is_a_ratio_to_the_same_pass_baseline(tmp_path):
    pm = _load("bench_prune_methods")
    # seed 0 timed on a loaded machine (base 0.4 ms), seed 1 on a quiet one (base 0.2 ms): both 0.5 x base
    rows = [dict(_pm_row("m", s, "baseline", pm.BASE_METHOD, 0, 0.9), latency_ms=b, latency_base_ms=b)
            for s, b in ((0, 0.4), (1, 0.2))]
    rows += [dict(_pm_row("m", s, "criteria", "l1, local", 50, 0.89), latency_ms=b / 2, latency_base_ms=b)
             for s, b in ((0, 0.4), (1, 0.2))]
    rows.append(_pm_row("m", 0, "criteria", "l2, local", 50, 0.89))  # no same-pass baseline saved: no figure
    summ = {s["method"]: s for s in pm.summary(rows)}
    assert summ["l1, local"]["latency_ratio"] == pytest.approx(0.5) and summ["l2, local"]["latency_ratio"] is None
    result = {"rows": rows, "targets": pm.check_targets(rows), "command": "c", "date": "d", "platform": "p",
              "cpu": "c", "cores": 2, "load_average": [0, 0, 0], "data": "data", "notes": []}
    pm.write_markdown(result, tmp_path / "pm.md")
    lines = (tmp_path / "pm.md").read_text().splitlines()
    assert any(l.startswith("| criteria | l1, local |") and l.endswith("| 0.50 |") for l in lines)
    assert any(l.startswith("| criteria | l2, local |") and l.endswith("|  |") for l in lines)


def test_prune_methods_table_names_the_machines_of_its_rows(tmp_path):
    pm, lib = _load("bench_prune_methods"), _load("_benchlib")
    zen4, zen3 = "AMD EPYC (avx2 fma avx512f avx512_vnni)", "AMD EPYC (avx2 fma)"
    rows = [dict(_pm_row("m", 0, "baseline", pm.BASE_METHOD, 0, 0.9), cpu=zen4),
            dict(_pm_row("m", 0, "criteria", "l1, local", 50, 0.89), cpu=zen4),
            dict(_pm_row("m", 1, "baseline", pm.BASE_METHOD, 0, 0.9), cpu=zen3),
            _pm_row("m", 1, "criteria", "l1, local", 50, 0.88)]   # a row saved before rows carried their cpu
    assert lib.row_machines(rows) == f"{zen4} (2 rows), {zen3} (1 row), not recorded (1 row)"
    result = {"rows": rows, "targets": pm.check_targets(rows), "command": "c", "date": "d", "platform": "p",
              "cpu": zen3, "cores": 2, "load_average": [0, 0, 0], "data": "data", "notes": []}
    pm.write_markdown(result, tmp_path / "pm.md")
    assert f"Rows measured on: {lib.row_machines(rows)}  " in (tmp_path / "pm.md").read_text().splitlines()


def test_prune_methods_targets_judge_the_median_of_per_seed_drops():
    pm = _load("bench_prune_methods")
    rows = [_pm_row("m", s, "baseline", "baseline + fine-tune", 0, 0.92) for s in range(3)]
    # drops 0.4, 0.5, 2.0 pt: mean 0.97 misses <= 0.5, the median 0.50 meets it (one bad seed does not decide)
    rows += [_pm_row("m", s, "criteria", "taylor, local", 50, 0.92 - d / 100) for s, d in enumerate((0.4, 0.5, 2.0))]
    # drops 0.8 pt in every seed: lower mean (0.8 < 0.97) but a higher median: not the best method
    rows += [_pm_row("m", s, "criteria", "l1, local", 50, 0.912) for s in range(3)]
    (t,) = pm.check_targets(rows)
    assert t["met"] and "taylor, local" in t["what"] and t["value"].startswith("+0.50 pt median")
    assert "±0.53 pt (1.96 SE, 10,000 images)" in t["value"]  # 1.96 * sqrt(.92 * .08 / 1e4)
    # a method measured on one seed so far (a run in progress) is not judged against 3-seed ones
    (t,) = pm.check_targets(rows + [_pm_row("m", 0, "recovery", "new, local", 50, 0.92)])
    assert "taylor, local, 3 seed(s)" in t["what"]
    # while no method has 3 seeds, the best-covered ones are the candidates
    two = [r for r in rows if r["seed"] < 2] + [_pm_row("m", 0, "recovery", "new, local", 50, 0.92)]
    (t,) = pm.check_targets(two)
    assert "2 seed(s)" in t["what"]


def test_a_target_is_dated_by_its_latest_row_and_the_headline_prints_that_date(tmp_path):
    """Rows merged over several runs: a target carries the date of the newest row behind it (not the table's
    last write, which a run of another net moves on); rows saved before rows were dated leave it undated."""
    pm, hl = _load("bench_prune_methods"), _load("_headline")
    rows = [_pm_row("m", s, "baseline", "baseline + fine-tune", 0, 0.92) for s in range(3)]
    rows += [_pm_row("m", s, "criteria", "l1, local", 50, 0.918) for s in range(3)]
    (t,) = pm.check_targets(rows)
    assert "date" not in t
    for i, r in enumerate(rows):
        r["date"] = f"2026-12-0{1 + i % 3} 10:00 UTC"
    (t,) = pm.check_targets(rows)
    assert t["date"] == "2026-12-03 10:00 UTC"
    (tmp_path / "prune_methods.json").write_text(json.dumps({"date": "2026-12-09 08:00 UTC", "test_samples": 10000,
                                                             "rows": rows, "targets": [t]}))
    text = hl.render_readme(f"# t\n\n{hl.START}\n{hl.END}\n", tmp_path)
    assert "[`prune_methods`](BENCHMARKS.md#1-pruning), 2026-12-03," in text and "2026-12-09" not in text


def test_prune_methods_fine_tune_budgets_are_separate_tables(tmp_path):
    pm = _load("bench_prune_methods")
    rows = [_pm_row("m", 0, "baseline", "baseline + fine-tune", 0, 0.90),   # saved before budgets were recorded
            _pm_row("m", 0, "criteria", "l1, local", 50, 0.88)]
    longer = [dict(r, ft_images=30720) for r in (_pm_row("m", 0, "baseline", "baseline + fine-tune", 0, 0.93),
                                                 _pm_row("m", 0, "criteria", "l1, local", 50, 0.925))]
    rows = pm.merged(rows, longer)
    assert len(rows) == 4  # a longer fine-tune does not replace the default one's rows
    summ = {(s["ft_images"], s["method"]): s for s in pm.summary(rows)}
    assert summ[(10240, "l1, local")]["drop_pt"] == pytest.approx(2.0)   # against its own budget's baseline
    assert summ[(30720, "l1, local")]["drop_pt"] == pytest.approx(0.5)
    targets = pm.check_targets(rows)
    assert [t["met"] for t in targets] == [False, True] and "30,720 images" in targets[1]["what"]
    result = {"rows": rows, "targets": targets, "command": "c", "date": "d", "platform": "p", "cpu": "c",
              "cores": 2, "load_average": [0, 0, 0], "data": "data", "notes": []}
    pm.write_markdown(result, tmp_path / "pm.md")
    text = (tmp_path / "pm.md").read_text()
    assert "### m, fine-tune 10,240 training images" in text and "### m, fine-tune 30,720 training images" in text
    with pytest.raises(SystemExit):
        pm.parse_args(["--only", "criteria,bogus"])
    assert pm.parse_args(["--quick"]).ft_images == 1024 and pm.parse_args([]).targets == [50, 70]


def test_prune_methods_importances_are_checked_against_the_registry(capsys):
    pm = _load("bench_prune_methods")
    args = pm.parse_args(["--importances", "l1,taylor"])
    assert pm._chosen(args, pm.GLOBAL_IMPORTANCES) == ["l1", "taylor"]
    assert pm._chosen(pm.parse_args([]), pm.GLOBAL_IMPORTANCES) == list(pm.GLOBAL_IMPORTANCES)
    with pytest.raises(SystemExit):
        pm.parse_args(["--importances", "l1,magnitude"])
    assert "unknown importance(s) ['magnitude']" in capsys.readouterr().err


def test_ft_slice_beyond_the_training_set_makes_further_passes_over_it():
    import numpy as np

    ft_slice = _load("_benchlib").ft_slice

    train = (np.arange(10), np.arange(10) * 2)
    x, y = ft_slice(train, 25, seed=3)
    assert len(x) == 25 and (y == 2 * x).all()
    for k in (0, 10):  # every full pass holds every image once
        assert sorted(x[k:k + 10]) == list(range(10))
    assert (ft_slice(train, 7, seed=3)[0] == x[:7]).all()  # a smaller budget is the start of the same order
    assert not (x[:10] == x[10:20]).all()  # each pass in a fresh order


def test_prune_methods_recovery_rows_runs_only_the_rows_asked_for(capsys, monkeypatch):
    pm = _load("bench_prune_methods")
    args = pm.parse_args(["--recovery-rows", "kd,classifier+kd,uncoupled+kd", "--targets", "50"])
    calls = []

    class FakeBench:
        def __init__(self):
            self.args = args

        def pruner(self, imp, keep_classifier=True, scope="all"):
            calls.append(("prune", (keep_classifier, scope)))
            return type("P", (), {"prune_to_flops": lambda _, t: type("R", (), {"model": object()})()})()

        def finish(self, method, group, target, model, t0, tune="fine_tune"):
            calls.append((method, tune))
            return {"method": method}

        def iterative(self, *a):
            raise AssertionError("iterative rows were not asked for")

    monkeypatch.setattr(pm, "_scope_matters", lambda b, scope: True)  # the fake bench has no net to read
    rows = pm.rows_recovery(FakeBench())
    assert [r["method"] for r in rows] == ["hessian, local + KD from the unpruned net",
                                           "hessian, local, classifier input pruned too + KD from the unpruned net",
                                           "hessian, local, scope uncoupled + KD from the unpruned net"]
    assert all(t == "distill" for m, t in calls if m != "prune")
    assert [o for m, o in calls if m == "prune"] == [(True, "all"), (False, "all"), (True, "uncoupled")]
    assert pm.parse_args([]).recovery_rows == list(pm.RECOVERY_ROWS)
    with pytest.raises(SystemExit):
        pm.parse_args(["--recovery-rows", "kd,lasso"])
    assert "unknown row(s) ['lasso']" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ README headline rows
def test_readme_headline_rows_are_the_rendering_of_the_committed_json():
    """No headline figure is typed: the README's block is exactly what _headline renders from benchmarks/."""
    hl = _load("_headline")
    readme = (SCRIPTS.parent / "README.md").read_text(encoding="utf-8")
    assert hl.render_readme(readme, SCRIPTS.parent / "benchmarks") == readme, (
        "README headline rows differ from benchmarks/*.json: run `python scripts/render_benchmarks.py`")


def test_headline_block_rendered_from_json_with_its_source_and_verdict(tmp_path):
    hl = _load("_headline")
    (tmp_path / "ptq.json").write_text(json.dumps({
        "date": "2026-12-03 18:06 UTC", "data": "Fashion-MNIST (60,000 train / 10,000 test)",
        "targets": [{"what": "m: best int8 PTQ vs float", "value": "+0.06 pt", "target": ">= -0.3 pt", "met": True}]}))
    (tmp_path / "quant.json").write_text(json.dumps({
        "date": "2026-11-23", "test_samples": 2000,
        "targets": [{"what": "m: QAT int8 accuracy vs float32", "value": "-0.30 pt", "target": ">= -0.2 pt",
                     "met": False}, {"what": "m: dynamic int8 bytes", "value": "-70 %", "target": "~", "met": False}]}))
    text = f"# title\n\nintro\n\n{hl.START}\n| old | typed |\n{hl.END}\n\n## after\n"
    out = hl.render_readme(text, tmp_path)
    assert out.startswith("# title\n\nintro\n\n") and out.endswith(f"{hl.END}\n\n## after\n") and "typed" not in out
    assert "| m: best int8 PTQ vs float | +0.06 pt | >= -0.3 pt met | [`ptq`](BENCHMARKS.md#2-quantization), " \
           "2026-12-03, converged nets, all 10,000 test images |" in out
    assert "| m: QAT int8 accuracy vs float32 | -0.30 pt | >= -0.2 pt **missed** |" in out and "bundled subset" in out
    assert "dynamic int8 bytes" not in out                       # only the rows the README lists
    assert "Not measured yet:" in out and "`benchmarks/prune_methods.json`" in out
    assert hl.render_readme(out, tmp_path) == out                # idempotent
    with pytest.raises(hl.HeadlineError, match="exactly one headline block"):
        hl.render_readme("# no markers\n", tmp_path)


def test_headline_latency_row_needs_every_one_of_three_runs():
    hl = _load("_headline")
    d = {"date": "2026-12-04", "rows": [{}] * 21, "summary": {"table": {"within_10pct": 0.95}},
         "per_run_within_10pct": [0.95, 0.86, 0.90]}
    (row,) = hl._latency_rows(d)
    assert row[1] == "95 %, 86 %, 90 %" and row[2].endswith("**missed**") and "224x224" in row[3]
    d["per_run_within_10pct"] = [0.95, 0.9, 0.9]
    assert hl._latency_rows(d)[0][2] == ">= 90 % in each of 3 runs met"
    d["per_run_within_10pct"] = [0.95, 0.95]  # two runs are not three
    assert hl._latency_rows(d)[0][2].endswith("**missed**")
    old = {"date": "2026-11-23", "rows": [{}] * 17, "summary": {"table": {"within_10pct": 0.71}}}
    assert hl._latency_rows(old)[0][1] == "71 % (one run)"


# ------------------------------------------------------------------------------------ _benchlib
def test_benchlib_docstring_examples_run():
    """scripts/ is outside the package's doctest collection: run _benchlib's examples here."""
    import doctest

    mod = _load("_benchlib")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 3 and result.failed == 0


def test_seed_verdict_judges_the_median_at_the_printed_precision():
    lib = _load("_benchlib")
    drops = {0: 0.9, 1: 1.004, 2: 1.3}  # median 1.004 prints as +1.00: meets "<= 1.0"
    v = lib.seed_verdict("drop", drops, 1.0, False, "n")
    assert v["met"] and v["target"] == "<= 1.0 pt over >= 3 seeds" and v["value"].startswith("+1.00 pt")
    assert not lib.seed_verdict("drop", {0: 0.9, 1: 1.006, 2: 1.3}, 1.0, False, "n")["met"]
    assert not lib.seed_verdict("gain", {0: 0.5, 1: 0.6}, 0.2, True, "n")["met"]  # two seeds only
    assert lib.seed_verdict("gain", {0: 0.5, 1: 0.6}, 0.2, True, "n", min_seeds=2)["met"]


def test_prune_methods_scope_rows_only_where_the_scope_leaves_groups_out():
    """The 'uncoupled' recovery rows run on the ResNet-style net (its Adds tie groups) and are skipped on the
    MobileNetV1-style one (no Add: the same groups as scope 'all')."""
    import keras

    import kslim

    pm = _load("bench_prune_methods")
    keras.utils.set_random_seed(0)
    for net, expected in ((kslim.models.resnet(width=0.25), True), (kslim.models.mobilenet_v1(width=0.25), False)):
        assert pm._scope_matters(type("B", (), {"base": net})(), "uncoupled") is expected
