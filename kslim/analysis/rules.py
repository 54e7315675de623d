"""Per-layer counting rules used by :func:`kslim.analysis.flops`.

A rule is ``rule(layer, input_shapes, output_shapes) -> (macs, elementwise)`` where the shapes are
per-sample (batch axis removed) tuples of ints, one per input / output tensor; it returns ``None``
when it cannot count that layer (a wrapper around an unknown layer). Rules are looked up
along the layer's class MRO, so a subclass of ``Conv2D`` (a pruning or quantization wrapper built
by subclassing) is counted like ``Conv2D``. Other areas add rules for their own layers with
:func:`register_rule`.

Example:
    >>> import keras
    >>> from kslim.analysis.rules import register_rule
    >>> class Scale(keras.layers.Layer):
    ...     def call(self, x):
    ...         return 2.0 * x
    >>> @register_rule(Scale)
    ... def _scale(layer, inputs, outputs):
    ...     return 0, _numel(outputs[0])
"""

import math

import keras
from keras import layers as L

_RULES = {}

# Layers that move or copy data (or do nothing at inference): 0 MACs, 0 elementwise ops.
ZERO_COST = (
    L.InputLayer, L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D,
    L.GaussianNoise, L.GaussianDropout, L.AlphaDropout, L.ActivityRegularization, L.Identity,
    L.Flatten, L.Reshape, L.Permute, L.RepeatVector, L.Concatenate, L.Embedding, L.Masking,
    L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D, L.Cropping1D, L.Cropping2D, L.Cropping3D,
    L.UpSampling1D, L.UpSampling2D, L.UpSampling3D,
)


def register_rule(*layer_classes):
    """Decorator: use the decorated function to count layers of ``layer_classes`` (and subclasses)."""

    def deco(fn):
        for cls in layer_classes:
            _RULES[cls] = fn
        return fn

    return deco


def find_rule(layer):
    """The rule for ``layer`` (nearest class in its MRO), or None."""
    for cls in type(layer).__mro__:
        if cls in _RULES:
            return _RULES[cls]
    return None


def _numel(shape):
    return int(math.prod(d for d in shape if d is not None))


def _channels_last(layer):
    return getattr(layer, "data_format", "channels_last") != "channels_first"


def _split(shape, layer):
    """(channels, spatial dims) of a per-sample conv shape."""
    if _channels_last(layer):
        return shape[-1], shape[:-1]
    return shape[0], shape[1:]


def _extras(layer, out_shape):
    """Elementwise ops of a linear layer besides its MACs: bias add and fused activation."""
    n = 0
    if getattr(layer, "use_bias", False) or getattr(layer, "bias_axes", None):
        n += _numel(out_shape)
    act = getattr(layer, "activation", None)
    if act is not None and act is not keras.activations.linear:
        n += _numel(out_shape)
    return n


@register_rule(*ZERO_COST)
def _zero(layer, inputs, outputs):
    return 0, 0


@register_rule(L.Dense)
def _dense(layer, inputs, outputs):
    return _numel(inputs[0]) * int(layer.units), _extras(layer, outputs[0])


@register_rule(L.EinsumDense)
def _einsum_dense(layer, inputs, outputs):
    # MACs = output elements x product of the contracted axes (kernel axes absent from the output).
    lhs, out_spec = layer.equation.split("->")
    kernel_spec = lhs.split(",")[1].replace(".", "")
    sizes = dict(zip(kernel_spec, layer.kernel.shape))
    contracted = math.prod(int(sizes[c]) for c in kernel_spec if c not in out_spec)
    return _numel(outputs[0]) * contracted, _extras(layer, outputs[0])


