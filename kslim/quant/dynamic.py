"""Post-training dynamic quantization (no data): int8 or float16 weights, with float layers on request.

``quant_post_dynamic`` is the converter's dynamic-range (int8 weights, float activations quantized
on the fly by the hybrid kernels, about -75 % bytes) or float16 (about -50 %) mode. The converter
has no per-layer opt-out for these modes (its node denylist only exists in the full-integer
quantizer), so ``skip=[layer, ...]`` is applied on the flatbuffer: the named layers' operators get
their weights (and biases) back as float32 constants copied from a float conversion of the same
model, matched operator by operator (graph order, else output tensor names); the float16 ``DEQUANTIZE``
ops left without consumers are removed.
"""

import copy

import numpy as np

from kslim.errors import KslimValueError
from kslim.lite.inputs import model_inputs
from kslim.quant.ptq import (
    _DEQUANTIZE,
    _FLOAT32,
    check_skip,
    ops_of_layers,
)
from kslim.lite.flatbuffer import op_code, read_flatbuffer, schema, tensor_name, write_flatbuffer

DTYPES = ("int8", "float16")


def _keep_float(model, quantized, float_content, skip):
    """Give the ops of the ``skip`` layers their float32 weights back (see module docstring)."""
    qm = read_flatbuffer(quantized)
    fm = read_flatbuffer(float_content)
    qsg, fsg = qm.subgraphs[0], fm.subgraphs[0]
    # same graph, same op order once float16's DEQUANTIZE ops are set aside (names may differ)
    q_main = [op for op in qsg.operators if op_code(qm, op) != _DEQUANTIZE]
    f_main = [op for op in fsg.operators if op_code(fm, op) != _DEQUANTIZE]
    if len(q_main) == len(f_main) and all(op_code(qm, a) == op_code(fm, b) for a, b in zip(q_main, f_main)):
        f_of = {id(a): b for a, b in zip(q_main, f_main)}
    else:
        by_name = {tensor_name(fsg.tensors[op.outputs[0]]): op for op in fsg.operators}
        f_of = {id(op): by_name.get(tensor_name(qsg.tensors[op.outputs[0]])) for op in q_main}
    producer = {out: op for op in qsg.operators for out in op.outputs}
    for layer, ops in ops_of_layers(model, qm, skip, "quant_post_dynamic").items():
        for op in ops:
            out_name = tensor_name(qsg.tensors[op.outputs[0]])
            f_op = f_of.get(id(op))
            if f_op is None or len(f_op.inputs) != len(op.inputs):
                raise KslimValueError(
                    f"quant_post_dynamic(skip=...): cannot match layer {layer!r} ({out_name}) between the "
                    "float and the quantized conversions."
                )
            for k in range(1, len(op.inputs)):
                idx = op.inputs[k]
                if idx < 0:
                    continue
                src = producer.get(idx)
                through_dequantize = src is not None and op_code(qm, src) == _DEQUANTIZE
                if qsg.tensors[idx].type == _FLOAT32 and not through_dequantize:
                    continue
                f_t = fsg.tensors[f_op.inputs[k]]
                new_t = copy.deepcopy(f_t)
                buf = schema().BufferT()
                buf.data = np.asarray(fm.buffers[f_t.buffer].data, np.uint8).copy()
                qm.buffers.append(buf)
                new_t.buffer = len(qm.buffers) - 1
                qsg.tensors.append(new_t)
                op.inputs[k] = len(qsg.tensors) - 1
    # drop DEQUANTIZE ops nobody reads any more
    used = {i for op in qsg.operators for i in op.inputs} | set(qsg.outputs)
    qsg.operators = [op for op in qsg.operators
                     if not (op_code(qm, op) == _DEQUANTIZE and not any(o in used for o in op.outputs))]
    _drop_unused_tensors(qm)
    return write_flatbuffer(qm)


