"""Exceptions raised by kslim.

Every error kslim raises on bad input derives from :class:`KslimError`, and also from the
matching builtin (``ValueError``, ``TypeError``, ``FileNotFoundError`` ...) so that code that
already catches the builtin keeps working. Messages name the culprit (layer, field, file) and
say what to do.
"""


class KslimError(Exception):
    """Base class of every kslim error."""


class KslimValueError(KslimError, ValueError):
    """An argument has the right type but a wrong value (ratio outside range, bad name, ...)."""


class KslimTypeError(KslimError, TypeError):
    """An argument has the wrong type."""


class KslimFileError(KslimError, OSError):
    """A file is missing, unreadable, or not of the expected kind."""


class DataNotFoundError(KslimFileError, FileNotFoundError):
    """A data set could not be found in any of the places kslim looks."""


class ModelError(KslimValueError):
    """A model cannot be handled (no input shape, unsupported layer, already quantized, ...)."""


class UnsupportedLayerError(ModelError):
    """A layer of a type kslim cannot handle was named explicitly by the user."""


class ConfigError(KslimValueError):
    """A configuration file or dict is invalid. ``path`` is the field path at fault."""

    def __init__(self, message, path=None):
        self.path = path
        if path:
            message = f"{path}: {message}"
        super().__init__(message)


class ConversionError(KslimError, RuntimeError):
    """The TFLite converter failed, or its output is not what was asked for."""


class DeviceError(KslimError, RuntimeError):
    """A profiling device (adb, ssh, benchmark binary) failed or is unreachable."""


__all__ = [
    "KslimError",
    "KslimValueError",
    "KslimTypeError",
    "KslimFileError",
    "DataNotFoundError",
    "ModelError",
    "UnsupportedLayerError",
    "ConfigError",
    "ConversionError",
    "DeviceError",
]
