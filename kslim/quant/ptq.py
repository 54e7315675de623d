"""Post-training static quantization with kslim's calibration algorithms enforced in the ``.tflite``.

The TFLite converter calibrates activations with plain running min/max only. ``quant_post_static``
computes every activation range itself (``abs_max``, ``avg``, ``hist``, ``KL`` or ``mse``, see
:mod:`kslim.quant.calibration`) and makes the converter use exactly those ranges:

1. the converter's *calibrate-only* path (``converter._experimental_calibrate_only = True``, as
   TensorFlow's own ``QuantizationDebugger`` uses it) gives a float ``.tflite`` whose activation
   tensors carry min/max fields (filled from a handful of samples; they are all overwritten);
2. that float model is run with ai-edge-litert (``experimental_preserve_all_tensors=True``) on the
   calibration batches, so the statistics are gathered on exactly the tensors that get quantized
   (after BatchNorm folding and activation fusion);
3. each tensor's min/max is replaced in the flatbuffer by the range kslim's algorithm picked
   (the flatbuffer object API of :mod:`kslim.lite.flatbuffer`);
4. ``tensorflow.lite.python.convert.mlir_quantize`` quantizes with those ranges (per-channel or
   per-tensor weights, int8 or float I/O, optional float ``skip`` layers via its node denylist).

(The alternative, setting the ranges on a QAT graph's ``ActivationQuantizer`` layers, was not
used: the TFLite graph fuses BatchNorm and activations, so ranges measured on the converted graph
are the ones that matter, and no Keras-side graph rewrite is needed.)

The resulting int8 tensors have ``scale == (hi - lo) / 255`` for kslim's ``(lo, hi)``;
``lite.activation_ranges`` records them by tensor name. The graph's outputs keep their observed
min/max whatever the algorithm: clipping the largest logits would turn a clear winner into a tie
(PaddleSlim leaves the last layer's output in float, which amounts to the same).
"""

import re
import warnings

import numpy as np

from kslim.errors import KslimValueError, UnsupportedLayerError
from kslim.lite._quiet import captured_output
from kslim.lite.inputs import model_inputs
from kslim.lite.flatbuffer import builtin, op_code, read_flatbuffer, schema, tensor_name, tensor_type, write_flatbuffer
from kslim.lite.runner import make_interpreter
from kslim.quant.calibration import TensorObserver, check_algo, needs_histogram
from kslim.quant.config import WEIGHT_QUANTIZE_TYPES

IO_TYPES = ("float32", "int8")

