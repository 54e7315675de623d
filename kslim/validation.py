"""Checks made before any work starts (models, output paths, ratios) and renamed arguments.

Every check raises a :class:`~kslim.errors.KslimError` whose message starts with the option, field
or function it is about (``-o /ro/x.keras: ...``, ``prune(): ratio of 'conv1': ...``), says what is
wrong and names the user's path, never a temporary file. None of them imports TensorFlow (except
:func:`check_model`, which is only called once Keras is needed anyway).

:func:`renamed` and :func:`warn_renamed` keep an old argument or config-key name working for one
release with a ``DeprecationWarning`` (the vocabulary is listed in the README, "Names").
"""

import functools
import math
import numbers
import os
import tempfile
import warnings
from pathlib import Path

from kslim.errors import KslimFileError, KslimTypeError, KslimValueError

__all__ = ["check_model", "check_output_path", "check_output_dir", "check_ratio", "check_ratios",
           "renamed", "warn_renamed", "LegacyPair", "REMOVED_IN", "api_constant"]

#: the release that drops the old names kept by :func:`renamed` / :func:`warn_renamed`
REMOVED_IN = "kslim 0.3"


def warn_renamed(old, new, where, stacklevel=3):
    """Warn (``DeprecationWarning``) that ``old`` is now called ``new`` in ``where``."""
    warnings.warn(f"{where}: {old!s} is deprecated, use {new!s} (the old name goes in {REMOVED_IN}).",
                  DeprecationWarning, stacklevel=stacklevel)


def renamed(**old_to_new):
    """Decorator: keyword arguments given by an old name are passed on under the new one, with a warning.

    >>> @renamed(tol="tolerance")
    ... def solve(x, tolerance=1e-3):
    ...     return tolerance
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as w:
    ...     warnings.simplefilter("always")
    ...     solve(1, tol=0.5), str(w[0].message)
    (0.5, 'solve(): tol= is deprecated, use tolerance= (the old name goes in kslim 0.3).')
    """
    def decorate(fn):
        import inspect

        where = f"{fn.__qualname__.replace('.__init__', '')}()"
        positional = [name for name, p in inspect.signature(fn).parameters.items()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs or new in positional[:len(args)]:
                        raise KslimTypeError(f"{where}: give {new}= only ({old}= is its old name).")
                    warn_renamed(f"{old}=", f"{new}=", where)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper

    return decorate


class LegacyPair:
    """Mixin of a result dataclass that replaced a kslim 0.1 ``(thing, info)`` tuple: ``a, b = result``
    still gives that pair (``_pair()``) for one release, with a DeprecationWarning."""

    def _pair(self):
        raise NotImplementedError

    def __iter__(self):
        import dataclasses

        names = [f.name for f in dataclasses.fields(self)]
        warn_renamed(f"unpacking a {type(self).__name__} into ({names[0]}, {names[1] if len(names) == 2 else 'info'})",
                     f"its attributes (.{', .'.join(names[:3])} ...)", type(self).__name__)
        return iter(self._pair())


def check_model(model, where):
    """Raise :class:`KslimTypeError` unless ``model`` is a ``keras.Model``; ``where`` names the caller.

    >>> check_model("model.keras", "flops()")
    Traceback (most recent call last):
    ...
    kslim.errors.KslimTypeError: flops() needs a keras.Model, got str (load a file with keras.models.load_model).
    """
    import keras

    if not isinstance(model, keras.Model):
        hint = " (load a file with keras.models.load_model)" if isinstance(model, (str, os.PathLike)) else ""
        raise KslimTypeError(f"{where} needs a keras.Model, got {type(model).__name__}{hint}.")
    return model


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


def check_ratio(value, what="ratio", low=0.0, high=1.0, low_open=False, high_open=True, meaning=None):
    """Raise unless ``low <= value < high`` (bounds open or closed as asked). Returns ``float(value)``.

    A value that is not a number (a bool, ``"half"``) raises :class:`KslimTypeError`; numeric strings
    (from a command line) are accepted. ``meaning`` is added to the message (``"the fraction of
    channels removed"``).

    >>> check_ratio(0.5, "--ratio")
    0.5
    >>> check_ratio(1.5, "--ratio")
    Traceback (most recent call last):
    ...
    kslim.errors.KslimValueError: --ratio: 1.5 is outside [0, 1).
    """
    try:
        if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
            raise TypeError
        v = float(value)
    except (TypeError, ValueError):
        raise KslimTypeError(f"{what}: {value!r} is not a number.") from None
    too_low = v <= low if low_open else v < low
    too_high = v >= high if high_open else v > high
    if too_low or too_high or math.isnan(v):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise KslimValueError(f"{what}: {v} is outside {interval}" + (f" ({meaning})." if meaning else "."))
    return v


def check_ratios(values, what="ratios", **bounds):
    """:func:`check_ratio` on each value of a list or a ``{name: value}`` dict (named in the message).

    An empty list or dict is refused: there is nothing to do.

    >>> check_ratios({"conv1": 0.5, "conv2": 1.0}, "ratios")
    Traceback (most recent call last):
    ...
    kslim.errors.KslimValueError: ratios 'conv2': 1.0 is outside [0, 1).
    """
    if isinstance(values, dict):
        if not values:
            raise KslimValueError(f"{what}: the dict is empty; name at least one layer or group.")
        return {k: check_ratio(v, f"{what} {k!r}", **bounds) for k, v in values.items()}
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise KslimTypeError(f"{what}: {values!r} is not a list of numbers.")
    values = list(values)
    if not values:
        raise KslimValueError(f"{what}: the list is empty; give at least one ratio.")
    return [check_ratio(v, what, **bounds) for v in values]


def check_registry_name(name, what):
    """Raise :class:`KslimValueError` unless ``name`` is a lower-case identifier (a name a registry of
    ``what`` -- importances, scopes -- may hold, and a YAML config or command line may spell).

    >>> check_registry_name("Wide one", "scope")
    Traceback (most recent call last):
    ...
    kslim.errors.KslimValueError: scope name must be a lower-case identifier, got 'Wide one'.
    """
    if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
        raise KslimValueError(f"{what} name must be a lower-case identifier, got {name!r}.")


@functools.lru_cache(maxsize=None)
def api_constant(module, name):
    """The literal module-level constant ``name`` of the kslim module ``module``, read from its source.

    The config schema and the CLI's choices are built before TensorFlow is imported, and
    :mod:`kslim.quant` imports it; so they take the API's own constants (``kslim.quant.equalize.RELU6_MODES``,
    ``kslim.quant.calibration.ALGOS`` ...) from the source, not from a copy
    (``tests/test_compressor_registry.py`` checks them against the imported values).
    """
    import ast

    import kslim

    rel = Path(*module.split(".")[1:])
    root = Path(kslim.__file__).parent
    path = next(p for p in (root / rel / "__init__.py", (root / rel).with_suffix(".py")) if p.is_file())
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        targets = (node.targets if isinstance(node, ast.Assign) else
                   [node.target] if isinstance(node, ast.AnnAssign) else [])
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return ast.literal_eval(node.value)
    raise LookupError(f"{module} has no literal constant {name}")
