"""Bias correction of the float model for int8 weight rounding (Nagel et al., 2019; AIMET ``correct_bias``).

Rounding a kernel ``W`` to its int8 grid ``Wq`` shifts the mean of every output channel by
``E[(Wq - W) x]``: with inputs that are not centred (ReLU outputs never are) the errors of the
channel's weights do not cancel, and the shift adds up layer after layer. :func:`correct_weight_bias`
estimates that shift on calibration data (the *empirical* variant of the paper: ``E[x]`` from data
rather than from the BatchNorm statistics) and subtracts it from the bias::

    bias' = bias - E[conv(x, Wq - W)]     (mean over samples and positions, per output channel)

where ``x`` is the layer's input in the float model and ``Wq`` is exactly the grid the TFLite converter
puts the kernel on: symmetric, ``scale = max|w| / 127`` per output channel
(``weight_quantize_type="channel_wise_abs_max"``) or per tensor (``"abs_max"``), computed by
:func:`kslim.quant.ops.fake_quant_weight_rounded`. The convolution with ``Wq - W`` is run by a copy
of the layer itself, so padding, strides and depthwise multipliers count as they do in the model.
BatchNormalization is folded first (:func:`kslim.quant.fold_batch_norm`), as the converter folds
it, so the kernel whose rounding is simulated is the one the ``.tflite`` holds.

The result is a float Keras model to pass to :func:`kslim.quant.quant_post_static` (usually after
:func:`kslim.quant.equalize_cross_layer`). It corrects the weight rounding only; the ``.tflite``-side
``quant_post_static(bias_correction=True)`` instead measures each int8 layer's output error against
the float model (weights and activations) and rewrites the int32 biases of the flatbuffer. Both can
be used together.

Example:
    >>> import keras, numpy as np
    >>> from kslim.quant import correct_weight_bias
    >>> m = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 3, name="conv")])
    >>> x = np.random.default_rng(0).uniform(size=(16, 6, 6, 2)).astype("float32")
    >>> result = correct_weight_bias(m, x, weight_quantize_type="abs_max")
    >>> [c.layer for c in result.layers]
    ['conv']
    >>> tuple(result.model.get_layer("conv").bias.shape)
    (3,)
"""

from dataclasses import dataclass

import numpy as np

from kslim.errors import KslimValueError, ModelError
from kslim.validation import check_model

#: the kernel axes that hold the output channels, by :func:`kslim.quant.fold.fold_kind`
_CHANNEL_AXES = {"kernel": None, "depthwise": (-2, -1), "transpose": (-2,)}


@dataclass(frozen=True)
class CorrectedBias:
    """One corrected layer: ``layer`` (path), ``channels``, and the largest and mean ``|shift|`` of
    its bias (``max_shift``, ``mean_shift``, in the bias' own units)."""

    layer: str
    channels: int
    max_shift: float
    mean_shift: float


@dataclass(frozen=True)
class BiasCorrectionResult:
    """What :func:`correct_weight_bias` did.

    Attributes:
        model: the corrected float ``keras.Model`` (BatchNorm folded; a new model).
        layers: :class:`CorrectedBias` per corrected layer, in graph order.
        skipped: ``(path, reason)`` of the conv/dense layers left as they were.
        weight_quantize_type: the weight grid simulated.
        samples: calibration samples used.
    """

    model: object
    layers: tuple
    skipped: tuple
    weight_quantize_type: str
    samples: int

    def to_dict(self):
        """Everything but the model (JSON-ready)."""
        return {"layers": [c.__dict__ for c in self.layers], "skipped": [list(s) for s in self.skipped],
                "weight_quantize_type": self.weight_quantize_type, "samples": self.samples}


def quantized_kernel(layer, weight_quantize_type="channel_wise_abs_max"):
    """The kernel of ``layer`` on the int8 grid the TFLite converter uses (numpy), or None when kslim
    does not know where its output channels are (see :func:`kslim.quant.fold.fold_kind`).

    Example:
        >>> import keras, numpy as np
        >>> d = keras.layers.Dense(2)
        >>> d.build((None, 3))
        >>> q = quantized_kernel(d)
        >>> bool(np.allclose(q, d.get_weights()[0], atol=float(np.abs(d.get_weights()[0]).max()) / 254 + 1e-7))
        True
    """
    from keras import ops as kops

    from kslim.quant import ops
    from kslim.quant.fold import fold_kind

    kind = fold_kind(layer)
    if kind not in _CHANNEL_AXES or getattr(layer, "kernel", None) is None:
        return None
    per_channel = weight_quantize_type == "channel_wise_abs_max"
    q = ops.fake_quant_weight_rounded(kops.convert_to_tensor(layer.kernel), 8, per_channel,
                                      _CHANNEL_AXES[kind] if per_channel else None)
    return np.asarray(kops.convert_to_numpy(q))


def simulate_weight_quant(model, weight_quantize_type="channel_wise_abs_max"):
    """A copy of ``model`` whose conv/dense kernels hold their int8-rounded values (:func:`quantized_kernel`),
    float otherwise: the weight error of the converted model, seen from Keras.

    Example:
        >>> import keras, numpy as np
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="fc")])
        >>> w = simulate_weight_quant(m).get_layer("fc").get_weights()[0]
        >>> codes = w / (np.abs(w).max(axis=0) / 127)     # per output channel: integers in [-127, 127]
        >>> bool(np.allclose(codes, np.round(codes), atol=1e-3))
        True
    """
    import keras

    from kslim.graph import keras_graph as kg

    check_model(model, "simulate_weight_quant()")
    _check_type(weight_quantize_type, "simulate_weight_quant()")
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for layer in kg.leaf_layers(copy)[0].values():
        q = quantized_kernel(layer, weight_quantize_type)
        if q is not None:
            layer.kernel.assign(q)
    return copy


