"""Low-bit QAT quantizers (NNI's): LSQ, DoReFa and BNN, next to kslim's default range quantizer.

``QuantConfig(weight_quantizer=..., activation_quantizer=...)`` picks the algorithm of the weights and
of the activations by name; :func:`get` returns the registered :class:`Quantizer` of a name
(:data:`QUANTIZERS` is the literal list the YAML schema reads). The maths are in
:mod:`kslim.quant.ops`, the state (learned steps) in the layers of :mod:`kslim.quant.layers`.

=========  ==================================================  =====================================
name       weights                                             activations
=========  ==================================================  =====================================
default    symmetric ``max|w|`` grid (``weight_quantize_type``)  learned ``[min, max]`` (EMA / batch)
lsq        learned step per channel or per kernel (Esser et    learned step per tensor, initialised
           al., 2020): ``g = 1/sqrt(N Qp)``, init ``2 mean|w|   from the first training batch; signed
           / sqrt(Qp)`` (``lsq_init="paper"``; ``"max"`` and    if that batch has negatives
           ``"mse"`` start from a calibrated grid, for
           fine-tuning a trained model); codes ``-Qp..Qp``
dorefa     ``tanh(w / max|w|)`` normalised to [0, 1], k bits,   clipped to [0, 1], k bits (Zhou et
           back to [-1, 1] (Zhou et al., 2016), ``* max|w|``    al., 2016); model inputs and outputs
                                                               keep the default learned range
bnn        ``alpha * sign(w)``, ``alpha = mean|w|`` (needs       ``sign`` of the (8-bit) input, +-1;
           ``weight_bits=1``)                                  needs ``activation_bits=1``; model
                                                               inputs and outputs keep the default
=========  ==================================================  =====================================

What the ``.tflite`` holds (:func:`kslim.quant.convert`): TFLite computes in int8, so every low-bit
kernel is stored exactly, on an INT4 or int8 tensor (the Keras QAT model and the ``.tflite`` agree):

* Conv2D, Conv1D, DepthwiseConv2D (and SeparableConv2D's two convs) and per-tensor Dense keep the
  integer codes of the low-bit grid in their kernel, scale = the step, through a FakeQuant of
  :meth:`Quantizer.code_bits` (:func:`kslim.quant.ops.on_code_grid`): codes up to +-7 are stored by
  the converter as a packed **INT4** tensor (as it does for kslim's default 4-bit conv kernels), larger
  ones as int8: LSQ ``-Qp..Qp`` (INT4 up to 4 bits), DoReFa the odd codes ``-(2^k-1)..2^k-1`` (INT4 at
  2 bits; ``+-15`` at 4 bits, 16 levels but not a symmetric 4-bit grid: int8), BNN ``+-1`` (INT4: TFLite
  has no 1-bit tensors);
* a Dense kernel quantized per channel cannot carry a per-channel FakeQuant through the converter (see
  :func:`kslim.quant.ops.fake_quant_weight_rounded`): the converter re-quantizes it on the int8 grid of
  each unit's ``max|w|``. The layer computes that re-rounding itself in training, so the ``.tflite``
  still equals the Keras model; the 2^k levels stay distinct but sit on that int8 grid (within
  ``max|w| / 254`` of the low-bit grid; binary weights exactly);
* activations: LSQ and DoReFa at 8 bits are exact int8 tensors; below 8 bits they are exported on the
  8-bit grid of their range (TFLite has no sub-8-bit activation kernels), as kslim's default; a BNN
  activation is ``GREATER_EQUAL`` + ``SELECT`` with int8 tensors, its output ``+-1`` exact.

So only the kernels stored as INT4 are smaller in the file; :func:`lowbit_size_bytes` states the size
the trained weights need at their own bit width (1 bit per binary weight).

Layers without a low-bit twin (Conv2DTranspose, EinsumDense, Embedding, the normalisations, Rescaling)
keep kslim's default quantizer at ``weight_bits`` (8 bits when ``weight_bits`` is 1).

Example:
    >>> from kslim.quant import lowbit
    >>> lowbit.get("lsq").weight_bits, lowbit.get("bnn").weight_bits
    ((2, 8), (1, 1))
    >>> sorted(lowbit.QUANTIZERS) == sorted(lowbit.registered())
    True
"""

from dataclasses import dataclass

from kslim.errors import KslimValueError

#: the registered quantizer names, a literal (the YAML schema reads it without importing TensorFlow)
QUANTIZERS = ("default", "lsq", "dorefa", "bnn")
#: how LSQ initialises a weight step (:func:`kslim.quant.ops.lsq_init_step`); "paper" is the default
LSQ_INITS = ("paper", "max", "mse")
#: ``name: ((weight bits lo, hi), (activation bits lo, hi))`` each takes, a literal (the YAML check reads it)
BITS = {"default": ((2, 8), (2, 8)), "lsq": ((2, 8), (2, 8)), "dorefa": ((2, 7), (2, 8)), "bnn": ((1, 1), (1, 1))}


