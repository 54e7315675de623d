#!/usr/bin/env python3
"""Peer benchmark: kslim vs TensorFlow Model Optimization (tfmot) on the same trained network.

The shipped, converged reference MobileNetV1-style net (``kslim.models.pretrained("mobilenet_v1")``,
trained on the full Fashion-MNIST set by ``scripts/train_reference.py``; the same one
scripts/bench_quant.py and scripts/bench_prune_methods.py use) is compressed two ways, with the same
fine-tune budget (``--ft-images`` training images, one pass, batch 128, Adam with cosine decay), data
order and seeds:

* pruning: kslim uniform L1 filter pruning to -50 % MACs (structured: the network gets narrower)
  vs ``tfmot.sparsity.keras.prune_low_magnitude`` (unstructured, ``ConstantSparsity``) at the
  same weight sparsity as kslim removed, then ``strip_pruning``; both exported float32;
* quantization-aware training: ``kslim.quant.quant_aware`` + ``kslim.quant.convert`` vs
  ``tfmot.quantization.keras.quantize_model`` + the converter's ``Optimize.DEFAULT`` (int8).

Every ``.tflite`` is measured in this (Keras 3) process by the same code: top-1 accuracy on all 10,000
test images (ai-edge-litert; median over seeds), bytes, gzip bytes, latency (batch 1, XNNPACK, 1 thread and all threads,
rounds interleaved across variants), plus the training step time relative to float training of
the same framework.

tfmot forces legacy Keras on its process, so it runs in a child process (``--worker``) started with
``TF_USE_LEGACY_KERAS=1``: there ``sys.modules["keras"]`` is ``tf_keras`` before
``kslim.models.mobilenet`` is imported, so the same builder rebuilds the same architecture; the
trained weights come from an ``.npz`` keyed ``<layer name>/<weight index>`` (no pickle).

    python scripts/bench_peers_tfmot.py --quick          # smoke run (~2-3 min)
    nice -n 10 python scripts/bench_peers_tfmot.py       # full run, writes benchmarks/peers_tfmot.{json,md}
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402  (helpers; imports nothing heavy)
from _benchlib import clone, ft_slice, latency_ms, load_full  # noqa: E402

DEFAULT_FT_IMAGES = 30000

# tfmot's own figures (anchors), from its documentation
ANCHORS = {
    "prune": "tfmot pruning guide (tensorflow/model-optimization, g3doc/guide/pruning/index.md): MobileNetV1 224 "
             "on ImageNet 71.04 % dense -> 70.84 % at 50 % sparsity (-0.20 pt); 'up to 6x improvements in model "
             "compression' (i.e. of the zipped file); latency gains need sparse-inference support "
             "(XNNPACK sparse kernels), which the dense .tflite kernels measured here do not use.",
    "quant": "tfmot QAT guide (g3doc/guide/quantization/training.md): MobileNetV1 224 on ImageNet 71.03 % float -> "
             "71.06 % 8-bit QAT (+0.03 pt); ResNet v1 50 76.3 % -> 76.1 %; 'model size shrinks by 4x, 1.5-4x CPU "
             "latency improvements'. PaddleSlim model zoo (docs/en/model_zoo_en.md): MobileNetV1 70.99 % -> "
             "quant_aware 70.60 % (-0.39 pt), 17 MB -> 4.4 MB.",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: width 0.25 (1 epoch), 2000/500 images of the "
                                                          "bundled subset, 1 seed, 512 fine-tune images")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--ft-images", type=int, default=None,
                   help=f"training images of every fine-tune (pruned, QAT, controls; one pass, batch 128, a "
                        f"seed-dependent slice; default {DEFAULT_FT_IMAGES:,}, --quick 512)")
    p.add_argument("--prune-lr", type=float, default=1e-3, help="start of the cosine decay, as bench_prune_methods")
    p.add_argument("--qat-lr", type=float, default=1e-4, help="start of the cosine decay, as scripts/bench_quant.py")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--flops-target", type=float, default=0.5)
    p.add_argument("--out", default=str(ROOT / "benchmarks"))
    p.add_argument("--no-control", action="store_true",
                   help="skip the controls (the float model given the same fine-tunes, no compression)")
    p.add_argument("--parallel", action="store_true",
                   help="run the tfmot process while kslim trains (faster; step times then see each other's load)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # job file: run the tfmot side
    args = p.parse_args(argv)
    if args.ft_images is None:
        args.ft_images = 512 if args.quick else DEFAULT_FT_IMAGES
    if args.ft_images < 1:
        p.error("--ft-images must be >= 1")
    if args.quick:
        args.seeds = args.seeds[:1]
    args.width = 0.25 if args.quick else 1.0
    return args


def load(quick):
    """``(train, test)``: the full set (quick: 2,000 train / 500 test images of the bundled subset). Numpy only."""
    train, test = load_full(quick)
    return ((train[0][:2000], train[1][:2000]) if quick else train), test


def cosine(keras_module, lr, images, batch_size):
    """Adam's learning rate: cosine decay from ``lr`` to 0 over the one pass (Keras 3 or tf_keras)."""
    return keras_module.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, -(-images // batch_size)))


# ----------------------------------------------------------------------------------- tfmot worker
def worker(job_path):
    """Runs in the child process (TF_USE_LEGACY_KERAS=1): tfmot prune + QAT, writes .tflite + json."""
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        raise SystemExit("the tfmot worker must run with TF_USE_LEGACY_KERAS=1")
    import tf_keras

    sys.modules["keras"] = tf_keras  # the kslim builders use only keras.Input, keras.layers, keras.Model
    sys.modules["keras.layers"] = tf_keras.layers
    import numpy as np
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot

    from kslim.models.mobilenet import mobilenet_v1

    job = json.loads(Path(job_path).read_text())
    out = Path(job["out"])
    (xtr, ytr), (xte, yte) = load(job["quick"])
    weights = np.load(job["weights"])

    def build():
        m = mobilenet_v1(width=job["width"])
        for layer in m.layers:
            n = len(layer.get_weights())
            if n:
                layer.set_weights([weights[f"{layer.name}/{i}"] for i in range(n)])
        return m

    def compile_(m, lr):
        m.compile(optimizer=tf_keras.optimizers.Adam(cosine(tf_keras, lr, job["ft_images"], job["batch_size"])),
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])

    def keras_acc(m):
        return float(np.mean(np.argmax(m.predict(xte, batch_size=500, verbose=0), -1) == yte))

    res = {"versions": {"tensorflow_model_optimization": bench._version("tensorflow-model-optimization"),
                        "tf_keras": tf_keras.__version__}, "seeds": {}}
    base = build()
    res["float_keras_acc"] = keras_acc(base)  # checks the weight copy (must match the Keras 3 model)

    # float step time of the same architecture in tf_keras: a whole float fine-tune on the first seed's slice,
    # the length and data of the QAT/pruning fits it is compared with (a short warm-up run reads slower)
    xft, yft = ft_slice((xtr, ytr), job["ft_images"], job["seeds"][0])
    m = build()
    compile_(m, job["qat_lr"])
    timer = bench.step_timer(tf_keras)
    tf_keras.utils.set_random_seed(job["seeds"][0])
    m.fit(xft, yft, batch_size=job["batch_size"], epochs=1, verbose=0, shuffle=False, callbacks=[timer])
    res["float_step_ms"] = timer.median_ms()
    res["float_step_cpu_ms"] = timer.median_cpu_ms()

    for seed in job["seeds"]:
        r = {}
        xft, yft = ft_slice((xtr, ytr), job["ft_images"], seed)
        # (a) unstructured magnitude pruning at kslim's weight sparsity
        tf_keras.utils.set_random_seed(seed)
        sched = tfmot.sparsity.keras.ConstantSparsity(job["sparsity"], begin_step=0, frequency=10)
        pm = tfmot.sparsity.keras.prune_low_magnitude(build(), pruning_schedule=sched)
        compile_(pm, job["prune_lr"])
        timer = bench.step_timer(tf_keras)
        t0 = time.time()
        pm.fit(xft, yft, batch_size=job["batch_size"], epochs=1, verbose=0, shuffle=False,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), timer])
        r["prune_fit_s"] = time.time() - t0
        r["prune_step_ms"] = timer.median_ms()
        r["prune_step_cpu_ms"] = timer.median_cpu_ms()
        stripped = tfmot.sparsity.keras.strip_pruning(pm)
        kernels = [w for layer in stripped.layers for w in layer.get_weights()[:1]
                   if type(layer).__name__ in ("Conv2D", "DepthwiseConv2D", "Dense")]
        r["prune_sparsity"] = float(sum(int(np.sum(k == 0)) for k in kernels) / sum(k.size for k in kernels))
        r["prune_keras_acc"] = keras_acc(stripped)
        conv = tf.lite.TFLiteConverter.from_keras_model(stripped)
        (out / f"tfmot_prune_s{seed}.tflite").write_bytes(conv.convert())

        # (b) quantization-aware training
        tf_keras.utils.set_random_seed(seed)
        t0 = time.time()
        qm = tfmot.quantization.keras.quantize_model(build())
        compile_(qm, job["qat_lr"])
        timer = bench.step_timer(tf_keras)
        qm.fit(xft, yft, batch_size=job["batch_size"], epochs=1, verbose=0, shuffle=False,
               callbacks=[timer])
        r["qat_fit_s"] = time.time() - t0
        r["qat_step_ms"] = timer.median_ms()
        r["qat_step_cpu_ms"] = timer.median_cpu_ms()
        r["qat_keras_acc"] = keras_acc(qm)
        conv = tf.lite.TFLiteConverter.from_keras_model(qm)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        (out / f"tfmot_qat_s{seed}.tflite").write_bytes(conv.convert())
        res["seeds"][str(seed)] = r
        print(f"[tfmot] seed {seed}: {json.dumps(r)}", flush=True)
        (out / "worker.json").write_text(json.dumps(res, indent=1))
    (out / "worker.json").write_text(json.dumps(res, indent=1))


