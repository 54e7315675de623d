"""kslim.datasets: idx reading, the lookup order of the full set, the bundled subset, tf.data pipelines."""

import gzip
import importlib
import struct

import numpy as np
import pytest

from kslim import datasets

# ``kslim.datasets.fashion_mnist`` is also the name of the loader function: get the module itself.
fm = importlib.import_module("kslim.datasets.fashion_mnist")
from kslim.errors import DataNotFoundError, KslimFileError, KslimValueError


def idx_bytes(array):
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    array = np.asarray(array)
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.tobytes()


def write_idx(path, array, compress=True):
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def write_set(folder, marker):
    """The four Fashion-MNIST files, tiny, with ``marker`` as every pixel of x_train."""
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / fm.FILES["x_train"], np.full((3, 28, 28), marker, np.uint8))
    write_idx(folder / fm.FILES["y_train"], np.array([0, 1, 2], np.uint8))
    write_idx(folder / fm.FILES["x_test"], np.zeros((2, 28, 28), np.uint8))
    write_idx(folder / fm.FILES["y_test"], np.array([3, 4], np.uint8))
    return folder


# ---------------------------------------------------------------- read_idx
@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_roundtrip(tmp_path, compress):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    path = write_idx(tmp_path / ("x.idx.gz" if compress else "x.idx"), images, compress)
    got = datasets.read_idx(path)
    assert got.dtype == np.uint8 and got.shape == (3, 4, 5)
    np.testing.assert_array_equal(got, images)


def test_read_idx_big_endian_types(tmp_path):
    ints = np.array([[1, -2], [300000, 4]], dtype=">i4")
    floats = np.array([1.5, -2.25], dtype=">f4")
    got_i = datasets.read_idx(write_idx(tmp_path / "i.gz", ints))
    got_f = datasets.read_idx(write_idx(tmp_path / "f.gz", floats))
    np.testing.assert_array_equal(got_i, [[1, -2], [300000, 4]])
    np.testing.assert_array_equal(got_f, [1.5, -2.25])
    assert got_i.dtype == np.int32 and got_i.dtype.isnative


def test_read_idx_corrupt(tmp_path):
    good = idx_bytes(np.zeros((4, 28, 28), np.uint8))
    (tmp_path / "trunc.gz").write_bytes(gzip.compress(good[:-10]))
    with pytest.raises(KslimFileError, match="trunc.gz.*truncated"):
        datasets.read_idx(tmp_path / "trunc.gz")
    (tmp_path / "magic.gz").write_bytes(gzip.compress(b"\x01\x02" + good[2:]))
    with pytest.raises(KslimFileError, match="magic.gz.*magic"):
        datasets.read_idx(tmp_path / "magic.gz")
    (tmp_path / "code.gz").write_bytes(gzip.compress(b"\x00\x00\x42" + good[3:]))
    with pytest.raises(KslimFileError, match="0x42"):
        datasets.read_idx(tmp_path / "code.gz")
    (tmp_path / "notgzip.gz").write_bytes(good)
    with pytest.raises(KslimFileError, match="notgzip.gz"):
        datasets.read_idx(tmp_path / "notgzip.gz")
    with pytest.raises(KslimFileError, match="missing.gz"):
        datasets.read_idx(tmp_path / "missing.gz")


# ---------------------------------------------------------------- lookup order of the full set
@pytest.fixture
def places(tmp_path, monkeypatch):
    """Point the Debian and Keras-cache locations at empty temporary folders and clear $KSLIM_DATA."""
    debian, keras_cache = tmp_path / "debian", tmp_path / "keras_cache"
    monkeypatch.setattr(fm, "DEBIAN_DIR", debian)
    monkeypatch.setattr(fm, "KERAS_CACHE_DIR", keras_cache)
    monkeypatch.delenv("KSLIM_DATA", raising=False)
    return tmp_path, debian, keras_cache


def first_pixel(path=None):
    (x, _), _ = datasets.fashion_mnist(path)
    return int(x[0, 0, 0])


def test_lookup_order(places, monkeypatch):
    tmp, debian, keras_cache = places
    write_set(keras_cache, 4)
    assert first_pixel() == 4
    write_set(debian, 3)
    assert first_pixel() == 3
    monkeypatch.setenv("KSLIM_DATA", str(write_set(tmp / "env", 2)))
    assert first_pixel() == 2
    assert first_pixel(write_set(tmp / "arg", 1)) == 1
    (x_train, y_train), (x_test, y_test) = datasets.fashion_mnist()
    assert x_train.shape == (3, 28, 28) and x_test.shape == (2, 28, 28)
    assert list(y_train) == [0, 1, 2] and list(y_test) == [3, 4]


def test_incomplete_folder_is_skipped(places, monkeypatch):
    tmp, debian, _ = places
    write_set(debian, 3)
    partial = write_set(tmp / "env", 2)
    (partial / fm.FILES["y_test"]).unlink()
    monkeypatch.setenv("KSLIM_DATA", str(partial))
    assert first_pixel() == 3


def test_data_not_found(places):
    tmp, debian, keras_cache = places
    with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist") as e:
        datasets.fashion_mnist()
    assert str(debian) in str(e.value) and str(keras_cache) in str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    partial = write_set(tmp / "arg", 1)
    (partial / fm.FILES["x_test"]).unlink()
    with pytest.raises(DataNotFoundError, match=f"{partial}.*t10k-images-idx3-ubyte.gz"):
        datasets.fashion_mnist(partial)


