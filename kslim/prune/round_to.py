"""Which channel multiple (``round_to``) runs fastest at a given MACs target, measured or predicted.

XNNPACK's kernels process channels in SIMD tiles (8 floats with AVX2, 16 int8 lanes with VNNI ...), so
a pruned model whose channel counts are multiples of the tile can run faster than one with fewer MACs
but ragged counts. :func:`suggest_round_to` prunes the model to the *same* MACs target with each
candidate multiple (:meth:`FilterPruner.prune_to_flops`, which reports how far the rounding pushed the
reduction past the target) and times each result with ``latency_fn`` -- by default
:func:`kslim.lite.measure_latency` (the float ``.tflite`` on this host); a
:class:`kslim.lite.LatencyPredictor` built from the target's latency table (or its ``predict``) answers
for a device without running there.

Example:
    >>> import kslim
    >>> from kslim.prune.round_to import suggest_round_to
    >>> m = kslim.models.vgg(width=0.25)
    >>> macs = lambda mm: kslim.flops(mm).macs / 1e6   # a stand-in latency (ms) proportional to MACs
    >>> choice = suggest_round_to(m, 0.5, candidates=(1, 8), latency_fn=macs)
    >>> [r["round_to"] for r in choice.rows], choice.round_to in (1, 8)
    ([1, 8], True)
"""

import numbers
from dataclasses import dataclass, field

from kslim.errors import KslimTypeError, KslimValueError


@dataclass(frozen=True)
class RoundToChoice:
    """What :func:`suggest_round_to` measured.

    Attributes:
        round_to: the candidate whose pruned model had the lowest latency.
        flops_reduction: the MACs target every candidate was pruned to.
        rows: one dict per candidate, in the order given: ``round_to``, ``ratio`` (the uniform ratio
            ``prune_to_flops`` found), ``reduction`` (MACs removed), ``overshoot`` (past the target),
            ``macs``, ``latency_ms``, ``eligible`` (within ``max_overshoot``); ``error`` instead when the
            target is not reachable with it.
        latency_before: ``latency_fn`` of the unpruned model (ms).
    """

    round_to: int
    flops_reduction: float
    rows: list = field(default_factory=list)
    latency_before: float = None

    def speedup(self, round_to=None):
        """``latency_before / latency`` of ``round_to`` (default: the chosen one)."""
        row = next(r for r in self.rows if r["round_to"] == (self.round_to if round_to is None else round_to))
        return self.latency_before / row["latency_ms"]


def suggest_round_to(model, flops_reduction=0.5, candidates=(1, 4, 8, 16), latency_fn=None, pruner=None,
                     max_overshoot=0.02, **pruner_kwargs):
    """Prune ``model`` to ``flops_reduction`` with each ``round_to`` of ``candidates`` and time the results.

    Args:
        model: a Keras model.
        flops_reduction: fraction of MACs removed, in (0, 1), the same for every candidate.
        candidates: channel multiples to try (integers >= 1).
        latency_fn: ``model -> ms`` (or a report with ``total_ms``/``median_ms``, or a
            :class:`kslim.lite.LatencyPredictor`); default :func:`kslim.lite.measure_latency`.
        pruner: the pruner class (default :class:`~kslim.prune.L1NormFilterPruner`); ``pruner_kwargs``
            go to it (``skip``, ``keep_classifier``, ``importance`` ...), never ``round_to``.
        max_overshoot: a candidate whose rounding removed more than ``max_overshoot`` (a fraction of the
            MACs) beyond the candidate that lands closest to the target is timed and reported but not
            chosen: it would be faster for having removed more, which costs accuracy the user did not ask
            to spend. ``None``: no limit.

    Returns:
        a :class:`RoundToChoice`.
    """
    from kslim.nas.constraints import latency_ms
    from kslim.prune.criteria import L1NormFilterPruner

    if "round_to" in pruner_kwargs:
        raise KslimValueError("suggest_round_to(): round_to is what it chooses; give the multiples as candidates=.")
    cands = list(candidates) if isinstance(candidates, (list, tuple)) else None
    if not cands or any(isinstance(c, bool) or not isinstance(c, numbers.Integral) or c < 1 for c in cands):
        raise KslimValueError(f"suggest_round_to(): candidates must be a non-empty list of integers >= 1, "
                              f"got {candidates!r}.")
    if latency_fn is None:
        from kslim.lite.profiling import measure_latency as latency_fn
    elif not callable(latency_fn) and callable(getattr(latency_fn, "predict", None)):
        latency_fn = latency_fn.predict
    elif not callable(latency_fn):
        raise KslimTypeError(f"suggest_round_to(): latency_fn must be callable (model -> ms), got {latency_fn!r}.")
    if max_overshoot is not None and (isinstance(max_overshoot, bool) or not isinstance(max_overshoot, numbers.Real)
                                      or max_overshoot < 0):
        raise KslimValueError(f"suggest_round_to(): max_overshoot must be a number >= 0 (a fraction of the MACs) "
                              f"or None, got {max_overshoot!r}.")
    pruner = L1NormFilterPruner if pruner is None else pruner
    rows = []
    for c in cands:
        try:
            res = pruner(model, round_to=int(c), **pruner_kwargs).prune_to_flops(flops_reduction)
        except KslimValueError as e:   # not reachable with this multiple: reported, not chosen
            rows.append({"round_to": int(c), "error": str(e)})
            continue
        rows.append({"round_to": int(c), "ratio": res.ratio, "reduction": res.reduction, "overshoot": res.overshoot,
                     "macs": res.macs_after, "latency_ms": latency_ms(latency_fn(res.model))})
    timed = [r for r in rows if "latency_ms" in r]
    if not timed:
        raise KslimValueError(f"suggest_round_to(): flops_reduction {flops_reduction} is reachable with none of "
                              f"{cands}: {rows[0]['error']}")
    closest = min(r["overshoot"] for r in timed)
    for r in timed:
        r["eligible"] = max_overshoot is None or r["overshoot"] <= closest + max_overshoot
    best = min((r for r in timed if r["eligible"]), key=lambda r: r["latency_ms"])
    return RoundToChoice(round_to=best["round_to"], flops_reduction=float(flops_reduction), rows=rows,
                         latency_before=latency_ms(latency_fn(model)))


__all__ = ["suggest_round_to", "RoundToChoice"]
