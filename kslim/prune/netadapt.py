"""NetAdapt (Yang et al. 2018; NNI's ``NetAdaptPruner``): prune towards a latency budget, step by step.

Each step asks for ``step`` (a share of the starting latency) less latency than the current model.
For every prunable channel group it finds the fewest channels (lowest importance first, in multiples
of ``round_to``) whose removal meets that step's target, as measured by ``latency_fn`` -- by default
:func:`kslim.lite.measure_latency`, the ``.tflite`` timed on this host; a
:class:`kslim.lite.LatencyPredictor`'s ``predict`` or a device measurement work too -- then gives each
candidate a short fine-tune (``finetune_fn``) and keeps the one with the best ``eval_fn`` score. It
stops when the latency is within the budget (``max_latency`` ms, or ``latency_reduction`` of the
start removed), or no group can meet a step.

With ``directory`` every finished step is saved (the model after the step and ``netadapt.json``),
and a call with the same directory continues after the last finished step.

Example:
    >>> import keras, kslim
    >>> m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(16, 3, name="c1"),
    ...                       keras.layers.Conv2D(16, 3, name="c2"), keras.layers.GlobalAveragePooling2D(),
    ...                       keras.layers.Dense(2, name="fc")])
    >>> macs = lambda mm: kslim.flops(mm).macs / 1e4      # a stand-in latency (ms) proportional to MACs
    >>> res = netadapt(m, lambda mm: 1.0, latency_reduction=0.3, latency_fn=macs, step=0.1)
    >>> res.latency <= 0.7 * res.latency_before
    True
"""

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kslim.errors import KslimTypeError, KslimValueError, ModelError
from kslim.validation import check_model, check_ratio


@dataclass
class NetAdaptResult:
    """What :func:`netadapt` found.

    Attributes:
        model: the pruned (and, with ``finetune_fn``, fine-tuned) model.
        latency_before, latency: ``latency_fn`` of the original and of the result (ms).
        budget: the latency budget (ms).
        steps: one dict per step: ``group``, ``removed`` (channels), ``latency``, ``score``,
            ``candidates`` (groups tried).
        reached: whether the budget was met.
    """

    model: Any
    latency_before: float
    latency: float
    budget: float
    steps: list = field(default_factory=list)
    reached: bool = False


def _latency(fn, model):
    from kslim.nas.constraints import latency_ms

    return latency_ms(fn(model))


