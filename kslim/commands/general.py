"""``kslim info`` and ``kslim demo``."""

import importlib.metadata
import platform


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cmd_info(args):
    from kslim._version import __version__

    rows = [("kslim", __version__), ("python", platform.python_version()),
            ("platform", f"{platform.system()} {platform.machine()}")]
    tf_dist = next((d for d in ("tensorflow-cpu", "tensorflow", "tf-nightly") if _version(d)), None)
    rows.append(("tensorflow", f"{_version(tf_dist)} ({tf_dist})" if tf_dist else "not installed"))
    for name, dist in (("keras", "keras"), ("ai-edge-litert", "ai-edge-litert"),
                       ("keras-tuner", "keras-tuner"), ("tensorboard", "tensorboard"), ("numpy", "numpy")):
        rows.append((name, _version(dist) or "not installed"))
    width = max(len(r[0]) for r in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def cmd_demo(args):
    from kslim.demo import run_demo

    return run_demo(args)


def register(sub):
    p = sub.add_parser("info", help="versions of kslim, TensorFlow, Keras, LiteRT, keras-tuner",
                       description="Print the versions of kslim and of the libraries it runs on.")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "demo",
        help="the compression pipeline on the bundled Fashion-MNIST subset",
        description="Train (or reuse the cached) reference model on the bundled Fashion-MNIST subset, then "
                    "prune -50 % MACs, fine-tune distilled from a teacher, quantization-aware train, export "
                    "int8 TFLite, profile it on the host and write a report (the bundled demo.yaml config). "
                    "Ctrl-C stops cleanly; --resume RUN_DIR continues.",
    )
    p.add_argument("--model", default="mobilenet_v1", help="reference student model (mobilenet_v1, resnet, vgg)")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier of the student")
    p.add_argument("--teacher", default="vgg", help="reference teacher model for distillation")
    p.add_argument("--epochs", type=int, default=3, help="training epochs of the reference models")
    p.add_argument("--out", default=None, help="run directory (default: kslim_runs/demo-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue an interrupted demo run")
    p.add_argument("--quick", action="store_true",
                   help="smoke version: 512 training / 256 test images, 1 epoch per stage")
    p.add_argument("--seed", type=int, default=0, help="seed of every training and of the data order")
    p.set_defaults(func=cmd_demo)