# ----------------------------------------------------------------------------------- kslim side
def kernel_params(model):
    return sum(int(layer.get_weights()[0].size) for layer in model.layers
               if type(layer).__name__ in ("Conv2D", "DepthwiseConv2D", "Dense"))


def run(args, argv=None):
    import keras
    import numpy as np

    from kslim._io import atomic_write_json, atomic_write_text
    from kslim.analysis import flops
    from kslim.lite import LiteModel, convert
    from kslim.models import compile_classifier, pretrained
    from kslim.prune import L1NormFilterPruner
    from kslim.quant import convert as qconvert
    from kslim.quant import quant_aware

    start = time.time()

    def log(msg):
        print(f"[{time.time() - start:6.0f}s] {msg}", flush=True)

    machine = bench.machine()
    train, test = load(args.quick)
    ref = pretrained("mobilenet_v1", epochs=1, width=0.25, verbose=0) if args.quick else pretrained("mobilenet_v1")
    base, base_acc = ref.model, ref.accuracy
    shipped = {k: (ref.details or {}).get(k) for k in ("command", "seed", "train_images", "accuracy")}
    # Keras 3 accuracy on the very test images the tf_keras copy is scored on (checks the weight copy)
    base_acc = float(np.mean(np.argmax(base.predict(test[0], batch_size=500, verbose=0), -1) == test[1]))
    log(f"baseline mobilenet_v1 w{args.width:g} ({'--quick, 1 epoch' if args.quick else 'shipped'}): Keras acc "
        f"{base_acc:.4f} on {len(test[1]):,} test images")
    pruner = L1NormFilterPruner(base, round_to=1)
    pruned0 = pruner.prune_to_flops(args.flops_target).model
    sparsity = 1 - kernel_params(pruned0) / kernel_params(base)
    macs_ratio = flops(pruned0).macs / flops(base).macs
    log(f"kslim -{args.flops_target:.0%} MACs removes {sparsity:.1%} of the kernel weights "
        f"(MACs x{macs_ratio:.2f}); tfmot gets the same sparsity")

    tmp = Path(tempfile.mkdtemp(prefix="kslim-peers-"))
    arrays = {f"{layer.name}/{i}": w for layer in base.layers for i, w in enumerate(layer.get_weights())}
    np.savez(tmp / "weights.npz", **arrays)
    job = {"out": str(tmp), "weights": str(tmp / "weights.npz"), "quick": args.quick, "width": args.width,
           "seeds": args.seeds, "ft_images": args.ft_images, "prune_lr": args.prune_lr, "qat_lr": args.qat_lr,
           "batch_size": args.batch_size, "sparsity": sparsity}
    (tmp / "job.json").write_text(json.dumps(job))
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    log("starting the tfmot worker process (TF_USE_LEGACY_KERAS=1)")
    worker_proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker",
                                    str(tmp / "job.json")], env=env, stdout=open(tmp / "worker.log", "w"),
                                   stderr=subprocess.STDOUT)
    if not args.parallel:
        worker_proc.wait()

    def fit(model, lr, seed, timer=None):
        keras.utils.set_random_seed(seed)
        compile_classifier(model, learning_rate=cosine(keras, lr, args.ft_images, args.batch_size))
        xft, yft = ft_slice(train, args.ft_images, seed)
        t0 = time.time()
        model.fit(xft, yft, batch_size=args.batch_size, epochs=1, verbose=0, shuffle=False,
                  callbacks=[timer] if timer else None)
        return time.time() - t0

    # float step time: a whole float fine-tune on the first seed's slice, as long as the QAT/pruning fits
    # (the same-fine-tune control of that seed when controls run, else a fit of its own)
    float_timer = bench.step_timer(keras)
    if args.no_control:
        fit(clone(base), args.qat_lr, args.seeds[0], float_timer)

    lites = {"float32": convert(base, check=False).content}
    kslim_runs = {}
    for seed in args.seeds:
        r = {}
        pruned = L1NormFilterPruner(base, round_to=1).prune_to_flops(args.flops_target).model
        timer = bench.step_timer(keras)
        r["prune_fit_s"] = fit(pruned, args.prune_lr, seed, timer)
        r["prune_step_ms"] = timer.median_ms()
        r["prune_step_cpu_ms"] = timer.median_cpu_ms()
        lites[f"kslim_prune_s{seed}"] = convert(pruned, check=False).content
        qat = quant_aware(base)
        timer = bench.step_timer(keras)
        r["qat_fit_s"] = fit(qat, args.qat_lr, seed, timer)
        r["qat_step_ms"] = timer.median_ms()
        r["qat_step_cpu_ms"] = timer.median_cpu_ms()
        lites[f"kslim_qat_s{seed}"] = qconvert(qat, check=False).content
        if not args.no_control:  # the float model given the same fine-tunes: what training alone buys
            for kind, lr in (("control_prune", args.prune_lr), ("control_qat", args.qat_lr)):
                c = clone(base)
                fit(c, lr, seed, float_timer if (kind == "control_qat" and seed == args.seeds[0]) else None)
                lites[f"{kind}_s{seed}"] = convert(c, check=False).content
        kslim_runs[str(seed)] = r
        log(f"kslim seed {seed}: {r}")
        keras.backend.clear_session()

    kslim_float_step, kslim_float_cpu = float_timer.median_ms(), float_timer.median_cpu_ms()
    rc = worker_proc.wait()
    wlog = (tmp / "worker.log").read_text(errors="replace")
    worker_res = json.loads((tmp / "worker.json").read_text()) if (tmp / "worker.json").is_file() else None
    if rc != 0:
        log(f"tfmot worker FAILED (exit {rc}):\n" + "\n".join(wlog.strip().splitlines()[-15:]))
    else:
        log("tfmot worker done")
    for seed in args.seeds:
        for kind in ("prune", "qat"):
            f = tmp / f"tfmot_{kind}_s{seed}.tflite"
            if f.is_file():
                lites[f"tfmot_{kind}_s{seed}"] = f.read_bytes()

    accs = {k: LiteModel(c).evaluate(test) for k, c in lites.items()}
    s0 = str(args.seeds[0])
    lat_keys = [k for k in lites if k == "float32" or k.endswith(f"_s{s0}")]
    lat = latency_ms({k: lites[k] for k in lat_keys}, rounds=3 if args.quick else 7,
                           runs=20 if args.quick else 50)
    log(f"latency (ms): {lat}")

    def row(table, tool, variant, kind, step_key=None, float_step=None, float_cpu=None, worker_seeds=None):
        keys = ["float32"] if kind == "float32" else [f"{kind}_s{s}" for s in args.seeds if f"{kind}_s{s}" in lites]
        if not keys and kind.startswith("control"):
            return None
        if not keys:
            return {"table": table, "tool": tool, "variant": variant, "failed": True}
        key0 = keys[0]
        acc = bench.median([accs[k] for k in keys])
        r = {"table": table, "tool": tool, "variant": variant, "accuracy": acc,
             "accuracies": [accs[k] for k in keys], "delta_pt": 100 * (acc - accs["float32"]),
             "bytes": len(lites[key0]), "gzip_bytes": bench.gzip_size(lites[key0]),
             "latency_ms_1t": lat[key0]["1"], "latency_ms_all": lat[key0]["all"],
             "speedup_1t": lat["float32"]["1"] / lat[key0]["1"]}
        if step_key:
            src = worker_seeds if worker_seeds is not None else kslim_runs
            step = bench.median([v.get(step_key) for v in src.values()])
            cpu = bench.median([v.get(step_key.replace("_ms", "_cpu_ms")) for v in src.values()])
            r.update(step_ms=step, float_step_ms=float_step,
                     step_ratio=step / float_step if step and float_step else None,
                     step_cpu_ms=cpu, float_step_cpu_ms=float_cpu,
                     step_cpu_ratio=cpu / float_cpu if cpu and float_cpu else None)
        return r

    wseeds = (worker_res or {}).get("seeds", {})
    wfloat = (worker_res or {}).get("float_step_ms")
    wfloat_cpu = (worker_res or {}).get("float_step_cpu_ms")
    rows = [
        row("both", "-", "float32 baseline", "float32"),
        row("prune", "-", f"float32 + the same fine-tune (lr {args.prune_lr:g}; control)", "control_prune"),
        row("quant", "-", f"float32 + the same fine-tune (lr {args.qat_lr:g}; control)", "control_qat"),
        row("prune", "kslim", f"L1 filter pruning -{args.flops_target:.0%} MACs (structured) + FT", "kslim_prune",
            "prune_step_ms", kslim_float_step, kslim_float_cpu),
        row("prune", "tfmot", f"prune_low_magnitude {sparsity:.0%} sparsity (unstructured) + FT",
            "tfmot_prune", "prune_step_ms", wfloat, wfloat_cpu, worker_seeds=wseeds),
        row("quant", "kslim", "quant_aware + convert (int8)", "kslim_qat", "qat_step_ms", kslim_float_step, kslim_float_cpu),
        row("quant", "tfmot", "quantize_model + Optimize.DEFAULT (int8)", "tfmot_qat", "qat_step_ms", wfloat,
            wfloat_cpu, worker_seeds=wseeds),
    ]
    rows = [r for r in rows if r is not None]
    result = {
        "command": bench.command_line("scripts/bench_peers_tfmot.py", argv),
        "date": bench.utc_now(), "machine": machine, "load_end": bench.machine()["load_avg_1_5_15"],
        "settings": {"model": f"mobilenet_v1 width {args.width:g}", "shipped": None if args.quick else shipped,
                     "train_images": len(train[0]), "test_images": len(test[0]), "seeds": args.seeds,
                     "ft_images": args.ft_images, "prune_lr": args.prune_lr, "qat_lr": args.qat_lr,
                     "batch_size": args.batch_size, "flops_target": args.flops_target,
                     "kslim_kernel_sparsity": sparsity, "kslim_macs_ratio": macs_ratio,
                     "tfmot_kernel_sparsity": bench.median([v.get("prune_sparsity") for v in wseeds.values()])},
        "baseline_keras_acc": base_acc, "tfmot_float_keras_acc": (worker_res or {}).get("float_keras_acc"),
        "kslim_float_step_ms": kslim_float_step, "tfmot_float_step_ms": wfloat,
        "kslim_float_step_cpu_ms": kslim_float_cpu, "tfmot_float_step_cpu_ms": wfloat_cpu,
        "kslim_runs": kslim_runs, "tfmot": worker_res, "tfmot_returncode": rc,
        "tfmot_error": None if rc == 0 else "\n".join(wlog.strip().splitlines()[-8:]),
        "rows": rows, "anchors": ANCHORS, "wall_s": round(time.time() - start, 1),
    }
    result["settings"]["parallel"] = args.parallel
    md = markdown(result)
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "peers_tfmot.json", result)
    atomic_write_text(out / "peers_tfmot.md", md)
    log(f"wrote {out / 'peers_tfmot.json'} and {out / 'peers_tfmot.md'}")
    if rc == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if rc == 0 else 1


