"""Keras model -> TFLite, with the quantization modes users ask for and a parity check."""

import numpy as np

from kslim.errors import ConversionError, KslimTypeError, KslimValueError
from kslim.lite._quiet import captured_output
from kslim.lite.model import LiteModel, _first_line

QUANTIZE_MODES = (None, "dynamic", "float16", "int8")


def _keras_model_check(model):
    import keras

    if not isinstance(model, keras.Model):
        raise KslimTypeError(f"convert() needs a keras.Model, got {type(model).__name__}.")
    if not model.inputs and not model.built:
        raise KslimValueError(
            f"Model {model.name!r} has no defined input shape: build it (call it on data or give it "
            "an Input layer) before converting."
        )


def _representative(data, limit=None):
    """Normalise calibration data (array, tf.data of batches or (x, y), callable generator) to a generator."""

    def gen():
        count = 0
        src = data() if callable(data) else data
        for item in src:
            if isinstance(item, (tuple, list)) and len(item) >= 1 and not isinstance(item, np.ndarray):
                item = item[0]
            item = np.asarray(item, dtype=np.float32)
            for sample in item:
                yield [sample[None, ...]]
                count += 1
                if limit and count >= limit:
                    return

    if isinstance(data, np.ndarray):
        arr = np.asarray(data, np.float32)

        def gen_arr():
            for i, sample in enumerate(arr):
                if limit and i >= limit:
                    return
                yield [sample[None, ...]]

        return gen_arr
    return gen


def convert(model, quantize=None, representative_data=None, num_calibration_samples=200,
            inference_input_type="float32", inference_output_type="float32", check=True,
            check_data=None, verbose=False, converter_hook=None):
    """Convert a Keras model to TFLite and return a :class:`LiteModel`.

    Args:
        model: a built ``keras.Model`` (QAT models from :mod:`kslim.quant` included: their fake-quant
            ops become real int8 kernels without any representative data).
        quantize: ``None`` (float32), ``"dynamic"`` (int8 weights, float activations), ``"float16"``
            (fp16 weights) or ``"int8"`` (full integer; needs ``representative_data`` unless the model
            carries its own quantization ranges, i.e. is a QAT model).
        representative_data: calibration images (array, ``tf.data`` of batches or ``(x, y)``, or a
            callable returning an iterable); used with ``quantize="int8"``.
        inference_input_type / inference_output_type: ``"float32"`` or ``"int8"`` for int8 models.
        check: run the converted model and the Keras model on ``check_data`` (or random inputs) and
            store the result in ``lite_model.parity`` (max abs diff for float, argmax agreement for int8).
        verbose: show the converter's own output.
        converter_hook: optional callable receiving the ``tf.lite.TFLiteConverter`` before
            ``convert()``, for advanced settings.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> lm = convert(m, quantize="dynamic")
        >>> lm.parity["kind"]
        'max_abs_diff'
    """
    import tensorflow as tf

    _keras_model_check(model)
    if quantize not in QUANTIZE_MODES:
        raise KslimValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}.")
    for name, t in (("inference_input_type", inference_input_type),
                    ("inference_output_type", inference_output_type)):
        if t not in ("float32", "int8", "uint8"):
            raise KslimValueError(f"{name} must be 'float32', 'int8' or 'uint8', got {t!r}.")
        if t != "float32" and quantize != "int8":
            raise KslimValueError(
                f"{name}={t!r} needs quantize='int8' (integer model I/O only exists for full-integer models).")
    if representative_data is not None and quantize != "int8":
        raise KslimValueError(
            f"representative_data is only used with quantize='int8' (got quantize={quantize!r}): drop it or "
            "ask for int8.")

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if representative_data is not None:
            converter.representative_dataset = _representative(representative_data, num_calibration_samples)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # else a QAT model: its fake-quant ops carry the ranges. (Asking for TFLITE_BUILTINS_INT8 here
        # would make the converter demand a representative dataset before it has seen the graph.)
        converter.inference_input_type = tf.as_dtype(inference_input_type)
        converter.inference_output_type = tf.as_dtype(inference_output_type)
    if converter_hook is not None:
        converter_hook(converter)
    with captured_output(verbose) as log:
        try:
            content = converter.convert()
        except Exception as e:
            hint = ""
            if quantize == "int8" and representative_data is None:
                hint = ("\nquantize='int8' without representative_data works only for QAT models (fake-quant "
                        "ranges on every tensor): pass representative_data= (a few hundred training images).")
            raise ConversionError(
                f"TFLite conversion of {model.name!r} failed: {_first_line(e)}{hint}\n--- converter output ---\n"
                f"{log()[-4000:]}"
            ) from e
    lite = LiteModel(content, source=model.name)
    int8 = None
    if quantize == "int8":
        int8 = has_int8_kernels(content)
        if not int8:
            raise ConversionError(
                f"quantize='int8' gave no int8 kernels for {model.name!r}: "
                + ("the model carries no fake-quant ranges (it is not a QAT model), so pass representative_data= "
                   "(a few hundred training images)." if representative_data is None
                   else "the converter kept every op in float; check the model's layers are supported in int8."))
    if check:
        lite.parity = parity(model, lite, check_data, quantized=int8)
    return lite


