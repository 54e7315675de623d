"""Keras layers of quantization-aware training: the activation quantizer and the quantized layers.

* :class:`ActivationQuantizer` fake-quantizes a tensor to ``bits`` over a range kept in two
  non-trainable weights ``min``/``max``. ``quant_aware`` inserts one on the model input(s) and on the
  output of every op TFLite gives its own quantization parameters (conv/dense after their fused
  activation, Add, Concatenate, global average pooling ...), so the converter finds a range on every
  tensor.
* :class:`QuantConv1D`, :class:`QuantConv2D`, :class:`QuantConv2DTranspose`,
  :class:`QuantDepthwiseConv2D`, :class:`QuantDense`, :class:`QuantEinsumDense` and
  :class:`QuantEmbedding` are the Keras layers with their kernel (table) fake-quantized (symmetric,
  per output channel or per tensor) in ``call``, computed the way TFLite runs them so that the int8
  model matches; :class:`QuantBatchNormalization` is a BatchNormalization that could not be folded,
  run as an int8 per-channel affine. They subclass the Keras layers, so weights, ``get_config`` and
  everything else are the Keras ones.

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
import numpy as np
import tensorflow as tf
from keras import ops as kops

from kslim.errors import KslimValueError
from kslim.quant import lowbit, ops
from kslim.quant.config import ACTIVATION_QUANTIZE_TYPES, check_bits


def _check_choice(value, allowed, field):
    if value not in allowed:
        raise KslimValueError(f"{field} must be one of {list(allowed)}, got {value!r}.")
    return value


def _algorithm(name, bits, kind):
    """``(quantizer name, bits)`` checked: a registered name (:mod:`kslim.quant.lowbit`) and bits it takes."""
    field = f"{kind}_quantizer" if kind == "weight" else "quantizer"
    algo = lowbit.get(_check_choice(name, lowbit.registered(), field))
    bits_field = "weight_bits" if kind == "weight" else "bits"
    return algo.name, (check_bits(bits, bits_field) if algo.name == "default" else
                       algo.check_bits(bits, bits_field, kind))


#: the range of a BNN activation's output: int8 codes -128..127 of scale 1/127, +-1 exact, zero point 0
BINARY_RANGE = (-128.0 / 127.0, 1.0)


@keras.saving.register_keras_serializable(package="kslim")
class ActivationQuantizer(keras.layers.Layer):
    """Fake-quantizes its input to ``bits`` over a learned range ``[min, max]`` (``min <= 0 <= max``).

    Modes:
        ``"abs_max"``: in training the range of the current batch is used (and stored);
        ``"moving_average_abs_max"``: in training the range is an exponential moving average of the
        batch ranges (``momentum``; the first batch initialises it).
    In inference (``training=False``) and once frozen (:meth:`set_range`), the stored range is used
    and never updated; this is the range the TFLite converter bakes into the int8 tensor.

    Quantizers (``quantizer``, :mod:`kslim.quant.lowbit`): ``"default"`` (the modes above);
    ``"lsq"``: a trainable ``step`` (LSQ, Esser et al. 2020), initialised from the first training batch
    to ``2 mean|x| / sqrt(Qp)``, unsigned codes ``0..2^bits-1`` if that batch has no negative value,
    else signed ``-2^(bits-1)..2^(bits-1)-1``; gradient scale ``1 / sqrt(N Qp)``, ``N`` the values per
    example; ``min``/``max`` follow the step (``Qn step``, ``Qp step``: the same grid as a FakeQuant
    over them, so inference and export use the stored range); ``"dorefa"``: the fixed range ``[0, 1]``
    (clip, then ``bits``; DoReFa-Net, Zhou et al. 2016); ``"bnn"`` (``bits=1``): the input on its
    learned 8-bit range like ``"default"``, then ``+1`` where it is ``>= 0``, else ``-1`` (straight-through
    gradient with hard-tanh clipping), on :data:`BINARY_RANGE`.

    Args:
        bits: 2..8 (1 for ``"bnn"``).
        mode: ``"abs_max"`` or ``"moving_average_abs_max"`` (how a default/bnn range is learned).
        momentum: EMA decay of ``"moving_average_abs_max"`` (0 <= momentum < 1).
        symmetric: use ``[-a, a]`` with ``a = max|x|`` instead of ``[min(x), max(x)]``.
        frozen: never update the range (set by :meth:`set_range`).
        quantizer: ``"default"``, ``"lsq"``, ``"dorefa"`` or ``"bnn"``.

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
                 quantizer="default", **kwargs):
        super().__init__(**kwargs)
        self.quantizer, self.bits = _algorithm(quantizer, bits, "activation")
        self.mode = _check_choice(mode, ACTIVATION_QUANTIZE_TYPES, "mode")
        momentum = float(momentum)
        if not 0.0 <= momentum < 1.0:
            raise KslimValueError(f"momentum must be in [0, 1), got {momentum}.")
        self.momentum = momentum
        self.symmetric = bool(symmetric)
        self.frozen = bool(frozen) or self.quantizer == "dorefa"
        self.supports_masking = True

    def build(self, input_shape):
        dorefa = self.quantizer == "dorefa"   # DoReFa's fixed [0, 1]
        self.min = self.add_weight(name="min", shape=(), initializer="zeros", trainable=False)
        self.max = self.add_weight(name="max", shape=(), initializer="ones" if dorefa else "zeros", trainable=False)
        self.count = self.add_weight(name="count", shape=(), initializer="ones" if dorefa else "zeros",
                                     trainable=False)
        if self.quantizer == "lsq":
            self.step = self.add_weight(name="step", shape=(), initializer="ones", trainable=True)
            self.signed = self.add_weight(name="signed", shape=(), initializer="zeros", trainable=False)
        self.built = True

    def _lsq(self, x):
        """LSQ in training: the step (and the signedness) initialised on the first batch, then learned."""
        first = self.count <= 0
        signed = tf.where(first, tf.cast(tf.reduce_min(tf.stop_gradient(x)) < 0, tf.float32), self.signed)
        half = float(2 ** (self.bits - 1))
        qn, qp = -signed * half, float(2 ** self.bits - 1) - signed * half
        step = tf.where(first, ops.lsq_init_step(x, qp), ops.lsq_step(self.step))
        n = math.prod(int(d) for d in x.shape[1:]) if all(d is not None for d in x.shape[1:]) else 1
        y = ops.lsq_quantize(x, step, qn, qp, ops.lsq_gradient_scale(n, 1.0) / tf.sqrt(qp))
        self.step.assign(tf.stop_gradient(step))
        self.signed.assign(signed)
        self.min.assign(tf.stop_gradient(qn * step))   # the range at this step (inference reads the step)
        self.max.assign(tf.stop_gradient(qp * step))
        self.count.assign(self.count + 1.0)
        return y

    def call(self, inputs, training=None):
        inputs = tf.convert_to_tensor(inputs)
        if training and not self.frozen and self.quantizer == "lsq":
            return self._lsq(inputs)
        if training and not self.frozen:
            lo, hi = ops.batch_range(inputs, self.symmetric)
            if self.mode == "moving_average_abs_max":
                lo = ops.moving_average(self.min, lo, self.momentum, self.count)
                hi = ops.moving_average(self.max, hi, self.momentum, self.count)
            self.min.assign(lo)
            self.max.assign(hi)
            self.count.assign(self.count + 1.0)
        else:
            lo, hi = self._stored_range()
        lo, hi = ops.ensure_valid_range(lo, hi)
        if self.quantizer != "bnn":
            return ops.fake_quant(inputs, lo, hi, self.bits, narrow_range=False)
        x = ops.fake_quant(inputs, lo, hi, 8, narrow_range=False)  # its input, an int8 tensor in the .tflite
        # int8 GREATER_EQUAL + SELECT in the .tflite; in training the straight-through sign
        b = ops.sign_ste(x) if training else tf.where(x >= 0, 1.0, -1.0)
        return ops.fake_quant(b, *BINARY_RANGE, 8, narrow_range=False)

    def compute_output_shape(self, input_shape):
        return input_shape

    def _stored_range(self):
        """``(min, max)`` tensors used in inference: LSQ's follow its (trained) step, ``(Qn step, Qp step)``."""
        if self.quantizer == "lsq" and not self.frozen:
            half, step = float(2 ** (self.bits - 1)), ops.lsq_step(self.step)
            return -self.signed * half * step, (float(2 ** self.bits - 1) - self.signed * half) * step
        return tf.convert_to_tensor(self.min), tf.convert_to_tensor(self.max)

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
        return tuple(float(kops.convert_to_numpy(v)) for v in self._stored_range())

    @property
    def calibrated(self):
        """True once the range was set by training or :meth:`set_range`."""
        if not self.built:
            return False
        return float(kops.convert_to_numpy(self.count)) > 0

    def get_config(self):
        config = super().get_config()
        config.update(bits=self.bits, mode=self.mode, momentum=self.momentum, symmetric=self.symmetric,
                      frozen=self.frozen, quantizer=self.quantizer)
        return config


