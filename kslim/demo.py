"""``kslim demo``: the whole compression pipeline on the bundled Fashion-MNIST subset.

Reference MobileNetV1-style model (trained, or reused from the cache) -> prune -50 % MACs (L1) ->
fine-tune distilled from a VGG-style teacher -> quantization-aware training -> int8 TFLite export
-> host latency profile -> report (``report.md`` / ``report.html`` in the run directory).

The pipeline is :class:`kslim.compressor.Compressor` driven by the bundled config
``kslim/compressor/configs/demo.yaml`` (copy it to start your own). The first run trains the
reference models (a few minutes on 2 cores); later runs reuse them from ``~/.cache/kslim``.

Example::

    kslim demo                      # full demo
    kslim demo --quick              # smoke version: small data slices, 1 epoch per stage
    kslim demo --resume kslim_runs/demo-20261123-101500   # continue an interrupted demo
"""

import time
from importlib.resources import files
from pathlib import Path

import yaml

from kslim.errors import KslimValueError

DEMO_CONFIG = files("kslim.compressor") / "configs" / "demo.yaml"


def demo_config(model="mobilenet_v1", width=1.0, epochs=3, teacher="vgg", seed=0, quick=False):
    """The demo's config dict (the bundled demo.yaml with the CLI's overrides)."""
    from kslim.models import REFERENCE_MODELS

    if model not in REFERENCE_MODELS:
        raise KslimValueError(f"--model {model!r}: choose one of {sorted(REFERENCE_MODELS)}.")
    if teacher not in REFERENCE_MODELS:
        raise KslimValueError(f"--teacher {teacher!r}: choose one of {sorted(REFERENCE_MODELS)}.")
    if epochs < 1:
        raise KslimValueError(f"--epochs must be >= 1, got {epochs}.")
    if not width or width <= 0:
        raise KslimValueError(f"--width must be > 0, got {width}.")
    cfg = yaml.safe_load(DEMO_CONFIG.read_text())
    cfg["seed"] = int(seed)
    cfg["model"] = {"reference": model, "width": float(width), "pretrain_epochs": int(epochs)}
    for item in cfg["strategies"]:
        if "distill" in item:
            item["distill"]["teacher"] = {"reference": teacher, "pretrain_epochs": int(epochs)}
    if quick:
        from kslim.compressor.config import quick_config

        cfg = quick_config(cfg)
    return cfg


def run_demo(args):
    """Run the demo with the CLI's arguments; prints the report and returns the exit code."""
    from kslim.commands.compressor import run_resumable
    from kslim.compressor import Compressor
    from kslim.compressor.run_dir import RunDir
    from kslim.validation import check_output_dir

    t0 = time.time()
    if getattr(args, "resume", None):
        cfg = RunDir(args.resume).stored_config()
        comp = Compressor(cfg, out=args.resume, verbose=2, progress=True)
        result = run_resumable(comp, True, "kslim demo")
    else:
        cfg = demo_config(args.model, args.width, args.epochs, args.teacher, args.seed, args.quick)
        out = args.out or str(Path("kslim_runs") / f"{cfg['name']}-{time.strftime('%Y%m%d-%H%M%S')}")
        check_output_dir(out, "--out")
        print(f"kslim demo: {args.model} (width {args.width:g}) on the bundled Fashion-MNIST subset -> {out}"
              + (" (quick: a smoke test, not a result)" if args.quick else ""), flush=True)
        result = run_resumable(Compressor(cfg, out=out, verbose=2, progress=True), False, "kslim demo")
    print(result.report.read_text())
    print(f"run directory: {result.run_dir}\nfinal int8 model: {result.final_tflite} "
          f"({result.final_tflite.stat().st_size:,} bytes)\ntotal time: {time.time() - t0:.0f} s")
    return 0
