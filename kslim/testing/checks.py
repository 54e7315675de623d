"""The checks of issue 13, run on one model the way a new user would call kslim.

Each check is a function ``check(ctx) -> CheckResult`` (see :data:`CHECKS`); :func:`run_checks` builds
a zoo entry once and runs the checks asked for, each independent of the others (the model's weights are
restored after each check; temporary files go to a fresh temporary folder per check).

Statuses:

* ``ok``: kslim ran and every assertion about its result held;
* ``kslim_error``: kslim raised a :class:`kslim.errors.KslimError` (a documented refusal, with a message);
* ``raw_error``: any other exception escaped (a bug to report: ``where`` names the innermost kslim frame);
* ``fail``: kslim ran but an assertion about the result failed (``detail`` says which, with the figures);
* ``skipped``: the check cannot judge kslim: it needs the result of another kslim call that did not
  succeed (``keras_roundtrip`` needs a pruned model; the other check counts the cause), or the user's own
  unpruned model does not survive the same ``.keras`` round trip; ``detail`` says which.

Assertions and tolerances (``x``: 16 samples of :func:`~kslim.testing.zoo.sample_inputs`, seed 0;
calibration: 32 other samples, seed 1):

``prune``
    ``L1NormFilterPruner(model).prune(0.3)``: the same output shapes, fewer MACs by
    :func:`kslim.analysis.flops` (parameters when ``flops`` itself raises), and the zero-channel exactness
    check of ``tests/test_prune.py``: the channels the plan removes are made exactly zero at every producer
    (filters, biases, BatchNormalization shift and mean) in the original, then the pruned copy of that
    zeroed model must give the zeroed original's outputs within ``EXACT_TOL * max(1, max|output|)``.
``keras_roundtrip``
    the pruned model saved as ``.keras`` and loaded with ``safe_mode=True`` gives the same outputs
    within ``ROUNDTRIP_TOL * max(1, max|output|)``. When loading fails, the unpruned model is put
    through the same round trip: if it fails too the check is ``skipped`` (Keras/keras-hub's limit).
    (The same when saving fails.)
``qat``
    ``quant_aware(model)``, calibrated by running 2 batches of 16 calibration samples in training mode
    (the activation quantizers learn their ranges as in ``fit``; no weight update), ``kslim.quant.convert``
    with its defaults, the ``.tflite`` written and loaded back: no float compute op
    (:func:`kslim.quant.float_ops` empty) and correlation of the outputs of the ``.tflite`` with the
    Keras QAT model's (``training=False``) >= ``QAT_MIN_CORR``.
``ptq_static``
    ``quant_post_static(model, calibration)`` (defaults: ``algo="KL"``): the model has int8 kernels, runs,
    and its outputs correlate with the float Keras model's >= ``PTQ_MIN_CORR`` (float ops left inside
    are recorded in ``data``, not failed; on a failure ``data`` also has the correlation the TFLite
    converter's own PTQ reaches on the same samples, for reference).
``ptq_litert``
    ``quant_post_litert(model, "int8", calibration, algo="KL")`` (LiteRT's quantizer with kslim's ranges):
    the same criteria as ``ptq_static`` -- the robustness side of comparing the two PTQ backends.
``ptq_dynamic``
    ``quant_post_dynamic(model)``: runs, correlation with the float model >= ``DYNAMIC_MIN_CORR``.
``float_convert``
    ``kslim.lite.convert(model)``: outputs within ``FLOAT_TOL * max(1, max|output|)`` of Keras.
``flops``
    ``kslim.analysis.flops(model)`` (with ``input_shape`` when the model leaves an axis undefined, as its
    error message asks): MACs > 0 and ``report.uncounted`` empty.

Correlation: Pearson correlation of the sample-dependent part of the outputs (each output element minus
its mean over the 16 samples; :func:`centered_correlation`). The plain correlation of the outputs is
dominated by the constant per-class offsets and stays near 1 even for a model that ignores its input; it
is recorded as ``raw_correlation``.

The ``.tflite`` models are run with ai-edge-litert directly (every input set by name, integer inputs
keep their dtype), so that multi-input and dict-input models are compared too.
"""

