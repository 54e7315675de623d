"""Real-resolution latency: pruning and quantization speed-ups of keras.applications MobileNetV2 and
ResNet50 at 224x224, measured on their ``.tflite`` through ai-edge-litert (XNNPACK, batch 1).

Random weights (``weights=None``: nothing can be downloaded, and weights do not change the speed of
these kernels). Per model: float32; filter pruning to -50 % and -70 % MACs (kslim L1, ``round_to`` 1,
8 and 16: the channel multiple changes what XNNPACK's kernels do with the leftovers), -50 % with the
multiple ``kslim.prune.suggest_round_to`` picks from its own timings on this host, and -50 % in the
pruning scope ``uncoupled`` (``kslim.prune.scope``: only the groups no ``Add`` ties, round_to 16); int8 PTQ
(``quant_post_static``, 16 random calibration images: a speed figure, not an accuracy one); int8 QAT
(``quant_aware`` with ranges from two batches in training mode, no weight update, + ``convert``); float16 and dynamic-range weights
(``quant_post_dynamic``). Latencies: 1 thread and all cores, every model of a net timed in interleaved
rounds; each figure is the median with its p10-p90 spread, next to the host's load average before and
after and the CPU's ISA flags. A speed-up whose spread overlaps 1.0 is not a speed-up. Each run keeps a
summary of the runs before it (``history``): the README's speed-up headline must hold in all of them that
measured the same net (a pruned row counts only where that run recorded the same MACs ratio).

    python scripts/bench_latency224.py --quick          # smoke run (MobileNetV2 at 96x96, a few models)
    nice -n 10 python scripts/bench_latency224.py       # full run, writes benchmarks/latency224.{json,md}
"""

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from _benchlib import cpu_name, latency_ms, write_fragment  # noqa: E402

NETS = ("mobilenet_v2", "resnet50")
ROUND_TO = (1, 8, 16)  # 16: the float lanes of an AVX-512 register (8 with AVX2), XNNPACK's tile on such a host
SUGGEST_CANDIDATES = (1, 8, 16, 32)
SUGGESTED = "pruned -50 % MACs, round_to suggested on this host"
SCOPED = "pruned -50 % MACs, scope uncoupled"


def build(name, size):
    import keras

    keras.utils.set_random_seed(0)
    app = {"mobilenet_v2": keras.applications.MobileNetV2, "resnet50": keras.applications.ResNet50}[name]
    return app(weights=None, input_shape=(size, size, 3), classes=1000)


