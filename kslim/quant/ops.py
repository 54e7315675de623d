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

import numpy as np
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


def weight_range(kernel, per_channel=True, channel_axes=None):
    """Symmetric range ``(-m, m)`` of ``kernel``: ``m = max|w|`` per output channel or over the tensor.

    Channels are the last axis (``m`` is a vector of its length), or, with ``channel_axes``, the
    given axes (``m`` keeps the kernel's rank with size 1 on every other axis, so it broadcasts; e.g.
    axis 2 of a ``Conv2DTranspose`` kernel ``(kh, kw, out, in)``, or the output axes of an
    ``EinsumDense`` kernel). The range carries no gradient (straight-through estimator on the weights
    only).
    """
    kernel = tf.convert_to_tensor(kernel)
    a = tf.abs(tf.stop_gradient(kernel))
    rank = len(kernel.shape)
    if not per_channel:
        m = tf.reduce_max(a)
    elif channel_axes is None:
        axes = list(range(rank - 1))
        m = tf.reduce_max(a, axis=axes) if axes else a
    else:
        keep = {int(ax) % rank for ax in channel_axes}
        axes = [i for i in range(rank) if i not in keep]
        m = tf.reduce_max(a, axis=axes, keepdims=True) if axes else a
    m = tf.maximum(m, _EPS)
    return -m, m


def fake_quant_weight(kernel, bits=8, per_channel=True):
    """Fake-quantize a kernel whose output channels are its last axis (symmetric, narrow range)."""
    lo, hi = weight_range(kernel, per_channel)
    if per_channel:
        return fake_quant_per_channel(kernel, lo, hi, bits, narrow_range=True)
    return fake_quant(kernel, lo, hi, bits, narrow_range=True)


def weight_scale(kernel, bits=8, per_channel=True, channel_axes=None):
    """``(scale, max|w|)`` of the symmetric weight grid: ``scale = max|w| / (2^(bits-1) - 1)`` per channel
    (``channel_axes`` as in :func:`weight_range`) or per tensor -- the grid the TFLite converter uses."""
    _, hi = weight_range(kernel, per_channel, channel_axes)
    return hi / float(2 ** (int(bits) - 1) - 1), hi


def fake_quant_weight_rounded(kernel, bits=8, per_channel=True, channel_axes=None):
    """Same values as :func:`fake_quant_weight`, computed with ``round`` instead of a FakeQuant op.

    Used for kernels whose output channels the converter moves (Dense, EinsumDense, Conv2DTranspose):
    the TFLite converter cannot carry a per-channel FakeQuant through the transpose it inserts in front
    of FULLY_CONNECTED / TRANSPOSE_CONV ("'tfl.transpose' op has mismatched quantized axes"), but it
    quantizes a plain float kernel of a QAT graph per output channel itself, with
    ``scale = max|w| / 127`` -- exactly the grid this function puts the values on (for ``bits=8``), so
    the int8 kernel is lossless w.r.t. training. ``channel_axes`` as in :func:`weight_range` (default:
    the last axis). The gradient is straight-through.
    """
    kernel = tf.convert_to_tensor(kernel)
    scale, _ = weight_scale(kernel, bits, per_channel, channel_axes)
    levels = float(2 ** (int(bits) - 1) - 1)
    q = tf.clip_by_value(tf.round(tf.stop_gradient(kernel) / scale), -levels, levels) * scale
    return kernel + tf.stop_gradient(q - kernel)



# ------------------------------------------------------------------ low-bit QAT (LSQ, DoReFa, BNN)
# The layers in kslim.quant.layers call these for ``weight_quantizer`` / ``activation_quantizer``
# ``"lsq"``, ``"dorefa"``, ``"bnn"`` (kslim.quant.lowbit is the registry of those names). Each weight
# function returns ``(values, step)``: ``values`` are integer codes times ``step`` (|code| <= 127), so
# :func:`on_code_grid` hands them to the converter without changing a bit.

def round_ste(x):
    """``round(x)`` with a straight-through gradient (identity)."""
    return x + tf.stop_gradient(tf.round(x) - x)