from kslim.graph.keras_graph import all_layers  # noqa: E402 (no TensorFlow at import: keras only)
import contextlib
import os
import re
import shutil
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

STATUSES = ("ok", "kslim_error", "raw_error", "fail", "skipped")
CHECK_NAMES = ("prune", "keras_roundtrip", "qat", "ptq_static", "ptq_dynamic", "float_convert", "flops",
               "ptq_litert")

PRUNE_RATIO = 0.3
EXACT_TOL = 1e-4        # zero-channel exactness: float32 re-association of sums over fewer channels
ROUNDTRIP_TOL = 1e-6    # .keras save/load: the same ops on the same weights
FLOAT_TOL = 1e-3        # float .tflite vs Keras (XNNPACK kernels sum in another order)
QAT_MIN_CORR = 0.95     # int8 .tflite vs the Keras QAT model (fake-quant) it was converted from
PTQ_MIN_CORR = 0.90     # int8 PTQ .tflite vs the float model
DYNAMIC_MIN_CORR = 0.95  # int8-weight dynamic-range .tflite vs the float model
N_EVAL, N_CALIB, CALIB_BATCHES = 16, 32, 2


class CheckFailed(AssertionError):
    """An assertion about kslim's result failed (status ``fail``); ``data`` keeps the figures."""

    def __init__(self, message, **data):
        super().__init__(message)
        self.data = data


class Skipped(Exception):
    """The check cannot run: a kslim call it depends on did not succeed (status ``skipped``)."""


class BrokenResult(RuntimeError):
    """A model kslim returned raises when it is called (status ``raw_error``; ``where`` is the call's)."""


@dataclass
class CheckResult:
    """The outcome of one check on one zoo entry.

    Attributes:
        entry, check: what was checked.
        status: one of :data:`STATUSES`.
        detail: one line: the figures for ``ok``/``fail``, the exception's first line otherwise.
        seconds: wall time of the check.
        data: figures (MACs, correlations, float ops, ...), JSON-serialisable.
        error_type: the exception's class for ``kslim_error``/``raw_error``.
        where: for exceptions: the innermost frame in kslim (``kslim/x.py:123 in func``) and the innermost
            frame overall when that one is elsewhere (Keras, TensorFlow, keras-hub).
        traceback: the formatted traceback (raw errors only).
    """

    entry: str
    check: str
    status: str
    detail: str = ""
    seconds: float = 0.0
    data: dict = field(default_factory=dict)
    error_type: str = ""
    where: str = ""
    traceback: str = ""

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class Context:
    """What every check of one entry shares: the model, its inputs, a scratch folder."""

    entry: str
    model: object
    x: object                   # N_EVAL samples, seed 0
    calib: object               # N_CALIB samples, seed 1
    workdir: Path
    cache: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------ helpers
def _first_line(e):
    text = str(e).strip()
    return text.splitlines()[0][:400] if text else type(e).__name__


def _where(exc):
    if isinstance(exc, BrokenResult) and exc.__cause__ is not None:
        exc = exc.__cause__
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    here = os.path.dirname(os.path.abspath(__file__))
    pkg = os.path.dirname(here)

    def fmt(f):
        path = f.filename
        for root, label in ((pkg, "kslim"), (os.path.dirname(os.path.dirname(np.__file__)), "")):
            if path.startswith(root + os.sep):
                path = os.path.join(label, os.path.relpath(path, root)) if label else os.path.relpath(path, root)
                break
        return f"{path}:{f.lineno} in {f.name}"

    ours = [f for f in frames if f.filename.startswith(pkg + os.sep) and not f.filename.startswith(here + os.sep)]
    parts = []
    if ours:
        parts.append(fmt(ours[-1]))
    if not ours or frames[-1] is not ours[-1]:
        parts.append(("raised at " if ours else "") + fmt(frames[-1]))
    return "; ".join(parts)


def _flat(y):
    import keras

    return [np.asarray(v) for v in keras.tree.flatten(y)]


def outputs(model, x):
    """The model's outputs on ``x`` (inference mode) as a flat list of numpy arrays."""
    return _flat(model(x, training=False))


