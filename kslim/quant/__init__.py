"""Quantization: quantization-aware training (QAT) and post-training quantization (PTQ).

QAT::

    from kslim.quant import QuantConfig, quant_aware, convert
    qat = quant_aware(model, QuantConfig(weight_quantize_type="channel_wise_abs_max"))
    qat.compile(...); qat.fit(train_ds, epochs=1)
    lite = convert(qat, inference_input_type="int8")     # kslim.lite.LiteModel, int8 kernels

Low-bit QAT (:mod:`kslim.quant.lowbit`): ``QuantConfig(weight_quantizer="lsq", activation_quantizer="lsq",
weight_bits=4)`` learns the step sizes (LSQ); ``"dorefa"`` and ``"bnn"`` (``weight_bits=1``) are NNI's
other two; the ``.tflite`` stores their kernels exactly (INT4 for codes up to +-7, else int8), and
:func:`~kslim.quant.lowbit.lowbit_size_bytes` states the size at the trained bit widths.

See :mod:`kslim.quant.qat` for the graph rewrite, :mod:`kslim.quant.fold` for BatchNormalization
folding and :mod:`kslim.quant.layers` for the layers (``ActivationQuantizer`` ...).
"""

from kslim.quant.config import QuantConfig
from kslim.quant.layers import (
    QUANT_LAYERS,
    ActivationQuantizer,
    QuantBatchNormalization,
    QuantLayerNormalization,
    QuantRescaling,
    QuantConv1D,
    QuantConv2D,
    QuantConv2DTranspose,
    QuantDense,
    QuantDepthwiseConv2D,
    QuantEinsumDense,
    QuantEmbedding,
)
from kslim.quant.fold import fold_batch_norm
from kslim.quant import lowbit, ops  # noqa: F401  (the low-bit quantizer registry, the maths)
from kslim.quant.lowbit import QUANTIZERS, lowbit_size_bytes
from kslim.lite.model import float_ops  # the one list of float compute ops (LiteModel.float_ops)
from kslim.quant.qat import activation_quantizers, convert, is_quantized, quant_aware

__all__ = [
    "QuantConfig",
    "ActivationQuantizer",
    "QUANT_LAYERS",
    "QuantBatchNormalization",
    "QuantLayerNormalization",
    "QuantRescaling",
    "QuantConv1D",
    "QuantConv2D",
    "QuantConv2DTranspose",
    "QuantDense",
    "QuantDepthwiseConv2D",
    "QuantEinsumDense",
    "QuantEmbedding",
    "activation_quantizers",
    "QUANTIZERS",
    "lowbit_size_bytes",
    "convert",
    "float_ops",
    "fold_batch_norm",
    "is_quantized",
    "quant_aware",
]

# Post-training quantization (static with kslim calibration, dynamic/float16) and the debug report.
from kslim.quant.calibration import ALGOS, TensorObserver, calibrate_range, register_calibrator  # noqa: E402
from kslim.quant.debug import QuantDebugReport, quant_debug  # noqa: E402
from kslim.quant.dynamic import quant_post_dynamic  # noqa: E402
from kslim.quant.ptq import quant_post_static  # noqa: E402
from kslim.quant.litert import RECIPES, quant_post_litert, tensor_types  # noqa: E402
from kslim.quant.equalize import equalize_cross_layer  # noqa: E402
from kslim.quant.bias_correction import correct_weight_bias  # noqa: E402
from kslim.quant.bn_reestimate import reestimate_batch_norm  # noqa: E402
from kslim.quant.adaround import AdaRoundResult, adaround  # noqa: E402

__all__ += [
    "ALGOS",
    "TensorObserver",
    "calibrate_range",
    "register_calibrator",
    "QuantDebugReport",
    "quant_debug",
    "quant_post_dynamic",
    "quant_post_static",
    "quant_post_litert",
    "RECIPES",
    "tensor_types",
    "equalize_cross_layer",
    "correct_weight_bias",
    "reestimate_batch_norm",
    "adaround",
    "AdaRoundResult",
]

# Accuracy-aware PTQ auto-tuning (algorithm x per-layer int16/float fallback, keras-tuner, resumable).
from kslim.quant.auto import AccuracyGoalNotMet, AutoQuantResult, quant_post_auto  # noqa: E402

__all__ += ["quant_post_auto", "AutoQuantResult", "AccuracyGoalNotMet"]

# Mixed precision: a LiteRT recipe per layer (int4 weights / int16 activations) under a size or latency budget.
from kslim.quant.litert import LiteRTSession  # noqa: E402
from kslim.quant.mixed import MixedPrecisionResult, quant_post_mixed  # noqa: E402

__all__ += ["quant_post_mixed", "MixedPrecisionResult", "LiteRTSession"]
