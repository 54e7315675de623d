"""PTQ backends benchmark: the converter path vs LiteRT's quantizer, every kslim calibration algorithm,
int8 vs int16x8 vs weight-only int8/int4, AdaRound, cross-layer equalization and bias correction.

Every row starts from the same shipped, converged reference model (``kslim.models.pretrained(name)``:
trained on the full Fashion-MNIST set by ``scripts/train_reference.py``), uses the same calibration
images (``--calib-samples`` training images, seed 0) and is measured on its own ``.tflite`` through
ai-edge-litert: top-1 on all 10,000 test images, bytes, and batch-1 latency on 1 thread (XNNPACK,
median of interleaved rounds). Nothing is fine-tuned, so there is one figure per row (no seeds).

Backends:

* ``converter``: ``kslim.quant.quant_post_static`` -- kslim's ranges written into the converter's
  calibrated graph, then the converter's MLIR quantizer; ``converter_own`` is the converter's own
  min/max calibration (``kslim.lite.convert(quantize="int8")``), the peer;
* ``litert``: ``kslim.quant.quant_post_litert`` -- LiteRT's quantizer (``ai-edge-quantizer``) on the
  float ``.tflite``; ``algo=-`` keeps its own min/max (a moving average of per-sample ranges), an
  algorithm name writes kslim's ranges into its calibration result.

    python scripts/bench_ptq.py --quick          # smoke run (a few minutes, bundled subset)
    nice -n 10 python scripts/bench_ptq.py       # full run, writes benchmarks/ptq.{json,md}
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
from _benchlib import cpu_name, latency_ms, log_targets, render_saved, write_fragment  # noqa: E402

ALGOS = ("abs_max", "avg", "hist", "KL", "mse")
#: the issue's goals, in points of top-1 vs the float .tflite
TARGETS = {"int8": -0.3, "int4_adaround": -1.0}
NOISE_PT = 0.3  # binomial standard error of a ~92 % accuracy on 10,000 images is 0.27 pt


#: row groups (``--only``): the variants' ``backend`` / ``extra`` decide the group
GROUPS = ("calibration", "recipes", "rounding", "mixed", "peers")


def _failure(e):
    """One line for a failed row: a tf.function error's last line, a converter error without its MLIR location."""
    import re

    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    text = " ... ".join(dict.fromkeys([lines[0], lines[-1]])) if lines else ""
    text = re.sub(r"<unknown>:0: error: loc\(.*\)\)\):\s*", "", text)
    return f"{type(e).__name__}: {text}"[:300]


def group_of(backend, recipe, extra):
    if backend == "mixed" or recipe == "int8x4":  # int8x4: the all-int4 end of the mixed rows
        return "mixed"
    if backend == "keras":
        return "peers"
    if extra:
        return "rounding"
    if recipe.startswith("int8") and "weight_only" not in recipe and recipe != "int8x4" or backend == "float":
        return "calibration"
    return "recipes"


def mixed_rows(model, calib, args):
    """quant_post_mixed at three size budgets (int4 weights where they hurt least; the layer measurements
    made once) and one latency budget (int16 activations where they help most)."""
    from kslim.quant.mixed import quant_post_mixed

    state = {}

    def sized(fraction):
        def build():
            res = quant_post_mixed(model, calib, size_budget=fraction, algo=args.best_algo,
                                   options=state.get("options"))
            state["options"] = res.options
            return _annotated(res)
        return build

    rows = [("mixed", "int8 + int8x4", args.best_algo, f"size <= {f:.2f} x int8", sized(f)) for f in (0.9, 0.8, 0.7)]
    rows.append(("mixed", "int8 + int16x8", args.best_algo, "latency <= 1.50 x int8",
                 lambda: _annotated(quant_post_mixed(model, calib, latency_budget=1.5, algo=args.best_algo))))
    return rows


def _keras_quantize(model):
    """Keras 3's own ``model.quantize("int8")`` on a copy, exported with ``model.export(format="litert")``."""
    import tempfile

    import keras

    from kslim.lite.model import LiteModel

    q = keras.models.clone_model(model)
    q.set_weights(model.get_weights())
    q.quantize("int8")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.tflite"
        q.export(str(path), format="litert")
        return LiteModel(path.read_bytes())


