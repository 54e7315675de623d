"""Channel importance over a whole channel group: pluggable :class:`Importance` objects and their registry.

An importance scores the channels of one :class:`~kslim.graph.ChannelGroup` (every producer, carry
and consumer weight that shares the channels): ``importance(group, pruner_or_graph) -> np.ndarray``
of ``group.size`` scores, **higher = keep**. :class:`~kslim.prune.FilterPruner` ranks with one
(``FilterPruner(model, importance="bn_scale")``); the names below are one registry that the Python API,
the YAML schema (``strategies[i].prune.importance``) and the CLI (``--importance``) read.

=================== ====================================================================== ==========
name                score of a channel (higher = keep)                                      needs
=================== ====================================================================== ==========
``l1``              L1 norm of each producer's filter, / its mean over the producer,        --
                    summed over the group's producers (Li et al. 2017)
``l2``              the same with the L2 norm                                               --
``fpgm``            distance to the geometric median of the producer's filters (He 2019)    --
``bn_scale``        mean |gamma| of the group's BatchNormalization layers (Network          --
                    Slimming, Liu et al. 2017)
``lamp``            LAMP score of the filters' squared L2 norms (Lee et al. 2021)           --
``random``          seeded uniform noise (the baseline every paper reports)                 --
``apoz``            1 - APoZ: share of non-zero activations (Hu et al. 2016, NNI)           data
``mean_activation`` mean activation (NNI's ActivationMeanRank)                              data
``taylor``          first-order Taylor: |sum of activation x gradient| (Molchanov 2017)     data, loss
``hessian``         OBD saliency with the diagonal Fisher: sum of (grad x weight)^2         data, loss
=================== ====================================================================== ==========

Data-driven importances take ``data`` (an array of inputs, a tuple ``(x, y)`` of arrays, a
``tf.data.Dataset`` or any iterable of ``x`` or ``(x, y)`` batches), read at most ``batches`` batches
(arrays are cut into ``batch_size`` samples), and compute the statistics of every group of the pruner
in one pass, on first use (``FilterPruner.refresh()`` forgets them). Asking for one without ``data``
(or without ``loss`` for ``taylor``/``hessian``) raises :class:`~kslim.errors.KslimValueError` naming
the importance and what is missing, before any work starts.

Activations are tapped (:func:`kslim.distill.features.feature_model`, weights shared) where the
channels leave their producer's block: after the producer, through the BatchNormalization / dropout
layers that follow, at the first activation (ReLU, Activation, LeakyReLU, ELU, PReLU, or the
producer's own ``activation=``). When no activation follows (a residual branch added before its ReLU),
``apoz`` and ``mean_activation`` apply a ReLU to the last tensor of that chain, as NNI does with its
default ``activation="relu"``; ``taylor`` uses the tensor as it is.

Your own importance: subclass :class:`Importance` and :func:`register_importance` it::

    >>> import numpy as np
    >>> from kslim.prune.importance import Importance, get_importance, register_importance, unregister_importance
    >>> class FirstHalf(Importance):          # keep the first half of every group
    ...     def __call__(self, group, pruner_or_graph):
    ...         return -np.arange(group.size, dtype=float)
    >>> _ = register_importance("first_half", FirstHalf)
    >>> type(get_importance("first_half")).__name__
    'FirstHalf'
    >>> unregister_importance("first_half")
"""

import inspect
import zlib

import numpy as np

from kslim.errors import KslimTypeError, KslimValueError, ModelError
from kslim.validation import check_registry_name

_REGISTRY = {}   # name -> Importance subclass

#: options every data-driven importance understands; an importance that does not use one ignores it
DATA_OPTIONS = ("data", "loss", "batches", "batch_size")


# ---------------------------------------------------------------------------------------------- criteria
def l1_norm(filters):
    """Sum of absolute weights of each filter (Li et al., *Pruning Filters for Efficient ConvNets*).

    >>> l1_norm(np.array([[1.0, -2.0], [0.5, 0.5]])).tolist()
    [3.0, 1.0]
    """
    return np.abs(filters).sum(axis=1)


