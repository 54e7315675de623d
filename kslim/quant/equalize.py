"""Cross-layer equalization (Nagel et al., 2019, "Data-Free Quantization"; AIMET's ``equalize_model``).

Per-tensor int8 quantization gives a whole kernel one scale, so a kernel whose output channels have
very different ranges (common in depthwise convolutions after BatchNorm folding) wastes most of the
grid on its small channels. For two layers ``y = W2 f(W1 x + b1)`` whose activation ``f`` is
positively homogeneous (``f(x / s) = f(x) / s`` for ``s > 0``: ReLU, LeakyReLU, PReLU, linear, max
and average pooling, zero padding, dropout at inference), each channel ``i`` between them can be
rescaled without changing the function::

    r1_i = max |W1[..., i]|     (output channel i of the first kernel)
    r2_i = max |W2[..., i, :]|  (input channel i of the second kernel)
    s_i  = sqrt(r1_i / r2_i)
    W1[..., i] /= s_i,  b1[i] /= s_i,  W2[..., i, :] *= s_i

after which both channels have the range ``sqrt(r1_i * r2_i)``. The pairs are found in kslim's
channel-dependency graph (:mod:`kslim.graph`): the first layer is a producer (Conv, Dense) or a
depthwise convolution, the second a producer or a depthwise convolution consuming exactly that
channel space, and nothing else reads the channels in between; a conv -> depthwise -> pointwise
chain of a depthwise-separable block gives two pairs that share the depthwise kernel, and the pairs
are swept ``iterations`` times in graph order (the paper's iterative scheme for such triplets).

BatchNormalization layers are folded first (:func:`kslim.quant.fold_batch_norm`, exactly as the
TFLite converter folds them); one that cannot be folded blocks the pairs it sits between (its shift
is not scale-equivariant).

**ReLU6** (and any capped ReLU) is not scale-equivariant: ``min(x / s, 6) != min(x, 6) / s``. By
default (``relu6="skip"``) such pairs are left alone and reported as skipped, so the float model is
unchanged up to float rounding. ``relu6="relu"`` does what AIMET and the paper do for MobileNets: the
ReLU6 between an equalizable pair becomes a ReLU (fused ``activation="relu6"`` too), and the pair is
equalized. That changes the float function wherever a pre-activation exceeded 6; the replaced layers
are listed in :attr:`EqualizeResult.replaced`, and the float accuracy should be checked.

High-bias absorption (the paper's second step) is not done.

Example:
    >>> import keras, numpy as np
    >>> from kslim.quant import equalize_cross_layer
    >>> m = keras.Sequential([keras.Input((8, 8, 3)),
    ...                       keras.layers.DepthwiseConv2D(3, padding="same", name="dw"),
    ...                       keras.layers.ReLU(name="relu"),
    ...                       keras.layers.Conv2D(4, 1, name="pw")])
    >>> w = m.get_layer("dw").get_weights()
    >>> w[0] = w[0] * np.array([0.01, 1.0, 50.0], "float32")[:, None]   # unbalanced channel ranges
    >>> m.get_layer("dw").set_weights(w)
    >>> result = equalize_cross_layer(m)
    >>> [(p.first, p.second) for p in result.pairs]
    [('dw', 'pw')]
    >>> result.pairs[0].balance_after > result.pairs[0].balance_before
    True
    >>> x = np.random.rand(2, 8, 8, 3).astype("float32")
    >>> bool(np.allclose(result.model(x), m(x), rtol=1e-4, atol=1e-5))
    True
"""

from dataclasses import dataclass

import numpy as np

from kslim.errors import KslimValueError, ModelError
from kslim.validation import check_model

#: what ``relu6=`` accepts
RELU6_MODES = ("skip", "relu")

#: activations (by Keras name) that are positively homogeneous: ``f(x / s) = f(x) / s`` for ``s > 0``
_HOMOGENEOUS_ACTIVATIONS = {"linear", "relu", "leaky_relu"}
#: channel kinds of the rule registry through which a pair may be linked (one input, channels kept)
_LINK_KINDS = ("identity", "spatial", "carry", "flatten")


