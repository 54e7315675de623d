"""scripts/bench_prune.py and bench_latency224's headline choice: drops per seed, seed-median targets, the
table, the row cache (no training here; the script's --quick run is the smoke test of the training path)."""

import pytest


@pytest.fixture(scope="module")
def bp(bench_script):
    return bench_script("bench_prune")


def _rows(bp, model="mobilenet_v1", seeds=(0, 1, 2), accs=None):
    """Rows of every variant; ``accs[variant][i]`` is seed i's accuracy (default: base+FT 0.93 - 0.01 per variant)."""
    rows = []
    for i, seed in enumerate(seeds):
        for k, (variant, _) in enumerate(bp.VARIANTS):
            acc = accs[variant][i] if accs and variant in accs else 0.93 - 0.01 * max(k - 1, 0)
            rows.append({"model": model, "seed": seed, "variant": variant, "ft_images": 59000,
                         "macs": int(18e6 * (1 - 0.1 * k)), "params": 1000 - k, "tflite_acc": acc,
                         "tflite_bytes": 4000 - k})
    return rows


def test_drops_are_against_the_same_seeds_fine_tuned_baseline(bp):
    accs = {bp.BASE_FT: [0.93, 0.92, 0.94], "uniform -50% MACs": [0.925, 0.91, 0.93]}
    d = bp.drops(_rows(bp, accs=accs))
    assert d["mobilenet_v1", "uniform -50% MACs"] == pytest.approx({0: 0.5, 1: 1.0, 2: 1.0})
    assert d["mobilenet_v1", bp.BASE_FT] == pytest.approx({0: 0.0, 1: 0.0, 2: 0.0})


def test_targets_judge_the_median_of_per_seed_drops_over_three_seeds(bp):
    accs = {bp.BASE_FT: [0.93, 0.93, 0.93], "uniform -50% MACs": [0.93, 0.925, 0.90],  # drops 0, 0.5, 3.0
            "uniform -70% MACs": [0.90, 0.91, 0.92]}                                 # drops 3, 2, 1
    targets = {t["what"]: t for t in bp.evaluate_targets(_rows(bp, accs=accs), None, 10000)}
    t50 = targets["mobilenet_v1: accuracy drop of uniform -50% MACs vs baseline + fine-tune"]
    assert t50["met"] and t50["value"].startswith("+0.50 pt (per seed +0.00, +0.50, +3.00)")
    assert "test-set noise ±0.50 pt (1.96 SE, 10,000 images)" in t50["value"]
    assert not targets["mobilenet_v1: accuracy drop of uniform -70% MACs vs baseline + fine-tune"]["met"]
    assert len(targets) == 4  # the four pruned variants; the baselines are references, not targets
    two = bp.evaluate_targets(_rows(bp, seeds=(0, 1), accs={bp.BASE_FT: [0.93] * 2, "uniform -50% MACs": [0.93] * 2}),
                              {"total_s": 1.3}, 10000)
    assert not two[0]["met"] and two[0]["target"] == "<= 0.5 pt over >= 3 seeds"  # two seeds are not enough
    assert two[-1]["what"].startswith("ResNet50") and two[-1]["met"]


def test_new_rows_replace_the_saved_rows_of_the_same_net_and_seed(bp):
    saved = _rows(bp) + _rows(bp, model="resnet", seeds=(0,))
    new = [dict(r, tflite_acc=0.5) for r in _rows(bp, seeds=(1,))]
    out = bp.merged(saved, new)
    assert len(out) == len(saved)
    assert {r["tflite_acc"] for r in out if r["model"] == "mobilenet_v1" and r["seed"] == 1} == {0.5}
    assert {r["tflite_acc"] for r in out if r["seed"] != 1} != {0.5}
    assert [r["variant"] for r in out[:len(bp.VARIANTS)]] == [v for v, _ in bp.VARIANTS]  # table order


