"""AdaRound: learned rounding of the weights (Nagel et al., 2020, "Up or Down? Adaptive Rounding for
Post-Training Quantization"; AIMET's ``Adaround.apply_adaround``).

Rounding every weight to its nearest grid point minimises each weight's own error, not the error of
the layer's output: two weights rounded the same way on the same input add up their errors. AdaRound
chooses, per weight, to round down or up so that the layer's output on real inputs stays closest to
the float output. Per layer, on the grid the TFLite converter uses (symmetric, ``scale = max|w| /
(2^(bits-1) - 1)`` per output channel or per tensor, as :func:`kslim.quant.bias_correction.quantized_kernel`),
the kernel is relaxed to::

    W~ = scale * clip(floor(W / scale) + h(V), -(2^(bits-1) - 1), 2^(bits-1) - 1)
    h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)            zeta = 1.1, gamma = -0.1

with ``V`` initialised so that ``W~ = W``, and ``V`` is learned with Adam to minimise::

    mean (W x - W~ x)^2 / mean (W x - round(W) x)^2  +  reg_weight * mean(1 - |2 h(V) - 1|^beta)

where ``x`` runs over the layer's inputs on the calibration data and the regulariser, off for the
first ``warm_start`` fraction of the ``iterations``, then pushes every ``h(V)`` to 0 or 1 as ``beta``
anneals from ``beta[0]`` to ``beta[1]`` (the paper's and AIMET's schedule). At the end every weight is
rounded up where ``h(V) >= 0.5``; a layer where that is worse than
nearest rounding on the calibration data keeps nearest rounding (``flipped == 0``). The reconstruction is that of the layer's pre-activation output
(its bias and activation left out), run by a copy of the layer itself, so strides, padding, dilation
and depthwise multipliers count as they do in the model.

**Variant.** Layer by layer, each layer's inputs come from the *float* model (BatchNorm folded),
not from the model with the previous layers already rounded: the layers are independent (AIMET's
default; the paper's "asymmetric" reconstruction is not done). Each layer's inputs are collected by
one pass over the calibration data (one pass per layer, so only one layer's inputs are in memory);
every iteration draws ``batch_size`` of them.

**What comes out** is a float Keras model (BatchNorm folded, a new model) whose rounded kernels hold
exactly ``scale * integer``: the element with the largest ``|w|`` of each channel (of the tensor
for ``"abs_max"``) keeps its nearest code ``+-(2^(bits-1) - 1)``, so the scale is unchanged, and a
converter that re-derives ``scale = max|w| / 127`` gets the same scale and AdaRound's integers.
Pass it to :func:`kslim.quant.quant_post_static` with the same ``weight_quantize_type`` (``bits=8``):
its int8 kernels are AdaRound's (``tests/test_adaround.py`` checks it in the ``.tflite``). With
``bits=4``, the grid ``max|w| / 7`` per output channel is the one LiteRT's quantizer derives for
:func:`kslim.quant.quant_post_litert`'s ``"int4_weight_only"`` recipe (symmetric, per channel; checked
in the tests; ``"dynamic_int4"`` should derive the same grid but is not tested), so use
``weight_quantize_type="channel_wise_abs_max"`` with those; ``"int4_blockwise"`` (blocks of 32, its own
scales) and the int8 converter re-round a 4-bit model on their own grids, which loses what AdaRound
learned. Layers AdaRound does not touch (``skip``, separable convolutions, layers the data does not
reach) keep float kernels, rounded to nearest by the converter.

Example:
    >>> import keras, numpy as np
    >>> from kslim.quant import adaround
    >>> keras.utils.set_random_seed(0)
    >>> m = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(4, 3, name="conv")])
    >>> x = np.random.default_rng(0).uniform(size=(32, 6, 6, 2)).astype("float32")
    >>> result = adaround(m, x, iterations=200)
    >>> [(r.path, r.channels) for r in result.layers]
    [('conv', 4)]
    >>> result.layers[0].mse_adaround < result.layers[0].mse_nearest
    True
    >>> w = result.model.get_layer("conv").get_weights()[0]
    >>> codes = w / (np.abs(w).max(axis=(0, 1, 2)) / 127)    # integers, max |code| 127 per channel
    >>> bool(np.allclose(codes, np.round(codes), atol=1e-3)), np.abs(np.round(codes)).max(axis=(0, 1, 2)).tolist()
    (True, [127.0, 127.0, 127.0, 127.0])
"""

from dataclasses import dataclass

import numpy as np

from kslim.errors import KslimValueError, ModelError
from kslim.validation import check_model


