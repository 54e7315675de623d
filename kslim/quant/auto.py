"""Accuracy-aware post-training quantization: search algorithm x per-layer fallback until ``max_drop`` holds.

:func:`quant_post_auto` is kslim's take on Intel Neural Compressor's accuracy-aware tuning (its
``basic`` strategy) and PaddleSlim's ``quant_post_hpo``: the user gives a metric on the ``.tflite``
(``eval_fn(lite_model) -> float``, higher is better) and the largest loss allowed against the float
``.tflite``; kslim tries configurations in a fixed order and stops at the first one within it.

1. Every calibration algorithm (``algos``, default the five built-ins) with the whole model int8
   (:func:`kslim.quant.quant_post_static`). The first one within ``max_drop`` wins.
2. Otherwise, from the best of those algorithms: the conv/dense layers ranked by how much output SNR
   each one loses (:func:`kslim.quant.quant_debug`, largest ``snr_drop_db`` first), and the ``k``
   most sensitive ones fall back, ``k = 1, 2, ...``; for each ``k`` every kind of ``fallback`` is
   tried in order: ``"int16"`` (int16 activations, int8 weights, through LiteRT's quantizer:
   :func:`kslim.quant.quant_post_litert` with one ``int16x8`` rule per layer) then ``"float"``
   (the layers' ops kept float: ``quant_post_static(skip=...)``). One trial has one kind (the two
   backends do not mix in one model). The first configuration within ``max_drop`` wins.
3. If none is, the best configuration tried is returned with ``met=False`` and a warning (or
   :class:`AccuracyGoalNotMet` is raised with ``raise_on_fail=True``; the result is its ``result``).

The search is a keras-tuner search: the oracle proposes ``{"algo", "fallback"}`` values (it never
builds a model), a trial quantizes and calls ``eval_fn``. Its state lives in
``directory/project_name``; running again with the same ``directory`` (``overwrite=False``, the
default) reuses every finished trial and continues where the last run stopped (after ``max_trials``,
an interrupt or a crash): no configuration is quantized twice. A model whose layers or weights
differ from the one the directory was made for is refused (pass ``overwrite=True``).

Notes:
    * A fallback keeps *one layer's* ops at higher precision; the tensor it reads still gets the
      precision its producer writes (the converter quantizes the input of a float op that comes from
      an int8 op, LiteRT re-quantizes an int8 tensor read by an int16 op), so an outlier range *between*
      two quantized layers needs both to fall back, which happens when ``k`` reaches both. An
      outlier in the graph input is fixed by the first layer's ``"float"`` fallback alone (the
      converter keeps float inputs), not by ``"int16"``: LiteRT's models take int8 inputs.
    * Without an ``algo=`` parameter on :func:`kslim.quant.quant_post_litert`, the int16
      configurations are calibrated by LiteRT's own min/max (``AutoQuantResult.algo`` then says
      ``"litert-minmax"``); int16 kernels are LiteRT's reference kernels, much slower than int8.

Example:
    >>> import keras, numpy as np, tempfile
    >>> from kslim.quant import quant_post_auto
    >>> rng = np.random.default_rng(0)
    >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
    ...                       keras.layers.Dense(4)])
    >>> x = rng.normal(size=(128, 8)).astype("float32")
    >>> y = np.argmax(m.predict(x, verbose=0), -1)
    >>> def accuracy(lite):
    ...     return float(np.mean(np.argmax(lite.predict(x), -1) == y))
    >>> res = quant_post_auto(m, x, accuracy, max_drop=0.05, algos=["abs_max", "mse"],
    ...                       directory=tempfile.mkdtemp(prefix="kslim_doc_auto_"))
    >>> res.met, res.algo, res.fallback
    (True, 'abs_max', {})
    >>> len(res.trials)
    1
"""

import contextlib
import dataclasses
import hashlib
import inspect
import io
import json
import math
import re
import tempfile
import time
import warnings
from pathlib import Path

