"""Data sets: Fashion-MNIST (full from disk, or the bundled subset) and tf.data helpers."""

from kslim.datasets.fashion_mnist import (
    CLASS_NAMES,
    fashion_mnist,
    fashion_mnist_small,
    load,
    read_idx,
)
from kslim.datasets.pipeline import load_datasets, preprocess, to_dataset

__all__ = [
    "CLASS_NAMES",
    "fashion_mnist",
    "fashion_mnist_small",
    "load",
    "read_idx",
    "load_datasets",
    "preprocess",
    "to_dataset",
]
