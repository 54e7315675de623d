"""Post-training quantization with LiteRT's own quantizer (``ai-edge-quantizer``) on a kslim float export.

LiteRT documents converter-time post-training quantization as deprecated in favour of its quantizer,
which works on a ``.tflite`` file and has the recipes kslim's converter path lacks. This module is the
kslim entry to it: the Keras model is converted to float TFLite (:func:`kslim.lite.convert`), the
quantizer is given a recipe -- one name of :data:`RECIPES` for the whole model, or ``(pattern,
name)`` rules where later rules win for the tensors whose names match -- and, for static recipes,
calibration samples read like every kslim calibration input.

=================== ================================================== ==========================
name                what it stores / computes                          speed on x86 and ARM CPUs
=================== ================================================== ==========================
``int8``            int8 weights (per channel) and activations         fast (XNNPACK int8 kernels)
``int16x8``         int8 weights, **int16 activations**                slow: reference kernels
``int8_weight_only`` int8 weights, float compute (DEQUANTIZE at load)  float speed, 4x smaller
``int4_weight_only`` **int4 weights** (per channel), float compute     float speed, ~8x smaller
``dynamic_int8``    int8 weights, activations quantized on the fly     fast on big GEMMs
``dynamic_int4``    int4 weights, activations quantized on the fly     depends on the kernels
``int4_blockwise``  int4 weights in blocks of 32 (Dense), dynamic      depends on the kernels
=================== ================================================== ==========================

(The speed column is what LiteRT's kernels do, measured for MobileNetV1 in BENCHMARKS.md; every
recipe's ``.tflite`` runs in ai-edge-litert.)

Example:
    >>> import keras, numpy as np
    >>> m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(16, 3, activation="relu"),
    ...                       keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4)])
    >>> x = np.random.default_rng(0).random((16, 8, 8, 1), dtype=np.float32)
    >>> lite = quant_post_litert(m, "int16x8", calibration_data=x)
    >>> sorted(tensor_types(lite.content) & {"INT16", "INT8"})
    ['INT16', 'INT8']
"""

from kslim.errors import ConversionError, KslimTypeError, KslimValueError

#: recipe name -> ai_edge_quantizer.recipe function name
RECIPES = {
    "int8": "static_wi8_ai8",
    "int16x8": "static_wi8_ai16",
    "int8_weight_only": "weight_only_wi8_afp32",
    "int4_weight_only": "weight_only_wi4_afp32",
    "dynamic_int8": "dynamic_wi8_afp32",
    "dynamic_int4": "dynamic_wi4_afp32",
    "int4_blockwise": "dynamic_wi4b32_afp32",
}

#: flatbuffer TensorType codes (tflite schema) -> names
_TENSOR_TYPES = {0: "FLOAT32", 1: "FLOAT16", 2: "INT32", 3: "UINT8", 4: "INT64", 7: "INT16", 9: "INT8", 17: "INT4"}


def _quantizer():
    try:
        from ai_edge_quantizer import quantizer, recipe
    except ImportError:
        raise KslimValueError("quant_post_litert needs LiteRT's quantizer: pip install ai-edge-quantizer "
                              "(it leaves keras, tensorflow and numpy as they are).") from None
    return quantizer, recipe


def _rules(recipe):
    """``[(pattern, name)]`` of a recipe argument, names checked."""
    rules = [(".*", recipe)] if isinstance(recipe, str) else list(recipe or ())
    if not rules:
        raise KslimValueError(f"quant_post_litert(): recipe is empty; give one of {sorted(RECIPES)}.")
    for item in rules:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(v, str) for v in item)):
            raise KslimTypeError(f"quant_post_litert(): recipe rules are (pattern, name) pairs, got {item!r}.")
        if item[1] not in RECIPES:
            raise KslimValueError(f"quant_post_litert(): unknown recipe {item[1]!r}; choose one of {sorted(RECIPES)}.")
    return rules


def tensor_types(content):
    """Names of the tensor types in a ``.tflite`` (``{"INT8", "INT4", "FLOAT32", ...}``), read from the
    flatbuffer (numpy has no int4: the interpreter reports int4 tensors as int8)."""
    from kslim.lite.flatbuffer import read_flatbuffer

    model_t = read_flatbuffer(content)
    return {_TENSOR_TYPES.get(t.type, str(t.type)) for g in model_t.subgraphs for t in g.tensors}


def quant_post_litert(model, recipe="int8", calibration_data=None, num_calibration_samples=200, check=True):
    """Quantize ``model`` with LiteRT's quantizer; returns a :class:`kslim.lite.LiteModel`.

    Args:
        model: a built Keras model.
        recipe: a name of :data:`RECIPES`, or ``[(pattern, name), ...]``: each rule applies recipe
            ``name`` to the ops whose output tensor name matches the regex ``pattern`` (it holds the
            Keras layer name, e.g. ``"sequential/conv_1/Relu"``, except for the model's outputs, which
            are named ``StatefulPartitionedCall...``); later rules win. E.g. ``[(".*", "int8"),
            (".*conv.*", "int16x8")]`` keeps the activations of the layers named ``conv...`` at 16 bits.
        calibration_data: inputs for the static recipes (``int8``, ``int16x8``), as for
            :func:`kslim.lite.convert`'s ``representative_data``.
        num_calibration_samples: at most this many calibration samples.
        check: run it against the Keras model on the calibration inputs (``lite.parity``).

    Raises:
        KslimValueError: unknown recipe, a static recipe without calibration data, the quantizer missing.
        ConversionError: the quantizer refused the model (its message, one line).
    """
    from kslim.lite.converter import _representative, convert, parity
    from kslim.lite.inputs import model_inputs
    from kslim.lite.model import LiteModel

    rules = _rules(recipe)
    quantizer, recipes = _quantizer()
    entries = []
    for pattern, name in rules:
        for entry in getattr(recipes, RECIPES[name])():
            entries.append({**entry, "regex": pattern})
    float_lite = convert(model, check=False)
    try:
        q = quantizer.Quantizer(bytes(float_lite.content), entries)
        calibration = None
        if q.need_calibration:
            if calibration_data is None:
                static = sorted({n for _, n in rules if n in ("int8", "int16x8")})
                raise KslimValueError(f"quant_post_litert(): recipe {static} computes in integers: pass "
                                      "calibration_data= (a few hundred training inputs).")
            samples = list(_representative(calibration_data, model_inputs(model, "quant_post_litert"),
                                           num_calibration_samples)())
            from kslim.lite.runner import make_interpreter

            key = next(iter(make_interpreter(float_lite.content).get_signature_list()), "serving_default")
            calibration = q.calibrate({key: samples})
        result = q.quantize(calibration, enable_progress_report=False)
    except (KslimValueError, KslimTypeError):
        raise
    except Exception as e:  # noqa: BLE001 -- the quantizer's own errors, named in one line
        msg = str(e).strip().splitlines()
        raise ConversionError(f"LiteRT's quantizer refused {model.name!r} with recipe {rules}: "
                              f"{type(e).__name__}: {msg[0] if msg else ''}") from e
    lite = LiteModel(bytes(result.quantized_model))
    lite.conversion = {"quantize": "litert", "recipe": [list(r) for r in rules], "backend": "ai-edge-quantizer"}
    if check:
        lite.parity = parity(model, lite, calibration_data, quantized=any(n in ("int8", "int16x8") for _, n in rules))
    return lite


__all__ = ["quant_post_litert", "RECIPES", "tensor_types"]
