"""Sparsity training before pruning: the Slim L1 penalty on BatchNormalization scales and group lasso.

Both penalties are ordinary Keras weight regularizers, set on the variables of the model you already
have (``variable.regularizer``): Keras 3 adds the regularizer of every trainable weight to the loss
of each ``fit``/``train_on_batch`` step (``model.losses``), so a built functional or Sequential model
(nested models included) is penalised **without being rebuilt or recompiled**. The helpers drop the
model's traced train function so the next ``fit`` traces the penalty in, and return a
:class:`SparsityPenalty` whose :meth:`~SparsityPenalty.remove` (or a ``with`` block) restores the
variables' own regularizers. Nothing of it is saved with the model (layer configs are untouched): it
is a training-time stage, followed by pruning with the matching importance.

* :func:`slim_penalty` -- Network Slimming (Liu et al. 2017): ``strength * sum |gamma|`` over the
  BatchNormalization layers; prune afterwards with ``importance="bn_scale"`` (global ranking: Slim
  prunes below one threshold of |gamma| across layers).
* :func:`group_lasso_penalty` -- ``strength * sum over channel groups and channels of
  sqrt(sum of squares of every weight of that channel)``: all members of the channel's group
  (producers' filters and biases, BatchNormalization scale/shift, depthwise kernels, consumers' input
  rows), so whole channels go to zero together; prune afterwards with ``importance="l2"`` (or
  ``"lamp"``). A norm over several variables is one regularizer: it is set on the group's first
  filter variable and reads the other variables directly (exact on the TensorFlow backend).

Example:
    >>> import keras, numpy as np
    >>> from kslim.prune import FilterPruner
    >>> from kslim.prune.regularizers import slim_penalty
    >>> m = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(8, 3, name="c1"),
    ...                       keras.layers.BatchNormalization(name="bn1"), keras.layers.ReLU(),
    ...                       keras.layers.Conv2D(4, 3, name="c2"), keras.layers.GlobalAveragePooling2D(),
    ...                       keras.layers.Dense(2, name="fc")])
    >>> m.compile("sgd", "mse")
    >>> with slim_penalty(m, 1e-2) as penalty:
    ...     _ = m.fit(np.ones((16, 6, 6, 1)), np.ones((16, 2)), epochs=1, verbose=0)
    >>> penalty.groups
    ['bn1']
    >>> FilterPruner(m, importance="bn_scale").prune(0.5).get_layer("c1").filters
    4
"""

from dataclasses import dataclass, field

import keras
import numpy as np

from kslim.errors import KslimValueError, ModelError
from kslim.validation import check_model


def _check_strength(strength):
    if isinstance(strength, bool) or not isinstance(strength, (int, float, np.floating)) or not strength > 0:
        raise KslimValueError(f"strength must be a number > 0 (the penalty's weight in the loss), got {strength!r}.")
    return float(strength)


class _Sum(keras.regularizers.Regularizer):
    """``original(w) + extra(w)``: the variable's own regularizer kept next to the added penalty."""

    def __init__(self, original, extra):
        self.original, self.extra = original, extra

    def __call__(self, w):
        return self.original(w) + self.extra(w)


class GroupLasso(keras.regularizers.Regularizer):
    """``strength * sum_c sqrt(sum over the terms of the squared entries of channel c + eps)`` per group.

    ``groups`` is a list of ``(size, terms)``, each term ``(variable, axis, assignment)`` with
    ``assignment`` a ``(axis length, size)`` 0/1 matrix mapping the axis entries to the group's
    channels. ``anchor`` is the variable this regularizer is set on (its value comes as ``w``).
    """

    def __init__(self, strength, groups, anchor, eps=1e-12):
        self.strength, self.groups, self.anchor, self.eps = float(strength), groups, anchor, float(eps)

    def __call__(self, w):
        from keras import ops

        total = 0.0
        for size, terms in self.groups:
            sq = ops.zeros((size,), dtype=w.dtype)
            for var, axis, assign in terms:
                value = w if var is self.anchor else var
                v = ops.cast(value, w.dtype)
                rank = len(v.shape)
                along = ops.sum(ops.square(v), axis=[a for a in range(rank) if a != axis]) if rank > 1 else ops.square(v)
                sq = sq + ops.matmul(along[None, :], ops.cast(assign, w.dtype))[0]
            total = total + ops.sum(ops.sqrt(sq + self.eps))
        return self.strength * total

    def get_config(self):  # live variables: not serialisable; the layer configs never hold it
        return {"strength": self.strength}


@dataclass
class SparsityPenalty:
    """The penalty set on ``model`` by :func:`slim_penalty` / :func:`group_lasso_penalty`.

    Attributes:
        kind: ``"slim"`` or ``"group_lasso"``.
        strength: the penalty's weight in the loss.
        variables: the variables whose regularizer was set.
        groups: the channel groups (or BatchNormalization layer paths) penalised.
    """

    kind: str
    strength: float
    model: object = field(repr=False)
    variables: list = field(default_factory=list, repr=False)
    groups: list = field(default_factory=list)
    _saved: list = field(default_factory=list, repr=False)
    _added: list = field(default_factory=list, repr=False)

    def value(self):
        """The penalty's current value (a float), as ``fit`` adds it to the loss."""
        return float(sum(float(np.asarray(reg(var))) for var, reg in self._added))

    def remove(self):
        """Restore every variable's own regularizer; the next ``fit`` trains without the penalty."""
        for var, original in self._saved:
            var.regularizer = original
        self._saved, self._added = [], []
        self.model.train_function = None
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False

    def _set(self, var, reg):
        original = getattr(var, "regularizer", None)
        self._saved.append((var, original))
        self._added.append((var, reg))
        var.regularizer = reg if original is None else _Sum(original, reg)
        self.variables.append(var)