class _QuantKernelMixin:
    """Shared arguments of the quantized layers: ``weight_bits``, ``per_channel`` and, for the layers
    with :attr:`LOWBIT` (Conv1D, Conv2D, DepthwiseConv2D, Dense), ``weight_quantizer``: ``"lsq"``,
    ``"dorefa"``, ``"bnn"`` (:mod:`kslim.quant.lowbit`) instead of the default ``max|w|`` grid. LSQ
    adds a trainable weight ``step`` (one per output channel if ``per_channel``), initialised to
    ``2 mean|w| / sqrt(Qp)`` when the layer is built and whenever :meth:`set_weights` is given the float
    layer's weights (kernel, bias), by ``lsq_init`` (:func:`kslim.quant.ops.lsq_init_step`: ``"paper"``,
    ``"max"`` or ``"mse"``)."""

    LOWBIT = False   # whether the layer takes a low-bit weight_quantizer
    _frozen_kernel = None   # set by kslim.quant.qat.export_ready (see requantized_by_converter)

    def __init__(self, *args, weight_bits=8, per_channel=True, **kwargs):
        # weight_quantizer / lsq_init: only the LOWBIT layers take them (the others' Keras base refuses them)
        lowbit_args = {k: kwargs.pop(k) for k in ("weight_quantizer", "lsq_init") if k in kwargs} \
            if self.LOWBIT else {}
        super().__init__(*args, **kwargs)
        self._init_quant(weight_bits, per_channel, **lowbit_args)

    def get_config(self):
        return self._quant_config(super().get_config())

    def requantized_by_converter(self):
        """Whether the converter quantizes this layer's (float, already int8-grid) kernel itself, per output
        channel on ``max|w| / 127`` (:func:`kslim.quant.ops.fake_quant_weight_rounded`), instead of taking a
        FakeQuant op's codes. For such a layer :func:`kslim.quant.qat.export_ready` hands the converter the
        kernel as a constant (:meth:`quantized_kernel`), so that the converter's own folding of the rounding
        ops cannot break a tie (an exact ``.5``, common with LSQ's coarse codes) the other way."""
        return False

    def _frozen(self):
        """The kernel frozen for the converter (a constant), or None outside :func:`export_ready`."""
        return None if self._frozen_kernel is None else tf.constant(self._frozen_kernel)

    def _init_quant(self, weight_bits, per_channel, weight_quantizer="default", lsq_init="paper"):
        self.weight_quantizer, self.weight_bits = _algorithm(weight_quantizer, weight_bits, "weight")
        self.per_channel = bool(per_channel)
        self.lsq_init = _check_choice(lsq_init, lowbit.LSQ_INITS, "lsq_init")

    def _quant_config(self, config):
        config.update(weight_bits=self.weight_bits, per_channel=self.per_channel)
        if self.LOWBIT:
            config.update(weight_quantizer=self.weight_quantizer, lsq_init=self.lsq_init)
        return config

    def _kernel_channels_last(self, kernel):
        """The kernel in the layout it is quantized in (output channels last)."""
        return kernel

    def build(self, input_shape):
        super().build(input_shape)
        if self.LOWBIT and lowbit.get(self.weight_quantizer).learned_step:
            k = self._kernel_channels_last(self.kernel)
            self.step = self.add_weight(name="step", shape=(int(k.shape[-1]),) if self.per_channel else (),
                                        initializer="ones", trainable=True)
            self.reset_step()

    def reset_step(self):
        """Set LSQ's step to its initial value (``lsq_init``) for the current kernel."""
        k = self._kernel_channels_last(tf.convert_to_tensor(self.kernel))
        self.step.assign(ops.lsq_init_step(k, ops.symmetric_levels(self.weight_bits), self.per_channel,
                                           self.lsq_init))

    def set_weights(self, weights):
        """Also takes the weights of the float layer (all but ``step``): LSQ's step is then initialised
        from the new kernel."""
        step = getattr(self, "step", None)
        own = [v for v in self.weights if v is not step]
        if step is not None and len(weights) == len(own):
            for v, w in zip(own, weights):
                v.assign(w)
            self.reset_step()
            return
        super().set_weights(weights)

    def save_own_variables(self, store):
        """Keras' conv/dense save only kernel and bias: LSQ's step is stored after them."""
        super().save_own_variables(store)
        if getattr(self, "step", None) is not None and self.built and \
                len(store.keys()) < len(self._trainable_variables + self._non_trainable_variables):
            store[str(len(store.keys()))] = self.step

    def load_own_variables(self, store):
        super().load_own_variables(store)
        if getattr(self, "step", None) is not None and self.built:
            self.step.assign(store[str(len(store.keys()) - 1)])

    def _lowbit_kernel(self, kernel, rounded=False):
        """``kernel`` (output channels last) quantized by the layer's ``weight_quantizer``, on a grid the
        converter keeps: a FakeQuant of the algorithm's step and code bits (:func:`kslim.quant.ops.on_code_grid`),
        or with ``rounded`` and per channel the int8 grid of each channel's ``max|w|``
        (:func:`kslim.quant.ops.fake_quant_weight_rounded`, for the Dense kernels the converter re-quantizes)."""
        algo = lowbit.get(self.weight_quantizer)
        values, step = algo.weight(kernel, self.weight_bits, self.per_channel, getattr(self, "step", None))
        if rounded and self.per_channel:
            return ops.fake_quant_weight_rounded(values, 8, per_channel=True)
        return ops.on_code_grid(values, step, algo.code_bits(self.weight_bits), self.per_channel)

    def quantized_kernel(self):
        """The kernel as the int8 model will see it (fake-quantized), as a tensor."""
        return self._fake_quant_kernel(self.kernel)