def _check_type(weight_quantize_type, fn):
    from kslim.quant.config import WEIGHT_QUANTIZE_TYPES

    if weight_quantize_type not in WEIGHT_QUANTIZE_TYPES:
        raise KslimValueError(f"{fn}: weight_quantize_type must be one of {WEIGHT_QUANTIZE_TYPES}, "
                              f"got {weight_quantize_type!r}.")


class _ErrorMean:
    """Accumulates ``sum conv(x, Wq - W)`` per output channel of one layer while the model runs."""

    def __init__(self, layer, delta):
        self.layer, self.delta = layer, delta
        self.probe = None
        self.sum, self.count = 0.0, 0

    def __call__(self, x, *args, **kwargs):
        from keras import ops

        if self.probe is None:
            cfg = {**self.layer.get_config(), "activation": "linear", "use_bias": False,
                   "name": f"{self.layer.name}_rounding_error"}
            self.probe = type(self.layer).from_config(cfg)
            self.probe.build(tuple(x.shape))
            self.probe.set_weights([self.delta.astype(self.probe.get_weights()[0].dtype)])
        err = self.probe(x)
        axes = tuple(range(len(err.shape) - 1))
        self.sum = self.sum + np.asarray(ops.convert_to_numpy(ops.sum(ops.cast(err, "float32"), axis=axes)), np.float64)
        self.count += int(np.prod([int(err.shape[i]) for i in axes]))
        return self.layer(x, *args, **kwargs)


def correct_weight_bias(model, data, weight_quantize_type="channel_wise_abs_max", batches=None, batch_size=32):
    """A float copy of ``model`` whose biases compensate the mean error of int8 weight rounding.

    Args:
        model: a built float ``keras.Model`` (BatchNormalization is folded into the copy).
        data: calibration inputs (as for :func:`kslim.quant.quant_post_static`); the same few hundred
            images used for calibration are enough.
        weight_quantize_type: the weight grid the model will get: ``"channel_wise_abs_max"`` (per output
            channel, ``quant_post_static``'s default) or ``"abs_max"`` (per tensor).
        batches: use at most this many batches (``None``: all the data).
        batch_size: samples per forward pass.

    Returns:
        :class:`BiasCorrectionResult`; pass ``result.model`` to ``quant_post_static`` with the same
        ``weight_quantize_type``.

    Raises:
        KslimTypeError: ``model`` is not a ``keras.Model``.
        KslimValueError: bad ``weight_quantize_type``, or data that does not match the model.
        ModelError: the model is quantization-aware, or has no conv/dense layer with a bias to correct.
    """
    from kslim.graph import keras_graph as kg
    from kslim.quant.bn_reestimate import data_batches, run_hooked
    from kslim.quant.fold import fold_batch_norm, fold_kind
    from kslim.quant.qat import is_quantized

    fn = "correct_weight_bias()"
    check_model(model, fn)
    _check_type(weight_quantize_type, fn)
    if is_quantized(model):
        raise ModelError(f"{fn}: model {model.name!r} is already quantization-aware; correct the float model.")
    data = data_batches(model, data, batch_size, batches, fn="correct_weight_bias")
    work = fold_batch_norm(model)
    means, skipped = {}, []
    for path, layer in kg.leaf_layers(work)[0].items():
        kind = fold_kind(layer)
        if kind is None:
            continue
        q = quantized_kernel(layer, weight_quantize_type)
        if q is None:
            skipped.append((path, f"{type(layer).__name__}: kslim does not simulate its int8 kernel"))
        elif getattr(layer, "bias", None) is None:
            skipped.append((path, "no bias to correct (use_bias=False and no BatchNormalization after it)"))
        else:
            means[path] = _ErrorMean(layer, q.astype(np.float64) - np.asarray(layer.get_weights()[0], np.float64))
    if not means:
        why = "; ".join(f"{p}: {r}" for p, r in skipped[:6])
        raise ModelError(f"{fn}: model {model.name!r} has no Conv/Dense/DepthwiseConv2D layer with a bias to "
                         f"correct{' (' + why + ')' if why else ''}.")
    for batch in data:
        run_hooked(work, batch, lambda op, path: means.get(path))
    corrected = []
    for path, acc in means.items():
        if not acc.count:
            skipped.append((path, "not reached by the data (not on the path to an output)"))
            continue
        shift = acc.sum / acc.count
        bias = acc.layer.bias
        bias.assign((np.asarray(bias, np.float64) - shift).astype(bias.dtype))
        corrected.append(CorrectedBias(path, int(shift.size), float(np.max(np.abs(shift))),
                                       float(np.mean(np.abs(shift)))))
    samples = int(sum(len(b[0]) for b in data))
    return BiasCorrectionResult(work, tuple(corrected), tuple(skipped), weight_quantize_type, samples)


__all__ = ["correct_weight_bias", "BiasCorrectionResult", "CorrectedBias", "quantized_kernel",
           "simulate_weight_quant"]
