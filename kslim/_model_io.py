"""Load a Keras model file given on the command line (or by a user), with errors that say what is wrong."""

import importlib
import zipfile
from pathlib import Path

from kslim.errors import KslimFileError, ModelError

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

# kslim areas that register custom layers (``register_keras_serializable``); imported before loading
# so that pruned / quantized / distilled models saved by kslim load by name.
_AREAS_WITH_LAYERS = ("kslim.prune", "kslim.quant", "kslim.distill", "kslim.nas", "kslim.compressor")


def _import_kslim_layers():
    for name in _AREAS_WITH_LAYERS:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise


def _uses_kslim_layers(p):
    """Whether a .keras archive's config names classes registered by kslim (``kslim>Name``)."""
    if not zipfile.is_zipfile(p):
        return True  # legacy .h5: cannot tell cheaply
    try:
        with zipfile.ZipFile(p) as z:
            return b'"kslim>' in z.read("config.json")
    except (KeyError, zipfile.BadZipFile, OSError):
        return False


def load_keras_model(path, compile=False, safe_mode=True, custom_objects=None):
    """Load a ``.keras`` (or legacy ``.h5``) model, raising kslim errors that name the file.

    Args:
        path: the model file.
        compile: restore the optimizer and loss too (off by default: analysis and conversion need
            only the graph and the weights).
        safe_mode: Keras' safe mode (no arbitrary code from ``Lambda`` layers).
        custom_objects: extra classes for custom layers that are not registered serializable.

    Raises:
        KslimFileError: the file does not exist, is a folder, or is not a Keras archive.
        ModelError: Keras could not rebuild the model (unknown custom layer, ...).

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> m.save("/tmp/_kslim_doc.keras")
        >>> load_keras_model("/tmp/_kslim_doc.keras").output_shape
        (None, 2)
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise KslimFileError(f"Model file {str(path)!r} does not exist.")
    if p.is_dir():
        raise KslimFileError(
            f"{str(path)!r} is a folder, not a Keras model file: kslim reads .keras archives "
            "(save with model.save('model.keras'))."
        )
    with open(p, "rb") as f:
        head = f.read(8)
    if p.suffix == ".h5" or head == _HDF5_SIGNATURE:
        if head != _HDF5_SIGNATURE:
            raise KslimFileError(f"{str(path)!r} is not an HDF5 (.h5) Keras model: the file is damaged or "
                                 "of another kind.")
    elif not zipfile.is_zipfile(p):
        kind = " (a TFLite flatbuffer: load it with kslim.lite.LiteModel.load)" if head[4:8] == b"TFL3" else ""
        raise KslimFileError(
            f"{str(path)!r} is not a Keras model archive{kind}: expected a .keras file written by "
            "model.save('model.keras')."
        )
    elif p.suffix != ".keras":
        raise KslimFileError(f"{str(path)!r} is a zip file but not a .keras model: rename it to *.keras "
                             "if it was written by model.save().")
    if _uses_kslim_layers(p):
        _import_kslim_layers()
    import keras

    try:
        return keras.models.load_model(p, compile=compile, safe_mode=safe_mode, custom_objects=custom_objects)
    except Exception as e:  # noqa: BLE001 - Keras raises ValueError/TypeError/KeyError/OSError...
        raise ModelError(f"Cannot load Keras model {str(path)!r}: {type(e).__name__}: {e}") from e