class _LowBitKernelMixin(_QuantKernelMixin):
    """A quantized layer that also takes a low-bit ``weight_quantizer`` (and LSQ's ``lsq_init``); its kernel,
    output channels last, is fake-quantized by that quantizer or, by default, on the ``max|w|`` grid."""

    LOWBIT = True

    def _fake_quant_kernel(self, kernel):
        if self.weight_quantizer != "default":
            return self._lowbit_kernel(kernel)
        return ops.fake_quant_weight(kernel, self.weight_bits, self.per_channel)


def _bias_and_activation(layer, x):
    """``activation(x + bias)`` as the Keras conv/dense layers apply them (channels last)."""
    if getattr(layer, "bias", None) is not None:
        x = kops.add(x, layer.bias)
    if layer.activation is not None:
        x = layer.activation(x)
    return x


@keras.saving.register_keras_serializable(package="kslim")
class QuantConv2D(_LowBitKernelMixin, keras.layers.Conv2D):
    """``keras.layers.Conv2D`` whose kernel is fake-quantized (symmetric, per output channel by default).

    Example:
        >>> import numpy as np
        >>> layer = QuantConv2D(4, 3, weight_bits=8)
        >>> layer(np.zeros((1, 8, 8, 2), "float32")).shape
        TensorShape([1, 6, 6, 4])
    """

    def convolution_op(self, inputs, kernel):
        return super().convolution_op(inputs, self._fake_quant_kernel(kernel))


