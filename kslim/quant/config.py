"""``QuantConfig``: what quantization-aware training quantizes, and how.

Field names follow PaddleSlim's ``quant_aware`` config, which the issue asks for. Every field is
validated when the config is built; a bad value raises :class:`~kslim.errors.ConfigError` whose
``path`` is the field name and whose message lists the allowed values.

Example:
    >>> cfg = QuantConfig(weight_bits=4, skip_pattern=["logits"])
    >>> cfg.weight_quantize_type
    'channel_wise_abs_max'
    >>> QuantConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

import dataclasses
from dataclasses import dataclass

from kslim.errors import ConfigError, KslimValueError
from kslim.quant import lowbit, ops
from kslim.validation import renamed, warn_renamed

WEIGHT_QUANTIZE_TYPES = ("abs_max", "channel_wise_abs_max")
ACTIVATION_QUANTIZE_TYPES = ("abs_max", "moving_average_abs_max")
QUANTIZABLE_LAYER_TYPES = (
    "Conv1D", "Conv2D", "Conv2DTranspose", "DepthwiseConv2D", "SeparableConv2D", "Dense", "EinsumDense",
    "Embedding", "MultiHeadAttention", "BatchNormalization", "LayerNormalization",
    "Rescaling", "LSTM", "GRU", "SimpleRNN", "Bidirectional",
)

# Layer types with weights that QAT leaves float, and why (shown in errors and in kslim_unquantized).
NOT_QUANTIZABLE = {
    "Conv3D": "TFLite has no int8 CONV_3D kernel (it runs in float32 only)",
    "Conv3DTranspose": "TFLite has no int8 CONV_3D_TRANSPOSE kernel (it runs in float32 only)",
    "DepthwiseConv1D": "kslim has no quantized DepthwiseConv1D yet: its weights stay float",
    "SeparableConv1D": "kslim has no quantized SeparableConv1D yet: its weights stay float",
    "GroupNormalization": "kslim has no quantized GroupNormalization yet: its mean/variance ops stay float",
    "RMSNormalization": "kslim has no quantized RMSNormalization yet: its statistics stay float",
    "ConvLSTM2D": "recurrent layer: kslim unrolls LSTM, GRU and SimpleRNN only (of a fixed sequence length)",
}

# Layers whose output has the range of their input (TFLite requires the same scale on both sides):
# no quantizer is put after them.
DEFAULT_PASSTHROUGH_LAYER_TYPES = (
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "AveragePooling1D", "AveragePooling2D", "RepeatVector", "Cropping3D", "ZeroPadding3D", "UpSampling3D",
    "Flatten", "Reshape", "Permute", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
    "GaussianDropout", "GaussianNoise", "AlphaDropout", "ZeroPadding1D", "ZeroPadding2D",
    "Cropping1D", "Cropping2D", "UpSampling1D", "UpSampling2D", "Identity", "InputLayer",
)


def check_bits(bits, field="bits"):
    """Validate a bit width (``2..8``, an int or an integral float); returns it as int."""
    if isinstance(bits, bool) or not isinstance(bits, (int,)) and not (
            isinstance(bits, float) and float(bits).is_integer()):
        raise KslimValueError(f"{field} must be an integer in {ops.MIN_BITS}..{ops.MAX_BITS}, got {bits!r}.")
    bits = int(bits)
    if not ops.MIN_BITS <= bits <= ops.MAX_BITS:
        raise KslimValueError(
            f"{field} must be in {ops.MIN_BITS}..{ops.MAX_BITS} (int8 kernels store at most 8 bits), got {bits}."
        )
    return bits


@dataclass
class QuantConfig:
    """Settings of :func:`kslim.quant.quant_aware`.

    Attributes:
        weight_quantize_type: ``"channel_wise_abs_max"`` (one symmetric scale per output channel,
            default) or ``"abs_max"`` (one scale per kernel).
        activation_quantize_type: ``"moving_average_abs_max"`` (EMA of the batch ranges during
            training, frozen at inference; default) or ``"abs_max"`` (range of the current batch during
            training; the last one is kept for inference and export).
        weight_bits, activation_bits: 2..8 (default 8); 1 with the ``"bnn"`` quantizer (and only
            then), 2..7 for DoReFa weights. Below 8 bits the values are simulated on the ``bits`` grid;
            in the ``.tflite`` the converter stores conv/depthwise kernels whose codes fit +-7 as packed
            INT4 tensors and the others on int8 kernels (the trained values exactly, either way).
        weight_quantizer, activation_quantizer: the QAT algorithm, one of
            :data:`kslim.quant.lowbit.QUANTIZERS`: ``"default"`` (kslim's range quantizers above),
            ``"lsq"`` (learned step size), ``"dorefa"``, ``"bnn"`` (binary); see
            :mod:`kslim.quant.lowbit` for each one's maths and what the ``.tflite`` holds.
        lsq_init: how LSQ initialises the weight steps, one of :data:`kslim.quant.lowbit.LSQ_INITS`:
            ``"paper"`` (``2 mean|w| / sqrt(Qp)``, default), ``"max"`` (``max|w| / Qp``), ``"mse"`` (the
            least-squares step); see :func:`kslim.quant.ops.lsq_init_step`.
        moving_rate: EMA decay of ``moving_average_abs_max`` (default 0.9).
        quantizable_layer_type: layer class names to quantize, a subset of
            :data:`QUANTIZABLE_LAYER_TYPES` (default: all of them: Conv1D, Conv2D, Conv2DTranspose,
            DepthwiseConv2D, SeparableConv2D, Dense, EinsumDense, Embedding, MultiHeadAttention, and
            BatchNormalization -- the BNs that cannot be folded into a conv/dense).
        skip: layer paths (``"base/conv1"``; a bare name unique at every depth is accepted) that
            stay float; naming a nested model keeps all its layers float. Every name must exist.
            (``skip_layers`` is its kslim 0.1 name; ``skip`` is also the name of the pruners' and of
            :func:`~kslim.quant.quant_post_dynamic`'s option.)
        skip_pattern: layers whose path (``"outer/inner"`` inside nested models) CONTAINS one of
            these strings stay float (``not_quant_pattern``, PaddleSlim's name, is its kslim 0.1 name).
        only_layers: if given, paths of the only layers (or nested models) to quantize (each layer must
            be of a quantizable type, else :class:`~kslim.errors.UnsupportedLayerError`).
        quantize_inputs: put an :class:`~kslim.quant.ActivationQuantizer` on each model input
            (needed for an int8 input; default True).
        passthrough_layer_type: layer class names after which no activation quantizer is put because
            their int8 TFLite kernel keeps the scale of their input (max and average pooling, reshape,
            padding, dropout ...). Every other layer's output (conv/dense after its fused ReLU, Add,
            Concatenate, global average pooling, other activations ...) gets one, so the converted
            graph has no float island.
        activation_symmetric: symmetric activation ranges ``[-a, a]`` instead of ``[min, max]``.
        fold_batch_norm: fold each BatchNormalization that directly follows a quantized conv/dense
            into its kernel and bias before training (default True); the others become int8
            per-channel affines (``QuantBatchNormalization``).
    """

    weight_quantize_type: str = "channel_wise_abs_max"
    activation_quantize_type: str = "moving_average_abs_max"
    weight_bits: int = 8
    activation_bits: int = 8
    weight_quantizer: str = "default"
    activation_quantizer: str = "default"
    lsq_init: str = "paper"
    moving_rate: float = 0.9
    quantizable_layer_type: tuple = QUANTIZABLE_LAYER_TYPES
    skip: tuple = ()
    skip_pattern: tuple = ()
    only_layers: tuple = None
    quantize_inputs: bool = True
    passthrough_layer_type: tuple = DEFAULT_PASSTHROUGH_LAYER_TYPES
    activation_symmetric: bool = False
    fold_batch_norm: bool = True

    def __post_init__(self):
        self._check_choice("weight_quantize_type", WEIGHT_QUANTIZE_TYPES)
        self._check_choice("activation_quantize_type", ACTIVATION_QUANTIZE_TYPES)
        self._check_choice("weight_quantizer", lowbit.QUANTIZERS)
        self._check_choice("activation_quantizer", lowbit.QUANTIZERS)
        self._check_choice("lsq_init", lowbit.LSQ_INITS)
        for kind in ("weight", "activation"):
            name, algo = f"{kind}_bits", lowbit.get(getattr(self, f"{kind}_quantizer"))
            try:
                setattr(self, name, algo.check_bits(getattr(self, name), name, kind) if algo.name != "default"
                        else check_bits(getattr(self, name), name))
            except KslimValueError as e:  # same rule as the layers; ConfigError with the field as path
                raise ConfigError(str(e).removeprefix(f"{name} "), path=name) from None
        try:
            rate = float(self.moving_rate)
        except (TypeError, ValueError):
            rate = None
        if rate is None or not 0.0 <= rate < 1.0 or isinstance(self.moving_rate, bool):
            raise ConfigError(f"must be a number in [0, 1), got {self.moving_rate!r}.", path="moving_rate")
        self.moving_rate = rate
        self.quantizable_layer_type = self._names("quantizable_layer_type")
        for t in self.quantizable_layer_type:
            if t not in QUANTIZABLE_LAYER_TYPES:
                why = f" ({NOT_QUANTIZABLE[t]})" if t in NOT_QUANTIZABLE else ""
                raise ConfigError(
                    f"{t!r} cannot be quantized{why}; allowed layer types: {list(QUANTIZABLE_LAYER_TYPES)}.",
                    path="quantizable_layer_type")
        self.skip = self._names("skip")
        self.skip_pattern = self._names("skip_pattern")
        if self.only_layers is not None:
            self.only_layers = self._names("only_layers")
        self.passthrough_layer_type = self._names("passthrough_layer_type")
        for name in ("quantize_inputs", "activation_symmetric", "fold_batch_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"must be true or false, got {getattr(self, name)!r}.", path=name)

    def _check_choice(self, name, allowed):
        v = getattr(self, name)
        if v not in allowed:
            raise ConfigError(f"must be one of {list(allowed)}, got {v!r}.", path=name)

    def _names(self, name):
        v = getattr(self, name)
        if isinstance(v, str):
            v = (v,)
        try:
            v = tuple(v)
        except TypeError:
            raise ConfigError(f"must be a list of strings, got {v!r}.", path=name) from None
        for item in v:
            if not isinstance(item, str) or not item:
                raise ConfigError(f"must be a list of non-empty strings, got item {item!r}.", path=name)
        return v

    @property
    def fallback_bits(self):
        """``(weight, activation)`` bits of the default quantizers put where the chosen low-bit ones do
        not apply (layers without a low-bit twin, model inputs/outputs): the configured bits, or 8
        where those are 1 (BNN)."""
        return tuple(b if b >= ops.MIN_BITS else ops.MAX_BITS for b in (self.weight_bits, self.activation_bits))

    @property
    def per_channel(self):
        return self.weight_quantize_type == "channel_wise_abs_max"

    def to_dict(self):
        """Plain dict (lists for tuples), suitable for JSON/YAML."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, data):
        """Build from a dict (e.g. a YAML section); unknown keys raise :class:`ConfigError`."""
        if data is None:
            return cls()
        if isinstance(data, QuantConfig):
            return data
        if not isinstance(data, dict):
            raise ConfigError(f"quantization config must be a mapping, got {type(data).__name__}.")
        data = dict(data)
        for old, new in RENAMED_FIELDS.items():
            if old in data:
                if new in data:
                    raise ConfigError(f"give {new!r} only ({old!r} is its old name).", path=old)
                warn_renamed(f"field {old!r}", f"{new!r}", "QuantConfig")
                data[new] = data.pop(old)
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(f"unknown field; allowed fields: {sorted(known)}.", path=str(key))
        return cls(**data)


#: kslim 0.1 field names still accepted (with a DeprecationWarning) -> the names of the vocabulary
RENAMED_FIELDS = {"skip_layers": "skip", "not_quant_pattern": "skip_pattern"}
QuantConfig.__init__ = renamed(**RENAMED_FIELDS)(QuantConfig.__init__)