def l2_norm(filters):
    """Euclidean norm of each filter.

    >>> l2_norm(np.array([[3.0, 4.0], [1.0, 0.0]])).tolist()
    [5.0, 1.0]
    """
    return np.sqrt(np.square(filters).sum(axis=1))


def geometric_median(points, iterations=100, eps=1e-10):
    """Geometric median of the rows of ``points`` (Weiszfeld's algorithm)."""
    points = np.asarray(points, dtype=np.float64)
    median = points.mean(axis=0)
    for _ in range(iterations):
        dist = np.linalg.norm(points - median, axis=1)
        if np.any(dist < eps):  # the median sits on a point: Weiszfeld's fixed point there
            close = dist < eps
            dist = np.where(close, eps, dist)
        w = 1.0 / dist
        new = (points * w[:, None]).sum(axis=0) / w.sum()
        if np.linalg.norm(new - median) < eps * (1.0 + np.linalg.norm(median)):
            median = new
            break
        median = new
    return median


def fpgm(filters):
    """Distance of each filter to the geometric median of the producer's filters (FPGM, arXiv 1811.00250).

    Filters close to the geometric median are the most replaceable by the others, so they get the
    lowest scores and are pruned first. The median is computed with Weiszfeld's algorithm (the
    paper's code approximates it by the sum of distances to all other filters).

    >>> f = np.array([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 5.0]])
    >>> int(np.argmin(fpgm(f)))
    0
    """
    filters = np.asarray(filters, dtype=np.float64)
    median = geometric_median(filters)
    return np.linalg.norm(filters - median, axis=1)