def netadapt(model, eval_fn, latency_reduction=None, max_latency=None, latency_fn=None, *, step=0.05,
             importance="l1", skip=None, keep_classifier=True, round_to=1, finetune_fn=None, max_steps=50,
             directory=None, verbose=0, scope="all"):
    """Prune ``model`` step by step until ``latency_fn`` meets the budget; see :mod:`kslim.prune.netadapt`.

    Args:
        model: a built Keras model (left untouched).
        eval_fn: ``model -> float``, higher is better (a short validation accuracy).
        latency_reduction: share of the starting latency to remove, in (0, 1); or
        max_latency: the budget in ms (both given: the tighter one).
        latency_fn: ``model -> ms`` (or a report with ``median_ms``), or a
            :class:`kslim.lite.LatencyPredictor`; default :func:`kslim.lite.measure_latency`.
        step: share of the starting latency each step removes (the paper's resource reduction schedule,
            constant here).
        importance, skip, keep_classifier, round_to: how the channels of a group are ranked and
            which groups may be pruned (as :func:`kslim.prune.make_pruner`).
        scope: which groups may be pruned at all (:mod:`kslim.prune.scope`: ``"all"``, ``"uncoupled"``, a
            registered name or a function ``(group, graph) -> bool``).
        finetune_fn: ``model -> None``, the short-term fine-tune of each candidate (it must compile the
            model); the chosen one is what the next step starts from.
        max_steps: at most this many steps.
        directory: folder for the resumable state (``None``: nothing saved).
        verbose: 1 prints one line per step.

    Returns:
        a :class:`NetAdaptResult`.
    """
    from kslim.prune.criteria import make_pruner
    from kslim.prune.scope import get_scope

    check_model(model, "netadapt()")
    get_scope(scope)  # an unknown name is refused before the first measurement
    if not callable(eval_fn):
        raise KslimTypeError(f"netadapt(): eval_fn must be callable(model) -> float, got {type(eval_fn).__name__}.")
    if finetune_fn is not None and not callable(finetune_fn):
        raise KslimTypeError(f"netadapt(): finetune_fn must be callable(model) -> None, got {finetune_fn!r}.")
    if latency_reduction is None and max_latency is None:
        raise KslimValueError("netadapt(): needs a budget: latency_reduction=<share to remove> and/or max_latency=<ms>.")
    step = check_ratio(step, "netadapt(): step", low_open=True, meaning="the share of the starting latency removed "
                                                                        "per step")
    if latency_fn is None:
        from kslim.lite.profiling import measure_latency as latency_fn
    elif not callable(latency_fn) and callable(getattr(latency_fn, "predict", None)):
        latency_fn = latency_fn.predict  # a kslim.lite.LatencyPredictor given directly
    elif not callable(latency_fn):
        raise KslimTypeError(f"netadapt(): latency_fn must be callable (model -> ms), got {latency_fn!r}.")
    state_file = model_file = saved = None
    done = []
    current = model
    if directory is not None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state_file, model_file = directory / "netadapt.json", directory / "netadapt_model.keras"
        if state_file.is_file() and model_file.is_file():
            from kslim._io import read_json
            from kslim._model_io import load_keras_model

            saved = read_json(state_file, "NetAdapt state")
            done, current = saved["steps"], load_keras_model(model_file)
    start = float(saved["latency_before"]) if saved else _latency(latency_fn, model)
    budget = math.inf
    if latency_reduction is not None:
        budget = (1.0 - check_ratio(latency_reduction, "netadapt(): latency_reduction", low_open=True)) * start
    if max_latency is not None:
        if not float(max_latency) > 0:
            raise KslimValueError(f"netadapt(): max_latency must be > 0 ms, got {max_latency!r}.")
        budget = min(budget, float(max_latency))
    latency = done[-1]["latency"] if done else start
    while latency > budget and len(done) < max_steps:
        target = max(budget, latency - step * start)
        pruner = make_pruner(current, importance=importance, skip=skip, keep_classifier=keep_classifier,
                             round_to=round_to, scope=scope, where="netadapt()")
        if not pruner.groups:
            raise ModelError(f"netadapt(): model {current.name!r} has no prunable channel group.")
        best = None
        for group in pruner.groups:
            found = _fewest_channels(pruner, group, target, latency_fn, round_to)
            if found is None:
                continue
            cand, n, lat = found
            if finetune_fn is not None:
                finetune_fn(cand)
            score = float(eval_fn(cand))
            if not math.isfinite(score):
                raise ModelError(f"netadapt(): eval_fn returned {score} for the candidate pruning {group.name!r}.")
            if best is None or score > best[0]:
                best = (score, cand, group.name, n, lat)
        if best is None:
            break  # no group alone can meet this step's target
        score, current, name, n, latency = best
        done.append({"group": name, "removed": int(n), "latency": float(latency), "score": score,
                     "target": float(target)})
        if verbose:
            print(f"netadapt step {len(done)}: -{n} channels of {name!r}, latency {latency:.4g} ms "
                  f"(target {target:.4g}, budget {budget:.4g}), score {score:.4f}")
        if state_file is not None:
            from kslim._io import atomic_save_model, atomic_write_json

            atomic_save_model(current, model_file)
            atomic_write_json(state_file, {"latency_before": start, "budget": budget, "steps": done})
    return NetAdaptResult(model=current, latency_before=start, latency=latency, budget=budget, steps=done,
                          reached=latency <= budget)


def _fewest_channels(pruner, group, target, latency_fn, round_to):
    """``(model, channels removed, latency)`` with the fewest lowest-importance channels of ``group``
    removed so that ``latency_fn <= target`` (bisection: latency falls with the channel count), or None."""
    order = np.argsort(pruner.importance(group), kind="stable")
    unit = max(1, int(round_to))
    counts = [n for n in range(unit, group.size, unit)]
    if not counts:
        return None
    cache = {}

    def trial(n):
        if n not in cache:
            m = pruner.prune_channels({group.name: np.sort(order[:n])})
            cache[n] = (m, _latency(latency_fn, m))
        return cache[n]

    if trial(counts[-1])[1] > target:
        return None
    lo, hi = -1, len(counts) - 1  # counts[hi] meets the target
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if trial(counts[mid])[1] <= target:
            hi = mid
        else:
            lo = mid
    m, lat = trial(counts[hi])
    return m, counts[hi], lat


__all__ = ["netadapt", "NetAdaptResult"]
