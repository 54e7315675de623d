"""Which Keras layers / ops the dependency graph understands, and how their weights index channels.

Everything not listed here is treated as opaque: the groups it touches become unprunable with the
reason recorded.
"""

import numbers

import keras
import numpy as np
from keras import layers as L

_PRODUCERS = (L.Conv1D, L.Conv2D, L.Conv3D, L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose,
              L.SeparableConv1D, L.SeparableConv2D, L.Dense)
_DEPTHWISE = (L.DepthwiseConv1D, L.DepthwiseConv2D)
_IDENTITY = (L.ReLU, L.LeakyReLU, L.ELU, L.Dropout, L.GaussianNoise, L.GaussianDropout, L.AlphaDropout,
             L.ActivityRegularization, L.Identity, L.Activation, L.Rescaling, L.SpatialDropout1D,
             L.SpatialDropout2D, L.SpatialDropout3D)
_SPATIAL = (L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.AveragePooling1D, L.AveragePooling2D,
            L.AveragePooling3D, L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
            L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D, L.ZeroPadding1D, L.ZeroPadding2D,
            L.ZeroPadding3D, L.Cropping1D, L.Cropping2D, L.Cropping3D, L.UpSampling1D, L.UpSampling2D,
            L.UpSampling3D)
_MERGE = (L.Add, L.Subtract, L.Maximum, L.Minimum, L.Average, L.Multiply)

# element-wise keras.ops (created by e.g. ``x + 3.0`` or ``keras.ops.relu(x)`` in a functional model)
_ELEMENTWISE_OPS = {
    "Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum", "Power", "Negative", "Abs",
    "Absolute", "Square", "Sqrt", "Exp", "Log", "Clip", "Relu", "Relu6", "Sigmoid", "HardSigmoid", "Silu",
    "HardSilu", "Swish", "HardSwish", "Gelu", "Tanh", "Elu", "Selu", "LeakyRelu", "Softplus", "Softsign",
    "Mish", "Celu", "Glu", "Cast",
}
_CHANNEL_MIXING_ACTIVATIONS = {"softmax", "log_softmax", "glu"}


def _channels_last(op):
    return getattr(op, "data_format", "channels_last") in (None, "channels_last")


def check(op):
    """``(handler, reason)``: the builder handler name for ``op``, or ``None`` with the reason why not."""
    kind = type(op).__name__
    if isinstance(op, L.InputLayer):
        return "input", ""
    if isinstance(op, keras.Model):
        return None, "subclassed model without a functional graph"
    if isinstance(op, L.Layer) and getattr(op, "quantization_mode", None):
        return None, f"already quantized ({op.quantization_mode})"
    if isinstance(op, _PRODUCERS + _DEPTHWISE + _SPATIAL + (L.Flatten,)) and not _channels_last(op):
        return None, "data_format='channels_first'"
    if isinstance(op, _PRODUCERS):
        if getattr(op, "groups", 1) != 1:
            return None, f"grouped convolution (groups={op.groups})"
        if getattr(op, "lora_enabled", False):
            return None, "LoRA-enabled layer"
        return "producer", ""
    if isinstance(op, _DEPTHWISE):
        return "depthwise", ""
    if isinstance(op, L.BatchNormalization):
        return "batchnorm", ""
    if isinstance(op, L.PReLU):
        return "prelu", ""
    if isinstance(op, L.Softmax):
        return None, "softmax mixes channels"
    if isinstance(op, L.Activation):
        try:
            act = keras.activations.serialize(op.activation)
        except Exception:  # noqa: BLE001 - unserialisable custom function
            act = None
        act = act if isinstance(act, str) else (act.get("config") if isinstance(act, dict) else None)
        if isinstance(act, str) and act in _CHANNEL_MIXING_ACTIVATIONS:
            return None, f"activation {act!r} mixes channels"
        if not isinstance(act, str):
            return None, "custom activation"
        return "identity", ""
    if isinstance(op, (L.Dropout,)) and not isinstance(op, (L.SpatialDropout1D, L.SpatialDropout2D,
                                                             L.SpatialDropout3D)):
        ns = getattr(op, "noise_shape", None)
        if ns is not None and ns[-1] not in (None, 1):
            return None, f"noise_shape {tuple(ns)} fixes the channel count"
        return "identity", ""
    if isinstance(op, L.Rescaling):
        if np.size(op.scale) != 1 or np.size(op.offset) != 1:
            return None, "per-channel scale/offset"
        return "identity", ""
    if isinstance(op, _IDENTITY):
        if not _channels_last(op):
            return None, "data_format='channels_first'"
        return "identity", ""
    if isinstance(op, _SPATIAL):
        return "spatial", ""
    if isinstance(op, _MERGE):
        return "merge", ""
    if isinstance(op, L.Concatenate):
        return "concat", ""
    if isinstance(op, L.Flatten):
        return "flatten", ""
    if isinstance(op, L.Reshape):
        return "reshape", ""
    if isinstance(op, L.Permute):
        return "permute", ""
    if not isinstance(op, L.Layer):  # a keras.ops operation
        if kind in _ELEMENTWISE_OPS:
            return "merge", ""
        if kind == "Concatenate":
            return "concat", ""
        return None, f"keras.ops.{kind} is not known to keep channels apart"
    return None, f"layer type {kind} is not supported by the pruner"


def handler_for(op):
    return check(op)[0]


def is_known(op):
    """True if the graph handles ``op`` as a unit (so a composite layer of that type is not expanded)."""
    return check(op)[0] is not None


def blocked_reason(op, name, opaque=None):
    reason = opaque or check(op)[1] or "its channel mapping is not well defined"
    return f"consumed by {name!r} ({type(op).__name__}): {reason}"


def producer_spec(op):
    """How a producer's weights index channels.

    Returns ``{"inputs": [(weight_index, axis, role, extra_multiplier)], "outputs": [(weight_index,
    axis, role)]}`` or ``None``.
    """
    from kslim.graph.builder import _index_of

    out = []
    if isinstance(op, (L.SeparableConv1D, L.SeparableConv2D)):
        dk, pk = _index_of(op, op.depthwise_kernel), _index_of(op, op.pointwise_kernel)
        inputs = [(dk, -2, "input", 1), (pk, -2, "input", int(op.depth_multiplier))]
        out.append((pk, -1, "filter"))
    elif isinstance(op, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)):
        k = _index_of(op, op.kernel)
        inputs = [(k, -1, "input", 1)]
        out.append((k, -2, "filter"))
    elif isinstance(op, _PRODUCERS):
        k = _index_of(op, op.kernel)
        inputs = [(k, -2 if not isinstance(op, L.Dense) else 0, "input", 1)]
        out.append((k, -1, "filter"))
    else:
        return None
    if getattr(op, "bias", None) is not None:
        out.append((_index_of(op, op.bias), 0, "bias"))
    return {"inputs": inputs, "outputs": out}


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
