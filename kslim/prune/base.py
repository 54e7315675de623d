"""FilterPruner: rank the channels of each group, remove the least important, rebuild a smaller model."""

import math
import numbers

import numpy as np

from kslim.errors import KslimTypeError, KslimValueError, ModelError, UnsupportedLayerError
from kslim.graph import build_dependency_graph
from kslim.prune.importance import Importance, MagnitudeImportance, fpgm, get_importance, l1_norm, l2_norm
from kslim.prune.result import PruneResult
from kslim.prune.scope import get_scope
from kslim.validation import check_model, check_ratio, renamed

_CRITERION_NAMES = {l1_norm: "l1", l2_norm: "l2", fpgm: "fpgm"}


def _macs(model):
    """Multiply-accumulates of ``model`` (per sample), from :func:`kslim.analysis.flops`."""
    from kslim.analysis import flops

    return int(flops(model).macs)


def _check_ratio(ratio, what="ratio"):
    """A fraction of channels (or weights) removed, in [0, 1): :func:`kslim.validation.check_ratio`."""
    if isinstance(ratio, str):  # an API argument: "0.5" is a mistake here, not a command-line value
        raise KslimTypeError(f"{what}: {ratio!r} is not a number.")
    return check_ratio(ratio, what, meaning="the fraction removed")


def check_group_ratios(ratios, where):
    """``ratios`` of a pruning callback: one fraction for every group, or a non-empty ``{name: fraction}``."""
    if isinstance(ratios, dict):
        if not ratios:
            raise KslimValueError(f"{where}: ratios: the dict is empty; name at least one group.")
        return {str(k): _check_ratio(v, f"{where}: ratios[{k!r}]") for k, v in ratios.items()}
    return _check_ratio(ratios, f"{where}: ratios")


