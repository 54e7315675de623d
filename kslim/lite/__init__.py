"""TFLite export (``convert``, ``LiteModel``), latency profiling and latency tables."""

from kslim.lite.converter import QUANTIZE_MODES, convert, parity
from kslim.lite.model import LiteModel

__all__ = ["QUANTIZE_MODES", "convert", "parity", "LiteModel"]