def test_table_has_per_seed_columns_and_latency_spread(bp, tmp_path):
    rows = _rows(bp)
    lat = {v: {"1": {"median": 0.4 / (1 + k), "p10": 0.38 / (1 + k), "p90": 0.44 / (1 + k)},
               "all": {"median": 0.3, "p10": 0.29, "p90": 0.31}} for k, (v, _) in enumerate(bp.VARIANTS)}
    result = {"command": "python scripts/bench_prune.py", "date": "2026-12-05 21:00 UTC", "platform": "Linux",
              "cpu": "AMD EPYC (avx2)", "cores": 2, "load_average": [0.5, 0.4, 0.3],
              "versions": {"tensorflow": "2.21.0", "keras": "3.15.1", "ai-edge-litert": "2.3.0"},
              "args": {"ft_images": 59000, "lr": 1e-3, "sens_ratios": [0.1, 0.5], "warmup": 50, "rounds": 10,
                       "runs": 50},
              "data": "Fashion-MNIST full set.", "rows": rows, "resnet50": None,
              "latency": {"mobilenet_v1": {"ms": lat, "load_before": [0.5, 0.4, 0.3], "load_after": [0.6, 0.4, 0.3]}}}
    result["targets"] = bp.evaluate_targets(rows, None, 10000)
    bp.write_markdown(result, tmp_path / "prune.md")
    text = (tmp_path / "prune.md").read_text()
    assert "**mobilenet_v1** (seeds 0,1,2; load average before the latency pass [0.5, 0.4, 0.3]" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("| uniform -50% MACs |"))
    # 0.93 -> 0.92 in every seed: +1.00 pt; latency 0.4/3 ms, speed-up 3.00x with its p90/p10 bracket
    assert "| 92.00 | s0 92.00, s1 92.00, s2 92.00 | +1.00 | +1.00, +1.00, +1.00 |" in line
    assert "| 0.133 (0.127-0.147) | 3.00x (2.73-3.16) |" in line
    assert text.count("-> **MISSED**") == 4 and "59,000 training images" in text
    del result["latency"]
    bp.write_markdown(result, tmp_path / "bare.md")  # a net whose latency pass has not run yet still renders
    assert "| uniform -70% MACs |" in (tmp_path / "bare.md").read_text()


def test_arguments(bp, capsys):
    full, quick = bp.parse_args([]), bp.parse_args(["--quick"])
    assert (full.seeds, full.ft_images, full.models) == ([0, 1, 2], bp.DEFAULT_FT_IMAGES, ["mobilenet_v1", "resnet"])
    assert (quick.seeds, quick.ft_images, quick.models) == ([0], 1024, ["mobilenet_v1"])
    assert bp.parse_args(["--seeds", "1,2", "--models", "resnet"]).seeds == [1, 2]
    assert bp.settings(full) != bp.settings(bp.parse_args(["--ft-images", "10240"]))  # other budget: rows dropped
    for bad, msg in ((["--seeds", "a"], "comma-separated list of integers"), (["--ft-images", "0"], "positive")):
        with pytest.raises(SystemExit):
            bp.parse_args(bad)
        assert msg in capsys.readouterr().err