@keras.saving.register_keras_serializable(package="kslim")
class QuantDepthwiseConv2D(_LowBitKernelMixin, keras.layers.DepthwiseConv2D):
    """``keras.layers.DepthwiseConv2D`` with a fake-quantized kernel.

    The kernel ``(kh, kw, C, M)`` is quantized per output channel ``c * M + m`` (TFLite's depthwise
    layout ``(1, kh, kw, C * M)``), by reshaping it to ``(kh, kw, C * M)`` around the per-channel op.
    """

    def _kernel_channels_last(self, kernel):
        kh, kw, c, m = kernel.shape
        return tf.reshape(kernel, (kh, kw, c * m))

    def _fake_quant_kernel(self, kernel):
        return tf.reshape(super()._fake_quant_kernel(self._kernel_channels_last(kernel)), kernel.shape)

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


def _lead_shape(x, n, tail):
    """Reshape target: the leading axes of ``x`` (all but its last ``n``) followed by ``tail``."""
    lead = list(x.shape[:-n])
    if all(d is not None for d in lead[1:]):
        return [-1] + [int(d) for d in lead[1:]] + list(tail)
    return tf.concat([tf.shape(x)[:-n], tf.constant(list(tail), tf.int32)], 0)


def _fully_connected(x, n, kernel, bias, out_shape):
    """``x`` (its last ``n`` axes contracted) times a 2-D ``kernel``, plus ``bias``, as ONE TFLite FULLY_CONNECTED.

    The input is flattened to 2-D first and the output reshaped to ``lead + out_shape`` after: a
    matmul on a higher-rank tensor converts to FULLY_CONNECTED + RESHAPE with the bias added after the
    reshape, in float.
    """
    flat = len(x.shape) - n > 1 or n > 1
    y = tf.matmul(tf.reshape(x, (-1, kernel.shape[0])) if flat else x, kernel)
    if bias is not None:
        y = y + bias
    return tf.reshape(y, _lead_shape(x, n, out_shape)) if flat or len(out_shape) > 1 else y


@keras.saving.register_keras_serializable(package="kslim")
class QuantDense(_LowBitKernelMixin, keras.layers.Dense):
    """``keras.layers.Dense`` with a fake-quantized kernel ``(in, out)`` (per output unit by default).

    Per channel, the kernel is put on the int8 grid with plain ``round`` (see
    :func:`kslim.quant.ops.fake_quant_weight_rounded`): the converter then emits a FULLY_CONNECTED
    with an int8 kernel carrying one scale per output unit and an int32 bias. Per tensor, a FakeQuant
    op is used.
    """

    def requantized_by_converter(self):
        return self.per_channel

    def _fake_quant_kernel(self, kernel):
        if self._frozen_kernel is not None:
            return self._frozen()
        if self.weight_quantizer != "default":
            return self._lowbit_kernel(kernel, rounded=True)
        if self.per_channel:
            return ops.fake_quant_weight_rounded(kernel, self.weight_bits, per_channel=True)
        return ops.fake_quant_weight(kernel, self.weight_bits, per_channel=False)

    def call(self, inputs, training=None):
        y = _fully_connected(inputs, 1, self._fake_quant_kernel(self.kernel), self.bias, [self.units])
        return y if self.activation is None else self.activation(y)