def _annotated(res):
    lite = res.lite
    lite.mixed = {"moved": len(res.choices), "met": res.met, "size_budget": res.size_budget_bytes,
                  "latency_budget_ms": res.latency_budget_ms, "latency_ms": res.latency_ms,
                  "predicted_bytes": res.predicted_bytes, "choices": res.choices}
    return lite


def variants(model, calib, args):
    """``[(backend, recipe, algo, extra, build)]``: every row of one model, ``build()`` -> LiteModel."""
    from kslim.lite import convert
    from kslim.quant import (adaround, equalize_cross_layer, quant_post_dynamic, quant_post_litert,
                             quant_post_static)

    algos = args.algos
    rows = [("float", "float32", "-", "", lambda: convert(model, check=False))]
    for a in algos:
        rows.append(("converter", "int8", a, "", lambda a=a: quant_post_static(model, calib, algo=a, check=False)))
    rows.append(("converter_own", "int8", "min/max", "",
                 lambda: convert(model, quantize="int8", representative_data=calib,
                                 num_calibration_samples=len(calib), check=False)))
    for a in (None, *algos):
        rows.append(("litert", "int8", a or "-", "",
                     lambda a=a: quant_post_litert(model, "int8", calib, len(calib), algo=a, check=False)))
    for a in (None, "mse"):
        rows.append(("litert", "int16x8", a or "-", "",
                     lambda a=a: quant_post_litert(model, "int16x8", calib, len(calib), algo=a, check=False)))
    rows.append(("litert", "int8x4", args.best_algo, "",
                 lambda: quant_post_litert(model, "int8x4", calib, len(calib), algo=args.best_algo, check=False)))
    for r in ("int8_weight_only", "int4_weight_only", "dynamic_int8"):
        rows.append(("litert", r, "-", "", lambda r=r: quant_post_litert(model, r, check=False)))
    rows.append(("converter", "dynamic_int8", "-", "", lambda: quant_post_dynamic(model, check=False)))
    best = args.best_algo
    rows.append(("converter", "int8", best, "bias_correction",
                 lambda: quant_post_static(model, calib, algo=best, bias_correction=True, check=False)))
    rows.append(("converter", "int8", best, f"adaround {args.adaround_iterations} it",
                 lambda: quant_post_static(adaround(model, calib, bits=8, iterations=args.adaround_iterations).model,
                                           calib, algo=best, check=False)))
    rows.append(("litert", "int4_weight_only", "-", f"adaround {args.adaround_iterations} it",
                 lambda: quant_post_litert(adaround(model, calib, bits=4, iterations=args.adaround_iterations).model,
                                           "int4_weight_only", check=False)))
    # CLE matters for per-tensor weight grids (one scale per kernel), where unbalanced channels lose bits
    rows.append(("converter", "int8 per-tensor w", best, "",
                 lambda: quant_post_static(model, calib, algo=best, weight_quantize_type="abs_max", check=False)))
    rows.append(("converter", "int8 per-tensor w", best, "CLE",
                 lambda: quant_post_static(equalize_cross_layer(model, relu6="relu").model, calib, algo=best,
                                           weight_quantize_type="abs_max", check=False)))
    rows.append(("converter", "int8 per-tensor w", best, "CLE + bias_correction",
                 lambda: quant_post_static(equalize_cross_layer(model, relu6="relu").model, calib, algo=best,
                                           weight_quantize_type="abs_max", bias_correction=True, check=False)))
    rows += mixed_rows(model, calib, args)
    rows.append(("keras", "int8", "-", "model.quantize", lambda: _keras_quantize(model)))
    only = set(args.only.split(",")) if args.only else None
    return [r for r in rows if r[0] == "float" or only is None or group_of(r[0], r[1], r[3]) in only]


