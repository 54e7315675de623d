"""Sensitivity analysis of filter pruning, and pruning ratios derived from it (PaddleSlim style).

:func:`sensitivity` prunes one channel group at a time at several ratios and records how much an
evaluation metric drops; :func:`ratios_by_loss` turns those curves into per-group ratios for a
tolerated loss, and :func:`ratios_by_flops` searches the tolerated loss that reaches a FLOPs target.
"""

import gc
import hashlib
import math
from pathlib import Path

import numpy as np

from kslim._io import atomic_write_json, read_json
from kslim.errors import KslimFileError, KslimTypeError, KslimValueError, ModelError
from kslim.prune.criteria import make_pruner
from kslim.prune.result import FlopsRatios
from kslim.validation import check_model, check_ratios, renamed

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
CHECKPOINT_FORMAT = "kslim.sensitivity/1"


# ---------------------------------------------------------------------------------------------- helpers
def _ratio_key(r):
    return f"{round(float(r), 6):g}"


def model_fingerprint(model):
    """Hashes identifying a model: ``{"name", "architecture", "weights"}``.

    ``architecture`` covers the layer classes, the names of the layers with weights and the weight
    shapes; ``weights`` the weight values.
    """
    arch = hashlib.sha1()
    wts = hashlib.sha1()
    for layer in model.layers:
        # names of weightless layers (auto-numbered Input, ReLU ...) do not identify the model
        arch.update(f"{layer.name if layer.weights else ''}|{type(layer).__name__}|".encode())
        for w in layer.weights:
            arch.update(f"{tuple(w.shape)};".encode())
    for w in model.weights:
        wts.update(np.ascontiguousarray(np.asarray(w.numpy() if hasattr(w, "numpy") else w)).tobytes())
    return {"name": model.name, "architecture": arch.hexdigest()[:16], "weights": wts.hexdigest()[:16]}


def _select_groups(pruner, layers):
    """The prunable groups named by ``layers`` (group names or any of their producer layers)."""
    groups = list(pruner.groups)
    if layers is None:
        return groups
    if isinstance(layers, str):
        layers = [layers]
    prunable = {id(g) for g in groups}
    chosen = []
    for name in layers:
        g = pruner.graph.group(name)  # raises, naming the layer, if unknown or not a channel producer
        if id(g) not in prunable:
            reason = g.reason or "excluded by the pruner (skip / keep_classifier)"
            raise KslimValueError(f"Layer {name!r} (channel group {g.name!r}) cannot be pruned: {reason}.")
        if all(c is not g for c in chosen):
            chosen.append(g)
    return chosen


def _load_checkpoint(path, fingerprint, criterion, options):
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = read_json(path, "Sensitivity checkpoint")
    except OSError as e:  # KslimFileError (malformed, undecodable) or an unreadable file
        raise KslimFileError(f"{e} Delete it or choose another --checkpoint.") from e
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise KslimFileError(
            f"{path} is not a kslim sensitivity checkpoint (no format {CHECKPOINT_FORMAT!r}); refusing to "
            "overwrite it: choose another checkpoint path."
        )
    old = data.get("model", {})
    if old.get("architecture") != fingerprint["architecture"]:
        raise ModelError(
            f"Checkpoint {path} was computed for another model ({old.get('name')!r}, architecture "
            f"{old.get('architecture')}) than {fingerprint['name']!r} (architecture "
            f"{fingerprint['architecture']}): its layers differ. Delete it or use another checkpoint path."
        )
    if old.get("weights") != fingerprint["weights"]:
        raise ModelError(
            f"Checkpoint {path} was computed for model {old.get('name')!r} with other weights (hash "
            f"{old.get('weights')} vs {fingerprint['weights']}): same layers, different training. Delete it "
            "or use another checkpoint path."
        )
    if data.get("criterion") != criterion:
        raise KslimValueError(
            f"Checkpoint {path} was computed with pruner {data.get('criterion')!r}, not {criterion!r}: losses "
            "of different criteria cannot be mixed. Use the same criterion or another checkpoint path."
        )
    if data.get("pruner_options") != options:
        raise KslimValueError(
            f"Checkpoint {path} was computed with pruner options {data.get('pruner_options')} (round_to, skip, "
            f"keep_classifier; None: not recorded), not {options}: losses measured with other options cannot be "
            "mixed. Use the same options or another checkpoint path."
        )
    return data


