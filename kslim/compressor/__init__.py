"""The compression pipeline: one config file drives prune -> distill -> quantize -> export -> profile."""

from kslim.compressor.compressor import CompressionResult, Compressor
from kslim.compressor.config import STRATEGIES, load_config, quick_config, validate_config
from kslim.compressor.run_dir import RunDir

__all__ = ["Compressor", "CompressionResult", "STRATEGIES", "load_config", "quick_config", "validate_config", "RunDir"]
