"""``auto_prune``: simulated annealing over per-group pruning ratios (PaddleSlim's ``AutoPruner``)."""

import dataclasses
import math
from pathlib import Path

from kslim.errors import KslimTypeError, KslimValueError, ModelError
from kslim.nas.constraints import InfeasibleConstraintError, make_constraints
from kslim.validation import check_model, check_ratio, warn_renamed


@dataclasses.dataclass
class AutoPruneResult:
    """What :func:`auto_prune` returns.

    Attributes:
        model: the best pruned model (fine-tuned by ``finetune_fn`` if one was given).
        ratios: ``{group name: ratio}`` of that model.
        score: its ``eval_fn`` score.
        flops, flops_before: FLOPs of the pruned and the original model.
        initial_ratios: the starting point (the uniform ratio meeting the constraints).
        history, rejected: per-trial records and the candidates rejected before evaluation.
        oracle, directory, history_path, plot_path: as for :class:`kslim.nas.SearchResult`.
        search_ratios, search_score: the search's best candidate on the ratio grid and its score, before
            ``fill`` scaled its ratios to the limit (equal to ``ratios``/``score`` when nothing was filled).
    """

    model: object
    ratios: dict
    score: float
    flops: float
    flops_before: float
    initial_ratios: dict
    history: list
    rejected: list
    oracle: object
    directory: Path
    history_path: Path
    plot_path: Path = None
    search_ratios: dict = None
    search_score: float = None

    @property
    def flops_reduction(self):
        """Fraction of the FLOPs removed."""
        return 1.0 - self.flops / self.flops_before


def _fill(ratios, meets, tolerance=1e-3):
    """``ratios`` scaled by the smallest factor ``s`` in [0, 1] for which ``meets(scaled)`` still holds
    (bisection to ``tolerance``): the search's candidate, pruned no further than its limits need. The grid
    candidate itself (``s = 1``) must meet them."""
    def scaled(f):
        return {g: r * f for g, r in ratios.items()}

    lo, hi = 0.0, 1.0
    if meets(scaled(lo)):
        return scaled(lo)
    while hi - lo > tolerance:
        mid = (lo + hi) / 2
        if meets(scaled(mid)):
            hi = mid
        else:
            lo = mid
    return scaled(hi) if hi < 1.0 else dict(ratios)


class _RatioSpace:
    """The hypermodel of per-group ratios: ``build(hp)`` -> pruned model (``weights=False``: structure only)."""

    def __init__(self, pruner, grid, weights):
        self.pruner = pruner
        self.grid = grid
        self.weights = weights

    def declare(self, hp):
        for g in self.pruner.groups:
            hp.Choice(g.name, self.grid, ordered=True, default=0.0)

    def ratios(self, hp):
        self.declare(hp)
        return {g.name: float(hp.get(g.name)) for g in self.pruner.groups}

    def build(self, hp):
        ratios = self.ratios(hp)
        if self.weights:
            return self.pruner.prune(ratios)
        return self.pruner.prune_channels(self.pruner.plan(ratios), copy_weights=False)

    def smallest_values(self):
        return {g.name: self.grid[-1] for g in self.pruner.groups}


