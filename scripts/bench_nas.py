#!/usr/bin/env python3
"""Benchmark of kslim.nas on Fashion-MNIST (the bundled subset).

1. Architecture search in :class:`kslim.nas.MobileNetV2Space` under a FLOPs cap: simulated
   annealing (kslim) vs keras-tuner RandomSearch and BayesianOptimization, same trial budget and
   epochs per trial, several seeds (median). The baselines get the cap the way a keras-tuner user
   would add it: the hypermodel raises ``FailedTrialError`` for an over-cap model, so such a trial
   is not trained but uses up one trial of the budget (SA rejects them before they become trials).
2. ``auto_prune`` vs uniform pruning (``prune_to_flops``) at the same MACs reduction on the
   pretrained reference MobileNetV1 (width 0.5): both fine-tuned the same way afterwards.

    python scripts/bench_nas.py            # full (~20 min on 2 shared cores)
    python scripts/bench_nas.py --quick    # smoke run (< 2 min idle)
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

ROOT = Path(__file__).resolve().parents[1]


def _cpu():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _data(n_train, n_val, n_test):
    import numpy as np

    from kslim.datasets import fashion_mnist_small, preprocess

    (x, y), (xt, yt) = fashion_mnist_small()
    return ((preprocess(x[:n_train]), y[:n_train].astype(np.int32)),
            (preprocess(xt[:n_val]), yt[:n_val].astype(np.int32)),
            (preprocess(xt[n_val:n_val + n_test]), yt[n_val:n_val + n_test].astype(np.int32)))


# ------------------------------------------------------------------------------------ search part
# 3 searchable blocks (fewer layers: keras' per-model tracing dominates a 1-epoch trial on 2 cores)
BLOCKS = ((1, (8, 12, 16)), (2, (16, 24, 32)), (2, (24, 32, 48, 64)))
REPEATS = (1, 2)


def _space(lr):
    from kslim.nas import MobileNetV2Space

    return MobileNetV2Space(learning_rate=lr, blocks=BLOCKS, repeats=REPEATS)


def _capped(space, cap):
    """The space for keras-tuner's own oracles: an over-cap model fails its trial (not trained)."""
    import keras_tuner

    from kslim.analysis import flops

    class Capped(keras_tuner.HyperModel):
        active = False

        def build(self, hp):
            model = space.build(hp)
            if self.active:
                f = flops(model).flops
                if f > cap:
                    raise keras_tuner.errors.FailedTrialError(f"over the FLOPs cap: {f:.3g} > {cap:.3g}")
            return model

    return Capped()


def run_search(method, seed, args, data, workdir):
    import keras
    import keras_tuner

    from kslim.analysis import flops
    from kslim.nas import MaxFlops, SimulatedAnnealingOracle

    (x, y), (xv, yv), _ = data
    keras.utils.set_random_seed(seed)
    space = _space(args.lr)
    objective = "val_accuracy"
    common = dict(max_trials=args.trials, seed=seed)
    hypermodel = space
    if method == "sa":
        oracle = SimulatedAnnealingOracle(objective, init_temperature=args.temperature, reduce_rate=0.85,
                                          constraints=[MaxFlops(args.max_flops)], hypermodel=space, **common)
    elif method == "random_rejection":
        # random sampling with the same reject-before-training cap: every hyperparameter redrawn each
        # step and every candidate accepted (isolates what the annealing adds over the cap handling)
        oracle = SimulatedAnnealingOracle(objective, init_temperature=1e12, reduce_rate=1.0, perturb=1000,
                                          constraints=[MaxFlops(args.max_flops)], hypermodel=space, **common)
    else:
        hypermodel = _capped(space, args.max_flops)
        cls = {"random": keras_tuner.oracles.RandomSearchOracle,
               "bayesian": keras_tuner.oracles.BayesianOptimizationOracle}[method]
        oracle = cls(objective=objective, max_consecutive_failed_trials=10 ** 6, **common)
    tuner = keras_tuner.Tuner(oracle=oracle, hypermodel=hypermodel, directory=str(workdir),
                              project_name=f"{method}_{seed}", overwrite=True)
    if method != "sa":
        hypermodel.active = True
    t0 = time.time()
    tuner.search(x, y, batch_size=args.batch_size, epochs=args.epochs, validation_data=(xv, yv), verbose=0)
    elapsed = time.time() - t0
    trials = [oracle.trials[t] for t in oracle.start_order]
    scores = [t.score if t.status == "COMPLETED" else None for t in trials]
    done = [s for s in scores if s is not None]
    best = max(done) if done else float("nan")
    reach = next(i + 1 for i, s in enumerate(scores) if s == best) if done else None
    best_trial = oracle.get_best_trials(1)[0]
    best_flops = flops(hypermodel.build(best_trial.hyperparameters)).flops if done else None
    out = {"method": method, "seed": seed, "best_val_accuracy": best, "trials_to_best": reach,
           "trials": len(trials), "trained": len(done), "wasted_over_cap": len(trials) - len(done),
           "best_flops": best_flops, "seconds": round(elapsed, 1), "scores": scores}
    if method in ("sa", "random_rejection"):
        out["rejected_before_training"] = oracle.summary()["n_rejected"]
        out["accepted"] = sum(1 for r in oracle.history if r.get("accepted"))
        oracle.export_history(workdir / f"{method}_{seed}_history.json")
        if seed == args.seeds[0] and method == "sa":
            from kslim.nas import plot_history

            plot_history(oracle, ROOT / "benchmarks" / "nas_search.png",
                         title=f"SA on MobileNetV2Space, FLOPs <= {args.max_flops:.0e} (seed {seed})")
    return out


