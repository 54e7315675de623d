"""Rebuild kslim/datasets/data/fashion_mnist_small.npz: a stratified subset of Fashion-MNIST.

    python scripts/make_bundled_subset.py [--train 10000 --test 2000 --seed 0]

Needs the full set (Debian's dataset-fashion-mnist, or $KSLIM_DATA).
"""

import argparse
from pathlib import Path

import numpy as np

from kslim.datasets.fashion_mnist import BUNDLED_FILE, fashion_mnist


def stratified(y, n, rng):
    classes = np.unique(y)
    per = n // len(classes)
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), per, replace=False) for c in classes])
    return np.sort(idx)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--train", type=int, default=10000)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=BUNDLED_FILE)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    (xtr, ytr), (xte, yte) = fashion_mnist()
    i, j = stratified(ytr, a.train, rng), stratified(yte, a.test, rng)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(a.out, x_train=xtr[i], y_train=ytr[i], x_test=xte[j], y_test=yte[j])
    print(f"wrote {a.out} ({a.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