def bench_model(name, args, calib, test, log):
    import keras
    import numpy as np

    from kslim.models import pretrained

    keras.utils.set_random_seed(0)
    if args.quick:
        model = pretrained(name, epochs=1, width=0.25, verbose=0).model
    else:
        model = pretrained(name).model
    rows, lites, failed = [], {}, {}
    for backend, recipe, algo, extra, build in variants(model, calib, args):
        key = " ".join(v for v in (backend, recipe, algo, extra) if v and v != "-")
        t0 = time.time()
        try:
            lite = build()
        except Exception as e:  # noqa: BLE001 -- a row that fails is reported, the others still run
            failed[key] = _failure(e)
            log(f"  {name} {key}: FAILED {failed[key]}")
            continue
        seconds = time.time() - t0
        t1 = time.time()
        # every core: int16x8 runs on reference kernels (~3.5 min for 10,000 images on one thread)
        acc = float(np.mean(np.argmax(lite.predict(test[0], batch_size=500, num_threads=os.cpu_count() or 1), -1)
                            == test[1]))
        from kslim.quant import tensor_types

        rows.append({"model": name, "backend": backend, "recipe": recipe, "algo": algo, "extra": extra,
                     "group": group_of(backend, recipe, extra),
                     "accuracy": acc, "bytes": int(lite.size), "quantize_seconds": round(seconds, 1),
                     "eval_seconds": round(time.time() - t1, 1), "float_ops": sorted(lite.float_ops),
                     "tensor_types": sorted(tensor_types(lite.content)), "mixed": getattr(lite, "mixed", None)})
        lites[len(rows) - 1] = lite
        log(f"  {name} {key}: top-1 {100 * acc:.2f} %, {lite.size} B, {seconds:.0f}s + eval {time.time() - t1:.0f}s")
    lat = latency_ms({i: m for i, m in lites.items()}, threads=(1,), rounds=args.rounds, runs=args.runs)
    base = rows[0]
    for i, r in enumerate(rows):
        r["latency_ms"] = lat[i]["1"]
        r["delta_pt"] = 100 * (r["accuracy"] - base["accuracy"])
        r["bytes_ratio"] = r["bytes"] / base["bytes"]
        r["speedup"] = base_latency / r["latency_ms"] if (base_latency := lat[0]["1"]) else None
    return {"model": name, "rows": rows, "failed": failed}


def check_targets(res):
    rows = [r for r in res["rows"] if r["backend"] != "float"]
    out = []
    int8 = [r for r in rows if r["recipe"] in ("int8", "int8 per-tensor w")  # kslim's full int8 (not a peer)
            and r["backend"] in ("converter", "litert")]
    if int8:
        b = max(int8, key=lambda r: r["delta_pt"])
        out.append({"what": f"{res['model']}: best int8 PTQ vs float", "target": f">= {TARGETS['int8']} pt",
                    "value": f"{b['delta_pt']:+.2f} pt ({_label(b)})", "met": b["delta_pt"] >= TARGETS["int8"]})
    ada = [r for r in rows if r["recipe"] == "int4_weight_only" and r["extra"].startswith("adaround")]
    if ada:
        b = ada[0]
        out.append({"what": f"{res['model']}: int4-weight PTQ with AdaRound vs float",
                    "target": f">= {TARGETS['int4_adaround']} pt", "value": f"{b['delta_pt']:+.2f} pt",
                    "met": b["delta_pt"] >= TARGETS["int4_adaround"]})
    return out


def _label(r):
    return " ".join(v for v in (r["backend"], r["recipe"], r["algo"], r["extra"]) if v and v != "-")