@register_rule(L.Conv1D, L.Conv2D, L.Conv3D)
def _conv(layer, inputs, outputs):
    cin, _ = _split(inputs[0], layer)
    _, out_spatial = _split(outputs[0], layer)
    groups = int(getattr(layer, "groups", 1) or 1)
    macs = math.prod(layer.kernel_size) * (int(cin) // groups) * int(layer.filters) * _numel(out_spatial)
    return macs, _extras(layer, outputs[0])


@register_rule(L.DepthwiseConv1D, L.DepthwiseConv2D)
def _depthwise(layer, inputs, outputs):
    cin, _ = _split(inputs[0], layer)
    _, out_spatial = _split(outputs[0], layer)
    macs = math.prod(layer.kernel_size) * int(cin) * int(layer.depth_multiplier) * _numel(out_spatial)
    return macs, _extras(layer, outputs[0])


@register_rule(L.SeparableConv1D, L.SeparableConv2D)
def _separable(layer, inputs, outputs):
    cin, _ = _split(inputs[0], layer)
    _, out_spatial = _split(outputs[0], layer)
    mid = int(cin) * int(layer.depth_multiplier)
    depthwise = math.prod(layer.kernel_size) * mid * _numel(out_spatial)
    pointwise = mid * int(layer.filters) * _numel(out_spatial)
    return depthwise + pointwise, _extras(layer, outputs[0])


@register_rule(L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
def _conv_transpose(layer, inputs, outputs):
    # Every input pixel is multiplied by the whole kernel and scattered into the output.
    cin, in_spatial = _split(inputs[0], layer)
    macs = math.prod(layer.kernel_size) * int(cin) * int(layer.filters) * _numel(in_spatial)
    return macs, _extras(layer, outputs[0])


def _recurrent(gates):
    def rule(layer, inputs, outputs):
        steps, features = inputs[0][0], inputs[0][-1]
        units = int(layer.units if hasattr(layer, "units") else layer.cell.units)
        return int(steps) * gates * (int(features) + units) * units, 0

    return rule


register_rule(L.SimpleRNN)(_recurrent(1))
register_rule(L.GRU)(_recurrent(3))
register_rule(L.LSTM)(_recurrent(4))


@register_rule(L.BatchNormalization, L.LayerNormalization, L.GroupNormalization, L.UnitNormalization,
               L.Rescaling, L.Normalization)
def _affine(layer, inputs, outputs):
    # At inference a normalisation is a scale and a shift per element.
    return 0, 2 * _numel(outputs[0])


@register_rule(L.ReLU, L.LeakyReLU, L.PReLU, L.ELU, L.Softmax, L.Activation)
def _activation(layer, inputs, outputs):
    return 0, _numel(outputs[0])


@register_rule(L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)
def _merge(layer, inputs, outputs):
    return 0, (len(inputs) - 1) * _numel(outputs[0])


@register_rule(L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D,
               L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D)
def _pooling(layer, inputs, outputs):
    return 0, math.prod(layer.pool_size) * _numel(outputs[0])


@register_rule(L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
               L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D)
def _global_pooling(layer, inputs, outputs):
    return 0, _numel(inputs[0])


@register_rule(L.TimeDistributed)
def _time_distributed(layer, inputs, outputs):
    inner = find_rule(layer.layer)
    if inner is None:
        return None
    steps = int(inputs[0][0])
    macs, elementwise = inner(layer.layer, [s[1:] for s in inputs], [s[1:] for s in outputs])
    return steps * macs, steps * elementwise


@register_rule(L.Bidirectional)
def _bidirectional(layer, inputs, outputs):
    fwd, bwd = find_rule(layer.forward_layer), find_rule(layer.backward_layer)
    if fwd is None or bwd is None:
        return None
    a = fwd(layer.forward_layer, inputs, outputs)
    b = bwd(layer.backward_layer, inputs, outputs)
    return a[0] + b[0], a[1] + b[1]


@register_rule(L.Wrapper)
def _wrapper(layer, inputs, outputs):
    """Any other wrapper (e.g. a quantization wrapper) costs what the layer it wraps costs."""
    inner = find_rule(layer.layer)
    return None if inner is None else inner(layer.layer, inputs, outputs)