# -------------------------------------------------------------------------------- auto_prune part
def _accuracy(model, x, y, batch=250):
    import numpy as np

    correct = 0
    for i in range(0, len(x), batch):
        logits = np.asarray(model(x[i:i + batch], training=False))
        correct += int((logits.argmax(-1) == y[i:i + batch]).sum())
    return correct / len(x)


def run_auto_prune(args, data, workdir):
    import keras

    import kslim
    from kslim.analysis import flops
    from kslim.nas import auto_prune
    from kslim.prune import L1NormFilterPruner

    (x, y), (xv, yv), (xt, yt) = data
    ref = kslim.models.pretrained("mobilenet_v1", width=0.5, epochs=3, verbose=0)
    base, base_acc = ref.model, ref.accuracy
    base_flops = flops(base).flops

    def finetune(m):
        keras.utils.set_random_seed(0)
        kslim.models.compile_classifier(m, learning_rate=1e-3)
        m.fit(x, y, batch_size=args.batch_size, epochs=args.finetune_epochs, verbose=0)
        return m

    rows = {}
    t0 = time.time()
    found = L1NormFilterPruner(base).prune_to_flops(args.prune_target)
    uniform, info = found.model, found.to_dict()
    u_flops = flops(uniform).flops
    u_val = _accuracy(uniform, xv, yv)
    finetune(uniform)
    rows["uniform"] = {"flops": u_flops, "reduction": 1 - u_flops / base_flops, "val_acc_before_ft": u_val,
                       "test_acc": _accuracy(uniform, xt, yt), "ratio": info["ratio"],
                       "seconds": round(time.time() - t0, 1)}
    t0 = time.time()
    res = auto_prune(base, lambda m: _accuracy(m, xv, yv), flops_reduction=args.prune_target,
                     max_trials=args.prune_trials, init_temperature=args.temperature, reduce_rate=0.85,
                     seed=0, directory=str(workdir), project_name="auto_prune", plot=False)
    from kslim.nas import plot_history

    plot_history(res.oracle, ROOT / "benchmarks" / "nas_auto_prune.png",
                 title=f"auto_prune MobileNetV1-0.5, remove {args.prune_target:.0%} FLOPs")
    best = res.model
    a_val = res.score
    finetune(best)
    rows["auto_prune"] = {"flops": res.flops, "reduction": res.flops_reduction, "val_acc_before_ft": a_val,
                          "test_acc": _accuracy(best, xt, yt), "ratios": res.ratios,
                          "initial_ratios": res.initial_ratios, "trials": len(res.history),
                          "rejected_before_eval": res.oracle.summary()["n_rejected"],
                          "seconds": round(time.time() - t0, 1)}
    return {"base": {"model": "mobilenet_v1 width 0.5 (pretrained, 3 epochs)", "flops": base_flops,
                     "test_acc": _accuracy(base, xt, yt), "reference_acc": base_acc}, **rows}