class FilterPruner:
    """Removes whole filters (output channels) from a functional or Sequential Keras 3 model.

    The pruner builds the model's channel-dependency graph (:func:`kslim.graph.build_dependency_graph`):
    channels that must be removed together (residual ``Add`` branches, squeeze-excite ``Multiply``,
    depthwise convs carrying channels, ``Concatenate`` slices, ``Flatten -> Dense`` rows) form one group,
    ranked by :meth:`importance`. :meth:`prune` returns a *new*, ordinary Keras model with the least
    important channels of every group removed; the original model is not modified.

    Importance: each group's channels are scored by an :class:`~kslim.prune.importance.Importance`
    over the whole group (``importance=``: a registered name or an instance; see
    :mod:`kslim.prune.importance` for ``l1``, ``l2``, ``fpgm``, ``bn_scale``, ``lamp``, ``random``,
    ``apoz``, ``mean_activation``, ``taylor``, ``hessian``). The weight criteria (``l1`` ...) score every
    producer's filters, divide the scores by their mean over the producer (so producers of different
    scale weigh equally) and sum over producers. Higher = keep. Groups an importance cannot score
    (``bn_scale`` on a group without BatchNormalization) are not pruned, with the reason recorded.

    Ranking: ``ranking="local"`` (default) removes ``ratio`` of the channels of every group;
    ``ranking="global"`` removes ``ratio`` of *all* the prunable channels, where their normalised scores
    (:meth:`normalized_importance`) are lowest across groups, at most ``max_layer_ratio`` of any group.

    Args:
        model: a built functional or Sequential ``keras.Model`` (nested models are flattened).
        skip: names of producer layers whose output channels must not be pruned.
        scope: which groups may be pruned at all: a registered scope name (:func:`kslim.prune.scope_names`:
            ``"all"``, the default, or ``"uncoupled"``: only groups with one producer, so the residual
            stream keeps its width) or a function ``(group, graph) -> bool`` (see :mod:`kslim.prune.scope`).
        keep_classifier: keep the last classifier untouched (also its input channels): the groups
            feeding the producers of the model outputs are not pruned.
        round_to: round every group's kept channel count to a multiple of this (e.g. 8 for
            accelerators); groups smaller than ``round_to`` are left as they are.
        importance: a registered importance name (:func:`kslim.prune.importance_names`), an
            :class:`~kslim.prune.importance.Importance`, or a weight criterion: a function
            ``(filters (n, d) array) -> (n,) scores`` (the classes L1NormFilterPruner ... set one).
            ``criterion=`` is its old name.
        data, loss, batches, batch_size: for the data-driven importances (``apoz``,
            ``mean_activation``, ``taylor``, ``hessian``): inputs or ``(x, y)`` batches, the training loss,
            how many batches to read (default 8) and the batch size for arrays (default 32).

    Example:
        >>> import kslim
        >>> from kslim.prune import L1NormFilterPruner
        >>> model = kslim.models.vgg(width=0.25)
        >>> pruner = L1NormFilterPruner(model)
        >>> small = pruner.prune(0.5)
        >>> small.get_layer("conv1_1").filters, model.get_layer("conv1_1").filters
        (4, 8)
        >>> small = FilterPruner(model, importance="bn_scale").prune(0.5, ranking="global")
    """

    criterion = None
    #: the importance name a subclass ranks with when neither ``importance`` nor ``criterion`` is given
    default_importance = None

    @renamed(criterion="importance")
    def __init__(self, model, skip=None, keep_classifier=True, round_to=1, importance=None,
                 data=None, loss=None, batches=None, batch_size=None, scope="all"):
        check_model(model, type(self).__name__)
        criterion = None
        if callable(importance) and not isinstance(importance, (Importance, type)):
            criterion, importance = importance, None  # a weight criterion: (n, d) filters -> (n,) scores
        if criterion is not None:
            self.criterion = criterion
        options = {k: v for k, v in (("data", data), ("loss", loss), ("batches", batches),
                                     ("batch_size", batch_size)) if v is not None}
        if importance is None and criterion is None and self.default_importance is not None:
            importance = self.default_importance
        if importance is not None:
            self.measure = get_importance(importance, **options)
        elif self.criterion is not None:
            if options:
                raise KslimValueError(f"Options {sorted(options)} are for data-driven importances; a weight "
                                      "criterion uses none of them.")
            self.measure = MagnitudeImportance(self.criterion, name=_CRITERION_NAMES.get(self.criterion))
        else:
            raise KslimValueError("FilterPruner needs an importance; use L1NormFilterPruner, "
                                  "L2NormFilterPruner, FPGMFilterPruner, or pass importance= (a name of "
                                  "kslim.prune.importance_names(), an Importance or a weight criterion).")
        if isinstance(round_to, bool) or not isinstance(round_to, numbers.Integral) or round_to < 1:
            raise KslimValueError(f"round_to must be an integer >= 1, got {round_to!r}.")
        self.scope, in_scope = get_scope(scope)
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
            elif not in_scope(g, self.graph):
                self._excluded[g.name] = f"outside the pruning scope {self.scope!r}"
            elif self.keep_classifier:
                heads = [n for n in self.graph.classifiers if any(m.role == "input" for m in g.members_of(n))]
                if heads:
                    self._excluded[g.name] = f"feeds the classifier {heads[0]!r} (keep_classifier=True)"
            if g.name not in self._excluded:
                why = self.measure.unusable(g, self.graph)
                if why:
                    self._excluded[g.name] = f"importance {self.measure.name!r}: {why}"
        #: the groups this pruner may prune (prunable, not skipped, not feeding the kept classifier)
        self.groups = [g for g in self.graph.groups if g.prunable and g.name not in self._excluded]
        self._importance = {}
        self._macs_before = None
        self._per_layer = None

    # -- ranking ---------------------------------------------------------------------------------
    def importance(self, group):
        """Importance of each channel of ``group`` (array of ``group.size``; higher = keep).

        Computed by :attr:`measure` (the pruner's :class:`~kslim.prune.importance.Importance`) from the
        model's current weights (and data) on first use and cached; call :meth:`refresh` after the
        weights change (e.g. training between pruning steps).
        """
        if group.name in self._importance:
            return self._importance[group.name]
        scores = np.asarray(self.measure(group, self), dtype=np.float64).reshape(-1)
        if scores.shape != (group.size,):
            raise KslimValueError(f"importance {self.measure.name!r} returned {scores.shape[0]} scores for group "
                                  f"{group.name!r} of {group.size} channels; it must return one per channel.")
        if not np.all(np.isfinite(scores)):
            raise KslimValueError(f"importance {self.measure.name!r} returned NaN/inf scores for group {group.name!r}.")
        self._importance[group.name] = scores
        return scores

    def normalized_importance(self, group):
        """The scores of ``group`` that global ranking compares across groups: :meth:`importance` passed
        through the importance's ``normalize`` (divided by the group's mean |score| by default, so each
        group averages 1 and a group whose channels are unequal loses its weak ones first; LAMP and
        BN-scale scores are comparable as they are)."""
        return self.measure.normalize(self.importance(group))

    def refresh(self):
        """Forget cached importance scores (call after the model's weights changed)."""
        self._importance.clear()
        self.measure.reset()
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

    def plan(self, ratios, ranking="local", max_layer_ratio=0.9):
        """``{group name: sorted channel indices to remove}`` for ``ratios`` (no model is built).

        ``ratios`` is a float (the same ratio for every group in :attr:`groups`) or a dict
        ``{name: ratio}``; a name is a group name or any producer layer of a group (a layer whose output
        is split over several groups names all of them).

        ``ranking="global"`` takes one float: that fraction of *all* the channels of :attr:`groups` is
        removed, lowest :meth:`normalized_importance` first across every group, never more than
        ``max_layer_ratio`` of a group (and at least one channel kept); each group's count is then
        rounded as :meth:`n_remove` does (``round_to``), staying within ``max_layer_ratio``.

        Example:
            >>> import kslim
            >>> p = kslim.prune.L1NormFilterPruner(kslim.models.vgg(width=0.25))
            >>> plan = p.plan(0.5, ranking="global", max_layer_ratio=0.8)
            >>> sum(map(len, plan.values())) == sum(g.size for g in p.groups) // 2
            True
        """
        if ranking == "global":
            return self._global_plan(ratios, max_layer_ratio)
        if ranking != "local":
            raise KslimValueError(f"ranking must be 'local' or 'global', got {ranking!r}.")
        plan = {}
        for group, ratio in self._resolve(ratios).items():
            n = self.n_remove(group, ratio)
            if n:
                order = np.argsort(self.importance(group), kind="stable")
                plan[group.name] = np.sort(order[:n])
        return plan

    def _global_plan(self, ratio, max_layer_ratio):
        if isinstance(ratio, dict):
            raise KslimValueError("ranking='global' takes one ratio (the fraction of all prunable channels to "
                                  "remove), not a dict of per-layer ratios; use ranking='local' for those.")
        ratio = _check_ratio(ratio)
        if isinstance(max_layer_ratio, bool) or not isinstance(max_layer_ratio, numbers.Real) or not (
                0.0 < float(max_layer_ratio) <= 1.0):
            raise KslimValueError(f"max_layer_ratio must be in (0, 1], got {max_layer_ratio!r}.")
        if ratio <= 0:
            return {}
        self._require_groups()
        caps, orders, scores, owners = {}, {}, [], []
        for i, g in enumerate(self.groups):
            caps[g.name] = min(g.size - 1, int(math.floor(g.size * float(max_layer_ratio) + 1e-9)))
            s = self.normalized_importance(g)
            order = np.argsort(s, kind="stable")
            orders[g.name] = order
            k = caps[g.name]
            scores.append(s[order[:k]])
            owners.append(np.full(k, i, dtype=np.int64))
        total = sum(g.size for g in self.groups)
        n_total = int(math.floor(total * ratio + 1e-9))
        if not scores or n_total == 0:
            return {}
        scores, owners = np.concatenate(scores), np.concatenate(owners)
        chosen = owners[np.argsort(scores, kind="stable")[:n_total]]
        counts = np.bincount(chosen, minlength=len(self.groups))
        plan = {}
        for g, n in zip(self.groups, counts):
            n = self.n_remove(g, n / g.size) if n else 0
            cap = caps[g.name]
            if n > cap:  # rounding went past the cap: the largest rounded count within it
                keep_min = g.size - cap
                keep = int(math.ceil(keep_min / self.round_to)) * self.round_to if self.round_to > 1 else keep_min
                n = max(0, g.size - min(g.size, keep))
            if n:
                plan[g.name] = np.sort(orders[g.name][:n])
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
            f"named (kslim.graph.rules), or pass skip/keep_classifier/scope differently."
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
    def prune(self, ratios, ranking="local", max_layer_ratio=0.9):
        """A new model with ``ratios`` of the channels of each group removed (least important first).

        Args:
            ratios: float in [0, 1) applied to every group in :attr:`groups`, or ``{layer_name: ratio}``.
            ranking: ``"local"`` (each group loses its ratio) or ``"global"`` (``ratios``, a float, of all
                prunable channels, where they matter least across groups; see :meth:`plan`).
            max_layer_ratio: with global ranking, the largest fraction removed from one group.

        Returns:
            A new ``keras.Model`` (uncompiled) of ordinary Keras layers.

        Raises:
            KslimValueError: ratio outside [0, 1), unknown layer name, a skipped/classifier layer named.
            UnsupportedLayerError: a named layer produces no channels or its group cannot be pruned.
        """
        return self.prune_channels(self.plan(ratios, ranking, max_layer_ratio))

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

    @renamed(target="flops_reduction")
    def prune_to_flops(self, flops_reduction, mode="uniform", tolerance=1e-3, ranking="local", max_layer_ratio=0.9):
        """Prune with the smallest ratio that removes at least ``flops_reduction`` of the MACs.

        The ratio is found by bisection (MACs counted by :func:`kslim.analysis.flops`). The removed counts
        move in steps (``round_to`` channels, or one channel of a small group), so the smallest such ratio
        can overshoot the target by a step of every group at once; groups then take back one step each
        (their most important removed channels), the largest MACs restored first, as long as the target is
        still met: the result lands near the target, each group a multiple of ``round_to``.

        Args:
            flops_reduction: fraction of the MACs to remove, in (0, 1) (0.5: half the MACs are left).
            mode: ``"uniform"`` (one ratio for every group in :attr:`groups`, or with global ranking one
                fraction of all their channels).
            tolerance: bisection stops when the ratio interval is narrower than this.
            ranking: ``"local"`` or ``"global"`` (see :meth:`plan`): with ``"global"`` the channels go
                where their normalised importance is lowest across groups.
            max_layer_ratio: with global ranking, the largest fraction removed from one group.

        Returns:
            a :class:`~kslim.prune.result.PruneResult` (``.model``, ``.ratio``, ``.reduction`` — the
            achieved fraction of MACs removed — ``.macs_before``, ``.macs_after`` ...).

        Raises:
            KslimValueError: flops_reduction outside (0, 1), unknown mode, or not reachable (the message
                gives the largest reduction possible).
        """
        if isinstance(flops_reduction, str):
            raise KslimTypeError(f"prune_to_flops(): flops_reduction: {flops_reduction!r} is not a number.")
        target = check_ratio(flops_reduction, "prune_to_flops(): flops_reduction", low_open=True,
                             meaning="the fraction of MACs removed")
        if mode != "uniform":
            raise KslimValueError(f"mode must be 'uniform', got {mode!r}.")
        self._require_groups()
        before = self.macs_before
        cache = {}

        def reduction(ratio, exact=False):
            plan = self.plan(ratio, ranking, max_layer_ratio)
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
            return lo, hi

        top = 1.0 - 1e-6
        best = reduction(top)
        if best < target:
            raise KslimValueError(
                f"prune_to_flops(): flops_reduction {target:.3f} is not reachable: removing "
                + ("all but one channel of every prunable group" if ranking == "local" else
                   f"up to max_layer_ratio={max_layer_ratio} of every prunable group")
                + f" removes only {best:.3f} of the MACs (skip/keep_classifier/unprunable groups keep the rest)."
            )
        ratio = bisect(0.0, top, exact=False)[1]
        plan = self._closer_plan(ratio, target, ranking, max_layer_ratio)
        model = self.prune_channels(plan)
        after = _macs(model)
        if 1.0 - after / before < target:  # the estimate disagreed with the real count: bisect on real models
            ratio = bisect(ratio, top, exact=True)[1]
            model = self.prune(ratio, ranking, max_layer_ratio)
            after = _macs(model)
        return PruneResult(model=model, ratio=float(ratio), flops_reduction=target, reduction=1.0 - after / before,
                           macs_before=int(before), macs_after=int(after), ranking=ranking)

    def _closer_plan(self, hi, target, ranking, max_layer_ratio):
        """The plan of ratio ``hi`` (the smallest that meets ``target``), brought nearer to the target: the
        removed counts move in steps (``round_to``, or one channel of a small group), so while some group can
        take back one step (its most important removed channels) with the target still met, the group whose
        give-back restores the most MACs does. When the MACs cannot be estimated, the plan of ``hi``."""
        plan = self.plan(hi, ranking, max_layer_ratio)
        if not plan or self._estimate_macs(plan) is None:
            return plan
        before, groups = self.macs_before, {g.name: g for g in self.groups}
        orders = {}

        def removal(name, n):  # the n least important channels of the group, as plan() ranks them
            if name not in orders:
                g = groups[name]
                score = self.normalized_importance(g) if ranking == "global" else self.importance(g)
                orders[name] = np.argsort(score, kind="stable")
            return np.sort(orders[name][:n])

        while True:
            best = None
            for name, idx in plan.items():
                step = self.round_to if groups[name].size > self.round_to else 1
                n = len(idx) - step
                if n < 0:
                    continue
                trial = dict(plan)
                if n:
                    trial[name] = removal(name, n)
                else:
                    del trial[name]
                macs = self._estimate_macs(trial)
                if 1.0 - macs / before >= target and (best is None or macs > best[0]):
                    best = (macs, trial)
            if best is None:
                return plan
            plan = best[1]

    def estimate_macs(self, ratios, ranking="local", max_layer_ratio=0.9):
        """MACs of the model :meth:`prune` would return for ``ratios`` (and ``ranking``,
        ``max_layer_ratio``, see :meth:`plan`), computed without building it.

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
        plan = self.plan(ratios, ranking, max_layer_ratio)
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
