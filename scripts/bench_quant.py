"""Quantization benchmark: float32 vs QAT int8 vs PTQ (each calibration algo) vs dynamic vs float16.

For each reference model (MobileNetV1-style and ResNet-style, ``kslim.models.pretrained``, cached) on
the bundled Fashion-MNIST subset, every variant is exported to ``.tflite`` and measured there:
top-1 accuracy on the 2000 test images (ai-edge-litert), bytes, and host latency (1 thread, XNNPACK,
batch 1, median of interleaved rounds).

* ``float32``: ``kslim.lite.convert(model)``;
* ``qat_int8``: ``kslim.quant.quant_aware`` + a short fine-tune (``--qat-epochs``, lr 1e-4) +
  ``kslim.quant.convert``; ``float32_finetuned`` is the control: the same fine-tune on the float
  model (the 3-epoch reference models are under-trained, so any extra epoch helps; QAT is judged
  against both);
* ``ptq_<algo>``: ``kslim.quant.quant_post_static`` with each calibration algorithm on the same
  256 training images (8 batches of 32), plus the best one with ``bias_correction=True``;
* ``converter_int8``: the TFLite converter's own PTQ (min/max calibration) on the same 256 images,
  through ``kslim.lite.convert(quantize="int8", representative_data=...)``: the peer;
* ``dynamic_int8`` / ``float16``: ``kslim.quant.quant_post_dynamic`` (no data).

    python scripts/bench_quant.py --quick          # smoke run (< 2 min)
    nice -n 10 python scripts/bench_quant.py       # full run, writes benchmarks/quant.{json,md}
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _benchlib import cpu_name, latency_ms, log_targets, write_fragment  # noqa: E402
from bench import fmt  # noqa: E402
ALGOS = ("abs_max", "avg", "hist", "KL", "mse")
TARGETS = {"qat_pt": -0.2, "ptq_pt": -0.5, "dynamic_pt": -0.3, "dynamic_bytes": -0.74}


def finetuned_float(model, train, epochs, log):
    """The control for QAT: the same fine-tune (epochs, lr 1e-4, seed) on the float model."""
    import keras

    from kslim.lite import convert
    from kslim.models import compile_classifier

    t0 = time.time()
    keras.utils.set_random_seed(0)
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    compile_classifier(clone, learning_rate=1e-4)
    clone.fit(train[0], train[1], batch_size=128, epochs=epochs, verbose=0, shuffle=True)
    log(f"    float fine-tune: {epochs} epoch(s) in {time.time() - t0:.0f}s")
    return convert(clone, check=False)


def qat_variant(model, train, epochs, log):
    import keras

    from kslim.models import compile_classifier
    from kslim.quant import convert, quant_aware

    t0 = time.time()
    keras.utils.set_random_seed(0)
    qat = quant_aware(model)
    compile_classifier(qat, learning_rate=1e-4)
    qat.fit(train[0], train[1], batch_size=128, epochs=epochs, verbose=0, shuffle=True)
    lite = convert(qat, check=False)
    log(f"    qat: {epochs} epoch(s) fine-tune + convert in {time.time() - t0:.0f}s")
    return lite


def bench_model(name, width, epochs, args, train, test, log):
    import numpy as np

    from kslim.lite import convert
    from kslim.models import pretrained
    from kslim.quant import quant_post_dynamic, quant_post_static

    ref = pretrained(name, epochs=epochs, width=width, verbose=0)
    model, keras_acc = ref.model, ref.accuracy
    calib = train[0][: args.calib_samples]
    lites, notes, seconds = {}, {}, {}

    def add(key, fn):
        t0 = time.time()
        try:
            lites[key] = fn()
        except Exception as e:  # report, do not hide: a failed variant is a finding
            notes[key] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            log(f"    {key}: FAILED {notes[key]}")
            return
        seconds[key] = time.time() - t0
        log(f"    {key}: {lites[key].size} bytes in {seconds[key]:.1f}s")

    log(f"== {name} (width {width}, {epochs} epochs; Keras accuracy {keras_acc:.4f})")
    add("float32", lambda: convert(model, check=False))
    if not args.no_qat:
        add("float32_finetuned", lambda: finetuned_float(model, train, args.qat_epochs, log))
        add("qat_int8", lambda: qat_variant(model, train, args.qat_epochs, log))
    for algo in args.algos:
        add(f"ptq_{algo}", lambda algo=algo: quant_post_static(model, calib, algo=algo, batch_size=32,
                                                               check=False))
    add("converter_int8", lambda: convert(model, quantize="int8", representative_data=calib,
                                          num_calibration_samples=len(calib), check=False))
    add("dynamic_int8", lambda: quant_post_dynamic(model, check=False))
    add("float16", lambda: quant_post_dynamic(model, dtype="float16", check=False))

    accs = {k: lm.evaluate(test) for k, lm in lites.items()}
    ptq = {k: v for k, v in accs.items() if k.startswith("ptq_")}
    if ptq and not args.quick:
        best = max(ptq, key=ptq.get)
        key = f"{best}+bias_correction"
        add(key, lambda: quant_post_static(model, calib, algo=best[4:], batch_size=32, bias_correction=True,
                                           check=False))
        if key in lites:
            accs[key] = lites[key].evaluate(test)
    lat = latency_ms(lites, threads=(1, None), rounds=args.rounds)
    base = accs["float32"]
    rows = []
    for k, lm in lites.items():
        rows.append({"model": name, "variant": k, "accuracy": accs[k], "delta_pt": 100 * (accs[k] - base),
                     "bytes": lm.size, "bytes_ratio": lm.size / lites["float32"].size,
                     "latency_ms": lat[k]["1"], "latency_all_ms": lat[k]["all"], "seconds": seconds.get(k)})
        log(f"    {k:<28} acc {accs[k]:.4f} ({100 * (accs[k] - base):+.2f} pt)  {lm.size:>9} B  "
            f"{lat[k]['1']:.3f} ms (1 thread)  {lat[k]['all']:.3f} ms (all cores)")
    return {"model": name, "width": width, "epochs": epochs, "keras_accuracy": keras_acc, "rows": rows,
            "failed": notes}


def _at_least(delta_pt, target_pt):
    """``delta_pt >= target_pt`` at the 0.01 pt the tables print (-0.2000001 meets -0.2)."""
    return round(delta_pt, 2) >= target_pt


def check_targets(res):
    out = []
    by = {r["variant"]: r for r in res["rows"]}
    m = res["model"]
    if "qat_int8" in by:
        d = by["qat_int8"]["delta_pt"]
        out.append({"what": f"{m}: QAT int8 accuracy vs float32", "target": ">= -0.2 pt",
                    "value": f"{d:+.2f} pt", "met": _at_least(d, TARGETS["qat_pt"])})
        if "float32_finetuned" in by:
            d = by["qat_int8"]["delta_pt"] - by["float32_finetuned"]["delta_pt"]
            out.append({"what": f"{m}: QAT int8 vs float32 given the same fine-tune (control)",
                        "target": ">= -0.2 pt", "value": f"{d:+.2f} pt", "met": _at_least(d, TARGETS["qat_pt"])})
    else:
        out.append({"what": f"{m}: QAT int8", "target": ">= -0.2 pt", "value": "not run", "met": False})
    ptq = {k: r for k, r in by.items() if k.startswith("ptq_") and "+" not in k}
    if ptq:
        best = max(ptq, key=lambda k: ptq[k]["accuracy"])
        d = ptq[best]["delta_pt"]
        out.append({"what": f"{m}: best PTQ algo ({best[4:]}) vs float32", "target": ">= -0.5 pt",
                    "value": f"{d:+.2f} pt", "met": _at_least(d, TARGETS["ptq_pt"])})
        if "converter_int8" in by:
            c = by["converter_int8"]["accuracy"]
            out.append({"what": f"{m}: best PTQ algo vs converter's own PTQ", "target": ">= converter",
                        "value": f"{100 * ptq[best]['accuracy']:.2f} % vs {100 * c:.2f} %",
                        "met": ptq[best]["accuracy"] >= c})
    if "dynamic_int8" in by:
        r = by["dynamic_int8"]
        out.append({"what": f"{m}: dynamic int8 bytes", "target": "~ -74 %",
                    "value": f"{100 * (r['bytes_ratio'] - 1):+.1f} %", "met": r["bytes_ratio"] - 1 <= -0.72})
        out.append({"what": f"{m}: dynamic int8 accuracy", "target": ">= -0.3 pt",
                    "value": f"{r['delta_pt']:+.2f} pt", "met": _at_least(r["delta_pt"], TARGETS["dynamic_pt"])})
    return out


def write_markdown(result, path):
    lines = [
        "## Quantization (`scripts/bench_quant.py`)",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}  ",
        f"Machine: {result['platform']}, {result['cpu']}, {result.get('cores', '?')} cores, load average "
        f"(1/5/15 min) {result.get('load_average', '?')} at the end of the run  ",
        f"Data: bundled Fashion-MNIST subset (10000 train / {result['test_samples']} test images); reference "
        f"models from `kslim.models.pretrained` (3 epochs). Calibration: {result['calib_samples']} training "
        f"images (8 batches of 32) for every PTQ variant and for the converter's own PTQ. QAT: "
        f"{result['qat_epochs']} epoch(s) of fine-tuning at lr 1e-4 on the 10000 training images "
        "(`float32_finetuned`: the same fine-tune without quantization, the control). Accuracy and latency are measured on each "
        "`.tflite` with ai-edge-litert (latency: 1 thread and all cores, XNNPACK, batch 1, median of "
        "interleaved rounds).",
        "",
        "| model | variant | top-1 (%) | vs float32 (pt) | .tflite bytes | vs float32 bytes | latency 1 thread (ms) "
        "| latency all cores (ms) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for res in result["models"]:
        for r in res["rows"]:
            lines.append(f"| {r['model']} | {r['variant']} | {100 * r['accuracy']:.2f} | {r['delta_pt']:+.2f} | "
                         f"{r['bytes']} | {100 * (r['bytes_ratio'] - 1):+.1f} % | {r['latency_ms']:.3f} | "
                         f"{fmt(r.get('latency_all_ms'), '.3f')} |")
        for k, v in res["failed"].items():
            lines.append(f"| {res['model']} | {k} | failed: {v} | | | | | |")
    lines += ["", "Targets from the issue:", "", "| target | required | measured | met |", "|---|---|---|---|"]
    for t in result["targets"]:
        lines.append(f"| {t['what']} | {t['target']} | {t['value']} | {'yes' if t['met'] else '**no**'} |")
    if result.get("notes"):
        lines += [""] + [f"- {n}" for n in result["notes"]]
    from kslim._io import atomic_write_text

    atomic_write_text(path, "\n".join(lines) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: small model, 500 test images, 3 algos")
    p.add_argument("--models", default="mobilenet_v1,resnet")
    p.add_argument("--qat-epochs", type=int, default=1)
    p.add_argument("--no-qat", action="store_true")
    p.add_argument("--calib-samples", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "benchmarks"))
    p.add_argument("--render", default=None, metavar="QUANT_JSON",
                   help="only rewrite quant.md (targets re-checked) from a saved quant.json, next to it")
    args = p.parse_args(argv)
    if args.render:
        path = Path(args.render)
        result = json.loads(path.read_text())
        result["targets"] = [t for res in result["models"] for t in check_targets(res)]
        sys.path.insert(0, str(ROOT))
        from kslim._io import atomic_write_json

        atomic_write_json(path, result)
        write_markdown(result, path.with_suffix(".md"))
        return 0
    args.algos = ("abs_max", "KL", "mse") if args.quick else ALGOS

    import numpy as np

    from kslim.datasets import fashion_mnist_small, preprocess

    (xtr, ytr), (xte, yte) = fashion_mnist_small()
    xtr, xte = preprocess(xtr), preprocess(xte)
    ytr, yte = ytr.astype(np.int32), yte.astype(np.int32)
    if args.quick:
        xtr, ytr, xte, yte = xtr[:2000], ytr[:2000], xte[:500], yte[:500]
        args.rounds = 2
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(xtr))
    train = (xtr[perm], ytr[perm])
    test = (xte, yte)

    def log(msg):
        print(msg, flush=True)

    t0 = time.time()
    results = []
    specs = [("mobilenet_v1", 0.25, 1)] if args.quick else [(m, 1.0, 3) for m in args.models.split(",")]
    for n, (name, width, epochs) in enumerate(specs):
        results.append(bench_model(name, width, epochs, args, train, test, log))
        pending = [s[0] for s in specs[n + 1:]]
        report(args, results, pending, yte, t0, log)
    return 0


def report(args, results, pending, yte, t0, log):
    """Print the targets and (full mode) write benchmarks/quant.{json,md}, after every model."""
    targets = [t for res in results for t in check_targets(res)]
    result = {
        "command": "nice -n 10 python scripts/bench_quant.py" + (" --quick" if args.quick else ""),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(), "cpu": cpu_name(), "cores": os.cpu_count(),
        "load_average": [round(x, 1) for x in os.getloadavg()], "test_samples": len(yte),
        "calib_samples": args.calib_samples, "qat_epochs": 0 if args.no_qat else args.qat_epochs,
        "models": results, "targets": targets, "wall_seconds": time.time() - t0, "notes": [],
    }
    if args.quick:
        result["notes"].append("--quick: mobilenet_v1 width 0.25 (1 epoch), 2000 train / 500 test images; "
                               "smoke numbers only.")
    if pending:
        result["notes"].append(f"partial run: {', '.join(pending)} not measured yet when this was written.")
    result["notes"] += [
        "PTQ variants: `kslim.quant.quant_post_static` computes each activation range with the named algorithm "
        "on the converter's calibrated float graph and writes it into the flatbuffer before `mlir_quantize`; "
        "`converter_int8` is the converter's own min/max calibration on the same 256 images.",
        "KL is TensorRT's entropy search with a floor at the 99.9th percentile (see "
        "`kslim.quant.calibration.kl_threshold`): without it, the spikes that constant image background puts "
        "in the activation histograms made KL clip ~10 % of some ReLU6 layers (-31 pt on a small MobileNet "
        "in a smoke run).",
        "dynamic_int8: the converter only quantizes weights with >= 1024 elements, so depthwise kernels and "
        "biases stay float32 (hence a little less than -75 %); its hybrid kernels quantize activations on "
        "the fly: slower than float32 XNNPACK on the depthwise-heavy MobileNet, faster on the ResNet.",
    ]
    log_targets(targets, t0, log)
    if not args.quick:
        sys.path.insert(0, str(ROOT))
        write_fragment(args.out, "quant", result, write_markdown, log)


if __name__ == "__main__":
    sys.exit(main())