def _model_text(s):
    sh = s.get("shipped")
    if sh and sh.get("command"):
        return (f"Model: the shipped converged kslim reference {s['model']} (`kslim.models.pretrained`, trained by "
                f"`{sh['command']}`, seed {sh.get('seed')}) on the Fashion-MNIST full set ({s['train_images']:,} "
                f"train / {s['test_images']:,} test images); ")
    if "pretrain_epochs" in s:  # tables written before issue 16's port
        return (f"Model: kslim reference {s['model']} trained {s['pretrain_epochs']} epochs on the bundled "
                f"Fashion-MNIST subset ({s['train_images']} train / {s['test_images']} test images); ")
    return (f"Model: kslim reference {s['model']} (--quick: 1 epoch) on the bundled subset ({s['train_images']} "
            f"train / {s['test_images']} test images); ")


def _ft_text(s):
    return f"{s['ft_images']:,} training images" if "ft_images" in s else f"{s.get('epochs')} epoch(s)"


def markdown(res):
    s, m = res["settings"], res["machine"]
    f = bench.fmt
    head = [
        f"Command: `{res['command']}`  ",
        f"Date: {res['date']}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; load average at start "
        f"{m['load_avg_1_5_15']}, at end {res['load_end']} (shared machine: latency figures are noisy when "
        "the load exceeds the core count)  ",
        _model_text(s)
        + f"every compressed variant gets the same fine-tune ({_ft_text(s)}, batch {s['batch_size']}, same "
        f"data order, Adam with cosine decay); seeds {s['seeds']}, accuracy = median over seeds of the `.tflite` "
        f"top-1 on all {s['test_images']:,} test images. tfmot runs in its "
        "own process (TF_USE_LEGACY_KERAS=1) on the same architecture rebuilt in tf_keras with the same "
        f"weights (tf_keras float Keras accuracy {f(res['tfmot_float_keras_acc'], '.4f')} vs Keras 3 "
        f"{f(res['baseline_keras_acc'], '.4f')}). Latency: ai-edge-litert, XNNPACK, batch 1, median of "
        "interleaved rounds; 1 thread and all cores.",
    ]

    def table(kinds, cols):
        lines = ["| tool | variant | .tflite acc | delta (pt) | bytes | gzip bytes | latency 1 thr (ms) | "
                 f"latency {m['cores']} thr (ms) | speedup 1 thr |" + "".join(f" {c[0]} |" for c in cols),
                 "|---|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(cols)]
        for r in res["rows"]:
            if r["table"] not in kinds:
                continue
            if r.get("failed"):
                lines.append(f"| {r['tool']} | {r['variant']} | FAILED (see the note below) |" + " |" * (7 + len(cols)))
                continue
            lines.append(
                f"| {r['tool']} | {r['variant']} | {r['accuracy']:.4f} | {r['delta_pt']:+.2f} | {r['bytes']:,} | "
                f"{r['gzip_bytes']:,} | {r['latency_ms_1t']:.3f} | {r['latency_ms_all']:.3f} | "
                f"{r['speedup_1t']:.2f}x |" + "".join(f" {c[1](r)} |" for c in cols))
        return lines

    step = ("train step vs float (wall)", lambda r: f"{r['step_ratio']:.2f}x" if r.get("step_ratio") else "-")
    step_cpu = ("train step vs float (CPU time)",
                lambda r: f"{r['step_cpu_ratio']:.2f}x" if r.get("step_cpu_ratio") else "-")
    prune = ["<!-- section: prune -->", "### Peer: tfmot `prune_low_magnitude` (unstructured) vs kslim filter pruning",
             "", *head, "",
             f"kslim's -{s['flops_target']:.0%} MACs pruning removes {s['kslim_kernel_sparsity']:.1%} of the "
             f"conv/dense kernel weights (MACs x{s['kslim_macs_ratio']:.2f}); tfmot is given that sparsity "
             f"(measured after `strip_pruning`: {f(100 * s['tfmot_kernel_sparsity'] if s['tfmot_kernel_sparsity'] is not None else None, '.1f')} %). "
             "The step-time columns are the fine-tune step relative to float training in the same framework. "
             "Deltas are against the float32 baseline; the control row (the float model given the same "
             "fine-tune) shows what the extra training alone buys.", "",
             *table(("both", "prune"), [step, step_cpu]), "",
             f"Anchor: {res['anchors']['prune']}", ""]
    quant = ["<!-- section: quant -->", "### Peer: tfmot `quantize_model` QAT vs kslim `quant_aware`", "", *head, "",
             f"Float training step: kslim (Keras 3) {f(res['kslim_float_step_ms'], '.1f')} ms, tf_keras "
             f"{f(res['tfmot_float_step_ms'], '.1f')} ms wall; process CPU time (all threads; robust to other "
             f"jobs' load) {f(res.get('kslim_float_step_cpu_ms'), '.1f')} ms and "
             f"{f(res.get('tfmot_float_step_cpu_ms'), '.1f')} ms (batch {s['batch_size']}), each the median step of a whole float fine-tune on the first seed's "
             "slice (the length and data of the QAT fits); QAT step ratios are relative to the float step of the "
             "same framework.", "",
             *table(("both", "quant"), [step, step_cpu]), "",
             f"Anchor: {res['anchors']['quant']}", ""]
    tail = []
    if res.get("tfmot_error"):
        tail = ["**The tfmot worker failed**; its rows are missing. Last lines of its log:", "", "```",
                res["tfmot_error"], "```", ""]
    return "\n".join(prune + tail + quant + tail) + "\n"


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    return run(args, argv)


if __name__ == "__main__":
    sys.exit(main())
