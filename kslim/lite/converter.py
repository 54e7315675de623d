"""Keras model -> TFLite, with the quantization modes users ask for and a parity check.

How a Keras 3 model reaches the converter (:func:`keras_converter`): kslim exports the model's
``__call__(training=False)`` itself (``keras.export.ExportArchive``) with an input signature of the
model's own structure — one tensor, a list, or a dict keyed by input name — and each input's own
dtype, then converts that SavedModel. (``tf.lite.TFLiteConverter.from_keras_model`` passes the flat
``model.inputs`` list, which a dict-input functional model refuses; the converter swallows that
error and falls back to a tf-keras code path that does not exist under Keras 3, hence
``'NoneType' object is not callable``.) The TFLite signature's input names are the Keras input
names, and :class:`~kslim.lite.LiteModel` feeds inputs by name.

Recurrent layers (LSTM, GRU, SimpleRNN, Bidirectional, ConvLSTM) trace to a ``tf.while_loop`` over
``TensorList`` ops, which TFLite's builtin ops cannot express with a dynamic batch size
(``TensorListReserve ... requires element_shape to be static``). kslim converts them as follows:

* a fixed number of timesteps: the layers are exported with ``unroll=True`` (restored afterwards):
  one FULLY_CONNECTED / LOGISTIC / TANH / MUL / ADD chain per step, builtin ops only, any batch size,
  and full-integer quantization makes every one of them int8;
* a variable number of timesteps (``keras.Input((None, features))``): float, float16 and dynamic
  conversions export with a fixed batch size of 1, which the converter lowers to a builtin WHILE
  loop (``LiteModel.predict`` then runs one sample at a time); full-integer quantization of such a
  loop is refused (the TFLite calibrator crashes on it), naming the layer.

Converter failures become a :class:`~kslim.errors.ConversionError` with one line: the first
``error:`` of the MLIR diagnostics, with the TF op and the Keras layer it came from. The exception
carries ``log`` (the converter's whole output), ``reason``, ``op`` and ``layer``.
"""

import contextlib
import functools
import re
import tempfile

import numpy as np

from kslim.errors import ConversionError, KslimValueError, ModelError
from kslim.validation import check_model
from kslim.lite._quiet import captured_output
from kslim.lite.inputs import model_inputs
from kslim.lite.model import LiteModel, _first_line, float_ops, has_int8_kernels  # noqa: F401 (re-exported)

QUANTIZE_MODES = (None, "float32", "dynamic", "float16", "int8")  # "float32": float even for a QAT model


def _keras_model_check(model):

    check_model(model, "convert()")
    if not getattr(model, "inputs", None) and not model.built:
        raise KslimValueError(
            f"Model {model.name!r} has no defined input shape: build it (call it on data or give it "
            "an Input layer) before converting."
        )


# ---------------------------------------------------------------------------------- recurrent layers
def _walk_layers(model):
    """Every layer reachable from ``model`` (nested models, wrappers such as Bidirectional), ``model``
    excluded; read through kslim's one owner of Keras' graph."""
    from kslim.graph import keras_graph as kg

    return [layer for layer in kg.all_layers(model) if layer is not model]


UNKNOWN = "unknown"  # timesteps of an RNN whose input cannot be read (called inside another layer's call)


def rnn_layers(model):
    """``[(layer, [rnn, ...], timesteps)]``: the recurrent layers of ``model`` as the user sees them
    (a Bidirectional is one entry holding its forward and backward RNNs); ``timesteps`` is the
    sequence length, ``None`` when it is variable, or :data:`UNKNOWN` when the layer's input cannot
    be read."""
    import keras

    out, inner = [], set()
    layers = list(_walk_layers(model))
    for layer in layers:
        if isinstance(layer, keras.layers.Bidirectional):
            rnns = [r for r in (layer.forward_layer, layer.backward_layer) if isinstance(r, keras.layers.RNN)]
            inner.update(id(r) for r in rnns)
            out.append((layer, rnns, _timesteps(layer)))
    for layer in layers:
        if isinstance(layer, keras.layers.RNN) and id(layer) not in inner:
            out.append((layer, [layer], _timesteps(layer)))
    return out


