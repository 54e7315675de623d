"""Gradual filter pruning during training: a Keras callback masking channels on a schedule, then a strip.

During ``fit``, :class:`GradualPruning` raises the pruned fraction of every channel group along a
:class:`PolynomialDecay` (AGP) schedule. At each pruning step it recomputes the importance of the
channels with the pruner's criterion, and zeroes the least important ones in *every* weight that
shares the channel (producer kernels and biases, BatchNormalization parameters, depthwise kernels,
and the input axis of the consumers): a masked channel then contributes nothing, exactly as if it
were removed. The masks are enforced after each optimizer step through variable constraints (inside
the compiled train step, so ``steps_per_execution`` > 1 is fine).

Masked training is only a training-time stage: :func:`strip_pruning` turns the masked model into the
physically smaller one (:meth:`FilterPruner.prune_channels`), with the same outputs.

Saving: the masked model can be saved as usual (masked weights are stored as zeros), but the masks
themselves live in the callback. Either strip before saving (recommended), or keep the masks with
``callback.save_state("masks.json")`` and later call ``strip_pruning(loaded_model, "masks.json")``.
"""

from pathlib import Path

import keras
import numpy as np

from kslim._io import atomic_write_json, read_json
from kslim.errors import KslimTypeError, KslimValueError, ModelError
from kslim.prune.base import check_group_ratios
from kslim.prune.criteria import known_pruner_names, pruner_class, pruner_class_named, resolve_importance
from kslim.validation import renamed

STATE_FORMAT = "kslim.gradual_pruning/1"


# ---------------------------------------------------------------------------------------------- schedules
class PruningSchedule:
    """Base schedule: ``fraction(step)`` in [0, 1] of the target ratio, and whether ``step`` prunes."""

    def fraction(self, step):
        raise NotImplementedError

    def should_prune(self, step):
        raise NotImplementedError

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class PolynomialDecay(PruningSchedule):
    """Polynomial ramp of the pruned fraction (Zhu & Gupta's automated gradual pruning, AGP).

    ``ratio(t) = target * (1 - (1 - p) ** power)`` with ``p = (t - begin_step) / (end_step - begin_step)``
    clipped to [0, 1]; pruning happens at ``begin_step``, every ``frequency`` steps after it, and at
    ``end_step``. ``power=3`` is AGP: prune fast while there is redundancy, slowly near the target.

    Steps are optimizer iterations (``model.optimizer.iterations`` after the step).

    Example:
        >>> s = PolynomialDecay(begin_step=0, end_step=100, frequency=10)
        >>> round(s.fraction(50), 3), s.fraction(100), s.should_prune(20), s.should_prune(25)
        (0.875, 1.0, True, False)
    """

    def __init__(self, begin_step=0, end_step=1000, frequency=100, power=3):
        begin_step, end_step, frequency = int(begin_step), int(end_step), int(frequency)
        if begin_step < 0:
            raise KslimValueError(f"begin_step must be >= 0, got {begin_step}.")
        if end_step < begin_step:
            raise KslimValueError(f"end_step ({end_step}) must be >= begin_step ({begin_step}).")
        if frequency < 1:
            raise KslimValueError(f"frequency must be >= 1, got {frequency}.")
        if not power or power <= 0:
            raise KslimValueError(f"power must be > 0, got {power!r}.")
        self.begin_step, self.end_step, self.frequency, self.power = begin_step, end_step, frequency, power

    def fraction(self, step):
        if step < self.begin_step:
            return 0.0
        span = self.end_step - self.begin_step
        p = 1.0 if span == 0 else min(1.0, (step - self.begin_step) / span)
        return 1.0 - (1.0 - p) ** self.power

    def should_prune(self, step):
        if step < self.begin_step or step > self.end_step:
            return False
        return step == self.end_step or (step - self.begin_step) % self.frequency == 0

    def get_config(self):
        return {"begin_step": self.begin_step, "end_step": self.end_step, "frequency": self.frequency,
                "power": self.power}

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"


class AGP(PolynomialDecay):
    """:class:`PolynomialDecay` with ``power=3`` (automated gradual pruning)."""

    def __init__(self, begin_step=0, end_step=1000, frequency=100):
        super().__init__(begin_step, end_step, frequency, power=3)

    def get_config(self):
        c = super().get_config()
        c.pop("power")
        return c


class ConstantRatio(PolynomialDecay):
    """Prune to the full target at ``begin_step`` (one shot), re-choosing channels every ``frequency`` steps."""

    def __init__(self, begin_step=0, end_step=None, frequency=100):
        super().__init__(begin_step, begin_step if end_step is None else end_step, frequency, power=1)
        self._end = end_step

    def fraction(self, step):
        return 0.0 if step < self.begin_step else 1.0

    def get_config(self):
        return {"begin_step": self.begin_step, "end_step": self._end, "frequency": self.frequency}


