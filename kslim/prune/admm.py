"""ADMM filter pruning on kslim's channel groups (Zhang et al. 2018; NNI's ``ADMMPruner``).

Pruning is posed as ``min loss(W)`` subject to ``W`` in ``S``, the set where ``ratios`` of every
channel group's channels are zero (all members of a channel together: producer filters and biases,
BatchNormalization parameters, depthwise kernels, consumer input rows). ADMM splits it into

* ``fit`` on ``loss(W) + rho / 2 * sum ||W - Z + U||^2`` (the penalty is an ordinary Keras weight
  regularizer on each member variable, as in :mod:`kslim.prune.regularizers`: the model is not
  rebuilt or recompiled);
* every ``update_every`` epochs, ``Z <- proj_S(W + U)`` (in each group, the channels with the
  smallest L2 norm over all members of ``W + U`` are zeroed) and ``U <- U + W - Z``.

The penalty pulls the channels ``Z`` zeroes towards zero while the others train freely, so the hard
pruning at the end (:meth:`ADMMPruning.prune`, physically removing the channels of the last ``Z``)
loses less than one-shot magnitude pruning. Fine-tune the pruned model afterwards, as the paper does.
The primal residual ``||W - Z|| / ||W||`` is logged as ``admm_residual`` at each update.

Example:
    >>> import keras, numpy as np
    >>> m = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(8, 3, name="c1"),
    ...                       keras.layers.ReLU(), keras.layers.Conv2D(4, 3, name="c2"),
    ...                       keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, name="fc")])
    >>> m.compile("sgd", "mse")
    >>> admm = ADMMPruning(ratios=0.5, rho=1e-2)
    >>> _ = m.fit(np.ones((16, 6, 6, 1)), np.ones((16, 2)), epochs=2, verbose=0, callbacks=[admm])
    >>> admm.prune().get_layer("c1").filters
    4
"""

import keras
import numpy as np

from kslim.errors import KslimTypeError, KslimValueError, ModelError
from kslim.prune.base import check_group_ratios
from kslim.prune.regularizers import group_norms


class _ADMMPenalty(keras.regularizers.Regularizer):
    """``rho / 2 * sum((w - Z + U)^2)`` with ``Z`` and ``U`` live (non-trainable) variables."""

    def __init__(self, rho, z, u):
        self.rho, self.z, self.u = float(rho), z, u

    def __call__(self, w):
        from keras import ops

        d = w - ops.cast(self.z, w.dtype) + ops.cast(self.u, w.dtype)
        return 0.5 * self.rho * ops.sum(ops.square(d))

    def get_config(self):  # live variables: not serialisable; layer configs never hold it
        return {"rho": self.rho}


