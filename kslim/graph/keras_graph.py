"""The one place in kslim that reads Keras' graph and private API.

Keras 3 keeps a functional model as a DAG of ``Node`` objects (edges are ``KerasTensor`` s; each node
records the operation called, its ``SymbolicArguments`` and its outputs), grouped by depth in
``Functional._nodes_by_depth``. Pruning, quantization-aware training, FLOPs counting and distillation
taps all need to walk that DAG, recurse into nested models, rebuild a model with other layers, and see
through *composite* layers (a ``keras.layers.Layer`` whose ``call()`` runs other layers and
``keras.ops``, as most of keras-hub is written). They ask this module; nothing else in kslim touches
``keras.src`` or a private attribute of a Keras object. :func:`check_keras_internals` exercises every
private access on a tiny model, so a Keras upgrade that breaks one fails loudly in one test.

Naming: a layer of the top model is named by its own name; a layer inside a nested model (or an
expanded composite layer) by its path, ``"outer/inner"`` (Keras forbids ``/`` in names, so a path is
never ambiguous). :func:`resolve_path` also accepts a bare name that is unique at every depth.

Example:
    >>> import keras
    >>> from kslim.graph import keras_graph as kg
    >>> inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc")], name="base")
    >>> inp = keras.Input((4,), name="x")
    >>> m = keras.Model(inp, keras.layers.Dense(2, name="head")(inner(inp)))
    >>> sorted(kg.leaf_layers(m)[0])
    ['base/fc', 'head', 'x']
"""

import contextlib
import difflib

import keras
import numpy as np

from kslim.errors import ModelError

KerasTensor = keras.KerasTensor


# ------------------------------------------------------------------------------------------ model kinds
def functional_class():
    """Keras' ``Functional`` class (private module path)."""
    from keras.src.models.functional import Functional

    return Functional


def is_functional(obj):
    """True for a Functional model (not a Sequential, not a subclassed model)."""
    return isinstance(obj, functional_class())


def graph_of(model):
    """The functional graph of ``model``: itself for a Functional, its inner Functional for a Sequential.

    Raises:
        ModelError: a subclassed model (no graph), or a Sequential without a known input shape.
    """
    if isinstance(model, keras.Sequential):
        fn = getattr(model, "_functional", None)
        if fn is None:
            raise ModelError(
                f"Sequential model {model.name!r} has no input shape yet; start it with keras.Input(shape=...) "
                f"or call it on data once before compressing it."
            )
        return fn
    if is_functional(model) and getattr(model, "inputs", None) is not None:
        return model
    raise ModelError(
        f"Model {getattr(model, 'name', model)!r} ({type(model).__name__}) is a subclassed model without a "
        f"functional graph; kslim needs a functional or Sequential Keras model (or wrap the subclassed model's "
        f"layers in one)."
    )


def is_graph_model(op):
    """True for a Functional or Sequential model with a graph (walked into rather than treated as a layer)."""
    if not isinstance(op, keras.Model):
        return False
    try:
        graph_of(op)
    except ModelError:
        return False
    return True


def is_layer(op):
    """True for a ``keras.layers.Layer`` (False for a ``keras.ops`` operation node)."""
    return isinstance(op, keras.layers.Layer)


def is_input_layer(op):
    return isinstance(op, keras.layers.InputLayer)


# ------------------------------------------------------------------------------------------ nodes
def nodes(model):
    """The non-input nodes of ``model``'s own graph (nested models not entered), in topological order."""
    graph = graph_of(model)
    out = []
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                out.append(node)
    return out


def node_inputs(node):
    """The KerasTensors a node consumes (flat)."""
    return list(node.input_tensors)


def node_outputs(node):
    """The KerasTensors a node produces (flat)."""
    return list(node.outputs)


def node_call_args(node, values):
    """``(args, kwargs)`` of the node's call with its KerasTensors replaced by ``values[id(tensor)]``."""
    return node.arguments.fill_in(values)


def node_arguments(node):
    """``(args, kwargs)`` of the node's call as recorded (KerasTensors and constants)."""
    return node.arguments.args, node.arguments.kwargs


def node_constants(node):
    """The non-tensor values among the node's flat call arguments (scalars, arrays, None ...)."""
    return [a for a in node.arguments._flat_arguments if not isinstance(a, KerasTensor)]


def layer_nodes(layer):
    """Every node at which ``layer`` was called (in every graph it is part of)."""
    return list(getattr(layer, "_inbound_nodes", []))


def keras_mask(tensor):
    """The Keras mask a symbolic tensor carries (``Embedding(mask_zero=True)``, ``Masking``), or None."""
    return getattr(tensor, "_keras_mask", None)


def tensor_args(args, kwargs):
    """The KerasTensors among call arguments, in ``keras.tree.flatten`` order (the order
    :func:`expand_call` gives its inputs)."""
    return [a for a in keras.tree.flatten((tuple(args), dict(kwargs))) if isinstance(a, KerasTensor)]


def expand_attention(layer, node):
    """A Functional model (named like ``layer``) running a MultiHeadAttention call op by op.

    The layer is traced with ``return_attention_scores=True``: Keras then takes the explicit path
    (projections, scaled ``einsum``, ``Softmax``, ``einsum``) instead of one ``dot_product_attention``
    op, so that every intermediate tensor can get a range. The model's first output is the
    attention output (the second, the scores, is used only when the call asked for them).

    Raises:
        NotExpandable: with the reason.
    """
    args, kwargs = node_arguments(node)
    if any(keras_mask(t) is not None for t in tensor_args(args, kwargs)):
        raise NotExpandable("its inputs carry a Keras mask, which the expansion would drop")
    return expand_call(layer, args, {**kwargs, "return_attention_scores": True})