def scale_gradient(x, g):
    """The value of ``x`` with its gradient multiplied by ``g`` (LSQ's ``grad_scale``)."""
    return x * g + tf.stop_gradient(x - x * g)


def sign_ste(x):
    """Binarization of BNN (Courbariaux/Hubara et al., 2016): ``+1`` where ``x >= 0``, else ``-1``; the
    gradient is the straight-through estimator with hard-tanh clipping, ``1`` where ``|x| <= 1``, else 0.

    Example:
        >>> import numpy as np
        >>> x = tf.constant([-2.0, -0.5, 0.0, 0.5, 2.0])
        >>> with tf.GradientTape() as tape:
        ...     tape.watch(x)
        ...     y = sign_ste(x)
        >>> np.asarray(y).tolist(), np.asarray(tape.gradient(y, x)).tolist()
        ([-1.0, -1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0, 0.0])
    """
    clipped = tf.clip_by_value(x, -1.0, 1.0)
    return clipped + tf.stop_gradient(tf.where(x >= 0, tf.ones_like(x), -tf.ones_like(x)) - clipped)


def symmetric_levels(bits):
    """``Qp = 2^(bits-1) - 1``: the codes of a symmetric ``bits`` grid are ``-Qp..Qp`` (TFLite's narrow range)."""
    return float(2 ** (int(bits) - 1) - 1)


def _reduce(x, fn, per_channel):
    """``fn`` (``tf.reduce_max``/``reduce_mean``) of ``x`` per last-axis channel or over the tensor."""
    axes = list(range(len(x.shape) - 1))
    return fn(x, axis=axes) if per_channel and axes else (x if per_channel else fn(x))


def lsq_init_step(x, qp, per_channel=False, method="paper"):
    """LSQ's initial step, per last-axis channel or per tensor; no gradient.

    ``method``: ``"paper"``: ``2 * mean(|x|) / sqrt(Qp)`` (Esser et al., 2020); ``"max"``: ``max|x| / Qp``
    (the default grid: nothing clipped); ``"mse"``: the step among ``f * max|x| / Qp``, ``f`` in
    ``0.20, 0.22, ..., 1.0``, with the least squared error of the symmetric ``-Qp..Qp`` grid (the range
    learning init of AIMET / LSQ+ for a model that is already trained). Weights use ``method``;
    activations the paper's.

    Example:
        >>> w = tf.constant([[0.1, -0.2], [0.4, 0.05], [-1.0, 0.1]])
        >>> [[round(float(v), 4) for v in lsq_init_step(w, 7.0, True, m)] for m in ("paper", "max", "mse")]
        [[0.378, 0.0882], [0.1429, 0.0286], [0.14, 0.0274]]
    """
    x = tf.abs(tf.stop_gradient(tf.convert_to_tensor(x, tf.float32)))
    if method == "paper":
        return tf.maximum(2.0 * _reduce(x, tf.reduce_mean, per_channel) / tf.sqrt(tf.cast(qp, tf.float32)), _EPS)
    top = tf.maximum(_reduce(x, tf.reduce_max, per_channel), _EPS) / float(qp)
    if method == "max":
        return top
    best, best_err = top, None
    for f in np.linspace(0.2, 1.0, 41):
        q = tf.clip_by_value(tf.round(x / (f * top)), 0.0, float(qp)) * (f * top)
        err = _reduce(tf.square(q - x), tf.reduce_sum, per_channel)
        better = err < best_err if best_err is not None else tf.ones_like(err, tf.bool)
        best = tf.where(better, f * top, best)
        best_err = err if best_err is None else tf.minimum(err, best_err)
    return best


def lsq_gradient_scale(n, qp):
    """LSQ's gradient scale ``g = 1 / sqrt(N * Qp)``, ``N`` the number of values sharing one step."""
    return 1.0 / ((float(n) * float(qp)) ** 0.5)


def lsq_step(step):
    """The step LSQ uses for a learned ``step`` variable: ``max(|step|, eps)`` (an optimizer may push a
    small step through zero; its magnitude is kept, and the grid never collapses)."""
    return tf.maximum(tf.abs(tf.convert_to_tensor(step)), _EPS)


