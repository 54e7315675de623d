"""Walk Keras 3 functional graphs (``Functional._nodes_by_depth``), flattening nested models.

Keras 3 keeps a functional model as a DAG of :class:`keras.src.ops.node.Node` objects (edges are
``KerasTensor`` s, each node records the operation called, its ``SymbolicArguments`` and outputs),
grouped by depth in ``model._nodes_by_depth``; ``Function._run_through_graph`` executes it by visiting
depths in decreasing order. :func:`walk` does the same, with a visitor instead of the operation call,
and recurses into nested functional / Sequential models so callers see only leaf operations.
"""

import keras

from kslim.errors import ModelError


def graph_of(model):
    """The functional graph of ``model``: itself for a Functional, ``_functional`` for a Sequential.

    Raises:
        ModelError: subclassed model (no graph), or a Sequential without a known input shape.
    """
    if isinstance(model, keras.Sequential):
        fn = getattr(model, "_functional", None)
        if fn is None:
            raise ModelError(
                f"Sequential model {model.name!r} has no input shape yet; start it with keras.Input(shape=...) "
                f"or call it on data once before pruning."
            )
        return fn
    if hasattr(model, "_nodes_by_depth") and getattr(model, "inputs", None) is not None and \
            hasattr(model, "_run_through_graph"):
        return model
    raise ModelError(
        f"Model {getattr(model, 'name', model)!r} ({type(model).__name__}) is a subclassed model without a "
        f"functional graph; kslim can only prune functional or Sequential Keras models."
    )


def is_graph_model(op):
    """True for a nested functional or Sequential model (walked into rather than treated as a layer)."""
    if not isinstance(op, keras.Model):
        return False
    try:
        graph_of(op)
    except ModelError:
        return False
    return True


def leaf_layers(model):
    """``(layers, names)``: dict flat-name -> layer of every leaf layer, and dict ``id(layer) -> flat name``.

    Names are the layers' own names; a name used by two different layers (possible across nested
    models) is prefixed with the nested model's name.
    """
    layers, names = {}, {}

    def visit(m, prefix):
        for op in graph_of(m).operations:
            if is_graph_model(op):
                visit(op, f"{prefix}{op.name}_")
                continue
            if not isinstance(op, keras.layers.Layer) or id(op) in names:
                continue
            if isinstance(op, keras.layers.InputLayer) and m is not model:
                continue
            name = op.name
            if name in layers:
                name = f"{prefix}{op.name}"
                i = 1
                while name in layers:
                    name, i = f"{prefix}{op.name}_{i}", i + 1
            layers[name] = op
            names[id(op)] = name

    visit(model, "")
    return layers, names


def walk(model, inputs, visit):
    """Run ``visit(node, values)`` over every leaf node of ``model`` in topological order.

    ``values`` maps ``id(KerasTensor)`` to whatever the caller propagates (channel maps, new tensors);
    ``inputs`` are the values of ``model.inputs``. ``visit`` returns the values of ``node.outputs``.
    Nested models are walked into. Returns the values of the model outputs (flat list).
    """
    graph = graph_of(model)
    values = {id(x): v for x, v in zip(graph.inputs, inputs)}
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if node.operation is None or node.is_input:
                continue
            if any(id(x) not in values for x in node.input_tensors):
                continue
            if is_graph_model(node.operation):
                outs = walk(node.operation, [values[id(x)] for x in node.input_tensors], visit)
            else:
                outs = visit(node, values)
            for x, y in zip(node.outputs, outs):
                values[id(x)] = y
    return [values[id(x)] for x in graph.outputs]
