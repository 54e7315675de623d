"""BatchNormalization folding.

Choice (as TFLite expects): each BatchNormalization that directly follows a quantized Conv2D,
DepthwiseConv2D or Dense (whose output feeds only that BN, with a linear activation, channels-last)
is folded into the kernel and bias of that layer with its moving statistics **once, before QAT**::

    s = gamma / sqrt(moving_variance + epsilon)
    kernel' = kernel * s          (per output channel; depthwise channel c*M+m)
    bias'   = (bias - moving_mean) * s + beta

and the BN layer is dropped. QAT then trains and fake-quantizes the *folded* kernel, which is the
exact kernel the int8 model will hold: the TFLite graph is identical to what converting a
float-then-folded model gives (conv + int32 bias + fused ReLU), and there is no mismatch between the
weights seen in training and in export. The cost compared to TF's "fold with batch statistics"
rewrite is that fine-tuning runs without batch normalization (the statistics are frozen at their
pretrained value), which is the usual setting for a short QAT fine-tune with a small learning rate.
A BN that cannot be folded (after a non-quantized layer, or whose input is shared) stays as a layer;
its output gets an activation quantizer, so it still converts to int8 MUL/ADD.

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

FOLDABLE_LAYER_TYPES = ("Conv2D", "DepthwiseConv2D", "Dense")


def bn_scale_shift(bn):
    """``(scale, shift)`` numpy vectors such that ``bn(x) == x * scale + shift`` at inference."""
    var = np.asarray(bn.moving_variance, np.float64)
    mean = np.asarray(bn.moving_mean, np.float64)
    gamma = np.asarray(bn.gamma, np.float64) if bn.scale else np.ones_like(var)
    beta = np.asarray(bn.beta, np.float64) if bn.center else np.zeros_like(var)
    scale = gamma / np.sqrt(var + bn.epsilon)
    return scale, beta - mean * scale


def can_fold(layer, bn, rank):
    """True if ``bn`` (applied to ``layer``'s output, of ``rank`` dims) can be folded into ``layer``."""
    import keras

    if type(layer).__name__ not in FOLDABLE_LAYER_TYPES:
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
    """Kernel and bias of ``layer`` with ``bn`` folded in (numpy float32)."""
    kernel = np.asarray(layer.kernel, np.float64)
    scale, shift = bn_scale_shift(bn)
    bias = np.asarray(layer.bias, np.float64) if layer.use_bias else np.zeros_like(scale)
    if type(layer).__name__ == "DepthwiseConv2D":
        kh, kw, c, m = kernel.shape
        kernel = kernel * scale.reshape(c, m)
    else:
        kernel = kernel * scale
    return kernel.astype(np.float32), (bias * scale + shift).astype(np.float32)


def fold_batch_norm(model):
    """A float copy of ``model`` with every foldable BatchNormalization folded into its producer.

    Used to check the folding (its output equals the original's in inference, up to float rounding)
    and as a plain float optimisation; :func:`kslim.quant.quant_aware` folds the same way.
    """
    from kslim.quant.config import QuantConfig
    from kslim.quant.qat import rewrite

    return rewrite(model, QuantConfig(fold_batch_norm=True), quantize=False)