@keras.saving.register_keras_serializable(package="kslim")
class QuantConv1D(_LowBitKernelMixin, keras.layers.Conv1D):
    """``keras.layers.Conv1D`` with a fake-quantized kernel ``(k, in, out)`` (per output channel by default).

    The convolution runs as the 2-D convolution TFLite executes (``EXPAND_DIMS`` + ``CONV_2D`` +
    ``RESHAPE``), dilated ones included: Keras' own 1-D path lowers a dilated convolution to
    ``SPACE_TO_BATCH_ND``/``BATCH_TO_SPACE_ND`` around it, which the converter leaves in float.
    ``padding="causal"`` pads on the left first, as Keras does. Channels-last only.

    Example:
        >>> import numpy as np
        >>> QuantConv1D(4, 3, dilation_rate=2, padding="causal")(np.zeros((1, 10, 2), "float32")).shape
        TensorShape([1, 10, 4])
    """

    def call(self, inputs):
        x = inputs
        padding = self.padding
        if padding == "causal":
            x = kops.pad(x, [[0, 0], [self.dilation_rate[0] * (self.kernel_size[0] - 1), 0], [0, 0]])
            padding = "valid"
        kernel = self._fake_quant_kernel(tf.expand_dims(self.kernel, 0))  # (1, k, in, out), as TFLite holds it
        y = tf.nn.conv2d(tf.expand_dims(x, 1), kernel, strides=(1, 1, self.strides[0], 1),
                         padding=padding.upper(), dilations=(1, 1, self.dilation_rate[0], 1))
        return _bias_and_activation(self, tf.squeeze(y, 1))


@keras.saving.register_keras_serializable(package="kslim")
class QuantConv2DTranspose(_QuantKernelMixin, keras.layers.Conv2DTranspose):
    """``keras.layers.Conv2DTranspose`` with a fake-quantized kernel ``(kh, kw, out, in)``.

    Output channels are axis 2 of the kernel; per channel, the kernel is put on the int8 grid with
    :func:`kslim.quant.ops.fake_quant_weight_rounded` (the converter quantizes a TRANSPOSE_CONV kernel
    per output channel itself, on that very grid). Channels-last only.
    """

    def requantized_by_converter(self):
        return self.per_channel

    def _fake_quant_kernel(self, kernel):
        if self._frozen_kernel is not None:
            return self._frozen()
        if self.per_channel:
            return ops.fake_quant_weight_rounded(kernel, self.weight_bits, True, channel_axes=(2,))
        return ops.fake_quant_weight(kernel, self.weight_bits, per_channel=False)

    def call(self, inputs):
        y = kops.conv_transpose(
            inputs, self._fake_quant_kernel(self.kernel), strides=list(self.strides), padding=self.padding,
            output_padding=self.output_padding, dilation_rate=self.dilation_rate, data_format=self.data_format)
        return _bias_and_activation(self, y)


def einsum_dense_form(equation):
    """Number of contracted axes if an ``EinsumDense`` equation is a dense layer in disguise, else None.

    That is ``batch + contracted, contracted + out -> batch + out`` (the input's last axes contracted
    with the kernel's first ones), as in every projection of MultiHeadAttention.

    Example:
        >>> einsum_dense_form("abc,cde->abde"), einsum_dense_form("abcd,cde->abe"), einsum_dense_form("ab,cb->ac")
        (1, 2, None)
    """
    inputs, out = equation.replace(" ", "").split("->")
    x, kernel = inputs.split(",")
    contracted = "".join(c for c in kernel if c not in out)
    n = len(contracted)
    if "." in x + kernel + out or not n or kernel[:n] != contracted or x[-n:] != contracted:
        return None
    batch, kout = x[:-n], kernel[n:]
    return n if out == batch + kout and not set(batch) & set(kout) else None


