"""Quantization benchmark: float32 vs QAT int8 vs PTQ (each calibration algo) vs dynamic vs float16.

Every row starts from a shipped, converged reference net (``kslim.models.pretrained(name)``: the
MobileNetV1-style and ResNet-style nets ``scripts/train_reference.py`` trained on the full 60,000-image
Fashion-MNIST training set; see ``kslim.models.shipped()``). Every variant is exported to ``.tflite`` and
measured there: top-1 accuracy on all 10,000 test images (ai-edge-litert), bytes, and host latency
(1 thread and all cores, XNNPACK, batch 1, interleaved rounds; median with the 10th-90th percentile).

* ``float32``: ``kslim.lite.convert(model)``;
* ``qat_int8``: ``kslim.quant.quant_aware`` + a fine-tune of ``--qat-images`` training images (one pass,
  Adam from ``--qat-lr`` with cosine decay, a seed-dependent slice) + ``kslim.quant.convert``, per seed;
  ``float32_finetuned`` is the control: the same fine-tune (images, lr, seed) on the float model;
* ``ptq_<algo>``: ``kslim.quant.quant_post_static`` with each calibration algorithm on the same
  256 training images (8 batches of 32), plus the best one with ``bias_correction=True``;
* ``converter_int8``: the TFLite converter's own PTQ (min/max calibration) on the same 256 images,
  through ``kslim.lite.convert(quantize="int8", representative_data=...)``: the peer;
* ``dynamic_int8`` / ``float16``: ``kslim.quant.quant_post_dynamic`` (no data).

PTQ, dynamic and float16 involve no training and are deterministic: measured once per run. The QAT and
control rows are per seed (default 0, 1, 2), saved as they finish and skipped when the saved row has the
same settings (``--redo`` measures them again): a run stopped part-way resumes. Targets are judged on the
median over the seeds at the printed precision, with the test set's noise band printed beside them.

    python scripts/bench_quant.py --quick          # smoke run (~2 min, bundled subset, writes nothing)
    nice -n 10 python scripts/bench_quant.py       # full run, writes benchmarks/quant.{json,md}
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
from _benchlib import (at_least, changed_flags, clone, cpu_name, fine_tune, latency_ms, load_full, log_targets,  # noqa: E402
                       noise_pt, render_saved, seed_list, seed_verdict, write_fragment)

ALGOS = ("abs_max", "avg", "hist", "KL", "mse")
SEEDED = ("float32_finetuned", "qat_int8")
TARGETS = {"qat_pt": -0.2, "ptq_pt": -0.5, "dynamic_pt": -0.3, "dynamic_bytes": -0.72}
DEFAULT_QAT_IMAGES = 30000
#: settings a saved seeded row must share to be skipped on resume
ROW_SETTINGS = ("qat_lr", "train_images", "test_images")

NOTES = [
    "PTQ variants: `kslim.quant.quant_post_static` computes each activation range with the named algorithm "
    "on the converter's calibrated float graph and writes it into the flatbuffer before `mlir_quantize`; "
    "`converter_int8` is the converter's own min/max calibration on the same 256 images.",
    "KL is TensorRT's entropy search with a floor at the 99.9th percentile (see "
    "`kslim.quant.calibration.kl_threshold`): without it, the spikes that constant image background puts "
    "in the activation histograms made KL clip ~10 % of some ReLU6 layers (-31 pt on a small MobileNet "
    "in a smoke run).",
    "dynamic_int8: the converter only quantizes weights with >= 1024 elements, so depthwise kernels and "
    "biases stay float32 (hence a little less than -75 %); its hybrid kernels quantize activations on "
    "the fly.",
    "Test-set noise: the binomial standard error of one accuracy on n test images is sqrt(p(1-p)/n); the "
    "band printed is 1.96 SE. Two variants are measured on the same images, so the noise of their "
    "difference is below sqrt(2) x that band; for QAT the spread between seeds (per-seed values) is the "
    "larger noise.",
    "The other quantizers: LiteRT's quantizer and Keras' own `model.quantize(\"int8\")` are the peer rows of "
    "the PTQ table (`scripts/bench_ptq.py`, same shipped nets, same calibration images); tfmot "
    "`quantize_model` QAT is the peers table (`scripts/bench_peers_tfmot.py`, in its own process).",
    "Latency of a seeded row is measured in the run that produced the row (interleaved with that run's "
    "deterministic variants); its `date` says which run.",
]


# ------------------------------------------------------------------------------------------------ pieces
def seeded_variant(variant, model, train, seed, args):
    """``float32_finetuned`` or ``qat_int8`` of ``model`` with seed ``seed``: a LiteModel."""
    from kslim.lite import convert
    from kslim.quant import convert as quant_convert
    from kslim.quant import quant_aware

    if variant == "float32_finetuned":
        return convert(fine_tune(clone(model), train, args.qat_images, args.qat_lr, seed), check=False)
    qat = quant_aware(clone(model))
    return quant_convert(fine_tune(qat, train, args.qat_images, args.qat_lr, seed), check=False)


def deterministic_variants(model, calib, args, log):
    """``(lites, seconds, failed, add)`` of every training-free variant: ``{variant: LiteModel}``,
    ``{variant: seconds}``, ``{variant: failure}`` and the ``add(variant, build)`` that fills them."""
    from kslim.lite import convert
    from kslim.quant import quant_post_dynamic, quant_post_static

    lites, seconds, failed = {}, {}, {}

    def add(key, fn):
        t0 = time.time()
        try:
            lites[key] = fn()
        except Exception as e:  # report, do not hide: a failed variant is a finding
            failed[key] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            log(f"    {key}: FAILED {failed[key]}")
            return
        seconds[key] = time.time() - t0
        log(f"    {key}: {lites[key].size} bytes in {seconds[key]:.1f}s")

    add("float32", lambda: convert(model, check=False))
    for algo in args.algos:
        add(f"ptq_{algo}", lambda algo=algo: quant_post_static(model, calib, algo=algo, batch_size=32,
                                                               check=False))
    add("converter_int8", lambda: convert(model, quantize="int8", representative_data=calib,
                                          num_calibration_samples=len(calib), check=False))
    add("dynamic_int8", lambda: quant_post_dynamic(model, check=False))
    add("float16", lambda: quant_post_dynamic(model, dtype="float16", check=False))
    return lites, seconds, failed, add


def row_key(r):
    return (r["model"], r["variant"], r.get("seed"), r.get("qat_images"))


def merged(saved_rows, new_rows):
    """New rows replace saved rows of the same (model, variant, seed, QAT images)."""
    out = {row_key(r): r for r in saved_rows}
    out.update({row_key(r): r for r in new_rows})
    return list(out.values())


def _order(r):
    v = r["variant"]
    rank = (0 if v == "float32" else 1 if v in SEEDED else 2 if v.startswith("ptq_") else 3)
    return (r["model"], r.get("qat_images") or 0, rank, v, -1 if r.get("seed") is None else r["seed"])


def measure_model(name, args, train, test, saved, log):
    """Rows of one reference net: every deterministic variant now, the seeded ones not yet saved."""
    from kslim.models import pretrained

    if args.quick:
        ref = pretrained(name, epochs=1, width=0.25, verbose=0)
    else:
        ref = pretrained(name)
    model = ref.model
    details = getattr(ref, "details", None) or {}
    calib = train[0][: args.calib_samples]
    log(f"== {name}: shipped reference net ({model.count_params():,} params, Keras accuracy {ref.accuracy:.4f}"
        + (f", trained by `{details.get('command')}`" if details.get("command") else "") + ")")
    lites, seconds, failed, add = deterministic_variants(model, calib, args, log)
    accs = {k: float(lm.evaluate(test)) for k, lm in lites.items()}
    ptq = {k: v for k, v in accs.items() if k.startswith("ptq_")}
    if ptq and not args.quick:
        best = max(ptq, key=ptq.get)
        key = f"{best}+bias_correction"
        from kslim.quant import quant_post_static

        add(key, lambda: quant_post_static(model, calib, algo=best[4:], batch_size=32, bias_correction=True,
                                           check=False))
        if key in lites:
            accs[key] = float(lites[key].evaluate(test))

    settings = {k: getattr(args, k) for k in ROW_SETTINGS}
    todo = [(v, s) for s in args.seeds for v in SEEDED
            if args.redo or (saved.get((name, v, s, args.qat_images)) or {}).get("settings") != settings]
    if len(todo) < len(args.seeds) * len(SEEDED):
        log(f"    {len(args.seeds) * len(SEEDED) - len(todo)} seeded row(s) already saved with these settings: "
            "skipped (--redo measures them again)")
    seeded = {}
    t_seeded = time.time()
    for n, (variant, seed) in enumerate(todo):
        t0 = time.time()
        log(f"    {variant} seed {seed}: fine-tune on {args.qat_images:,} training images "
            f"({-(-args.qat_images // 128)} steps of 128), lr {args.qat_lr:g} cosine, convert, evaluate ...")
        k = f"{variant} s{seed}"
        try:
            lites[k] = seeded_variant(variant, model, train, seed, args)
        except Exception as e:  # noqa: BLE001 - a failed variant is a finding
            failed[k] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            log(f"    {k}: FAILED {failed[k]}")
            continue
        seconds[k] = time.time() - t0
        accs[k] = float(lites[k].evaluate(test))
        seeded[k] = (variant, seed)
        left = (time.time() - t_seeded) / (n + 1) * (len(todo) - n - 1)
        log(f"    {k}: acc {accs[k]:.4f} in {seconds[k]:.0f}s" + (f"; about {left / 60:.0f} min left for "
                                                                    f"this model" if left else ""))

    lat = latency_ms(lites, threads=(1, None), rounds=args.rounds, stats=True)
    base = accs["float32"]
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = []
    for k, lm in lites.items():
        variant, seed = seeded.get(k, (k, None))
        row = {"model": name, "variant": variant, "seed": seed,
               "qat_images": args.qat_images if seed is not None else None,
               "accuracy": accs[k], "delta_pt": 100 * (accs[k] - base), "bytes": lm.size,
               "bytes_ratio": lm.size / lites["float32"].size,
               "latency_ms": lat[k]["1"]["median"], "latency_p10_ms": lat[k]["1"]["p10"],
               "latency_p90_ms": lat[k]["1"]["p90"], "latency_all_ms": lat[k]["all"]["median"],
               "seconds": round(seconds.get(k, 0.0), 1), "date": date}
        if seed is not None:
            row["settings"] = settings
        rows.append(row)
        log(f"    {k:<28} acc {accs[k]:.4f} ({row['delta_pt']:+.2f} pt)  {lm.size:>9} B  "
            f"{row['latency_ms']:.3f} ms (1 thread, p10-p90 {row['latency_p10_ms']:.3f}-{row['latency_p90_ms']:.3f})"
            f"  {row['latency_all_ms']:.3f} ms (all cores)")
    info = {"params": int(model.count_params()), "keras_accuracy": float(ref.accuracy),
            "shipped": {k: details.get(k) for k in ("command", "seed", "epochs", "train_images", "accuracy")
                        if k in details}}
    return rows, failed, info


# ------------------------------------------------------------------------------------------------ verdicts
def check_targets(result):
    """Target verdicts per model from ``result["rows"]`` (latest QAT budget of each model)."""
    out = []
    n_test = result["test_samples"]
    rows = result["rows"]
    for m in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == m]
        by = {r["variant"]: r for r in mine if r.get("seed") is None}
        if "float32" not in by:
            continue
        base = by["float32"]["accuracy"]
        se, band = noise_pt(base, n_test)
        noise = f"test-set noise ±{band:.2f} pt (1.96 SE, {n_test:,} images)"
        budgets = sorted({r["qat_images"] for r in mine if r.get("seed") is not None})
        qat_images = result.get("qat_images") if result.get("qat_images") in budgets else (budgets or [None])[-1]
        qat = {r["seed"]: r for r in mine if r["variant"] == "qat_int8" and r.get("qat_images") == qat_images}
        ctl = {r["seed"]: r for r in mine if r["variant"] == "float32_finetuned" and r.get("qat_images") == qat_images}
        if qat:
            d = {s: 100 * (r["accuracy"] - base) for s, r in qat.items()}
            out.append(seed_verdict(f"{m}: QAT int8 accuracy vs float32 ({qat_images:,}-image fine-tune, median "
                                    f"over {len(d)} seed(s))", d, TARGETS["qat_pt"], True, noise))
            common = sorted(set(qat) & set(ctl))
            if common:
                dc = {s: 100 * (qat[s]["accuracy"] - ctl[s]["accuracy"]) for s in common}
                out.append(seed_verdict(f"{m}: QAT int8 vs float32 given the same fine-tune (control), median over "
                                        f"{len(dc)} seed(s)", dc, TARGETS["qat_pt"], True, noise))
        else:
            out.append({"what": f"{m}: QAT int8 accuracy vs float32", "target": f">= {TARGETS['qat_pt']} pt",
                        "value": "not run", "met": False})
        ptq = {k: r for k, r in by.items() if k.startswith("ptq_") and "+" not in k}
        if ptq:
            best = max(ptq, key=lambda k: ptq[k]["accuracy"])
            d = ptq[best]["delta_pt"]
            out.append({"what": f"{m}: best PTQ algo ({best[4:]}) vs float32", "target": f">= {TARGETS['ptq_pt']} pt",
                        "value": f"{d:+.2f} pt; {noise}", "met": at_least(d, TARGETS["ptq_pt"])})
            if "converter_int8" in by:
                c = by["converter_int8"]["accuracy"]
                out.append({"what": f"{m}: best PTQ algo vs converter's own PTQ", "target": ">= converter",
                            "value": f"{100 * ptq[best]['accuracy']:.2f} % vs {100 * c:.2f} %",
                            "met": round(ptq[best]["accuracy"], 4) >= round(c, 4)})
        if "dynamic_int8" in by:
            r = by["dynamic_int8"]
            out.append({"what": f"{m}: dynamic int8 bytes", "target": "~ -74 %",
                        "value": f"{100 * (r['bytes_ratio'] - 1):+.1f} %",
                        "met": r["bytes_ratio"] - 1 <= TARGETS["dynamic_bytes"]})
            out.append({"what": f"{m}: dynamic int8 accuracy", "target": f">= {TARGETS['dynamic_pt']} pt",
                        "value": f"{r['delta_pt']:+.2f} pt; {noise}",
                        "met": at_least(r["delta_pt"], TARGETS["dynamic_pt"])})
    return out


# ------------------------------------------------------------------------------------------------ report
def write_markdown(result, path):
    from kslim._io import atomic_write_text

    atomic_write_text(path, "\n".join(render(result)) + "\n")


def render(result):
    lines = [
        "## Quantization (`scripts/bench_quant.py`)",
        "",
        f"Command(s): `{result['command']}`  ",
        f"Date: {result['date']}  ",
        f"Machine: {result['platform']}, {result['cpu']}, {result.get('cores', '?')} cores, load average "
        f"(1/5/15 min) {result.get('load_average', '?')} at the end of the run  ",
        f"Data: {result['data']}  ",
        f"Calibration: {result['calib_samples']} training images (8 batches of 32) for every PTQ variant and for "
        f"the converter's own PTQ. QAT and its control: {result['qat_images']:,} training images (one pass, "
        f"batch 128), Adam from lr {result['qat_lr']:g} with cosine decay, seeds {result['seeds']}. Accuracy and "
        "latency are measured on each `.tflite` with ai-edge-litert (latency: 1 thread and all cores, XNNPACK, "
        "batch 1, median of interleaved rounds, 10th-90th percentile of the single runs).",
        "",
    ]
    for m, info in result.get("models", {}).items():
        sh = info.get("shipped") or {}
        lines.append(f"- `{m}`: {info.get('params', 0):,} params, Keras accuracy {100 * info['keras_accuracy']:.2f} %"
                     + (f", shipped from `{sh['command']}` (seed {sh.get('seed')})" if sh.get("command") else ""))
    lines += [
        "",
        "| model | variant | seed | top-1 (%) | vs float32 (pt) | .tflite bytes | vs float32 bytes "
        "| latency 1 thread (ms, p10-p90) | latency all cores (ms) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(result["rows"], key=_order):
        seed = "" if r.get("seed") is None else str(r["seed"])
        spread = (f" ({r['latency_p10_ms']:.3f}-{r['latency_p90_ms']:.3f})" if r.get("latency_p10_ms") is not None
                  else "")
        lines.append(f"| {r['model']} | {r['variant']} | {seed} | {100 * r['accuracy']:.2f} | {r['delta_pt']:+.2f} | "
                     f"{r['bytes']} | {100 * (r['bytes_ratio'] - 1):+.1f} % | {r['latency_ms']:.3f}{spread} | "
                     f"{r['latency_all_ms']:.3f} |")
    for k, v in (result.get("failed") or {}).items():
        lines.append(f"| {k.split('/')[0]} | {k.split('/', 1)[-1]} | | failed: {v} | | | | | |")
    lines += ["", "Targets from the issue:", "", "| target | required | measured | met |", "|---|---|---|---|"]
    for t in result["targets"]:
        lines.append(f"| {t['what']} | {t['target']} | {t['value']} | {'yes' if t['met'] else '**no**'} |")
    if result.get("notes"):
        lines += [""] + [f"- {n}" for n in result["notes"]]
    return lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: mobilenet_v1 width 0.25 (1 epoch) on the bundled subset, 500 test images, "
                        "3 algos, 1 seed, 512 QAT images; writes nothing")
    p.add_argument("--models", default="mobilenet_v1,resnet")
    p.add_argument("--seeds", type=seed_list, default="0,1,2", help="seeds of the QAT and control rows")
    p.add_argument("--qat-images", type=int, default=None,
                   help=f"training images of the QAT fine-tune and its control (default {DEFAULT_QAT_IMAGES:,}; "
                        "--quick 512)")
    p.add_argument("--qat-lr", type=float, default=1e-4)
    p.add_argument("--calib-samples", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--redo", action="store_true", help="measure seeded rows already saved with the same settings")
    p.add_argument("--out", default=str(ROOT / "benchmarks"))
    p.add_argument("--render", default=None, metavar="QUANT_JSON",
                   help="only rewrite quant.md (targets re-checked) from a saved quant.json, next to it")
    args = p.parse_args(argv)
    if args.qat_images is None:
        args.qat_images = 512 if args.quick else DEFAULT_QAT_IMAGES
    for name in ("qat_images", "calib_samples", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.quick:
        args.seeds, args.rounds, args.models = args.seeds[:1], 2, "mobilenet_v1"
    args.models = [m for m in args.models.split(",") if m]
    args.algos = ("abs_max", "KL", "mse") if args.quick else ALGOS
    return args


def command_line(args):
    return ("nice -n 10 python scripts/bench_quant.py" + (" --quick" if args.quick else "")
            + f" --seeds {','.join(map(str, args.seeds))}"
            + (f" --models {','.join(args.models)}" if args.models != ["mobilenet_v1", "resnet"] else "")
            + (f" --qat-images {args.qat_images}" if args.qat_images != DEFAULT_QAT_IMAGES else "")
            + changed_flags(args, parse_args, ("qat_lr", "calib_samples", "rounds")))


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.render:
        def refresh(result):
            result["targets"] = check_targets(result)
            result["notes"] = NOTES + [n for n in result.get("notes", []) if n.startswith("partial run")]

        return render_saved(args.render, refresh, write_markdown)

    def log(msg):
        print(msg, flush=True)

    import keras

    t0 = time.time()
    train, test = load_full(args.quick)
    if args.quick:
        train = (train[0][:2000], train[1][:2000])
    args.train_images, args.test_images = len(train[0]), len(test[1])
    data = ("bundled Fashion-MNIST subset, 2,000 training / 500 test images (--quick; smoke numbers only)"
            if args.quick else
            f"Fashion-MNIST full set (Debian's `dataset-fashion-mnist`): fine-tunes and calibration draw from the "
            f"{args.train_images:,} training images; every accuracy is top-1 of the `.tflite` on all "
            f"{args.test_images:,} test images; shipped converged reference nets (`kslim.models.pretrained(name)`).")

    saved_path = Path(args.out) / "quant.json"
    result = json.loads(saved_path.read_text()) if saved_path.is_file() and not args.quick else {}
    if not isinstance(result.get("rows"), list) or result.get("test_samples") != args.test_images:
        if result:
            log(f"{saved_path} holds a table of another format or test set (the bundled subset): starting a new "
                "table")
        result = {}
    result.setdefault("rows", [])
    result.setdefault("models", {})
    result.setdefault("failed", {})
    saved = {row_key(r): r for r in result["rows"]}
    commands = set(result.get("commands", []))
    commands.add(command_line(args))
    for name in args.models:
        rows, failed, info = measure_model(name, args, train, test, saved, log)
        result["rows"] = sorted(merged(result["rows"], rows), key=_order)
        result["models"][name] = info
        result["failed"] = {k: v for k, v in result["failed"].items() if not k.startswith(f"{name}/")}
        result["failed"].update({f"{name}/{k}": v for k, v in failed.items()})
        result.update({
            "commands": sorted(commands), "command": "; ".join(sorted(commands)),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "platform": platform.platform(), "cpu": cpu_name(), "cores": os.cpu_count(),
            "load_average": [round(x, 1) for x in os.getloadavg()],
            "versions": {"keras": keras.__version__, "tensorflow": __import__("tensorflow").__version__},
            "data": data, "test_samples": args.test_images, "train_images": args.train_images,
            "calib_samples": args.calib_samples, "qat_images": args.qat_images, "qat_lr": args.qat_lr,
            "seeds": sorted({r["seed"] for r in result["rows"] if r.get("seed") is not None}),
            "notes": NOTES + ([f"partial run: {', '.join(args.models[args.models.index(name) + 1:])} not measured "
                               "yet when this was written."] if name != args.models[-1] else [])})
        result["targets"] = check_targets(result)
        if not args.quick:
            write_fragment(args.out, "quant", result, write_markdown, log)
    log_targets(result["targets"], t0, log)
    if args.quick:
        log("(quick run: nothing written)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