def _drop_unused_tensors(model_t):
    """Remove tensors no operator, graph input/output or signature uses (and free their buffers)."""
    sg = model_t.subgraphs[0]
    used = set(sg.inputs) | set(sg.outputs)
    for op in sg.operators:
        used |= {i for i in op.inputs if i >= 0} | {i for i in op.outputs if i >= 0}
        if op.intermediates is not None:
            used |= {i for i in op.intermediates if i >= 0}
    keep = [i for i in range(len(sg.tensors)) if i in used]
    if len(keep) == len(sg.tensors):
        return
    new_index = {old: new for new, old in enumerate(keep)}
    kept_buffers = {sg.tensors[i].buffer for i in keep}
    for i, t in enumerate(sg.tensors):
        if i not in used and t.buffer and t.buffer not in kept_buffers:
            model_t.buffers[t.buffer].data = None
    remap = lambda idx: [new_index[i] if i >= 0 else i for i in idx]  # noqa: E731
    for op in sg.operators:
        op.inputs = remap(op.inputs)
        op.outputs = remap(op.outputs)
        if op.intermediates is not None:
            op.intermediates = remap(op.intermediates)
    sg.inputs, sg.outputs = remap(sg.inputs), remap(sg.outputs)
    sg.tensors = [sg.tensors[i] for i in keep]
    for sig in model_t.signatureDefs or []:
        for tm in list(sig.inputs or []) + list(sig.outputs or []):
            tm.tensorIndex = new_index[tm.tensorIndex]


def quant_post_dynamic(model, weight_bits=8, dtype=None, skip=None, check=True, check_data=None, verbose=False):
    """Quantize the weights only, without calibration data -> :class:`kslim.lite.LiteModel`.

    Args:
        model: a built ``keras.Model``: one input, several (a list) or a dict of inputs (integer and
            boolean inputs keep their dtype); recurrent layers are converted to builtin ops as
            :func:`kslim.lite.convert` does.
        weight_bits: 8 (int8 dynamic range) or 16 (float16); ignored when ``dtype`` is given.
        dtype: ``"int8"`` (weights int8, activations quantized on the fly by hybrid kernels; only
            weights with >= 1024 elements are quantized, as the converter does) or ``"float16"``.
        skip: names of Conv2D/DepthwiseConv2D/Dense layers whose weights stay float32.
        check: fill ``lite.parity`` (max abs diff vs the Keras model on ``check_data`` — inputs as
            :func:`kslim.lite.parity` takes them — or random inputs).
        verbose: show the converter's output.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64), keras.layers.Dense(64, name="head")])
        >>> lite = quant_post_dynamic(m, skip=["head"])
        >>> sorted({d["dtype"].__name__ for d in lite.tensors() if len(d["shape"]) == 2})
        ['float32', 'int8']
    """
    from kslim.lite.converter import check_inputs, convert, keras_lite_model, parity

    model_inputs(model, "quant_post_dynamic")
    skip = check_skip(model, skip, "quant_post_dynamic")
    if check and check_data is not None:
        check_inputs(model, check_data)  # a mismatch is named before any conversion work
    if dtype is None:
        if weight_bits not in (8, 16):
            raise KslimValueError(
                f"weight_bits must be 8 (int8) or 16 (float16) for TFLite, got {weight_bits!r}."
            )
        dtype = "int8" if weight_bits == 8 else "float16"
    if dtype not in DTYPES:
        raise KslimValueError(f"dtype must be one of {DTYPES}, got {dtype!r}.")
    mode = "dynamic" if dtype == "int8" else "float16"
    lite = convert(model, quantize=mode, check=False, verbose=verbose)
    if skip:
        float_lite = convert(model, check=False, verbose=verbose)
        lite = keras_lite_model(_keep_float(model, lite.content, float_lite.content, list(skip)), model)
    lite.calibration = {"dtype": dtype, "skip": skip}
    if check:
        lite.parity = parity(model, lite, check_data)
    return lite