def _to_float_keys(sens):
    return {g: {float(r): float(v) for r, v in curve.items()} for g, curve in sens.items()}


# ---------------------------------------------------------------------------------------------- API
def sensitivity(model, eval_fn, ratios=DEFAULT_RATIOS, layers=None, checkpoint="sens.json", pruner=None,
                verbose=1, base_rtol=1e-3, importance=None):
    """Loss of ``eval_fn`` when each channel group of ``model`` alone is pruned at each ratio.

    For every prunable group and ratio the model is physically pruned (only that group) and
    evaluated; the loss is ``(base - metric) / base`` where ``base = eval_fn(model)``, as in
    PaddleSlim. ``eval_fn`` takes a ``keras.Model`` and returns a float where higher is better
    (accuracy); negate a lower-is-better metric.

    Every measurement is written at once (atomically) to ``checkpoint``, so an interrupted run
    started again with the same arguments resumes where it stopped. A checkpoint made for another
    model (other layers or other weights), another criterion or other pruner options (``round_to``,
    ``skip``, ``keep_classifier``) is refused with the reason.

    Args:
        model: a built ``keras.Model``.
        eval_fn: ``callable(model) -> float``.
        ratios: fractions of channels removed, each in [0, 1).
        layers: group names (first producer layer) or layer names to analyse; default every
            prunable group.
        checkpoint: JSON file (``None``: keep nothing on disk).
        pruner: a :class:`~kslim.prune.FilterPruner` subclass (built on ``model``) or an instance
            bound to ``model`` (with its ``skip`` / ``round_to`` settings).
        importance: instead of ``pruner``, how channels are ranked: an importance name (``"l1"``
            default, ``"l2"``, ``"fpgm"`` ...) or object.
        verbose: 1 shows a Keras progress bar.
        base_rtol: when resuming, the base metric must match the checkpoint's within this
            relative tolerance (otherwise ``eval_fn`` changed and the checkpoint is refused).

    Returns:
        ``{group_name: {ratio: loss}}`` for the requested groups.

    Example:
        >>> import keras, numpy as np
        >>> from kslim.prune import sensitivity
        >>> m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, name="c1"),
        ...                       keras.layers.Conv2D(4, 3, name="c2"), keras.layers.Conv2D(4, 1, name="c3"),
        ...                       keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, name="fc")])
        >>> x = np.random.rand(16, 8, 8, 1).astype("float32")
        >>> score = lambda mm: 1.0 / (1.0 + float(np.abs(np.asarray(mm(x))).mean()))
        >>> s = sensitivity(m, score, ratios=[0.5], checkpoint=None, verbose=0)
        >>> sorted(s)  # c3 feeds the classifier, kept by default
        ['c1', 'c2']
    """
    import keras

    check_model(model, "sensitivity()")
    if not callable(eval_fn):
        raise KslimTypeError(f"sensitivity(): eval_fn must be callable(model) -> float, got {type(eval_fn).__name__}.")
    ratios = sorted({round(r, 6) for r in check_ratios(ratios, "sensitivity(): ratios")})
    if 0.0 in ratios:
        ratios.remove(0.0)
        if not ratios:
            raise KslimValueError("ratios holds only 0: give ratios in (0, 1).")
    pruner = make_pruner(model, pruner, importance, where="sensitivity()")
    groups = _select_groups(pruner, layers)
    if not groups:
        raise ModelError(f"Model {model.name!r} has no prunable channel group.")
    fingerprint = model_fingerprint(model)
    criterion = type(pruner).__name__
    options = {"round_to": pruner.round_to, "skip": sorted(pruner.skip), "keep_classifier": pruner.keep_classifier}

    data = _load_checkpoint(checkpoint, fingerprint, criterion, options) if checkpoint else None
    base = _metric(eval_fn, model, "the unpruned model")
    if base == 0:
        raise KslimValueError("eval_fn returned 0 for the unpruned model: the relative loss is undefined.")
    if data is None:
        data = {"format": CHECKPOINT_FORMAT, "model": fingerprint, "criterion": criterion,
                "pruner_options": options, "base": base, "sensitivities": {}}
    elif not math.isclose(float(data["base"]), base, rel_tol=base_rtol, abs_tol=1e-12):
        raise KslimValueError(
            f"Checkpoint {checkpoint} was measured with base metric {data['base']:.6g} but eval_fn now "
            f"gives {base:.6g} for the same model: the evaluation changed (other data?). Delete the "
            "checkpoint or use another path."
        )
    table = data["sensitivities"]

    todo = [(g, r) for g in groups for r in ratios if _ratio_key(r) not in table.get(g.name, {})]
    bar = keras.utils.Progbar(len(todo), unit_name="eval") if verbose and todo else None
    for i, (group, r) in enumerate(todo):
        pruned = pruner.prune({group.name: r})
        metric = _metric(eval_fn, pruned, f"group {group.name!r} pruned at {r:g}")
        del pruned
        gc.collect()
        table.setdefault(group.name, {})[_ratio_key(r)] = (base - metric) / base
        if checkpoint:
            atomic_write_json(checkpoint, data)
        if bar is not None:
            bar.update(i + 1, values=[("loss", table[group.name][_ratio_key(r)])])
    if checkpoint and not todo and not Path(checkpoint).exists():
        atomic_write_json(checkpoint, data)
    wanted = {_ratio_key(r) for r in ratios}
    return _to_float_keys({g.name: {k: v for k, v in table[g.name].items() if k in wanted} for g in groups})


