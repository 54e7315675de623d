"""Helpers shared by the benchmark scripts (machine description, data slices)."""

import platform
from pathlib import Path


def cpu_name():
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_data(quick):
    """The bundled Fashion-MNIST subset as float32 NHWC arrays (quick: 2000 train / 500 test)."""
    import numpy as np

    from kslim.datasets import fashion_mnist_small, preprocess

    (xtr, ytr), (xte, yte) = fashion_mnist_small()
    xtr, xte = preprocess(xtr), preprocess(xte)
    ytr, yte = ytr.astype(np.int32), yte.astype(np.int32)
    if quick:
        xtr, ytr, xte, yte = xtr[:2000], ytr[:2000], xte[:500], yte[:500]
    return (xtr, ytr), (xte, yte)