def producer(tensor):
    """The operation that produced a KerasTensor (an InputLayer for a model input), or None."""
    hist = getattr(tensor, "_keras_history", None)
    return hist.operation if hist is not None else None


def input_name(tensor):
    """The name of the InputLayer behind a model input tensor (None if it has none)."""
    op = producer(tensor)
    return op.name if op is not None else None


def inputs_struct(model):
    """The model's inputs with their nesting (a tensor, list or dict), as the model was built."""
    return graph_of(model)._inputs_struct


def outputs_struct(model):
    """The model's outputs with their nesting, as the model was built."""
    return graph_of(model)._outputs_struct


def fresh_inputs(model):
    """New ``keras.Input`` tensors like ``model``'s, in the same structure (names kept)."""
    return keras.tree.map_structure(
        lambda t: keras.Input(batch_shape=tuple(t.shape), dtype=t.dtype, name=input_name(t)),
        inputs_struct(model))


def run_through_graph(model, inputs, operation_fn):
    """Keras' own graph executor with ``operation_fn(op) -> callable`` replacing each operation call."""
    return graph_of(model)._run_through_graph(inputs, operation_fn=operation_fn)


def assert_input_compatibility(layer, x):
    """What ``Layer.__call__`` checks of its first input (e.g. the input dimension of a Dense)."""
    layer._assert_input_compatibility(x)


def layer_calls(model):
    """``{id(operation): number of nodes}`` over ``model``'s graph and every nested graph."""
    counts = {}

    def visit(m):
        for node in nodes(m):
            op = node.operation
            counts[id(op)] = counts.get(id(op), 0) + 1
            if is_graph_model(op) and counts[id(op)] == 1:
                visit(op)

    visit(model)
    return counts


def sublayers(layer):
    """The layers a layer owns directly (not recursively)."""
    return list(layer._flatten_layers(include_self=False, recursive=False))


def all_layers(layer):
    """``layer`` and every layer it owns, recursively (depth first)."""
    return list(layer._flatten_layers(include_self=True, recursive=True))


def seed_generators(layer):
    """The ``SeedGenerator`` objects a layer draws random numbers from (Dropout ...)."""
    return list(getattr(layer, "_seed_generators", ()))


def track_variable(layer, variable):
    """Make an existing variable one of ``layer``'s weights (shared, not copied)."""
    layer._track_variable(variable)


def own_weights(layer):
    """Weights created by ``layer`` itself (``add_weight``), not by its sublayers."""
    inner = {id(w) for sub in layer._flatten_layers(include_self=False, recursive=True) for w in sub.weights}
    return [w for w in layer.weights if id(w) not in inner]


def attention_parts(layer):
    """``{"query", "key", "value", "output"}`` -> the EinsumDense sublayers of a built MultiHeadAttention."""
    if not isinstance(layer, keras.layers.MultiHeadAttention):
        return None
    parts = {role: getattr(layer, f"_{role}_dense", None) for role in ("query", "key", "value", "output")}
    if any(p is None or getattr(p, "kernel", None) is None for p in parts.values()):
        return None
    return parts


def attention_inputs(node):
    """``{"query", "value", "key"}`` -> the KerasTensors a MultiHeadAttention node was called with."""
    args, kwargs = node_arguments(node)
    args = list(args)
    query = args[0] if args else kwargs.get("query")
    value = args[1] if len(args) > 1 else kwargs.get("value")
    key = args[2] if len(args) > 2 else kwargs.get("key")
    key = value if key is None else key
    roles = {"query": query, "value": value, "key": key}
    if not all(isinstance(t, KerasTensor) for t in roles.values()):
        return None
    return roles


# ------------------------------------------------------------------------------------------ walking
def walk(model, inputs, visit, *, enter=None, prefix=""):
    """Run ``visit(node, values, prefix)`` over every leaf node of ``model`` in topological order.

    ``values`` maps ``id(KerasTensor)`` to whatever the caller propagates (channel maps, new tensors);
    ``inputs`` are the values of the model's flat inputs. ``visit`` returns the values of
    ``node.outputs``. Nested graph models are walked into (``prefix`` becomes ``"outer/"``) unless
    ``enter(node, values, prefix)`` is given, which then handles the nested call itself and returns its
    outputs. Returns the values of the model's flat outputs.
    """
    graph = graph_of(model)
    values = {id(x): v for x, v in zip(graph.inputs, inputs)}
    for node in nodes(model):
        if any(id(x) not in values for x in node.input_tensors):
            continue
        op = node.operation
        if is_graph_model(op):
            if enter is not None:
                outs = enter(node, values, prefix)
            else:
                outs = walk(op, [values[id(x)] for x in node.input_tensors], visit,
                            prefix=f"{prefix}{op.name}/")
        else:
            outs = visit(node, values, prefix)
        for x, y in zip(node.outputs, outs):
            values[id(x)] = y
    return [values[id(x)] for x in graph.outputs]


def leaf_layers(model):
    """``(layers, names)``: dict path -> layer of every leaf layer, and dict ``id(layer) -> path``.

    A layer of the top model has its own name as path, one inside nested model ``base`` is
    ``"base/conv"``. A layer object that appears in several places keeps its first path.
    """
    layers, names = {}, {}

    def visit(m, prefix):
        for op in graph_of(m).operations:
            if is_graph_model(op):
                visit(op, f"{prefix}{op.name}/")
                continue
            if not is_layer(op) or id(op) in names:
                continue
            if is_input_layer(op) and m is not model:
                continue
            path = prefix + op.name
            layers[path] = op
            names[id(op)] = path

    visit(model, "")
    return layers, names


