"""Small file helpers shared by every module: atomic writes so nothing half-written is left."""

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from kslim.errors import KslimFileError

# The process umask, read once at import (os.umask can only be read by setting it, which would race
# with files other threads create meanwhile). Files written by atomic_path get 0o666 & ~_UMASK.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    On error the temporary file is removed and ``path`` keeps its previous content.

    >>> with atomic_path("/tmp/_kslim_example.txt") as tmp, open(tmp, "w") as f:
    ...     _ = f.write("hello")
    >>> Path("/tmp/_kslim_example.txt").read_text()
    'hello'
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=suffix if suffix is not None else path.suffix
        )
    except OSError as e:
        raise _write_error(path, e) from None
    os.close(fd)
    try:
        yield tmp
        if os.path.exists(tmp):
            # mkstemp creates 0600 files; give the result the permissions a plain open() would (umask)
            os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and not isinstance(e, KslimFileError) and tmp in str(e):
            raise _write_error(path, e) from e  # name the user's file, not the hidden temporary one
        raise


def _write_error(path, e):
    """A :class:`KslimFileError` naming ``path``; ``.reason`` is the OSError's ``strerror``, ``.cause_errno``
    its errno."""
    err = KslimFileError(f"cannot write {path}: {e.strerror or e}")
    err.reason, err.cause_errno = e.strerror or str(e), e.errno
    return err


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj, indent=2):
    """Write ``obj`` as JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def read_json(path, what="File"):
    """Parse the JSON file ``path``; a missing or malformed file raises ``KslimFileError`` naming it.

    ``what`` describes the file in the message (``"Sensitivity file"``, ``"search history"`` ...).

    >>> _ = atomic_write_json("/tmp/_kslim_example.json", {"a": 1})
    >>> read_json("/tmp/_kslim_example.json")
    {'a': 1}
    """
    path = Path(path)
    if not path.is_file():
        raise KslimFileError(f"{what} {str(path)!r} does not exist.")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as e:
        raise KslimFileError(f"{what} {str(path)!r} is not valid JSON: {e}") from None


def atomic_save_model(model, path):
    """Save a Keras model to ``path`` (``.keras``) atomically."""
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
    return Path(path)


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serialisable")
