"""The public layer-rule registry: one :class:`LayerRule` per layer type, shared by every subsystem.

Pruning (how channels flow and how weights are sliced), FLOPs counting, and quantization-aware
training all read a layer's rule, looked up along its class hierarchy (a ``Conv2D`` subclass is treated
as a ``Conv2D`` everywhere). kslim's own rules for the Keras layers (:mod:`kslim.rules.keras_layers`)
are written against the same registry you extend. See :mod:`kslim.rules.base` and the worked example
in docs/rules.md.

Example:
    >>> import keras
    >>> import kslim
    >>> kslim.rules.get(keras.layers.Conv2D(4, 3)).channels
    'producer'
    >>> class MyConv(keras.layers.Conv2D):   # a subclass inherits the Conv2D rule
    ...     pass
    >>> kslim.rules.get(MyConv(4, 3)).quant_class
    'QuantConv2D'
"""

from kslim.rules.base import (CHANNEL_KINDS, LayerRule, OpaqueRule, get, numel, register, registered, unregister,
                              weight_index)
from kslim.rules import keras_layers  # noqa: E402,F401 - registers the built-in rules
from kslim.rules import keras_hub_layers  # noqa: E402,F401 - keras-hub layers, by class path (no import)

__all__ = ["LayerRule", "OpaqueRule", "CHANNEL_KINDS", "register", "get", "registered", "unregister", "numel",
           "weight_index"]
