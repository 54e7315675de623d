"""Helper of tests/test_distribute.py: run a compression config in a fresh process.

    python tests/distribute_run.py CONFIG_JSON OUT MODE [MODE ...] [--cpus N]

Splits the CPU into ``N`` logical devices before TensorFlow starts (it must be done first, hence
the separate process), then runs ``CONFIG_JSON`` with ``distribute: MODE`` into ``OUT/MODE`` for
each ``MODE`` in turn (``multi_worker`` reads ``TF_CONFIG``). The process that writes the run
directory (the chief) saves ``OUT/MODE/outputs.npz``: the logits of every stage's Keras model on
the first 64 test images.
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("out")
    ap.add_argument("modes", nargs="+")
    ap.add_argument("--cpus", type=int, default=1)
    args = ap.parse_args(argv)

    import tensorflow as tf

    if args.cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args.cpus)
    import numpy as np

    from kslim._model_io import load_keras_model
    from kslim.compressor import Compressor

    for mode in args.modes:
        cfg = dict(json.loads(Path(args.config).read_text()), distribute=mode)
        out = Path(args.out) / mode
        result = Compressor(cfg, out=out, verbose=0).run()
        if result.run_dir != out:  # a worker: its run directory is gone
            continue
        x = None
        logits = {}
        for stage in sorted((out / "stages").iterdir()):
            if (stage / "model.keras").is_file():
                model = load_keras_model(stage / "model.keras")
                if x is None:
                    from kslim.datasets import load, preprocess

                    x = preprocess(load("small")[1][0][:64])
                logits[stage.name] = model.predict(x, verbose=0)
        np.savez(out / "outputs.npz", **logits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