def _timesteps(layer):
    try:
        inp = layer.input
    except (AttributeError, ValueError):  # never called symbolically, or shared between several inputs
        return UNKNOWN
    if isinstance(inp, (list, tuple)):
        inp = inp[0]
    shape = getattr(inp, "shape", None)
    if shape is None or len(shape) < 3:
        return UNKNOWN
    t = shape[0] if getattr(layer, "time_major", False) else shape[1]
    return None if t is None else int(t)


def _rnn_plan(model, quantize, fn="convert", variable=None):
    """How to export the RNN layers: ``{"layers", "mode", "batch_size", "_unroll"}`` (None: no RNN
    layer); ``mode`` is ``"unrolled"`` or ``"while_loop_batch_1"``, ``_unroll`` the RNNs to unroll.
    RNNs of unknown length are unrolled (:func:`keras_converter` retries with a WHILE loop when Keras
    cannot unroll them); ``variable`` forces the WHILE loop, naming the layer it is for.

    Raises ConversionError for full-integer quantization of a variable-length recurrence.
    """
    rnns = rnn_layers(model)
    if not rnns:
        return None
    names = [layer.name for layer, _, _ in rnns]
    variable = variable or next((layer for layer, _, t in rnns if t is None), None)
    if variable is None:
        return {"layers": names, "mode": "unrolled", "batch_size": None,
                "_unroll": [r for _, rs, _ in rnns for r in rs],
                "_unknown": [layer for layer, _, t in rnns if t is UNKNOWN]}
    if quantize == "int8":
        raise ConversionError(
            f"{fn}(): layer {variable.name!r} ({type(variable).__name__}) runs over a variable number of timesteps, "
            "so TFLite can only express it as a WHILE loop, which full-integer quantization does not support (the "
            "TFLite calibrator crashes on it): give the model a fixed sequence length "
            "(keras.Input((timesteps, features))) so kslim can unroll it.")
    return {"layers": names, "mode": "while_loop_batch_1", "batch_size": 1, "_unroll": [], "_unknown": []}


@contextlib.contextmanager
def _unrolled(rnns):
    saved = [r.unroll for r in rnns]
    try:
        for r in rnns:
            r.unroll = True
        yield
    finally:
        for r, u in zip(rnns, saved):
            r.unroll = u


# ---------------------------------------------------------------------------------- Fourier transforms
# ``keras.ops.fft``/``fft2`` trace to TF's complex FFT ops, which TFLite has no builtin kernel for (FNet's
# token mixing: "'tf.Complex' op is neither a custom op nor a flex op"). For the export, kslim computes
# them as what they are, products with the DFT matrix ``F = C - iS`` (``C[j, k] = cos(2 pi jk / n)``,
# ``S`` the sine): real matmuls, which TFLite runs and full-integer quantization makes int8. O(n^2) per
# axis instead of O(n log n), exact to float rounding.
def _dft_matrices(n, dtype):
    import tensorflow as tf

    if isinstance(n, int):
        jk = np.outer(np.arange(n), np.arange(n)) % n          # reduced first: exact angles for any n
        angle = 2.0 * np.pi * jk / n
        return tf.constant(np.cos(angle), dtype), tf.constant(np.sin(angle), dtype)
    k = tf.range(n)
    jk = tf.math.floormod(k[:, None] * k[None, :], n)
    angle = (2.0 * np.pi) * tf.cast(jk, tf.float32) / tf.cast(n, tf.float32)   # TFLite has no float64
    return tf.cast(tf.cos(angle), dtype), tf.cast(tf.sin(angle), dtype)


def _known_zero(t):
    """True for an imaginary part that is zeros by construction (``ops.zeros_like(x)``, a zero constant)."""
    import tensorflow as tf

    op = getattr(t, "op", None)
    if op is not None and op.type == "ZerosLike":
        return True
    value = tf.get_static_value(t)
    return value is not None and not np.any(value)


def _dft_last_axis(re, im):
    """``(re + i im) @ F`` over the last axis; ``im`` None means zeros."""
    import tensorflow as tf

    n = re.shape[-1] if re.shape[-1] is not None else tf.shape(re)[-1]
    c, s = _dft_matrices(n, re.dtype)
    out_re, out_im = tf.matmul(re, c), -tf.matmul(re, s)
    if im is not None:
        out_re, out_im = out_re + tf.matmul(im, s), out_im + tf.matmul(im, c)
    return out_re, out_im


