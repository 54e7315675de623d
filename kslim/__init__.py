"""kslim: model compression for Keras 3.

Filter pruning that physically removes channels, quantization-aware training and post-training
quantization ending in real int8 TFLite, knowledge distillation, simulated-annealing search with
keras-tuner, and TFLite export with latency profiling.

Importing ``kslim`` is cheap: TensorFlow and Keras are imported when a name that needs them is used.

Example:
    >>> import kslim
    >>> model = kslim.models.mobilenet_v1(width=0.5)
    >>> kslim.flops(model).macs > 0
    True
"""

import importlib

from kslim._version import __version__
from kslim.errors import (
    ConfigError,
    ConversionError,
    DataNotFoundError,
    DeviceError,
    KslimError,
    KslimFileError,
    KslimTypeError,
    KslimValueError,
    ModelError,
    UnsupportedLayerError,
)

# public name -> module that defines it (imported on first use)
_LAZY = {
    # analysis
    "flops": "kslim.analysis",
    "FlopsReport": "kslim.analysis",
    "model_size": "kslim.analysis",
    "summary_diff": "kslim.analysis",
    # graph
    "DependencyGraph": "kslim.graph",
    "build_dependency_graph": "kslim.graph",
    # pruning
    "L1NormFilterPruner": "kslim.prune",
    "L2NormFilterPruner": "kslim.prune",
    "FPGMFilterPruner": "kslim.prune",
    "FilterPruner": "kslim.prune",
    "sensitivity": "kslim.prune",
    "ratios_by_loss": "kslim.prune",
    "plot_sensitivity": "kslim.prune",
    "ratios_by_flops": "kslim.prune",
    "GradualPruning": "kslim.prune",
    "strip_pruning": "kslim.prune",
    # quantization
    "QuantConfig": "kslim.quant",
    "quant_aware": "kslim.quant",
    "quant_post_static": "kslim.quant",
    "quant_post_dynamic": "kslim.quant",
    "quant_debug": "kslim.quant",
    # distillation
    "Distiller": "kslim.distill",
    "soft_label_loss": "kslim.distill",
    "l2_loss": "kslim.distill",
    "fsp_loss": "kslim.distill",
    "Pair": "kslim.distill",
    # lite
    "convert": "kslim.lite",
    "LiteModel": "kslim.lite",
    "profile": "kslim.lite",
    "LocalDevice": "kslim.lite",
    "AdbDevice": "kslim.lite",
    "SshDevice": "kslim.lite",
    "LatencyTable": "kslim.lite",
    "LatencyPredictor": "kslim.lite",
    "ProfileReport": "kslim.lite",
    # search
    "SimulatedAnnealingOracle": "kslim.nas",
    "search": "kslim.nas",
    "auto_prune": "kslim.nas",
    "MobileNetV2Space": "kslim.nas",
    "ResNetSpace": "kslim.nas",
    # pipeline
    "Compressor": "kslim.compressor",
}

_SUBMODULES = (
    "analysis", "graph", "prune", "quant", "distill", "nas", "lite", "compressor", "datasets", "models", "rules",
)

__all__ = [
    "__version__", *sorted(_LAZY), *_SUBMODULES,
    "KslimError", "KslimValueError", "KslimTypeError", "KslimFileError", "DataNotFoundError",
    "ModelError", "UnsupportedLayerError", "ConfigError", "ConversionError", "DeviceError",
]


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"kslim.{name}")
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kslim' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