def auto_prune(model, eval_fn, flops_reduction=None, max_latency=None, latency_fn=None, *, max_flops=None,
               importance=None, pruner=None, max_trials=20, init_temperature=0.05, reduce_rate=0.85, ratio_step=0.05, max_ratio=0.8,
               init_ratios=None, perturb=2, finetune_fn=None, constraints=(), fill=True, seed=0,
               directory="kslim_runs", project_name="auto_prune", overwrite=True, plot=True, verbose=0, **legacy):
    """Search per-group pruning ratios with simulated annealing; return the best pruned model.

    Every candidate is a dict ``{group: ratio}`` over the channel groups of ``pruner`` (ratios on a
    grid of ``ratio_step`` up to ``max_ratio``). Candidates over the FLOPs/latency limit are
    rejected *before* being evaluated; the others are pruned (:meth:`FilterPruner.prune`),
    optionally fine-tuned by ``finetune_fn(model)`` (which must compile the model), and scored by
    ``eval_fn(model) -> float`` (higher is better, e.g. validation accuracy). The search starts
    from the smallest uniform ratio meeting the limits, and perturbs ``perturb`` groups per step.

    PaddleSlim's AutoPruner anneals from ``init_temperature=100`` with ``reduce_rate=0.85``; with
    an accuracy in [0, 1] as score that accepts any worse candidate (``exp(-0.02/100) ~ 1``), i.e.
    a random walk. The default here, 0.05, is in score units: a candidate 0.02 worse is accepted
    with p = 0.67 at first, p = 0.13 after 10 trials.

    The grid makes every candidate remove somewhat more than the limit needs (a step of ``ratio_step``
    moves many groups at once). With ``fill=True`` (default) the best candidate's ratios are then scaled
    by one factor, the smallest that still meets the FLOPs (and any further) constraints, as NNI's
    SimulatedAnnealingPruner rescales its candidates' sparsities to the target; that model is built,
    fine-tuned by ``finetune_fn`` and scored again. Not with ``max_latency`` (a measured latency is too
    noisy to bisect on).

    Args:
        model: a built Keras model (functional or Sequential).
        eval_fn: ``model -> float``, higher is better.
        flops_reduction: the share of FLOPs to remove, in (0, 1) (as
            :meth:`FilterPruner.prune_to_flops` and PaddleSlim's ``pruned_flops``).
        max_flops: an absolute FLOPs count the pruned model must not exceed (as in
            :func:`kslim.nas.search`). FLOPs = 2 x MACs, from :func:`kslim.analysis.flops`.
            (``target_flops=``, which took either, is the kslim 0.1 name of both.)
        max_latency: milliseconds, measured by ``latency_fn(model) -> ms`` (a latency predictor's
            ``predict``, a device measurement; default: TFLite on this CPU).
        importance: how channels are ranked (``"l1"`` default, ``"l2"``, ``"fpgm"`` ... or an
            importance object).
        pruner: instead of ``importance``, a :class:`kslim.prune.FilterPruner` class or instance.
        max_trials: evaluated candidates (rejected ones do not count).
        init_temperature, reduce_rate, perturb, seed: the annealing (see
            :class:`kslim.nas.SimulatedAnnealingOracle`).
        ratio_step, max_ratio: the ratio grid ``0, step, 2 step, ... <= max_ratio``.
        init_ratios: starting ratios ``{group: ratio}`` (default: uniform, meeting the limits).
        finetune_fn: ``model -> None``, run on each candidate before ``eval_fn`` (a short fit).
        constraints: further :class:`kslim.nas.Constraint` objects.
        fill: scale the best candidate's ratios to the limit (see above).
        directory, project_name, overwrite: where the keras-tuner state, ``sa_history.json`` and
            ``search.png`` go (``overwrite=False`` resumes).

    Returns:
        :class:`AutoPruneResult`.

    Example:
        >>> import tempfile
        >>> import numpy as np
        >>> import kslim
        >>> from kslim.nas import auto_prune
        >>> model = kslim.models.mobilenet_v1(width=0.25)  # a trained model in practice (models.pretrained)
        >>> (x, y), _ = kslim.datasets.fashion_mnist_small()
        >>> x, y = kslim.datasets.preprocess(x[:32]), y[:32]
        >>> def accuracy(m):
        ...     return float(np.mean(np.argmax(m(x, training=False), -1) == y))
        >>> res = auto_prune(model, accuracy, flops_reduction=0.5, max_trials=2,
        ...                  directory=tempfile.mkdtemp(prefix="kslim_doc_ap_"), plot=False)
        >>> res.flops_reduction >= 0.5
        True
    """
    import keras_tuner
    from keras_tuner.src.engine.base_tuner import BaseTuner

    from kslim.analysis import flops as count_flops
    from kslim.nas.history import plot_history
    from kslim.nas.oracle import SimulatedAnnealingOracle
    from kslim.prune import make_pruner

    check_model(model, "auto_prune()")
    target_flops = legacy.pop("target_flops", None)  # kslim 0.1: a share to remove or a FLOPs count
    if legacy:
        raise KslimTypeError(f"auto_prune(): unexpected argument(s) {sorted(legacy)}.")
    if target_flops is not None:
        if flops_reduction is not None or max_flops is not None:
            raise KslimTypeError("auto_prune(): give flops_reduction= or max_flops= only (target_flops= is their "
                                 "old name).")
        new = "flops_reduction" if 0 < float(target_flops) < 1 else "max_flops"
        warn_renamed("target_flops=", f"{new}=", "auto_prune()")
        if new == "flops_reduction":
            flops_reduction = target_flops
        else:
            max_flops = target_flops
    if not callable(eval_fn):
        raise KslimTypeError(f"eval_fn must be callable (model -> score), got {eval_fn!r}.")
    if finetune_fn is not None and not callable(finetune_fn):
        raise KslimTypeError(f"finetune_fn must be callable (model -> None), got {finetune_fn!r}.")
    if flops_reduction is None and max_flops is None and max_latency is None and not constraints:
        raise KslimValueError("auto_prune(): needs a goal: flops_reduction=<fraction to remove>, "
                              "max_flops=<FLOPs count> and/or max_latency=<ms>.")
    if not (0 < float(ratio_step) < 1) or not (0 < float(max_ratio) < 1):
        raise KslimValueError(f"ratio_step and max_ratio must be in (0, 1), got {ratio_step!r}, {max_ratio!r}.")

    pruner = make_pruner(model, pruner, importance, where="auto_prune()")
    if not pruner.groups:
        raise ModelError(f"model {model.name!r} has no prunable channel group.")
    flops_before = float(count_flops(model).flops)
    if flops_reduction is not None:
        t = check_ratio(flops_reduction, "auto_prune(): flops_reduction", low_open=True,
                        meaning="the share of FLOPs removed")
        limit = (1.0 - t) * flops_before
        max_flops = limit if max_flops is None else min(float(max_flops), limit)
    elif max_flops is not None:
        if not float(max_flops) > 0:
            raise KslimValueError(f"auto_prune(): max_flops must be a FLOPs count > 0, got {max_flops!r}.")
        max_flops = float(max_flops)
    cons = make_constraints(max_flops=max_flops, max_latency=max_latency, latency_fn=latency_fn,
                            constraints=constraints)

    n = int(math.floor(float(max_ratio) / float(ratio_step) + 1e-9))
    grid = [round(i * float(ratio_step), 6) for i in range(n + 1)]
    probe = _RatioSpace(pruner, grid, weights=False)
    names = [g.name for g in pruner.groups]

    def uniform(ratio):
        return pruner.prune_channels(pruner.plan({g: ratio for g in names}), copy_weights=False)

    def feasible(ratio):
        m = uniform(ratio)
        return all(c.check(m)[0] for c in cons)

    if init_ratios is None:
        smallest = uniform(grid[-1])
        checks = [(c, *c.check(smallest)) for c in cons]
        if not all(ok for _, ok, _ in checks):
            over = "; ".join(c.describe(value) for c, ok, value in checks if not ok)
            raise InfeasibleConstraintError(
                f"the constraints cannot be met: even pruning {grid[-1]:.0%} of every group leaves {over}. "
                f"Raise max_ratio, relax the target, or prune the groups kept by the pruner (skip/keep_classifier)."
            )
        lo, hi = 0, len(grid) - 1  # smallest uniform grid ratio meeting the limits
        if feasible(grid[0]):
            hi = 0
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if feasible(grid[mid]):
                hi = mid
            else:
                lo = mid
        init = {g: grid[hi] for g in names}
    else:
        unknown = sorted(set(init_ratios) - set(names))
        if unknown:
            raise KslimValueError(f"init_ratios: {unknown[0]!r} is not a prunable group; groups: {names}.")
        init = {g: float(init_ratios.get(g, 0.0)) for g in names}
        for g, r in init.items():
            if r not in grid:
                raise KslimValueError(f"init_ratios[{g!r}] = {r} is not on the ratio grid {grid}.")

    oracle = SimulatedAnnealingOracle(
        objective=keras_tuner.Objective("score", "max"), max_trials=max_trials,
        init_temperature=init_temperature, reduce_rate=reduce_rate, initial_values=init, perturb=perturb,
        constraints=cons, hypermodel=probe, seed=seed,
    )
    best = {"score": -math.inf, "model": None, "ratios": None}
    space = _RatioSpace(pruner, grid, weights=True)

    class _PruneTuner(BaseTuner):
        def run_trial(self, trial, **kwargs):
            ratios = space.ratios(trial.hyperparameters)
            pruned = space.build(trial.hyperparameters)
            if finetune_fn is not None:
                finetune_fn(pruned)
            score = float(eval_fn(pruned))
            if not math.isfinite(score):
                raise ModelError(f"eval_fn returned {score} for ratios {ratios}.")
            if score > best["score"]:
                best.update(score=score, model=pruned, ratios=ratios)
            return {"score": score}

    tuner = _PruneTuner(oracle, hypermodel=space.declare, directory=str(directory),
                        project_name=project_name, overwrite=overwrite)
    try:
        tuner.search(verbose=verbose)
    except RuntimeError as e:
        if "consecutive failures" in str(e):
            last = [ln for ln in str(e).strip().splitlines() if ln.strip()]
            raise ModelError(f"auto_prune stopped: trials kept failing. Last error: {last[-1] if last else e}") from e
        raise
    project_dir = Path(directory) / project_name
    history_path = project_dir / "sa_history.json"
    oracle.export_history(history_path)
    best_trial = oracle.get_best_trials(1)
    if not best_trial or best_trial[0].score is None:
        msgs = [t.get("message") for t in oracle.history if t.get("message")]
        raise ModelError("no auto_prune candidate could be evaluated" + (f": {msgs[-1]}" if msgs else "."))
    ratios = space.ratios(best_trial[0].hyperparameters)
    search_ratios, search_score = dict(ratios), float(best_trial[0].score)
    score = search_score
    best_model = best["model"]
    if fill and max_latency is None:
        def meets(candidate):
            m = pruner.prune_channels(pruner.plan(candidate), copy_weights=False)
            return all(c.check(m)[0] for c in cons)

        ratios = _fill(ratios, meets)
        if ratios != search_ratios:
            best_model = None
    if best_model is None or best["ratios"] != ratios:  # filled, or a resumed search: build (and fine-tune) it
        best_model = pruner.prune(ratios)
        if finetune_fn is not None:
            finetune_fn(best_model)
        if ratios != search_ratios:
            score = float(eval_fn(best_model))
    plot_path = None
    if plot:
        plot_path = plot_history(oracle, project_dir / "search.png",
                                 title=f"auto_prune {model.name}: {len(oracle.history)} trials")
    return AutoPruneResult(
        model=best_model, ratios=ratios, score=score,
        flops=float(count_flops(best_model).flops), flops_before=flops_before, initial_ratios=init,
        history=oracle.history, rejected=oracle.rejected, oracle=oracle, directory=project_dir,
        history_path=history_path, plot_path=plot_path, search_ratios=search_ratios, search_score=search_score,
    )


__all__ = ["auto_prune", "AutoPruneResult"]
