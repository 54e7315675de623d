"""Which channel multiple (``round_to``) runs fastest at a given MACs target, measured or predicted.

XNNPACK's kernels process channels in SIMD tiles (8 floats with AVX2, 16 int8 lanes with VNNI ...), so
a pruned model whose channel counts are multiples of the tile can run faster than one with fewer MACs
but ragged counts. :func:`suggest_round_to` prunes the model to the *same* MACs target with each
candidate multiple (:meth:`FilterPruner.prune_to_flops`, which reports how far the rounding pushed the
reduction past the target) and times each result -- by default every candidate's float ``.tflite`` and
the unpruned model's on this host, together in interleaved rounds (:func:`kslim.lite.measure_latencies`);
with ``latency_fn`` a :class:`kslim.lite.LatencyPredictor` built from the target's latency table (or its
``predict``) answers for a device without running there. The choice is the smallest multiple the fastest
candidate does not beat by more than ``tolerance``: each coarser multiple constrains every layer's channel
count, which a timing difference within the noise does not pay for.

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

import numpy as np

from kslim.errors import KslimTypeError, KslimValueError


@dataclass(frozen=True)
class RoundToChoice:
    """What :func:`suggest_round_to` measured.

    Attributes:
        round_to: the chosen candidate: the smallest multiple that the fastest candidate does not beat by
            more than ``tolerance`` (see :func:`suggest_round_to`).
        flops_reduction: the MACs target every candidate was pruned to.
        rows: one dict per candidate, in the order given: ``round_to``, ``ratio`` (the uniform ratio
            ``prune_to_flops`` found), ``reduction`` (MACs removed), ``overshoot`` (past the target),
            ``macs``, ``latency_ms`` (the median), ``eligible`` (within ``max_overshoot``); when measured on
            this host also ``latency_p5_ms``, ``latency_p95_ms`` and ``round_medians_ms`` (one per interleaved
            round); ``error`` instead when the target is not reachable with it.
        latency_before: ``latency_fn`` of the unpruned model (ms).
        model: the chosen candidate's pruned Keras model (``prune_to_flops(flops_reduction)`` with
            ``round_to``), so that nobody prunes again what was timed.
    """

    round_to: int
    flops_reduction: float
    rows: list = field(default_factory=list)
    latency_before: float = None
    model: object = field(default=None, repr=False, compare=False)

    def speedup(self, round_to=None):
        """``latency_before / latency`` of ``round_to`` (default: the chosen one)."""
        row = next(r for r in self.rows if r["round_to"] == (self.round_to if round_to is None else round_to))
        return self.latency_before / row["latency_ms"]


def suggest_round_to(model, flops_reduction=0.5, candidates=(1, 4, 8, 16), latency_fn=None, pruner=None,
                     max_overshoot=0.02, tolerance=0.03, rounds=5, runs=50, warmup=5, num_threads=1,
                     **pruner_kwargs):
    """Prune ``model`` to ``flops_reduction`` with each ``round_to`` of ``candidates`` and time the results.

    Args:
        model: a Keras model.
        flops_reduction: fraction of MACs removed, in (0, 1), the same for every candidate.
        candidates: channel multiples to try (integers >= 1).
        latency_fn: ``model -> ms`` (or a report with ``total_ms``/``median_ms``, or a
            :class:`kslim.lite.LatencyPredictor`), called once per candidate and once for ``model``.
            Default (``None``): measured on this host -- every candidate's float ``.tflite`` and the
            unpruned model's, timed together in ``rounds`` interleaved rounds
            (:func:`kslim.lite.measure_latencies`, ``runs`` invokes in all, ``num_threads`` threads), so a
            change of the host's load hits every candidate alike.
        pruner: the pruner class (default :class:`~kslim.prune.L1NormFilterPruner`); ``pruner_kwargs``
            go to it (``skip``, ``keep_classifier``, ``importance`` ...), never ``round_to``.
        max_overshoot: a candidate whose rounding removed more than ``max_overshoot`` (a fraction of the
            MACs) beyond the candidate that lands closest to the target is timed and reported but not
            chosen: it would be faster for having removed more, which costs accuracy the user did not ask
            to spend. ``None``: no limit.
        tolerance: the fastest eligible candidate (lowest median) is compared with each smaller multiple,
            and the smallest one it does not beat by more than this fraction is chosen. Measured here, the
            comparison is paired: the median over the interleaved rounds of the per-round ratio, so one
            round disturbed by the host's load does not decide it. A timing difference within the noise of a
            quick measurement is no reason to constrain every layer to a coarser multiple (on a 2-core AMD
            EPYC host, multiples 8, 16 and 32 of MobileNetV2-224 fell within 2 % of each other in one quick
            profile, and 32 was then 6 % slower than 16 in a longer one). Every candidate is compared with
            the fastest, not with the one kept so far: a chain of comparisons chose 32 over a faster 16 that
            had one slow round. ``0``: the fastest.
        rounds / runs / warmup / num_threads: the measurement when ``latency_fn`` is ``None``.

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
    if latency_fn is not None and not callable(latency_fn) and callable(getattr(latency_fn, "predict", None)):
        latency_fn = latency_fn.predict
    elif latency_fn is not None and not callable(latency_fn):
        raise KslimTypeError(f"suggest_round_to(): latency_fn must be callable (model -> ms), got {latency_fn!r}.")
    def fraction(value):
        return not isinstance(value, bool) and isinstance(value, numbers.Real) and 0 <= value < 1

    if max_overshoot is not None and not fraction(max_overshoot):
        raise KslimValueError(f"suggest_round_to(): max_overshoot must be a number in [0, 1) (a fraction of the "
                              f"MACs) or None, got {max_overshoot!r}.")
    if not fraction(tolerance):
        raise KslimValueError(f"suggest_round_to(): tolerance must be a number in [0, 1) (a fraction of the "
                              f"latency), got {tolerance!r}.")
    for name, value, low in (("rounds", rounds, 1), ("runs", runs, 1), ("warmup", warmup, 0),
                             ("num_threads", num_threads, 1)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise KslimValueError(f"suggest_round_to(): {name} must be an integer >= {low}, got {value!r}.")
    pruner = L1NormFilterPruner if pruner is None else pruner
    rows, pruned = [], {}
    for c in cands:
        try:
            res = pruner(model, round_to=int(c), **pruner_kwargs).prune_to_flops(flops_reduction)
        except KslimValueError as e:   # not reachable with this multiple: reported, not chosen
            rows.append({"round_to": int(c), "error": str(e)})
            continue
        rows.append({"round_to": int(c), "ratio": res.ratio, "reduction": res.reduction, "overshoot": res.overshoot,
                     "macs": res.macs_after})
        pruned[int(c)] = res.model
        if latency_fn is not None:
            rows[-1]["latency_ms"] = latency_ms(latency_fn(res.model))
    if not any("macs" in r for r in rows):
        raise KslimValueError(f"suggest_round_to(): flops_reduction {flops_reduction} is reachable with none of "
                              f"{cands}: {rows[0]['error']}")
    if latency_fn is None:
        from kslim.lite.converter import convert
        from kslim.lite.profiling import measure_latencies

        lites = {"before": convert(model, check=False), **{c: convert(m, check=False) for c, m in pruned.items()}}
        stats = measure_latencies(lites, num_threads=num_threads, runs=runs, rounds=rounds, warmup=warmup)
        for r in rows:
            if r["round_to"] in stats:
                st = stats[r["round_to"]]
                r.update(latency_ms=st["median_ms"], latency_p5_ms=st["p5_ms"], latency_p95_ms=st["p95_ms"],
                         round_medians_ms=st["round_medians_ms"])
        before = stats["before"]["median_ms"]
    else:
        before = latency_ms(latency_fn(model))
    timed = [r for r in rows if "latency_ms" in r]
    closest = min(r["overshoot"] for r in timed)
    for r in timed:
        r["eligible"] = max_overshoot is None or r["overshoot"] <= closest + max_overshoot
    eligible = [r for r in timed if r["eligible"]]
    fastest = min(eligible, key=lambda r: (r["latency_ms"], r["round_to"]))
    best = min((r for r in eligible if not _clearly_faster(fastest, r, tolerance)), key=lambda r: r["round_to"])
    return RoundToChoice(round_to=best["round_to"], flops_reduction=float(flops_reduction), rows=rows,
                         latency_before=before, model=pruned[best["round_to"]])


def _clearly_faster(a, b, tolerance):
    """Whether row ``a`` is faster than row ``b`` by more than ``tolerance`` (relative).

    When both were timed in the same interleaved rounds the comparison is paired: the median over the rounds
    of ``a``'s round median / ``b``'s must be below ``1 - tolerance`` -- so ``a`` won by more than the
    tolerance in most rounds, and one round disturbed by the host's load decides nothing either way.
    Otherwise the ratio of the two medians."""
    ra, rb = a.get("round_medians_ms"), b.get("round_medians_ms")
    if ra and rb and len(ra) == len(rb):
        ratio = float(np.median([x / y for x, y in zip(ra, rb)]))
    else:
        ratio = a["latency_ms"] / b["latency_ms"]
    return ratio < 1 - tolerance


__all__ = ["suggest_round_to", "RoundToChoice"]
