"""Train kslim's reference nets to convergence on the full Fashion-MNIST set and ship their weights (issue 16).

For each net: 55,000 training images (the last 5,000 of the 60,000 are held out for early stopping),
random horizontal flips, Adam with a cosine-decayed learning rate over ``--max-epochs``, stopped when
the held-out accuracy has not improved for ``--patience`` epochs (the best epoch's weights are kept).
Test accuracy is measured on all 10,000 test images, in Keras and on the float ``.tflite``.

Writes ``kslim/models/weights/<name>.weights.h5`` and ``kslim/models/weights/manifest.json`` (the
command, seed, settings, epochs run, seconds and accuracies), read by
``kslim.models.pretrained(name)`` (``source="shipped"``). Each file is written atomically and the
manifest is updated after every net, so an interrupted run keeps the nets already trained.

    python scripts/train_reference.py                       # the three nets (~1 h on 2 cores)
    python scripts/train_reference.py --names resnet --max-epochs 2   # a quick try
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NAMES = ("mobilenet_v1", "resnet", "vgg")
ROLES = {"mobilenet_v1": "student", "resnet": "student", "vgg": "teacher"}
HOLDOUT = 5000


def _datasets(batch_size, seed):
    import tensorflow as tf

    from kslim.datasets import fashion_mnist
    from kslim.datasets.pipeline import to_dataset

    (x, y), (xt, yt) = fashion_mnist()
    xtr, ytr, xval, yval = x[:-HOLDOUT], y[:-HOLDOUT], x[-HOLDOUT:], y[-HOLDOUT:]
    train = to_dataset(xtr, ytr, batch_size=batch_size, shuffle=True, seed=seed)
    train = train.map(lambda a, b: (tf.image.random_flip_left_right(a, seed=seed), b),
                      num_parallel_calls=tf.data.AUTOTUNE)
    return (train.prefetch(tf.data.AUTOTUNE), to_dataset(xval, yval, batch_size=512),
            to_dataset(xt, yt, batch_size=512), (xt, yt))


def _tflite_accuracy(model, xt, yt):
    import numpy as np

    from kslim.datasets.pipeline import preprocess
    from kslim.lite import convert

    lite = convert(model, check=False)
    x = preprocess(xt)
    pred = np.concatenate([lite.predict(x[i:i + 500]) for i in range(0, len(x), 500)])
    return float((pred.argmax(-1) == yt).mean())


def train_one(name, args):
    import keras

    from kslim.models import build, compile_classifier

    keras.utils.set_random_seed(args.seed)
    train, val, test, (xt, yt) = _datasets(args.batch_size, args.seed)
    model = build(name)
    steps = int(train.cardinality()) * args.max_epochs
    compile_classifier(model, keras.optimizers.schedules.CosineDecay(args.learning_rate, decay_steps=steps))
    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=args.patience, restore_best_weights=True)
    print(f"{name}: {model.count_params():,} params, up to {args.max_epochs} epochs on {55000:,} images "
          f"(early stop on {HOLDOUT:,} held out, patience {args.patience})", flush=True)
    start = time.perf_counter()
    hist = model.fit(train, validation_data=val, epochs=args.max_epochs, callbacks=[stop], verbose=2)
    seconds = time.perf_counter() - start
    _, acc = model.evaluate(test, verbose=0)
    val_acc = hist.history["val_accuracy"]
    best = int(max(range(len(val_acc)), key=val_acc.__getitem__)) + 1
    return model, {
        "role": ROLES[name], "params": int(model.count_params()), "settings": {},
        "accuracy": round(float(acc), 4), "tflite_accuracy": round(_tflite_accuracy(model, xt, yt), 4),
        "test_images": int(len(yt)), "best_epoch": best, "epochs_run": len(val_acc),
        "holdout_accuracy": round(float(max(val_acc)), 4), "train_images": 60000 - HOLDOUT,
        "seed": args.seed, "max_epochs": args.max_epochs, "patience": args.patience,
        "learning_rate": args.learning_rate, "batch_size": args.batch_size, "seconds": round(seconds, 1),
    }


def save_weights_only(model, name, path):
    """The model's weights without its optimizer's state (a third of the size): through a fresh,
    uncompiled copy; written atomically."""
    from kslim._io import atomic_path
    from kslim.models import build

    fresh = build(name)
    fresh.set_weights(model.get_weights())
    with atomic_path(path, suffix=".weights.h5") as tmp:
        fresh.save_weights(tmp)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--names", default=",".join(NAMES), help=f"comma-separated, of {list(NAMES)}")
    p.add_argument("--max-epochs", type=int, default=30)
    p.add_argument("--patience", type=int, default=4)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "kslim" / "models" / "weights"))
    args = p.parse_args(argv)
    names = [n for n in args.names.split(",") if n]
    bad = [n for n in names if n not in NAMES]
    if bad:
        p.error(f"unknown net(s) {bad}; choose from {list(NAMES)}")

    from kslim._io import atomic_write_json
    from kslim.models.zoo import SHIPPED_MANIFEST

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / SHIPPED_MANIFEST.name
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    command = "python scripts/train_reference.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for name in names:
        model, entry = train_one(name, args)
        path = out / f"{name}.weights.h5"
        save_weights_only(model, name, path)
        entry.update(command=command.strip(), date=time.strftime("%Y-%m-%d"), file=path.name)
        manifest[name] = entry
        atomic_write_json(manifest_path, manifest)
        print(f"{name}: test accuracy {entry['accuracy']:.4f} (Keras), {entry['tflite_accuracy']:.4f} (.tflite) "
              f"on {entry['test_images']:,} images; best epoch {entry['best_epoch']} of {entry['epochs_run']}, "
              f"{entry['seconds']:.0f} s -> {path}", flush=True)


if __name__ == "__main__":
    main()
