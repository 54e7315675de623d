"""Turn numpy image arrays into ``tf.data`` pipelines (normalisation, channel axis, batching)."""

import numpy as np

from kslim.errors import KslimValueError


def preprocess(x):
    """uint8 images (N, H, W) or (N, H, W, C) -> float32 in [0, 1] with a channel axis (N, H, W, C)."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise KslimValueError(f"images must have shape (N, H, W) or (N, H, W, C), got {x.shape}.")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    return x.astype(np.float32)


def to_dataset(x, y=None, batch_size=128, shuffle=False, seed=0, normalize=True, repeat=False,
               drop_remainder=False, reshuffle_each_iteration=True):
    """Build a ``tf.data.Dataset`` of ``(images, labels)`` batches from numpy arrays.

    Args:
        x: images, uint8 (N, H, W[, C]) or float.
        y: integer labels (N,) or None for an images-only dataset.
        batch_size: batch size.
        shuffle: shuffle each epoch (deterministic for a given ``seed``).
        reshuffle_each_iteration: ``False`` keeps one order for every iteration of the dataset (needed
            for the same order under ``tf.distribute``, which may iterate it once more first).
        normalize: scale uint8 to float32 in [0, 1] and add the channel axis.

    Example:
        >>> from kslim.datasets import fashion_mnist_small, to_dataset
        >>> (x, y), _ = fashion_mnist_small()
        >>> ds = to_dataset(x[:256], y[:256], batch_size=64)
        >>> [tuple(t.shape) for t in next(iter(ds))]
        [(64, 28, 28, 1), (64,)]
    """
    import tensorflow as tf

    if batch_size is None or int(batch_size) < 1:
        raise KslimValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    x = preprocess(x) if normalize else np.asarray(x)
    if y is not None:
        y = np.asarray(y).astype(np.int32)
        if len(y) != len(x):
            raise KslimValueError(f"x has {len(x)} samples but y has {len(y)}.")
        ds = tf.data.Dataset.from_tensor_slices((x, y))
    else:
        ds = tf.data.Dataset.from_tensor_slices(x)
    if shuffle:
        ds = ds.shuffle(min(len(x), 10000), seed=seed, reshuffle_each_iteration=reshuffle_each_iteration)
    if repeat:
        ds = ds.repeat()
    return ds.batch(int(batch_size), drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def load_datasets(source="small", batch_size=128, path=None, train_limit=None, test_limit=None, seed=0):
    """Fashion-MNIST as ``(train_ds, test_ds)`` tf.data pipelines, ready for ``model.fit``.

    ``source`` is ``"small"`` (bundled subset) or ``"full"``; ``*_limit`` keeps the first N samples.
    """
    from kslim.datasets.fashion_mnist import load

    (xtr, ytr), (xte, yte) = load(source, path=path)
    if train_limit:
        xtr, ytr = xtr[:train_limit], ytr[:train_limit]
    if test_limit:
        xte, yte = xte[:test_limit], yte[:test_limit]
    return (
        to_dataset(xtr, ytr, batch_size=batch_size, shuffle=True, seed=seed),
        to_dataset(xte, yte, batch_size=batch_size),
    )