def _metric(eval_fn, model, what):
    value = eval_fn(model)
    try:
        value = float(np.asarray(value).reshape(()))
    except (TypeError, ValueError):
        raise KslimTypeError(f"eval_fn must return one number; for {what} it returned {value!r}.") from None
    if math.isnan(value):
        raise KslimValueError(f"eval_fn returned NaN for {what}.")
    return value


def load_sensitivity(path):
    """Read the ``{group: {ratio: loss}}`` table of a checkpoint written by :func:`sensitivity`."""
    data = read_json(path, "Sensitivity file")
    if isinstance(data, dict) and data.get("format") == CHECKPOINT_FORMAT:
        data = data["sensitivities"]
    return _check_sens(data)


def _check_sens(sens):
    if not isinstance(sens, dict) or not sens:
        raise KslimValueError("sensitivities must be a non-empty dict {group_name: {ratio: loss}}.")
    out = {}
    for g, curve in sens.items():
        if not isinstance(curve, dict):
            raise KslimValueError(f"sensitivities[{g!r}] must be a dict {{ratio: loss}}, got {type(curve).__name__}.")
        try:
            out[g] = {float(r): float(v) for r, v in curve.items()}
        except (TypeError, ValueError):
            raise KslimValueError(f"sensitivities[{g!r}] has a non-numeric ratio or loss.") from None
        for r in out[g]:
            if not 0.0 <= r < 1.0:
                raise KslimValueError(f"sensitivities[{g!r}]: ratio {r} is outside [0, 1).")
    return out


def ratios_by_loss(sens, max_loss):
    """Per-group pruning ratio whose interpolated loss is ``max_loss`` (PaddleSlim's ``get_ratios_by_loss``).

    For each group, the largest measured ratio whose loss is <= ``max_loss`` is found; if a larger
    ratio follows, the ratio is linearly interpolated between the two. Unlike PaddleSlim, the curve
    starts at ``(0, 0)``, so a group already too sensitive at its first ratio gets an interpolated
    ratio below it instead of nothing. Groups that reach 0 are left out.

    Example:
        >>> ratios_by_loss({"conv1": {0.2: 0.01, 0.4: 0.03}}, 0.02)
        {'conv1': 0.3}
    """
    sens = _check_sens(sens)
    try:
        max_loss = float(max_loss)
    except (TypeError, ValueError):
        raise KslimValueError(f"max_loss must be a number, got {max_loss!r}.") from None
    ratios = {}
    for g, curve in sens.items():
        points = sorted(curve.items())
        if not points or points[0][0] > 0:
            points = [(0.0, 0.0)] + points
        for i in range(len(points) - 1, -1, -1):
            r0, l0 = points[i]
            if l0 <= max_loss:
                if i == len(points) - 1:
                    ratio = r0
                else:
                    r1, l1 = points[i + 1]
                    ratio = r0 + (max_loss - l0) * (r1 - r0) / (l1 - l0) if l1 != l0 else r0
                ratio = round(min(max(ratio, 0.0), points[-1][0]), 6)
                if ratio > 0:
                    ratios[g] = ratio
                break
    return ratios