def slim_penalty(model, strength=1e-4, layers=None):
    """Add Network Slimming's ``strength * sum |gamma|`` over the model's BatchNormalization layers.

    Args:
        model: a built ``keras.Model`` (nested models included); it is modified in place.
        strength: the L1 weight (the paper uses 1e-4 to 1e-5).
        layers: paths or names of the BatchNormalization layers to penalise; default all of them.

    Returns:
        a :class:`SparsityPenalty` (``remove()`` it, or use it as a context manager, after training).

    Raises:
        ModelError: the model has no trainable BatchNormalization scale, or a named layer is not one.
    """
    from kslim.graph import keras_graph as kg

    check_model(model, "slim_penalty()")
    strength = _check_strength(strength)
    leaves, _ = kg.leaf_layers(model)
    if layers is None:
        chosen = [p for p, lay in leaves.items() if isinstance(lay, keras.layers.BatchNormalization)]
    else:
        names = [layers] if isinstance(layers, str) else list(layers)
        chosen = [kg.resolve_path(leaves, n, "BatchNormalization layer", model.name) for n in names]
        bad = [p for p in chosen if not isinstance(leaves[p], keras.layers.BatchNormalization)]
        if bad:
            raise ModelError(f"slim_penalty: layer {bad[0]!r} is a {type(leaves[bad[0]]).__name__}, not a "
                             "BatchNormalization layer.")
    chosen = [p for p in chosen if getattr(leaves[p], "gamma", None) is not None and leaves[p].gamma.trainable]
    if not chosen:
        raise ModelError(f"slim_penalty: model {model.name!r} has no BatchNormalization layer with a trainable scale "
                         "(gamma); use group_lasso_penalty for models without one.")
    penalty = SparsityPenalty("slim", strength, model, groups=chosen)
    reg = keras.regularizers.L1(strength)
    for p in chosen:
        penalty._set(leaves[p].gamma, reg)
    model.train_function = None
    return penalty


def group_lasso_penalty(model, strength=1e-4, pruner=None, importance=None, **pruner_options):
    """Add a group-lasso penalty over each channel group of ``model`` (all members of each channel).

    Args:
        model: a built ``keras.Model``; modified in place.
        strength: the penalty's weight.
        pruner, importance: the groups penalised are this pruner's (a class or an instance bound
            to ``model``, or the pruner of an importance name, see :func:`kslim.prune.make_pruner`;
            default L1 with ``pruner_options``: ``skip``, ``keep_classifier`` ...). Prune afterwards
            with the same options.

    Returns:
        a :class:`SparsityPenalty`.

    Example:
        >>> import keras, numpy as np
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="fc1"), keras.layers.Dense(2)])
        >>> pen = group_lasso_penalty(m, 0.1, keep_classifier=False)
        >>> pen.groups, round(pen.value(), 6) > 0
        (['fc1'], True)
        >>> _ = pen.remove()
    """
    from kslim.prune.criteria import make_pruner
    from kslim.prune.importance import channel_entries

    check_model(model, "group_lasso_penalty()")
    strength = _check_strength(strength)
    pruner = make_pruner(model, pruner, importance, where="group_lasso_penalty()", **pruner_options)
    graph = pruner.graph
    groups, anchor = [], None
    for g in pruner.groups:
        terms = []
        for m in g.members:
            var = graph.layers[m.layer_name].weights[m.weight_index]
            if not getattr(var, "trainable", False):
                continue
            assign = np.zeros((int(var.shape[m.axis]), g.size), dtype="float32")
            idx = channel_entries(m, g.size)
            assign[idx.reshape(-1), np.repeat(np.arange(g.size), idx.shape[1])] = 1.0
            terms.append((var, m.axis, assign))
            if anchor is None and m.role == "filter":
                anchor = var
        if terms:
            groups.append((g.size, terms))
    if not groups or anchor is None:
        raise ModelError(f"group_lasso_penalty: model {model.name!r} has no prunable channel group with trainable "
                         "weights.")
    penalty = SparsityPenalty("group_lasso", strength, model, groups=[g.name for g in pruner.groups])
    penalty._set(anchor, GroupLasso(strength, groups, anchor))
    model.train_function = None
    return penalty


def group_norms(pruner, group, values=None):
    """The L2 norm of every channel of ``group`` over all its members' weights (what group lasso shrinks).

    ``values``: ``{id(variable): array}`` to use instead of some variables' current values (ADMM
    projects ``W + U``).

    >>> import keras
    >>> from kslim.prune import make_pruner
    >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="fc", use_bias=False),
    ...                       keras.layers.Dense(1, use_bias=False)])
    >>> m.get_layer("fc").set_weights([np.array([[3.0, 0.0], [0.0, 0.0], [0.0, 0.0]])])
    >>> m.layers[1].set_weights([np.array([[4.0], [0.0]])])
    >>> p = make_pruner(m, keep_classifier=False)
    >>> group_norms(p, p.graph.group("fc")).tolist()
    [5.0, 0.0]
    """
    from kslim.prune.importance import per_channel

    sq = np.zeros(group.size)
    for m in group.members:
        var = pruner.graph.layers[m.layer_name].weights[m.weight_index]
        if not getattr(var, "trainable", False):
            continue
        w = np.asarray(values[id(var)] if values is not None and id(var) in values else var.numpy(), dtype=np.float64)
        along = np.square(np.moveaxis(w, m.axis, 0)).reshape(w.shape[m.axis], -1).sum(axis=1)
        sq += per_channel(along, m, group.size)
    return np.sqrt(sq)


__all__ = ["slim_penalty", "group_lasso_penalty", "group_norms", "SparsityPenalty", "GroupLasso"]