def _dft(x, axes):
    import tensorflow as tf

    re, im = (tf.convert_to_tensor(t) for t in x)
    im = None if _known_zero(im) else im
    for axis in axes:   # -1, then -2 (as the last axis of the transposed tensor)
        if axis == -2:
            re = tf.linalg.matrix_transpose(re)
            im = None if im is None else tf.linalg.matrix_transpose(im)
        re, im = _dft_last_axis(re, im)
        if axis == -2:
            re, im = tf.linalg.matrix_transpose(re), tf.linalg.matrix_transpose(im)
    return re, im


BUILTIN_FOURIER = {"math.fft": lambda x: _dft(x, (-1,)), "math.fft2": lambda x: _dft(x, (-1, -2))}


# ---------------------------------------------------------------------------------- the converter
@contextlib.contextmanager
def keras_converter(model, quantize=None, fn="convert"):
    """Yield a ``tf.lite.TFLiteConverter`` for ``model`` (see the module docstring): the model's own
    input structure and dtypes in the signature, RNN layers unrolled (or a fixed batch of 1), and
    ``converter.kslim_rnn`` describing what was done for RNNs (None without RNN layers).

    ``convert()`` must be called inside the ``with`` block (the exported SavedModel lives there).
    Models without symbolic inputs (subclassed models built by calling them) use
    ``TFLiteConverter.from_keras_model``.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> with keras_converter(m) as c:
        ...     content = c.convert()
        >>> content[4:8]
        b'TFL3'
    """
    import tensorflow as tf

    if quantize == "int8":  # full-integer: a -inf pad before a max pool would wreck its tensor's range
        from kslim.graph.keras_graph import replace_infinite_pool_pads

        model = replace_infinite_pool_pads(model)[0]
    plan = _rnn_plan(model, quantize, fn)
    try:
        inputs = model_inputs(model, fn)
    except ModelError:
        if not model.built:
            raise
        inputs = None
    with tempfile.TemporaryDirectory(prefix="kslim_export_") as tmp:
        if inputs is None:
            converter = tf.lite.TFLiteConverter.from_keras_model(model)
        else:
            try:
                _export(model, inputs, plan, tmp)
            except _CannotUnroll:  # an RNN of unknown length turned out variable: a WHILE loop then
                plan = _rnn_plan(model, quantize, fn, variable=plan["_unknown"][0])
                _export(model, inputs, plan, tmp)
            converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["serving_default"])
        converter.kslim_rnn = None if plan is None else {k: v for k, v in plan.items() if not k.startswith("_")}
        yield converter


class _CannotUnroll(Exception):
    pass


def _export(model, inputs, plan, directory):
    """Export ``model.__call__(training=False)`` as a SavedModel with the model's own input signature."""
    import keras
    import tensorflow as tf

    batch = plan["batch_size"] if plan else None
    specs = [tf.TensorSpec((batch, *s.shape), tf.as_dtype(s.dtype), name=s.name) for s in inputs]
    archive = keras.export.ExportArchive()
    archive.track(model)
    from kslim.graph import keras_graph as kg

    with captured_output() as log, _unrolled(plan["_unroll"] if plan else []), \
            kg.backend_functions_replaced(BUILTIN_FOURIER):
        try:
            archive.add_endpoint("serve", functools.partial(model.__call__, training=False),
                                 [inputs.structure(specs)])
            archive.write_out(directory, verbose=False)
        except Exception as e:  # tracing the model failed: a Keras error, before any converter work
            if plan and plan["_unknown"] and "Cannot unroll" in str(e):
                raise _CannotUnroll() from e
            raise conversion_error(model, e, log(), "export for TFLite") from e


def run_converter(model, converter, verbose=False, what="TFLite conversion", hint=""):
    """``converter.convert()`` with the converter's chatter captured; failures -> one-line ConversionError."""
    with captured_output(verbose) as log:
        try:
            return bytes(converter.convert())
        except Exception as e:
            raise conversion_error(model, e, log(), what, hint) from e


