"""Data of a compression run: bundled/full Fashion-MNIST, or the user's own through a Python hook.

A hook is ``"file.py:function"`` (a path relative to the config file) or ``"package.module:function"``;
the function takes no argument and returns ``(train, test)``, each either a ``tf.data.Dataset`` of
``(x, y)`` batches or a tuple of numpy arrays ``(x, y)`` (images uint8 or float, integer labels).
Numpy data are shuffled per epoch with the run's seed (deterministic resume); a user's tf.data is
used as given.
"""

import importlib
import importlib.util
from pathlib import Path

import numpy as np

from kslim.errors import ConfigError


def load_hook(spec, base_dir):
    """The function a ``"file.py:function"`` / ``"package.module:function"`` hook names (imported now)."""
    target, _, func = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_absolute():
            path = Path(base_dir or ".") / path
        if not path.is_file():
            raise ConfigError(f"hook file {path} does not exist", path="data.hook")
        mod_spec = importlib.util.spec_from_file_location(f"kslim_user_data_{path.stem}", path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ConfigError(f"cannot import hook module {target!r}: {e}", path="data.hook") from e
    fn = getattr(module, func, None)
    if not callable(fn):
        raise ConfigError(f"hook {spec!r}: {target} has no function {func!r}", path="data.hook")
    return fn


class PipelineData:
    """Training/test data of a run, built from the config's ``data`` section.

    ``hook``: the hook function when the caller has already imported it (:func:`load_hook`).
    """

    def __init__(self, cfg, base_dir=None, hook=None):
        from kslim.datasets import load, preprocess

        self.batch_size = int(cfg.get("batch_size", 128))
        self._train_ds = self._test_ds = None
        if cfg.get("source", "small") == "hook":
            train, test = (hook or load_hook(cfg["hook"], base_dir))()
            self.x_train, self.y_train, self._train_ds = self._split(train, "train")
            self.x_test, self.y_test, self._test_ds = self._split(test, "test")
        else:
            (xtr, ytr), (xte, yte) = load(cfg.get("source", "small"), path=cfg.get("path"))
            self.x_train, self.y_train = preprocess(xtr), ytr.astype(np.int32)
            self.x_test, self.y_test = preprocess(xte), yte.astype(np.int32)
        if self.x_train is not None and cfg.get("train_limit"):
            self.x_train, self.y_train = self.x_train[: cfg["train_limit"]], self.y_train[: cfg["train_limit"]]
        if self.x_test is not None and cfg.get("test_limit"):
            self.x_test, self.y_test = self.x_test[: cfg["test_limit"]], self.y_test[: cfg["test_limit"]]

    @staticmethod
    def _split(obj, which):
        from kslim.datasets import preprocess

        if isinstance(obj, tuple) and len(obj) == 2:
            x = np.asarray(obj[0])
            x = preprocess(x) if x.dtype == np.uint8 or x.ndim == 3 else x.astype(np.float32)
            return x, np.asarray(obj[1]).astype(np.int32), None
        import tensorflow as tf

        if isinstance(obj, tf.data.Dataset):
            return None, None, obj
        raise ConfigError(
            f"the data hook's {which} part must be a tf.data.Dataset or a tuple (x, y) of numpy arrays, "
            f"got {type(obj).__name__}",
            path="data.hook",
        )

    def train(self, seed, batch_size=None):
        """The training data of one epoch, shuffled with ``seed``."""
        from kslim.datasets import to_dataset

        if self._train_ds is not None:
            return self._train_ds
        # one epoch's dataset: one order, the same under tf.distribute (kslim.compressor.distribute)
        return to_dataset(self.x_train, self.y_train, batch_size=batch_size or self.batch_size,
                          shuffle=True, seed=seed, normalize=False, reshuffle_each_iteration=False)

    def train_size(self):
        """Number of training images (``None`` for a user's ``tf.data`` of unknown length)."""
        return len(self.x_train) if self.x_train is not None else None

    def steps_per_epoch(self, batch_size=None):
        """Training steps of one epoch (a user's ``tf.data``: its cardinality, or 100 if unknown)."""
        if self.x_train is not None:
            return -(-len(self.x_train) // int(batch_size or self.batch_size))
        n = int(self._train_ds.cardinality())
        return n if n > 0 else 100

    def batch(self, batch_size=None):
        """One training batch of images (for timing a step)."""
        if self.x_train is not None:
            return self.x_train[: int(batch_size or self.batch_size)]
        xb, _ = next(iter(self._train_ds))
        return np.asarray(xb)

    def calibration(self, n):
        """Up to ``n`` training images (float32 NHWC) for calibration."""
        return self.train_arrays(n)[0]

    def train_arrays(self, n):
        """Up to ``n`` training ``(x, y)`` arrays (what the data-driven importances are measured on)."""
        if self.x_train is not None:
            return self.x_train[:n], self.y_train[:n]
        xs, ys, total = [], [], 0
        for xb, yb in self._train_ds:
            xs.append(np.asarray(xb))
            ys.append(np.asarray(yb))
            total += len(xs[-1])
            if total >= n:
                break
        return np.concatenate(xs)[:n], np.concatenate(ys)[:n].astype(np.int32)

    def eval_arrays(self, n=None):
        """``(x, y)`` test arrays (the first ``n``)."""
        if self.x_test is None:
            xs, ys = [], []
            for xb, yb in self._test_ds:
                xs.append(np.asarray(xb))
                ys.append(np.asarray(yb))
            self.x_test, self.y_test = np.concatenate(xs), np.concatenate(ys).astype(np.int32)
        if n:
            return self.x_test[:n], self.y_test[:n]
        return self.x_test, self.y_test
