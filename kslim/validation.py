"""Checks made before any work starts (output paths, ratios), with one-line kslim errors.

Every check raises a :class:`~kslim.errors.KslimError` whose message starts with the option or field
it is about (``-o /ro/x.keras: ...``), says what is wrong and names the user's path, never a
temporary file. None of them imports TensorFlow.
"""

import os
import tempfile
from pathlib import Path

from kslim.errors import KslimFileError, KslimValueError

__all__ = ["check_output_path", "check_output_dir", "check_ratio", "check_ratios"]


def _nearest_existing(path):
    p = path
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    return p


def _probe(folder, what, path):
    """Create and remove a file in ``folder`` (a real write: permission bits mean nothing to root and
    a read-only file system is only found by trying)."""
    if not folder.is_dir():
        raise KslimFileError(f"{what} {path}: {folder} is a file, not a folder.")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".kslim-write-check-")
    except OSError as e:
        raise KslimFileError(f"{what} {path}: cannot write into {folder} ({e.strerror or e}).") from None
    os.close(fd)
    os.unlink(probe)


def check_output_path(path, what="output"):
    """Raise unless the file ``path`` can be written (its folder is created if missing).

    ``what`` names the option in the message (``"-o"``, ``"--json"`` ...). Returns ``Path(path)``.

    >>> check_output_path("/tmp/kslim_doc/out.keras", "-o").name
    'out.keras'
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise KslimFileError(f"{what} {path}: is a folder; give a file name.")
    _probe(_nearest_existing(p.parent), what, path)
    return p


def check_output_dir(path, what="output folder"):
    """Raise unless the folder ``path`` exists and is writable, or can be created. Returns ``Path(path)``."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise KslimFileError(f"{what} {path}: is a file, not a folder.")
    _probe(_nearest_existing(p), what, path)
    return p


def check_ratio(value, what="ratio", low=0.0, high=1.0, low_open=False, high_open=True):
    """Raise unless ``low <= value < high`` (bounds open or closed as asked). Returns ``float(value)``.

    >>> check_ratio(0.5, "--ratio")
    0.5
    >>> check_ratio(1.5, "--ratio")
    Traceback (most recent call last):
    ...
    kslim.errors.KslimValueError: --ratio: 1.5 is outside [0, 1).
    """
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise KslimValueError(f"{what}: {value!r} is not a number.") from None
    too_low = v <= low if low_open else v < low
    too_high = v >= high if high_open else v > high
    if too_low or too_high or v != v:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise KslimValueError(f"{what}: {v} is outside {interval}.")
    return v


def check_ratios(values, what="ratios", **bounds):
    """:func:`check_ratio` on each value of a list or a ``{name: value}`` dict (named in the message)."""
    if isinstance(values, dict):
        return {k: check_ratio(v, f"{what} {k}", **bounds) for k, v in values.items()}
    return [check_ratio(v, what, **bounds) for v in values]
