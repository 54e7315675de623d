"""AutoCompress (Liu et al. 2020; NNI's ``AutoCompressPruner``): simulated-annealing ratios + ADMM, in rounds.

Round ``r`` of ``rounds`` asks for ``1 - (1 - flops_reduction) ** (r / rounds)`` of the original FLOPs
removed. :func:`kslim.nas.auto_prune` searches per-group ratios reaching it on the current model
(simulated annealing, candidates scored by ``eval_fn`` after one-shot pruning), then
:class:`kslim.prune.ADMMPruning` trains the current model towards exactly those ratios
(``train_fn(model, callbacks)`` runs the user's ``fit`` with the ADMM callback) and removes the
channels. The next round starts from that smaller, trained model.

Example (a sketch: ``train_fn`` compiles and fits your model with the callbacks it is given)::

    def train_fn(model, callbacks):
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x, y, epochs=2, callbacks=callbacks, verbose=0)

    res = auto_compress(model, eval_fn, train_fn, flops_reduction=0.5, rounds=2, max_trials=10)
    res.model, res.flops_reduction, res.rounds
"""

import dataclasses
from pathlib import Path

from kslim.errors import KslimTypeError
from kslim.validation import check_model, check_ratio


@dataclasses.dataclass
class AutoCompressResult:
    """What :func:`auto_compress` returns.

    Attributes:
        model: the pruned model after the last round's ADMM training and channel removal.
        flops, flops_before: FLOPs of the result and of the original model.
        rounds: one dict per round: ``target`` (share of the original FLOPs removed), ``ratios``
            (searched), ``score`` (of the search's best candidate), ``flops`` (after the round),
            ``admm_residual`` (the last ``||W - Z|| / ||W||``).
    """

    model: object
    flops: float
    flops_before: float
    rounds: list

    @property
    def flops_reduction(self):
        """Fraction of the FLOPs removed."""
        return 1.0 - self.flops / self.flops_before


def auto_compress(model, eval_fn, train_fn, flops_reduction, rounds=2, *, max_trials=10, rho=1e-3,
                  update_every=1, importance=None, skip=None, keep_classifier=True, round_to=1, seed=0,
                  directory="kslim_runs", project_name="auto_compress", verbose=0, scope="all", **search_options):
    """Prune ``model`` by ``flops_reduction`` of its FLOPs in ``rounds`` rounds of SA search + ADMM.

    Args:
        model: a built Keras model (left untouched).
        eval_fn: ``model -> float``, higher is better (scores the search's candidates).
        train_fn: ``(model, callbacks) -> None``: compile ``model`` and ``fit`` it with ``callbacks``
            (the ADMM callback of the round).
        flops_reduction: share of the original FLOPs to remove, in (0, 1).
        rounds: search + ADMM rounds (the paper's iterations).
        max_trials: evaluated candidates per search (see :func:`kslim.nas.auto_prune`).
        rho, update_every: of :class:`kslim.prune.ADMMPruning`.
        importance, skip, keep_classifier, round_to: which groups may be pruned, in what unit, and how
            the search's one-shot candidates rank channels.
        scope: which groups may be pruned at all (:mod:`kslim.prune.scope`: ``"all"``, ``"uncoupled"``, a
            registered name or a function ``(group, graph) -> bool``); the search and ADMM use the same.
        seed, directory, project_name, verbose, **search_options: passed to each round's
            :func:`kslim.nas.auto_prune` (``init_temperature``, ``reduce_rate``, ``ratio_step`` ...);
            round ``r``'s search state goes to ``directory/project_name/round<r>``.

    Returns:
        an :class:`AutoCompressResult`.
    """
    from kslim.analysis import flops as count_flops
    from kslim.nas.autoprune import auto_prune
    from kslim.prune.admm import ADMMPruning
    from kslim.prune.criteria import make_pruner

    check_model(model, "auto_compress()")
    if not callable(train_fn):
        raise KslimTypeError(f"auto_compress(): train_fn must be callable(model, callbacks), got {train_fn!r}.")
    target = check_ratio(flops_reduction, "auto_compress(): flops_reduction", low_open=True,
                         meaning="the share of FLOPs removed")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise KslimTypeError(f"auto_compress(): rounds must be an integer >= 1, got {rounds!r}.")
    flops_before = float(count_flops(model).flops)
    current, done = model, []
    options = dict(skip=skip, keep_classifier=keep_classifier, round_to=round_to, scope=scope)
    for r in range(1, rounds + 1):
        goal = 1.0 - (1.0 - target) ** (r / rounds)
        pruner = make_pruner(current, importance=importance, where="auto_compress()", **options)
        found = auto_prune(current, eval_fn, max_flops=(1.0 - goal) * flops_before, pruner=pruner,
                           max_trials=max_trials, seed=seed + r, directory=str(Path(directory) / project_name),
                           project_name=f"round{r}", plot=False, verbose=verbose, **search_options)
        ratios = {k: v for k, v in found.ratios.items() if v > 0}
        if not ratios:  # the search kept everything (the goal was already met)
            done.append({"target": goal, "ratios": {}, "score": found.score, "flops": float(count_flops(current).flops),
                         "admm_residual": None})
            continue
        admm = ADMMPruning(ratios=ratios, rho=rho, update_every=update_every, **options)  # same groups, counts
        train_fn(current, [admm])
        current = admm.prune()
        done.append({"target": goal, "ratios": ratios, "score": float(found.score),
                     "flops": float(count_flops(current).flops),
                     "admm_residual": admm.history[-1] if admm.history else None})
        if verbose:
            print(f"auto_compress round {r}/{rounds}: {1 - done[-1]['flops'] / flops_before:.1%} of the FLOPs removed "
                  f"(goal {goal:.1%})")
    return AutoCompressResult(model=current, flops=float(count_flops(current).flops), flops_before=flops_before,
                              rounds=done)


__all__ = ["auto_compress", "AutoCompressResult"]