@keras.saving.register_keras_serializable(package="kslim")
class QuantEinsumDense(_QuantKernelMixin, keras.layers.EinsumDense):
    """``keras.layers.EinsumDense`` with a fake-quantized kernel (the projections of MultiHeadAttention).

    An equation of dense form (:func:`einsum_dense_form`: ``"abc,cde->abde"``, ``"abcd,cde->abe"``
    ...) runs as the matmul TFLite executes: the contracted axes flattened, one ``FULLY_CONNECTED``
    whose bias is the flattened einsum bias, the output axes restored by a reshape; per channel, the
    kernel is put on the int8 grid of each output unit with
    :func:`kslim.quant.ops.fake_quant_weight_rounded` (the converter quantizes the FC kernel per unit
    on that grid). (Left as an einsum, the converter adds the bias after its reshape, in float.) Other
    equations keep the einsum, with one scale for the kernel.

    Example:
        >>> import numpy as np
        >>> layer = QuantEinsumDense("abc,cde->abde", output_shape=(None, 2, 4), bias_axes="de")
        >>> layer(np.zeros((1, 5, 8), "float32")).shape
        TensorShape([1, 5, 2, 4])
    """

    def requantized_by_converter(self):
        return self.per_channel and einsum_dense_form(self.equation) is not None

    def _fake_quant_kernel(self, kernel):
        if self._frozen_kernel is not None:
            return self._frozen()
        n = einsum_dense_form(self.equation)
        if self.per_channel and n is not None:
            axes = tuple(range(n, len(kernel.shape)))
            return ops.fake_quant_weight_rounded(kernel, self.weight_bits, True, channel_axes=axes)
        return ops.fake_quant_weight(kernel, self.weight_bits, per_channel=False)

    def call(self, inputs, training=None):
        kernel = self._fake_quant_kernel(self.kernel)
        n = einsum_dense_form(self.equation)
        if n is None:
            return _bias_and_activation(self, kops.einsum(self.equation, inputs, kernel))
        out_shape = [int(d) for d in kernel.shape[n:]]
        cin, cout = math.prod(int(d) for d in kernel.shape[:n]), math.prod(out_shape)
        bias = None if self.bias is None else tf.reshape(tf.broadcast_to(self.bias, out_shape), (cout,))
        y = _fully_connected(inputs, n, tf.reshape(kernel, (cin, cout)), bias, out_shape)
        return y if self.activation is None else self.activation(y)

    def compute_output_shape(self, input_shape):
        """Keras' shape, with each ``None`` of ``output_shape`` taken from the input axis of the same
        letter: Keras leaves the sequence axis of ``"abc,cde->abde"`` unknown even for a known input
        length, which MultiHeadAttention hides but its expanded graph (a Flatten after it) does not."""
        shape = list(super().compute_output_shape(input_shape))
        lhs, out_spec = self.equation.split("->")
        in_spec = lhs.split(",")[0]
        if "." in self.equation or len(out_spec) != len(shape) or len(in_spec) != len(input_shape):
            return tuple(shape)
        return tuple(input_shape[in_spec.index(c)] if d is None and c in in_spec else d
                     for c, d in zip(out_spec, shape))


@keras.saving.register_keras_serializable(package="kslim")
class QuantEmbedding(_QuantKernelMixin, keras.layers.Embedding):
    """``keras.layers.Embedding`` with a fake-quantized table (symmetric, **one scale for the table**).

    TFLite's int8 GATHER reads one scale for the whole table and writes its output with that scale, so
    the table is quantized per tensor whatever ``per_channel`` says, and the output needs no
    activation quantizer of its own (it is already on the table's int8 grid).
    """

    def __init__(self, *args, weight_bits=8, per_channel=False, **kwargs):
        super().__init__(*args, weight_bits=weight_bits, per_channel=False, **kwargs)

    def quantized_kernel(self):
        return ops.fake_quant_weight(self.embeddings, self.weight_bits, per_channel=False)

    def call(self, inputs):
        if inputs.dtype not in ("int32", "int64"):
            inputs = kops.cast(inputs, "int32")
        return kops.cast(tf.gather(self.quantized_kernel(), inputs), self.compute_dtype)


def _depthwise_kernel(scale, bits, per_channel):
    """A per-channel ``scale`` (C,) as the fake-quantized kernel ``(1, 1, C, 1)`` of a 1x1 depthwise conv.

    Reshaped from ``(1, 1, C)`` after the fake quant: slicing the fake-quantized kernel instead makes the
    converter fail."""
    kernel = ops.fake_quant_weight(tf.reshape(scale, (1, 1, -1)), bits, per_channel)
    return tf.reshape(kernel, (1, 1, -1, 1))


def _channel_affine(x, scale, shift, bits, per_channel):
    """``x * scale + shift`` over the last axis of a rank-2..4 ``x``, computed as TFLite's int8
    ``DEPTHWISE_CONV_2D`` 1x1 (``scale`` fake-quantized per channel; ``shift``, if not None, the bias)."""
    rank = len(x.shape)
    for _ in range(4 - rank):
        x = tf.expand_dims(x, 1)
    y = tf.nn.depthwise_conv2d(x, _depthwise_kernel(scale, bits, per_channel), strides=(1, 1, 1, 1),
                               padding="VALID")
    if shift is not None:  # next to the conv, so the converter makes it the conv's bias (also with None dims)
        y = y + shift
    if rank < 4:
        y = tf.squeeze(y, list(range(1, 5 - rank)))
    return y