def write_markdown(result, path):
    from kslim._io import atomic_write_text

    lines = [
        "## PTQ backends (`scripts/bench_ptq.py`)",
        "",
        "Command: " + ", then ".join(f"`{c}`" for c in result.get("commands", [result["command"]])) + "  ",
        f"Date: {result['date']}  ",
        f"Machine: {result['platform']}, {result['cpu']}, {result.get('cores', '?')} cores, load average "
        f"(1/5/15 min) {result.get('load_average', '?')} at the end of the run  ",
        f"Data: {result['data']}. Calibration: the same {result['calib_samples']} training images for every row. "
        f"Accuracy on each `.tflite` over {result['test_samples']} test images (ai-edge-litert); noise band "
        f"+-{NOISE_PT} pt. Latency: batch 1, 1 thread, XNNPACK, median of {result['rounds']} interleaved rounds.",
        "",
        "| model | backend | recipe | algo | extra | top-1 (%) | vs float (pt) | bytes | vs float bytes "
        "| latency (ms) | speed-up | quantize (s) |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in result["models"]:
        for r in res["rows"]:
            extra = r["extra"] or ""
            if r.get("mixed"):
                m = r["mixed"]
                extra += f": {m['moved']} layer(s) moved, budget {'met' if m['met'] else 'missed'} (measured)"
            lines.append(f"| {r['model']} | {r['backend']} | {r['recipe']} | {r['algo']} | {extra} | "
                         f"{100 * r['accuracy']:.2f} | {r['delta_pt']:+.2f} | {r['bytes']} | "
                         f"{100 * (r['bytes_ratio'] - 1):+.1f} % | {r['latency_ms']:.3f} | "
                         f"{r['speedup']:.2f}x | {r['quantize_seconds']:.1f} |")
        for k, v in res["failed"].items():
            lines.append(f"| {res['model']} | {k} | failed: {v} | | | | | | | | | |")
    lines += ["", "Targets from issue 15 (verdicts ignore the noise band; read it with the figure):", "",
              "| target | required | measured | met |", "|---|---|---|---|"]
    for t in result["targets"]:
        lines.append(f"| {t['what']} | {t['target']} | {t['value']} | {'yes' if t['met'] else '**no**'} |")
    if result.get("notes"):
        lines += [""] + [f"- {n}" for n in result["notes"]]
    atomic_write_text(path, "\n".join(lines) + "\n")


NOTES = [
    "Peers: LiteRT's quantizer is the `litert` rows; `keras int8 model.quantize` is Keras 3's own "
    "`model.quantize(\"int8\")` exported with `model.export(format=\"litert\")`; Sony's MCT is not a row: it "
    "disables its TensorFlow support on TensorFlow >= 2.16 (this run: TensorFlow 2.21).",
    "`litert ... algo -`: LiteRT's quantizer with its own calibration (min/max as a moving average of "
    "per-sample ranges); `litert ... <algo>`: the same quantizer with kslim's ranges written into its "
    "calibration result (`quant_post_litert(algo=...)`); `converter <algo>`: `quant_post_static`.",
    "int16x8 and weight-only int4 run on reference (non-XNNPACK) kernels on x86: see the latency column "
    "before choosing them for speed.",
    "AdaRound rows: `kslim.quant.adaround` on the calibration images, then the same export as the row above "
    "them; CLE rows: `kslim.quant.equalize_cross_layer` (`relu6='relu'`, as AIMET does: ReLU6 between a pair becomes ReLU; BatchNorm folded) before a "
    "per-tensor-weight int8 export, where unbalanced channels lose resolution.",
]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: a tiny 1-epoch model on the bundled subset")
    p.add_argument("--models", default="mobilenet_v1,resnet")
    p.add_argument("--calib-samples", type=int, default=256)
    p.add_argument("--best-algo", default="mse", help="algo of the AdaRound/CLE/bias-correction rows")
    p.add_argument("--adaround-iterations", type=int, default=500)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runs", type=int, default=40)
    p.add_argument("--only", default=None, metavar="GROUPS",
                   help=f"comma list of row groups to (re)measure, merged into the saved ptq.json: {', '.join(GROUPS)}")
    p.add_argument("--out", default=str(ROOT / "benchmarks"))
    p.add_argument("--render", default=None, metavar="PTQ_JSON",
                   help="only rewrite ptq.md (targets re-checked) from a saved ptq.json, next to it")
    args = p.parse_args(argv)
    if args.render:
        def refresh(result):
            result["models"] = [superseded(res) for res in result["models"]]
            result["targets"] = [t for res in result["models"] for t in check_targets(res)]

        return render_saved(args.render, refresh, write_markdown)
    if args.only and not set(args.only.split(",")) <= set(GROUPS):
        p.error(f"--only: groups are {', '.join(GROUPS)}")

    import numpy as np

    from kslim.datasets import fashion_mnist, fashion_mnist_small, preprocess

    if args.quick:
        (xtr, _), (xte, yte) = fashion_mnist_small()
        xte, yte = xte[:500], yte[:500]
        args.algos, args.adaround_iterations, args.rounds, args.runs = ("abs_max", "mse"), 50, 2, 10
        args.models, args.calib_samples = "mobilenet_v1", 64
        data = "bundled Fashion-MNIST subset (smoke run: 500 test images, a 1-epoch width-0.25 model)"
    else:
        (xtr, _), (xte, yte) = fashion_mnist()
        args.algos = ALGOS
        data = ("Fashion-MNIST (Debian's `dataset-fashion-mnist`: 60,000 train / 10,000 test); the shipped "
                "converged reference models (`kslim.models.pretrained(name)`, see `kslim/models/weights/manifest.json`)")
    xtr, xte = preprocess(xtr), preprocess(xte)
    calib = xtr[np.random.default_rng(0).permutation(len(xtr))[:args.calib_samples]]
    test = (xte, yte.astype(np.int32))

    def log(msg):
        print(msg, flush=True)

    t0 = time.time()
    results = []
    names = args.models.split(",")
    for n, name in enumerate(names):
        log(f"{name}:")
        results.append(bench_model(name, args, calib, test, log))
        report(args, results, names[n + 1:], data, len(yte), t0, log)
    return 0


def _group(row):
    return row.get("group") or group_of(row["backend"], row["recipe"], row["extra"])


def superseded(res):
    """``res`` without the failures of rows that a later run measured."""
    labels = {_label(r) for r in res["rows"]}
    return {**res, "failed": {k: v for k, v in res["failed"].items() if k not in labels}}


def merged(saved, new, only):
    """``saved`` with the row groups in ``only`` replaced by ``new``'s (per model; each row keeps the
    speed-up against the float row of its own run, whose date it carries)."""
    models = {m["model"]: m for m in saved["models"]}
    for res in new["models"]:
        for r in res["rows"]:
            r["run"] = new["date"]
        old = models.get(res["model"], {"rows": [], "failed": {}})
        rows = [r for r in res["rows"] if r["group"] == "calibration" and r["backend"] == "float"]
        for g in GROUPS:
            src = res["rows"] if g in only else old["rows"]
            rows += [r for r in src if _group(r) == g and r["backend"] != "float"]
        failed = {k: v for k, v in old.get("failed", {}).items() if k not in res["failed"]}
        models[res["model"]] = superseded({"model": res["model"], "rows": rows, "failed": {**failed, **res["failed"]}})
    out = {**saved, "models": list(models.values())}
    out["commands"] = list(dict.fromkeys([*saved.get("commands", [saved["command"]]), new["command"]]))
    out["targets"] = [t for res in out["models"] for t in check_targets(res)]
    return out


def report(args, results, pending, data, test_samples, t0, log):
    targets = [t for res in results for t in check_targets(res)]
    result = {
        "command": "nice -n 10 python scripts/bench_ptq.py" + (" --quick" if args.quick else "")
                   + (f" --only {args.only}" if args.only else ""),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(), "cpu": cpu_name(), "cores": os.cpu_count(),
        "load_average": [round(x, 1) for x in os.getloadavg()], "data": data, "test_samples": test_samples,
        "calib_samples": args.calib_samples, "rounds": args.rounds, "models": results, "targets": targets,
        "wall_seconds": round(time.time() - t0), "notes": list(NOTES),
    }
    if pending:
        result["notes"].append(f"partial run: {', '.join(pending)} not measured yet when this was written.")
    saved_path = Path(args.out) / "ptq.json"
    if args.only and not args.quick and saved_path.is_file():
        result = merged(json.loads(saved_path.read_text()), result, set(args.only.split(",")))
        targets = result["targets"]
    log_targets(targets, t0, log)
    if not args.quick:
        write_fragment(args.out, "ptq", result, write_markdown, log)


if __name__ == "__main__":
    sys.exit(main())