def layer_paths(model):
    """Every addressable layer of ``model`` (nested models themselves included) as ``{path: layer}``."""
    out = {}

    def visit(m, prefix):
        for layer in m.layers:
            if is_input_layer(layer):
                continue
            path = prefix + layer.name
            out[path] = layer
            if is_graph_model(layer):
                visit(layer, path + "/")

    if is_graph_model(model):
        visit(model, "")
    return out


def resolve_path(paths, name, what="layer", model_name=None, owner=None):
    """The canonical path in ``paths`` for ``name``: itself, or the one path ending in ``/name``.

    Raises ModelError naming close matches when it is unknown, or the candidates when ambiguous;
    ``owner`` (e.g. ``"teacher model 'vgg'"``) or ``model_name`` says whose layers these are.
    """
    paths = list(paths)
    owner = owner or (f"model {model_name!r}" if model_name else "the model")
    if not isinstance(name, str) or not name:
        raise ModelError(f"{what} name must be a non-empty string, got {name!r}.")
    if name in paths:
        return name
    candidates = [p for p in paths if p.endswith("/" + name)]
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        raise ModelError(f"{what} name {name!r} is ambiguous in {owner}: it matches {candidates}. Give the full path.")
    names = paths + sorted({p.rsplit("/", 1)[-1] for p in paths})
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f" Close matches: {close}." if close else f" It has {len(paths)} layers, e.g. {paths[:8]}."
    raise ModelError(f"No {what} {name!r} in {owner}.{hint}")


# ------------------------------------------------------------------------------------------ rebuilding
def rebuild(model, leaf_fn, name=None):
    """A new model with ``model``'s structure, each leaf node's call replaced by ``leaf_fn``.

    ``leaf_fn(node, path, args, kwargs)`` gets a leaf node, the path of its operation and the call
    arguments already mapped onto the new graph, and returns the node's outputs in the new graph.
    Nested graph models are rebuilt as nested Functional models of the same name (their inputs shaped
    like the tensors they are first called on), once per model object: a nested model used twice
    stays one shared model. The original model is not modified.
    """
    cache = {}

    def build_graph(m, new_inputs, prefix):
        def visit(node, values, pfx):
            args, kwargs = node_call_args(node, values)
            op = node.operation
            out = leaf_fn(node, f"{pfx}{op.name}", args, kwargs)
            return keras.tree.flatten(out)

        def enter(node, values, pfx):
            sub = node.operation
            args, kwargs = node_call_args(node, values)
            if id(sub) not in cache:
                flat = [values[id(x)] for x in node.input_tensors]
                sub_inputs = [keras.Input(batch_shape=tuple(t.shape), dtype=t.dtype, name=input_name(x))
                              for t, x in zip(flat, graph_of(sub).inputs)]
                outs = build_graph(sub, sub_inputs, f"{pfx}{sub.name}/")
                cache[id(sub)] = keras.Model(
                    inputs=keras.tree.pack_sequence_as(inputs_struct(sub), sub_inputs),
                    outputs=keras.tree.pack_sequence_as(outputs_struct(sub), outs),
                    name=sub.name)
            return keras.tree.flatten(cache[id(sub)](*args, **kwargs))

        return walk(m, new_inputs, visit, enter=enter, prefix=prefix)

    graph = graph_of(model)
    new_inputs = [keras.Input(batch_shape=tuple(x.shape), dtype=x.dtype, name=input_name(x)) for x in graph.inputs]
    outputs = build_graph(model, new_inputs, "")
    return keras.Model(inputs=keras.tree.pack_sequence_as(inputs_struct(model), new_inputs),
                       outputs=keras.tree.pack_sequence_as(outputs_struct(model), outputs),
                       name=name or model.name)


# ------------------------------------------------------------------------------------------ -inf pads
#: a constant pad value at or below this stands for -inf ("never the max"); int8 cannot represent it
HUGE_NEGATIVE_PAD = -1e9


def _pool_window(op, rank):
    """``(spatial axes, pool sizes or None for a global pool)`` of a max-pooling op on a rank-``rank``
    input, or None when ``op`` is not a max pool this rewrite knows to be safe (``padding="valid"``)."""
    L = keras.layers
    if isinstance(op, (L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D)):
        sizes = None
    elif isinstance(op, (L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D)) or \
            (not is_layer(op) and type(op).__name__ == "MaxPool"):
        if str(getattr(op, "padding", "")).lower() != "valid":
            return None
        sizes = getattr(op, "pool_size", None)
        sizes = tuple(sizes) if isinstance(sizes, (tuple, list)) else (sizes,) * (rank - 2)
    else:
        return None
    first = (getattr(op, "data_format", None) or keras.config.image_data_format()) == "channels_first"
    axes = tuple(range(2, rank)) if first else tuple(range(1, rank - 1))
    if sizes is not None and (len(sizes) != len(axes) or not all(isinstance(k, int) for k in sizes)):
        return None
    return axes, sizes


def _infinite_pool_pad(node, consumers, graph_outputs):
    """The per-axis ``((before, after), ...)`` of a ``keras.ops.pad(x, ..., constant_values=-inf)`` node
    whose output only feeds max pools that see at least one real value in every window, else None."""
    op = node.operation
    if is_layer(op) or type(op).__name__ != "Pad" or getattr(op, "mode", None) != "constant":
        return None
    args, kwargs = node_arguments(node)
    value = args[1] if len(args) > 1 else kwargs.get("constant_values")
    try:
        value = float(value)
    except (TypeError, ValueError):  # None (zero padding), a tensor ...
        return None
    out = node.outputs[0]
    rank = len(out.shape)
    widths = [tuple(int(p) for p in w) for w in op.pad_width]
    widths = widths * rank if len(widths) == 1 else widths
    users = consumers.get(id(out), [])
    if value > HUGE_NEGATIVE_PAD or len(widths) != rank or not users or id(out) in graph_outputs:
        return None
    for user in users:
        window = _pool_window(user.operation, rank)
        if window is None:
            return None
        axes, sizes = window
        if any(w != (0, 0) for i, w in enumerate(widths) if i not in axes):
            return None  # padded batch or channel entries are whole windows of -inf
        if sizes is not None and any(max(widths[a]) >= k for a, k in zip(axes, sizes)):
            return None  # some window would hold pad values only
    return tuple(widths)


