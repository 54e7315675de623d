"""FLOPs counting rules: the ``macs`` of each layer's :class:`kslim.rules.LayerRule`.

A counting function is ``fn(layer, input_shapes, output_shapes) -> (macs, elementwise)`` where the
shapes are per-sample (batch axis removed) tuples of ints, one per input / output tensor; it returns
``None`` when it cannot count that layer. Rules are looked up along the layer's class MRO, so a
subclass of ``Conv2D`` is counted like ``Conv2D``. :func:`register_rule` is the short form of
``kslim.rules.register(cls, macs=fn)`` for a layer kslim knows nothing else about.

Example:
    >>> import keras
    >>> from kslim.analysis.rules import register_rule
    >>> class Scale(keras.layers.Layer):
    ...     def call(self, x):
    ...         return 2.0 * x
    >>> @register_rule(Scale)
    ... def _scale(layer, inputs, outputs):
    ...     return 0, 0
    >>> find_rule(Scale())(Scale(), [(4,)], [(4,)])
    (0, 0)
"""

import kslim.rules as registry


def register_rule(*layer_classes):
    """Decorator: count layers of ``layer_classes`` (and subclasses) with the decorated function.

    A layer class that already has a rule keeps it, with this counting function instead of its own.
    """

    def deco(fn):
        for cls in layer_classes:
            current = _rule_of_class(cls)
            parent = type(current) if current is not None else registry.LayerRule
            registry.register(cls, rule=type(f"{cls.__name__}CountRule", (parent,), {
                "macs": lambda self, layer, ins, outs, _fn=fn: _fn(layer, ins, outs)}))
        return fn

    return deco


def _rule_of_class(cls):
    for c in cls.__mro__:
        r = registry.registered().get(c)
        if r is not None:
            return r
    return None


def find_rule(layer):
    """The counting function for ``layer`` (``fn(layer, ins, outs)``), or None when nothing counts it."""
    rule = registry.get(layer)
    if isinstance(rule, registry.OpaqueRule) or type(rule).macs is registry.LayerRule.macs:
        return None
    return rule.macs