def lsq_quantize(x, step, qn, qp, g):
    """LSQ: ``round(clip(x / s, qn, qp)) * s`` with ``s`` the learned ``step`` (its gradient scaled by
    ``g``), round straight-through. The gradient w.r.t. ``s`` is the paper's: ``-x/s + round(x/s)``
    inside the range, ``qn`` / ``qp`` below / above it; w.r.t. ``x``, 1 inside, 0 outside.
    ``step`` (through :func:`lsq_step`) broadcasts against ``x`` (a vector: one step per last-axis channel)."""
    s = scale_gradient(lsq_step(step), g)
    return round_ste(tf.clip_by_value(x / s, qn, qp)) * s


def lsq_weight(kernel, step, bits, per_channel=True):
    """LSQ weights on the symmetric grid ``-Qp..Qp`` (``Qp = 2^(bits-1) - 1``): ``(values, step)``.

    ``N`` of the gradient scale is the number of weights per step (per channel or per kernel). The
    paper's extra negative code ``-2^(bits-1)`` is not used, so that the grid is TFLite's symmetric one
    and an 8-bit LSQ kernel is exactly an int8 kernel.
    """
    kernel = tf.convert_to_tensor(kernel)
    qp = symmetric_levels(bits)
    n = int(kernel.shape.num_elements()) // (int(kernel.shape[-1]) if per_channel else 1)
    return lsq_quantize(kernel, step, -qp, qp, lsq_gradient_scale(n, qp)), lsq_step(step)


def dorefa_weight(kernel, bits, per_channel=True):
    """DoReFa weights (Zhou et al., 2016): ``2 * quantize_k(tanh(v) / (2 max|tanh(v)|) + 1/2) - 1``,
    ``quantize_k(u) = round((2^k - 1) u) / (2^k - 1)`` (round straight-through), times ``a = max|w|``,
    with ``v = w / a``.

    The paper's weights are free of scale because every conv of its nets is followed by a
    BatchNormalization; kslim folds BatchNormalization into the kernels, whose weights then reach
    several units (``tanh`` would flatten them all to +-1). So the kernel is normalised by its ``max|w|``
    (no gradient; per channel with ``per_channel``, where the maxima are also taken) before ``tanh`` and
    the result scaled back. The ``2^k`` levels are the odd codes ``-(2^k - 1)..2^k - 1`` of
    ``step = a / (2^k - 1)`` (there is no zero level): ``(values, step)``.
    """
    kernel = tf.convert_to_tensor(kernel)
    n = float(2 ** int(bits) - 1)
    a = tf.maximum(_reduce(tf.abs(tf.stop_gradient(kernel)), tf.reduce_max, per_channel), _EPS)
    t = tf.tanh(kernel / a)
    u = t / (2.0 * tf.maximum(_reduce(tf.abs(t), tf.reduce_max, per_channel), _EPS)) + 0.5
    return (2.0 * round_ste(u * n) / n - 1.0) * a, a / n


def bnn_weight(kernel, per_channel=True):
    """Binary weights ``alpha * sign(w)`` with ``alpha = mean|w|`` per channel or per kernel (XNOR-Net's
    scale, Rastegari et al. 2016; BNN's plain ``+-1`` would lose the scale of the BatchNormalization
    kslim folds into the kernel), :func:`sign_ste` on ``w / alpha``: ``(values, alpha)``."""
    kernel = tf.convert_to_tensor(kernel)
    alpha = tf.maximum(_reduce(tf.abs(tf.stop_gradient(kernel)), tf.reduce_mean, per_channel), _EPS)
    return sign_ste(kernel / alpha) * alpha, alpha


def on_code_grid(values, step, code_bits=8, per_channel=True):
    """Hand a kernel whose ``values`` are integer codes times ``step``, ``|code| <= 2^(code_bits-1) - 1``,
    to the TFLite converter unchanged: a symmetric ``code_bits`` FakeQuant (narrow range) over ``+-Qp *
    step`` (per last-axis channel or per tensor), whose grid is ``step`` itself -- the kernel of the
    ``.tflite`` holds the codes (the converter stores a 4-bit one as a packed INT4 tensor, others as
    int8). The gradient passes straight through (the step gets none from here)."""
    hi = symmetric_levels(code_bits) * tf.stop_gradient(tf.convert_to_tensor(step))
    if per_channel:
        return fake_quant_per_channel(values, -hi, hi, code_bits, narrow_range=True)
    return fake_quant(values, -hi, hi, code_bits, narrow_range=True)


