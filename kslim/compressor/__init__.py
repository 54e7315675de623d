"""The compression pipeline: one config file drives prune -> distill -> quantize -> export -> profile.

The steps a config can name are the registry of :mod:`kslim.compressor.strategies`
(:func:`register_strategy` adds one of your own); ``STRATEGIES`` is their names, read from the
registry each time it is accessed.
"""

from kslim.compressor.compressor import CompressionResult, Compressor
from kslim.compressor.config import load_config, quick_config, validate_config
from kslim.compressor.run_dir import RunDir
from kslim.compressor.strategies import (
    Strategy, get_strategy, params_schema, register_strategy, registered_strategies, unregister_strategy,
)

__all__ = ["Compressor", "CompressionResult", "STRATEGIES", "load_config", "quick_config", "validate_config", "RunDir",
           "Strategy", "get_strategy", "params_schema", "register_strategy", "registered_strategies", "unregister_strategy"]


def __getattr__(name):
    if name == "STRATEGIES":  # derived: the names of the registered strategies, in order
        from kslim.compressor.config import strategy_names

        return strategy_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
