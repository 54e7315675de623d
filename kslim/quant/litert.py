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

import re

import numpy as np

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


def _static_bits(rules, name):
    """Activation width of tensor ``name`` under ``rules`` (the last rule whose regex matches wins, as
    in the quantizer), or None when no static recipe covers it."""
    bits = None
    for pattern, recipe in rules:
        if re.search(pattern, name):
            bits = {"int8": 8, "int16x8": 16}.get(recipe)
    return bits


def _kslim_ranges(float_content, qsvs, rules, batches, algo, hist_percent, bins):
    """kslim's calibration of the activation tensors the quantizer calibrated: ``{name: (lo, hi)}``.

    Each tensor is observed at the width its rule gives it (8 or 16 bits); the graph outputs keep
    ``abs_max``, as in :func:`kslim.quant.quant_post_static`.
    """
    from kslim.lite.flatbuffer import read_flatbuffer, tensor_name
    from kslim.quant.ptq import collect_statistics, graph_outputs

    model_t = read_flatbuffer(float_content)
    constant = {tensor_name(t) for t in model_t.subgraphs[0].tensors
                if t.buffer and model_t.buffers[t.buffer].data is not None and len(model_t.buffers[t.buffer].data)}
    bits = {n: _static_bits(rules, n) for n in qsvs if n not in constant}
    bits = {n: b for n, b in bits.items() if b is not None}
    observers = collect_statistics(float_content, batches, algo, bins, bits=bits)
    outputs = graph_outputs(float_content)
    return {n: o.range("abs_max" if n in outputs else algo, hist_percent) for n, o in observers.items()}


def quant_post_litert(model, recipe="int8", calibration_data=None, num_calibration_samples=200, algo=None,
                      batch_size=32, hist_percent=0.9999, bins=2048, check=True):
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
        algo: ``None`` keeps the quantizer's own min/max ranges; a kslim calibration algorithm
            (``"abs_max"``, ``"avg"``, ``"hist"``, ``"KL"``, ``"mse"`` or a registered one, see
            :mod:`kslim.quant.calibration`) replaces the range of every activation tensor with kslim's,
            computed on the same samples at the tensor's width (8 or 16 bits). This is how kslim's
            calibration reaches int16x8 and mixed recipes: the converter's own int16x8 quantizer
            calibrates by itself and takes no ranges.
        batch_size: samples per calibration batch (``avg`` averages per-batch maxima).
        hist_percent, bins: as in :func:`kslim.quant.quant_post_static`.
        check: run it against the Keras model on the calibration inputs (``lite.parity``).

    Returns:
        A :class:`kslim.lite.LiteModel`; ``lite.conversion`` records the recipe and ``algo``, and with
        ``algo`` set ``lite.activation_ranges`` maps each tensor to the ``(lo, hi)`` written.

    Raises:
        KslimValueError: unknown recipe or algo, a static recipe without calibration data, the quantizer
            missing.
        ConversionError: the quantizer refused the model (its message, one line).
    """
    from kslim.lite.converter import convert, parity
    from kslim.lite.inputs import model_inputs
    from kslim.lite.model import LiteModel
    from kslim.quant.calibration import check_algo
    from kslim.quant.ptq import calibration_batches, concat_batches

    rules = _rules(recipe)
    if algo is not None:
        check_algo(algo)
    if int(num_calibration_samples) < 1:
        raise KslimValueError(f"quant_post_litert(): num_calibration_samples must be >= 1, got {num_calibration_samples!r}.")
    quantizer, recipes = _quantizer()
    entries = []
    for pattern, name in rules:
        for entry in getattr(recipes, RECIPES[name])():
            entries.append({**entry, "regex": pattern})
    static = any(n in ("int8", "int16x8") for _, n in rules)
    inputs = model_inputs(model, "quant_post_litert")
    batches = None
    if static:
        if calibration_data is None:
            raise KslimValueError(f"quant_post_litert(): recipe {sorted({n for _, n in rules if n in ('int8', 'int16x8')})} "
                                  "computes in integers: pass calibration_data= (a few hundred training inputs).")
        batches = calibration_batches(calibration_data, inputs, batch_size,
                                      -(-int(num_calibration_samples) // int(batch_size)))
        flat = concat_batches(batches, int(num_calibration_samples))
        batches = [[a[s:s + int(batch_size)] for a in flat] for s in range(0, len(flat[0]), int(batch_size))]
    float_lite = convert(model, check=False)
    ranges = None
    try:
        q = quantizer.Quantizer(bytes(float_lite.content), entries)
        calibration = None
        if q.need_calibration:
            from kslim.lite.runner import make_interpreter

            samples = [{s.name: a[i:i + 1] for s, a in zip(inputs, flat)} for i in range(len(flat[0]))]
            key = next(iter(make_interpreter(float_lite.content).get_signature_list()), "serving_default")
            calibration = q.calibrate({key: samples})
            if algo is not None:
                ranges = _kslim_ranges(float_lite.content, calibration, rules, batches, algo, hist_percent, bins)
                for name, (lo, hi) in ranges.items():
                    qsv = calibration[name]
                    qsv["min"] = np.full_like(np.asarray(qsv["min"], np.float32), lo)
                    qsv["max"] = np.full_like(np.asarray(qsv["max"], np.float32), hi)
        result = q.quantize(calibration, enable_progress_report=False)
    except (KslimValueError, KslimTypeError):
        raise
    except Exception as e:  # noqa: BLE001 -- the quantizer's own errors, named in one line
        msg = str(e).strip().splitlines()
        raise ConversionError(f"LiteRT's quantizer refused {model.name!r} with recipe {rules}: "
                              f"{type(e).__name__}: {msg[0] if msg else ''}") from e
    lite = LiteModel(bytes(result.quantized_model))
    lite.conversion = {"quantize": "litert", "recipe": [list(r) for r in rules], "backend": "ai-edge-quantizer",
                       "algo": algo if static else None}
    if ranges is not None:
        lite.activation_ranges = ranges
    if check:
        data = (flat if len(flat) > 1 else flat[0]) if static else calibration_data
        lite.parity = parity(model, lite, data, quantized=static)
    return lite


__all__ = ["quant_post_litert", "RECIPES", "tensor_types"]