def has_int8_kernels(content):
    """Whether a ``.tflite`` computes in integers: some op outputs an int8/uint8 tensor.

    (int8 kernels = int8 activations; dynamic-range and float16 models keep float activations.)
    """
    from kslim.lite.runner import describe_ops

    return any(o["dtype"] in ("int8", "uint8") for d in describe_ops(content) for o in d["outputs"])


def parity(model, lite, data=None, samples=16, seed=0, *, quantized=None):
    """Compare a Keras model and its TFLite conversion on ``data`` (or seeded uniform random inputs).

    Returns ``{"kind", "value", "max_abs_diff", "argmax_agreement", "samples", "quantized"}``:
    ``kind`` is ``"max_abs_diff"`` for float models, float16 and dynamic-range ones included (value =
    max |keras - tflite| over the first output) and ``"argmax_agreement"`` for models with int8
    activations (value = share of samples whose top-1 class agrees). Both figures are always
    present (argmax_agreement is None for outputs that are not class scores). ``data`` may be an
    array or ``(x, y)``; random data uses ``samples`` rows, given data up to 256. ``quantized``:
    :func:`has_int8_kernels` of ``lite`` when the caller already knows it (computed if None).
    """
    limit = int(samples)
    if data is None:
        shape = tuple(int(s) for s in lite.input_details[0]["shape"][1:])
        data = np.random.default_rng(seed).uniform(0, 1, size=(samples, *shape)).astype(np.float32)
    else:
        limit = max(limit, 256)
    if isinstance(data, (tuple, list)) and len(data) == 2 and not np.isscalar(data[1]):
        data = data[0]
    x = np.asarray(data)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    x = np.asarray(x[:max(limit, 1)], np.float32)
    ref = model(x, training=False)
    if isinstance(ref, dict):
        ref = next(iter(ref.values()))
    if isinstance(ref, (list, tuple)):
        ref = ref[0]
    ref = np.asarray(ref, np.float32)
    got = lite.predict(x)
    if quantized is None:
        quantized = has_int8_kernels(lite.content)
    agree = None
    if ref.ndim == 2 and ref.shape[-1] > 1:
        agree = float(np.mean(np.argmax(ref, -1) == np.argmax(got, -1)))
    diff = float(np.max(np.abs(ref - got)))
    kind = "argmax_agreement" if quantized and agree is not None else "max_abs_diff"
    return {"kind": kind, "value": agree if kind == "argmax_agreement" else diff, "max_abs_diff": diff,
            "argmax_agreement": agree, "samples": int(len(x)), "quantized": quantized}