def lamp(values):
    """LAMP scores (Lee et al., *Layer-adaptive sparsity for the magnitude-based pruning*, ICLR 2021).

    ``score(u) = v_u / sum of v_w over every w with v_w >= v_u``: the largest value scores 1, and
    scores of different layers are comparable, so one global threshold suits every layer.

    >>> lamp(np.array([1.0, 3.0, 2.0, 4.0])).round(3).tolist()
    [0.1, 0.429, 0.222, 1.0]
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(values, kind="stable")
    tail = np.cumsum(values[order][::-1])[::-1]          # sum of the values >= each sorted value
    out = np.empty_like(values)
    out[order] = np.divide(values[order], tail, out=np.zeros_like(tail), where=tail > 0)
    return out


# ---------------------------------------------------------------------------------------------- helpers
def channel_entries(member, size):
    """``(size, k)`` indices along ``member.axis`` of each of the ``size`` group channels (k entries each).

    >>> from kslim.graph import Member
    >>> channel_entries(Member("fc", 0, 0, offset=1, period=4, repeats=2), 2).tolist()
    [[1, 5], [2, 6]]
    """
    c = np.arange(size, dtype=np.int64)[:, None]
    idx = member.offset + c * member.multiplier + np.arange(member.multiplier, dtype=np.int64)[None, :]
    if member.repeats > 1:
        rep = np.arange(member.repeats, dtype=np.int64)[None, :, None] * member.period
        idx = (rep + idx[:, None, :]).reshape(size, -1)
    return idx


def per_channel(values, member, size, reduce="sum"):
    """Per-channel ``reduce`` (``"sum"`` or ``"mean"``) of ``values`` (one number per entry of the axis)."""
    parts = np.asarray(values, dtype=np.float64)[channel_entries(member, size)]
    return parts.sum(axis=1) if reduce == "sum" else parts.mean(axis=1)


def graph_of(pruner_or_graph):
    """``(graph, groups)``: the dependency graph, and the groups to score in one pass (the pruner's
    groups, or every prunable group of a bare graph)."""
    graph = getattr(pruner_or_graph, "graph", None)
    if graph is not None and hasattr(pruner_or_graph, "groups"):
        return graph, list(pruner_or_graph.groups)
    if hasattr(pruner_or_graph, "layers") and hasattr(pruner_or_graph, "groups"):
        return pruner_or_graph, list(pruner_or_graph.prunable_groups)
    raise KslimTypeError(
        f"an importance scores a group of a FilterPruner or a DependencyGraph, got {type(pruner_or_graph).__name__}.")


def _weight(graph, member):
    return np.asarray(graph.layers[member.layer_name].weights[member.weight_index].numpy())


def _rows(graph, member):
    """The weight of ``member`` as ``(axis length, rest)`` rows."""
    w = _weight(graph, member)
    return np.moveaxis(w, member.axis, 0).reshape(w.shape[member.axis], -1)


# ---------------------------------------------------------------------------------------------- base
class Importance:
    """Scores the channels of a channel group; subclass it and implement :meth:`__call__`.

    Attributes:
        name: the registry name (set by :func:`register_importance`).
        requires: what the importance needs besides the weights: ``()``, ``("data",)`` or
            ``("data", "loss")``.
        normalizer: how :meth:`normalize` makes scores of different groups comparable for global
            ranking: ``"mean"`` (divide by the group's mean |score|: every group averages 1) or
            ``None`` (the scores are comparable as they are: LAMP, BN scales).
    """

    name = None
    requires = ()
    normalizer = "mean"

    def __call__(self, group, pruner_or_graph):
        """``group.size`` scores (higher = keep) of ``group`` of a pruner or a dependency graph."""
        raise NotImplementedError

    def unusable(self, group, graph):
        """Why this importance cannot score ``group`` ("" when it can); such groups are not pruned."""
        return ""

    def reset(self):
        """Forget what was computed from the weights or the data (they changed)."""

    def normalize(self, scores):
        """``scores`` of one group made comparable with other groups' (see :attr:`normalizer`).

        >>> Importance().normalize(np.array([1.0, 3.0])).tolist()
        [0.5, 1.5]
        """
        scores = np.asarray(scores, dtype=np.float64)
        if self.normalizer is None:
            return scores
        if self.normalizer != "mean":
            raise KslimValueError(f"importance {self.name!r}: unknown normalizer {self.normalizer!r}; "
                                  "use 'mean' or None.")
        mean = float(np.mean(np.abs(scores))) if scores.size else 0.0
        return scores / mean if mean > 0 else scores

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r})"


class MagnitudeImportance(Importance):
    """A weight criterion over every producer filter of the group (``l1``, ``l2``, ``fpgm`` ...).

    ``criterion`` maps the ``(n_filters, filter_size)`` filters of one producer to one score per
    filter. For each producer of the group the scores are divided by their mean over that producer
    (so producers of different scale weigh equally) and summed over producers.

    Example:
        >>> import keras
        >>> from kslim.graph import build_dependency_graph
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc"), keras.layers.Dense(2)])
        >>> m.get_layer("fc").set_weights([np.array([[1.0, 2.0, 3.0]] * 4), np.zeros(3)])
        >>> g = build_dependency_graph(m)
        >>> MagnitudeImportance(l1_norm)(g.group("fc"), g).tolist()
        [0.5, 1.0, 1.5]
    """

    def __init__(self, criterion=None, name=None):
        if criterion is not None:
            if not callable(criterion):
                raise KslimTypeError(f"criterion must be a function (filters) -> scores, got {criterion!r}.")
            self.criterion = criterion
        if getattr(self, "criterion", None) is None:
            raise KslimValueError("MagnitudeImportance needs a criterion (filters) -> scores.")
        if name is not None:
            self.name = name
        elif self.name is None:
            self.name = getattr(criterion, "__name__", "criterion")

    def __call__(self, group, pruner_or_graph):
        graph, _ = graph_of(pruner_or_graph)
        scores = np.zeros(group.size, dtype=np.float64)
        channels = np.arange(group.size)
        for m in group.filters:
            rows = _rows(graph, m)
            # one row per channel, holding all of its entries (gate blocks, depthwise copies)
            filters = rows[m.index_matrix(channels)].reshape(group.size, -1)
            s = np.asarray(self.criterion(filters), dtype=np.float64).reshape(-1)
            if s.shape != (group.size,):
                raise KslimValueError(f"criterion returned shape {s.shape} for {group.size} filters of "
                                      f"{m.layer_name!r}; it must return one score per filter.")
            mean = float(np.mean(np.abs(s)))
            if mean > 0:
                scores += s / mean
        return scores


def register_importance(name, cls=None, replace=False):
    """Register ``cls`` (an :class:`Importance` subclass) under ``name``; usable as a class decorator.

    ``name`` becomes valid wherever an importance or criterion name is: ``FilterPruner(importance=)``,
    :func:`kslim.prune.make_pruner`, ``GradualPruning``, ``sensitivity``. Registering a taken name
    raises unless ``replace=True``.
    """
    check_registry_name(name, "importance")

    def do(c):
        if not (isinstance(c, type) and issubclass(c, Importance)):
            raise KslimTypeError(f"register_importance({name!r}): expected an Importance subclass, got {c!r}.")
        if name in _REGISTRY and _REGISTRY[name] is not c and not replace:
            raise KslimValueError(f"importance {name!r} is already registered ({_REGISTRY[name].__name__}); "
                                  "pass replace=True to replace it.")
        c.name = name
        _REGISTRY[name] = c
        return c

    return do if cls is None else do(cls)


def unregister_importance(name):
    """Remove the importance registered as ``name`` (no error when there is none)."""
    _REGISTRY.pop(name, None)


def importance_names(data=True):
    """Registered importance names, in registration order; ``data=False`` leaves out those that need
    data or a loss (what a command line or config without data can use).

    >>> importance_names(data=False)[:4]
    ['l1', 'l2', 'fpgm', 'bn_scale']
    """
    return [n for n, c in _REGISTRY.items() if data or not c.requires]


def importance_class(name):
    """The :class:`Importance` subclass registered as ``name`` (case-insensitive).

    >>> importance_class("taylor").requires
    ('data', 'loss')
    """
    key = str(name).lower()
    if key not in _REGISTRY:
        raise KslimValueError(
            f"Unknown importance {name!r}: choose one of {importance_names()} (kslim.prune.importance), or "
            "pass an Importance instance.")
    return _REGISTRY[key]


def get_importance(importance, **options):
    """An :class:`Importance` instance from a registered name (built with ``options``) or an instance.

    ``options`` among :data:`DATA_OPTIONS` that the importance does not take are ignored (one call
    site serves every name); any other unknown option is an error. An instance is returned as it is
    and takes no options (it has its own).

    >>> get_importance("random", seed=3).seed
    3
    """
    if isinstance(importance, Importance):
        given = sorted(k for k, v in options.items() if v is not None)
        if given:
            raise KslimValueError(
                f"importance {importance.name!r} is an instance: options {given} cannot be applied to it; build "
                "it with them (or pass its name).")
        return importance
    if isinstance(importance, type) and issubclass(importance, Importance):
        cls = importance
    elif isinstance(importance, str):
        cls = importance_class(importance)
    else:
        raise KslimTypeError(
            f"importance must be a name {importance_names()} or an Importance instance, got "
            f"{type(importance).__name__}.")
    params = {} if cls.__init__ is object.__init__ else inspect.signature(cls.__init__).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {}
    for k, v in options.items():
        if takes_all or k in params:
            kwargs[k] = v
        elif k not in DATA_OPTIONS:
            raise KslimValueError(f"importance {cls.name!r} takes no option {k!r}; it takes "
                                  f"{[p for p in params if p != 'self']}.")
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------- weight-based
@register_importance("l1")
class L1Importance(MagnitudeImportance):
    """L1 norm of the filters (:func:`l1_norm`), per-producer normalised, summed over producers."""

    criterion = staticmethod(l1_norm)

    def __init__(self):
        super().__init__()


@register_importance("l2")
class L2Importance(MagnitudeImportance):
    """L2 norm of the filters (:func:`l2_norm`), per-producer normalised, summed over producers."""

    criterion = staticmethod(l2_norm)

    def __init__(self):
        super().__init__()


@register_importance("fpgm")
class FPGMImportance(MagnitudeImportance):
    """Distance to the geometric median of the producer's filters (:func:`fpgm`), summed over producers."""

    criterion = staticmethod(fpgm)

    def __init__(self):
        super().__init__()


@register_importance("bn_scale")
class BNScaleImportance(Importance):
    """|gamma| of the BatchNormalization layers the group's channels pass through (Network Slimming).

    With several BatchNormalization layers (residual branches) the mean |gamma| is used. Scores are
    not renormalised for global ranking (Network Slimming prunes below one global threshold of
    |gamma|, made meaningful by the L1 penalty of :func:`kslim.prune.regularizers.slim_penalty`).
    Groups without a BatchNormalization scale are not pruned by it.
    """

    normalizer = None

    def _gammas(self, group, graph):
        import keras

        return [m for m in group.members if m.role == "carry" and m.weight_name == "gamma"
                and isinstance(graph.layers[m.layer_name], keras.layers.BatchNormalization)]

    def unusable(self, group, graph):
        if self._gammas(group, graph):
            return ""
        return "no BatchNormalization with a scale (gamma) in the group"

    def __call__(self, group, pruner_or_graph):
        graph, _ = graph_of(pruner_or_graph)
        members = self._gammas(group, graph)
        if not members:
            raise ModelError(f"importance 'bn_scale': group {group.name!r} has no BatchNormalization gamma.")
        return np.mean([per_channel(np.abs(_weight(graph, m)), m, group.size, "mean") for m in members], axis=0)


@register_importance("lamp")
class LAMPImportance(Importance):
    """LAMP (:func:`lamp`) of the squared L2 norms of each channel's filters (summed over producers).

    Within a group it ranks like ``l2``; its scores are comparable across groups as they are (the
    layer-adaptive point of LAMP), so global ranking does not renormalise them.
    """

    normalizer = None

    def __call__(self, group, pruner_or_graph):
        graph, _ = graph_of(pruner_or_graph)
        sq = np.zeros(group.size, dtype=np.float64)
        for m in group.filters:
            sq += per_channel(np.square(_rows(graph, m)).sum(axis=1), m, group.size)
        return lamp(sq)


@register_importance("random")
class RandomImportance(Importance):
    """Uniform random scores, seeded by ``seed`` and the group's name (the same on every call)."""

    def __init__(self, seed=0):
        self.seed = int(seed)

    def __call__(self, group, pruner_or_graph):
        rng = np.random.default_rng([self.seed, zlib.crc32(group.name.encode())])
        return rng.uniform(0.0, 1.0, group.size)


# ---------------------------------------------------------------------------------------------- data-driven
def _is_array(v):
    return isinstance(v, np.ndarray) or (hasattr(v, "shape") and hasattr(v, "dtype") and not hasattr(v, "element_spec"))


def data_batches(data, batches=8, batch_size=32, what="data"):
    """Yield ``(x, y)`` batches (``y`` None when the data has no labels) from ``data``: an array or a
    dict of arrays (inputs only), a tuple ``(x, y)`` of arrays (cut into ``batch_size`` samples), a
    ``tf.data.Dataset`` or any iterable of ``x`` or ``(x, y[, weights])`` batches; at most ``batches``.

    >>> [(x.shape, y.shape) for x, y in data_batches((np.zeros((5, 2)), np.ones(5)), batches=2, batch_size=2)]
    [((2, 2), (2,)), ((2, 2), (2,))]
    """
    def chunks(x, y):
        n = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
        for s in range(0, n, batch_size):
            xs = {k: v[s:s + batch_size] for k, v in x.items()} if isinstance(x, dict) else x[s:s + batch_size]
            yield xs, (None if y is None else y[s:s + batch_size])

    if _is_array(data) or isinstance(data, dict):
        items = chunks(data, None)
    elif (isinstance(data, tuple) and len(data) in (2, 3) and all(_is_array(v) for v in data[:2])
          and len(data[0]) == len(data[1])):
        items = chunks(data[0], data[1])
    elif hasattr(data, "__iter__") and not isinstance(data, (str, bytes)):
        src = data.as_numpy_iterator() if hasattr(data, "as_numpy_iterator") else data
        items = ((item[0], item[1]) if isinstance(item, tuple) and len(item) in (2, 3) else (item, None)
                 for item in src)
    else:
        raise KslimTypeError(f"{what} must be an array, a tuple (x, y), a tf.data.Dataset or an iterable of "
                             f"batches, got {type(data).__name__}.")
    count = 0
    for x, y in items:
        if count >= batches:
            break
        count += 1
        yield x, y
    if count == 0:
        raise KslimValueError(f"{what} is empty: it gave no batch.")


class DataImportance(Importance):
    """Base of the importances computed from data: one pass over ``data`` scores every group.

    Args:
        data: inputs or ``(x, y)`` batches (see :func:`data_batches`).
        batches: at most this many batches are read.
        batch_size: samples per batch when ``data`` is arrays.
        loss: ``(y_true, y_pred) -> loss`` (a Keras loss, its name, or a function), for the gradient
            based importances.
    """

    requires = ("data",)

    def __init__(self, data=None, batches=8, batch_size=32, loss=None):
        if data is None:
            raise KslimValueError(
                f"importance {self.name!r} needs data=: the inputs (an array, a tuple (x, y), a tf.data.Dataset or "
                f"an iterable of batches) whose activations{' and gradients' if 'loss' in self.requires else ''} "
                "rank the channels.")
        if "loss" in self.requires:
            if loss is None:
                raise KslimValueError(
                    f"importance {self.name!r} needs loss=: the training loss (y_true, y_pred) -> scalar, e.g. "
                    "keras.losses.SparseCategoricalCrossentropy(from_logits=True), whose gradients rank the channels.")
            if _is_array(data) or isinstance(data, dict):
                raise KslimValueError(
                    f"importance {self.name!r} needs labels: pass data=(x, y) (or batches of (x, y)), not inputs alone.")
        for key, v in (("batches", batches), ("batch_size", batch_size)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise KslimValueError(f"importance {self.name!r}: {key} must be an integer >= 1, got {v!r}.")
        self.data = data
        self.batches = int(batches)
        self.batch_size = int(batch_size)
        self.loss = loss
        self._cache = {}
        self._cache_graph = None

    def reset(self):
        self._cache = {}
        self._cache_graph = None

    def unusable(self, group, graph):
        from kslim.graph import keras_graph as kg

        if getattr(self, "_calls_graph", None) is not graph:
            self._calls, self._calls_graph = kg.layer_calls(graph.model), graph
        calls = self._calls
        for m in group.filters:
            if calls.get(id(graph.layers[m.layer_name]), 0) != 1:
                return f"importance {self.name!r}: producer {m.layer_name!r} is called more than once (shared layer)"
        if not group.filters:
            return f"importance {self.name!r}: the group has no producer to tap"
        return ""

    def __call__(self, group, pruner_or_graph):
        graph, groups = graph_of(pruner_or_graph)
        if self._cache_graph is not graph:
            self.reset()
            self._cache_graph = graph
        if group.name not in self._cache:
            todo = [g for g in groups if g.name not in self._cache and not self.unusable(g, graph)]
            if all(g.name != group.name for g in todo):
                why = self.unusable(group, graph)
                if why:
                    raise ModelError(f"group {group.name!r}: {why}.")
                todo.append(group)
            self._cache.update(self.compute(graph, todo))
        return self._cache[group.name]

    def compute(self, graph, groups):
        """``{group name: scores}`` of ``groups`` from one pass over the data."""
        raise NotImplementedError

    def batches_of(self, labels=False):
        """The data's ``(x, y)`` batches; ``labels=True`` requires ``y``."""
        for i, (x, y) in enumerate(data_batches(self.data, self.batches, self.batch_size, f"{self.name} data")):
            if labels and y is None:
                raise KslimValueError(
                    f"importance {self.name!r} needs labels: batch {i} of data= has inputs only; give (x, y) batches.")
            yield x, y

    def loss_fn(self):
        import keras

        fn = keras.losses.get(self.loss) if isinstance(self.loss, str) else self.loss
        if not callable(fn):
            raise KslimTypeError(f"importance {self.name!r}: loss must be a Keras loss, its name or a function "
                                 f"(y_true, y_pred) -> loss, got {self.loss!r}.")
        return fn


def _is_activation(layer):
    import keras

    L = keras.layers
    if isinstance(layer, (L.ReLU, L.LeakyReLU, L.ELU, L.PReLU)):
        return True
    act = getattr(layer, "activation", None)
    return callable(act) and act is not keras.activations.linear and getattr(act, "__name__", "") != "linear"


def _consumers(model):
    """``{layer path: [paths of the leaf layers that consume its output]}`` over the whole model."""
    from kslim.graph import keras_graph as kg

    out = {}

    def visit(node, values, prefix):
        name = prefix + node.operation.name
        for t in node.input_tensors:
            src = values.get(id(t))
            if src is not None:
                out.setdefault(src, []).append(name)
        return [name] * len(node.outputs)

    kg.walk(model, [None] * len(kg.graph_of(model).inputs), visit)
    return out


def tap_points(graph, group, consumers=None):
    """``[(filter member, layer path to tap, apply_relu)]``: where each producer's channels leave its
    block (see the module doc); ``apply_relu`` is True when no activation was found on the way."""
    import kslim.rules as registry

    consumers = _consumers(graph.model) if consumers is None else consumers
    out = []
    for m in group.filters:
        cur = m.layer_name
        found = False
        while True:
            if _is_activation(graph.layers.get(cur)):
                found = True
                break
            nxt = consumers.get(cur, [])
            if len(nxt) != 1 or nxt[0] not in graph.layers:
                break
            layer = graph.layers[nxt[0]]
            if registry.get(layer).channel_kind(layer)[0] not in ("carry", "identity"):
                break
            cur = nxt[0]
        out.append((m, cur, not found))
    return out


class ActivationImportance(DataImportance):
    """Shared pass of ``apoz`` / ``mean_activation``: per-channel statistics of the tapped activations."""

    def statistic(self, t):
        """``(sum over samples and positions per channel, count)`` of a tapped activation batch."""
        raise NotImplementedError

    def compute(self, graph, groups):
        from kslim.distill.features import feature_model

        consumers = _consumers(graph.model)
        taps = {g.name: tap_points(graph, g, consumers) for g in groups}
        paths = list(dict.fromkeys(p for t in taps.values() for _, p, _ in t))
        relu = {p: any(r for t in taps.values() for _, q, r in t if q == p) for p in paths}
        fm = feature_model(graph.model, paths, name=f"{graph.model.name}_{self.name}_taps")
        sums = {p: 0.0 for p in paths}
        count = {p: 0 for p in paths}
        for x, _ in self.batches_of():
            feats = fm(x, training=False)["features"]
            for p, f in zip(paths, feats):
                a = np.asarray(f, dtype=np.float64)
                if relu[p]:
                    a = np.maximum(a, 0.0)
                s, n = self.statistic(a.reshape(-1, a.shape[-1]))
                sums[p] = sums[p] + s
                count[p] += n
        out = {}
        for g in groups:
            vals = [per_channel(sums[p] / max(count[p], 1), m, g.size, "mean") for m, p, _ in taps[g.name]]
            out[g.name] = np.mean(vals, axis=0)
        return out


@register_importance("apoz")
class APoZImportance(ActivationImportance):
    """``1 - APoZ``: the share of non-zero activations of each channel (Hu et al. 2016; NNI's
    ActivationAPoZRankPruner). Channels that are almost always zero after their ReLU go first.

    Example:
        >>> import keras
        >>> from kslim.prune import FilterPruner
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu", name="fc"),
        ...                       keras.layers.Dense(2)])
        >>> m.get_layer("fc").set_weights([np.array([[1.0, 1.0, -9.0]] * 4), np.zeros(3)])
        >>> p = FilterPruner(m, importance="apoz", data=np.ones((8, 4)), keep_classifier=False)
        >>> p.importance(p.graph.group("fc")).tolist()
        [1.0, 1.0, 0.0]
    """

    def statistic(self, rows):
        return (rows != 0).sum(axis=0).astype(np.float64), rows.shape[0]


@register_importance("mean_activation")
class MeanActivationImportance(ActivationImportance):
    """Mean activation of each channel over samples and positions (NNI's ActivationMeanRankPruner)."""

    def statistic(self, rows):
        return rows.sum(axis=0), rows.shape[0]


@register_importance("taylor")
class TaylorImportance(DataImportance):
    """First-order Taylor estimate of the loss change when a channel is removed (Molchanov et al. 2017).

    For each batch, with ``a`` the tapped activation of the channel and ``g = dL/da`` the gradient of
    the batch loss, the score is ``|sum over samples and positions of a * g|`` (summed over the
    group's producers before the absolute value): the first-order estimate of ``|L(a = 0) - L|``
    for that batch. Scores are averaged over batches. (Molchanov et al. take the absolute value per
    sample; here it is per batch, which is what a finite difference of the batch loss measures.)
    """

    requires = ("data", "loss")

    def compute(self, graph, groups):
        import tensorflow as tf

        from kslim.distill.features import feature_model

        consumers = _consumers(graph.model)
        taps = {g.name: tap_points(graph, g, consumers) for g in groups}
        paths = list(dict.fromkeys(p for t in taps.values() for _, p, _ in t))
        fm = feature_model(graph.model, paths, name=f"{graph.model.name}_taylor_taps")
        loss_fn = self.loss_fn()
        total = {g.name: np.zeros(g.size) for g in groups}
        n = 0
        for x, y in self.batches_of(labels=True):
            with tf.GradientTape() as tape:
                out = fm(x, training=False)
                loss = tf.reduce_mean(loss_fn(y, out["output"]))
            grads = tape.gradient(loss, out["features"])
            ag = {}
            for p, a, gr in zip(paths, out["features"], grads):
                prod = np.zeros(a.shape[-1]) if gr is None else np.asarray(a * gr, np.float64)
                ag[p] = prod.reshape(-1, prod.shape[-1]).sum(axis=0)
            for g in groups:
                signed = sum(per_channel(ag[p], m, g.size) for m, p, _ in taps[g.name])
                total[g.name] += np.abs(signed)
            n += 1
        return {k: v / n for k, v in total.items()}


@register_importance("hessian")
class HessianImportance(DataImportance):
    """Second-order (OBD) saliency with the diagonal of the Hessian replaced by the empirical Fisher.

    Optimal Brain Damage estimates the loss increase of removing weight ``w`` as ``h w^2 / 2``; with
    the Fisher approximation ``h ~ E[g^2]`` that is ``E[(g w)^2]``. The score of a channel is the sum
    of ``(g * w)^2`` over **every trainable weight entry of the group** (producers' filters and biases,
    BatchNormalization scale and shift, depthwise kernels, consumers' input rows), averaged over the
    batches, ``g`` being the gradient of the *batch* loss (per-sample gradients would cost a backward
    pass per sample; Torch-Pruning's HessianImportance uses them).
    """

    requires = ("data", "loss")

    def compute(self, graph, groups):
        import tensorflow as tf

        members = [(g, m) for g in groups for m in g.members
                   if getattr(graph.layers[m.layer_name].weights[m.weight_index], "trainable", False)]
        variables = {}
        for _, m in members:
            var = graph.layers[m.layer_name].weights[m.weight_index]
            variables.setdefault(id(var), var)
        keys = list(variables)
        acc = {k: 0.0 for k in keys}
        loss_fn = self.loss_fn()
        n = 0
        for x, y in self.batches_of(labels=True):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(loss_fn(y, graph.model(x, training=False)))
            grads = tape.gradient(loss, [variables[k] for k in keys])
            for k, gr in zip(keys, grads):
                if gr is not None:
                    acc[k] = acc[k] + np.square(np.asarray(gr, np.float64) * np.asarray(variables[k].numpy(), np.float64))
            n += 1
        out = {g.name: np.zeros(g.size) for g in groups}
        for g, m in members:
            var = graph.layers[m.layer_name].weights[m.weight_index]
            sq = np.broadcast_to(np.asarray(acc[id(var)]) / n, tuple(var.shape))
            along = np.moveaxis(sq, m.axis, 0).reshape(sq.shape[m.axis], -1).sum(axis=1)
            out[g.name] += per_channel(along, m, g.size)
        return out

    def unusable(self, group, graph):
        return ""


__all__ = ["Importance", "MagnitudeImportance", "DataImportance", "ActivationImportance", "register_importance",
           "unregister_importance", "get_importance", "importance_class", "importance_names", "l1_norm", "l2_norm",
           "fpgm", "geometric_median", "lamp", "L1Importance", "L2Importance", "FPGMImportance", "BNScaleImportance",
           "LAMPImportance", "RandomImportance", "APoZImportance", "MeanActivationImportance", "TaylorImportance",
           "HessianImportance", "data_batches", "channel_entries", "per_channel", "tap_points", "DATA_OPTIONS"]