def _edge_pad(x, widths):
    """``x`` padded with copies of its edge values (``mode="symmetric"`` one element at a time)."""
    for step in range(max(max(w) for w in widths)):
        x = keras.ops.pad(x, [(int(b > step), int(a > step)) for b, a in widths], mode="symmetric")
    return x


def replace_infinite_pool_pads(model):
    """``(model', paths)``: ``model`` with each ``-inf`` constant pad in front of a max pool made an edge pad.

    keras-hub's ResNetV2 stem (and the ``MaxPooling2D(padding="valid")`` after an explicit pad pattern
    in general) pads with ``constant_values=-inf`` (or a huge negative stand-in, at most
    :data:`HUGE_NEGATIVE_PAD`) so that the pad never wins a max. An int8 tensor cannot hold ``-inf``:
    its range, and so every value after it, is lost. Here such a pad becomes a pad with copies of the
    nearest real value (edge padding, as one-element ``symmetric`` pads: a TFLite MIRROR_PAD, int8 with
    the input's own range). The max pool result is unchanged, exactly and for every input, when each
    pooling window holds at least one real value: the pad value copied into a window is then the
    value of a real position of that same window (the window's clamped coordinates), which already
    takes part in its max. That is checked per pad: the pad widths on every pooled axis are smaller
    than the pool size (``padding="valid"`` pools; any global max pool), the batch and channel axes
    are not padded, and the pad's only consumers are such max pools (not a graph output). Pads
    without those guarantees are left as they are.

    ``paths`` lists the rewritten pads (``"outer/pad"`` inside nested models); with none, ``model``
    itself is returned.
    """
    found = {}

    def scan(m, prefix):
        consumers = {}
        for node in nodes(m):
            for t in node.input_tensors:
                consumers.setdefault(id(t), []).append(node)
        outs = {id(t) for t in graph_of(m).outputs}
        for node in nodes(m):
            op = node.operation
            if is_graph_model(op):
                scan(op, f"{prefix}{op.name}/")
                continue
            widths = _infinite_pool_pad(node, consumers, outs)
            if widths is not None:
                found[id(node)] = (f"{prefix}{op.name}", widths)

    if not is_graph_model(model):
        return model, []
    scan(model, "")
    if not found:
        return model, []

    def leaf_fn(node, path, args, kwargs):
        if id(node) in found:
            return _edge_pad(args[0], found[id(node)][1])
        return node.operation(*args, **kwargs)

    return rebuild(model, leaf_fn), [path for path, _ in found.values()]


# ------------------------------------------------------------------------------------------ composites
class NotExpandable(Exception):
    """Raised by :func:`expand` with the reason a layer stays opaque."""


class IdentityCall(NotExpandable):
    """Raised by :func:`expand` for a layer whose ``call()`` returns its input unchanged at inference
    (stochastic depth ``DropPath``, a no-op wrapper): kslim treats it as an identity."""

IDENTITY_AT_INFERENCE = "returns its input unchanged at inference"


def _is_builtin(layer):
    return type(layer).__module__.startswith("keras.")


def expandable(layer, known=None):
    """``(True, "")`` if ``layer`` is a composite kslim should see through, else ``(False, reason)``.

    A composite is a user or keras-hub layer (not a built-in Keras layer, not a graph model) whose
    ``call()`` runs other layers and/or ``keras.ops``. ``known(layer)`` says whether a kslim rule
    already handles the layer as a unit (then it is not expanded).
    """
    if not is_layer(layer) or is_graph_model(layer) or is_input_layer(layer):
        return False, "not a composite layer"
    if known is not None and known(layer):
        return False, "handled by its own rule"
    if _is_builtin(layer):
        return False, f"built-in Keras layer {type(layer).__name__}"
    from kslim.graph.holder import WeightHolder

    if isinstance(layer, WeightHolder):
        return False, "not a composite layer"
    if type(layer).call is keras.layers.Layer.call:
        return False, "has no call()"
    own = own_weights(layer)
    if own and _weight_attributes(layer) is None:
        names = ", ".join(sorted({str(getattr(w, "name", "?")) for w in own})[:3])
        return False, (f"owns weights outside its sublayers ({names}) that are not plain attributes: kslim "
                       f"cannot see how call() uses them")
    return True, ""


def _weight_attributes(layer):
    """``{attribute: variable}`` covering every weight ``layer`` owns itself, or None if one is not an attribute."""
    own = own_weights(layer)
    attrs = {k: v for k, v in vars(layer).items() if any(v is w for w in own)}
    if len({id(v) for v in attrs.values()}) != len(own):
        return None
    return attrs


def expand(layer, node):
    """:func:`expand_call` on the arguments recorded at ``node`` (a call of ``layer`` in a graph)."""
    args, kwargs = node_arguments(node)
    return expand_call(layer, args, kwargs)