@dataclass(frozen=True)
class Quantizer:
    """One low-bit QAT algorithm: its name, the bit widths it takes for weights and activations
    (inclusive ranges) and whether its weights keep a learned step (a trainable variable)."""

    name: str
    weight_bits: tuple
    activation_bits: tuple
    learned_step: bool
    summary: str

    def weight(self, kernel, bits, per_channel, step=None):
        """``(values, step)`` of ``kernel`` (output channels last) quantized by this algorithm
        (:mod:`kslim.quant.ops`); not for ``"default"``."""
        from kslim.quant import ops

        if self.name == "lsq":
            return ops.lsq_weight(kernel, step, bits, per_channel)
        if self.name == "dorefa":
            return ops.dorefa_weight(kernel, bits, per_channel)
        if self.name == "bnn":
            return ops.bnn_weight(kernel, per_channel)
        raise KslimValueError(f"quantizer {self.name!r} has no low-bit weight function.")

    def code_bits(self, bits):
        """Bits of the kernel that holds this algorithm's weight codes at ``bits`` in the ``.tflite``: 4
        (the converter's packed INT4) when the largest code is at most 7, else 8. The largest code is LSQ's
        ``2^(bits-1) - 1``, DoReFa's ``2^bits - 1`` (odd codes), BNN's 1. (The converter puts a 2- or
        3-bit FakeQuant on its 4-bit grid anyway, rescaling the codes.)"""
        top = {"dorefa": 2 ** int(bits) - 1, "bnn": 1}.get(self.name, 2 ** (int(bits) - 1) - 1)
        return 4 if top <= 7 else 8

    def check_bits(self, bits, field, kind):
        """``bits`` as int, or :class:`~kslim.errors.KslimValueError` naming ``field`` if this algorithm
        does not take it (``kind``: ``"weight"`` or ``"activation"``)."""
        lo, hi = self.weight_bits if kind == "weight" else self.activation_bits
        if isinstance(bits, bool) or not isinstance(bits, (int, float)) or not float(bits).is_integer() \
                or not lo <= int(bits) <= hi:
            span = f"{lo}" if lo == hi else f"{lo}..{hi}"
            why = {("bnn", "weight"): " (binary weights)", ("bnn", "activation"): " (binary activations)",
                   ("dorefa", "weight"): " (its 2^k odd codes must fit the int8 kernel)"}.get((self.name, kind), "")
            raise KslimValueError(f"{field} must be an integer in {span} for {kind}_quantizer={self.name!r}{why}, "
                                  f"got {bits!r}.")
        return int(bits)


_REGISTRY = {name: Quantizer(name, *BITS[name], name == "lsq", summary) for name, summary in (
    ("default", "kslim's range quantizer (weight/activation_quantize_type)"),
    ("lsq", "learned step size (Esser et al., 2020)"),
    ("dorefa", "DoReFa-Net (Zhou et al., 2016)"),
    ("bnn", "binary weights / activations (Courbariaux, Hubara et al., 2016)"),
)}
assert tuple(_REGISTRY) == QUANTIZERS == tuple(BITS)


def registered():
    """The names :func:`get` accepts."""
    return tuple(_REGISTRY)


def get(name):
    """The :class:`Quantizer` registered as ``name`` (like ``keras.quantizers.get``); an unknown name
    raises :class:`~kslim.errors.KslimValueError` listing the known ones."""
    if isinstance(name, Quantizer):
        return name
    if name not in _REGISTRY:
        raise KslimValueError(f"unknown quantizer {name!r}; known: {list(_REGISTRY)}.")
    return _REGISTRY[name]


def lowbit_size_bytes(qat_model):
    """Bytes the weights of a QAT model need at their own bit widths: every quantized kernel at its
    ``weight_bits`` (1 bit per binary weight), every other parameter (biases, steps, per-channel scales,
    float layers; activation ranges excluded) at 32 bits. The ``.tflite`` stores 4-bit conv kernels as
    INT4 and the others on int8 (see the module docstring); this is the size a packed low-bit format
    would need.

    Example:
        >>> import keras
        >>> from kslim.quant import quant_aware
        >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, use_bias=False)])
        >>> lowbit_size_bytes(quant_aware(m, weight_quantizer="bnn", weight_bits=1))   # 128 weights at 1 bit
        16.0
    """
    import keras
    import numpy as np

    from kslim.quant.layers import QUANT_LAYERS, ActivationQuantizer
    from kslim.quant.qat import _all_layers

    layers = [l for l in _all_layers(qat_model) if not isinstance(l, keras.Model)]
    ranges = {id(v) for l in layers if isinstance(l, ActivationQuantizer) for v in l.weights}
    bits = 0
    for layer in layers:
        if isinstance(layer, ActivationQuantizer):
            continue
        quantized = [getattr(layer, a, None) for a in ("kernel", "embeddings")] if isinstance(layer, QUANT_LAYERS) else []
        for w in layer.weights:
            if id(w) not in ranges:
                low = any(w is k for k in quantized if k is not None)
                bits += int(np.prod(w.shape)) * (layer.weight_bits if low else 32)
    return bits / 8.0