@keras.saving.register_keras_serializable(package="kslim")
class QuantBatchNormalization(_QuantKernelMixin, keras.layers.BatchNormalization):
    """A BatchNormalization that could not be folded, run as TFLite runs it in int8: a per-channel affine.

    ``y = x * scale + shift`` with ``scale = gamma / sqrt(moving_variance + epsilon)`` and
    ``shift = beta - moving_mean * scale`` (:func:`kslim.quant.fold.bn_affine`), computed as a 1x1
    depthwise convolution with the fake-quantized ``scale`` as kernel (one int8 value and one scale per
    channel: lossless per channel) and ``shift`` as bias -- an int8 ``DEPTHWISE_CONV_2D`` into which
    TFLite fuses a following ReLU, where a plain BN becomes float ``MUL``/``ADD``. The moving
    statistics are frozen (as for folded BNs); ``gamma`` and ``beta`` keep training. Inputs of rank
    2 to 4, channels last.

    Example:
        >>> import numpy as np
        >>> bn = QuantBatchNormalization()
        >>> bn(np.ones((2, 3), "float32")).shape
        TensorShape([2, 3])
    """

    def affine(self):
        """``(scale, shift)`` tensors of the inference-time BN."""
        from kslim.quant.fold import bn_affine

        var = tf.convert_to_tensor(self.moving_variance)
        gamma = tf.convert_to_tensor(self.gamma) if self.scale else tf.ones_like(var)
        beta = tf.convert_to_tensor(self.beta) if self.center else tf.zeros_like(var)
        return bn_affine(gamma, beta, tf.convert_to_tensor(self.moving_mean), var, self.epsilon)

    def quantized_kernel(self):
        """The per-channel scale as the int8 model holds it (fake-quantized), shape ``(C,)``."""
        scale, _ = self.affine()
        return tf.reshape(_depthwise_kernel(scale, self.weight_bits, self.per_channel), (-1,))

    def call(self, inputs, training=None, mask=None):
        scale, shift = self.affine()
        return _channel_affine(inputs, scale, shift, self.weight_bits, self.per_channel)