# TFLite builtin operator and tensor type codes used here (named from the schema, kslim.lite.flatbuffer)
_DEQUANTIZE, _QUANTIZE = builtin("DEQUANTIZE"), builtin("QUANTIZE")
_WEIGHT_OPS = tuple(builtin(n) for n in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"))
_FLOAT32, _INT32, _INT8 = (tensor_type(n) for n in ("FLOAT32", "INT32", "INT8"))


# ---------------------------------------------------------------------------- inputs
def calibration_batches(data, inputs, batch_size=32, batch_nums=None, name="calibration_data"):
    """Normalise calibration data to a list of batches of ``batch_size`` samples; each batch is a list
    of arrays, one per model input (model order), each in its input's dtype.

    ``data``: the inputs (an array; a list of arrays or a dict for multi-input models), a
    ``tf.data.Dataset`` (of batches, or of ``(inputs, labels)``), any iterable of such batches, or a
    callable returning one (see :mod:`kslim.lite.inputs`). ``inputs``: from :func:`check_model`. At most
    ``batch_nums`` batches are kept (``None``: all). Raises :class:`KslimValueError` naming the problem
    (and the input) for empty data, NaN/inf values, a missing input or a shape that does not match.
    """
    if batch_size is None or int(batch_size) < 1:
        raise KslimValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if batch_nums is not None and int(batch_nums) < 1:
        raise KslimValueError(f"batch_nums must be a positive integer or None, got {batch_nums!r}.")
    batch_size = int(batch_size)
    limit = None if batch_nums is None else int(batch_nums) * batch_size
    parts, count = [], 0
    for i, arrays in enumerate(inputs.batches(data, name, allow_unbatched=True)):
        for spec, arr in zip(inputs, arrays):
            if spec.is_float and not np.all(np.isfinite(arr)):
                raise KslimValueError(
                    f"{name}: element {i} (input {spec.name!r}) contains NaN or inf values; clean the calibration data.")
        if limit is not None:
            arrays = [a[: limit - count] for a in arrays]
        parts.append(arrays)
        count += len(arrays[0])
        if limit is not None and count >= limit:
            break
    if count == 0:
        raise KslimValueError(f"{name} is empty: post-training quantization needs calibration samples.")
    flat = [np.concatenate([p[k] for p in parts], axis=0) for k in range(len(inputs))]
    return [[a[s:s + batch_size] for a in flat] for s in range(0, count, batch_size)]


def batch_len(batch):
    """Samples in a batch (a list of per-input arrays, or one array)."""
    return len(batch[0]) if isinstance(batch, (list, tuple)) else len(batch)


def concat_batches(batches, limit=None):
    """The batches of :func:`calibration_batches` joined into one (at most ``limit`` samples)."""
    return [np.concatenate([b[k] for b in batches], axis=0)[:limit] for k in range(len(batches[0]))]


# ---------------------------------------------------------------------------- layer names in tensors
def layer_pattern(model, layer_name, names):
    """Regex matching the TF name scopes of Keras layer ``layer_name`` in tensor ``names``.

    Keras 3 traces each layer under ``<layer>`` or ``<layer>_<n>`` (the same suffix as the model's
    own scope), e.g. ``mobilenet_v1_1/block2_pw_1/convolution``.
    """
    suffix = None
    model_scope = re.compile(rf"^{re.escape(model.name)}(_\d+)?/")
    for n in names:
        m = model_scope.match(n)
        if m:
            suffix = m.group(1) or ""
            break
    if suffix is None:
        return re.compile(rf"(^|[/;]){re.escape(layer_name)}(_\d+)?/")
    return re.compile(rf"(^|[/;]){re.escape(layer_name)}{re.escape(suffix)}/")


def layers_in_name(model, name, all_names=()):
    """Keras layer names whose scopes appear in a (possibly fused, ``;``-joined) tensor name."""
    found = []
    for layer in model.layers:
        if layer_pattern(model, layer.name, all_names or (name,)).search(name):
            found.append(layer.name)
    return found


def check_skip(model, skip, fn="quant_post_static"):
    """Normalise ``skip`` to a list of layer names, all present in ``model`` (checked before converting)."""
    if not skip:
        return []
    if isinstance(skip, str):
        skip = [skip]
    known = {layer.name for layer in model.layers}
    for layer in skip:
        if layer not in known:
            raise KslimValueError(
                f"{fn}(skip=...): model {model.name!r} has no layer {layer!r}; "
                f"layers: {', '.join(sorted(known))}."
            )
    return list(skip)


def ops_of_layers(model, model_t, layer_names, fn="quant_post_static"):
    """``{layer: [operator, ...]}``: the weight-carrying ops (conv/depthwise/dense) of each named layer."""
    sg = model_t.subgraphs[0]
    names = [tensor_name(t) for t in sg.tensors]
    out = {}
    for layer in check_skip(model, layer_names, fn):
        pat = layer_pattern(model, layer, names)
        ops = []
        for op in sg.operators:
            if op_code(model_t, op) not in _WEIGHT_OPS:
                continue
            tensors = [names[i] for i in list(op.outputs) + list(op.inputs)[1:2] if i >= 0]
            if any(pat.search(n) for n in tensors):
                ops.append(op)
        if not ops:
            raise _no_weights_error(layer, fn)
        out[layer] = ops
    return out


def _no_weights_error(layer, fn):
    return UnsupportedLayerError(
        f"{fn}(skip=...): layer {layer!r} has no convolution or dense operator of its own in the "
        "TFLite graph (only Conv2D, DepthwiseConv2D and Dense layers carry quantized weights)."
    )


class TensorRunner:
    """Runs a ``.tflite`` keeping every intermediate tensor (ai-edge-litert, 1 thread, no delegate).

    ``runner(x, wanted)`` returns ``{name: float array}`` for the tensors named in ``wanted``
    (default: every non-constant tensor with a batch axis); integer tensors are dequantized. ``x``
    is one array (single-input models), a list of arrays in the Keras model's input order, or a dict
    keyed by input name; inputs are matched to the graph's by signature name.
    """

    def __init__(self, content):
        from kslim.lite.model import LiteModel

        self.lite = LiteModel(content)
        self.interp = make_interpreter(content, num_threads=1, preserve_all_tensors=True)
        self.inputs = self.lite.inputs
        self.shapes = None

    def __call__(self, x, wanted=None):
        from kslim.lite.model import dequantize_io, quantize_io

        interp = self.interp
        arrays = self.inputs.arrays(x, "calibration batch")
        n = len(arrays[0])
        details = self.lite._signature(interp)[0]  # noqa: SLF001 - same package
        shapes = [a.shape for a in arrays]
        if self.shapes != shapes:
            for (_, d), a in zip(details, arrays):
                interp.resize_tensor_input(d["index"], list(a.shape))
            interp.allocate_tensors()
            self.shapes = shapes
            details = self.lite._signature(interp)[0]  # noqa: SLF001
        for (_, d), a in zip(details, arrays):
            interp.set_tensor(d["index"], quantize_io(a, d))
        interp.invoke()
        out = {}
        for d in interp.get_tensor_details():
            if wanted is not None and d["name"] not in wanted:
                continue
            if wanted is None and (d["shape"].size == 0 or d["shape"][0] != n):
                continue
            try:
                val = interp.get_tensor(d["index"])
            except ValueError:  # unallocated tensor
                continue
            if val is None or val.size == 0:
                continue
            out[d["name"]] = dequantize_io(val, d)
        return out


def run_all_tensors(content, x, wanted=None):
    """One-shot :class:`TensorRunner`: run ``content`` on ``x``; ``{name: float array}``."""
    return TensorRunner(content)(x, wanted)


# ---------------------------------------------------------------------------- calibration
def calibrate_only(model, samples, verbose=False, fn="quant_post_static"):
    """The converter's float ``.tflite`` with min/max fields on every activation to be quantized.

    ``samples``: one batch (a list of per-input arrays, model order) fed to the converter's
    calibrator sample by sample, each input with its own dtype.
    """
    import tensorflow as tf

    from kslim.lite.converter import keras_converter, keras_lite_model, run_converter

    inputs = model_inputs(model, fn)
    n = batch_len(samples)
    rep = [{s.name: a[i:i + 1] for s, a in zip(inputs, samples)} for i in range(n)]
    with keras_converter(model, "int8", fn) as conv:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.representative_dataset = lambda: iter(rep)
        conv.experimental_new_quantizer = True
        conv._experimental_calibrate_only = True  # noqa: SLF001 - the documented debugger path
        with warnings.catch_warnings():
            # "Statistics for quantized inputs were expected": irrelevant, the calibrator measures them
            warnings.simplefilter("ignore" if not verbose else "default")
            content = run_converter(model, conv, verbose, "TFLite calibration conversion")
    return keras_lite_model(content, model).content  # multi-input: records the Keras input order


def collect_statistics(calibrated, batches, algo="KL", bins=2048, bits=None):
    """Observe tensors of a float ``.tflite`` over ``batches``; ``{name: TensorObserver}``.

    ``bits``: ``{tensor name: 8 or 16}`` of the tensors to observe (at the width each is quantized to);
    by default every tensor carrying min/max in ``calibrated`` (the converter's calibrated model), at 8 bits.
    """
    if bits is None:
        sg = read_flatbuffer(calibrated).subgraphs[0]
        bits = {
            tensor_name(t): 8 for t in sg.tensors
            if t.quantization is not None and t.quantization.min is not None and len(t.quantization.min)
        }
    names = set(bits)
    observers = {n: TensorObserver(n, bins, b) for n, b in bits.items()}
    run = TensorRunner(calibrated)
    for b in batches:
        for n, v in run(b, names).items():
            observers[n].update_range(v)
    if needs_histogram(algo):
        for b in batches:
            for n, v in run(b, names).items():
                observers[n].update_hist(v)
    return {n: o for n, o in observers.items() if o.batch_abs_max}


def graph_outputs(content):
    """Names of the graph's output tensors."""
    sg = read_flatbuffer(content).subgraphs[0]
    return {tensor_name(sg.tensors[i]) for i in sg.outputs}


def write_ranges(calibrated, ranges):
    """Return ``calibrated`` with the min/max of each named tensor replaced by ``ranges[name]``."""
    model_t = read_flatbuffer(calibrated)
    for t in model_t.subgraphs[0].tensors:
        r = ranges.get(tensor_name(t))
        if r is not None and t.quantization is not None:
            t.quantization.min = np.array([r[0]], np.float32)
            t.quantization.max = np.array([r[1]], np.float32)
    return write_flatbuffer(model_t)


def mlir_quantize(calibrated, per_channel=True, inference_input_type="float32",
                  inference_output_type="float32", denylisted_nodes=None, verbose=False, model=None):
    """Quantize a calibrated float ``.tflite`` with the MLIR quantizer (the converter's last step).

    ``inference_input_type="int8"`` applies to the float inputs (integer/boolean inputs keep their
    dtype); ``model`` (the Keras model) only names layers in error messages.
    """
    import tensorflow as tf
    from tensorflow.lite.python import convert as tfl_convert

    with captured_output(verbose) as log:
        try:
            return bytes(tfl_convert.mlir_quantize(
                calibrated,
                disable_per_channel=not per_channel,
                fully_quantize=False,
                input_data_type=tf.as_dtype(inference_input_type),
                output_data_type=tf.as_dtype(inference_output_type),
                denylisted_nodes=list(denylisted_nodes) if denylisted_nodes else None,
            ))
        except Exception as e:
            from kslim.lite.converter import conversion_error

            raise conversion_error(model, e, log(), "TFLite quantization") from e


# ---------------------------------------------------------------------------- bias correction
def _fused_activation_bounds(op):
    act = getattr(op.builtinOptions, "fusedActivationFunction", 0) if op.builtinOptions is not None else 0
    return {0: (-np.inf, np.inf), 1: (0.0, np.inf), 2: (-1.0, 1.0), 3: (0.0, 6.0)}.get(int(act), (-np.inf, np.inf))


def correct_bias(quantized, calibrated, x):
    """Empirical bias correction: make each int8 conv/dense output unbiased w.r.t. the float model.

    For every CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED with an int32 bias, in graph order, the
    per-channel mean of ``dequant(q_out) - float_out`` over the samples ``x`` (elements inside the
    fused activation's linear region and not saturated on the int8 grid) is subtracted from the bias
    (in bias units, ``scale_in * scale_w[c]``). Layers are corrected one after the other so each sees
    its corrected predecessors.
    """
    model_t = read_flatbuffer(quantized)
    sg = model_t.subgraphs[0]
    names = [tensor_name(t) for t in sg.tensors]
    targets = []
    for op in sg.operators:
        if op_code(model_t, op) not in _WEIGHT_OPS or len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        b = sg.tensors[op.inputs[2]]
        out = sg.tensors[op.outputs[0]]
        if b.type != _INT32 or out.type != _INT8 or b.quantization is None or b.quantization.scale is None:
            continue
        targets.append(op)
    if not targets:
        return quantized
    # float reference of each output: same name, or (graph outputs) the DEQUANTIZE that follows it
    reference = {}
    for op in sg.operators:
        if op_code(model_t, op) == _DEQUANTIZE and op.inputs[0] >= 0:
            reference[names[op.inputs[0]]] = names[op.outputs[0]]
    float_names = {tensor_name(t) for t in read_flatbuffer(calibrated).subgraphs[0].tensors}
    ref_of = {}
    for op in targets:
        n = names[op.outputs[0]]
        ref_of[n] = n if n in float_names else reference.get(n)
    float_vals = run_all_tensors(calibrated, x, {r for r in ref_of.values() if r})
    # give every corrected bias its own buffer (the quantizer may share identical ones)
    users = {}
    for t in sg.tensors:
        users[t.buffer] = users.get(t.buffer, 0) + 1
    content = quantized
    for op in targets:
        out_name = names[op.outputs[0]]
        if ref_of.get(out_name) not in float_vals:
            continue
        out_t = sg.tensors[op.outputs[0]]
        q = run_all_tensors(content, x, {out_name}).get(out_name)
        f = float_vals[ref_of[out_name]]
        if q is None or q.shape != f.shape:
            continue
        lo, hi = _fused_activation_bounds(op)
        scale = float(out_t.quantization.scale[0])
        zp = int(out_t.quantization.zeroPoint[0])
        q_int = np.round(q / scale + zp)
        mask = (f > lo) & (f < hi) & (q > lo) & (q < hi) & (q_int > -128) & (q_int < 127)
        axes = tuple(range(f.ndim - 1))
        n = mask.sum(axis=axes)
        delta = np.where(n > 0, ((q - f) * mask).sum(axis=axes) / np.maximum(n, 1), 0.0)
        b_t = sg.tensors[op.inputs[2]]
        b_scale = np.asarray(b_t.quantization.scale, np.float64)
        buf = model_t.buffers[b_t.buffer]
        bias = np.frombuffer(np.asarray(buf.data, np.uint8).tobytes(), np.int32).astype(np.int64)
        if b_scale.size not in (1, bias.size) or delta.size != bias.size:
            continue
        bias = np.clip(bias - np.round(delta / b_scale), -(2 ** 31), 2 ** 31 - 1).astype(np.int32)
        if users.get(b_t.buffer, 1) > 1:
            new = schema().BufferT()
            model_t.buffers.append(new)
            users[b_t.buffer] -= 1
            b_t.buffer = len(model_t.buffers) - 1
            buf = new
        buf.data = np.frombuffer(bias.tobytes(), np.uint8).copy()
        content = write_flatbuffer(model_t)
    return content


# ---------------------------------------------------------------------------- public API
def _check_options(algo, weight_quantize_type, inference_input_type, inference_output_type, hist_percent, bins):
    check_algo(algo)
    if weight_quantize_type not in WEIGHT_QUANTIZE_TYPES:
        raise KslimValueError(
            f"weight_quantize_type must be one of {WEIGHT_QUANTIZE_TYPES}, got {weight_quantize_type!r}."
        )
    for field, t in (("inference_input_type", inference_input_type),
                     ("inference_output_type", inference_output_type)):
        if t not in IO_TYPES:
            raise KslimValueError(f"{field} must be one of {IO_TYPES}, got {t!r}.")
    if not 0.0 < float(hist_percent) <= 1.0:
        raise KslimValueError(f"hist_percent must be in (0, 1], got {hist_percent!r}.")
    if int(bins) < 16:
        raise KslimValueError(f"bins must be >= 16, got {bins!r}.")


def _quantize_static(model, calibration_data, algo, batch_nums, batch_size, hist_percent, bins,
                     weight_quantize_type, inference_input_type, inference_output_type,
                     bias_correction, skip, verbose, fn="quant_post_static"):
    """Shared by :func:`quant_post_static` and :func:`kslim.quant.quant_debug`.

    Returns ``(calibrated_float_content, quantized_content, ranges, batches)``.
    """
    from kslim.lite.converter import _rnn_plan

    _check_options(algo, weight_quantize_type, inference_input_type, inference_output_type, hist_percent, bins)
    inputs = model_inputs(model, fn)
    skip = check_skip(model, skip, fn)
    _rnn_plan(model, "int8", fn)  # a variable-length RNN cannot be int8: say so before any work
    batches = calibration_batches(calibration_data, inputs, batch_size, batch_nums)
    first = [a[:8] for a in batches[0]]
    calibrated = calibrate_only(model, first, verbose, fn)
    observers = collect_statistics(calibrated, batches, algo, bins)
    outputs = graph_outputs(calibrated)
    ranges = {n: o.range("abs_max" if n in outputs else algo, hist_percent) for n, o in observers.items()}
    calibrated = write_ranges(calibrated, ranges)
    denylist = None
    if skip:
        model_t = read_flatbuffer(calibrated)
        names = [tensor_name(t) for t in model_t.subgraphs[0].tensors]
        denylist = sorted({names[op.outputs[0]] for ops in ops_of_layers(model, model_t, skip, fn).values()
                           for op in ops})
    quantized = mlir_quantize(calibrated, weight_quantize_type == "channel_wise_abs_max",
                              inference_input_type, inference_output_type, denylist, verbose, model)
    if bias_correction:
        quantized = correct_bias(quantized, calibrated, concat_batches(batches, 256))
    return calibrated, quantized, ranges, batches


def quant_post_static(model, calibration_data, algo="KL", batch_nums=None, batch_size=32,
                      hist_percent=0.9999, bins=2048, weight_quantize_type="channel_wise_abs_max",
                      inference_input_type="float32", inference_output_type="float32",
                      bias_correction=False, skip=None, check=True, verbose=False):
    """Full-integer post-training quantization with kslim-calibrated activation ranges -> ``LiteModel``.

    Args:
        model: a built ``keras.Model`` (float): one input, several (a list) or a dict of inputs.
            Integer and boolean inputs (token ids, masks) are calibrated and fed with their own
            dtype; Embedding tables become int8 GATHERs. Recurrent layers (LSTM, GRU, SimpleRNN,
            Bidirectional) need a fixed sequence length: they are unrolled, every step int8.
        calibration_data: calibration inputs: an array ``(N, *input_shape)`` (a list of arrays in
            the model's input order, or a dict keyed by input name, for multi-input models),
            ``tf.data`` (batches or ``(inputs, labels)``), an iterable of batches or a callable
            returning one. A few hundred samples are plenty.
        algo: activation calibration: ``"abs_max"``, ``"avg"``, ``"hist"``, ``"KL"``, ``"mse"`` or one's
            own, registered with :func:`kslim.quant.calibration.register_calibrator`.
        batch_nums: use at most this many batches (``None``: all the data).
        batch_size: samples per calibration batch (``avg`` averages per-batch maxima).
        hist_percent: percentile kept by ``algo="hist"``.
        bins: histogram bins for ``hist``/``KL``/``mse`` (refined automatically around outliers).
        weight_quantize_type: ``"channel_wise_abs_max"`` (per output channel, symmetric) or
            ``"abs_max"`` (one scale per tensor).
        inference_input_type / inference_output_type: ``"float32"`` (the model quantizes/dequantizes
            itself) or ``"int8"`` (int8 I/O tensors for the float inputs/outputs; integer and
            boolean inputs keep their dtype; ``LiteModel.predict`` still takes floats).
        bias_correction: after quantization, shift each conv/dense int32 bias by the mean error its
            int8 output shows against the float model on the calibration data (per channel), which
            removes the systematic offset weight rounding introduces (Nagel et al., 2019, empirical
            bias correction; PaddleSlim's ``bias_correction``). Costs one run per layer.
        skip: names of Conv2D/DepthwiseConv2D/Dense layers to keep in float (their ops are left out
            of quantization; the converter inserts (de)quantize ops around them).
        check: fill ``lite.parity`` (argmax agreement with the Keras model on calibration samples).
        verbose: show the converter's own output.

    Returns:
        A :class:`kslim.lite.LiteModel`; ``lite.activation_ranges`` maps each calibrated tensor name
        to the ``(lo, hi)`` enforced on it and ``lite.calibration`` records the settings.

    Example:
        >>> import keras, numpy as np
        >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="relu")])
        >>> x = np.random.rand(64, 8).astype("float32")
        >>> lite = quant_post_static(m, x, algo="mse")
        >>> "FULLY_CONNECTED" in lite.ops()
        True
    """
    from kslim.lite.converter import keras_lite_model, parity

    _, quantized, ranges, batches = _quantize_static(
        model, calibration_data, algo, batch_nums, batch_size, hist_percent, bins, weight_quantize_type,
        inference_input_type, inference_output_type, bias_correction, skip, verbose)
    lite = keras_lite_model(quantized, model)
    lite.activation_ranges = ranges
    lite.calibration = {"algo": algo, "samples": int(sum(batch_len(b) for b in batches)), "batches": len(batches),
                        "weight_quantize_type": weight_quantize_type, "bias_correction": bool(bias_correction),
                        "skip": check_skip(model, skip)}
    if check:
        lite.parity = parity(model, lite, concat_batches(batches, 64))
    return lite