def expand_call(layer, args, kwargs):
    """A Functional model (named like ``layer``) running ``layer.call`` on symbolic ``args``/``kwargs``.

    The model is built by calling ``layer.call`` (not ``layer.__call__``) on fresh symbolic inputs
    shaped like the KerasTensors among the arguments, so every sublayer call and ``keras.ops`` call
    inside is recorded as a node of the new graph, with the *same* sublayer objects (weights shared).
    Non-tensor arguments are passed as given. The model's inputs are the tensor arguments in the order
    of ``keras.tree.flatten((args, kwargs))``. The expanded model is checked to compute what the layer
    computes on a small random batch.

    A call that cannot be traced with an undefined (``None``) batch size, because it computes with
    the batch size (``ops.tile(token, (ops.shape(x)[0], 1, 1))``, ``ops.shape(x)[0] // n``,
    ``ops.broadcast_to(t, ops.shape(x))``), is traced at two concrete batch sizes instead and made
    batch-free again (see :func:`_expand_batch_dependent`).

    A call whose sublayer returns a non-tensor (``return y, None``: Keras refuses to record such a
    call as a node) is traced again with its weightless composite sublayers run inline (their own
    sublayers and ops become nodes of the expansion).

    Raises:
        NotExpandable: with the reason (the call needs concrete values, returns no tensor, differs ...).
    """
    try:
        return _expand_call(layer, args, kwargs)
    except NotExpandable as e:
        if isinstance(e, IdentityCall) or "All operation outputs must be tensors" not in str(e):
            raise
        try:
            with _inlined_sublayers(layer):
                return _expand_call(layer, args, kwargs)
        except IdentityCall:
            raise
        except NotExpandable:
            raise e from None


@contextlib.contextmanager
def _inlined_sublayers(layer):
    """While active, calling one of ``layer``'s weightless composite sublayers runs its ``call()`` directly."""
    saved = []
    try:
        for sub in all_layers(layer)[1:]:
            cls = type(sub)
            if _is_builtin(sub) or is_graph_model(sub) or cls.call is keras.layers.Layer.call or own_weights(sub):
                continue
            inline = type(cls.__name__, (cls,), {"__call__": lambda self, *a, _call=cls.call, **k: _call(self, *a, **k)})
            saved.append((sub, cls))
            sub.__class__ = inline
        yield
    finally:
        for sub, cls in saved:
            sub.__class__ = cls


def _expand_call(layer, args, kwargs):
    try:
        sub, tensors = _trace_call(layer, args, kwargs)
        for _ in range(8):  # each repair can make the shapes after it known: re-trace until nothing changes
            if not _repair_dynamic_reshapes(sub):
                break
            sub = rebuild(sub, lambda node, path, a, k: node.operation(*a, **k), name=layer.name)
        if _same_outputs(layer, sub, args, kwargs, tensors):
            return sub
        failure = NotExpandable("its traced graph does not compute what its call() computes")
    except IdentityCall:
        raise
    except NotExpandable as e:
        failure = e
    if not any(isinstance(t, KerasTensor) and len(t.shape) and t.shape[0] is None
               for t in keras.tree.flatten((tuple(args), dict(kwargs)))):
        raise failure
    try:
        sub, tensors = _expand_batch_dependent(layer, args, kwargs)
    except NotExpandable:
        raise failure from None
    if not _same_outputs(layer, sub, args, kwargs, tensors):  # checked at a third batch size
        raise failure
    return sub


