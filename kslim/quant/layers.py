"""Keras layers of quantization-aware training: the activation quantizer and the quantized layers.

* :class:`ActivationQuantizer` fake-quantizes a tensor to ``bits`` over a range kept in two
  non-trainable weights ``min``/``max``. ``quant_aware`` inserts one on the model input(s) and on the
  output of every op TFLite gives its own quantization parameters (conv/dense after their fused
  activation, Add, Concatenate, pooling ...), so the converter finds a range on every tensor.
* :class:`QuantConv2D`, :class:`QuantDepthwiseConv2D`, :class:`QuantDense` are the Keras layers with
  their kernel fake-quantized (symmetric, per output channel or per tensor) in ``call``; they
  subclass the Keras layers, so weights, ``get_config`` and everything else are the Keras ones.

All layers are registered (package ``kslim``) and survive ``model.save("m.keras")`` +
``keras.models.load_model(..., safe_mode=True)``.

Example:
    >>> import numpy as np
    >>> from kslim.quant.layers import ActivationQuantizer
    >>> q = ActivationQuantizer(bits=8)
    >>> y = q(np.linspace(-1, 1, 5, dtype="float32")[None], training=True)   # learns [-1, 1]
    >>> q.set_range(-2.0, 2.0)   # fix the range (e.g. from a calibration) and freeze it
    >>> q.range
    (-2.0, 2.0)
"""

import math

import keras
import tensorflow as tf
from keras import ops as kops

from kslim.errors import KslimValueError
from kslim.quant import ops
from kslim.quant.config import ACTIVATION_QUANTIZE_TYPES, check_bits


def _check_choice(value, allowed, field):
    if value not in allowed:
        raise KslimValueError(f"{field} must be one of {list(allowed)}, got {value!r}.")
    return value


@keras.saving.register_keras_serializable(package="kslim")
class ActivationQuantizer(keras.layers.Layer):
    """Fake-quantizes its input to ``bits`` over a learned range ``[min, max]`` (``min <= 0 <= max``).

    Modes:
        ``"abs_max"``: in training the range of the current batch is used (and stored);
        ``"moving_average_abs_max"``: in training the range is an exponential moving average of the
        batch ranges (``momentum``; the first batch initialises it).
    In inference (``training=False``) and once frozen (:meth:`set_range`), the stored range is used
    and never updated; this is the range the TFLite converter bakes into the int8 tensor.

    Args:
        bits: 2..8.
        mode: ``"abs_max"`` or ``"moving_average_abs_max"``.
        momentum: EMA decay of ``"moving_average_abs_max"`` (0 <= momentum < 1).
        symmetric: use ``[-a, a]`` with ``a = max|x|`` instead of ``[min(x), max(x)]``.
        frozen: never update the range (set by :meth:`set_range`).

    Weights (non-trainable): ``min``, ``max`` (the range) and ``count`` (number of updates, 0 means
    the range was never set: converting such a model is refused by :func:`kslim.quant.convert`).

    Example:
        >>> import numpy as np
        >>> q = ActivationQuantizer(bits=4, mode="abs_max")
        >>> _ = q(np.array([[0.0, 1.0, 3.0]], "float32"), training=True)
        >>> q.range
        (0.0, 3.0)
    """

    def __init__(self, bits=8, mode="moving_average_abs_max", momentum=0.9, symmetric=False, frozen=False,
                 **kwargs):
        super().__init__(**kwargs)
        self.bits = check_bits(bits, "bits")
        self.mode = _check_choice(mode, ACTIVATION_QUANTIZE_TYPES, "mode")
        momentum = float(momentum)
        if not 0.0 <= momentum < 1.0:
            raise KslimValueError(f"momentum must be in [0, 1), got {momentum}.")
        self.momentum = momentum
        self.symmetric = bool(symmetric)
        self.frozen = bool(frozen)
        self.supports_masking = True

    def build(self, input_shape):
        self.min = self.add_weight(name="min", shape=(), initializer="zeros", trainable=False)
        self.max = self.add_weight(name="max", shape=(), initializer="zeros", trainable=False)
        self.count = self.add_weight(name="count", shape=(), initializer="zeros", trainable=False)
        self.built = True

    def call(self, inputs, training=None):
        inputs = tf.convert_to_tensor(inputs)
        if training and not self.frozen:
            lo, hi = ops.batch_range(inputs, self.symmetric)
            if self.mode == "moving_average_abs_max":
                lo = ops.moving_average(self.min, lo, self.momentum, self.count)
                hi = ops.moving_average(self.max, hi, self.momentum, self.count)
            self.min.assign(lo)
            self.max.assign(hi)
            self.count.assign(self.count + 1.0)
        else:
            lo, hi = tf.convert_to_tensor(self.min), tf.convert_to_tensor(self.max)
        lo, hi = ops.ensure_valid_range(lo, hi)
        return ops.fake_quant(inputs, lo, hi, self.bits, narrow_range=False)

    def compute_output_shape(self, input_shape):
        return input_shape

    def set_range(self, lo, hi):
        """Set the range to ``[lo, hi]`` (widened to include 0) and freeze it (no more updates).

        Raises :class:`~kslim.errors.KslimValueError` if the bounds are not finite or ``lo > hi``.
        """
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            raise KslimValueError(
                f"{self.name}: set_range needs finite lo <= hi, got ({lo}, {hi})."
            )
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        if self.symmetric:
            a = max(-lo, hi)
            lo, hi = -a, a
        if not self.built:
            self.build(None)
        self.min.assign(lo)
        self.max.assign(hi)
        self.count.assign(max(float(kops.convert_to_numpy(self.count)), 1.0))
        self.frozen = True

    def unfreeze(self):
        """Let training update the range again."""
        self.frozen = False

    @property
    def range(self):
        """The stored range as a ``(min, max)`` pair of Python floats (``(0.0, 0.0)`` before building)."""
        if not self.built:
            return 0.0, 0.0
        return float(kops.convert_to_numpy(self.min)), float(kops.convert_to_numpy(self.max))

    @property
    def calibrated(self):
        """True once the range was set by training or :meth:`set_range`."""
        if not self.built:
            return False
        return float(kops.convert_to_numpy(self.count)) > 0

    def get_config(self):
        config = super().get_config()
        config.update(bits=self.bits, mode=self.mode, momentum=self.momentum, symmetric=self.symmetric,
                      frozen=self.frozen)
        return config