def result_outputs(model, x, what):
    """:func:`outputs` of a model kslim returned; raises :class:`BrokenResult` naming ``what`` if it fails."""
    try:
        return outputs(model, x)
    except Exception as e:
        raise BrokenResult(f"the model returned by {what} fails when called: {type(e).__name__}: "
                           f"{_first_line(e)}{_cause_line(e)}") from e


def _cause_line(e):
    """The first informative line of a Keras 'Exception encountered when calling X.call()' message."""
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    if len(lines) > 1 and "Exception encountered" in lines[0]:
        return " -- " + re.sub(r"\x1b\[[0-9;]*m", "", lines[1])[:200]
    return ""


def _scale(a):
    return max(1.0, float(np.max(np.abs(a)))) if a.size else 1.0


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(a) else 0.0


def correlation(a, b):
    """Pearson correlation of two arrays (flattened); 1.0 if both are constant and equal, else 0.0 for a
    constant one."""
    a = np.asarray(a, np.float64).reshape(-1)
    b = np.asarray(b, np.float64).reshape(-1)
    if a.std() < 1e-12 or b.std() < 1e-12:
        return 1.0 if np.allclose(a, b, atol=1e-6) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


def argmax_agreement(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or a.shape[-1] < 2:
        return None
    return float(np.mean(np.argmax(a, -1) == np.argmax(b, -1)))


def _has_undefined_axis(model):
    return any(d is None for t in model.inputs for d in tuple(t.shape)[1:])


def _input_shapes(model, x):
    """The input shapes (no batch axis) of ``x`` in ``model.inputs`` order, for ``flops(input_shape=)``."""
    from kslim.testing.zoo import _flat_inputs

    flat = _flat_inputs(model)
    if len(flat) == 1:
        arrays = [x if not isinstance(x, (dict, list, tuple)) else next(iter(x.values() if isinstance(x, dict) else x))]
    elif isinstance(x, dict):
        arrays = [x[k] for k, _ in flat]
    else:
        arrays = list(x)
    by_id = {id(t): a for (_, t), a in zip(flat, arrays)}
    ordered = [by_id.get(id(t)) for t in model.inputs]
    if any(a is None for a in ordered):
        ordered = arrays
    shapes = [tuple(a.shape[1:]) for a in ordered]
    return shapes[0] if len(shapes) == 1 else shapes


def _flops(model, x):
    """``kslim.analysis.flops`` as a user calls it: ``input_shape`` only when the model leaves an axis undefined."""
    from kslim.analysis import flops

    if _has_undefined_axis(model):
        return flops(model, input_shape=_input_shapes(model, x))
    return flops(model)


def _input_arrays(model, x):
    """``[(name, array)]`` of the inputs, named as Keras names them (dict key or input layer name)."""
    from kslim.testing.zoo import _flat_inputs

    flat = _flat_inputs(model)
    if len(flat) == 1:
        key, t = flat[0]
        arr = x
        if isinstance(x, dict):
            arr = next(iter(x.values()))
        elif isinstance(x, (list, tuple)):
            arr = x[0]
        return [(str(key) if isinstance(key, str) else _tensor_name(t), np.asarray(arr))]
    if isinstance(x, dict):
        return [(str(k), np.asarray(x[k])) for k, _ in flat]
    return [(_tensor_name(t), np.asarray(a)) for (_, t), a in zip(flat, x)]


def _tensor_name(t):
    from kslim.graph import keras_graph as kg

    return getattr(kg.producer(t), "name", None) or getattr(t, "name", "input")


def _tflite_name(detail):
    name = detail["name"]
    if name.startswith("serving_default_"):
        name = name[len("serving_default_"):]
    return name.rsplit(":", 1)[0]


def run_tflite(content, model, x):
    """Run a ``.tflite`` (bytes) on the inputs ``x`` of ``model`` with ai-edge-litert; returns the output
    whose shape matches the Keras model's first output (float32, int8 dequantized).

    Inputs are matched to the interpreter's by name (``serving_default_<name>:0``), else by order.
    """
    from ai_edge_litert.interpreter import Interpreter

    from kslim.lite.model import dequantize_io, quantize_io

    arrays = _input_arrays(model, x)
    interp = Interpreter(model_content=bytes(content), num_threads=1)
    details = interp.get_input_details()
    if len(details) != len(arrays):
        raise CheckFailed(f"the .tflite has {len(details)} inputs, the Keras model {len(arrays)}")
    by_name = {}
    for d in details:
        tname = _tflite_name(d)
        match = [i for i, (n, _) in enumerate(arrays) if n == tname] or \
                [i for i, (n, _) in enumerate(arrays) if n in tname or tname in n]
        if len(match) == 1:
            by_name[d["index"]] = match[0]
    if len(set(by_name.values())) != len(details):
        by_name = {d["index"]: i for i, d in enumerate(details)}
    for d in details:
        arr = arrays[by_name[d["index"]]][1]
        if list(d["shape"]) != list(arr.shape):
            interp.resize_tensor_input(d["index"], list(arr.shape))
    interp.allocate_tensors()
    for d in interp.get_input_details():
        arr = arrays[by_name[d["index"]]][1]
        interp.set_tensor(d["index"], quantize_io(arr, d))
    interp.invoke()
    outs = [dequantize_io(interp.get_tensor(d["index"]), d) for d in interp.get_output_details()]
    return outs


def _pick_output(outs, ref):
    same = [o for o in outs if o.shape == ref.shape]
    if not same:
        raise CheckFailed(f"no .tflite output has the Keras output's shape {ref.shape} "
                          f"(outputs: {[o.shape for o in outs]})")
    return same[0]


def compare_lite(content, model, x, what=None):
    """(first Keras output, .tflite output of the same shape); ``what`` names the kslim call that returned
    ``model`` when it is kslim's (its failure is then a :class:`BrokenResult`)."""
    ref = (result_outputs(model, x, what) if what else outputs(model, x))[0]
    got = _pick_output(run_tflite(content, model, x), ref)
    return ref, got


def centered_correlation(a, b):
    """:func:`correlation` of the sample-dependent part: each output element minus its mean over the batch."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return correlation(a - a.mean(axis=0, keepdims=True), b - b.mean(axis=0, keepdims=True))


def _quant_metrics(ref, got):
    """``correlation`` is the centered one (what the checks assert); ``raw_correlation`` for reference."""
    return {"correlation": round(centered_correlation(ref, got), 5),
            "raw_correlation": round(correlation(ref, got), 5),
            "argmax_agreement": argmax_agreement(ref, got), "max_abs_diff": _max_diff(ref, got)}


def _op_histogram(lite):
    try:
        return dict(sorted(lite.ops().items()))
    except Exception:  # noqa: BLE001 - informative only
        return {}


def _float_ops(lite):
    from kslim.quant import float_ops

    bad = float_ops(lite)
    counts = {}
    for op, _ in bad:
        counts[op] = counts.get(op, 0) + 1
    return counts


# ------------------------------------------------------------------------------------ the checks
def zero_channels(layers, group, channels):
    """Make ``channels`` of ``group`` exactly zero at every producer output: filters, biases and the
    shifts of carry layers (each rule's ``shift_weights``: BN beta and mean, a position table ...).

    ``layers``: a model (layers looked up with ``get_layer``) or a ``{name: layer}`` mapping such as a
    dependency graph's ``layers``. Used by the zero-channel exactness check here and in the tests.
    """
    from kslim import rules

    get = layers.get_layer if hasattr(layers, "get_layer") else layers.__getitem__
    for m in group.members:
        layer = get(m.layer_name)
        if m.role in ("filter", "bias") or (m.role == "carry" and m.weight_name in rules.get(layer).shift_weights):
            w = layer.weights[m.weight_index]
            arr = np.array(w.numpy())
            view = np.moveaxis(arr, m.axis, 0)
            view[m.indices(channels)] = 0.0
            w.assign(arr)


def _group_summary(pruner):
    groups = pruner.graph.groups
    reasons = {}
    for g in groups:
        if not g.prunable:
            key = (g.reason or "?")[:160]
            reasons[key] = reasons.get(key, 0) + 1
    top = sorted(reasons.items(), key=lambda kv: -kv[1])[:3]
    return {"groups": len(groups), "prunable": sum(1 for g in groups if g.prunable), "usable": len(pruner.groups),
            "unprunable_reasons": [f"{n}x {r}" for r, n in top]}


def check_prune(ctx):
    """Prune at 0.3: output shapes kept, MACs down, zero-channel exactness."""
    from kslim.prune import L1NormFilterPruner

    model, x = ctx.model, ctx.x
    pruner = L1NormFilterPruner(model)
    small = pruner.prune(PRUNE_RATIO)
    data = _group_summary(pruner)
    ref, got = outputs(model, x), result_outputs(small, x, f"L1NormFilterPruner.prune({PRUNE_RATIO})")
    if [o.shape for o in ref] != [o.shape for o in got]:
        raise CheckFailed(f"output shapes changed: {[o.shape for o in ref]} -> {[o.shape for o in got]}", **data)
    try:
        before, after = _flops(model, x).macs, _flops(small, x).macs
        data.update(macs_before=int(before), macs_after=int(after))
        what = "MACs"
    except Exception as e:  # noqa: BLE001 - flops has its own check; compare parameters instead
        before, after = model.count_params(), small.count_params()
        data.update(params_before=int(before), params_after=int(after), flops_error=_first_line(e))
        what = "parameters (flops raised)"
    data["params_before"], data["params_after"] = int(model.count_params()), int(small.count_params())
    if not after < before:
        raise CheckFailed(f"prune({PRUNE_RATIO}) did not reduce {what}: {before} -> {after} "
                          f"({data['usable']} usable of {data['groups']} channel groups"
                          + (f"; {data['unprunable_reasons'][0]}" if data["unprunable_reasons"] else "") + ")",
                          **data)
    # zero-channel exactness, over the groups whose pruning is exact (not through LayerNormalization)
    full_plan = pruner.plan(PRUNE_RATIO)
    plan = {k: v for k, v in full_plan.items() if pruner.graph.group(k).exact}
    data["approximate_groups"] = len(full_plan) - len(plan)
    if not plan:
        return (f"{what} -{100 * (1.0 - after / before):.1f}% ({len(full_plan)} groups pruned, all through "
                f"LayerNormalization or a broadcast bias: approximate by design, exactness not checked)"), data
    saved = [np.array(w.numpy()) for w in model.weights]
    try:
        for name, chans in plan.items():
            zero_channels(pruner.graph.layers, pruner.graph.group(name), chans)
        zref = outputs(model, x)
        zsmall = pruner.prune_channels(plan)
        zgot = result_outputs(zsmall, x, "L1NormFilterPruner.prune_channels")
    finally:
        for w, v in zip(model.weights, saved):
            w.assign(v)
    diff = max(_max_diff(a, b) / _scale(a) for a, b in zip(zref, zgot))
    data["exactness_rel_diff"] = diff
    data["removed_channels"] = int(sum(len(v) for v in plan.values()))
    reduction = 1.0 - after / before
    if diff > EXACT_TOL:
        raise CheckFailed(f"not exact: pruned vs zeroed original differ by {diff:.2e} (relative) > {EXACT_TOL:g} "
                          f"({len(plan)} groups pruned)", **data)
    return f"{what} -{100 * reduction:.1f}% ({len(plan)} groups pruned), exact to {diff:.1e}", data


def check_keras_roundtrip(ctx):
    """The pruned model through .keras and back (safe_mode=True), same outputs."""
    import keras

    from kslim.prune import L1NormFilterPruner

    try:
        small = L1NormFilterPruner(ctx.model).prune(PRUNE_RATIO)
    except Exception as e:  # noqa: BLE001 - counted by the prune check
        raise Skipped(f"needs the pruned model; prune raised {type(e).__name__}: {_first_line(e)}") from e
    try:
        a = outputs(small, ctx.x)
    except Exception as e:  # noqa: BLE001 - counted by the prune check
        raise Skipped(f"needs a pruned model that runs; calling it raised {type(e).__name__}: {_first_line(e)}") from e
    path = ctx.workdir / "pruned.keras"
    step = "saved"
    try:
        small.save(path)
        step = "loaded back"
        loaded = keras.saving.load_model(path, safe_mode=True)
    except Exception as e:
        original = _original_roundtrip(ctx)
        if original is not None:  # Keras cannot round-trip the user's own model either: not kslim's doing
            raise Skipped(f"the unpruned model does not survive .keras save/load either ({original}); pruned model: "
                          f"{type(e).__name__}: {_first_line(e)}") from e
        text = " ".join(str(e).split())[:240] or type(e).__name__
        raise BrokenResult(f"the model returned by L1NormFilterPruner.prune({PRUNE_RATIO}) cannot be {step} as .keras "
                           f"(the unpruned model can): {type(e).__name__}: {text}") from e
    b = result_outputs(loaded, ctx.x, "keras.saving.load_model (of the pruned model)")
    if len(a) != len(b) or any(u.shape != v.shape for u, v in zip(a, b)):
        raise CheckFailed(f"loaded model's outputs differ in shape: {[u.shape for u in a]} vs {[v.shape for v in b]}")
    diff = max(_max_diff(u, v) / _scale(u) for u, v in zip(a, b))
    data = {"rel_diff": diff, "bytes": path.stat().st_size}
    if diff > ROUNDTRIP_TOL:
        raise CheckFailed(f"loaded model differs by {diff:.2e} (relative) > {ROUNDTRIP_TOL:g}", **data)
    return f"same outputs after save/load ({diff:.1e})", data


def _original_roundtrip(ctx):
    """None if the original model survives .keras save + load(safe_mode=True), else the error's first line."""
    import keras

    path = ctx.workdir / "original.keras"
    try:
        ctx.model.save(path)
        keras.saving.load_model(path, safe_mode=True)
        return None
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {_first_line(e)}"


def calibrate_qat(qat, calib, batches=CALIB_BATCHES):
    """Run ``qat`` in training mode on ``batches`` slices of ``calib``: the activation quantizers learn
    their ranges as during ``fit`` (no optimizer, no weight update)."""
    from kslim.testing.zoo import batch_of

    first = next(iter(calib.values())) if isinstance(calib, dict) else (
        calib[0] if isinstance(calib, (list, tuple)) else calib)
    n = len(first)
    size = max(1, n // batches)
    for i in range(batches):
        qat(batch_of(calib, i * size, (i + 1) * size), training=True)


def check_qat(ctx):
    """quant_aware -> calibration -> convert -> int8 .tflite: no float compute op, parity with the QAT model."""
    from kslim.lite import LiteModel
    from kslim.quant import convert, quant_aware
    from kslim.quant.qat import activation_quantizers

    qat = quant_aware(ctx.model)
    try:
        calibrate_qat(qat, ctx.calib)
    except Exception as e:
        raise BrokenResult(f"the model returned by quant_aware fails when called in training mode: "
                           f"{type(e).__name__}: {_first_line(e)}{_cause_line(e)}") from e
    lite = convert(qat)
    path = ctx.workdir / "qat.tflite"
    lite.save(path)
    lite = LiteModel.load(path)
    fops = _float_ops(lite)
    layer_types = {}
    for layer in all_layers(qat)[1:]:
        t = type(layer).__name__
        if t.startswith("Quant"):
            layer_types[t] = layer_types.get(t, 0) + 1
    data = {"float_ops": fops, "quantized_layers": layer_types, "ops": _op_histogram(lite), "bytes": lite.size,
            "activation_quantizers": len(activation_quantizers(qat))}
    ref, got = compare_lite(lite.content, qat, ctx.x, what="quant_aware")
    data.update(_quant_metrics(ref, got))
    problems = []
    if fops:
        problems.append(f"{sum(fops.values())} float compute op(s) left: "
                        + ", ".join(f"{k} x{v}" for k, v in sorted(fops.items(), key=lambda kv: -kv[1])))
    if data["correlation"] < QAT_MIN_CORR:
        problems.append(f".tflite vs Keras QAT correlation {data['correlation']:.3f} < {QAT_MIN_CORR}")
    if problems:
        raise CheckFailed("; ".join(problems), **data)
    return f"int8, no float op; corr {data['correlation']:.4f} vs the QAT model", data


def check_ptq_static(ctx):
    """quant_post_static with 32 calibration samples: int8 kernels, runs, correlates with float."""
    from kslim.quant import quant_post_static

    return _check_full_int8(ctx, quant_post_static(ctx.model, ctx.calib), "quant_post_static")


def check_ptq_litert(ctx):
    """quant_post_litert (int8, kslim's KL ranges) with the same samples: the criteria of ptq_static."""
    from kslim.quant import quant_post_litert

    n = len(_input_arrays(ctx.model, ctx.calib)[0][1])
    return _check_full_int8(ctx, quant_post_litert(ctx.model, "int8", ctx.calib, n, algo="KL"), "quant_post_litert")


def _check_full_int8(ctx, lite, fn):
    from kslim.lite.converter import has_int8_kernels

    data = {"float_ops": _float_ops(lite), "ops": _op_histogram(lite), "bytes": lite.size}
    data["int8"] = bool(has_int8_kernels(lite.content))
    ref, got = compare_lite(lite.content, ctx.model, ctx.x)
    data.update(_quant_metrics(ref, got))
    if not data["int8"]:
        raise CheckFailed(f"{fn} returned a model without int8 kernels", **data)
    if data["correlation"] < PTQ_MIN_CORR:
        ref_corr = _converter_ptq_correlation(ctx)
        data["converter_ptq_correlation"] = ref_corr
        raise CheckFailed(f"int8 vs float correlation {data['correlation']:.3f} < {PTQ_MIN_CORR}"
                          + (f" (the TFLite converter's own PTQ on the same samples: {ref_corr:.3f})"
                             if ref_corr is not None else ""), **data)
    left = sum(data["float_ops"].values())
    return f"int8, corr {data['correlation']:.4f} vs float" + (f"; {left} float op(s) left" if left else ""), data


def _converter_ptq_correlation(ctx):
    """The same metric for the TFLite converter's own full-integer PTQ (a reference for a failed check)."""
    try:
        import tensorflow as tf

        from kslim.testing.zoo import batch_of, _flat_inputs

        flat = _flat_inputs(ctx.model)
        n = len(_input_arrays(ctx.model, ctx.calib)[0][1])

        def gen():
            for i in range(n):
                sample = batch_of(ctx.calib, i, i + 1)
                yield sample if isinstance(sample, dict) else (list(sample) if len(flat) > 1 else [sample])

        conv = tf.lite.TFLiteConverter.from_keras_model(ctx.model)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = gen
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            content = conv.convert()
        ref, got = compare_lite(content, ctx.model, ctx.x)
        return round(centered_correlation(ref, got), 5)
    except Exception:  # noqa: BLE001 - only a reference figure
        return None


def check_ptq_dynamic(ctx):
    """quant_post_dynamic (int8 weights): runs, correlates with float."""
    from kslim.quant import quant_post_dynamic

    lite = quant_post_dynamic(ctx.model)
    data = {"ops": _op_histogram(lite), "bytes": lite.size}
    ref, got = compare_lite(lite.content, ctx.model, ctx.x)
    data.update(_quant_metrics(ref, got))
    if data["correlation"] < DYNAMIC_MIN_CORR:
        raise CheckFailed(f"dynamic-range vs float correlation {data['correlation']:.3f} < {DYNAMIC_MIN_CORR}", **data)
    return f"corr {data['correlation']:.5f} vs float", data


def check_float_convert(ctx):
    """kslim.lite.convert (float32): outputs match Keras."""
    from kslim.lite import convert

    lite = convert(ctx.model)
    ref, got = compare_lite(lite.content, ctx.model, ctx.x)
    diff = _max_diff(ref, got) / _scale(ref)
    data = {"rel_diff": diff, "bytes": lite.size, "ops": _op_histogram(lite)}
    if diff > FLOAT_TOL:
        raise CheckFailed(f".tflite vs Keras differ by {diff:.2e} (relative) > {FLOAT_TOL:g}", **data)
    return f"matches Keras to {diff:.1e}", data


def check_flops(ctx):
    """kslim.analysis.flops: MACs > 0 and every layer with weights counted."""
    report = _flops(ctx.model, ctx.x)
    data = {"macs": int(report.macs), "params": int(report.params), "uncounted": list(report.uncounted),
            "rows": len(report.rows), "input_shape_given": _has_undefined_axis(ctx.model)}
    if report.params != ctx.model.count_params():
        data["params_mismatch"] = int(ctx.model.count_params())
    if report.macs <= 0:
        raise CheckFailed("flops reports 0 MACs", **data)
    if report.uncounted:
        raise CheckFailed(f"{len(report.uncounted)} layer(s) not counted: {', '.join(report.uncounted[:6])}"
                          + (" ..." if len(report.uncounted) > 6 else ""), **data)
    return f"{report.macs:,} MACs, every layer counted", data


CHECKS = {
    "prune": check_prune,
    "keras_roundtrip": check_keras_roundtrip,
    "qat": check_qat,
    "ptq_static": check_ptq_static,
    "ptq_litert": check_ptq_litert,
    "ptq_dynamic": check_ptq_dynamic,
    "float_convert": check_float_convert,
    "flops": check_flops,
}


# ------------------------------------------------------------------------------------ running
@contextlib.contextmanager
def _quiet_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def run_check(ctx, name):
    """Run one check on ``ctx``; never raises (the outcome is in the result's status)."""
    from kslim.errors import KslimError

    fn = CHECKS[name]
    t0 = time.perf_counter()
    saved = [np.array(w.numpy()) for w in ctx.model.weights]
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=ctx.workdir))
    sub = Context(ctx.entry, ctx.model, ctx.x, ctx.calib, workdir, ctx.cache)
    try:
        with _quiet_warnings():
            detail, data = fn(sub)
        result = CheckResult(ctx.entry, name, "ok", detail, data=_jsonable(data))
    except CheckFailed as e:
        result = CheckResult(ctx.entry, name, "fail", _first_line(e), data=_jsonable(e.data))
    except Skipped as e:
        result = CheckResult(ctx.entry, name, "skipped", _first_line(e))
    except KslimError as e:
        result = CheckResult(ctx.entry, name, "kslim_error", _first_line(e), error_type=type(e).__name__,
                             where=_where(e))
    except Exception as e:  # noqa: BLE001 - a raw exception is the finding
        kind = type(e.__cause__ if isinstance(e, BrokenResult) and e.__cause__ is not None else e).__name__
        result = CheckResult(ctx.entry, name, "raw_error", _first_line(e), error_type=kind,
                             where=_where(e), traceback="".join(traceback.format_exception(e))[-6000:])
    finally:
        for w, v in zip(ctx.model.weights, saved):
            w.assign(v)
        shutil.rmtree(workdir, ignore_errors=True)
    result.seconds = round(time.perf_counter() - t0, 2)
    return result


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def run_checks(entry, checks=CHECK_NAMES, seed=0, workdir=None, model=None):
    """Build zoo entry ``entry`` (a name or a :class:`~kslim.testing.zoo.ZooEntry`) and run ``checks`` on it.

    Returns ``{check name: CheckResult}`` in the order asked. A failure to build the entry (keras-hub
    missing, a constructor error) is reported as a ``raw_error`` of a pseudo check ``build``.
    """
    from kslim.testing.zoo import ZOO, sample_inputs

    if isinstance(entry, str):
        entry = ZOO[entry]
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; choose from {list(CHECKS)}")
    own = workdir is None
    root = Path(tempfile.mkdtemp(prefix=f"kslim-zoo-{entry.name}-")) if own else Path(workdir)
    try:
        t0 = time.perf_counter()
        try:
            model = entry.build(seed=seed) if model is None else model
            x = sample_inputs(model, N_EVAL, seed=seed)
            calib = sample_inputs(model, N_CALIB, seed=seed + 1)
        except Exception as e:  # noqa: BLE001
            res = CheckResult(entry.name, "build", "raw_error", _first_line(e), round(time.perf_counter() - t0, 2),
                              error_type=type(e).__name__, where=_where(e),
                              traceback="".join(traceback.format_exception(e))[-6000:])
            return {"build": res}
        ctx = Context(entry.name, model, x, calib, root)
        return {name: run_check(ctx, name) for name in checks}
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)


__all__ = ["CheckResult", "CheckFailed", "Context", "CHECKS", "CHECK_NAMES", "STATUSES", "run_check", "run_checks",
           "run_tflite", "correlation", "centered_correlation", "argmax_agreement", "calibrate_qat", "zero_channels"]
