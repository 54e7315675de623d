"""TFLite export (``convert``, ``LiteModel``), latency profiling on devices, latency tables.

``float_ops`` / ``LiteModel.float_ops`` is the one list of the ops of a converted model that compute
in float; ``model_inputs`` describes what a Keras model takes (one array, a list, a dict).

Imports are lazy: ``kslim.lite.runner`` (the standalone on-device runner) and the device classes
pull in nothing heavy; TensorFlow is imported only by :func:`convert`.
"""

import importlib

_LAZY = {
    "QUANTIZE_MODES": "kslim.lite.converter",
    "convert": "kslim.lite.converter",
    "parity": "kslim.lite.converter",
    "LiteModel": "kslim.lite.model",
    "float_ops": "kslim.lite.model",
    "has_int8_kernels": "kslim.lite.model",
    "model_inputs": "kslim.lite.inputs",
    "profile": "kslim.lite.profiling",
    "measure_latency": "kslim.lite.profiling",
    "measure_latencies": "kslim.lite.profiling",
    "ProfileReport": "kslim.lite.profiling",
    "plot_by_op_type": "kslim.lite.profiling",
    "Device": "kslim.lite.devices",
    "LocalDevice": "kslim.lite.devices",
    "AdbDevice": "kslim.lite.devices",
    "SshDevice": "kslim.lite.devices",
    "LatencyTable": "kslim.lite.latency",
    "LatencyPredictor": "kslim.lite.latency",
    "LatencyPrediction": "kslim.lite.latency",
    "op_configs": "kslim.lite.latency",
    "parse_benchmark_output": "kslim.lite.benchmark_output",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kslim.lite' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
