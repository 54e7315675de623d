"""Model surgery: rebuild a functional model with channels removed.

The new model is made of ordinary Keras layers re-created from their configs (producers get fewer
``filters``/``units``, Reshape targets follow their input), called in the original graph order, then
given the original weights with the removed channels sliced out. Nested models stay nested models of
the same name (a shared one stays shared); an expanded composite layer comes back as the nested
Functional model it was expanded into. The original model is not modified.
"""

import warnings
from collections import defaultdict

import keras
import numpy as np

from kslim.errors import ModelError
from kslim.graph import keras_graph as kg

def deletions(removed):
    """``{(layer_name, weight_index, axis): sorted indices}`` to delete, from ``{ChannelGroup: channels}``."""
    out = defaultdict(list)
    for group, channels in removed.items():
        channels = np.asarray(channels, dtype=np.int64)
        if channels.size == 0:
            continue
        for m in group.members:
            out[(m.layer_name, m.weight_index, m.axis)].append(m.indices(channels))
    return {k: np.unique(np.concatenate(v)) for k, v in out.items()}


def removed_outputs(removed):
    """``{producer layer name: number of output channels removed}``."""
    out = {}
    for group, channels in removed.items():
        n = len(np.unique(np.asarray(channels)))
        if n:
            for name in dict.fromkeys(group.layer_names):
                out[name] = out.get(name, 0) + n
    return out


def _new_config(layer, name, n_out_removed, node, args, cuts=None):
    import kslim.rules as registry

    config = kg.layer_config(layer)  # a failure is reported by _clone_layer
    config["name"] = layer.name
    policy = getattr(layer, "dtype_policy", None)
    if isinstance(config.get("dtype"), dict) and type(policy).__name__ == "DTypePolicy":
        # a plain policy as its name: layers relying on Keras' auto-config stay serialisable
        config["dtype"] = policy.name
    rule = registry.get(layer)
    config = rule.pruned_config(layer, config, n_out_removed, node, args)
    weight_cuts = {(i, axis): len(idx) for (n, i, axis), idx in (cuts or {}).items() if n == name}
    return rule.resized_config(layer, config, weight_cuts) if weight_cuts else config


def _clone_layer(layer, name, n_out_removed, node, args, cuts=None):
    try:
        config = _new_config(layer, name, n_out_removed, node, args, cuts)
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ModelError(
            f"Could not read the config of layer {name!r} ({type(layer).__name__}): get_config() failed with "
            f"{type(e).__name__}: {e}. Implement get_config() for this layer so the pruner can rebuild it, or "
            f"prune a model without it."
        ) from e
    try:
        return type(layer).from_config(config)
    except Exception as e:  # noqa: BLE001
        raise ModelError(
            f"Could not re-create layer {name!r} ({type(layer).__name__}) from its config: {type(e).__name__}: "
            f"{e}. Layers must implement get_config()/from_config() to be rebuilt by the pruner."
        ) from e


def _clone_op(op, node, args):
    import kslim.rules as registry

    try:
        config = registry.get(op).pruned_config(op, op.get_config(), 0, node, args)
        return type(op).from_config(config)
    except Exception:  # noqa: BLE001 - stateless ops can be shared safely
        return op


def rebuild(model, graph, removed, copy_weights=True):
    """A new ``keras.Model`` equal to ``model`` with the channels in ``removed`` deleted.

    Args:
        model: the model the graph describes (``graph.model``; untouched).
        graph: its :class:`~kslim.graph.DependencyGraph`.
        removed: ``{ChannelGroup: channel indices}``; every group must be prunable and keep >= 1 channel.
        copy_weights: False skips copying weights (fresh initialisation) - for quick MAC estimates.
    """
    names = graph._names
    n_out = removed_outputs(removed)
    cuts = deletions(removed)
    clones, op_clones = {}, {}

    touched = {k[0] for k in cuts} | set(n_out)
    shared = []

    def leaf_fn(node, path, args, kwargs):
        op = node.operation
        if kg.is_layer(op):
            name = names.get(id(op), path)
            if name not in clones:
                try:
                    clones[name] = (op, _clone_layer(op, name, n_out.get(name, 0), node, args, cuts))
                except ModelError:
                    if name in touched:
                        raise
                    # not pruned, but its config does not round-trip: keep the very layer (shared weights)
                    clones[name] = (op, op)
                    shared.append(f"{name} ({type(op).__name__})")
            new = clones[name][1]
        else:
            if id(op) not in op_clones:
                op_clones[id(op)] = _clone_op(op, node, args)
            new = op_clones[id(op)]
        return new(*args, **kwargs)

    new_model = kg.rebuild(model, leaf_fn)
    if shared:
        warnings.warn(
            f"{len(shared)} layer(s) cannot be re-created from their get_config() and are not pruned, so the "
            f"pruned model shares them (and their weights) with the original: {', '.join(shared[:5])}"
            f"{' ...' if len(shared) > 5 else ''}. Fix their get_config() to get independent copies.",
            stacklevel=3)
    if copy_weights:
        for name, (old, new) in clones.items():
            if new is not old:
                _copy_weights(name, old, new, cuts)
    return new_model


def _copy_weights(name, old, new, cuts):
    old_w = old.get_weights()
    if not old_w:
        return
    new_w = []
    for i, w in enumerate(old_w):
        for axis in range(w.ndim):
            idx = cuts.get((name, i, axis))
            if idx is not None:
                w = np.delete(w, idx, axis=axis)
        new_w.append(w)
    expected = [tuple(v.shape) for v in new.weights]
    got = [tuple(w.shape) for w in new_w]
    if expected != got:
        raise ModelError(
            f"Pruning produced inconsistent weights for layer {name!r} ({type(old).__name__}): sliced {got}, "
            f"rebuilt layer expects {expected}. This is a kslim bug; please report it with the model."
        )
    new.set_weights(new_w)
