"""Fashion-MNIST loading: the full set from disk, or the small subset shipped inside kslim.

Fashion-MNIST (Zalando Research, MIT licence): 60k train / 10k test 28x28 grey images, 10 classes.
"""

import gzip
import os
from pathlib import Path

import numpy as np

from kslim.errors import DataNotFoundError, KslimFileError

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
KERAS_CACHE_DIR = Path("~/.keras/datasets/fashion-mnist")
BUNDLED_FILE = Path(__file__).parent / "data" / "fashion_mnist_small.npz"

_INSTALL_HINT = (
    "Install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or download the four "
    "*-ubyte.gz files of Fashion-MNIST into a folder and pass it as `path=` or set $KSLIM_DATA to it. "
    "The small subset bundled with kslim needs nothing: `kslim.datasets.fashion_mnist_small()`."
)


def candidate_dirs(path=None):
    """The folders searched for the idx gz files, in order."""
    dirs = []
    if path is not None:
        dirs.append(Path(path).expanduser())
    env = os.environ.get("KSLIM_DATA")
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(DEBIAN_DIR)
    dirs.append(KERAS_CACHE_DIR.expanduser())
    return dirs


def _has_all(d):
    return all((d / name).is_file() for name in FILES.values())


def read_idx(path):
    """Read one idx file (gzip-compressed or plain) into a numpy array.

    The idx format: 2 zero bytes, a dtype code, the number of dimensions, then big-endian int32
    sizes and the data.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise KslimFileError(f"Cannot read idx file {path}: {e}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise KslimFileError(f"{path} is not an idx file (bad magic number).")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    code, ndim = data[2], data[3]
    if code not in dtypes:
        raise KslimFileError(f"{path}: unknown idx data type code 0x{code:02x}.")
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(data[4:header], dtype=">i4"))
    dtype = np.dtype(dtypes[code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise KslimFileError(
            f"{path}: truncated or corrupt idx file (expected {expected} data bytes for shape {shape}, "
            f"found {len(data) - header})."
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def fashion_mnist(path=None):
    """Load the full Fashion-MNIST set as numpy arrays, like ``keras.datasets.fashion_mnist.load_data``.

    Looks, in order, in ``path``, ``$KSLIM_DATA``, Debian's ``dataset-fashion-mnist``
    (``/usr/share/datasets/fashion-mnist``) and Keras' cache (``~/.keras/datasets/fashion-mnist``).

    Returns:
        ``(x_train, y_train), (x_test, y_test)``: uint8 images of shape (N, 28, 28) and uint8 labels.

    Raises:
        DataNotFoundError: if no folder holds the four idx gz files; the message says how to get them.

    Example:
        >>> (x_train, y_train), (x_test, y_test) = fashion_mnist()  # doctest: +SKIP
        >>> x_train.shape  # doctest: +SKIP
        (60000, 28, 28)
    """
    tried = candidate_dirs(path)
    if path is not None and not _has_all(tried[0]):
        missing = [n for n in FILES.values() if not (tried[0] / n).is_file()]
        raise DataNotFoundError(
            f"Fashion-MNIST not found in path={str(path)!r}: missing {', '.join(missing)}. {_INSTALL_HINT}"
        )
    for d in tried:
        if _has_all(d):
            arrays = {k: read_idx(d / name) for k, name in FILES.items()}
            return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])
    raise DataNotFoundError(
        "Fashion-MNIST not found; looked in: " + ", ".join(str(d) for d in tried) + ". " + _INSTALL_HINT
    )


def fashion_mnist_small():
    """The stratified Fashion-MNIST subset bundled with kslim (10,000 train / 2,000 test).

    Same format as :func:`fashion_mnist`; needs no download and no system package.

    Example:
        >>> (x_train, y_train), (x_test, y_test) = fashion_mnist_small()
        >>> x_train.shape, x_test.shape
        ((10000, 28, 28), (2000, 28, 28))
    """
    if not BUNDLED_FILE.is_file():
        raise DataNotFoundError(f"The bundled subset {BUNDLED_FILE} is missing: reinstall kslim.")
    with np.load(BUNDLED_FILE, allow_pickle=False) as z:
        return (z["x_train"], z["y_train"]), (z["x_test"], z["y_test"])


def load(source="small", path=None):
    """Load Fashion-MNIST by name: ``"small"`` (bundled subset) or ``"full"`` (see :func:`fashion_mnist`)."""
    if source == "small":
        return fashion_mnist_small()
    if source == "full":
        return fashion_mnist(path)
    from kslim.errors import KslimValueError

    raise KslimValueError(f"Unknown Fashion-MNIST source {source!r}: use 'small' (bundled) or 'full'.")
