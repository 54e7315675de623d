"""Transformer head pruning: remove whole attention heads of ``keras.layers.MultiHeadAttention`` layers.

A ``MultiHeadAttention`` with ``H`` heads holds four EinsumDense projections: query and key kernels
``(dim, H, key_dim)``, value ``(dim, H, value_dim)`` (biases ``(H, dim_per_head)``) and the output
kernel ``(H, value_dim, output_dim)``. Removing head ``h`` deletes index ``h`` of the heads axis of all
four, and the layer is re-created with ``num_heads = H - removed``; the rest of the model is copied
unchanged (a new, ordinary Keras model; the original is not modified). Each head's output is summed
through the output projection, so when a removed head's value (or output) weights are zero, the
pruned model computes exactly the same outputs.

:func:`head_importance` ranks heads by weight norm: the L2 norm of everything the head owns (its
query/key/value kernel and bias slices and its block of output-kernel rows). :func:`plan_heads` turns
a ratio into ``{layer path: [heads]}``, lowest importance first, keeping at least one head per layer.

Example:
    >>> import keras, numpy as np
    >>> inp = keras.Input((6, 8))
    >>> x = keras.layers.MultiHeadAttention(num_heads=4, key_dim=2, name="mha")(inp, inp)
    >>> m = keras.Model(inp, keras.layers.Dense(3, name="head")(x))
    >>> small = prune_heads(m, {"mha": [0, 2]})
    >>> small.get_layer("mha").num_heads
    2
"""

import numpy as np

from kslim.errors import KslimTypeError, KslimValueError, UnsupportedLayerError
from kslim.prune.base import _check_ratio
from kslim.validation import check_model, renamed

_PARTS = ("query", "key", "value", "output")


def attention_layers(model):
    """``{path: layer}`` of every ``keras.layers.MultiHeadAttention`` of ``model`` (nested models included)."""
    import keras

    from kslim.graph import keras_graph as kg

    check_model(model, "head pruning")
    leaves, _ = kg.leaf_layers(model)
    return {p: lay for p, lay in leaves.items() if isinstance(lay, keras.layers.MultiHeadAttention)}


def _parts(layer, path):
    from kslim.graph import keras_graph as kg

    parts = kg.attention_parts(layer)
    if parts is None:
        raise UnsupportedLayerError(f"MultiHeadAttention {path!r} is not built (call it on inputs first).")
    if getattr(layer, "_use_gate", False) or layer.get_config().get("use_gate"):
        raise UnsupportedLayerError(f"MultiHeadAttention {path!r} uses a gate (use_gate=True): its gate projection "
                                    "is not sliced by head pruning.")
    return parts


def _head_axes(parts):
    """``{part: [(weight index, heads axis)]}``: query/key/value kernels axis 1 and biases axis 0, output kernel axis 0."""
    out = {}
    for role, dense in parts.items():
        axes = []
        for i, w in enumerate(dense.weights):
            rank = len(w.shape)
            if role == "output":
                if rank == 3:
                    axes.append((i, 0))
            else:
                axes.append((i, 1 if rank == 3 else 0))
        out[role] = axes
    return out


def head_importance(model, path):
    """L2 norm of each head's weights (query/key/value kernel and bias slices, output-kernel block) of ``path``.

    >>> import keras
    >>> inp = keras.Input((4, 6))
    >>> m = keras.Model(inp, keras.layers.MultiHeadAttention(3, 2, name="att")(inp, inp))
    >>> head_importance(m, "att").shape
    (3,)
    """
    from kslim.graph import keras_graph as kg

    layers = attention_layers(model)
    path = kg.resolve_path(layers, path, "MultiHeadAttention layer", model.name)
    parts = _parts(layers[path], path)
    sq = np.zeros(layers[path].num_heads)
    for role, axes in _head_axes(parts).items():
        weights = parts[role].weights
        for i, axis in axes:
            w = np.asarray(weights[i].numpy(), np.float64)
            sq += np.square(np.moveaxis(w, axis, 0)).reshape(w.shape[axis], -1).sum(axis=1)
    return np.sqrt(sq)


@renamed(ratio="ratios")
def plan_heads(model, ratios, layers=None):
    """``{path: sorted heads to remove}``: ``ratio`` of the heads of each attention layer (rounded down,
    at least one head kept), lowest :func:`head_importance` first.

    >>> import keras
    >>> inp = keras.Input((4, 8))
    >>> m = keras.Model(inp, keras.layers.MultiHeadAttention(4, 2, name="att")(inp, inp))
    >>> [len(v) for v in plan_heads(m, 0.5).values()]
    [2]
    """
    ratio = _check_ratio(ratios, "plan_heads(): ratios")
    found = attention_layers(model)
    paths = list(found) if layers is None else [layers] if isinstance(layers, str) else list(layers)
    plan = {}
    for p in paths:
        imp = head_importance(model, p)
        n = min(int(np.floor(len(imp) * ratio + 1e-9)), len(imp) - 1)
        if n:
            plan[p] = sorted(int(h) for h in np.argsort(imp, kind="stable")[:n])
    return plan


def prune_heads(model, heads):
    """A new model with the attention heads ``heads = {mha path: [head indices]}`` removed.

    Raises:
        KslimValueError: a path that is no MultiHeadAttention layer, head indices out of range, or
            every head of a layer named.
        UnsupportedLayerError: an unbuilt or gated MultiHeadAttention.
    """

    from kslim.graph import keras_graph as kg

    if not isinstance(heads, dict):
        raise KslimTypeError(f"heads must be a dict {{layer path: [head indices]}}, got {type(heads).__name__}.")
    found = attention_layers(model)
    plan = {}
    for name, idx in heads.items():
        if not found:
            raise KslimValueError(f"model {model.name!r} has no MultiHeadAttention layer.")
        path = kg.resolve_path(found, name, "MultiHeadAttention layer", model.name)
        n = found[path].num_heads
        idx = np.unique(np.asarray(list(idx), dtype=np.int64).reshape(-1))
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise KslimValueError(f"heads of {path!r} must be in [0, {n}), got {idx.tolist()}.")
        if idx.size >= n:
            raise KslimValueError(f"Cannot remove all {n} heads of {path!r}; at least one must remain.")
        _parts(found[path], path)
        if idx.size:
            plan[path] = np.setdiff1d(np.arange(n), idx)       # the heads kept
    new_layers = {}

    def leaf_fn(node, path, args, kwargs):
        op = node.operation
        if not kg.is_layer(op):
            return op(*args, **kwargs)
        first = id(op) not in new_layers
        if first:
            config = op.get_config()
            if path in plan:
                config["num_heads"] = int(len(plan[path]))
            new_layers[id(op)] = type(op).from_config(config)
        out = new_layers[id(op)](*args, **kwargs)
        if first:
            if path in plan:
                _copy_heads(op, new_layers[id(op)], plan[path])
            else:
                new_layers[id(op)].set_weights(op.get_weights())
        return out

    return kg.rebuild(model, leaf_fn)


def _copy_heads(old, new, keep):
    """``new`` (built, ``len(keep)`` heads) gets ``old``'s weights of heads ``keep``."""
    src, dst = _parts(old, old.name), _parts(new, new.name)
    axes = _head_axes(src)
    for role in _PARTS:
        sliced = {i: a for i, a in axes[role]}
        values = [np.take(np.asarray(w.numpy()), keep, axis=sliced[i]) if i in sliced else np.asarray(w.numpy())
                  for i, w in enumerate(src[role].weights)]
        dst[role].set_weights(values)


__all__ = ["prune_heads", "head_importance", "plan_heads", "attention_layers"]