from kslim.errors import KslimError, KslimTypeError, KslimValueError

#: fallback kinds, in the order they are tried for each ``k``
FALLBACK_KINDS = ("int16", "float")
_STATE_FILE = "quant_post_auto.json"


class AccuracyGoalNotMet(KslimError):
    """``quant_post_auto(raise_on_fail=True)`` found no configuration within ``max_drop``; ``result``
    is the :class:`AutoQuantResult` it would have returned (the best configuration tried)."""

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


@dataclasses.dataclass
class AutoQuantResult:
    """What :func:`quant_post_auto` returns.

    Attributes:
        lite: the chosen quantized :class:`kslim.lite.LiteModel`.
        met: whether its drop is within ``max_drop``.
        algo: calibration algorithm of the chosen configuration (``"litert-minmax"`` for an int16
            configuration calibrated by LiteRT's quantizer itself).
        fallback: ``{layer name: "int16" | "float"}`` kept above int8 (empty: all int8).
        backend: ``"converter"`` (:func:`kslim.quant.quant_post_static`) or ``"litert"``
            (:func:`kslim.quant.quant_post_litert`).
        float_metric, metric: ``eval_fn`` of the float ``.tflite`` and of ``lite``.
        drop: ``float_metric - metric`` (divided by ``|float_metric|`` when ``relative``).
        max_drop, relative: the goal.
        reason: why the search ended: ``"met"``, ``"exhausted"`` (every configuration of the
            strategy tried) or ``"max_trials"`` (the budget ran out first; run again to continue).
        sensitivity: conv/dense layers, most sensitive first (``None``: not needed, phase 1 met).
        trials: one dict per trial in run order: ``trial_id``, ``algo``, ``fallback``, ``backend``,
            ``status``, ``metric``, ``drop``, ``met``, ``seconds`` (``None`` for a trial of an
            earlier run, whose time was not kept).
        directory: the keras-tuner project directory (state, trials, ``quant_post_auto.json``).
    """

    lite: object
    met: bool
    algo: str
    fallback: dict
    backend: str
    float_metric: float
    metric: float
    drop: float
    max_drop: float
    relative: bool
    reason: str
    sensitivity: list
    trials: list
    directory: Path

    def summary(self):
        """A few lines: the goal, what was chosen, and the trials table."""
        fb = ", ".join(f"{k}={v}" for k, v in self.fallback.items()) or "none"
        unit = " (relative)" if self.relative else ""
        lines = [f"quant_post_auto: {'met' if self.met else 'NOT met'} max_drop={self.max_drop:g}{unit} "
                 f"({self.reason}, {len(self.trials)} trials): algo={self.algo}, fallback: {fb}, "
                 f"backend={self.backend}; metric {self.metric:.4f} vs float {self.float_metric:.4f} "
                 f"(drop {self.drop:.4f})"]
        lines.append(f"{'trial':<6} {'algo':<14} {'fallback':<44} {'metric':>8} {'drop':>8}  met")
        for t in self.trials:
            metric = "failed" if t["metric"] is None else f"{t['metric']:.4f}"
            drop = "" if t["drop"] is None else f"{t['drop']:.4f}"
            lines.append(f"{t['trial_id']:<6} {t['algo']:<14} {_describe(t['fallback'], 44):<44} {metric:>8} "
                         f"{drop:>8}  {'yes' if t['met'] else 'no'}")
        return "\n".join(lines)

    def __str__(self):
        return self.summary()

    def to_dict(self):
        """JSON-able: everything but ``lite`` (its size in bytes instead)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "lite"}
        d["directory"] = str(self.directory)
        d["size_bytes"] = len(self.lite.content)
        return d


# ------------------------------------------------------------------------------------------- values
def _describe(fallback, width):
    """``"float x3: conv1, conv2, ..."`` in at most ``width`` characters (``"-"``: no fallback)."""
    if not fallback:
        return "-"
    kinds = sorted(set(fallback.values()))
    text = f"{'/'.join(kinds)} x{len(fallback)}: " + ", ".join(fallback)
    return text if len(text) <= width else text[: width - 3] + "..."


def encode_fallback(fallback):
    """``{layer: kind}`` -> the trial value, ``'[["layer", "kind"], ...]'`` (JSON, order kept; ``""``: none)."""
    return json.dumps([[k, v] for k, v in fallback.items()]) if fallback else ""


def decode_fallback(text):
    """Inverse of :func:`encode_fallback`."""
    return dict(json.loads(text)) if text else {}


def _key(values):
    return (values["algo"], values["fallback"])


def _backend(fallback):
    return "litert" if "int16" in fallback.values() else "converter"


# ------------------------------------------------------------------------------------------- oracle
def _make_oracle(max_trials, algos, kinds, max_fallback_layers, meets, rank):
    """The oracle proposing the configurations of the strategy in order (see the module docstring)."""
    import keras_tuner
    from keras_tuner.src.engine import trial as trial_module

    status = trial_module.TrialStatus

    class AutoQuantOracle(keras_tuner.Oracle):
        def __init__(self):
            super().__init__(objective=keras_tuner.Objective("score", "max"), max_trials=max_trials,
                             max_consecutive_failed_trials=max_trials + 1)
            self.rankings = {}  # algo -> sensitivity order (part of the state: not recomputed on resume)

        def finished(self):
            """``{(algo, fallback): score or None}`` of the completed (None: failed) trials."""
            out = {}
            for t in self.trials.values():
                if t.status in (status.COMPLETED, status.FAILED):
                    v = t.hyperparameters.values
                    out[_key(v)] = t.score if t.status == status.COMPLETED else None
            return out

        def walk(self):
            """``("next", values)``, ``("met", key)`` or ``("exhausted", None)``: the strategy replayed on
            the finished trials."""
            done = self.finished()
            scored = []
            for algo in algos:
                values = {"algo": algo, "fallback": ""}
                if _key(values) not in done:
                    return "next", values
                score = done[_key(values)]
                if score is not None and meets(score):
                    return "met", _key(values)
                if score is not None:
                    scored.append((score, -algos.index(algo), algo))
            if not scored or not kinds:
                return "exhausted", None
            base = max(scored)[2]
            if base not in self.rankings:
                self.rankings[base] = list(rank(base))
            order = self.rankings[base][:max_fallback_layers]
            for k in range(1, len(order) + 1):
                for kind in kinds:
                    values = {"algo": base, "fallback": encode_fallback({name: kind for name in order[:k]})}
                    if _key(values) not in done:
                        return "next", values
                    score = done[_key(values)]
                    if score is not None and meets(score):
                        return "met", _key(values)
            return "exhausted", None

        def populate_space(self, trial_id):
            what, values = self.walk()
            if what != "next":
                return {"status": status.STOPPED, "values": None}
            return {"status": status.RUNNING, "values": values}

        def get_state(self):
            state = super().get_state()
            state["quant_post_auto"] = {"rankings": self.rankings}
            return state

        def set_state(self, state):
            super().set_state(state)
            self.rankings = dict(state.get("quant_post_auto", {}).get("rankings", {}))

    return AutoQuantOracle()


# ------------------------------------------------------------------------------------------- checks
def _check_args(model, calibration_data, eval_fn, max_drop, algos, fallback, max_fallback_layers, max_trials,
                weight_quantize_type, relative, raise_on_fail):
    from kslim.quant.calibration import ALGOS, check_algo
    from kslim.quant.config import WEIGHT_QUANTIZE_TYPES
    from kslim.validation import check_model

    check_model(model, "quant_post_auto()")
    if calibration_data is None:
        raise KslimValueError("quant_post_auto(): calibration_data is required (a few hundred training inputs).")
    if not callable(eval_fn):
        raise KslimTypeError(f"quant_post_auto(): eval_fn must be callable (LiteModel -> float, higher is "
                             f"better), got {eval_fn!r}.")
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not (
            math.isfinite(max_drop) and max_drop >= 0):
        raise KslimValueError(f"quant_post_auto(): max_drop must be a finite number >= 0 (the largest loss of "
                              f"eval_fn allowed vs the float .tflite), got {max_drop!r}.")
    algos = list(ALGOS) if algos is None else ([algos] if isinstance(algos, str) else list(algos))
    if not algos:
        raise KslimValueError("quant_post_auto(): algos is empty; give at least one calibration algorithm.")
    for a in algos:
        try:
            check_algo(a)
        except KslimValueError as e:
            raise KslimValueError(f"quant_post_auto(algos=...): {e}") from None
    if len(set(algos)) != len(algos):
        raise KslimValueError(f"quant_post_auto(): algos has duplicates: {algos}.")
    kinds = [fallback] if isinstance(fallback, str) else list(fallback or ())
    for k in kinds:
        if k not in FALLBACK_KINDS:
            raise KslimValueError(f"quant_post_auto(): fallback kinds are {FALLBACK_KINDS} (tried in the order "
                                  f"given), got {k!r}.")
    if len(set(kinds)) != len(kinds):
        raise KslimValueError(f"quant_post_auto(): fallback has duplicates: {kinds}.")
    if "int16" in kinds:
        from kslim.quant.litert import _quantizer

        try:
            _quantizer()
        except KslimValueError as e:
            raise KslimValueError(f"quant_post_auto(fallback=...): the int16 fallback needs LiteRT's quantizer "
                                  f"({e}); or pass fallback=('float',).") from None
    for field, v in (("max_fallback_layers", max_fallback_layers), ("max_trials", max_trials)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise KslimValueError(f"quant_post_auto(): {field} must be a positive integer or None, got {v!r}.")
    if weight_quantize_type not in WEIGHT_QUANTIZE_TYPES:
        raise KslimValueError(f"quant_post_auto(): weight_quantize_type must be one of {WEIGHT_QUANTIZE_TYPES}, "
                              f"got {weight_quantize_type!r}.")
    for field, v in (("relative", relative), ("raise_on_fail", raise_on_fail)):
        if not isinstance(v, bool):
            raise KslimTypeError(f"quant_post_auto(): {field} must be True or False, got {v!r}.")
    return algos, kinds


def _fingerprint(model, settings):
    """Hash of the model's layers and weights and of the settings that change a trial's result."""
    h = hashlib.sha256()
    for layer in model.layers:
        h.update(f"{layer.name}:{type(layer).__name__};".encode())
        for w in layer.weights:
            h.update(w.path.encode())
            h.update(memoryview(w.numpy()).tobytes())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:32]


def _check_directory(project_dir, fingerprint, overwrite):
    from kslim._io import read_json

    state = project_dir / _STATE_FILE
    if overwrite or not state.exists():
        return
    old = read_json(state, "quant_post_auto state").get("fingerprint")
    if old != fingerprint:
        raise KslimValueError(
            f"quant_post_auto(directory=...): {project_dir} holds a search for another model or other settings "
            f"(weights, layers, weight_quantize_type or calibration samples differ); pass overwrite=True to "
            f"start afresh there, or another directory.")


# ------------------------------------------------------------------------------------------- the API
def quant_post_auto(model, calibration_data, eval_fn, max_drop=0.01, *, algos=None, fallback=FALLBACK_KINDS,
                    max_fallback_layers=None, max_trials=None, relative=False, batch_size=32, batch_nums=None,
                    weight_quantize_type="channel_wise_abs_max", directory=None, project_name="quant_post_auto",
                    overwrite=False, raise_on_fail=False, verbose=0):
    """Quantize ``model`` to int8 with the least fallback that keeps ``eval_fn`` within ``max_drop`` of float.

    Args:
        model: a built float ``keras.Model``.
        calibration_data: calibration inputs, as for :func:`kslim.quant.quant_post_static`.
        eval_fn: ``eval_fn(lite_model) -> float``, higher is better, e.g. the accuracy of
            ``lite_model.predict(x_val)`` on held-out data. Called on the float ``.tflite`` first
            (the reference), then once per trial.
        max_drop: the largest ``float_metric - metric`` accepted (``relative``: that divided by
            ``|float_metric|``), in ``eval_fn``'s units (0.01 = one point of accuracy).
        algos: calibration algorithms tried in order (default: the five built-ins,
            :data:`kslim.quant.ALGOS`; registered ones are accepted).
        fallback: fallback kinds tried in order for each number of fallback layers: ``"int16"``
            and/or ``"float"``; ``()`` tries the algorithms only.
        max_fallback_layers: at most this many layers fall back (default: every conv/dense layer).
        max_trials: trial budget of this run, counting the trials of earlier runs in ``directory``
            (default: the whole strategy). A search stopped by it continues when run again.
        relative: measure the drop relative to ``|float_metric|``.
        batch_size, batch_nums, weight_quantize_type: as for ``quant_post_static`` (the int16
            configurations use LiteRT's per-channel int8 weights and at most 1,000 samples).
        directory, project_name: where the keras-tuner state goes (default ``directory``: a new
            temporary folder, i.e. no resume). ``overwrite=False`` resumes a search in the same folder.
        raise_on_fail: raise :class:`AccuracyGoalNotMet` instead of returning ``met=False``.
        verbose: keras-tuner's progress output (0: none).

    Returns:
        :class:`AutoQuantResult` (``print(result)`` for what was chosen and the trials).

    Raises:
        KslimValueError / KslimTypeError: a bad argument (named), before any conversion;
        AccuracyGoalNotMet: with ``raise_on_fail=True``, no configuration met ``max_drop``.
        Exceptions of ``eval_fn`` itself propagate unchanged (a quantization that fails only fails its trial).
    """
    algos, kinds = _check_args(model, calibration_data, eval_fn, max_drop, algos, fallback, max_fallback_layers,
                               max_trials, weight_quantize_type, relative, raise_on_fail)
    import numpy as np
    from keras_tuner import errors as kt_errors
    from keras_tuner.src.engine.base_tuner import BaseTuner

    from kslim._io import atomic_write_json
    from kslim.lite import convert
    from kslim.lite.flatbuffer import read_flatbuffer, tensor_name
    from kslim.lite.inputs import model_inputs
    from kslim.nas.oracle import _last_line
    from kslim.quant.debug import quant_debug
    from kslim.quant import litert
    from kslim.quant.litert import quant_post_litert
    from kslim.quant.ptq import calibration_batches, concat_batches, ops_of_layers, quant_post_static

    inputs = model_inputs(model, "quant_post_auto")
    batches = calibration_batches(calibration_data, inputs, batch_size, batch_nums)
    data = concat_batches(batches)
    data = data[0] if len(data) == 1 else data
    n_samples = len(data[0]) if isinstance(data, list) else len(data)

    settings = {"weight_quantize_type": weight_quantize_type, "batch_size": batch_size, "samples": n_samples,
                "calibration": hashlib.sha256(b"".join(
                    np.ascontiguousarray(a).tobytes() for a in (data if isinstance(data, list) else [data]))
                ).hexdigest()[:16]}
    fingerprint = _fingerprint(model, settings)
    if directory is None:
        directory = tempfile.mkdtemp(prefix="kslim_quant_auto_")
    project_dir = Path(directory) / project_name
    _check_directory(project_dir, fingerprint, overwrite)

    float_lite = convert(model, check=False)
    model_t = read_flatbuffer(float_lite.content)
    names = [tensor_name(t) for t in model_t.subgraphs[0].tensors]
    weight_layers = [layer.name for layer in model.layers
                     if hasattr(layer, "kernel") or hasattr(layer, "depthwise_kernel")]
    layer_outputs = {}  # layer -> exact output tensor names of its conv/dense ops (LiteRT rule regexes)
    for name in weight_layers:
        try:
            ops = ops_of_layers(model, model_t, [name], "quant_post_auto")[name]
        except KslimError:
            continue
        layer_outputs[name] = [names[op.outputs[0]] for op in ops]

    float_metric = _metric(eval_fn, float_lite, "the float .tflite")
    if relative and float_metric == 0:
        raise KslimValueError("quant_post_auto(relative=True): eval_fn is 0 on the float .tflite, a relative drop "
                              "is undefined; use relative=False.")

    def drop_of(score):
        d = float_metric - score
        return d / abs(float_metric) if relative else d

    def meets(score):
        return drop_of(score) <= float(max_drop) + 1e-12

    litert_algo = "algo" in inspect.signature(quant_post_litert).parameters
    session_class = getattr(litert, "LiteRTSession", None) if litert_algo else None
    sessions = {}

    def quiet():
        """keras-tuner's "Reloading ..." and LiteRT's calibration progress bar, silenced unless ``verbose``
        (only around kslim's own calls: what ``eval_fn`` prints is left alone)."""
        stack = contextlib.ExitStack()
        if not verbose:
            stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
            stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
        return stack

    def quantize(values):
        with quiet():
            return _quantize(values)

    def _quantize(values):
        algo, fb = values["algo"], decode_fallback(values["fallback"])
        if _backend(fb) == "converter":
            return quant_post_static(model, data, algo=algo, batch_size=batch_size,
                                     weight_quantize_type=weight_quantize_type, skip=list(fb), check=False)
        rules = [(".*", "int8")]
        for name in fb:
            # LiteRT matches a rule against the op's scope: its output tensor names, each followed by ";"
            rules.append(("^(?:" + "|".join(re.escape(n) for n in layer_outputs[name]) + ");", "int16x8"))
        if session_class is None:
            kwargs = {"algo": algo} if litert_algo else {}
            return quant_post_litert(model, rules, data, num_calibration_samples=min(n_samples, 1000),
                                     check=False, **kwargs)
        if algo not in sessions:  # converted and calibrated once per algorithm, for every int16 trial
            sessions[algo] = session_class(model, data, num_calibration_samples=min(n_samples, 1000), algo=algo,
                                           batch_size=batch_size, fn="quant_post_auto")
        return sessions[algo].quantize(rules, check=False)

    notes = []  # warnings of the search, issued after it

    def rank(algo):
        try:
            with quiet():
                report = quant_debug(model, data, algo=algo, batch_size=batch_size,
                                     weight_quantize_type=weight_quantize_type)
        except KslimError as e:  # no per-layer errors: graph order
            notes.append(f"quant_post_auto: quant_debug failed ({e}); fallback layers taken in graph order.")
            return list(layer_outputs)
        rows = sorted((r for r in report.rows if r["has_weights"] and r["weight_layer"] in layer_outputs),
                      key=lambda r: (-r["snr_drop_db"], r["index"]))
        order = []
        for r in rows:
            if r["weight_layer"] not in order:
                order.append(r["weight_layer"])
        return order + [n for n in layer_outputs if n not in order]

    n_fallback = len(layer_outputs) if max_fallback_layers is None else min(max_fallback_layers, len(layer_outputs))
    budget = len(algos) + len(kinds) * n_fallback
    if max_trials is not None:
        budget = min(budget, max_trials)

    oracle = _make_oracle(budget, algos, kinds, max_fallback_layers, meets, rank)
    kept = {}  # trial_id -> (LiteModel, seconds) of this run's trials
    fatal = {}

    class AutoQuantTuner(BaseTuner):
        def run_trial(self, trial, **kwargs):
            values = dict(trial.hyperparameters.values)
            start = time.perf_counter()
            try:
                lite = quantize(values)
            except KslimError as e:  # this configuration cannot be made: the trial fails, the search goes on
                raise kt_errors.FailedTrialError(f"{values}: {type(e).__name__}: {e}") from e
            try:
                score = _metric(eval_fn, lite, f"trial {values}")
            except Exception as e:  # noqa: BLE001 -- eval_fn's own error, re-raised unchanged below
                fatal["error"] = e
                raise kt_errors.FatalError(str(e)) from e
            kept[trial.trial_id] = (lite, time.perf_counter() - start)
            return {"score": score}

    with quiet():
        tuner = AutoQuantTuner(oracle, directory=str(directory), project_name=project_name, overwrite=overwrite)
    atomic_write_json(project_dir / _STATE_FILE, {"fingerprint": fingerprint, "settings": settings})
    try:
        tuner.search(verbose=verbose)
    except kt_errors.FatalError:
        if "error" in fatal:
            raise fatal["error"] from None
        raise
    what, found = oracle.walk()
    for note in notes:
        warnings.warn(note, stacklevel=2)
    reason = {"next": "max_trials"}.get(what, what)

    trials = []
    best = None
    for tid in oracle.start_order:
        t = oracle.trials[tid]
        v = t.hyperparameters.values
        fb = decode_fallback(v["fallback"])
        score = t.score if t.status == "COMPLETED" else None
        row = {"trial_id": tid, "algo": v["algo"], "fallback": fb, "backend": _backend(fb), "status": t.status,
               "metric": None if score is None else float(score),
               "drop": None if score is None else float(drop_of(score)),
               "met": bool(score is not None and meets(score)), "seconds": kept.get(tid, (None, None))[1]}
        trials.append(row)
        if score is not None and (best is None or score > best[1]["metric"]):
            best = (t, row)
    if what == "met":
        chosen = next((oracle.trials[r["trial_id"]], r) for r in trials
                      if (r["algo"], encode_fallback(r["fallback"])) == found)
    else:
        chosen = best
    if chosen is None:
        raise KslimError("quant_post_auto: no configuration could be quantized; the trials' errors: "
                         + "; ".join(_last_line(oracle.trials[tid].message) for tid in oracle.start_order))
    trial, row = chosen
    lite = kept[trial.trial_id][0] if trial.trial_id in kept else quantize(trial.hyperparameters.values)
    algo = row["algo"] if row["backend"] == "converter" or litert_algo else "litert-minmax"
    lite.calibration = {**(getattr(lite, "calibration", None) or {}),
                        "auto": {"algo": algo, "fallback": row["fallback"]}}
    result = AutoQuantResult(
        lite=lite, met=bool(row["met"]), algo=algo, fallback=dict(row["fallback"]), backend=row["backend"],
        float_metric=float_metric, metric=row["metric"], drop=row["drop"], max_drop=float(max_drop),
        relative=relative, reason=reason, sensitivity=oracle.rankings.get(row["algo"]),
        trials=trials, directory=project_dir)
    atomic_write_json(project_dir / _STATE_FILE, {"fingerprint": fingerprint, "settings": settings,
                                                  "result": result.to_dict()})
    if not result.met:
        message = (f"quant_post_auto: no configuration within max_drop={max_drop:g} ({reason}); best: "
                   f"algo={result.algo}, fallback={result.fallback or 'none'}, drop {result.drop:.4f}.")
        if raise_on_fail:
            raise AccuracyGoalNotMet(message, result)
        warnings.warn(message, stacklevel=2)
    return result


def _metric(eval_fn, lite, what):
    value = eval_fn(lite)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise KslimTypeError(f"quant_post_auto(): eval_fn must return a number, got {value!r} for {what}.") from None
    if not math.isfinite(value):
        raise KslimValueError(f"quant_post_auto(): eval_fn returned {value} for {what}.")
    return value


__all__ = ["quant_post_auto", "AutoQuantResult", "AccuracyGoalNotMet", "FALLBACK_KINDS"]