@dataclass(frozen=True)
class AdaRoundedLayer:
    """One layer whose kernel AdaRound rounded.

    Attributes:
        path: the layer's path (``"inner/conv"`` inside a nested model).
        channels: output channels (scales).
        flipped: fraction of the kernel's weights rounded the other way than to nearest.
        mse_nearest, mse_adaround: mean squared error of the layer's pre-activation output against the
            float kernel's, on all the calibration inputs, with round-to-nearest and with AdaRound.
        samples: input samples the layer saw (more than the calibration samples if it is shared).
    """

    path: str
    channels: int
    flipped: float
    mse_nearest: float
    mse_adaround: float
    samples: int


@dataclass(frozen=True)
class AdaRoundResult:
    """What :func:`adaround` did.

    Attributes:
        model: the float ``keras.Model`` with AdaRound's kernels (BatchNorm folded; a new model).
        layers: :class:`AdaRoundedLayer` per rounded layer, in graph order.
        skipped: ``(path, reason)`` of the conv/dense layers left float.
        bits, weight_quantize_type: the grid rounded to.
        samples: calibration samples used.
        iterations: optimisation steps per layer.
    """

    model: object
    layers: tuple
    skipped: tuple
    bits: int
    weight_quantize_type: str
    samples: int
    iterations: int

    def to_dict(self):
        """Everything but the model (JSON-ready)."""
        return {"layers": [r.__dict__ for r in self.layers], "skipped": [list(s) for s in self.skipped],
                "bits": self.bits, "weight_quantize_type": self.weight_quantize_type, "samples": self.samples,
                "iterations": self.iterations}

    def __str__(self):
        lines = [f"AdaRound ({self.bits} bits, {self.weight_quantize_type}, {self.samples} samples, "
                 f"{self.iterations} iterations): {len(self.layers)} layers rounded, {len(self.skipped)} skipped"]
        lines += [f"  {r.path}: output MSE {r.mse_nearest:.3g} (nearest) -> {r.mse_adaround:.3g}, "
                  f"{100 * r.flipped:.1f} % flipped" for r in self.layers]
        lines += [f"  skipped {p}: {why}" for p, why in self.skipped]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ checks
def _positive_int(value, field, fn):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise KslimValueError(f"{fn}: {field} must be a positive integer, got {value!r}.")
    return int(value)


def _check_args(model, weight_quantize_type, bits, iterations, batches, batch_size, reg_weight, beta,
                warm_start, lr, skip, fn):
    from kslim.graph import keras_graph as kg
    from kslim.quant.bias_correction import _check_type
    from kslim.quant.ops import MAX_BITS, MIN_BITS
    from kslim.quant.qat import is_quantized

    check_model(model, fn)
    _check_type(weight_quantize_type, fn)
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not MIN_BITS <= bits <= MAX_BITS:
        raise KslimValueError(f"{fn}: bits must be an integer in [{MIN_BITS}, {MAX_BITS}], got {bits!r} "
                              "(8 for int8 TFLite, 4 for the int4 weight recipes).")
    _positive_int(iterations, "iterations", fn)
    _positive_int(batch_size, "batch_size", fn)
    if batches is not None:
        _positive_int(batches, "batches", fn)
    if not (isinstance(reg_weight, (int, float)) and np.isfinite(reg_weight) and reg_weight >= 0):
        raise KslimValueError(f"{fn}: reg_weight must be a finite number >= 0, got {reg_weight!r}.")
    if not (isinstance(beta, (tuple, list)) and len(beta) == 2
            and all(isinstance(b, (int, float)) and np.isfinite(b) for b in beta) and beta[0] >= beta[1] > 0):
        raise KslimValueError(f"{fn}: beta must be (start, end) with start >= end > 0 (the paper's (20, 2)), "
                              f"got {beta!r}.")
    if not (isinstance(warm_start, (int, float)) and 0.0 <= warm_start < 1.0):
        raise KslimValueError(f"{fn}: warm_start must be a fraction of the iterations in [0, 1), got {warm_start!r}.")
    if not (isinstance(lr, (int, float)) and np.isfinite(lr) and lr > 0):
        raise KslimValueError(f"{fn}: lr must be a positive number, got {lr!r}.")
    if is_quantized(model):
        raise ModelError(f"{fn}: model {model.name!r} is already quantization-aware; AdaRound rounds the float "
                         "model (pass the model before quant_aware).")
    layers = kg.leaf_layers(model)[0]
    skip = [skip] if isinstance(skip, str) else list(skip or ())
    known = set(layers) | {layer.name for layer in layers.values()}
    for name in skip:
        if name not in known:
            raise KslimValueError(f"{fn}: skip names {name!r}, which model {model.name!r} does not have; "
                                  f"layers: {', '.join(sorted(layers))}.")
    return set(skip)