_GENERIC = ("failed while converting", "Lowering tensor list ops is failed", "illegal op still exists",
            "failed to legalize operation")


# what to do about the converter's most common complaints (matched in the reason)
_KNOWN = (
    ("neither a custom op nor a flex op", "TFLite has no builtin kernel for this op and kslim exports builtin ops "
                                          "only: rewrite the layer with ops TFLite supports."),
    ("TensorList", "This is a recurrent loop TFLite cannot express with builtin ops: give the model a fixed "
                   "sequence length so kslim can unroll it."),
)


def conversion_error(model, exc, log="", what="TFLite conversion", hint=""):
    """A :class:`ConversionError` with one line naming the first real MLIR ``error:`` (its op and the
    Keras layer it comes from) and ``.log``, ``.reason``, ``.op``, ``.layer`` attributes."""
    text = f"{exc}\n{log}"
    errors = [m.group(1) for m in re.finditer(r"error: (.*)", text)]
    first = next((e for e in errors if not any(g in e for g in _GENERIC)), errors[0] if errors else None)
    op = layer = None
    if first is None:
        reason = _first_line(exc)
    else:
        loc, reason = _split_location(first)
        m = re.search(r"'(tf\.\w+|tfl\.\w+)' op", reason)
        op = m.group(1) if m else None
        scopes = re.findall(r'fused\["([^"]*?):?", "([^"@]*)', loc)
        if scopes:
            op = op or "tf." + scopes[0][0].rstrip(":")
            for _, scope in scopes:
                layer = _layer_of_scope(model, scope)
                if layer is not None:
                    break
        if not op:
            m = re.search(r"\btf\.(\w+)\(", text)
            op = f"tf.{m.group(1)}" if m else None
    reason = reason.strip().rstrip(".")
    where = ""
    if layer is not None:
        where = f" in layer {layer.name!r} ({type(layer).__name__})"
    elif op:
        where = f" at {op}"
    if op and layer is not None and op not in reason:
        where = f" at {op}{where}"
    of = f" of {model.name!r}" if model is not None else ""
    known = next((h for k, h in _KNOWN if k in reason), "")
    hint = " ".join(h.strip() for h in (known, hint) if h)
    msg = f"{what}{of} failed{where}: {reason}." + (f" {hint}" if hint else "")
    err = ConversionError(" ".join(msg.split("\n")))
    err.log, err.reason, err.op, err.layer = text, reason, op, None if layer is None else layer.name
    return err


def _split_location(line):
    """``loc(...): message`` -> (location, message); lines without a location -> ("", line)."""
    if not line.startswith("loc("):
        return "", line
    depth = 0
    for i, ch in enumerate(line):
        if ch in "()":
            depth += 1 if ch == "(" else -1
            if depth == 0:
                return line[:i + 1], line[i + 1:].lstrip(": ")
    return line, ""


def _layer_of_scope(model, scope):
    """The Keras layer a TF name scope (``model_1/lstm_1/while/...``) comes from, innermost known first."""
    if model is None:
        return None
    by_name = {}
    for layer in _walk_layers(model):
        by_name.setdefault(layer.name, layer)
    parts = [re.sub(r"_\d+$", "", p) for p in scope.split("/")]
    raw = scope.split("/")
    for p, r in reversed(list(zip(parts, raw))):
        for candidate in (r, p):
            if candidate in by_name and candidate != model.name:
                return by_name[candidate]
    return None


# ---------------------------------------------------------------------------------- calibration data
def _representative(data, inputs, limit=None):
    """Calibration data -> the converter's representative dataset: one dict per sample, keyed by input
    name, each input in its own dtype (read and checked here, before the converter starts)."""
    samples = []
    for batch in inputs.batches(data, "representative_data", allow_unbatched=True):
        for i in range(len(batch[0])):
            samples.append({s.name: a[i:i + 1] for s, a in zip(inputs, batch)})
        if limit and len(samples) >= limit:
            break
    if not samples:
        raise KslimValueError("representative_data is empty: int8 conversion needs calibration samples.")
    samples = samples[:limit] if limit else samples
    return lambda: iter(samples)


