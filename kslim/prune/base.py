"""FilterPruner: rank the channels of each group, remove the least important, rebuild a smaller model."""

import math
import numbers

import numpy as np

from kslim.errors import KslimTypeError, KslimValueError, ModelError, UnsupportedLayerError
from kslim.graph import build_dependency_graph


def _macs(model):
    """Multiply-accumulates of ``model`` (per sample), from :func:`kslim.analysis.flops`."""
    from kslim.analysis import flops

    return int(flops(model).macs)


def _check_ratio(ratio, what="ratio"):
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real):
        raise KslimTypeError(f"{what} must be a number in [0, 1), got {ratio!r} ({type(ratio).__name__}).")
    ratio = float(ratio)
    if not (0.0 <= ratio < 1.0) or math.isnan(ratio):
        raise KslimValueError(f"{what} must be in [0, 1) (the fraction of channels to remove), got {ratio!r}.")
    return ratio


class FilterPruner:
    """Removes whole filters (output channels) from a functional or Sequential Keras 3 model.

    The pruner builds the model's channel-dependency graph (:func:`kslim.graph.build_dependency_graph`):
    channels that must be removed together (residual ``Add`` branches, squeeze-excite ``Multiply``,
    depthwise convs carrying channels, ``Concatenate`` slices, ``Flatten -> Dense`` rows) form one group,
    ranked by :meth:`importance`. :meth:`prune` returns a *new*, ordinary Keras model with the least
    important channels of every group removed; the original model is not modified.

    Group importance: for every producer of the group (each Conv/Dense whose output is this channel
    space) the criterion scores each of its filters; scores are divided by their mean over the producer
    (so producers of different scale weigh equally) and summed over producers. Higher = keep.

    Args:
        model: a built functional or Sequential ``keras.Model`` (nested models are flattened).
        skip: names of producer layers whose output channels must not be pruned.
        keep_classifier: keep the last classifier untouched (also its input channels): the groups
            feeding the producers of the model outputs are not pruned.
        round_to: round every group's kept channel count to a multiple of this (e.g. 8 for
            accelerators); groups smaller than ``round_to`` are left as they are.
        criterion: function ``(filters (n, d) array) -> (n,) scores``; subclasses set it.

    Example:
        >>> import kslim
        >>> from kslim.prune import L1NormFilterPruner
        >>> model = kslim.models.vgg(width=0.25)
        >>> pruner = L1NormFilterPruner(model)
        >>> small = pruner.prune(0.5)
        >>> small.get_layer("conv1_1").filters, model.get_layer("conv1_1").filters
        (4, 8)
    """

    criterion = None

    def __init__(self, model, skip=None, keep_classifier=True, round_to=1, criterion=None):
        import keras

        if not isinstance(model, keras.Model):
            raise KslimTypeError(f"model must be a keras.Model, got {type(model).__name__}.")
        if criterion is not None:
            self.criterion = criterion
        if self.criterion is None:
            raise KslimValueError("FilterPruner needs a criterion; use L1NormFilterPruner, L2NormFilterPruner, "
                                  "FPGMFilterPruner or pass criterion=.")
        if isinstance(round_to, bool) or not isinstance(round_to, numbers.Integral) or round_to < 1:
            raise KslimValueError(f"round_to must be an integer >= 1, got {round_to!r}.")
        self.model = model
        self.round_to = int(round_to)
        self.keep_classifier = bool(keep_classifier)
        self.graph = build_dependency_graph(model)
        if skip is None:
            skip = ()
        elif isinstance(skip, str):
            skip = (skip,)
        self.skip = tuple(self.graph.resolve(n) for n in skip)
        for name in self.skip:
            if name not in self.graph.layers:
                raise KslimValueError(f"skip: unknown layer {name!r}; the model has no layer of that name.")
            if name not in self.graph._by_producer:
                raise UnsupportedLayerError(
                    f"skip: layer {name!r} ({type(self.graph.layers[name]).__name__}) produces no channels of its "
                    f"own; name the Conv/Dense layer whose filters must be kept.")
        self._excluded = {}
        for g in self.graph.groups:
            if not g.prunable:
                continue
            skipped = [n for n in g.layer_names if n in self.skip]
            if skipped:
                self._excluded[g.name] = f"layer {skipped[0]!r} is in skip"
            elif self.keep_classifier:
                heads = [n for n in self.graph.classifiers if any(m.role == "input" for m in g.members_of(n))]
                if heads:
                    self._excluded[g.name] = f"feeds the classifier {heads[0]!r} (keep_classifier=True)"
        #: the groups this pruner may prune (prunable, not skipped, not feeding the kept classifier)
        self.groups = [g for g in self.graph.groups if g.prunable and g.name not in self._excluded]
        self._importance = {}
        self._macs_before = None
        self._per_layer = None

    # -- ranking ---------------------------------------------------------------------------------
    def importance(self, group):
        """Importance of each channel of ``group`` (array of ``group.size``; higher = keep).

        Computed from the model's current weights on first use and cached; call :meth:`refresh` after
        the weights change (e.g. training between pruning steps).
        """
        if group.name in self._importance:
            return self._importance[group.name]
        scores = np.zeros(group.size, dtype=np.float64)
        channels = np.arange(group.size)
        for m in group.filters:
            w = _weight(self.graph.layers[m.layer_name], m.weight_index)
            rows = np.moveaxis(w, m.axis, 0).reshape(w.shape[m.axis], -1)
            idx = m.indices(channels)
            filters = rows if len(idx) == rows.shape[0] and m.offset == 0 and m.multiplier == 1 else rows[idx]
            s = np.asarray(self.criterion(filters), dtype=np.float64).reshape(-1)
            if s.shape != (group.size,):
                raise KslimValueError(f"criterion returned shape {s.shape} for {group.size} filters of "
                                      f"{m.layer_name!r}; it must return one score per filter.")
            mean = float(np.mean(np.abs(s)))
            if mean > 0:
                scores += s / mean
        self._importance[group.name] = scores
        return scores

    def refresh(self):
        """Forget cached importance scores and MAC counts (call after the model's weights changed)."""
        self._importance.clear()
        return self

    def n_remove(self, group, ratio):
        """How many channels of ``group`` ``ratio`` removes (after ``round_to``; at least one survives)."""
        size = group.size
        if ratio <= 0 or size <= 1:
            return 0
        keep = size - int(math.floor(size * ratio + 1e-9))
        if self.round_to > 1 and size > self.round_to:
            keep = int(math.floor(keep / self.round_to + 0.5)) * self.round_to
            keep = min(size, max(self.round_to, keep))
        keep = max(1, min(size, keep))
        return size - keep

    def plan(self, ratios):
        """``{group name: sorted channel indices to remove}`` for ``ratios`` (no model is built).

        ``ratios`` is a float (the same ratio for every group in :attr:`groups`) or a dict
        ``{name: ratio}``; a name is a group name or any producer layer of a group (a layer whose output
        is split over several groups names all of them).
        """
        plan = {}
        for group, ratio in self._resolve(ratios).items():
            n = self.n_remove(group, ratio)
            if n:
                order = np.argsort(self.importance(group), kind="stable")
                plan[group.name] = np.sort(order[:n])
        return plan

    def _resolve(self, ratios):
        if isinstance(ratios, dict):
            out = {}
            for name, ratio in ratios.items():
                ratio = _check_ratio(ratio, f"ratio of {name!r}")
                for group in self._groups(name):
                    if group in out and out[group] != ratio:
                        raise KslimValueError(
                            f"{name!r} and another key name the same channel group {group.name!r} (outputs added or "
                            f"multiplied together) with different ratios {ratio} and {out[group]}; give one ratio.")
                    out[group] = ratio
            return out
        ratio = _check_ratio(ratios)
        if ratio > 0:
            self._require_groups()
        return {g: ratio for g in self.groups}

    def _require_groups(self):
        """Raise ModelError saying why when no channel group may be pruned ("nothing to prune")."""
        if self.groups:
            return
        why = {}
        for g in self.graph.groups:
            reason = self._excluded.get(g.name) or g.reason
            if g.layer_names and reason:
                why.setdefault(reason, g.name)
        lines = "; ".join(f"{name!r}: {reason}" for reason, name in list(why.items())[:4])
        raise ModelError(
            f"Nothing to prune in model {self.model.name!r}: none of its {len(self.graph.groups)} channel groups "
            f"can be pruned ({lines or 'it has no Conv/Dense producer'}). Register a rule for the layers "
            f"named (kslim.graph.rules), or pass skip/keep_classifier differently."
        )

    def _groups(self, name, single=False):
        """The prunable groups ``name`` designates (a group name or a producer layer name)."""
        if not isinstance(name, str):
            raise KslimTypeError(f"Layer names must be strings, got {name!r}.")
        groups = [self.graph.group(name)] if single else self.graph.groups_for(name)
        usable = [g for g in groups if g.prunable and g.name not in self._excluded]
        if usable:
            return usable
        group = groups[0]
        if not group.prunable:
            layer = self.graph.layers.get(name)
            kind = f" ({type(layer).__name__})" if layer is not None else ""
            raise UnsupportedLayerError(f"Layer {name!r}{kind} cannot be pruned: {group.reason}.")
        raise KslimValueError(f"Layer {name!r} is not pruned by this pruner: {self._excluded[group.name]}.")

    # -- building ----------------------------------------------------------------------------------
    def prune(self, ratios):
        """A new model with ``ratios`` of the channels of each group removed (least important first).

        Args:
            ratios: float in [0, 1) applied to every group in :attr:`groups`, or ``{layer_name: ratio}``.

        Returns:
            A new ``keras.Model`` (uncompiled) of ordinary Keras layers.

        Raises:
            KslimValueError: ratio outside [0, 1), unknown layer name, a skipped/classifier layer named.
            UnsupportedLayerError: a named layer produces no channels or its group cannot be pruned.
        """
        return self.prune_channels(self.plan(ratios))

    def prune_channels(self, channels, copy_weights=True):
        """The surgery primitive: remove exactly ``channels`` = ``{layer_name: indices}`` from their groups.

        Any producer name of a group may be used as key. The indices are group channel indices
        (``0 .. group.size - 1``); at least one channel of each group must survive.
        """
        from kslim.prune.surgery import rebuild

        if not isinstance(channels, dict):
            raise KslimTypeError(
                f"prune_channels expects a dict {{layer_name: indices}}, got {type(channels).__name__}.")
        removed = {}
        for name, idx in channels.items():
            (group,) = self._groups(name, single=True)
            idx = np.unique(np.asarray(idx, dtype=np.int64).reshape(-1))
            if idx.size and (idx.min() < 0 or idx.max() >= group.size):
                raise KslimValueError(f"Channel indices for {name!r} must be in [0, {group.size}), got "
                                      f"{idx.min()}..{idx.max()}.")
            if group in removed:
                idx = np.union1d(removed[group], idx)
            if idx.size >= group.size:
                raise KslimValueError(f"Cannot remove all {group.size} channels of {name!r}; at least one must remain.")
            removed[group] = idx
        return rebuild(self.graph.model, self.graph, removed, copy_weights=copy_weights)

    def prune_to_flops(self, target, mode="uniform", tolerance=1e-3):
        """Prune with the smallest uniform ratio that removes at least ``target`` of the MACs.

        The ratio is found by bisection (MACs counted by :func:`kslim.analysis.flops`).

        Args:
            target: fraction of the MACs to remove, in (0, 1).
            mode: ``"uniform"`` (one ratio for every group in :attr:`groups`).
            tolerance: bisection stops when the ratio interval is narrower than this.

        Returns:
            ``(model, info)`` with ``info = {"ratio", "target", "macs_before", "macs_after", "reduction"}``,
            ``reduction`` being the achieved fraction of MACs removed.

        Raises:
            KslimValueError: target outside (0, 1), unknown mode, or target not reachable (the message
                gives the largest reduction possible).
        """
        target = _check_ratio(target, "target")
        if target <= 0:
            raise KslimValueError(f"target must be in (0, 1) (the fraction of MACs to remove), got {target!r}.")
        if mode != "uniform":
            raise KslimValueError(f"mode must be 'uniform', got {mode!r}.")
        self._require_groups()
        before = self.macs_before
        cache = {}

        def reduction(ratio, exact=False):
            plan = self.plan(ratio)
            key = (exact, tuple(sorted((k, len(v)) for k, v in plan.items())))
            if key not in cache:
                estimate = None if exact else self._estimate_macs(plan)
                if estimate is None:
                    estimate = _macs(self.prune_channels(plan, copy_weights=False))
                cache[key] = estimate
            return 1.0 - cache[key] / before

        def bisect(lo, hi, exact):
            while hi - lo > tolerance:
                mid = (lo + hi) / 2
                if reduction(mid, exact) >= target:
                    hi = mid
                else:
                    lo = mid
            return hi

        top = 1.0 - 1e-6
        best = reduction(top)
        if best < target:
            raise KslimValueError(
                f"target {target:.3f} is not reachable: removing all but one channel of every prunable group "
                f"removes only {best:.3f} of the MACs (skip/keep_classifier/unprunable groups keep the rest)."
            )
        ratio = bisect(0.0, top, exact=False)
        model = self.prune(ratio)
        after = _macs(model)
        if 1.0 - after / before < target:  # the estimate disagreed with the real count: bisect on real models
            ratio = bisect(ratio, top, exact=True)
            model = self.prune(ratio)
            after = _macs(model)
        info = {"ratio": ratio, "target": target, "macs_before": before, "macs_after": after,
                "reduction": 1.0 - after / before}
        return model, info

    def estimate_macs(self, ratios):
        """MACs of the model :meth:`prune` would return for ``ratios``, computed without building it.

        Exact for the counting convention of :func:`kslim.analysis.flops` (Conv, Dense, depthwise and
        separable MACs scale with the kept fraction of their kernels); falls back to building the
        pruned model (without copying weights) when layers cannot be matched to the report rows.
        Cheap enough to call in a search loop.

        Example:
            >>> import kslim
            >>> p = kslim.prune.L1NormFilterPruner(kslim.models.vgg(width=0.25))
            >>> p.estimate_macs(0.5) < p.macs_before
            True
        """
        plan = self.plan(ratios)
        est = self._estimate_macs(plan)
        if est is None:
            est = _macs(self.prune_channels(plan, copy_weights=False))
        return int(round(est))

    def _layer_macs(self):
        """``{layer name: MACs}`` of the original model, or None when flops rows cannot be matched to layers."""
        if self._per_layer is None:
            from kslim.analysis import flops

            report = flops(self.model)
            self._macs_before = int(report.macs)
            per = {}
            for row in report.rows:
                if not row.macs:
                    continue
                base = row.name.split("#")[0]
                if base not in self.graph.layers:
                    per = False
                    break
                per[base] = per.get(base, 0) + int(row.macs)
            self._per_layer = per
        return self._per_layer or None

    def _estimate_macs(self, plan):
        """MACs after removing ``plan`` without building the model, or None if unknown.

        Every MAC-counted layer (Conv, Dense, depthwise, separable) does ``positions x kernel size``
        MACs per kernel, so its MACs scale with the fraction of its kernels' (>= 2-D weights) entries kept.
        """
        from kslim.prune.surgery import deletions

        per = self._layer_macs()
        if per is None:
            return None
        removed = {self.graph.group(name): idx for name, idx in plan.items()}  # plan keys are group names
        cuts = deletions(removed)
        total = 0.0
        for name, macs in per.items():
            layer = self.graph.layers[name]
            before = after = 0
            for i, w in enumerate(layer.weights):
                shape = list(w.shape)
                if len(shape) < 2:
                    continue
                before += math.prod(shape)
                for axis in range(len(shape)):
                    idx = cuts.get((name, i, axis))
                    if idx is not None:
                        shape[axis] -= len(idx)
                after += math.prod(shape)
            total += macs * (after / before if before else 1.0)
        return total

    @property
    def macs_before(self):
        """MACs of the original model (cached)."""
        if self._macs_before is None:
            self._layer_macs()
        if self._macs_before is None:
            self._macs_before = _macs(self.model)
        return self._macs_before

    def __repr__(self):
        return (f"{type(self).__name__}({self.model.name!r}: {len(self.groups)} prunable groups of "
                f"{len(self.graph.groups)})")


def _weight(layer, index):
    return np.asarray(layer.weights[index].numpy())