# ------------------------------------------------------------------------------------------ one layer
class _Inputs:
    """Records every input ``layer`` receives while the model runs (numpy, float32)."""

    def __init__(self, layer):
        self.layer, self.seen = layer, []

    def __call__(self, x, *args, **kwargs):
        from keras import ops

        self.seen.append(np.asarray(ops.convert_to_numpy(ops.cast(x, "float32"))))
        return self.layer(x, *args, **kwargs)


def _probe(layer, input_shape):
    """A bias-free, linear copy of ``layer``: ``probe.stateless_call([kernel], [], x)`` is ``conv(x, kernel)``."""
    cfg = {**layer.get_config(), "activation": "linear", "use_bias": False, "name": f"{layer.name}_adaround",
           "dtype": "float32"}
    probe = type(layer).from_config(cfg)
    probe.build(tuple(input_shape))
    return probe


def _round_layer(layer, kind, x, per_channel, bits, iterations, batch_size, reg_weight, beta, warm_start, lr,
                 seed):
    """Learn the rounding of ``layer``'s kernel on inputs ``x`` (numpy); returns ``(codes, scale, stats)``."""
    import keras
    import tensorflow as tf

    from kslim.quant import ops
    from kslim.quant.bias_correction import _CHANNEL_AXES

    kernel = tf.constant(np.asarray(layer.get_weights()[0], np.float32))
    scale, floor, v0, anchor = ops.adaround_grid(kernel, bits, per_channel, _CHANNEL_AXES[kind] if per_channel else None)
    probe = _probe(layer, (None,) + x.shape[1:])
    v = keras.Variable(v0, name=f"{layer.name}_adaround_v")
    optimizer = keras.optimizers.Adam(learning_rate=lr)
    optimizer.build([v])
    data = tf.constant(x)
    n = len(x)
    take = min(int(batch_size), n)

    def error(codes, inputs):
        out, _ = probe.stateless_call([kernel - codes * scale], [], inputs)
        return out

    nearest = ops.nearest_codes(kernel, scale, bits)
    mse_nearest = _mse(error, nearest, data)
    size = float(np.prod(kernel.shape))

    @tf.function(reduce_retracing=True)
    def step(index, b, on):
        with tf.GradientTape() as tape:
            err = error(ops.adaround_codes(kernel, floor, v, anchor, bits), tf.gather(data, index))
            recon = tf.reduce_mean(tf.square(err)) / max(mse_nearest, 1e-30)
            loss = recon + on * reg_weight * ops.rounding_regularizer(v, b) / size
        optimizer.apply_gradients([(tape.gradient(loss, v), v)])

    rng = np.random.default_rng(seed)
    for i in range(int(iterations)):
        b, on = ops.adaround_beta(i, iterations, beta, warm_start)
        step(tf.constant(rng.choice(n, take, replace=False)), tf.constant(b, tf.float32), tf.constant(on, tf.float32))

    hard = ops.adaround_codes(kernel, floor, tf.convert_to_tensor(v), anchor, bits, hard=True)
    mse_adaround = _mse(error, hard, data)
    if mse_adaround > mse_nearest:  # learned rounding worse than nearest on the data: keep nearest
        hard, mse_adaround = nearest, mse_nearest
    flipped = float(np.mean(np.asarray(hard) != np.asarray(nearest)))
    return np.asarray(hard), np.asarray(scale), (flipped, mse_nearest, mse_adaround)


def _mse(error, codes, data, chunk=256):
    """Mean of ``error(codes, x)^2`` over all of ``data`` (in chunks of ``chunk`` samples)."""
    total, count = 0.0, 0
    for start in range(0, int(data.shape[0]), chunk):
        err = np.asarray(error(codes, data[start:start + chunk]), np.float64)
        total += float(np.sum(err * err))
        count += err.size
    return total / max(count, 1)


