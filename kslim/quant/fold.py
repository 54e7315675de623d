"""BatchNormalization folding.

Choice (as TFLite expects): each BatchNormalization that directly follows a quantized Conv1D, Conv2D,
Conv2DTranspose, DepthwiseConv2D, SeparableConv2D (its pointwise kernel) or Dense (whose output feeds
only that BN, with a linear activation, channels-last, also across a nested model's boundary) is
folded into the kernel and bias of that layer with its moving statistics **once, before QAT**::

    s = gamma / sqrt(moving_variance + epsilon)
    kernel' = kernel * s          (per output channel; depthwise channel c*M+m)
    bias'   = (bias - moving_mean) * s + beta

and the BN layer is dropped. QAT then trains and fake-quantizes the *folded* kernel, which is the
exact kernel the int8 model will hold: the TFLite graph is identical to what converting a
float-then-folded model gives (conv + int32 bias + fused ReLU), and there is no mismatch between the
weights seen in training and in export. The cost compared to TF's "fold with batch statistics"
rewrite is that fine-tuning runs without batch normalization (the statistics are frozen at their
pretrained value), which is the usual setting for a short QAT fine-tune with a small learning rate.
A BN that cannot be folded (after an activation or a non-quantized layer, or whose input is shared)
becomes a :class:`~kslim.quant.layers.QuantBatchNormalization`: the same affine with frozen
statistics, run as an int8 per-channel 1x1 DEPTHWISE_CONV_2D (a plain BN would convert to float
MUL/ADD).

Example:
    >>> import keras, numpy as np
    >>> from kslim.quant.fold import fold_batch_norm
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, use_bias=False),
    ...                       keras.layers.BatchNormalization(), keras.layers.ReLU()])
    >>> folded = fold_batch_norm(m)
    >>> [type(l).__name__ for l in folded.layers]
    ['InputLayer', 'Conv2D', 'ReLU']
"""

import numpy as np

def fold_kind(layer):
    """How a BatchNormalization after ``layer`` folds into it: its rule's ``bn_fold``
    (:class:`kslim.rules.LayerRule`, looked up along the MRO, so subclasses count), or None. A subclass
    that overrides ``call()`` does not fold: kslim cannot know what its weights compute."""
    import kslim.rules

    kind = getattr(kslim.rules.get(layer), "bn_fold", None)
    if kind is None:
        return None
    keras_base = next((c for c in type(layer).__mro__ if c.__module__.startswith("keras.")), None)
    if keras_base is None or type(layer).call is not keras_base.call:
        return None
    return kind


def bn_affine(gamma, beta, mean, variance, epsilon):
    """``(scale, shift)`` of a BatchNormalization at inference: ``bn(x) == x * scale + shift``.

    Plain arithmetic, so it serves numpy arrays (folding) and tensors (the QAT layer
    :class:`~kslim.quant.layers.QuantBatchNormalization`, where gamma and beta keep training).
    """
    scale = gamma / (variance + epsilon) ** 0.5
    return scale, beta - mean * scale


def _numpy(variable):
    from keras import ops

    return np.asarray(ops.convert_to_numpy(variable), np.float64)


def bn_scale_shift(bn):
    """``(scale, shift)`` numpy vectors (float64) such that ``bn(x) == x * scale + shift`` at inference."""
    var = _numpy(bn.moving_variance)
    mean = _numpy(bn.moving_mean)
    gamma = _numpy(bn.gamma) if bn.scale else np.ones_like(var)
    beta = _numpy(bn.beta) if bn.center else np.zeros_like(var)
    return bn_affine(gamma, beta, mean, var, bn.epsilon)


def can_fold(layer, bn, rank):
    """True if ``bn`` (applied to ``layer``'s output, of ``rank`` dims) can be folded into ``layer``."""
    import keras

    if fold_kind(layer) is None:
        return False
    if not isinstance(bn, keras.layers.BatchNormalization):
        return False
    if getattr(layer, "activation", None) not in (None, keras.activations.linear):
        return False
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return False
    axis = bn.axis if isinstance(bn.axis, int) else (bn.axis[0] if len(bn.axis) == 1 else None)
    return rank is not None and axis in (-1, rank - 1)


def folded_weights(layer, bn):
    """The weights of ``layer`` with ``bn`` folded in (numpy float32), in ``layer.get_weights()`` order
    of the same layer with ``use_bias=True``: ``[kernel, bias]``, or ``[depthwise, pointwise, bias]``
    for a SeparableConv2D (the BN scales its pointwise kernel).
    """
    weights = layer.get_weights()
    scale, shift = bn_scale_shift(bn)
    kind = fold_kind(layer)
    kernel = np.asarray(weights[1 if kind == "separable" else 0], np.float64)
    bias = _numpy(layer.bias) if layer.use_bias else np.zeros_like(scale)
    if kind == "depthwise":  # (..., c, multiplier): output channel c * multiplier + m
        kernel = kernel * scale.reshape(kernel.shape[-2:])
    elif kind == "transpose":  # (..., out, in)
        kernel = kernel * scale[:, None]
    else:
        kernel = kernel * scale
    out = [kernel.astype(np.float32), (bias * scale + shift).astype(np.float32)]
    return [weights[0]] + out if kind == "separable" else out


def fold_batch_norm(model):
    """A float copy of ``model`` with every foldable BatchNormalization folded into its producer.

    Used to check the folding (its output equals the original's in inference, up to float rounding)
    and as a plain float optimisation; :func:`kslim.quant.quant_aware` folds the same way.
    """
    from kslim.quant.config import QuantConfig
    from kslim.quant.qat import rewrite

    return rewrite(model, QuantConfig(fold_batch_norm=True), quantize=False)[0]
