"""Fake-quantization math used by the QAT layers (TensorFlow backend).

Every function here is a pure function of tensors: the layers in :mod:`kslim.quant.layers` keep the
state (ranges) and call these. The fake-quant kernels are TensorFlow's
``tf.quantization.fake_quant_with_min_max_vars[_per_channel]``: they have a straight-through gradient
(zero outside the range) and are exactly the ops the TFLite converter turns into int8 tensors.

Conventions (those of TFLite's int8 scheme):

* weights are symmetric (``[-m, m]``, ``narrow_range=True`` so the zero point is exactly 0 and the
  codes are ``-127..127``), per tensor or per output channel;
* activations are asymmetric ``[min, max]`` with ``min <= 0 <= max`` (the op nudges the range so that
  0 is exactly representable), per tensor.

Example:
    >>> import numpy as np
    >>> from kslim.quant import ops
    >>> w = np.array([[0.5, -1.0], [0.25, 2.0]], "float32")
    >>> lo, hi = ops.weight_range(w, per_channel=True)
    >>> np.asarray(hi).tolist()
    [0.5, 2.0]
"""

import tensorflow as tf

MIN_BITS = 2
MAX_BITS = 8
_EPS = 1e-8


def fake_quant(x, lo, hi, bits=8, narrow_range=False):
    """Per-tensor fake quantization of ``x`` to ``bits`` over ``[lo, hi]`` (scalars)."""
    return tf.quantization.fake_quant_with_min_max_vars(
        x, lo, hi, num_bits=int(bits), narrow_range=bool(narrow_range)
    )


def fake_quant_per_channel(x, lo, hi, bits=8, narrow_range=True):
    """Per-channel fake quantization along the LAST axis of ``x``; ``lo``/``hi`` have that length."""
    return tf.quantization.fake_quant_with_min_max_vars_per_channel(
        x, lo, hi, num_bits=int(bits), narrow_range=bool(narrow_range)
    )


def weight_range(kernel, per_channel=True):
    """Symmetric range ``(-m, m)`` of ``kernel``: ``m = max|w|`` per last-axis channel or over the tensor.

    The range carries no gradient (straight-through estimator on the weights only).
    """
    kernel = tf.convert_to_tensor(kernel)
    a = tf.abs(tf.stop_gradient(kernel))
    if per_channel:
        axes = list(range(len(kernel.shape) - 1))
        m = tf.reduce_max(a, axis=axes) if axes else a
    else:
        m = tf.reduce_max(a)
    m = tf.maximum(m, _EPS)
    return -m, m


def fake_quant_weight(kernel, bits=8, per_channel=True):
    """Fake-quantize a kernel whose output channels are its last axis (symmetric, narrow range)."""
    lo, hi = weight_range(kernel, per_channel)
    if per_channel:
        return fake_quant_per_channel(kernel, lo, hi, bits, narrow_range=True)
    return fake_quant(kernel, lo, hi, bits, narrow_range=True)


def fake_quant_weight_rounded(kernel, bits=8, per_channel=True):
    """Same values as :func:`fake_quant_weight`, computed with ``round`` instead of a FakeQuant op.

    Used for Dense kernels quantized per channel: the TFLite converter cannot carry a per-channel
    FakeQuant through the transpose it inserts in front of FULLY_CONNECTED ("'tfl.transpose' op has
    mismatched quantized axes"), but it quantizes a plain float FC kernel of a QAT graph per output
    channel itself, with ``scale = max|w| / 127`` -- exactly the grid this function puts the values on
    (for ``bits=8``), so the int8 kernel is lossless w.r.t. training. The gradient is straight-through.
    """
    kernel = tf.convert_to_tensor(kernel)
    _, hi = weight_range(kernel, per_channel)
    levels = float(2 ** (int(bits) - 1) - 1)
    scale = hi / levels
    q = tf.clip_by_value(tf.round(tf.stop_gradient(kernel) / scale), -levels, levels) * scale
    return kernel + tf.stop_gradient(q - kernel)


def batch_range(x, symmetric=False):
    """Range ``(lo, hi)`` of a batch, widened to include 0 (and made symmetric if asked); no gradient."""
    x = tf.stop_gradient(tf.convert_to_tensor(x))
    lo = tf.minimum(tf.reduce_min(x), 0.0)
    hi = tf.maximum(tf.reduce_max(x), 0.0)
    if symmetric:
        m = tf.maximum(-lo, hi)
        lo, hi = -m, m
    return lo, hi


def moving_average(old, new, momentum, count):
    """EMA ``momentum * old + (1 - momentum) * new``; returns ``new`` while ``count == 0`` (first update)."""
    ema = momentum * old + (1.0 - momentum) * new
    return tf.where(count > 0, ema, new)


def ensure_valid_range(lo, hi):
    """Make ``hi - lo`` strictly positive so the fake-quant scale is never 0."""
    hi = tf.maximum(hi, lo + 1e-6)
    return lo, hi
