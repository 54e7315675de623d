#!/usr/bin/env python3
"""Tool-cost benchmark: how long kslim's own machinery takes.

* for each ``keras.applications`` model (``weights=None``, default input size): time of
  ``kslim.graph.build_dependency_graph`` and of ``L1NormFilterPruner(model)`` + ``.prune(0.5)``
  (a new, smaller model with copied weights), and the parameters before / after;
* time of a sensitivity scan (``kslim.prune.sensitivity``, 3 ratios, every prunable group) of the
  reference MobileNetV1-style net on 500 training images;
* QAT training-step overhead: median step time of ``kslim.quant.quant_aware(model)`` / of the float
  model (same batch size, same data).

Each timing is the median over ``--repeats`` (wall clock, single process).

    python scripts/bench_cost.py --quick           # smoke run (~2 min): 3 small applications
    nice -n 10 python scripts/bench_cost.py        # full run, writes benchmarks/cost.{json,md}
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402

APPLICATIONS = ["MobileNet", "MobileNetV2", "MobileNetV3Small", "ResNet50", "ResNet50V2", "DenseNet121",
                "EfficientNetB0", "NASNetMobile", "InceptionV3", "Xception"]
QUICK_APPLICATIONS = ["MobileNet", "MobileNetV2", "ResNet50"]
ANCHOR = ("No peer publishes these costs. For scale: PaddleSlim's `sensitivity()` likewise prunes and evaluates "
          "the model once per (layer, ratio) pair and checkpoints to a `sensitivities_file`; the issue's target "
          "for pruning ResNet50 (weights=None) at 0.5 is 10 s.")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 3 applications, 1 repeat, small reference net")
    p.add_argument("--models", nargs="+", default=None, choices=APPLICATIONS)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--sens-images", type=int, default=500)
    p.add_argument("--sens-ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    p.add_argument("--qat-steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--out", default=str(ROOT / "benchmarks"))
    p.add_argument("--render", default=None, metavar="COST_JSON",
                   help="only rewrite the markdown fragment from an existing cost.json (no measurement)")
    args = p.parse_args(argv)
    if args.quick:
        args.models = args.models or QUICK_APPLICATIONS
        args.repeats, args.qat_steps, args.sens_images = 1, 8, 200
        args.ref = ("mobilenet_v1", 0.25, 1)
    else:
        args.models = args.models or APPLICATIONS
        args.ref = ("mobilenet_v1", 1.0, 3)
    return args


def app_cost(name, repeats, ratio, log):
    import keras

    from kslim.graph import build_dependency_graph
    from kslim.prune import L1NormFilterPruner

    ctor = getattr(keras.applications, name)
    model = ctor(weights=None)
    if None in tuple(model.input_shape[1:3]):  # MobileNetV3*: any size by default; time it at 224x224
        model = ctor(weights=None, input_shape=(224, 224, 3))
    row = {"model": name, "input": list(model.input_shape[1:]), "layers": len(model.layers),
           "params": int(model.count_params())}
    try:
        g_times, init_times, prune_times, cpu = [], [], [], []
        for _ in range(repeats):
            c0, t0 = time.process_time(), time.perf_counter()
            graph = build_dependency_graph(model)
            g_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            pruner = L1NormFilterPruner(model)
            t1 = time.perf_counter()
            small = pruner.prune(ratio)
            t2 = time.perf_counter()
            cpu.append(time.process_time() - c0)
            init_times.append(t1 - t0)
            prune_times.append(t2 - t1)
        row.update(
            groups=len(graph.groups), prunable_groups=sum(1 for g in graph.groups if g.prunable),
            graph_s=bench.median(g_times), pruner_init_s=bench.median(init_times), prune_s=bench.median(prune_times),
            params_after=int(small.count_params()), cpu_s=bench.median(cpu))
        row["total_s"] = row["pruner_init_s"] + row["prune_s"]
        log(f"{name}: graph {row['graph_s']:.2f}s, pruner {row['pruner_init_s']:.2f}s + prune({ratio}) "
            f"{row['prune_s']:.2f}s (CPU {row['cpu_s']:.1f}s); params {row['params']:,} -> {row['params_after']:,}")
        del small, pruner, graph
    except Exception as e:  # an unsupported architecture is a finding: report it
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        log(f"{name}: FAILED {row['error']}")
    try:  # QAT wrap (issue 13: <= 10 s for ResNet50): once, it builds a whole new model
        import warnings

        from kslim.quant import quant_aware

        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = quant_aware(model)
        row["qat_wrap_s"] = time.perf_counter() - t0
        log(f"{name}: quant_aware {row['qat_wrap_s']:.2f}s")
        del q
    except Exception as e:  # noqa: BLE001 - reported in the table
        row["qat_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        log(f"{name}: quant_aware FAILED {row['qat_error']}")
    del model
    keras.backend.clear_session()
    return row


def sensitivity_cost(args, train, log):
    import numpy as np

    from kslim.models import pretrained
    from kslim.prune import L1NormFilterPruner
    from kslim.prune.sensitivity import sensitivity

    name, width, epochs = args.ref
    model = pretrained(name, epochs=epochs, width=width, verbose=0).model
    sx, sy = train[0][-args.sens_images:], train[1][-args.sens_images:]
    evals = [0]

    def ev(m):
        evals[0] += 1
        return float(np.mean(np.argmax(np.asarray(m(sx, training=False)), -1) == sy))

    c0, t0 = time.process_time(), time.perf_counter()
    pruner = L1NormFilterPruner(model)
    sens = sensitivity(model, ev, ratios=args.sens_ratios, checkpoint=None, pruner=pruner, verbose=0)
    seconds, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    res = {"model": f"{name} width {width:g}", "groups": len(sens), "ratios": args.sens_ratios,
           "images": len(sx), "evaluations": evals[0], "seconds": seconds, "cpu_s": cpu_s,
           "per_evaluation_s": seconds / max(evals[0], 1)}
    log(f"sensitivity: {len(sens)} groups x {len(args.sens_ratios)} ratios on {len(sx)} images in {seconds:.1f}s "
        f"({evals[0]} evaluations)")
    return res, model


def qat_overhead(args, model, train, log):
    import keras

    from kslim.models import compile_classifier
    from kslim.quant import quant_aware

    n = args.qat_steps * args.batch_size
    x, y = train[0][:n], train[1][:n]
    out = {"steps": args.qat_steps, "batch_size": args.batch_size}
    for kind in ("float", "qat"):
        times, cpu = [], []
        for _ in range(max(1, min(args.repeats, 2))):
            m = keras.models.clone_model(model)
            m.set_weights(model.get_weights())
            if kind == "qat":
                m = quant_aware(m)
            compile_classifier(m, learning_rate=1e-4)
            timer = bench.step_timer(keras)
            keras.utils.set_random_seed(0)
            m.fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0, callbacks=[timer])
            times.append(timer.median_ms())
            cpu.append(timer.median_cpu_ms())
        out[f"{kind}_step_ms"] = bench.median(times)
        out[f"{kind}_step_cpu_ms"] = bench.median(cpu)
    out["ratio"] = out["qat_step_ms"] / out["float_step_ms"]
    out["cpu_ratio"] = out["qat_step_cpu_ms"] / out["float_step_cpu_ms"]
    log(f"QAT step {out['qat_step_ms']:.1f} ms vs float {out['float_step_ms']:.1f} ms: x{out['ratio']:.2f} "
        f"(CPU time x{out['cpu_ratio']:.2f})")
    return out


def main(argv=None):
    args = parse_args(argv)
    from kslim._io import atomic_write_json, atomic_write_text

    if args.render:
        import json

        atomic_write_text(Path(args.out) / "cost.md", markdown(json.loads(Path(args.render).read_text())))
        return 0

    start = time.time()

    def log(msg):
        print(f"[{time.time() - start:6.0f}s] {msg}", flush=True)

    machine = bench.machine()
    train, _ = bench.load_data(args.quick)
    apps = [app_cost(n, args.repeats, args.ratio, log) for n in args.models]
    try:
        sens, ref = sensitivity_cost(args, train, log)
    except Exception as e:
        sens, ref = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}, None
        log(f"sensitivity FAILED: {sens['error']}")
    try:
        qat = qat_overhead(args, ref, train, log) if ref is not None else {"error": "no reference model"}
    except Exception as e:
        qat = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        log(f"QAT overhead FAILED: {qat['error']}")
    result = {"command": bench.command_line("scripts/bench_cost.py", argv),
              "date": bench.utc_now(), "machine": machine, "load_end": bench.machine()["load_avg_1_5_15"],
              "settings": {"ratio": args.ratio, "repeats": args.repeats, "reference": list(args.ref)},
              "applications": apps, "sensitivity": sens, "qat": qat, "anchor": ANCHOR,
              "wall_s": round(time.time() - start, 1)}
    md = markdown(result)
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "cost.json", result)
    atomic_write_text(out / "cost.md", md)
    log(f"wrote {out / 'cost.json'} and {out / 'cost.md'}")
    failed = [a["model"] for a in apps if "error" in a] + [k for k, v in (("sensitivity", sens), ("qat", qat))
                                                          if "error" in v]
    return 1 if failed else 0


def markdown(res):
    m, s = res["machine"], res["settings"]
    f = bench.fmt
    lines = [
        f"Command: `{res['command']}`  ",
        f"Date: {res['date']}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; load average at start {m['load_avg_1_5_15']}, "
        f"at end {res['load_end']} (wall-clock times grow with the load)  ",
        f"Timings: wall clock, median of {s['repeats']} repeat(s), single process. `keras.applications.*"
        f"(weights=None)` at the default input size. 'CPU' is the process CPU time of graph + pruner + prune (all "
        "threads), which other jobs' load does not inflate; 'pruner' is `L1NormFilterPruner(model)` (dependency graph + "
        f"importance), 'prune' is `.prune({s['ratio']})` (builds the smaller model and copies the kept weights); "
        "'quant_aware' is one call of `kslim.quant.quant_aware(model)` (the QAT model, built once).",
        "",
        "| model | input | layers | params | channel groups (prunable) | graph (s) | pruner (s) | "
        f"prune({s['ratio']}) (s) | pruner + prune (s) | CPU (s) | params after | quant_aware (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a in res["applications"]:
        inp = "x".join("?" if v is None else str(v) for v in a["input"])
        if "error" in a:
            lines.append(f"| {a['model']} | {inp} | {a['layers']} | {a['params']:,} | FAILED: {a['error']} | | | | | | | |")
            continue
        lines.append(f"| {a['model']} | {inp} | {a['layers']} | {a['params']:,} | {a['groups']} ({a['prunable_groups']}) | "
                     f"{a['graph_s']:.2f} | {a['pruner_init_s']:.2f} | {a['prune_s']:.2f} | {a['total_s']:.2f} | "
                     f"{f(a.get('cpu_s'), '.2f')} | "
                     f"{a['params_after']:,} | "
                     f"{'FAILED: ' + a['qat_error'] if 'qat_error' in a else f(a.get('qat_wrap_s'), '.2f')} |")
    sens, qat = res["sensitivity"], res["qat"]
    r50 = next((a for a in res["applications"] if a["model"] == "ResNet50" and "error" not in a), None)
    if r50 is not None:  # issue 13's cost targets
        lines.append("")
        graph_prune = r50["graph_s"] + r50["total_s"]
        lines.append(f"Targets (issue 13), ResNet50: dependency graph + pruner + prune <= 2 s: measured "
                     f"{graph_prune:.2f} s -> **{'met' if graph_prune <= 2 else 'missed'}**; `quant_aware` <= 10 s: "
                     + (f"measured {r50['qat_wrap_s']:.2f} s -> **{'met' if r50['qat_wrap_s'] <= 10 else 'missed'}**."
                        if "qat_wrap_s" in r50 else f"FAILED ({r50.get('qat_error')})."))
    lines.append("")
    if "error" in sens:
        lines.append(f"Sensitivity scan: FAILED ({sens['error']}).")
    else:
        lines.append(f"Sensitivity scan of the reference {sens['model']}: {sens['groups']} channel groups x "
                     f"{len(sens['ratios'])} ratios {sens['ratios']} on {sens['images']} images: "
                     f"**{sens['seconds']:.1f} s** wall, {f(sens.get('cpu_s'), '.1f')} s CPU ({sens['evaluations']} evaluations, "
                     f"{sens['per_evaluation_s']:.2f} s each, pruning included).")
    lines.append("")
    if "error" in qat:
        lines.append(f"QAT step overhead: FAILED ({qat['error']}).")
    else:
        lines.append(f"QAT step overhead (reference net, batch {qat['batch_size']}, median of {qat['steps']} steps): "
                     f"float {f(qat['float_step_ms'], '.1f')} ms, `quant_aware` {f(qat['qat_step_ms'], '.1f')} ms wall: "
                     f"x{f(qat['ratio'], '.2f')}; in process CPU time (robust to load) float "
                     f"{f(qat.get('float_step_cpu_ms'), '.1f')} ms, QAT {f(qat.get('qat_step_cpu_ms'), '.1f')} ms: "
                     f"**x{f(qat.get('cpu_ratio'), '.2f')}**.")
    lines += ["", "kslim's QAT model folds each BatchNormalization into the preceding convolution, so its training "
              "step has no BN statistics to update; that likely explains why it costs no more than the float step "
              "(not verified by a profile).", "",
              f"Anchor: {res['anchor']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
