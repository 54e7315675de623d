"""What the dependency graph asks of a layer, answered from the rule registry (:mod:`kslim.rules`).

Everything not known to a rule is opaque: the groups it touches become unprunable with the reason
recorded.
"""

import numbers

import keras
import numpy as np

import kslim.rules as registry


def check(op):
    """``(kind, reason)``: the graph handler kind for ``op``, or ``None`` with the reason why not."""
    if isinstance(op, keras.Model):
        return None, "subclassed model without a functional graph"
    if isinstance(op, keras.layers.Layer) and getattr(op, "quantization_mode", None):
        return None, f"already quantized ({op.quantization_mode})"
    rule = registry.get(op)
    kind, reason = rule.channel_kind(op)
    if kind is None and not isinstance(op, keras.layers.Layer) and isinstance(rule, registry.OpaqueRule):
        reason = f"keras.ops.{type(op).__name__} is not known to keep channels apart"
    return kind, reason


def handler_for(op):
    return check(op)[0]


def is_known(op):
    """True if the graph handles ``op`` as a unit (so a composite layer of that type is not expanded)."""
    return not isinstance(registry.get(op), registry.OpaqueRule)


def is_exact(op):
    """False when pruning through ``op`` is only approximate (LayerNormalization statistics)."""
    return registry.get(op).exact


def is_identity(reason):
    """True for the opaque-composite reason of a layer whose call() is an identity at inference."""
    from kslim.graph.keras_graph import IDENTITY_AT_INFERENCE

    return reason == IDENTITY_AT_INFERENCE


def blocked_reason(op, name, opaque=None):
    reason = opaque or check(op)[1] or "its channel mapping is not well defined"
    return f"consumed by {name!r} ({type(op).__name__}): {reason}"


def producer_spec(op):
    """How a producer's weights index channels (see :meth:`kslim.rules.LayerRule.producer_spec`)."""
    return registry.get(op).producer_spec(op)


def merge_constants_ok(node, channels):
    """Non-tensor arguments of an element-wise op must broadcast over channels (scalars, size-1 last axis)."""
    from kslim.graph.keras_graph import node_constants

    for arg in node_constants(node):
        if arg is None or isinstance(arg, (numbers.Number, str, bool)):
            continue
        shape = getattr(arg, "shape", None)
        if shape is None:
            try:
                shape = np.shape(arg)
            except Exception:  # noqa: BLE001
                return False
        if len(shape) and shape[-1] not in (1, None) and int(np.prod(shape)) != 1:
            return False
    return True


def op_axis(node):
    axis = getattr(node.operation, "axis", None)
    return axis if isinstance(axis, int) else None