# ------------------------------------------------------------------------------------------ the model
def adaround(model, data, weight_quantize_type="channel_wise_abs_max", bits=8, iterations=500, batches=None,
             batch_size=32, reg_weight=100.0, beta=(20, 2), warm_start=0.2, lr=1e-2, skip=None, seed=0):
    """A float copy of ``model`` whose Conv/Dense/DepthwiseConv2D kernels are rounded by AdaRound.

    Args:
        model: a built float ``keras.Model`` (BatchNormalization is folded into the copy).
        data: calibration inputs (as for :func:`kslim.quant.quant_post_static`): a few hundred training
            inputs (AIMET uses 500-1000).
        weight_quantize_type: the grid: ``"channel_wise_abs_max"`` (per output channel,
            ``quant_post_static``'s default) or ``"abs_max"`` (per tensor).
        bits: weight bits: 8 for int8 TFLite, 4 for LiteRT's int4 per-channel weight recipes (see the
            module's notes).
        iterations: optimisation steps per layer (the paper and AIMET use 10000 with ``lr=1e-3``; the
            default 500 with ``lr=1e-2`` gets most of the gain in a fraction of the time on CPU).
        batches: use at most this many calibration batches (``None``: all the data).
        batch_size: samples per forward pass and per optimisation step.
        reg_weight: weight of the rounding regulariser. Unlike the paper's lambda (0.01 against a raw
            squared error), kslim divides the reconstruction error by round-to-nearest's and averages the
            regulariser over the weights, so the balance does not depend on the layer's scale (with the
            raw form, int8 layers of small outputs never left nearest rounding in our tests).
        beta: ``(start, end)`` of the regulariser's annealed exponent.
        warm_start: fraction of the iterations before the regulariser starts.
        lr: Adam's learning rate on the rounding variables.
        skip: names (or paths) of layers to leave float (the converter rounds them to nearest).
        seed: seed of the minibatch draws (the result is deterministic for a given seed).

    Returns:
        :class:`AdaRoundResult`; pass ``result.model`` to ``quant_post_static`` with the same
        ``weight_quantize_type``.

    Raises:
        KslimTypeError: ``model`` is not a ``keras.Model``.
        KslimValueError: a bad parameter, a ``skip`` name the model does not have, or data that does not
            match the model.
        ModelError: the model is quantization-aware, or has no Conv/Dense/DepthwiseConv2D layer to round.
    """
    from kslim.graph import keras_graph as kg
    from kslim.quant.bias_correction import _CHANNEL_AXES
    from kslim.quant.bn_reestimate import data_batches, run_hooked
    from kslim.quant.fold import fold_batch_norm, fold_kind

    fn = "adaround()"
    skip = _check_args(model, weight_quantize_type, bits, iterations, batches, batch_size, reg_weight, beta,
                       warm_start, lr, skip, fn)
    targets, skipped = {}, []
    for path, layer in kg.leaf_layers(model)[0].items():
        kind = fold_kind(layer)
        if kind is None:
            continue
        if path in skip or layer.name in skip:
            skipped.append((path, "skip= names it"))
        elif kind not in _CHANNEL_AXES or getattr(layer, "kernel", None) is None:
            skipped.append((path, f"{type(layer).__name__}: kslim does not simulate its int8 kernel"))
        else:
            targets[path] = kind
    if not targets:
        why = "; ".join(f"{p}: {r}" for p, r in skipped[:6])
        raise ModelError(f"{fn}: model {model.name!r} has no Conv/Dense/DepthwiseConv2D layer to round"
                         f"{' (' + why + ')' if why else ''}.")
    data = data_batches(model, data, batch_size, batches, fn="adaround")
    work = fold_batch_norm(model)
    layers = kg.leaf_layers(work)[0]
    per_channel = weight_quantize_type == "channel_wise_abs_max"
    rounded = []
    for path, kind in targets.items():
        layer = layers[path]
        recorder = _Inputs(layer)
        for batch in data:
            run_hooked(work, batch, lambda op, p: recorder if p == path else None)
        if not recorder.seen:
            skipped.append((path, "not reached by the data (not on the path to an output)"))
            continue
        x = np.concatenate(recorder.seen, axis=0)
        codes, scale, (flipped, mse_nearest, mse_adaround) = _round_layer(
            layer, kind, x, per_channel, int(bits), iterations, batch_size, float(reg_weight),
            (float(beta[0]), float(beta[1])), float(warm_start), float(lr), seed)
        layer.kernel.assign((codes * scale).astype(layer.kernel.dtype))
        channels = int(np.prod([layer.kernel.shape[a] for a in (_CHANNEL_AXES[kind] or (-1,))]))
        rounded.append(AdaRoundedLayer(path, channels, flipped, mse_nearest, mse_adaround, int(len(x))))
    samples = int(sum(len(b[0]) for b in data))
    return AdaRoundResult(work, tuple(rounded), tuple(skipped), int(bits), weight_quantize_type, samples,
                          int(iterations))


__all__ = ["adaround", "AdaRoundResult", "AdaRoundedLayer"]
