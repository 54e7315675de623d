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
               drop_remainder=False, reshuffle_each_iteration=True, augment=None):
    """Build a ``tf.data.Dataset`` of ``(images, labels)`` batches from numpy arrays.

    Args:
        x: images, uint8 (N, H, W[, C]) or float.
        y: integer labels (N,) or None for an images-only dataset.
        batch_size: batch size.
        shuffle: shuffle each epoch (deterministic for a given ``seed``).
        reshuffle_each_iteration: ``False`` keeps one order for every iteration of the dataset (needed
            for the same order under ``tf.distribute``, which may iterate it once more first).
        normalize: scale uint8 to float32 in [0, 1] and add the channel axis.
        augment: ``None`` or a callable applied to every image batch in training mode, e.g. a
            ``keras.Sequential`` of Keras' random preprocessing layers (``RandomFlip``,
            ``RandomTranslation``...), a fresh draw each batch. With a
            :class:`~kslim.distill.Distiller` the teacher and the student see the same augmented
            images (consistent teaching), since both read the batch the dataset yields.

    Example:
        >>> from kslim.datasets import fashion_mnist_small, to_dataset
        >>> (x, y), _ = fashion_mnist_small()
        >>> ds = to_dataset(x[:256], y[:256], batch_size=64)
        >>> [tuple(t.shape) for t in next(iter(ds))]
        [(64, 28, 28, 1), (64,)]
        >>> import keras
        >>> flip = keras.layers.RandomFlip("horizontal", seed=0)
        >>> xb, yb = next(iter(to_dataset(x[:64], y[:64], batch_size=64, augment=flip)))
        >>> tuple(xb.shape), xb.dtype.name
        ((64, 28, 28, 1), 'float32')
    """
    import tensorflow as tf

    if batch_size is None or int(batch_size) < 1:
        raise KslimValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if augment is not None and not callable(augment):
        raise KslimValueError(f"augment must be None or a callable on image batches (e.g. a keras.Sequential of "
                              f"random preprocessing layers), got {type(augment).__name__}.")
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
    ds = ds.batch(int(batch_size), drop_remainder=drop_remainder)
    if augment is not None:
        import keras

        layer = isinstance(augment, keras.layers.Layer)

        def _augment(*batch):
            images = augment(batch[0], training=True) if layer else augment(batch[0])
            images = tf.cast(images, batch[0].dtype)
            return (images, *batch[1:]) if len(batch) > 1 else images

        ds = ds.map(_augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


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