#: stretch of AdaRound's rectified sigmoid ``h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)``
#: (Louizos et al., 2018; Nagel et al., 2020): it reaches exactly 0 and 1, so a rounding can settle
ADAROUND_ZETA, ADAROUND_GAMMA = 1.1, -0.1


def rectified_sigmoid(v, zeta=ADAROUND_ZETA, gamma=ADAROUND_GAMMA):
    """AdaRound's soft rounding ``h(V)`` in ``[0, 1]`` (0: round down, 1: round up)."""
    return tf.clip_by_value(tf.sigmoid(v) * (zeta - gamma) + gamma, 0.0, 1.0)


def adaround_grid(kernel, bits=8, per_channel=True, channel_axes=None):
    """Where AdaRound starts from: ``(scale, floor, v0, anchor)`` for ``kernel`` (float32 tensors).

    ``scale`` is :func:`weight_scale`, ``floor = floor(w / scale)``, ``v0`` the rounding variable with
    ``rectified_sigmoid(v0) == w / scale - floor`` (the soft kernel starts at the float kernel), and
    ``anchor`` marks the elements holding ``max|w|`` of their channel (or of the tensor): they keep their
    nearest code ``+-(2^(bits-1) - 1)``, so that a converter re-deriving ``scale = max|w| / (2^(bits-1)
    - 1)`` from the rounded kernel finds the same scale and the same integers.
    """
    kernel = tf.cast(tf.convert_to_tensor(kernel), tf.float32)
    scale, hi = weight_scale(kernel, bits, per_channel, channel_axes)
    codes = kernel / scale
    floor = tf.floor(codes)
    v0 = -tf.math.log((ADAROUND_ZETA - ADAROUND_GAMMA) / (codes - floor - ADAROUND_GAMMA) - 1.0)
    return scale, floor, v0, tf.equal(tf.abs(kernel), hi)


def adaround_codes(kernel, floor, v, anchor, bits=8, hard=False):
    """The codes of an AdaRound kernel: ``floor + h(V)`` (``hard``: ``floor + [V >= 0]``, integers),
    clipped to ``+-(2^(bits-1) - 1)``, the ``anchor`` elements at their nearest code ``sign(w) * (2^(bits-1)
    - 1)``. ``floor`` and ``anchor`` as :func:`adaround_grid` gives them for ``kernel``; multiply by its
    ``scale`` for the weights."""
    levels = float(2 ** (int(bits) - 1) - 1)
    up = tf.cast(v >= 0.0, v.dtype) if hard else rectified_sigmoid(v)
    codes = tf.clip_by_value(floor + up, -levels, levels)
    return tf.where(anchor, tf.sign(tf.cast(kernel, codes.dtype)) * levels, codes)


def nearest_codes(kernel, scale, bits=8):
    """Round-to-nearest codes of ``kernel`` on ``scale`` (the grid of :func:`fake_quant_weight_rounded`)."""
    levels = float(2 ** (int(bits) - 1) - 1)
    return tf.clip_by_value(tf.round(tf.cast(kernel, tf.float32) / scale), -levels, levels)


def rounding_regularizer(v, beta):
    """AdaRound's ``sum(1 - |2 h(V) - 1|^beta)``: 0 when every ``h(V)`` is 0 or 1 (a hard rounding)."""
    return tf.reduce_sum(1.0 - tf.pow(tf.abs(2.0 * rectified_sigmoid(v) - 1.0), beta))