class _QuantKernelMixin:
    """Shared arguments of the quantized layers: ``weight_bits`` and ``per_channel``."""

    def _init_quant(self, weight_bits, per_channel):
        self.weight_bits = check_bits(weight_bits, "weight_bits")
        self.per_channel = bool(per_channel)

    def _quant_config(self, config):
        config.update(weight_bits=self.weight_bits, per_channel=self.per_channel)
        return config

    def quantized_kernel(self):
        """The kernel as the int8 model will see it (fake-quantized), as a tensor."""
        return self._fake_quant_kernel(self.kernel)


@keras.saving.register_keras_serializable(package="kslim")
class QuantConv2D(_QuantKernelMixin, keras.layers.Conv2D):
    """``keras.layers.Conv2D`` whose kernel is fake-quantized (symmetric, per output channel by default).

    Example:
        >>> import numpy as np
        >>> layer = QuantConv2D(4, 3, weight_bits=8)
        >>> layer(np.zeros((1, 8, 8, 2), "float32")).shape
        TensorShape([1, 6, 6, 4])
    """

    def __init__(self, *args, weight_bits=8, per_channel=True, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quant(weight_bits, per_channel)

    def _fake_quant_kernel(self, kernel):
        return ops.fake_quant_weight(kernel, self.weight_bits, self.per_channel)

    def convolution_op(self, inputs, kernel):
        return super().convolution_op(inputs, self._fake_quant_kernel(kernel))

    def get_config(self):
        return self._quant_config(super().get_config())


@keras.saving.register_keras_serializable(package="kslim")
class QuantDepthwiseConv2D(_QuantKernelMixin, keras.layers.DepthwiseConv2D):
    """``keras.layers.DepthwiseConv2D`` with a fake-quantized kernel.

    The kernel ``(kh, kw, C, M)`` is quantized per output channel ``c * M + m`` (TFLite's depthwise
    layout ``(1, kh, kw, C * M)``), by reshaping it to ``(kh, kw, C * M)`` around the per-channel op.
    """

    def __init__(self, *args, weight_bits=8, per_channel=True, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quant(weight_bits, per_channel)

    def _fake_quant_kernel(self, kernel):
        kh, kw, c, m = kernel.shape
        flat = tf.reshape(kernel, (kh, kw, c * m))
        flat = ops.fake_quant_weight(flat, self.weight_bits, self.per_channel)
        return tf.reshape(flat, (kh, kw, c, m))

    def call(self, inputs):
        outputs = kops.depthwise_conv(
            inputs, self._fake_quant_kernel(self.kernel), strides=self.strides, padding=self.padding,
            dilation_rate=self.dilation_rate, data_format=self.data_format,
        )
        if self.use_bias:
            outputs = outputs + (self.bias if self.data_format == "channels_last"
                                 else kops.reshape(self.bias, (1, -1, 1, 1)))
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def get_config(self):
        return self._quant_config(super().get_config())


@keras.saving.register_keras_serializable(package="kslim")
class QuantDense(_QuantKernelMixin, keras.layers.Dense):
    """``keras.layers.Dense`` with a fake-quantized kernel ``(in, out)`` (per output unit by default).

    Per channel, the kernel is put on the int8 grid with plain ``round`` (see
    :func:`kslim.quant.ops.fake_quant_weight_rounded`): the converter then emits a FULLY_CONNECTED
    with an int8 kernel carrying one scale per output unit and an int32 bias. Per tensor, a FakeQuant
    op is used.
    """

    def __init__(self, *args, weight_bits=8, per_channel=True, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quant(weight_bits, per_channel)

    def _fake_quant_kernel(self, kernel):
        if self.per_channel:
            return ops.fake_quant_weight_rounded(kernel, self.weight_bits, per_channel=True)
        return ops.fake_quant_weight(kernel, self.weight_bits, per_channel=False)

    def call(self, inputs, training=None):
        x = kops.matmul(inputs, self._fake_quant_kernel(self.kernel))
        if self.bias is not None:
            x = kops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def get_config(self):
        return self._quant_config(super().get_config())


QUANT_LAYERS = (QuantConv2D, QuantDepthwiseConv2D, QuantDense)