def test_corrupt_full_set_names_file(places):
    _, debian, _ = places
    write_set(debian, 3)
    (debian / fm.FILES["y_train"]).write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x09abc"))
    with pytest.raises(KslimFileError, match="train-labels-idx1-ubyte.gz"):
        datasets.fashion_mnist()


# ---------------------------------------------------------------- bundled subset
def test_bundled_subset():
    (x_train, y_train), (x_test, y_test) = datasets.fashion_mnist_small()
    assert x_train.shape == (10000, 28, 28) and x_test.shape == (2000, 28, 28)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.uint8
    assert y_train.shape == (10000,) and y_test.shape == (2000,)
    assert np.bincount(y_train, minlength=10).tolist() == [1000] * 10
    assert np.bincount(y_test, minlength=10).tolist() == [200] * 10
    assert x_train.max() == 255 and x_train.std() > 50  # real images, not blanks
    assert len(datasets.CLASS_NAMES) == 10
    (xs, _), _ = datasets.load("small")
    np.testing.assert_array_equal(xs[:5], x_train[:5])
    with pytest.raises(KslimValueError, match="bogus"):
        datasets.load("bogus")


# ---------------------------------------------------------------- preprocessing and tf.data
def test_preprocess():
    x = np.array([[[0, 255], [51, 102]]], np.uint8)
    p = datasets.preprocess(x)
    assert p.shape == (1, 2, 2, 1) and p.dtype == np.float32
    np.testing.assert_allclose(p[0, :, :, 0], [[0, 1], [0.2, 0.4]], rtol=1e-6)
    with pytest.raises(KslimValueError, match="shape"):
        datasets.preprocess(np.zeros((2, 3), np.uint8))


def test_to_dataset():
    (x, y), _ = datasets.fashion_mnist_small()
    ds = datasets.to_dataset(x[:200], y[:200], batch_size=64)
    batches = list(ds)
    assert [tuple(b[0].shape) for b in batches] == [(64, 28, 28, 1)] * 3 + [(8, 28, 28, 1)]
    xb, yb = batches[0]
    assert xb.dtype.name == "float32" and yb.dtype.name == "int32"
    assert float(np.min(xb)) >= 0.0 and float(np.max(xb)) == 1.0
    np.testing.assert_allclose(xb.numpy()[0, ..., 0], x[0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(yb.numpy(), y[:64])

    raw = next(iter(datasets.to_dataset(x[:10], batch_size=4, normalize=False)))
    assert raw.dtype.name == "uint8" and tuple(raw.shape) == (4, 28, 28)

    def order(seed):
        ds = datasets.to_dataset(x[:100], y[:100], batch_size=100, shuffle=True, seed=seed)
        return next(iter(ds))[1].numpy()

    assert np.array_equal(order(1), order(1)) and not np.array_equal(order(1), y[:100])
    assert sorted(order(1)) == sorted(y[:100])

    dropped = datasets.to_dataset(x[:200], y[:200], batch_size=64, drop_remainder=True)
    assert len(list(dropped)) == 3
    with pytest.raises(KslimValueError, match="samples"):
        datasets.to_dataset(x[:10], y[:9])
    with pytest.raises(KslimValueError, match="batch_size"):
        datasets.to_dataset(x[:10], y[:10], batch_size=0)


def test_load_datasets_limits():
    train_ds, test_ds = datasets.load_datasets(batch_size=50, train_limit=120, test_limit=60)
    assert sum(int(b[0].shape[0]) for b in train_ds) == 120
    assert sum(int(b[0].shape[0]) for b in test_ds) == 60
    assert tuple(next(iter(test_ds))[0].shape) == (50, 28, 28, 1)


def test_atomic_write_keeps_umask_permissions_and_leaves_nothing_on_error(tmp_path):
    import os

    from kslim._io import atomic_path, atomic_write_text

    target = tmp_path / "out.txt"
    atomic_write_text(target, "one")
    umask = os.umask(0)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == (0o666 & ~umask)
    try:
        with atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("killed mid-write")
    except RuntimeError:
        pass
    assert target.read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_to_dataset_augment():
    import keras

    (x, y), _ = datasets.fashion_mnist_small()
    plain = next(iter(datasets.to_dataset(x[:64], y[:64], batch_size=64)))[0].numpy()
    flip = keras.layers.RandomFlip("horizontal", seed=0)
    epochs = [next(iter(ds))[0].numpy()
              for ds in [datasets.to_dataset(x[:64], y[:64], batch_size=64, augment=flip)] * 2]
    for xb in epochs:
        flipped = [bool(np.array_equal(a, b[:, ::-1])) and not np.array_equal(a, b) for a, b in zip(xb, plain)]
        same = [bool(np.array_equal(a, b)) for a, b in zip(xb, plain)]
        assert all(f or s for f, s in zip(flipped, same)) and 0 < sum(flipped) < 64  # each image flipped or not
    assert not np.array_equal(epochs[0], epochs[1])                                     # a fresh draw each pass
    images_only = next(iter(datasets.to_dataset(x[:8], batch_size=8, augment=lambda b: b * 0.0)))
    assert float(np.max(images_only)) == 0.0                                            # a plain callable
    with pytest.raises(KslimValueError, match="augment"):
        datasets.to_dataset(x[:10], y[:10], augment="flip")
