"""Helpers shared by the benchmark scripts (machine description, data slices, latency)."""

import platform
import statistics
import time
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


def latency_runs(lites, warmup=20, rounds=5, runs=40):
    """Median single-image latency (ms) of each LiteModel, rounds interleaved across models."""
    import numpy as np

    samples = {k: [] for k in lites}
    interps = {}
    for k, lm in lites.items():
        it = lm.interpreter(num_threads=1)
        inp = it.get_input_details()[0]
        shape = [1, *inp["shape"][1:]]
        if list(inp["shape"]) != shape:
            it.resize_tensor_input(inp["index"], shape)
            it.allocate_tensors()
            inp = it.get_input_details()[0]
        x = np.random.default_rng(0).uniform(0, 1, shape)
        if inp["dtype"] == np.int8:
            x = np.clip(np.round(x / inp["quantization"][0] + inp["quantization"][1]), -128, 127)
        it.set_tensor(inp["index"], x.astype(inp["dtype"]))
        for _ in range(warmup):
            it.invoke()
        interps[k] = it
    for _ in range(rounds):
        for k, it in interps.items():
            for _ in range(runs):
                t0 = time.perf_counter()
                it.invoke()
                samples[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in samples.items()}