@keras.saving.register_keras_serializable(package="kslim")
class QuantLayerNormalization(_QuantKernelMixin, keras.layers.LayerNormalization):
    """A LayerNormalization over the last axis computed the way TFLite runs it in int8: op by op.

    TFLite has no layer-normalization kernel: the converter lowers it to MEAN, SUB, MUL, MEAN, ADD,
    RSQRT, MUL and an affine, each of which has an int8 kernel that needs a range on its output. This
    layer computes exactly those steps and fake-quantizes each intermediate tensor with its own
    :class:`ActivationQuantizer` (:attr:`step_quantizers`, which learn their ranges in training like
    every other quantizer), then applies ``gamma``/``beta`` as an int8 per-channel affine (a 1x1
    depthwise conv, as :class:`QuantBatchNormalization`). Converted, the whole normalization is int8;
    without the step ranges its statistics stay float ops in an otherwise int8 model.

    ``rms_scaling=True`` follows Keras (``x * rsqrt(var(x) + epsilon) * gamma``). The output range is
    the quantizer ``quant_aware`` puts after the layer, as for any other layer.

    Args (besides LayerNormalization's): ``weight_bits``, ``per_channel`` for ``gamma``;
    ``activation_bits``, ``activation_mode``, ``momentum``: the settings of the step quantizers
    (:class:`ActivationQuantizer`'s ``bits``, ``mode``, ``momentum``).

    Example:
        >>> import numpy as np
        >>> ln = QuantLayerNormalization(epsilon=1e-6)
        >>> x = np.random.default_rng(0).normal(size=(4, 3, 8)).astype("float32")
        >>> y = ln(x, training=True)                  # the step quantizers learn their ranges
        >>> ref = keras.layers.LayerNormalization(epsilon=1e-6)(x)
        >>> bool(np.abs(np.asarray(y) - np.asarray(ref)).max() < 0.1)
        True
        >>> [q.name.rsplit("_", 2)[-2] for q in ln.step_quantizers][:3]
        ['mean', 'centered', 'square']
    """

    STEPS = ("mean", "centered", "square", "variance", "shifted", "inv_std", "normalized")
    takes_activation_config = True   # quant_aware passes its activation settings to the step quantizers

    def __init__(self, *args, weight_bits=8, per_channel=True, activation_bits=8,
                 activation_mode="moving_average_abs_max", momentum=0.9, **kwargs):
        super().__init__(*args, weight_bits=weight_bits, per_channel=per_channel, **kwargs)
        self.activation_bits = check_bits(activation_bits, "activation_bits")
        self.activation_mode = _check_choice(activation_mode, ACTIVATION_QUANTIZE_TYPES, "activation_mode")
        self.momentum = float(momentum)
        self.step_quantizers = [
            ActivationQuantizer(bits=self.activation_bits, mode=self.activation_mode, momentum=self.momentum,
                                name=f"{self.name}_{step}_quant") for step in self.STEPS]

    def build(self, input_shape):
        rank = len(input_shape)
        axes = [self.axis] if isinstance(self.axis, int) else list(self.axis)
        if len(axes) != 1 or axes[0] % rank != rank - 1 or not 2 <= rank <= 4:
            raise KslimValueError(f"{self.name}: QuantLayerNormalization needs a rank-2..4 input normalised over "
                                  f"its last axis, got rank {rank} and axis={self.axis!r}.")
        super().build(input_shape)
        for q in self.step_quantizers:
            q.build(())

    def set_weights(self, weights):
        """Also takes the weights of the float LayerNormalization (``gamma``/``beta`` only): the step
        quantizers then keep their ranges."""
        own = [v for v in (self.gamma, self.beta) if v is not None]
        if len(weights) == len(own) < len(self.weights):
            for v, w in zip(own, weights):
                v.assign(w)
            return
        super().set_weights(weights)

    def call(self, inputs, training=None):
        q = dict(zip(self.STEPS, self.step_quantizers))
        x = tf.cast(inputs, tf.float32)
        mean = q["mean"](tf.reduce_mean(x, axis=-1, keepdims=True), training=training)
        d = q["centered"](x - mean, training=training)
        var = q["variance"](tf.reduce_mean(q["square"](d * d, training=training), axis=-1, keepdims=True),
                            training=training)
        # A row whose variance rounds to the zero point of the "shifted" range (a class token initialised
        # to zeros, a padded position) makes TFLite's int8 RSQRT answer with the top of its output range;
        # so does this layer, instead of letting inf (and then NaN) into the learned ranges.
        shifted = q["shifted"](var + self.epsilon, training=training)
        inv_q = q["inv_std"]
        if training and not inv_q.frozen:   # its range is learned from the rows that have a variance
            inv = ops.saturating_rsqrt(shifted)
        else:                               # inf is clamped to the top of the range, as TFLite does
            inv = tf.math.rsqrt(shifted)
        inv = inv_q(inv, training=training)
        y = q["normalized"]((x if self.rms_scaling else d) * inv, training=training)
        if self.gamma is None and (self.beta is None or self.rms_scaling):
            return kops.cast(y, self.compute_dtype)
        scale = tf.convert_to_tensor(self.gamma) if self.gamma is not None else tf.ones((y.shape[-1],))
        shift = None if self.beta is None or self.rms_scaling else tf.convert_to_tensor(self.beta)
        return kops.cast(_channel_affine(y, scale, shift, self.weight_bits, self.per_channel), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def quantized_kernel(self):
        """``gamma`` as the int8 model holds it (fake-quantized), shape ``(C,)``."""
        return tf.reshape(_depthwise_kernel(tf.convert_to_tensor(self.gamma), self.weight_bits, self.per_channel),
                          (-1,))

    def get_config(self):
        config = super().get_config()
        config.update(activation_bits=self.activation_bits, activation_mode=self.activation_mode,
                      momentum=self.momentum)
        return config


def rescaling_vectors(layer, channels):
    """``(scale, offset)`` of a ``keras.layers.Rescaling`` as float32 vectors of ``channels`` values, or
    None when they are not a scalar or one value per channel of the last axis."""
    out = []
    for v in (layer.scale, layer.offset):
        a = np.asarray(v, "float32").reshape(-1)
        if a.size not in (1, channels):
            return None
        out.append(np.broadcast_to(a, (channels,)).copy())
    return tuple(out)


@keras.saving.register_keras_serializable(package="kslim")
class QuantRescaling(_QuantKernelMixin, keras.layers.Rescaling):
    """``keras.layers.Rescaling`` (``x * scale + offset``) as TFLite runs it in int8: one 1x1 depthwise conv.

    Converted as it is, a Rescaling becomes a float ``MUL`` and ``ADD`` (the input preprocessing of
    the Keras transfer-learning guide, ``Rescaling(1 / 127.5, offset=-1)``, in front of an otherwise
    int8 model). Here ``scale`` (a scalar or one value per channel) is the fake-quantized kernel of an
    int8 ``DEPTHWISE_CONV_2D`` and ``offset`` its bias: per channel a single value is on its own int8
    grid exactly, so the layer is lossless but for the bias' int32 rounding. Inputs of rank 2 to 4,
    channels last; the output range is the quantizer ``quant_aware`` puts after the layer.

    Example:
        >>> import numpy as np
        >>> layer = QuantRescaling(1 / 127.5, offset=-1.0)
        >>> x = np.array([[[[0.0, 127.5, 255.0]]]], "float32")
        >>> np.round(np.asarray(layer(x)), 4).tolist()
        [[[[-1.0, 0.0, 1.0]]]]
    """

    def call(self, inputs):
        x = tf.cast(inputs, self.compute_dtype)
        rank, channels = len(x.shape), x.shape[-1]
        vectors = rescaling_vectors(self, channels) if channels is not None and 2 <= rank <= 4 else None
        if vectors is None:
            raise KslimValueError(f"{self.name}: QuantRescaling needs a rank-2..4 input with a known channel count "
                                  f"and a scalar or per-channel scale/offset, got shape {tuple(x.shape)}.")
        scale, offset = (tf.constant(v) for v in vectors)
        return _channel_affine(x, scale, offset, self.weight_bits, self.per_channel)


QUANT_LAYERS = (QuantConv1D, QuantConv2D, QuantConv2DTranspose, QuantDepthwiseConv2D, QuantDense, QuantEinsumDense,
                QuantEmbedding, QuantBatchNormalization, QuantLayerNormalization, QuantRescaling)