# ---------------------------------------------------------------------------------------------- helpers
class _MaskConstraint:
    """``constraint(w) = original(w) * mask``: keeps masked entries at zero after every optimizer step."""

    def __init__(self, mask, original=None):
        self.mask = mask
        self.original = original

    def __call__(self, w):
        from keras import ops

        if self.original is not None:
            w = self.original(w)
        return ops.multiply(w, ops.cast(self.mask, w.dtype))


class VariableMasks:
    """Entries of some variables held at zero during ``fit``: one mask variable per weight, enforced
    after every optimizer step by the weight's constraint (inside the compiled train step, so
    ``steps_per_execution`` > 1 is fine). Shared by filter masks (:class:`GradualPruning`) and weight
    masks (:class:`kslim.prune.unstructured.UnstructuredPruning`)."""

    def __init__(self):
        self.entries = {}    # id(variable) -> (variable, keras.Variable mask)
        self._saved = {}     # id(variable) -> the variable's own constraint while installed

    def track(self, var):
        """Give ``var`` a mask (all ones) if it has none; returns its key."""
        if id(var) not in self.entries:
            mask = keras.Variable(np.ones(tuple(var.shape), "float32"), trainable=False, dtype="float32",
                                  name=f"{var.name}_prune_mask")
            self.entries[id(var)] = (var, mask)
        return id(var)

    def ones(self):
        """``{key: all-ones array}`` shaped like each tracked variable (to be filled with zeros)."""
        return {key: np.ones(tuple(var.shape), "float32") for key, (var, _) in self.entries.items()}

    def assign(self, arrays):
        """Set the masks to ``arrays`` (``{key: 0/1 array}``) and zero the masked entries now."""
        for key, arr in arrays.items():
            var, mask = self.entries[key]
            mask.assign(arr)
            var.assign(np.asarray(var.numpy()) * arr.astype(var.dtype))

    def install(self, model):
        """Chain the mask constraints onto the trainable variables; retrace ``model``'s train step."""
        for key, (var, mask) in self.entries.items():
            if not getattr(var, "trainable", False) or key in self._saved:
                continue
            self._saved[key] = var.constraint
            var.constraint = _MaskConstraint(mask, var.constraint)
        # the compiled train step must be traced with the constraints (and without them afterwards)
        model.make_train_function(force=True)

    def remove(self, model):
        """Restore the variables' own constraints; the next ``fit`` retraces without the masks."""
        for key, original in self._saved.items():
            self.entries[key][0].constraint = original
        self._saved = {}
        model.train_function = None


class MaskingCallback(keras.callbacks.Callback):
    """Base of the callbacks masking weights on a :class:`PruningSchedule` during ``fit``.

    Subclasses implement ``_setup(model)`` (track variables in :attr:`variable_masks`),
    ``_update_masks(step)`` (choose the masks for the schedule at ``step`` and apply them),
    ``_apply_masks()`` and ``_has_masks()``.
    """

    def __init__(self, schedule=None):
        super().__init__()
        if schedule is None:
            schedule = AGP()
        if not isinstance(schedule, PruningSchedule):
            raise KslimTypeError(f"schedule must be a PruningSchedule (e.g. AGP, PolynomialDecay), got {schedule!r}.")
        self.schedule = schedule
        self.variable_masks = VariableMasks()

    def on_train_begin(self, logs=None):
        self._setup(self.model)
        self.variable_masks.install(self.model)
        step = self._step()
        self._last_step = step
        if self._has_masks():
            self._apply_masks()          # continuing training: keep the masks of the previous fit
        elif step > 0 and self.schedule.fraction(step) > 0:
            self._update_masks(step)     # resuming with a schedule already under way

    def on_train_batch_end(self, batch, logs=None):
        step = self._step()
        # with steps_per_execution > 1 several steps ran since the last call: take the latest
        # pruning step among them
        due = [t for t in range(self._last_step + 1, step + 1) if self.schedule.should_prune(t)]
        self._last_step = step
        if due:
            self._update_masks(due[-1])

    def on_train_end(self, logs=None):
        self.variable_masks.remove(self.model)

    def _step(self):
        return int(np.asarray(self.model.optimizer.iterations))