@dataclass(frozen=True)
class EqualizedPair:
    """One equalized pair of layers.

    Attributes:
        first, second: layer paths (``first``'s output channels are ``second``'s input channels).
        channels: channels rescaled.
        balance_before, balance_after: ``mean_i r_i / max_i r_i`` of ``first``'s per-channel kernel
            ranges (1.0: every channel uses the whole per-tensor int8 grid).
        max_scale, min_scale: extreme values of the product of the ``s_i`` applied over the sweeps.
    """

    first: str
    second: str
    channels: int
    balance_before: float
    balance_after: float
    max_scale: float
    min_scale: float


@dataclass(frozen=True)
class SkippedPair:
    """A producer whose channels were not equalized: ``layer`` (and ``second`` when known) and why."""

    layer: str
    reason: str
    second: str = ""


@dataclass(frozen=True)
class EqualizeResult:
    """What :func:`equalize_cross_layer` did.

    Attributes:
        model: the equalized float ``keras.Model`` (a new model: BatchNorm folded, weights rescaled);
            the model passed in is not modified.
        pairs: the :class:`EqualizedPair` s, in graph order.
        skipped: the :class:`SkippedPair` s (ReLU6 in between, several consumers, model output ...).
        replaced: ReLU6 layers turned into ReLU (``relu6="relu"`` only).
        iterations: sweeps over the pairs.
    """

    model: object
    pairs: tuple = ()
    skipped: tuple = ()
    replaced: tuple = ()
    iterations: int = 1
    relu6: str = "skip"

    def to_dict(self):
        """Everything but the model (JSON-ready)."""
        return {"pairs": [p.__dict__ for p in self.pairs], "skipped": [s.__dict__ for s in self.skipped],
                "replaced": list(self.replaced), "iterations": self.iterations, "relu6": self.relu6}

    def __str__(self):
        lines = [f"cross-layer equalization: {len(self.pairs)} pairs equalized, {len(self.skipped)} skipped"]
        lines += [f"  {p.first} -> {p.second}: balance {p.balance_before:.3f} -> {p.balance_after:.3f}"
                  for p in self.pairs]
        lines += [f"  skipped {s.layer}{' -> ' + s.second if s.second else ''}: {s.reason}" for s in self.skipped]
        if self.replaced:
            lines.append(f"  ReLU6 -> ReLU: {', '.join(self.replaced)}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ activations
def _activation_name(fn):
    import keras

    try:
        name = keras.activations.serialize(fn)
    except Exception:  # noqa: BLE001 - an unserialisable custom function
        return None
    return name if isinstance(name, str) else (name.get("config") if isinstance(name, dict) else None)


def _is_capped(op):
    """True for a ReLU6-like op (a ReLU layer with ``max_value``, or activation ``"relu6"``)."""
    import keras

    if isinstance(op, keras.layers.ReLU):
        return op.max_value is not None and float(op.threshold) == 0.0
    if isinstance(op, keras.layers.Activation):
        return _activation_name(op.activation) == "relu6"
    return False


def _not_equivariant(op, name, kind):
    """Why ``op`` (channel kind ``kind``) breaks ``f(x / s) = f(x) / s``, or None if it does not."""
    import keras

    what = f"{name!r} ({type(op).__name__})"
    if _is_capped(op):
        return f"{what} is a ReLU6, which is not scale-equivariant (relu6='relu' replaces it by a ReLU)"
    if isinstance(op, keras.layers.ReLU):
        return None if float(op.threshold) == 0.0 else f"{what} has a threshold, which is not scale-equivariant"
    if isinstance(op, keras.layers.Activation):
        act = _activation_name(op.activation)
        return None if act in _HOMOGENEOUS_ACTIVATIONS else f"{what}: activation {act!r} is not scale-equivariant"
    if isinstance(op, (keras.layers.LeakyReLU, keras.layers.PReLU)):
        return None
    if isinstance(op, keras.layers.BatchNormalization):
        return f"{what} could not be folded into its producer, and its shift is not scale-equivariant"
    if kind in ("spatial", "flatten"):
        return None  # pooling, zero padding, upsampling, cropping, flatten: positively homogeneous
    if kind == "identity" and type(op).__name__ in _NO_OPS:
        return None
    return f"{what} is not known to be scale-equivariant"


_NO_OPS = {"Dropout", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity",
           "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D"}


def _fused_problem(layer, name):
    """Why the fused activation of ``layer`` (the first of a pair) is not scale-equivariant, or None."""
    act = getattr(layer, "activation", None)
    if act is None:
        return None
    act = _activation_name(act)
    if act in _HOMOGENEOUS_ACTIVATIONS:
        return None
    if act == "relu6":
        return (f"{name!r} has activation='relu6', which is not scale-equivariant (relu6='relu' replaces it by "
                f"a ReLU)")
    return f"{name!r} has activation={act!r}, which is not scale-equivariant"


# ------------------------------------------------------------------------------------------ pairs
_OUTPUT = "reaches a model output"


class _Links:
    """Which weighted layer feeds which, through which ops: one visitor over :func:`keras_graph.walk`."""

    def __init__(self, model):
        from kslim.graph import keras_graph as kg

        self.names = kg.leaf_layers(model)[1]
        self.feeds = {}      # weighted layer -> (source weighted layer, (op paths between))
        self.uses = {}       # source -> number of places its channels go
        self.calls = {}      # weighted layer -> calls
        self.escapes = {}    # source -> first place its channels go that is not a weighted layer
        self.ops = {}        # path -> op
        graph = kg.graph_of(model)
        outs = kg.walk(model, [None] * len(graph.inputs), self.visit)
        for v in outs:
            self._escape(v, _OUTPUT)

    def _escape(self, value, where):
        if value is not None:
            self.uses[value[0]] = self.uses.get(value[0], 0) + 1
            self.escapes.setdefault(value[0], where)

    def visit(self, node, values, prefix=""):
        from kslim.graph import rules

        op = node.operation
        name = self.names.get(id(op), prefix + op.name)
        self.ops[name] = op
        ins = [values.get(id(x)) for x in node.input_tensors]
        kind = rules.handler_for(op)
        if kind in ("producer", "depthwise"):
            self.calls[name] = self.calls.get(name, 0) + 1
            if len(ins) == 1 and ins[0] is not None:
                self.feeds[name] = ins[0]
                self.uses[ins[0][0]] = self.uses.get(ins[0][0], 0) + 1
            else:
                for v in ins:
                    self._escape(v, f"consumed by {name!r} with other inputs")
            return [(name, (), kind)] + [None] * (len(node.outputs) - 1)
        if kind in _LINK_KINDS and len(ins) == 1 and len(node.outputs) == 1:
            v = ins[0]
            return [None if v is None else (v[0], v[1] + ((name, kind),), v[2])]
        for v in ins:
            self._escape(v, f"consumed by {name!r} ({type(op).__name__})")
        return [None] * len(node.outputs)


def _analyse(model):
    """``(graph, pairs, skipped, links)`` of ``model``: its channel graph and the candidate pairs."""
    from kslim.graph import build_dependency_graph

    graph = build_dependency_graph(model)
    return (graph,) + _candidates(graph.model)


def _candidates(model):
    """``(pairs, skipped)``: ``pairs`` is a list of ``(first, second, ops between)`` that may be equalized
    as far as the graph goes (activations not checked yet)."""
    links = _Links(model)
    pairs, skipped = [], []
    sources = {v[0]: v for v in links.feeds.values()}
    for second, (first, via, _) in links.feeds.items():
        if links.uses.get(first, 0) != 1:
            where = links.escapes.get(first, "")
            reason = f"its output channels also go elsewhere ({where})" if where else \
                f"its output feeds {links.uses.get(first, 0)} layers"
            skipped.append(SkippedPair(first, reason))
            continue
        if links.calls.get(first, 1) != 1 or links.calls.get(second, 1) != 1:
            skipped.append(SkippedPair(first, "a layer of the pair is called more than once", second))
            continue
        pairs.append((first, second, via))
    for name in links.calls:
        where = links.escapes.get(name)
        if name not in sources and where and where != _OUTPUT:
            skipped.append(SkippedPair(name, f"its output channels go to no conv/dense ({where})"))
    return pairs, skipped, links


def _check_pair(links, first, second, via, allow_relu6=False):
    """Why the pair cannot be equalized (activations), or None; ``allow_relu6`` ignores ReLU6s."""
    layer = links.ops[first]
    if not (allow_relu6 and _activation_name(getattr(layer, "activation", None)) == "relu6"):
        problem = _fused_problem(layer, first)
        if problem:
            return problem
    for name, kind in via:
        if allow_relu6 and _is_capped(links.ops[name]):
            continue
        problem = _not_equivariant(links.ops[name], name, kind)
        if problem:
            return problem
    return None


def _replace_relu6(model, names, fused):
    """A model like ``model`` with the ReLU6 ops ``names`` and the fused relu6 of layers ``fused`` made ReLU."""
    import keras

    from kslim.graph import keras_graph as kg

    def leaf_fn(node, path, args, kwargs):
        op = node.operation
        if path in names:
            return keras.layers.ReLU(name=op.name)(*args, **kwargs)
        if path in fused:
            layer = type(op).from_config({**op.get_config(), "activation": "relu"})
            out = layer(*args, **kwargs)
            layer.set_weights(op.get_weights())
            return out
        return op(*args, **kwargs)

    return kg.rebuild(model, leaf_fn)


# ------------------------------------------------------------------------------------------ scaling
def _members(group, layer, name, down):
    """The members of ``group`` on layer ``name`` that ``1/s`` (``down``) or ``s`` (not ``down``) scales;
    the first one is the kernel whose per-channel range counts."""
    from kslim.graph import rules
    from kslim.rules import weight_index

    mine = group.members_of(name)
    kind = rules.handler_for(layer)
    if getattr(layer, "kernel", None) is None:
        return []
    k = weight_index(layer, layer.kernel)
    if kind == "depthwise":
        kernel = [m for m in mine if m.role == "carry" and m.weight_index == k]
        return (kernel + [m for m in mine if m.role == "carry" and m.weight_index != k]) if down else kernel
    if down:
        return [m for m in mine if m.role == "filter"] + [m for m in mine if m.role == "bias"]
    return [m for m in mine if m.role == "input"]


def _channel_view(weights, member, size):
    """``(view, flat, k)``: ``weights`` with the member's axis first, the indices of every channel
    (``size`` rows of ``k`` entries, flattened) on that axis."""
    view = np.moveaxis(weights, member.axis, 0)
    idx = member.index_matrix(np.arange(size))
    return view, idx.reshape(-1), idx.shape[1]


def _ranges(weights, member, size):
    view, flat, k = _channel_view(weights, member, size)
    a = np.abs(view[flat]).reshape(size, -1)
    return a.max(axis=1)


def _scale(weights, member, size, factor):
    view, flat, k = _channel_view(weights, member, size)
    f = np.repeat(factor, k).reshape((-1,) + (1,) * (view.ndim - 1))
    view[flat] = view[flat] * f


def _balance(r):
    top = float(np.max(r)) if r.size else 0.0
    return float(np.mean(r) / top) if top > 0 else 1.0


def _plan(graph, first, second):
    """``(group, down members, up members)`` of a pair, or a reason string."""
    groups = [g for g in graph.groups if g.members_of(first) and g.members_of(second)]
    if len(groups) != 1:
        return f"its channels are split over {len(groups)} channel groups"
    group = groups[0]
    layers = graph.layers
    down = _members(group, layers[first], first, True)
    up = _members(group, layers[second], second, False)
    if not down or not up:
        return (f"kslim does not equalize {type(layers[first]).__name__} -> {type(layers[second]).__name__} "
                f"(no single kernel on each side of the channels)")
    full = down[0].shape[down[0].axis]
    if down[0].index_matrix(np.arange(group.size)).size != full:
        return "only part of its output channels reach the second layer"
    return group, down, up


def equalize_cross_layer(model, relu6="skip", iterations=2):
    """Cross-layer equalization of a float model: a new model, same function, balanced channel ranges.

    Args:
        model: a built functional or Sequential ``keras.Model`` (float, not quantized).
        relu6: ``"skip"`` (pairs with a ReLU6 in between are left alone: the function is unchanged) or
            ``"relu"`` (that ReLU6 becomes a ReLU, as AIMET does; the float function changes where a
            pre-activation exceeded 6).
        iterations: sweeps over the pairs (pairs sharing a depthwise kernel converge over sweeps).

    Returns:
        :class:`EqualizeResult` (``result.model`` is the equalized copy, BatchNorm folded).

    Raises:
        KslimTypeError: ``model`` is not a ``keras.Model``.
        KslimValueError: bad ``relu6`` or ``iterations``.
        ModelError: no pair of layers can be equalized (the message lists why, per layer).
    """
    check_model(model, "equalize_cross_layer()")
    if relu6 not in RELU6_MODES:
        raise KslimValueError(f"equalize_cross_layer(): relu6 must be one of {RELU6_MODES}, got {relu6!r}.")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise KslimValueError(f"equalize_cross_layer(): iterations must be a positive integer, got {iterations!r}.")
    from kslim.quant.fold import fold_batch_norm
    from kslim.quant.qat import is_quantized

    if is_quantized(model):
        raise ModelError(f"equalize_cross_layer(): model {model.name!r} is already quantization-aware; equalize "
                         f"the float model before quant_aware().")
    work = fold_batch_norm(model)
    graph, pairs, skipped, links = _analyse(work)
    replaced = ()
    if relu6 == "relu":
        names, fused = set(), set()
        for first, second, via in pairs:
            if _check_pair(links, first, second, via) and not _check_pair(links, first, second, via, True):
                names.update(n for n, _ in via if _is_capped(links.ops[n]))
                if _activation_name(getattr(links.ops[first], "activation", None)) == "relu6":
                    fused.add(first)
        if names or fused:
            work = _replace_relu6(graph.model, names, fused)
            graph, pairs, skipped, links = _analyse(work)
            replaced = tuple(sorted(names | fused))
    plans = []
    for first, second, via in pairs:
        plan = _check_pair(links, first, second, via) or _plan(graph, first, second)
        if isinstance(plan, str):
            skipped.append(SkippedPair(first, plan, second))
        else:
            plans.append((first, second) + plan)
    if not plans:
        why = "; ".join(f"{s.layer}{' -> ' + s.second if s.second else ''}: {s.reason}" for s in skipped[:6])
        raise ModelError(f"equalize_cross_layer(): model {model.name!r} has no pair of layers to equalize "
                         f"(a conv/dense/depthwise layer feeding one conv/dense/depthwise layer through ReLU, "
                         f"linear, pooling or padding only). {why or 'It has no such layers.'}")
    weights = {}

    def get(name):
        if name not in weights:
            weights[name] = [np.asarray(w, np.float64) for w in graph.layers[name].get_weights()]
        return weights[name]

    before = {(first, second): _balance(_ranges(get(first)[down[0].weight_index], down[0], group.size))
              for first, second, group, down, up in plans}
    total = {}
    for _ in range(iterations):
        for first, second, group, down, up in plans:
            w1, w2 = get(first), get(second)
            r1 = _ranges(w1[down[0].weight_index], down[0], group.size)
            r2 = np.max([_ranges(w2[m.weight_index], m, group.size) for m in up], axis=0)
            ok = (r1 > 0) & (r2 > 0)
            s = np.where(ok, np.sqrt(np.where(ok, r1, 1.0) / np.where(ok, r2, 1.0)), 1.0)
            for m in down:
                _scale(w1[m.weight_index], m, group.size, 1.0 / s)
            for m in up:
                _scale(w2[m.weight_index], m, group.size, s)
            total[(first, second)] = total.get((first, second), 1.0) * s
    for name, ws in weights.items():
        layer = graph.layers[name]
        layer.set_weights([w.astype(v.dtype) for w, v in zip(ws, layer.get_weights())])
    done = []
    for first, second, group, down, up in plans:
        r1 = _ranges(get(first)[down[0].weight_index], down[0], group.size)
        s = total[(first, second)]
        done.append(EqualizedPair(first, second, group.size, before[(first, second)], _balance(r1),
                                  float(np.max(s)), float(np.min(s))))
    return EqualizeResult(work, tuple(done), tuple(skipped), replaced, iterations, relu6)


__all__ = ["equalize_cross_layer", "EqualizeResult", "EqualizedPair", "SkippedPair", "RELU6_MODES"]