def _calibrated_qat(model, calib):
    """``quant_aware(model)`` whose activation quantizers learnt their ranges from two calibration batches
    in training mode (what the first steps of ``fit`` do; no weight update): speed only."""
    from kslim.quant import quant_aware

    qat = quant_aware(model)
    for batch in (calib[: len(calib) // 2], calib[len(calib) // 2:]):
        qat(batch, training=True)
    return qat


def variants(model, size, quick):
    """``[(variant, build)]`` -- ``build() -> LiteModel``."""
    import numpy as np

    from kslim.analysis import flops
    from kslim.lite import convert
    from kslim.prune import make_pruner
    from kslim.quant import convert as qat_convert
    from kslim.quant import quant_post_dynamic, quant_post_static

    macs = flops(model).macs
    calib = np.random.default_rng(0).random((16 if not quick else 4, size, size, 3), dtype=np.float32)

    def pruned(reduction, round_to, scope="all"):
        def make():
            res = make_pruner(model, importance="l1", round_to=round_to, scope=scope).prune_to_flops(reduction)
            lite = convert(res.model, check=False)
            lite.macs_ratio = flops(res.model).macs / macs
            return lite
        return make

    rows = [("float32", lambda: convert(model, check=False))]
    for reduction in ((0.5,) if quick else (0.5, 0.7)):
        for round_to in ((8,) if quick else ROUND_TO):
            rows.append((f"pruned -{100 * reduction:.0f} % MACs, round_to {round_to}", pruned(reduction, round_to)))
    rows.append((SUGGESTED, suggested(model, macs, quick)))
    if not quick:
        # kslim.prune.scope 'uncoupled': the channels no Add ties (the residual stream keeps its width)
        rows.append((f"{SCOPED}, round_to 16", pruned(0.5, 16, scope="uncoupled")))
    rows += [
        ("int8 PTQ", lambda: quant_post_static(model, calib, algo="abs_max", check=False)),
        ("float16 weights", lambda: quant_post_dynamic(model, dtype="float16", check=False)),
        ("dynamic int8 weights", lambda: quant_post_dynamic(model, check=False)),
    ]
    if not quick:
        rows.append(("int8 QAT (ranges from 2 batches)", lambda: qat_convert(_calibrated_qat(model, calib))))
        rows.append(("pruned -50 % MACs + int8 PTQ", lambda: quant_post_static(
            make_pruner(model, importance="l1", round_to=8).prune_to_flops(0.5).model, calib, algo="abs_max",
            check=False)))
    return rows


def suggested(model, macs, quick):
    """``make() -> LiteModel``: -50 % MACs with the channel multiple ``kslim.prune.suggest_round_to`` picks on this
    host (its own measurement -- every candidate's float ``.tflite`` in 5 interleaved rounds, 1 thread, its default
    tolerance -- separate from this table's interleaved rounds, so the row is not the best of the rows above
    picked after the fact); the choice and its timings ride on it."""
    from kslim.analysis import flops
    from kslim.lite import convert
    from kslim.prune.round_to import suggest_round_to

    def make():
        choice = suggest_round_to(model, 0.5, candidates=(1, 8) if quick else SUGGEST_CANDIDATES,
                                  rounds=5, runs=20 if quick else 100, warmup=10, num_threads=1)
        lite = convert(choice.model, check=False)
        lite.macs_ratio = flops(choice.model).macs / macs
        lite.suggestion = {"round_to": choice.round_to,
                           "candidates": [{k: r.get(k) for k in ("round_to", "latency_ms", "latency_p5_ms",
                                                                 "latency_p95_ms", "reduction")}
                                          for r in choice.rows]}
        return lite

    return make


def bench_net(name, args, log):
    from kslim.analysis import flops

    size = 96 if args.quick else 224
    model = build(name, size)
    lites, rows = {}, []
    for variant, make in variants(model, size, args.quick):
        t0 = time.time()
        try:
            lite = make()
        except Exception as e:  # noqa: BLE001 -- a variant that fails is reported, the others still run
            lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
            rows.append({"net": name, "variant": variant, "error": f"{type(e).__name__}: {lines[-1] if lines else ''}"[:300]})
            log(f"  {name} {variant}: FAILED {rows[-1]['error']}")
            continue
        lites[variant] = lite
        rows.append({"net": name, "variant": variant, "bytes": int(lite.size), "precision": lite.precision,
                     "macs_ratio": getattr(lite, "macs_ratio", None), "build_seconds": round(time.time() - t0, 1),
                     **({"suggestion": lite.suggestion} if hasattr(lite, "suggestion") else {})})
        log(f"  {name} {variant}: {lite.size:,} B, built in {time.time() - t0:.0f}s")
    load_before = [round(x, 2) for x in os.getloadavg()]
    lat = latency_ms(lites, (1, None), args.warmup, args.rounds, args.runs, stats=True)
    load_after = [round(x, 2) for x in os.getloadavg()]
    base = lat.get("float32", {})
    for r in rows:
        if r["variant"] in lat:
            r["latency"] = lat[r["variant"]]
            for key, v in r["latency"].items():
                b = base.get(key)
                if b:
                    # speed-up and its spread: the float median over the variant's p90 .. p10
                    v["speedup"] = b["median"] / v["median"]
                    v["speedup_lo"], v["speedup_hi"] = b["median"] / v["p90"], b["median"] / v["p10"]
            log(f"  {name} {r['variant']}: " + ", ".join(
                f"{k} thread(s) {v['median']:.1f} ms (p10-p90 {v['p10']:.1f}-{v['p90']:.1f})"
                for k, v in r["latency"].items()))
    return {"net": name, "input": [size, size, 3], "macs": int(flops(model).macs), "rows": rows,
            "load_before": load_before, "load_after": load_after}


HISTORY = 4  # earlier runs kept in the JSON: a headline speed-up must hold in the runs before it too


def run_summary(result):
    """What a later run keeps of this one: date, CPU (name and ISA flags), host load, every variant's 1-thread
    speed-up (median, lo, hi) and the MACs ratio of the pruned variants, per net -- the README headline judges a
    speed-up over this run and the ones before it that measured the same artefact (the same MACs ratio).

    >>> r = {"date": "d", "cpu": "AMD EPYC (avx2 avx_vnni)", "models": [{"net": "n", "load_before": [2.5, 1, 1],
    ...     "rows": [{"variant": "v", "macs_ratio": 0.4999, "latency": {"1": {"speedup": 1.9, "speedup_lo": 1.7,
    ...                                                                        "speedup_hi": 2.0}}}]}]}
    >>> run_summary(r)
    {'date': 'd', 'cpu': 'AMD EPYC (avx2 avx_vnni)', 'nets': {'n': {'load_before': [2.5, 1, 1], 'speedup': {'v': [1.9, 1.7, 2.0]}, 'macs_ratio': {'v': 0.4999}}}}
    """
    nets = {}
    for res in result.get("models", []):
        timed = [r for r in res.get("rows", []) if "speedup" in r.get("latency", {}).get("1", {})]
        sp = {r["variant"]: [round(r["latency"]["1"][k], 4) for k in ("speedup", "speedup_lo", "speedup_hi")]
              for r in timed}
        ratios = {r["variant"]: round(r["macs_ratio"], 4) for r in timed if r.get("macs_ratio") is not None}
        nets[res["net"]] = {"load_before": res.get("load_before"), "speedup": sp, "macs_ratio": ratios}
    return {"date": result.get("date"), "cpu": result.get("cpu"), "nets": nets}


def history(previous):
    """The ``history`` of a new run: the previous run's own history plus its summary (newest last, at most
    ``HISTORY``); a previous ``--quick`` run or none: empty."""
    if not previous or "--quick" in previous.get("command", ""):
        return []
    return (list(previous.get("history", [])) + [run_summary(previous)])[-HISTORY:]


def write_markdown(result, path):
    from kslim._io import atomic_write_text

    lines = [
        "## Real-resolution latency (`scripts/bench_latency224.py`)",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}  ",
        f"Machine: {result['platform']}, {result['cpu']}, {result['cores']} cores  ",
        "keras.applications nets with random weights (`weights=None`), batch 1, ai-edge-litert with XNNPACK; "
        f"median of {result['rounds']} interleaved rounds x {result['runs']} runs, p10-p90 in brackets; "
        "speed-up = float32 median / variant median (bracket: against the variant's p90 and p10). "
        "MACs are kslim's count of the Keras model.",
        "",
    ]
    for res in result["models"]:
        lines += [f"**{res['net']}** ({'x'.join(map(str, res['input']))}, {res['macs'] / 1e6:,.0f} M MACs; load average "
                  f"before {res['load_before']}, after {res['load_after']})", "",
                  "| variant | MACs vs float | bytes | 1 thread (ms) | speed-up | all cores (ms) | speed-up |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in res["rows"]:
            if "error" in r:
                lines.append(f"| {r['variant']} | failed: {r['error']} | | | | | |")
                continue
            cells = []
            for key in ("1", "all"):
                v = r.get("latency", {}).get(key)
                if v is None:
                    cells += ["", ""]
                    continue
                cells.append(f"{v['median']:.1f} ({v['p10']:.1f}-{v['p90']:.1f})")
                cells.append(f"{v['speedup']:.2f}x ({v['speedup_lo']:.2f}-{v['speedup_hi']:.2f})"
                             if "speedup" in v else "")
            macs = f"{100 * r['macs_ratio']:.0f} %" if r.get("macs_ratio") else ""
            name = r["variant"] + (f" ({r['suggestion']['round_to']})" if r.get("suggestion") else "")
            lines.append(f"| {name} | {macs} | {r['bytes']:,} | " + " | ".join(cells) + " |")
        lines.append("")
        for r in res["rows"]:
            sug = r.get("suggestion")
            if sug and all(c.get("latency_p5_ms") is not None for c in sug["candidates"] if c.get("latency_ms")):
                cand = "; ".join(f"{c['round_to']}: {c['latency_ms']:.2f} ms ({c['latency_p5_ms']:.2f}-{c['latency_p95_ms']:.2f})"
                                 for c in sug["candidates"] if c.get("latency_ms"))
                lines += [f"`suggest_round_to`'s own measurement (1 thread, median, p5-p95; the smallest multiple the "
                          f"fastest does not beat by more than its tolerance, paired over the interleaved rounds): {cand} -> {sug['round_to']}", ""]
    if result.get("history"):
        lines += ["Earlier runs (1-thread speed-up of the -50 % MACs rows, median (lo-hi); the README headline needs "
                  "its target met in this run and in each earlier run listed at the same MACs ratio):", ""]
        for h in result["history"]:
            for net, v in h["nets"].items():
                ratio = v.get("macs_ratio", {})
                cells = [f"{k} {x[0]:.2f}x ({x[1]:.2f}-{x[2]:.2f})"
                         + (f" at {100 * ratio[k]:.1f} % MACs" if k in ratio else ", MACs ratio not recorded")
                         for k, x in v["speedup"].items()
                         if k.startswith(("pruned -50 % MACs, round_to", SCOPED))]
                cpu = h.get("cpu") or "CPU not recorded"
                lines.append(f"- {h['date']}, {cpu}, {net}, load average before {v['load_before']}: " + "; ".join(cells))
        lines.append("")
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: MobileNetV2 at 96x96, fewer variants")
    p.add_argument("--nets", default=",".join(NETS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks"))
    args = p.parse_args(argv)
    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    if not set(nets) <= set(NETS):
        p.error(f"--nets: choose from {', '.join(NETS)}")
    if args.quick:
        nets, args.rounds, args.runs = ["mobilenet_v2"], 2, 3

    def log(msg):
        print(msg, flush=True)

    t0 = time.time()
    results = []
    saved = Path(args.out) / "latency224.json"
    try:
        previous = json.loads(saved.read_text()) if saved.is_file() else None
    except ValueError:
        previous = None
    for name in nets:
        log(f"{name}:")
        results.append(bench_net(name, args, log))
        result = {
            "command": "nice -n 10 python scripts/bench_latency224.py" + (" --quick" if args.quick else ""),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "platform": platform.platform(), "cpu": cpu_name(), "cores": os.cpu_count(), "rounds": args.rounds,
            "runs": args.runs, "models": results, "wall_seconds": round(time.time() - t0),
        }
        if not args.quick:
            result["history"] = history(previous)
            write_fragment(args.out, "latency224", result, write_markdown, log)
    log(f"wall time {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