# ---------------------------------------------------------------------------------------------- callback
class GradualPruning(MaskingCallback):
    """Keras callback pruning channel groups gradually during ``fit`` (masking), see :mod:`kslim.prune.gradual`.

    Args:
        importance: how channels are ranked, an importance name (``"l1"``, ``"l2"``, ``"fpgm"``,
            ``"bn_scale"`` ... of :func:`kslim.prune.importance_names`).
        ratios: final fraction of channels removed, a float for every prunable group or a
            dict ``{group_or_layer_name: ratio}`` (groups not named are not pruned). ``target_ratio=``
            is its old name.
        schedule: a :class:`PruningSchedule`; default ``AGP(0, 1000, 100)``.
        skip / keep_classifier / round_to: passed to the pruner (``round_to``: kept channel counts
            are multiples of it, e.g. 8 for SIMD-friendly kernels).
        scope: which groups may be pruned at all (:mod:`kslim.prune.scope`: ``"all"``, ``"uncoupled"``, a
            registered name or a function ``(group, graph) -> bool``), passed to the pruner.
        verbose: 1 prints the ratio reached at each pruning step.
        pruner: instead of ``importance``, a ``FilterPruner`` subclass, built on the model at the start
            of training.
        data, loss, batches, batch_size: for the data-driven importances (``"apoz"``,
            ``"mean_activation"``, ``"taylor"``, ``"hessian"``): the inputs (or ``(x, y)`` batches) they
            are measured on at every pruning step, the loss (Taylor, Hessian), how many batches.

    After training, ``callback.masks`` is ``{group_name: sorted channel indices masked}`` and
    :func:`strip_pruning` gives the smaller model.

    Example:
        >>> import keras, numpy as np
        >>> m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, name="c1"),
        ...                       keras.layers.Conv2D(4, 3, name="c2"), keras.layers.GlobalAveragePooling2D(),
        ...                       keras.layers.Dense(2, name="fc")])
        >>> m.compile("sgd", "mse")
        >>> cb = GradualPruning("l1", 0.5, schedule=AGP(0, 4, 2))
        >>> _ = m.fit(np.ones((32, 8, 8, 1)), np.ones((32, 2)), batch_size=4, epochs=1, verbose=0, callbacks=[cb])
        >>> len(cb.masks["c1"]), strip_pruning(m, cb).get_layer("c1").filters
        (4, 4)
    """

    @renamed(target_ratio="ratios")
    def __init__(self, importance=None, ratios=0.5, schedule=None, skip=None, keep_classifier=True,
                 round_to=1, verbose=0, pruner=None, data=None, loss=None, batches=None, batch_size=None,
                 scope="all"):
        from kslim.prune.scope import get_scope

        super().__init__(schedule)
        # the options of the data-driven importances (apoz, mean_activation, taylor, hessian): re-read
        # at every pruning step, on the weights trained so far
        self.importance_options = {k: v for k, v in (("data", data), ("loss", loss), ("batches", batches),
                                                     ("batch_size", batch_size)) if v is not None}
        pruner, importance = resolve_importance(pruner, importance, "GradualPruning()")
        if importance is not None and not isinstance(importance, str):
            raise KslimTypeError("GradualPruning(): importance must be a name of kslim.prune.importance_names() "
                                 f"(the callback builds its pruner on the model fit() trains), got "
                                 f"{type(importance).__name__}; pass pruner=<FilterPruner subclass> for others.")
        # GradualPruning builds its pruner on the model fit() trains
        self.pruner_cls = pruner_class(pruner if pruner is not None else importance)
        self.ratios = check_group_ratios(ratios, "GradualPruning()")
        self.skip = skip
        self.keep_classifier = keep_classifier
        self.round_to = max(1, int(round_to))
        get_scope(scope)  # an unknown name is refused here, before fit starts
        self.scope = scope
        self.verbose = verbose
        self.masks = {}          # group name -> sorted np.ndarray of masked channel indices
        self.history = []        # (step, {group: ratio masked})
        self.pruner = None
        self._targets = None     # group name -> target ratio

    # -------------------------------------------------------------- set-up
    def _setup(self, model):
        if self.pruner is not None and self.pruner.model is model:
            return
        if self.pruner is not None:
            raise ModelError(
                f"This GradualPruning callback was used with model {self.pruner.model.name!r}; use a new "
                f"callback for model {model.name!r}."
            )
        self.pruner = self.pruner_cls(model, skip=self.skip, keep_classifier=self.keep_classifier,
                                      round_to=self.round_to, scope=self.scope, **self.importance_options)
        groups = {g.name: g for g in self.pruner.groups}
        if isinstance(self.ratios, dict):
            targets = {}
            for k, v in self.ratios.items():
                # raises, naming the layer and why (not a producer, in skip, outside the scope ...)
                g = self.pruner._groups(k, single=True)[0]
                targets[g.name] = v
        else:
            targets = {name: self.ratios for name in groups}
        self._targets = targets
        self._groups = groups
        # one mask per (variable) touched by a pruned group
        for name in targets:
            for m in groups[name].members:
                self.variable_masks.track(self.pruner.graph.layers[m.layer_name].weights[m.weight_index])

    def _has_masks(self):
        return bool(self.masks)

    # -------------------------------------------------------------- masking
    def _update_masks(self, step):
        frac = self.schedule.fraction(step)
        reached = {}
        self.pruner.refresh()  # the weights trained since the last step: recompute importance
        for name, target in self._targets.items():
            group = self._groups[name]
            n = self.pruner.n_remove(group, target * frac)
            old = self.masks.get(name, np.zeros(0, np.int64))
            if n <= len(old):
                reached[name] = len(old) / group.size
                continue
            imp = np.asarray(self.pruner.importance(group), dtype=np.float64).copy()
            imp[old] = -np.inf            # masks only grow: masked channels stay masked
            order = np.argsort(imp, kind="stable")
            self.masks[name] = np.sort(order[:n]).astype(np.int64)
            reached[name] = n / group.size
        self._apply_masks()
        self.history.append((int(step), reached))
        if self.verbose:
            mean = float(np.mean(list(reached.values()))) if reached else 0.0
            print(f"GradualPruning: step {step}: mean channel ratio {mean:.3f} (schedule {frac:.3f})")

    def _mask_arrays(self):
        arrays = self.variable_masks.ones()
        for name, channels in self.masks.items():
            if not len(channels):
                continue
            for m in self._groups[name].members:
                var = self.pruner.graph.layers[m.layer_name].weights[m.weight_index]
                arr = arrays[id(var)]
                idx = m.indices(channels)
                sl = [slice(None)] * arr.ndim
                sl[m.axis] = idx
                arr[tuple(sl)] = 0.0
        return arrays

    def _apply_masks(self):
        self.variable_masks.assign(self._mask_arrays())

    # -------------------------------------------------------------- state
    def sparsity(self):
        """``{group: fraction of its channels masked}``."""
        if self._targets is None:
            return {}
        return {name: len(self.masks.get(name, ())) / self._groups[name].size for name in self._targets}

    def get_state(self):
        """JSON-ready state: model fingerprint and ``{group: masked channel indices}``."""
        from kslim.prune.sensitivity import model_fingerprint

        if self.pruner is None:
            raise KslimValueError("GradualPruning has no state yet: train with it first.")
        fp = model_fingerprint(self.pruner.model)
        return {"format": STATE_FORMAT, "model": {"name": fp["name"], "architecture": fp["architecture"]},
                "criterion": self.pruner_cls.__name__, "round_to": self.round_to,
                "skip": list(self.skip) if isinstance(self.skip, (list, tuple, set)) else self.skip,
                "keep_classifier": self.keep_classifier, "scope": self.pruner.scope,
                "masks": {k: [int(i) for i in v] for k, v in self.masks.items()}}

    def save_state(self, path):
        """Write :meth:`get_state` to ``path`` (JSON, atomic) for a later :func:`strip_pruning`."""
        return atomic_write_json(path, self.get_state())