def _trace_call(layer, args, kwargs, batch=None):
    """``(model, tensors)``: ``layer.call`` traced on fresh inputs like the KerasTensors ``tensors`` of the
    arguments (an undefined batch size given as ``batch`` when not None); see :func:`expand_call`."""
    flat_in = []

    def to_input(t):
        if isinstance(t, KerasTensor):
            shape = tuple(t.shape)
            if batch is not None and len(shape) and shape[0] is None:
                shape = (int(batch), *shape[1:])
            new = keras.Input(batch_shape=shape, dtype=t.dtype)
            flat_in.append((t, new))
            return new
        return t

    new_args, new_kwargs = keras.tree.map_structure(to_input, (tuple(args), dict(kwargs)))
    if not flat_in:
        raise NotExpandable("its call has no tensor input")
    attrs = _weight_attributes(layer) if own_weights(layer) else {}
    if attrs is None:
        raise NotExpandable("owns weights outside its sublayers that are not plain attributes")
    # the layer's own weights become WeightHolder nodes (sharing the variables) while call() is traced
    from kslim.graph.holder import WeightHolder

    anchor = flat_in[0][1]
    held = {a: WeightHolder(shape=v.shape, variable=v, trainable=v.trainable, name=f"{a.strip('_')}")(anchor)
            for a, v in attrs.items()}
    try:
        for a, t in held.items():
            object.__setattr__(layer, a, t)
        out = layer.call(*new_args, **new_kwargs)
    except Exception as e:  # noqa: BLE001 - any failure means: keep it opaque
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise NotExpandable(f"its call() cannot be traced symbolically ({type(e).__name__}: {msg})") from None
    finally:
        for a, v in attrs.items():
            object.__setattr__(layer, a, v)

    def constant_output(c):  # an output computed from no input (DeiTEncoder's empty "all scores"): a holder
        if isinstance(c, KerasTensor) or not hasattr(c, "shape") or not hasattr(c, "dtype"):
            return c
        value = keras.Variable(np.asarray(c), trainable=False, name="constant_output")
        return WeightHolder(shape=value.shape, variable=value, trainable=False)(anchor)

    out = keras.tree.map_structure(constant_output, out)
    flat_out = keras.tree.flatten(out)
    if not flat_out or not all(isinstance(t, KerasTensor) for t in flat_out):
        raise NotExpandable("its call() returns something other than tensors")
    new_ids = {id(new) for _, new in flat_in}
    if len(flat_out) == 1 and id(flat_out[0]) in new_ids:
        raise IdentityCall(IDENTITY_AT_INFERENCE)
    if any(producer(t) is None for t in flat_out):
        raise NotExpandable("its call() returns a tensor not computed from its inputs")
    inputs = [new for _, new in flat_in]
    try:
        sub = keras.Model(inputs=inputs if len(inputs) > 1 else inputs[0], outputs=out, name=layer.name)
    except Exception as e:  # noqa: BLE001
        raise NotExpandable(f"its traced call() is not a valid graph ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None
    return sub, [t for t, _ in flat_in]


def _set_newshape(op, shape):
    """Set a keras.ops Reshape's target shape, in its config too (clones and ``.keras`` files use it)."""
    op.newshape = tuple(shape)
    auto = getattr(op, "_auto_config", None)
    if auto is not None and "newshape" in auto.config:
        auto.config["newshape"] = tuple(shape)


def _repair_dynamic_reshapes(sub):
    """Reshapes traced from ``ops.reshape(x, (ops.shape(x)[0], ...))`` hold ``None`` for the batch size.

    Symbolically ``ops.shape`` gives ``None`` for the batch axis; executed, a ``None`` (with another
    ``-1``) is not a valid shape. The traced output shape is known, so such a reshape is rewritten to
    ``(-1, *output_shape[1:])`` when every non-batch dimension of its output is known. Returns True if
    a reshape was rewritten.
    """
    changed = False
    for node in nodes(sub):
        op = node.operation
        shape = getattr(op, "newshape", None)
        if type(op).__name__ != "Reshape" or is_layer(op) or shape is None or None not in tuple(shape):
            continue
        out = tuple(node.outputs[0].shape)
        if len(out) >= 1 and all(d is not None for d in out[1:]):
            _set_newshape(op, (-1, *out[1:]))
            changed = True
            continue
        shape, in_shape = tuple(shape), tuple(node.input_tensors[0].shape)
        rest = shape[1:]
        # ops.reshape(x, (batch, -1, C)): the batch comes first, the -1 follows from the per-sample size
        if shape[0] is None and None not in rest and list(rest).count(-1) == 1 and \
                all(d is not None for d in in_shape[1:]):
            known = int(np.prod([d for d in rest if d != -1]))
            per_sample = int(np.prod(in_shape[1:]))
            if known and per_sample % known == 0:
                _set_newshape(op, (-1, *[per_sample // known if d == -1 else d for d in rest]))
                changed = True
    return changed


@keras.saving.register_keras_serializable(package="kslim")
class BatchBroadcast(keras.Operation):
    """``ops.tile`` / ``ops.broadcast_to`` of ``x`` whose first axis becomes ``factor`` x the batch size of ``ref``.

    What ``ops.tile(token, (ops.shape(x)[0], 1, 1))`` or ``ops.broadcast_to(t, ops.shape(x))`` compute,
    as a graph node that reads the batch size when it runs (a traced ``keras.ops`` node holds a fixed
    one). ``shape`` is the rest of the repeats (``mode="tile"``) or of the target shape (``"broadcast"``).

    Example:
        >>> import numpy as np
        >>> op = BatchBroadcast("tile", (1, 1))
        >>> tuple(op(np.ones((1, 1, 4)), np.zeros((3, 8))).shape)
        (3, 1, 4)
    """

    def __init__(self, mode, shape, factor=1, *, name=None):
        super().__init__(name=name)
        self.mode, self.shape, self.factor = str(mode), tuple(int(d) for d in shape), int(factor)

    def call(self, x, ref):
        size = self.factor * keras.ops.shape(ref)[0]
        if self.mode == "tile":
            return keras.ops.tile(x, (size, *self.shape))
        return keras.ops.broadcast_to(x, (size, *self.shape))

    def compute_output_spec(self, x, ref):
        rest = self.shape
        if self.mode == "tile":
            rest = tuple(None if d is None else int(d) * r for d, r in zip(x.shape[1:], self.shape))
        return KerasTensor((None, *rest), dtype=x.dtype)

    def get_config(self):
        return {"mode": self.mode, "shape": list(self.shape), "factor": self.factor, "name": self.name}


#: keras.ops nodes whose shape attribute may hold the batch size a call was traced with
_BATCH_SHAPED = {"Reshape": "newshape", "Tile": "repeats", "BroadcastTo": "shape"}


def layer_config(layer):
    """``layer.get_config()``, or, when Keras' own auto-config (the layer does not override
    ``get_config``) raises for a layer whose ``__init__`` takes nothing but base-layer keywords
    (keras-hub builds ``Identity(dtype=policy_object)``, which the auto-config cannot serialise), the
    base-layer config (name, trainable, dtype policy name). Other failures, a layer's own
    ``get_config`` among them, propagate to the caller, which names the layer."""
    import inspect

    try:
        return layer.get_config()
    except Exception:  # noqa: BLE001 - re-raised below unless the layer has no arguments to lose
        if type(layer).get_config is not keras.layers.Layer.get_config:
            raise
        params = [p for p in inspect.signature(type(layer).__init__).parameters.values()
                  if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if any(p.default is inspect.Parameter.empty for p in params):
            raise
        policy = getattr(layer, "dtype_policy", None)
        return {"name": layer.name, "trainable": layer.trainable, "dtype": getattr(policy, "name", None)}


def _op_config(op):
    auto = getattr(op, "_auto_config", None)
    return {k: v for k, v in (auto.config if auto is not None else {}).items() if k != "name"}


def _same_constant(a, b):
    if hasattr(a, "shape") or hasattr(b, "shape"):
        return np.shape(a) == np.shape(b)
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001
        return False


def _expand_batch_dependent(layer, args, kwargs, batches=(3, 5)):
    """``(model, tensors)``: ``layer.call`` traced at two batch sizes, then rebuilt for any batch size.

    The two traces must record the same graph; the only values allowed to differ between them are the
    first entry of a keras.ops ``reshape`` target, ``tile`` repeats or ``broadcast_to`` shape, and only
    as ``factor`` x the batch size. Such a reshape becomes ``(-1, ...)``; such a tile or broadcast a
    :class:`BatchBroadcast` of the first batched input's size. Anything else that depends on the batch
    size (a constant of that shape, another op's argument) keeps the layer opaque.
    """
    (s1, tensors), (s2, _) = (_trace_call(layer, args, kwargs, batch=b) for b in batches)
    n1, n2 = nodes(s1), nodes(s2)
    if len(n1) != len(n2) or any(type(a.operation) is not type(b.operation) for a, b in zip(n1, n2)):
        raise NotExpandable("its call() records a different graph for another batch size")
    plan = {}
    for a, b in zip(n1, n2):
        op, attr = a.operation, _BATCH_SHAPED.get(type(a.operation).__name__)
        ca, cb = node_constants(a), node_constants(b)
        if len(ca) != len(cb) or not all(_same_constant(x, y) for x, y in zip(ca, cb)):
            raise NotExpandable(f"its call() passes keras.ops.{type(op).__name__} a value that depends on the batch size")
        if is_layer(op) or _op_config(op) == _op_config(b.operation):
            continue
        va, vb = (tuple(getattr(o, attr, ()) or ()) if attr else () for o in (op, b.operation))
        if not va or len(va) != len(vb) or va[1:] != vb[1:] or not all(isinstance(v, int) for v in (va[0], vb[0])) \
                or va[0] % batches[0] or vb[0] % batches[1] or va[0] // batches[0] != vb[0] // batches[1] or \
                va[0] <= 0:
            raise NotExpandable(f"its call() gives keras.ops.{type(op).__name__} an argument that depends on the "
                                f"batch size other than as the size of the first axis")
        if va != vb:
            plan[id(a)] = va[0] // batches[0]
    graph = graph_of(s1)
    new_inputs = [keras.Input(batch_shape=(None, *x.shape[1:]) if t.shape and t.shape[0] is None else tuple(x.shape),
                              dtype=x.dtype) for x, t in zip(graph.inputs, tensors)]
    ref = next(x for x, t in zip(new_inputs, tensors) if t.shape and t.shape[0] is None)

    def visit(node, values, prefix):
        a, k = node_call_args(node, values)
        op = node.operation
        if id(node) not in plan:
            return keras.tree.flatten(op(*a, **k))
        name = type(op).__name__
        if name == "Reshape":
            rest = tuple(op.newshape)[1:]
            if -1 in rest:
                rest = tuple(node.outputs[0].shape)[1:]
            return [keras.ops.reshape(a[0], (-1, *rest))]
        x = a[0]
        rest = tuple(getattr(op, _BATCH_SHAPED[name]))[1:]
        if name == "Tile" and (len(rest) + 1 != len(x.shape) or x.shape[0] != 1):
            raise NotExpandable("its call() tiles a batched tensor along the batch axis")
        if not all(isinstance(d, int) and d >= 0 for d in rest):
            raise NotExpandable(f"its call() gives keras.ops.{name} an undefined size besides the batch size")
        return [BatchBroadcast("tile" if name == "Tile" else "broadcast", rest, plan[id(node)])(x, ref)]

    outs = walk(s1, new_inputs, visit)
    sub = keras.Model(inputs=new_inputs if len(new_inputs) > 1 else new_inputs[0],
                      outputs=keras.tree.pack_sequence_as(outputs_struct(s1), outs), name=layer.name)
    return sub, tensors


def _sample(t, rng):
    shape = tuple(2 if d is None else int(d) for d in t.shape)
    dtype = str(t.dtype)
    if "int" in dtype:
        return np.zeros(shape, dtype=dtype)
    if "bool" in dtype:
        return np.ones(shape, dtype=bool)
    return rng.standard_normal(shape).astype(dtype if "float" in dtype else "float32")


def same_outputs(layer, sub, node, tol=1e-4):
    """Whether ``sub`` (an expansion of ``layer``'s call at ``node``) computes what the layer computes,
    on a random batch shaped like the call's tensors."""
    args, kwargs = node_arguments(node)
    return _same_outputs(layer, sub, args, kwargs, tensor_args(args, kwargs), tol)


def _same_outputs(layer, sub, args, kwargs, tensors, tol=1e-4):
    rng = np.random.default_rng(0)
    samples = {id(t): _sample(t, rng) for t in tensors}
    try:
        call_args, call_kwargs = keras.tree.map_structure(
            lambda a: samples[id(a)] if isinstance(a, KerasTensor) else a, (tuple(args), dict(kwargs)))
        want = keras.tree.flatten(layer(*call_args, **call_kwargs))
        got = keras.tree.flatten(sub([samples[id(t)] for t in tensors] if len(tensors) > 1 else samples[id(tensors[0])]))
    except Exception:  # noqa: BLE001
        return False
    if len(want) != len(got):
        return False
    for a, b in zip(want, got):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape != b.shape or not np.allclose(a, b, atol=tol, rtol=tol, equal_nan=True):
            return False
    return True


def expand_composites(model, known=None, reasons=None, _prefix=""):
    """``model`` rebuilt with every expandable composite layer replaced by its expansion.

    Each composite layer (see :func:`expandable`) becomes a nested Functional model of the same name
    whose nodes are the sublayer and ``keras.ops`` calls of its ``call()`` (weights shared with the
    original, nothing copied); composites inside composites are expanded too. Nested models stay
    nested. Returns ``model`` itself when there is nothing to expand. ``reasons`` (a dict, optional)
    receives ``{path: why it stays opaque}`` for the composites that could not be expanded.
    """
    reasons = {} if reasons is None else reasons
    expansions = {}

    def plan(m, prefix):
        """True if any composite below ``m`` gets expanded."""
        found = False
        for node in nodes(m):
            op = node.operation
            path = f"{prefix}{op.name}"
            if is_graph_model(op):
                found |= plan(op, path + "/")
                continue
            if not is_layer(op) or (_is_builtin(op) and not sublayers(op)):
                continue
            ok, why = expandable(op, known)
            if not ok:
                if why not in ("not a composite layer", "handled by its own rule") and not why.startswith("built-in"):
                    reasons.setdefault(path, why)
                continue
            if id(op) in expansions:
                found = True
                continue
            try:
                sub = expand(op, node)
            except NotExpandable as e:
                reasons.setdefault(path, str(e))
                continue
            expansions[id(op)] = (sub, path)
            found = True
        return found

    if not plan(model, _prefix):
        return model
    # expand expansions recursively, innermost first
    done = {}

    def expanded(op):
        if id(op) not in done:
            sub, path = expansions[id(op)]
            done[id(op)] = expand_composites(sub, known, reasons, _prefix=path + "/")
        return done[id(op)]

    def leaf_fn(node, path, args, kwargs):
        op = node.operation
        if id(op) in expansions:
            flat = [a for a in keras.tree.flatten((args, kwargs)) if isinstance(a, KerasTensor)]
            return expanded(op)(flat if len(flat) > 1 else flat[0])
        return op(*args, **kwargs)

    return rebuild(model, leaf_fn)


# ------------------------------------------------------------------------------------------ backend swaps
@contextlib.contextmanager
def backend_functions_replaced(replacements):
    """Within the block, the TensorFlow backend functions named in ``replacements``
    (``{"math.fft2": fn}``: module of ``keras.src.backend.tensorflow``, then function) are ``fn``.

    Every ``keras.ops`` call resolves its backend function when it runs, so a model traced inside the
    block (e.g. exported for TFLite) uses ``fn``; the originals are restored on exit.
    """
    import importlib

    saved = []
    try:
        for dotted, fn in replacements.items():
            module_name, attr = dotted.rsplit(".", 1)
            module = importlib.import_module(f"keras.src.backend.tensorflow.{module_name}")
            saved.append((module, attr, getattr(module, attr)))
            setattr(module, attr, fn)
        yield
    finally:
        for module, attr, fn in reversed(saved):
            setattr(module, attr, fn)


# ------------------------------------------------------------------------------------------ self-check
def check_keras_internals():
    """Exercise every private Keras access of this module on a tiny nested model; raise if one broke.

    Returns the Keras version checked. A failure here after a Keras upgrade names the attribute.
    """
    L = keras.layers
    inner = keras.Sequential([keras.Input((4,)), L.Dense(3, name="fc")], name="base")
    inp = keras.Input((4,), name="x")
    out = L.Dense(2, name="head")(keras.ops.relu(inner(inp)))
    m = keras.Model(inp, out, name="probe")
    problems = []

    def probe(what, fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            problems.append(f"{what}: {type(e).__name__}: {e}")

    probe("keras.src.models.functional.Functional", functional_class)
    probe("Sequential._functional", lambda: graph_of(inner).operations)
    probe("Functional._nodes_by_depth", lambda: nodes(m)[0].operation)
    probe("Node.arguments.fill_in", lambda: node_call_args(nodes(m)[-1], {id(t): t for t in
                                                                           nodes(m)[-1].input_tensors}))
    probe("Node.arguments._flat_arguments", lambda: node_constants(nodes(m)[-1]))
    probe("KerasTensor._keras_history", lambda: input_name(m.inputs[0]) == "x" or 1 / 0)
    probe("Function._inputs_struct/_outputs_struct", lambda: (inputs_struct(m), outputs_struct(m)))
    probe("Function._run_through_graph", lambda: run_through_graph(m, [m.inputs[0]], lambda op: op))
    probe("Layer._assert_input_compatibility", lambda: assert_input_compatibility(m.get_layer("head"),
                                                                                   keras.KerasTensor((None, 3))))
    probe("Layer._flatten_layers", lambda: sublayers(inner))
    probe("Layer._inbound_nodes", lambda: layer_nodes(m.get_layer("head"))[0])
    masked = L.Embedding(5, 2, mask_zero=True)(keras.Input((3,), dtype="int32"))
    probe("KerasTensor._keras_mask", lambda: keras_mask(masked) is not None or 1 / 0)
    probe("rebuild", lambda: rebuild(m, lambda node, path, a, k: node.operation(*a, **k)))

    def _replaced():
        with backend_functions_replaced({"math.fft2": lambda x: ("replaced", x)}):
            assert keras.ops.fft2((np.zeros((2, 2)), np.zeros((2, 2))))[0] == "replaced"

    probe("keras.src.backend.tensorflow.math.fft2 (backend_functions_replaced)", _replaced)
    if problems:
        raise RuntimeError(f"kslim does not work with Keras {keras.__version__}: " + "; ".join(problems))
    return keras.__version__


__all__ = [
    "KerasTensor", "functional_class", "is_functional", "graph_of", "is_graph_model", "is_layer", "nodes",
    "node_inputs", "node_outputs", "node_call_args", "node_arguments", "node_constants", "layer_nodes",
    "producer", "input_name", "inputs_struct", "outputs_struct", "fresh_inputs", "run_through_graph",
    "assert_input_compatibility", "track_variable", "attention_parts", "attention_inputs", "layer_calls", "sublayers", "all_layers", "seed_generators", "own_weights", "walk", "leaf_layers",
    "layer_paths", "resolve_path", "rebuild", "HUGE_NEGATIVE_PAD", "replace_infinite_pool_pads", "NotExpandable", "IdentityCall", "IDENTITY_AT_INFERENCE", "expandable", "expand", "expand_call",
    "expand_composites", "backend_functions_replaced", "keras_mask", "tensor_args", "expand_attention",
    "same_outputs", "check_keras_internals",
]
