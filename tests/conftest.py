import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import re  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def selects_slow(markexpr):
    """Whether a ``-m`` expression selects the slow tests (``slow``, ``slow and not x``), not only excludes
    them (``not slow``, setup.cfg's default)."""
    return re.search(r"(?<!not )\bslow\b", markexpr or "") is not None


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # setup.cfg's addopts run the default suite on two pytest-xdist workers; the slow tests time .tflite models
    # and compare the timings, which a second worker on the other core would disturb: they run serially
    if selects_slow(config.getoption("markexpr", "")) and getattr(config.option, "numprocesses", None):
        config.option.numprocesses, config.option.dist, config.option.tx = 0, "no", []


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(0)
    yield


@pytest.fixture(scope="session")
def small_data():
    """A small slice of the bundled Fashion-MNIST subset as float32 NHWC arrays."""
    from kslim.datasets import fashion_mnist_small, preprocess

    (xtr, ytr), (xte, yte) = fashion_mnist_small()
    return (preprocess(xtr[:2000]), ytr[:2000].astype(np.int32)), (preprocess(xte[:500]), yte[:500].astype(np.int32))


@pytest.fixture(scope="session")
def bench_script():
    """``bench_script("bench_prune")``: a module of ``scripts/`` (not a package), loaded once per name, with
    ``scripts/`` on ``sys.path`` for its ``_benchlib`` imports."""
    import importlib.util
    import sys
    from pathlib import Path

    scripts, loaded = Path(__file__).resolve().parents[1] / "scripts", {}
    if str(scripts) not in sys.path:
        sys.path.insert(0, str(scripts))

    def load(name):
        if name not in loaded:
            spec = importlib.util.spec_from_file_location(f"_bench_fixture_{name}", scripts / f"{name}.py")
            loaded[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(loaded[name])
        return loaded[name]

    return load