# ---------------------------------------------------------------------------------- public API
def convert(model, quantize=None, representative_data=None, num_calibration_samples=200,
            inference_input_type="float32", inference_output_type="float32", check=True,
            check_data=None, verbose=False, converter_hook=None):
    """Convert a Keras model to TFLite and return a :class:`LiteModel`.

    Args:
        model: a built ``keras.Model`` (QAT models from :mod:`kslim.quant` included: their fake-quant
            ops become real int8 kernels without any representative data). Single-input, multi-input
            (list) and dict-input models; integer and boolean inputs keep their dtype.
        quantize: ``None`` (float32 for a float model; ``"int8"`` for a QAT model, see below),
            ``"float32"`` (float, even for a QAT model), ``"dynamic"`` (int8 weights, float
            activations), ``"float16"`` (fp16 weights) or ``"int8"`` (full integer; needs
            ``representative_data`` unless the model carries its own quantization ranges, i.e. is a
            QAT model). With ``None``, a QAT model (:func:`kslim.quant.qat.is_quantized`) is
            converted as ``"int8"`` and ``lite.conversion["quantize"]`` says ``"int8"``.
        representative_data: calibration inputs (array; a list of arrays or a dict for multi-input
            models; a ``tf.data`` of batches or of ``(inputs, labels)``; or a callable returning an
            iterable); used with ``quantize="int8"``.
        inference_input_type / inference_output_type: ``"float32"`` or ``"int8"`` for int8 models
            (applies to the float inputs; integer and boolean inputs keep their dtype).
        check: run the converted model and the Keras model on ``check_data`` (or random inputs) and
            store the result in ``lite_model.parity`` (max abs diff for float, argmax agreement for int8).
        verbose: show the converter's own output.
        converter_hook: optional callable receiving the ``tf.lite.TFLiteConverter`` before
            ``convert()``, for advanced settings.

    Models with recurrent layers are converted to builtin ops (see the module docstring);
    ``lite.conversion["rnn"]`` says how. A converter failure raises :class:`ConversionError` with a
    one-line reason; its ``log`` attribute holds the converter's full output.

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
    from kslim.quant.qat import export_ready, is_quantized  # lazy: kslim.quant imports kslim.lite

    qat = is_quantized(model)
    if quantize == "float32":
        quantize = None  # explicit float, also for a QAT model
    elif quantize is None and qat:
        quantize = "int8"  # a QAT model's fake-quant ranges give real int8 kernels
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
    if check and check_data is not None:
        check_inputs(model, check_data)  # a mismatch is named before any conversion work
    rep = None
    if representative_data is not None:
        _rnn_plan(model, quantize)  # a variable-length RNN cannot be int8: say so before reading any data
        rep = _representative(representative_data, model_inputs(model, "convert"), num_calibration_samples)
    hint = ""
    if quantize == "int8" and representative_data is None:
        hint = ("quantize='int8' without representative_data works only for QAT models (fake-quant "
                "ranges on every tensor): pass representative_data= (a few hundred training samples).")
    # a QAT model converted to int8 on its own ranges: sub-8-bit activations on the 8-bit grid, ranges checked
    ready = export_ready(model) if qat and quantize == "int8" and rep is None else contextlib.nullcontext()
    with ready, keras_converter(model, quantize if rep is not None else None) as converter:
        if quantize == "dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        elif quantize == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            if rep is not None:
                converter.representative_dataset = rep
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            # else a QAT model: its fake-quant ops carry the ranges. (Asking for TFLITE_BUILTINS_INT8 here
            # would make the converter demand a representative dataset before it has seen the graph.)
            converter.inference_input_type = tf.as_dtype(inference_input_type)
            converter.inference_output_type = tf.as_dtype(inference_output_type)
        if converter_hook is not None:
            converter_hook(converter)
        content = run_converter(model, converter, verbose, hint=hint)
        rnn = converter.kslim_rnn
    lite = keras_lite_model(content, model)
    lite.conversion = {"quantize": quantize, "rnn": rnn}
    int8 = None
    if quantize == "int8":
        int8 = has_int8_kernels(lite)
        if not int8:
            raise ConversionError(
                f"quantize='int8' gave no int8 kernels for {model.name!r}: "
                + ("the model carries no fake-quant ranges (it is not a QAT model), so pass representative_data= "
                   "(a few hundred training samples)." if representative_data is None
                   else "the converter kept every op in float; check the model's layers are supported in int8."))
    if check:
        lite.parity = parity(model, lite, check_data, quantized=int8)
    return lite


def keras_lite_model(content, model):
    """A :class:`LiteModel` of ``content`` converted from ``model``: with several inputs or outputs,
    the Keras order of their names is recorded in the flatbuffer (see :meth:`LiteModel.input_names`)."""
    try:
        ins = model_inputs(model).names
    except ModelError:
        ins = None
    outs = _output_names(model)
    return LiteModel.with_io_order(content, ins, outs, source=model.name)


def _output_names(model):
    """Signature names of the Keras outputs, in Keras order (``output_0`` ... or the dict keys)."""
    try:
        struct = model.output
    except (AttributeError, ValueError):
        struct = model.outputs if getattr(model, "outputs", None) else None
    if isinstance(struct, dict):
        return [str(k) for k in struct]
    if isinstance(struct, (list, tuple)):
        return [f"output_{i}" for i in range(len(struct))]
    return None if struct is None else ["output_0"]


def check_inputs(model, data, what="check_data"):
    """Check ``data`` (the inputs, or ``(inputs, labels)``) against ``model``'s inputs; returns the
    arrays in model order. Raises :class:`KslimValueError` naming the input at fault."""
    inputs = model_inputs(model, "convert")
    return inputs.arrays(inputs.features(data), what)


def parity(model, lite, data=None, samples=16, seed=0, *, quantized=None):
    """Compare a Keras model and its TFLite conversion on ``data`` (or seeded random inputs).

    Returns ``{"kind", "value", "max_abs_diff", "argmax_agreement", "samples", "quantized"}``:
    ``kind`` is ``"max_abs_diff"`` for float models, float16 and dynamic-range ones included (value =
    max |keras - tflite| over the first output) and ``"argmax_agreement"`` for models with int8
    activations (value = share of samples whose top-1 class agrees). Both figures are always
    present (argmax_agreement is None for outputs that are not class scores). ``data`` may be the
    inputs (array, list of arrays, dict) or ``(inputs, labels)``; random data uses ``samples`` rows
    (see :meth:`kslim.lite.inputs.Inputs.random`), given data up to 256. ``quantized``:
    :func:`has_int8_kernels` of ``lite`` when the caller already knows it (computed if None).
    """
    try:
        inputs = model_inputs(model, "parity")
    except ModelError:  # a subclassed model built by calling it: what the .tflite takes is what it takes
        inputs = lite.inputs
    limit = int(samples)
    if data is None:
        arrays = inputs.random(samples, seed)
    else:
        limit = max(limit, 256)
        x = inputs.features(data)
        if len(inputs) == 1 and not isinstance(x, dict) and np.asarray(x).dtype == np.uint8 and inputs.specs[0].is_float:
            x = np.asarray(x).astype(np.float32) / 255.0
        arrays = inputs.arrays(x, "check_data")
    arrays = [a[:max(limit, 1)] for a in arrays]
    ref = model(inputs.structure(arrays), training=False)
    if isinstance(ref, dict):
        ref = next(iter(ref.values()))
    if isinstance(ref, (list, tuple)):
        ref = ref[0]
    ref = np.asarray(ref, np.float32)
    feed = dict(zip(inputs.names, arrays)) if set(lite.input_names) == set(inputs.names) else arrays
    got = lite.predict(feed if len(arrays) > 1 or isinstance(feed, dict) else arrays[0])
    if quantized is None:
        quantized = has_int8_kernels(lite)
    agree = None
    if ref.ndim == 2 and ref.shape[-1] > 1:
        agree = float(np.mean(np.argmax(ref, -1) == np.argmax(got, -1)))
    diff = float(np.max(np.abs(ref - got)))
    kind = "argmax_agreement" if quantized and agree is not None else "max_abs_diff"
    return {"kind": kind, "value": agree if kind == "argmax_agreement" else diff, "max_abs_diff": diff,
            "argmax_agreement": agree, "samples": int(len(arrays[0])), "quantized": quantized}