def adaround_beta(step, iterations, beta=(20.0, 2.0), warm_start=0.2):
    """``(beta, on)`` at ``step`` of ``iterations``: the regulariser is off (``on = 0``) for the first
    ``warm_start`` fraction of the steps, then ``beta`` decays linearly from ``beta[0]`` to ``beta[1]``
    (AIMET's ``LinearTempDecay``).

    Example:
        >>> adaround_beta(0, 100), adaround_beta(20, 100), adaround_beta(60, 100), adaround_beta(100, 100)
        ((20.0, 0.0), (20.0, 1.0), (11.0, 1.0), (2.0, 1.0))
    """
    start = float(warm_start) * int(iterations)
    if step < start:
        return float(beta[0]), 0.0
    rel = (step - start) / max(int(iterations) - start, 1e-12)
    return float(beta[1] + (beta[0] - beta[1]) * max(0.0, 1.0 - rel)), 1.0


def fixed_output_range(activation):
    """The output range TFLite's int8 kernel of ``activation`` imposes, or None if it has none.

    TFLite's int8 SOFTMAX and LOGISTIC always write ``scale = 1/256, zero_point = -128`` (range
    ``[0, 255/256]``), TANH ``scale = 1/128, zero_point = 0`` (``[-1, 127/128]``) and LOG_SOFTMAX
    ``scale = 16/256, zero_point = 127`` (``[-255/16, 0]``), whatever range the model learned; a QAT
    model must quantize these outputs on the same grid or its int8 conversion differs from it (the
    output of a sigmoid head otherwise lands on a coarser grid than the one trained).

    Example:
        >>> fixed_output_range("sigmoid")
        (0.0, 0.99609375)
    """
    return FIXED_OUTPUT_RANGES.get(activation)


FIXED_OUTPUT_RANGES = {
    "softmax": (0.0, 255.0 / 256.0),
    "sigmoid": (0.0, 255.0 / 256.0),
    "tanh": (-1.0, 127.0 / 128.0),
    "log_softmax": (-255.0 / 16.0, 0.0),
}


def saturating_rsqrt(x, ceiling=None):
    """``rsqrt(x)`` as TFLite's int8 RSQRT computes it on a quantized input: where ``x`` is 0 (a
    variance that rounded to the zero point) the result is ``ceiling`` (the kernel answers with the top
    of its output range) instead of ``inf``, which would poison every range learned after it.
    ``ceiling=None``: the largest result over the positive entries (no gradient through it), so a range
    learned from the output is the range of the entries that have a value.

    Example:
        >>> import numpy as np
        >>> np.asarray(saturating_rsqrt(tf.constant([0.0, 0.25]), 9.0)).tolist()
        [9.0, 2.0]
        >>> np.asarray(saturating_rsqrt(tf.constant([0.0, 0.25, 1.0]))).tolist()
        [2.0, 2.0, 1.0]
    """
    x = tf.convert_to_tensor(x)
    positive = x > 0
    r = tf.math.rsqrt(tf.where(positive, x, tf.ones_like(x)))
    if ceiling is None:
        ceiling = tf.stop_gradient(tf.reduce_max(tf.where(positive, r, tf.zeros_like(r))))
    return tf.where(positive, r, tf.cast(ceiling, r.dtype) * tf.ones_like(r))


def batch_range(x, symmetric=False):
    """Range ``(lo, hi)`` of a batch (under ``tf.distribute``, of the global batch), widened to include 0
    (and made symmetric if asked); no gradient."""
    x = tf.stop_gradient(tf.convert_to_tensor(x))
    lo = tf.minimum(tf.reduce_min(x), 0.0)
    hi = tf.maximum(tf.reduce_max(x), 0.0)
    replica = tf.distribute.get_replica_context()
    if replica is not None and replica.num_replicas_in_sync > 1:  # tf.distribute: the global batch's range
        # every replica's (lo, hi) in its own slot, summed with zeros (exact): one all-reduce
        n, i = replica.num_replicas_in_sync, replica.replica_id_in_sync_group
        slots = tf.one_hot(i, n, dtype=lo.dtype)[None, :] * tf.stack([lo, hi])[:, None]
        slots = tf.stop_gradient(replica.all_reduce(tf.distribute.ReduceOp.SUM, slots))  # no backward collective
        lo, hi = tf.reduce_min(slots[0]), tf.reduce_max(slots[1])
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