# ---------------------------------------------------------------------------------------------- strip
def strip_pruning(model, state):
    """The physically smaller model: remove the masked channels of ``model`` for good.

    Args:
        model: the model trained with :class:`GradualPruning` (or that model saved and loaded).
        state: the callback, its :meth:`GradualPruning.get_state` dict, or the path of a file
            written by :meth:`GradualPruning.save_state`.

    Returns:
        a new ``keras.Model`` with fewer channels whose outputs equal the masked model's.
    """
    from kslim.prune.sensitivity import model_fingerprint

    pruner_cls = None
    if hasattr(state, "get_state") and hasattr(state, "masks"):
        cb = state
        if cb.pruner is None:
            raise KslimValueError("The GradualPruning callback was never used in fit(): nothing to strip.")
        if cb.pruner.model is model:
            return cb.pruner.prune_channels({k: v for k, v in cb.masks.items() if len(v)})
        pruner_cls = cb.pruner_cls
        state = cb.get_state()
    if isinstance(state, (str, Path)):
        state = read_json(state, "Pruning state file")
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise KslimValueError(
            "state must be a GradualPruning callback, its get_state() dict or a file from save_state()."
        )
    fp = model_fingerprint(model)
    if state["model"]["architecture"] != fp["architecture"]:
        raise ModelError(
            f"The pruning state was made for model {state['model']['name']!r} with other layers than "
            f"{model.name!r}: cannot strip it."
        )
    if pruner_cls is None:
        pruner_cls = pruner_class_named(state.get("criterion"))
        if pruner_cls is None:
            raise KslimValueError(
                f"The pruning state names pruner {state.get('criterion')!r}, not one of {known_pruner_names()}: "
                "strip with the GradualPruning callback itself (strip_pruning(model, callback)) for another pruner."
            )
    # the masked groups were in the callback's scope; stripping needs no scope (a function scope has no name to
    # store): the default one holds every group
    pruner = pruner_cls(model, skip=state.get("skip"), keep_classifier=state.get("keep_classifier", True),
                        round_to=1)
    return pruner.prune_channels({k: np.asarray(v, np.int64) for k, v in state["masks"].items() if v})
