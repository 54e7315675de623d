"""Find layers by name or path (nested models included) and build feature-extractor models.

A layer is named by its path from the top model, ``"backbone/conv1"`` for layer ``conv1`` of the
nested model ``backbone``, or by its bare name when that name is unique at every depth.
:func:`feature_model` re-traces the model's graph with the *same* layer objects (weights shared,
nothing copied) and returns ``keras.Model(inputs, {"output": model outputs, "features": [...]})``,
so one forward pass gives the prediction and every requested intermediate tensor.
"""


import keras

from kslim.errors import ModelError
from kslim.graph import keras_graph as kg

_SELF = object()  # marks "this layer's own output is wanted" in a wanted-tree


_is_graph_model = kg.is_graph_model
layer_paths = kg.layer_paths


def resolve_layer(model, name, role="model"):
    """Canonical path of the layer called ``name`` (a path or a name unique at any depth) in ``model``.

    Raises :class:`~kslim.errors.ModelError` naming the close matches when it does not exist, or
    the candidate paths when a bare name is ambiguous.
    """
    if not isinstance(name, str) or not name:
        raise ModelError(f"{role} layer name must be a non-empty string, got {name!r}.")
    if not _is_graph_model(model):
        raise ModelError(
            f"{role} model {model.name!r} is a subclassed model: its inner layers cannot be tapped. "
            f"Use a Functional or Sequential model, or name no layer (None) to use its output."
        )
    return kg.resolve_path(layer_paths(model), name, owner=f"{role} model {model.name!r}")


def _wanted_tree(paths):
    tree = {}
    for path in paths:
        node = tree
        parts = path.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node.setdefault(parts[-1], {})[_SELF] = True
    return tree


def _trace(model, inputs, tree, record, prefix):
    """Run ``model``'s graph on symbolic ``inputs`` with its own layers, recording wanted outputs."""

    def call_fn(layer, *args, **kwargs):
        node = tree.get(layer.name)
        if node is None:
            return layer(*args, **kwargs)
        children = {k: v for k, v in node.items() if k is not _SELF}
        if children:
            out = _trace_nested(layer, args[0], children, record, prefix + layer.name + "/")
        else:
            out = layer(*args, **kwargs)
        if node.get(_SELF):
            key = prefix + layer.name
            if key in record:
                raise ModelError(
                    f"layer {key!r} is called more than once in the graph (shared layer): its output is "
                    "ambiguous. Name a layer that is called once."
                )
            record[key] = out
        return out

    if isinstance(model, keras.Sequential):
        x = inputs
        for layer in model.layers:
            x = call_fn(layer, x)
        return x
    clone = keras.models.clone_model(model, input_tensors=inputs, clone_function=lambda layer: layer,
                                     call_function=call_fn)
    return clone.output


def _trace_nested(model, args, tree, record, prefix):
    """Tap a nested model: an extractor over fresh inputs, called on the outer graph's tensors."""
    if isinstance(model, keras.Sequential):
        return _trace(model, args, tree, record, prefix)
    inner_inputs = model_inputs(model)
    inner_record = {}
    out = _trace(model, inner_inputs, tree, inner_record, prefix)
    keys = list(inner_record)
    tap = keras.Model(inner_inputs, {"output": out, "features": [inner_record[k] for k in keys]},
                      name=f"{model.name}_tap")
    res = tap(args)
    record.update(zip(keys, res["features"]))
    return res["output"]


def model_inputs(model):
    """Fresh ``keras.Input`` tensors matching ``model.inputs`` (None for a subclassed, unbuilt model)."""
    inputs = getattr(model, "inputs", None)
    if not inputs:
        return None
    new = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name) for t in inputs]
    return new[0] if len(new) == 1 else new


def feature_model(model, paths, name=None):
    """``keras.Model(inputs, {"output": ..., "features": [...]})`` sharing ``model``'s layers.

    ``paths`` are canonical layer paths (see :func:`resolve_layer`); ``features[i]`` is the output
    of ``paths[i]``. Calling it with ``training=True`` behaves as calling ``model`` (BatchNorm,
    Dropout), and it updates the same weights.

    Example:
        >>> from kslim.models import mobilenet_v1
        >>> m = mobilenet_v1(width=0.25)
        >>> fm = feature_model(m, ["block2_pw"])
        >>> [tuple(f.shape) for f in fm.output["features"]]
        [(None, 14, 14, 32)]
    """
    inputs = model_inputs(model)
    if inputs is None:
        raise ModelError(f"model {model.name!r} has no symbolic inputs: build it with keras.Input first.")
    record = {}
    output = _trace(model, inputs, _wanted_tree(paths), record, "")
    missing = [p for p in paths if p not in record]
    if missing:  # e.g. a layer not on the path from the inputs to the outputs
        raise ModelError(f"layers {missing} of model {model.name!r} are not reached from its inputs.")
    return keras.Model(inputs, {"output": output, "features": [record[p] for p in paths]},
                       name=name or f"{model.name}_features")


__all__ = ["layer_paths", "resolve_layer", "feature_model", "model_inputs"]