@renamed(target="flops_reduction", tol="tolerance")
def ratios_by_flops(model, sens, flops_reduction, pruner=None, tolerance=0.005, max_iter=30, importance=None):
    """Per-group ratios (from :func:`ratios_by_loss`) removing a share of the MACs, by bisection on the loss.

    Args:
        model: the unpruned model the sensitivities were measured on.
        sens: ``{group: {ratio: loss}}`` from :func:`sensitivity` (or a checkpoint path).
        flops_reduction: fraction of the MACs to remove, in (0, 1) (0.5: the pruned model has half
            the MACs).
        pruner, importance: as in :func:`sensitivity`; the pruner's ``skip`` / ``round_to``
            settings are used to count the MACs.
        tolerance: stop when the removed fraction is within ``tolerance`` above ``flops_reduction``.

    Returns:
        a :class:`~kslim.prune.result.FlopsRatios` (``.ratios``, ``.max_loss``, ``.reduction``,
        ``.macs``, ``.base_macs``): the smallest tolerated loss whose ratios remove at least
        ``flops_reduction`` of the MACs. If even the largest measured ratios cannot reach it, raises
        :class:`KslimValueError`.
    """
    target, tol = flops_reduction, tolerance
    if isinstance(sens, (str, Path)):
        sens = load_sensitivity(sens)
    sens = _check_sens(sens)
    try:
        target = float(target)
    except (TypeError, ValueError):
        raise KslimValueError(f"ratios_by_flops(): flops_reduction must be a fraction of MACs to remove in (0, 1), "
                              f"got {target!r}.") from None
    if not 0.0 < target < 1.0:
        raise KslimValueError(f"ratios_by_flops(): flops_reduction must be a fraction of MACs to remove in (0, 1), "
                              f"got {target!r}.")
    pruner = make_pruner(model, pruner, importance, where="ratios_by_flops()")
    known = {g.name for g in pruner.groups}
    unknown = sorted(set(sens) - known)
    if unknown:
        raise ModelError(
            f"Sensitivities name groups that are not prunable groups of {model.name!r}: {unknown[:10]}; "
            "were they measured on another model?"
        )
    base_macs = float(pruner.macs_before)

    def reduction(max_loss):
        ratios = ratios_by_loss(sens, max_loss)
        macs = pruner.estimate_macs(ratios) if ratios else base_macs  # no model is built
        return ratios, 1.0 - macs / base_macs

    all_losses = sorted({v for c in sens.values() for v in c.values()})
    hi = max(all_losses[-1], 0.0) + 1.0  # every group at its largest measured ratio
    ratios_hi, red_hi = reduction(hi)
    if red_hi < target:
        raise KslimValueError(
            f"Even the largest measured ratios remove only {red_hi:.1%} of the MACs of {model.name!r} (target "
            f"{target:.1%}): measure larger ratios or more layers, or lower the target."
        )
    lo = min(all_losses[0], 0.0) - 1e-9
    best = (hi, ratios_hi, red_hi)
    for _ in range(max_iter):
        mid = (lo + hi) / 2
        ratios, red = reduction(mid)
        if red >= target:
            hi = mid
            best = (mid, ratios, red)
            if red - target <= tol:
                break
        else:
            lo = mid
    max_loss, ratios, red = best
    return FlopsRatios(ratios=ratios, max_loss=float(max_loss), reduction=float(red),
                       macs=int(round(base_macs * (1 - red))), base_macs=int(base_macs))