def test_latency224_headline_is_the_suggested_round_to_row_and_must_hold_in_the_runs_before(bench_script):
    hl, lat = bench_script("_headline"), bench_script("bench_latency224")

    def row(variant, speedup, **extra):
        return {"variant": variant, **extra,
                "latency": {"1": {"speedup": speedup, "speedup_lo": speedup - 0.1, "speedup_hi": speedup + 0.1}}}

    suggested = "pruned -50 % MACs, round_to suggested on this host"
    net = {"net": "mobilenet_v2", "load_before": [1.0, 1, 1],
           "rows": [row("pruned -50 % MACs, round_to 1", 1.4), row("pruned -50 % MACs, round_to 16", 1.9),
                    row(suggested, 1.81, suggestion={"round_to": 16}), row("int8 PTQ", 2.1)]}
    d = {"date": "2026-12-05", "cpu": "x", "models": [net]}
    first = hl._latency224_rows(d)[0]
    assert first[0].startswith(f"mobilenet_v2 224x224, {suggested} (16)")  # not the faster round_to 16 row
    assert first[1] == "1.81x (1.71-1.91)" and first[2].endswith("**missed**")  # one run is not enough
    busy = lat.run_summary({"date": "d0", "models": [dict(net, load_before=[2.6, 2, 1],
                                                            rows=[row(suggested, 1.86)])]})
    d["history"] = [busy]
    first = hl._latency224_rows(d)[0]
    assert first[1] == "1.81x (1.71-1.91); earlier runs 1.86x (load 2.6)" and first[2].endswith(" met")
    d["history"].append(lat.run_summary({"date": "d1", "models": [dict(net, rows=[row(suggested, 1.76)])]}))
    assert hl._latency224_rows(d)[0][2].endswith("**missed**")  # it did not hold in one earlier run
    # a run of a pruner that landed at another MACs ratio measured another net: printed, not judged
    net["rows"][2]["macs_ratio"] = 0.5
    # (busy: a run before the MACs ratio was recorded, not judged either)
    d["history"] = [lat.run_summary({"date": f"d{i}", "models": [dict(net, rows=[row(suggested, x, macs_ratio=m)])]})
                    for i, (x, m) in enumerate(((1.9, 0.5), (1.95, 0.47)))] + [busy]
    first = hl._latency224_rows(d)[0]
    assert first[1] == ("1.81x (1.71-1.91); earlier runs 1.90x (load 1.0); "
                        "runs of another or unrecorded MACs ratio (not judged) 1.95x, 1.86x")
    assert first[2].endswith(" met")
    d["history"] = d["history"][1:]
    assert hl._latency224_rows(d)[0][2].endswith("**missed**")  # no earlier run of the same net
    net["rows"] = net["rows"][:2]  # a table without the suggested row: its best round_to row
    assert hl._latency224_rows({"models": [net]})[0][1].startswith("1.90x")


def test_latency224_history_keeps_the_runs_before(bench_script):
    import doctest

    lat = bench_script("bench_latency224")
    assert doctest.testmod(lat, verbose=False).failed == 0
    runs = [{"command": "python scripts/bench_latency224.py", "date": f"d{i}", "models": []} for i in range(6)]
    prev = None
    for r in runs:
        r["history"] = lat.history(prev)
        prev = r
    assert [h["date"] for h in prev["history"]] == ["d1", "d2", "d3", "d4"]  # at most HISTORY, newest last
    assert lat.history({"command": "python scripts/bench_latency224.py --quick", "models": []}) == []


def test_latency224_history_says_which_cpu_measured_each_earlier_run(bench_script, tmp_path):
    lat = bench_script("bench_latency224")
    row = {"variant": "pruned -50 % MACs, round_to 8", "macs_ratio": 0.5, "bytes": 1,
           "latency": {"1": {"median": 1.0, "p10": 0.9, "p90": 1.1, "speedup": 1.8, "speedup_lo": 1.7,
                             "speedup_hi": 1.9}}}
    net = {"net": "mobilenet_v2", "input": [224, 224, 3], "macs": 3e8, "load_before": [1.0, 1, 1],
           "load_after": [1.0, 1, 1], "rows": [row]}
    old = lat.run_summary({"date": "d0", "models": [net]})  # a run from before the CPU was kept
    old.pop("cpu")
    vnni = lat.run_summary({"date": "d1", "cpu": "AMD EPYC (avx2 avx_vnni)", "models": [net]})
    assert vnni["cpu"] == "AMD EPYC (avx2 avx_vnni)"
    result = {"command": "c", "date": "d2", "platform": "p", "cpu": "AMD EPYC (avx2)", "cores": 2, "rounds": 5,
              "runs": 10, "models": [net], "history": [old, vnni]}
    lat.write_markdown(result, tmp_path / "l.md")
    text = (tmp_path / "l.md").read_text()
    assert "- d0, CPU not recorded, mobilenet_v2, load average before" in text
    assert "- d1, AMD EPYC (avx2 avx_vnni), mobilenet_v2, load average before" in text
