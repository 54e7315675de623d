import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


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