# -------------------------------------------------------------------------------------- reporting
def _f(value, spec):
    return "n/a" if value is None or (isinstance(value, float) and value != value) else format(value, spec)


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def write_report(results, args, command, total):
    search = results["search"]
    summary = {}
    for method in args.methods:
        runs = [r for r in search if r["method"] == method]
        summary[method] = {
            # a run that trained no model (every trial over the cap) counts as accuracy 0
            "median_best_val_accuracy": _median([0.0 if r["best_val_accuracy"] != r["best_val_accuracy"]
                                                 else r["best_val_accuracy"] for r in runs]),
            "median_trials_to_best": _median([r["trials_to_best"] for r in runs]),
            "median_wasted_over_cap": _median([r["wasted_over_cap"] for r in runs]),
            "median_seconds": _median([r["seconds"] for r in runs]),
        }
    results["summary"] = summary
    from kslim._io import atomic_write_json, atomic_write_text

    atomic_write_json(ROOT / "benchmarks" / getattr(args, "json_name", "nas.json"), results)
    names = {"sa": "SA (kslim)", "random": "RandomSearch", "bayesian": "BayesianOptimization",
             "random_rejection": "random sampling + kslim's reject-before-training cap"}
    lines = [
        "## Search (`kslim.nas`)", "",
        f"`{command}` — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.platform()}, {_cpu()}, "
        f"{os.cpu_count()} cores (shared), total {total / 60:.1f} min.", "",
        f"**Architecture search** — MobileNetV2Space with {len(BLOCKS)} searchable inverted-residual blocks "
        f"(expansion {{1,2,4,6}}, channels {[list(c) for _, c in BLOCKS]}, kernel {{3,5}}, repeats {list(REPEATS)}, "
        f"stem {{8,16,24}}; 28x28x1), FLOPs cap {args.max_flops:.0e} (kslim.analysis FLOPs = 2 x MACs), "
        f"{args.trials} trials per run, {args.epochs} epoch per trial, batch {args.batch_size}, Adam lr {args.lr}, "
        f"train {args.n_train} / val {args.n_val} images of the bundled Fashion-MNIST subset, seeds {args.seeds} "
        f"(median). SA: init_temperature {args.temperature}, reduce_rate 0.85, one hyperparameter per step. "
        f"Baselines: an over-cap model raises `FailedTrialError` in `build` (not trained, but it uses a trial); "
        f"a run that trained no model counts as 0 in the median.", "",
        "| method | best val acc (median) | trials to reach it (median) | over-cap trials wasted (median) | "
        "time per run (median) | per-seed best |",
        "|---|---|---|---|---|---|",
    ]
    for method in args.methods:
        s = summary[method]
        per_seed = ", ".join(_f(r["best_val_accuracy"], ".3f").replace("n/a", "none trained") for r in search if r["method"] == method)
        lines.append(f"| {names[method]} | {_f(s['median_best_val_accuracy'], '.3f')} | "
                     f"{_f(s['median_trials_to_best'], 'g')} | {_f(s['median_wasted_over_cap'], 'g')} | "
                     f"{_f(s['median_seconds'], '.0f')} s | {per_seed} |")
    for m, why in getattr(args, "skipped", {}).items():
        lines.append(f"| {names[m]} | not run: {why} | | | | |")
    sa = summary.get("sa", {}).get("median_best_val_accuracy")
    others = {m: summary[m]["median_best_val_accuracy"] for m in args.methods if m != "sa"}
    others = {m: v for m, v in others.items() if v is not None and v == v}
    if sa is not None and others:
        verdict = ", ".join(f"{'beats' if sa > v else ('ties' if sa == v else 'loses to')} {names[m]} "
                            f"({sa - v:+.3f})" for m, v in others.items())
        lines += ["", f"Target (SA finds a better model than RandomSearch/BayesianOptimization under the same cap "
                      f"and budget): SA {verdict}."]
    ap = results.get("auto_prune")
    if ap:
        lines += [
            "", f"**auto_prune vs uniform pruning** — pretrained MobileNetV1 width 0.5 ({ap['base']['flops']:.3g} FLOPs, "
            f"test acc {ap['base']['test_acc']:.3f}), remove {args.prune_target:.0%} of FLOPs, L1-norm filters. "
            f"auto_prune: {args.prune_trials} trials, score = accuracy on {args.n_val} validation images without "
            f"fine-tuning; then both models are fine-tuned identically ({args.finetune_epochs} epoch on "
            f"{args.n_train} images) and tested on {args.n_test} other test images.", "",
            "| pruning | FLOPs | reduction | val acc before fine-tune | test acc after fine-tune | time |",
            "|---|---|---|---|---|---|",
        ]
        for k in ("uniform", "auto_prune"):
            r = ap[k]
            lines.append(f"| {k} | {r['flops']:.3g} | {r['reduction']:.1%} | {r['val_acc_before_ft']:.3f} | "
                         f"{r['test_acc']:.3f} | {r['seconds']:.0f} s |")
        d = ap["auto_prune"]["test_acc"] - ap["uniform"]["test_acc"]
        lines += ["", f"Target (auto_prune at least as accurate as uniform at the same reduction): "
                      f"{'met' if d >= 0 else 'missed'} ({d:+.3f} test accuracy)."]
    lines += ["", "Figures: `benchmarks/nas_search.png` (score vs FLOPs with Pareto front; SA trajectory with "
                  "temperature), `benchmarks/nas_auto_prune.png`.", ""]
    atomic_write_text(ROOT / "benchmarks" / "nas.md", "\n".join(lines))
    print("\n".join(lines))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 3 trials, small data")
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=["sa", "random", "random_rejection", "bayesian"])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--max-flops", type=float, default=3e6)
    p.add_argument("--temperature", type=float, default=0.05)
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-val", type=int, default=500)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--prune-target", type=float, default=0.5)
    p.add_argument("--prune-trials", type=int, default=12)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--skip-prune", action="store_true")
    p.add_argument("--workdir", default="/tmp/kslim_bench_nas")
    p.add_argument("--from-json", default=None, help="only rewrite benchmarks/nas.md from a saved nas.json")
    p.add_argument("--merge", nargs="*", default=[], help="with --from-json: add the search runs of these JSONs")
    p.add_argument("--json-name", default="nas.json", help="results file name under benchmarks/")
    args = p.parse_args(argv)
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        saved = argparse.Namespace(**results["settings"])
        for extra in args.merge:
            more = json.loads(Path(extra).read_text())
            results["search"] += more["search"]
            saved.methods = saved.methods + [m for m in more["settings"]["methods"] if m not in saved.methods]
        saved.json_name = "nas.json"
        results["settings"] = vars(saved)
        write_report(results, saved, results.get("command", "python scripts/bench_nas.py"),
                     results.get("total_seconds", 0.0))
        return 0
    if args.quick:
        args.trials, args.seeds, args.n_train, args.n_val, args.n_test = 3, [0], 500, 300, 300
        args.prune_trials = 4
    import importlib.util

    if "bayesian" in args.methods and importlib.util.find_spec("sklearn") is None:
        # keras-tuner's BayesianOptimization needs scikit-learn (keras-tuner[bayesian]), not installed here
        args.methods = [m for m in args.methods if m != "bayesian"]
        args.skipped = {"bayesian": "scikit-learn not installed (keras-tuner[bayesian] extra)"}
    command = "python scripts/bench_nas.py " + " ".join(argv if argv is not None else sys.argv[1:])
    workdir = Path(args.workdir)
    data = _data(args.n_train, args.n_val, args.n_test)
    t0 = time.time()
    results = {"settings": vars(args), "search": []}
    for seed in args.seeds:
        for method in args.methods:
            r = run_search(method, seed, args, data, workdir)
            results["search"].append(r)
            print(f"[{time.time() - t0:6.0f}s] {method:9s} seed {seed}: best {r['best_val_accuracy']:.3f} "
                  f"at trial {r['trials_to_best']}, wasted {r['wasted_over_cap']}, {r['seconds']:.0f}s", flush=True)
    if not args.skip_prune:
        results["auto_prune"] = run_auto_prune(args, data, workdir)
        print(f"[{time.time() - t0:6.0f}s] auto_prune done", flush=True)
    results["command"], results["total_seconds"] = command.strip(), time.time() - t0
    write_report(results, args, command.strip(), time.time() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