class ADMMPruning(keras.callbacks.Callback):
    """Keras callback training towards channel sparsity with ADMM; :meth:`prune` gives the smaller model.

    Args:
        ratios: fraction of channels removed, one float for every prunable group or
            ``{group_or_layer_name: ratio}`` (groups not named are not pruned).
        rho: weight of the augmented-Lagrangian penalty (the paper's ρ; larger pulls harder).
        update_every: epochs between two ``Z``/``U`` updates.
        pruner: a :class:`~kslim.prune.FilterPruner` class (default L1) whose ``skip`` /
            ``keep_classifier`` / ``round_to`` (given here) choose the groups and the channel counts.
        skip, keep_classifier, round_to: passed to the pruner.
        scope: which groups may be pruned at all (:mod:`kslim.prune.scope`: ``"all"``, ``"uncoupled"``, a
            registered name or a function ``(group, graph) -> bool``), passed to the pruner.
        verbose: 1 prints the residual at each update.

    After ``fit``: ``callback.plan`` is ``{group: channels removed}`` (from the last ``Z``),
    ``callback.history`` the residual at each update.
    """

    def __init__(self, ratios=0.5, rho=1e-3, update_every=1, pruner=None, skip=None, keep_classifier=True,
                 round_to=1, verbose=0, scope="all"):
        from kslim.prune.scope import get_scope

        super().__init__()
        self.ratios = check_group_ratios(ratios, "ADMMPruning()")
        if isinstance(rho, bool) or not isinstance(rho, (int, float, np.floating)) or not rho > 0:
            raise KslimValueError(f"ADMMPruning(): rho must be a number > 0, got {rho!r}.")
        if isinstance(update_every, bool) or not isinstance(update_every, (int, np.integer)) or update_every < 1:
            raise KslimValueError(f"ADMMPruning(): update_every must be an integer >= 1 (epochs), got {update_every!r}.")
        if isinstance(pruner, str):
            raise KslimTypeError("ADMMPruning(): pruner must be a FilterPruner class; the channels are chosen by "
                                 "the ADMM projection (group L2 norm), not by an importance name.")
        self.rho, self.update_every = float(rho), int(update_every)
        self.pruner_cls, self.skip, self.keep_classifier, self.round_to = pruner, skip, keep_classifier, round_to
        get_scope(scope)  # an unknown name is refused here, before fit starts
        self.scope, self.verbose = scope, verbose
        self.pruner = None
        self.plan = {}
        self.history = []
        self._targets = {}    # group -> channels to remove
        self._terms = {}      # group -> [(variable, channel entries (size, k), axis)]
        self._zu = {}         # id(variable) -> (variable, Z, U)
        self._penalty = None

    # ------------------------------------------------------------------ setup
    def _setup(self, model):
        from kslim.prune.criteria import make_pruner
        from kslim.prune.importance import channel_entries
        from kslim.prune.regularizers import SparsityPenalty

        if self.pruner is not None and self.pruner.model is not model:
            raise ModelError(f"This ADMMPruning callback was used with model {self.pruner.model.name!r}; use a new "
                             "one for another model.")
        if self.pruner is None:
            self.pruner = make_pruner(model, self.pruner_cls, where="ADMMPruning()", skip=self.skip,
                                      keep_classifier=self.keep_classifier, round_to=self.round_to, scope=self.scope)
            groups = {g.name: g for g in self.pruner.groups}
            if isinstance(self.ratios, dict):
                chosen = {}
                for name, r in self.ratios.items():
                    for g in self.pruner._groups(name):  # raises, naming the layer, if unknown / not prunable
                        chosen[g.name] = r
            else:
                chosen = {name: self.ratios for name in groups}
            for name, r in chosen.items():
                g = groups[name]
                n = self.pruner.n_remove(g, r)
                if n:
                    self._targets[g] = n
            if not self._targets:
                raise ModelError(f"ADMMPruning(): nothing to prune in {model.name!r} at ratios {self.ratios!r}.")
            for g in self._targets:
                terms = []
                for m in g.members:
                    var = self.pruner.graph.layers[m.layer_name].weights[m.weight_index]
                    if getattr(var, "trainable", False):
                        terms.append((var, channel_entries(m, g.size), m.axis))
                        if id(var) not in self._zu:
                            z = keras.Variable(var.numpy(), trainable=False, name=f"{var.name}_admm_z")
                            u = keras.Variable(np.zeros(tuple(var.shape), "float32"), trainable=False,
                                               name=f"{var.name}_admm_u")
                            self._zu[id(var)] = (var, z, u)
                self._terms[g] = terms
            self._project(with_dual=False)
        self._penalty = SparsityPenalty("admm", self.rho, model, groups=[g.name for g in self._targets])
        for var, z, u in self._zu.values():
            self._penalty._set(var, _ADMMPenalty(self.rho, z, u))
        model.make_train_function(force=True)  # trace the penalty into this fit's train step

    def _project(self, with_dual=True):
        """``Z <- proj_S(W + U)`` and, with ``with_dual``, ``U <- U + W - Z``; the new plan."""
        values = {k: np.asarray(var.numpy(), np.float64) + (np.asarray(u.numpy(), np.float64) if with_dual else 0.0)
                  for k, (var, _z, u) in self._zu.items()}
        z_new = {k: v.copy() for k, v in values.items()}
        plan = {}
        for g, n in self._targets.items():
            norms = group_norms(self.pruner, g, values)  # of W + U, over every member of each channel
            removed = np.sort(np.argsort(norms, kind="stable")[:n])
            plan[g.name] = removed
            for var, idx, axis in self._terms[g]:
                moved = np.moveaxis(z_new[id(var)], axis, 0)  # a view: zeroing it zeroes z_new
                moved[idx[removed].reshape(-1)] = 0.0
        num = den = 0.0
        for k, (var, z, u) in self._zu.items():
            w = np.asarray(var.numpy(), np.float64)
            z.assign(z_new[k].astype("float32"))
            if with_dual:
                u.assign((np.asarray(u.numpy(), np.float64) + w - z_new[k]).astype("float32"))
            num += float(np.sum(np.square(w - z_new[k])))
            den += float(np.sum(np.square(w)))
        self.plan = plan
        return float(np.sqrt(num / den)) if den > 0 else 0.0

    # ------------------------------------------------------------------ Keras hooks
    def on_train_begin(self, logs=None):
        self._setup(self.model)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.update_every:
            return
        residual = self._project()
        self.history.append(residual)
        if logs is not None:
            logs["admm_residual"] = residual
        if self.verbose:
            print(f"ADMM update after epoch {epoch + 1}: residual ||W - Z|| / ||W|| = {residual:.4f}")

    def on_train_end(self, logs=None):
        if self._penalty is not None:
            self._penalty.remove()
            self._penalty = None

    # ------------------------------------------------------------------ result
    def prune(self):
        """The smaller model: the channels of the last ``Z`` physically removed from the trained model."""
        if self.pruner is None:
            raise KslimValueError("ADMMPruning.prune(): the callback was never used in fit().")
        return self.pruner.prune_channels({k: v for k, v in self.plan.items() if len(v)})


__all__ = ["ADMMPruning"]
