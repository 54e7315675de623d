"""Quantization-aware training: ``quant_aware`` rewrites a Keras model, ``convert`` exports it to int8.

``quant_aware(model, config)`` rebuilds a Functional or Sequential model (the original is untouched,
weights are copied), nested models included:

* every quantizable layer becomes its quantized twin with a fake-quantized kernel
  (:mod:`kslim.quant.layers`): Conv1D, Conv2D, Conv2DTranspose, DepthwiseConv2D, Dense, EinsumDense,
  Embedding (int8 table), LayerNormalization (every step of its statistics quantized,
  :class:`~kslim.quant.layers.QuantLayerNormalization`). ``SeparableConv2D`` is split into a quantized depthwise and a quantized 1x1
  conv (what TFLite runs anyway) with an activation quantizer between them. A ``MultiHeadAttention`` is
  expanded into a nested model of the same name holding its projections (``QuantEinsumDense``) and its
  attention ops, each with its own range, so that it converts to int8 FULLY_CONNECTED / BATCH_MATMUL /
  SOFTMAX. An LSTM, GRU or SimpleRNN of fixed sequence length (alone or in a ``Bidirectional``) is
  unrolled into a nested model of the same name (:mod:`kslim.graph.unroll`: its input and recurrent
  projections as Dense layers, each step's gates as element-wise layers), so that it converts to int8
  ops instead of a float loop;
* a BatchNormalization right after a quantized conv/dense (SeparableConv2D's pointwise conv,
  Conv1D, Conv2DTranspose and Dense included) is folded into it (see :mod:`kslim.quant.fold`); one
  that cannot be folded (after an activation, a pooling, an Add ...) becomes a
  :class:`~kslim.quant.layers.QuantBatchNormalization`, an int8 per-channel 1x1 depthwise conv;
* an :class:`~kslim.quant.layers.ActivationQuantizer` is put on each model input and on the output of
  every operation (layer or ``keras.ops`` node) to which TFLite gives its own quantization parameters:
  a quantized conv/dense or an Add is quantized after the ReLU/ReLU6 that follows it (TFLite fuses
  that activation); nothing is put after operations whose int8 kernel keeps the scale of their input
  (``config.passthrough_layer_type``: max/average pooling, reshape, padding, slicing, dropout ...,
  and the same ``keras.ops``: pad, split, reshape, transpose, indexing ...) nor after an Embedding; the
  inputs of a Concatenate (and ``keras.ops.concatenate``/``stack``, Maximum, Minimum) share the
  concatenation's range when nothing else reads them; the outputs of softmax, sigmoid and tanh get
  the fixed ranges TFLite's int8 kernels impose (:func:`kslim.quant.ops.fixed_output_range`). A
  non-fusable activation inside a conv/dense (e.g. ``softmax``) is split out into an ``Activation``
  layer so that both tensors get a range.

Composite layers (a layer whose ``call()`` runs Keras layers and ``keras.ops``, as keras-hub blocks
are written) are first expanded by :func:`kslim.graph.keras_graph.expand_composites` into nested
models of the same name, whose layers are then quantized like any other.

Nested models stay nested: each comes back as a nested Functional model of the same name with its
layers quantized (a model used twice stays one shared model), so ``q.get_layer("base").trainable =
False`` works. Folding, fusing and quantizer placement are decided on the whole graph, across the
nesting boundaries: a nested model gets no quantizer on its inputs (the caller's tensor already has
one), and a conv at the end of a nested model followed by a ReLU outside it is quantized after the
ReLU. (A nested model called with ``training=False``, as in the transfer-learning guides, still
gets ``training=True`` from ``fit`` in Keras 3 -- the caller's value overrides the recorded one -- so
its activation quantizers learn their ranges like the others.) Layers are named by path,
``"outer/inner"``, in ``skip`` / ``only_layers`` (a bare name is accepted when it is unique at
every depth).

Layers QAT leaves float are listed, with the reason, in the returned model's ``kslim_unquantized``
attribute (``{path: reason}``), and in a warning for those kslim could not quantize (not those
``skip`` & co. asked for): layer types without a quantized twin (Conv3D: TFLite has no int8
CONV_3D; ConvLSTM2D, GroupNormalization ...), unsupported settings (channels-first, grouped 1-D conv ...),
attention, recurrent (no fixed length, masked ...) and composite layers that could not be expanded.

The result trains with ``fit`` like any Keras model, saves as ``.keras``, and
:func:`convert` turns it into a TFLite model with int8 kernels (per-channel scales), int32 biases and
int8 activations, without a representative data set.

Example:
    >>> import keras
    >>> from kslim.quant import QuantConfig, quant_aware, activation_quantizers
    >>> L = keras.layers
    >>> m = keras.Sequential([keras.Input((16, 16, 1), name="image"), L.Conv2D(4, 3, name="conv"),
    ...                       L.ReLU(name="relu"), L.Flatten(name="flat"), L.Dense(10, name="logits")])
    >>> q = quant_aware(m, QuantConfig(weight_bits=8))
    >>> [l.name for l in activation_quantizers(q)]
    ['image_quant', 'relu_quant', 'logits_quant']
    >>> q.kslim_unquantized
    {}
"""

import contextlib
import warnings
from dataclasses import dataclass, field

import numpy as np

from kslim.errors import ConversionError, ModelError, UnsupportedLayerError
from kslim.validation import check_model
from kslim.graph import keras_graph as kg
from kslim.quant import ops
from kslim.quant.config import NOT_QUANTIZABLE, QUANTIZABLE_LAYER_TYPES, QuantConfig
from kslim.quant.fold import can_fold, fold_kind, folded_weights

# quantized ops into which TFLite fuses a following ReLU / ReLU6 (TRANSPOSE_CONV does not: checked)
_FUSING_TYPES = ("Conv1D", "Conv2D", "DepthwiseConv2D", "Dense", "SeparableConv2D", "BatchNormalization", "Add")
# keras.ops operations whose int8 TFLite kernel writes its output with the scale of its (first) input
_SAME_SCALE_OPS = (
    "Reshape", "Transpose", "Pad", "Split", "ArraySplit", "Hsplit", "Vsplit", "Dsplit", "GetItem", "Slice",
    "Squeeze", "ExpandDims", "Take", "TakeAlongAxis", "Tile", "BroadcastTo", "Repeat", "Flip", "Fliplr",
    "Flipud", "Roll", "Moveaxis", "Swapaxes", "Ravel", "Max", "Amax", "Min", "Amin", "Unstack", "MaxPool",
    "AveragePool", "DepthToSpace", "SpaceToDepth", "Resize", "CropImages", "PadImages", "Copy", "StopGradient",
)
# operations whose inputs and output share one scale (TFLite requires it): layers and keras.ops
_MERGE_LAYERS = ("Concatenate", "Maximum", "Minimum")
_MERGE_OPS = ("Concatenate", "Stack", "Hstack", "Vstack", "Dstack", "Maximum", "Minimum")
# keras.ops operations with a fixed int8 output range (kslim.quant.ops.fixed_output_range)
_FIXED_RANGE_OPS = {"Softmax": "softmax", "Sigmoid": "sigmoid", "Tanh": "tanh", "LogSoftmax": "log_softmax"}
_FUSABLE_OPS = ("Relu", "Relu6")
# reasons that are the user's own choice: listed in kslim_unquantized, not warned about
_CHOSEN = ("skip", "skip_pattern", "only_layers", "quantizable_layer_type")


def _keras_class(name):
    import keras

    return getattr(keras.layers, name, None)


def _twin(layer):
    """``(quantized class name, keras base class)`` of ``layer`` from its rule (:func:`kslim.rules.get`, MRO
    lookup, so subclasses count), or None when kslim has no quantized twin for it. The name is
    ``"SeparableConv2D"`` for a separable conv (split into a quantized depthwise + pointwise pair)."""
    import kslim.rules
    from kslim.quant import layers as qlayers

    qname = getattr(kslim.rules.get(layer), "quant_class", None)
    if qname == "SeparableConv2D":
        base = _keras_class("SeparableConv2D")
    elif isinstance(qname, str) and qname.startswith("Quant") and getattr(qlayers, qname, None) is not None:
        base = _keras_class(qname[len("Quant"):])  # e.g. QuantMultiHeadAttention names no class: None
    else:
        return None
    if base is None or not isinstance(layer, base):  # a rule shared with a kind the twin does not cover
        return None
    return qname, base


def _kind(layer):
    """The keras class name ``layer`` is quantized as (its registered base for a subclass), else its own."""
    twin = _twin(layer) if kg.is_layer(layer) else None
    return twin[1].__name__ if twin is not None else type(layer).__name__


def is_quantized(model):
    """True if ``model`` contains kslim quantization layers (i.e. came from :func:`quant_aware`)."""
    return _first_quant_layer(model) is not None


def _first_quant_layer(model):
    from kslim.quant.layers import QUANT_LAYERS, ActivationQuantizer

    return next((l for l in _all_layers(model) if isinstance(l, (ActivationQuantizer, *QUANT_LAYERS))), None)


def _all_layers(model):
    """Every layer of ``model`` and of its nested models (each once), in ``model.layers`` order."""
    import keras

    seen = set()

    def visit(m):
        for layer in m.layers:
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            yield layer
            yield from getattr(layer, "step_quantizers", ())  # QuantLayerNormalization's inner ranges
            if isinstance(layer, keras.Model):
                yield from visit(layer)

    yield from visit(model)


def activation_quantizers(model):
    """The :class:`~kslim.quant.layers.ActivationQuantizer` layers of ``model``, in graph order.

    Graph order is the topological order of the model (inputs first), nested models in place; for
    each quantizer of the top model, ``layer.input`` is the tensor whose range it holds. The step
    quantizers inside a :class:`~kslim.quant.layers.QuantLayerNormalization` follow that layer.
    """
    from kslim.quant.layers import ActivationQuantizer

    return [l for l in _all_layers(model) if isinstance(l, ActivationQuantizer)]


# ---------------------------------------------------------------------------------------- the flat graph
@dataclass(eq=False)
class _Leaf:
    """One call of a leaf operation (layer or keras.ops node) at one place of the flattened graph."""

    node: object
    path: str
    inputs: list          # flat tensor keys
    outputs: list         # flat tensor keys

    @property
    def op(self):
        return self.node.operation


def _call_signature(node):
    """Shapes and constants of one call."""
    args, kwargs = kg.node_arguments(node)
    return tuple(tuple(t.shape) for t in kg.tensor_args(args, kwargs)), repr(kg.node_constants(node))


def _same_call(a, b):
    """Whether two :func:`_call_signature` s can be the same call: equal constants, and shapes equal
    wherever both know a dimension. kslim's own traces of a composite layer call its sublayers at fixed
    batch sizes and sequence lengths, which leaves such nodes on them next to the user's ``None`` ones."""
    if a[1] != b[1] or len(a[0]) != len(b[0]):
        return False
    return all(len(x) == len(y) and all(i is None or j is None or i == j for i, j in zip(x, y))
               for x, y in zip(a[0], b[0]))


class _Flat:
    """``model`` flattened into leaf calls across nested models and expanded attention layers.

    Tensors are integer keys: a nested model's input shares the key of the tensor it is called on and
    a nested output the key of the inner tensor, so producers and consumers are seen across the
    nesting. A nested model called twice has its leaves listed twice (one :class:`_Leaf` per call).
    """

    def __init__(self, model, expand=None):
        self.expand = expand                 # expand(layer, path) -> True to ask the rule's quant_expansion
        self.leaves, self.producer, self.consumers = [], {}, {}
        self.calls = {}                      # id(operation) -> [_Leaf]
        self.paths = {}                      # path -> leaf operation (first path of each)
        self.op_path = {}                    # id(operation) -> its first path
        self.graphs = {}                     # path -> nested model or expanded layer
        self.expansions = {}                 # id(node) -> (expansion model, number of outputs)
        self.not_expanded = {}               # path -> reason
        self._expanded = {}                  # id(layer) -> expansion model, or why it has none
        self._count = 0
        graph = kg.graph_of(model)
        self.input_tensors = list(graph.inputs)
        self.inputs = [self._key() for _ in graph.inputs]
        self.outputs = set(kg.walk(model, self.inputs, self._visit, enter=self._enter))

    def _key(self):
        self._count += 1
        return self._count

    def _enter(self, node, values, prefix):
        sub = node.operation
        path = prefix + sub.name
        self.graphs.setdefault(path, sub)
        return kg.walk(sub, [values[id(t)] for t in kg.node_inputs(node)], self._visit, enter=self._enter,
                       prefix=path + "/")

    def _expansion(self, node):
        op = node.operation
        if id(op) not in self._expanded:
            signatures = [_call_signature(n) for n in kg.layer_nodes(op)]
            try:
                if any(not _same_call(signatures[0], sig) for sig in signatures[1:]):
                    raise kg.NotExpandable("it is called several times with different arguments")
                import kslim.rules

                self._expanded[id(op)] = kslim.rules.get(op).quant_expansion(op, node)
            except kg.NotExpandable as e:
                self._expanded[id(op)] = e
        sub = self._expanded[id(op)]
        if isinstance(sub, kg.NotExpandable):
            raise sub
        return sub

    def _visit(self, node, values, prefix):
        op = node.operation
        path = prefix + op.name
        if self.expand is not None and self.expand(op, path) and path not in self.not_expanded:
            try:
                sub = self._expansion(node)
            except kg.NotExpandable as e:
                self.not_expanded[path] = f"{type(op).__name__} not expanded: {e}"
            else:
                self.graphs.setdefault(path, op)
                n = len(kg.node_outputs(node))
                self.expansions[id(node)] = (sub, n)
                args, kwargs = kg.node_arguments(node)
                ins = [values[id(t)] for t in kg.tensor_args(args, kwargs)]
                return kg.walk(sub, ins, self._visit, enter=self._enter, prefix=path + "/")[:n]
        leaf = _Leaf(node, path, [values[id(t)] for t in kg.node_inputs(node)],
                     [self._key() for _ in kg.node_outputs(node)])
        self.leaves.append(leaf)
        self.calls.setdefault(id(op), []).append(leaf)
        self.paths.setdefault(path, op)
        self.op_path.setdefault(id(op), path)
        for k in leaf.inputs:
            self.consumers.setdefault(k, []).append(leaf)
        for i, k in enumerate(leaf.outputs):
            self.producer[k] = (leaf, i)
        return leaf.outputs

    def tensor(self, key):
        """The KerasTensor (in the original model) behind a key."""
        if key in self.producer:
            leaf, i = self.producer[key]
            return kg.node_outputs(leaf.node)[i]
        return self.input_tensors[self.inputs.index(key)]


# ---------------------------------------------------------------------------------------- planning
@dataclass
class _Plan:
    quantize: dict = field(default_factory=dict)       # id(layer) -> quantized class name (or "separable")
    folded: dict = field(default_factory=dict)         # id(bn) -> producer layer
    fold_into: dict = field(default_factory=dict)      # id(producer) -> bn layer
    split: set = field(default_factory=set)            # id(layer) whose activation is split out
    out_quant: dict = field(default_factory=dict)      # (id(node), i) -> "learned", "output" or a fixed (lo, hi)
    quantize_inputs: set = field(default_factory=set)  # indices of the model inputs that get a quantizer
    unquantized: dict = field(default_factory=dict)    # path -> reason


def _activation_name(layer):
    return getattr(getattr(layer, "activation", None), "__name__", None)


def _is_fusable_activation(op):
    import keras

    if not kg.is_layer(op):
        return type(op).__name__ in _FUSABLE_OPS
    if isinstance(op, keras.layers.ReLU):
        return (not op.negative_slope and not op.threshold
                and op.max_value in (None, 6.0, 6))
    if isinstance(op, keras.layers.Activation):
        return _activation_name(op) in ("relu", "relu6")
    return False


def _has_fusable_activation(layer):
    return _activation_name(layer) in (None, "linear", "relu", "relu6")


def _is_plain(layer):
    return _activation_name(layer) in (None, "linear")


def _fixed_range(op):
    """The fixed int8 output range of a softmax / sigmoid / tanh operation, else None."""
    import keras

    if not kg.is_layer(op):
        return ops.fixed_output_range(_FIXED_RANGE_OPS.get(type(op).__name__))
    if isinstance(op, keras.layers.Softmax):
        return ops.fixed_output_range("softmax")
    if isinstance(op, keras.layers.Activation):
        return ops.fixed_output_range(_activation_name(op))
    return None


def _check_model(model):
    check_model(model, "quant_aware()")
    kg.graph_of(model)  # ModelError for subclassed models and Sequentials without an input shape
    bad = _first_quant_layer(model)
    if bad is not None:
        raise ModelError(
            f"Model {model.name!r} is already quantized (layer {bad.name!r} is a {type(bad).__name__}); "
            "pass the float model to quant_aware."
        )
    for layer in _all_layers(model):
        if getattr(layer, "quantization_mode", None):
            raise ModelError(
                f"Layer {layer.name!r} is already quantized by Keras (quantization_mode="
                f"{layer.quantization_mode!r}); pass the float model."
            )


class _Names:
    """skip / only_layers / skip_pattern resolved to paths of the flat graph."""

    def __init__(self, config, model):
        self.config = config
        self.model = model
        self.skip, self.only = {}, None
        self.pending = {}                                  # field -> names not found before expansion
        self._resolve(kg.layer_paths(model), first=True)

    def _resolve(self, paths, first=False):
        paths = sorted(paths)
        for field_name in ("skip", "only_layers"):
            names = getattr(self.config, field_name)
            if names is None:
                continue
            if field_name == "only_layers" and self.only is None:
                self.only = {}
            target = self.skip if field_name == "skip" else self.only
            todo = names if first else self.pending.get(field_name, ())
            for name in todo:
                try:
                    target[kg.resolve_path(paths, name, model_name=self.model.name)] = name
                except ModelError as e:
                    if first:
                        self.pending.setdefault(field_name, []).append(name)
                    else:
                        raise ModelError(f"{field_name}: {e}") from None

    def finish(self, flat):
        """Resolve the names that only exist inside expanded layers (raises for unknown ones)."""
        self._resolve(set(flat.paths) | set(flat.graphs) | set(kg.layer_paths(self.model)))

    @staticmethod
    def _under(path, chosen):
        return next((p for p in chosen if path == p or path.startswith(p + "/")), None)

    def skipped(self, path):
        """The config field that keeps ``path`` float, or None."""
        if self._under(path, self.skip):
            return "skip"
        pattern = next((p for p in self.config.skip_pattern if p in path), None)
        if pattern is not None:
            return f"skip_pattern {pattern!r}"
        if self.only is not None and not self._under(path, self.only):
            return "only_layers"
        return None


def _unsupported_setting(layer, rank, channels=None):
    """Why a layer of a quantizable type cannot be quantized with its settings (None if it can): the generic
    refusals here, the layer type's own from its rule (:meth:`kslim.rules.LayerRule.quant_refusal`)."""
    import kslim.rules

    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return f"{_kind(layer)} with data_format={layer.data_format!r}: kslim quantizes channels-last layers only"
    reason = kslim.rules.get(layer).quant_refusal(layer, rank, channels)
    if reason:
        return reason
    if getattr(layer, "lora_enabled", False):
        raise ModelError(f"Layer {layer.name!r} has LoRA enabled; merge it before quantizing.")
    return None


def _extra_config(layer, base):
    """The ``get_config()`` keys of a subclass ``layer`` that its Keras ``base`` class does not take."""
    import inspect

    try:
        cfg = layer.get_config()
    except Exception:  # noqa: BLE001 -- a failing get_config() is reported where the copy is made
        return []
    params = set()
    for cls in type(layer).__mro__:
        if cls is base or issubclass(base, cls) and cls.__module__.startswith("keras."):
            params |= set(inspect.signature(cls.__init__).parameters)
    generic = {"name", "trainable", "dtype", "autocast", "input_shape", "batch_input_shape", "batch_size",
               "input_dim", "activity_regularizer"}
    return sorted(k for k in cfg if k not in params and k not in generic)


def _select(flat, names, config, plan, quantize):
    """Fill ``plan.quantize`` (and ``plan.unquantized``) with the layers to quantize."""
    if not quantize:
        return
    for calls in flat.calls.values():
        leaf = calls[0]
        layer, path = leaf.op, leaf.path
        if not kg.is_layer(layer):
            continue
        tname = type(layer).__name__
        why = names.skipped(path)
        twin = _twin(layer)
        if twin is None:
            if layer.weights and tname in QUANTIZABLE_LAYER_TYPES and tname not in config.quantizable_layer_type:
                plan.unquantized.setdefault(path, why or f"quantizable_layer_type excludes {tname}")
            elif layer.weights:
                plan.unquantized.setdefault(path, why or NOT_QUANTIZABLE.get(
                    tname, f"kslim has no quantized version of {tname}: its weights stay float"))
            continue
        qname, base = twin
        if type(layer).call is not base.call:
            if layer.weights:
                plan.unquantized.setdefault(path, why or (
                    f"{tname} overrides call(); kslim cannot know its maths: its weights stay float"))
            continue
        extra = _extra_config(layer, base) if type(layer) is not base else None
        if extra:
            plan.unquantized.setdefault(path, why or (
                f"{tname} has constructor arguments {base.__name__} does not take ({', '.join(extra)}); kslim "
                "cannot know what they change: its weights stay float"))
            continue
        tname = base.__name__
        enclosing = next((type(flat.graphs[p]).__name__ for p in flat.graphs
                          if path.startswith(p + "/") and not kg.is_graph_model(flat.graphs[p])), None)
        if tname not in config.quantizable_layer_type and enclosing not in config.quantizable_layer_type:
            plan.unquantized[path] = f"quantizable_layer_type excludes {tname}"
            continue
        if why is not None:
            plan.unquantized[path] = why
            continue
        shape = kg.node_inputs(leaf.node)[0].shape if kg.node_inputs(leaf.node) else None
        why = _unsupported_setting(layer, None if shape is None else len(shape), None if not shape else shape[-1])
        if why is not None:
            plan.unquantized[path] = why
            continue
        plan.quantize[id(layer)] = "separable" if qname == "SeparableConv2D" else qname
    if names.only is not None:
        for path, name in names.only.items():
            layer = flat.paths.get(path)
            if layer is not None and id(layer) not in plan.quantize and path not in flat.graphs:
                raise UnsupportedLayerError(
                    f"only_layers: layer {name!r} is a {type(layer).__name__}, which cannot be quantized "
                    f"({plan.unquantized.get(path, 'it has no weights to quantize')}); quantizable types: "
                    f"{list(config.quantizable_layer_type)}."
                )


def _fold(flat, config, plan, quantize):
    """Fill ``plan.folded`` / ``plan.fold_into``: BNs folded into the conv/dense that feeds them."""
    import keras

    if not config.fold_batch_norm:
        return
    for leaf in flat.leaves:
        bn = leaf.op
        if not isinstance(bn, keras.layers.BatchNormalization) or len(flat.calls[id(bn)]) != 1:
            continue
        src = leaf.inputs[0]
        if src not in flat.producer:
            continue
        producer = flat.producer[src][0].op
        if not kg.is_layer(producer) or len(flat.calls[id(producer)]) != 1:
            continue
        if quantize and id(producer) not in plan.quantize:
            continue
        if not quantize and fold_kind(producer) is None:
            continue
        if len(flat.consumers.get(src, [])) != 1 or src in flat.outputs:
            continue
        if not can_fold(producer, bn, len(flat.tensor(src).shape)):
            continue
        plan.folded[id(bn)] = producer
        plan.fold_into[id(producer)] = bn
        plan.quantize.pop(id(bn), None)
        plan.unquantized.pop(flat.op_path[id(bn)], None)


def _is_passthrough(op, config, plan):
    tname = type(op).__name__
    if not kg.is_layer(op):
        return tname in _SAME_SCALE_OPS
    return tname in config.passthrough_layer_type or plan.quantize.get(id(op)) == "QuantEmbedding"


def _is_merge(op, config):
    tname = type(op).__name__
    if tname in config.passthrough_layer_type:
        return False
    return tname in (_MERGE_LAYERS if kg.is_layer(op) else _MERGE_OPS)


def _place_quantizers(flat, config, plan):
    """Fill ``plan.out_quant`` / ``plan.quantize_inputs``: which tensors get an activation quantizer."""
    if config.quantize_inputs:
        plan.quantize_inputs = {i for i, t in enumerate(flat.input_tensors) if _is_float(t)}

    def effective_consumers(key):
        out = []
        for c in flat.consumers.get(key, []):
            if id(c.op) in plan.folded:
                out.extend(effective_consumers(c.outputs[0]))
            else:
                out.append(c)
        return out

    def is_output(key):
        return key in flat.outputs or any(id(c.op) in plan.folded and is_output(c.outputs[0])
                                          for c in flat.consumers.get(key, []))

    def spec(leaf, i):
        """What the i-th output of this call needs: None, "learned", "output" (a model output) or a fixed (lo, hi)."""
        key = leaf.outputs[i]
        op = leaf.op
        if not _is_float(kg.node_outputs(leaf.node)[i]) or id(op) in plan.fold_into:
            return None
        owner = plan.folded.get(id(op), op)
        tname = _kind(owner)
        if owner is op and _is_passthrough(op, config, plan):
            return None
        fixed = _fixed_range(op) if owner is op else None
        if id(owner) in plan.split:
            fixed = ops.fixed_output_range(_activation_name(owner))
        if fixed is not None:
            return fixed
        if is_output(key):
            return "output"    # learned, by the default quantizer for DoReFa/BNN activations
        cons = effective_consumers(key)
        fusing = tname in _FUSING_TYPES and (tname == "Add" or id(owner) in plan.quantize)
        if fusing and _is_plain(owner) and len(cons) == 1 and _is_fusable_activation(cons[0].op):
            return None  # quantized after the ReLU that TFLite fuses into this op
        if cons and all(_is_merge(c.op, config) for c in cons):
            return None  # quantized by the concatenation it feeds, with the concatenation's range
        return "learned"

    for leaf in flat.leaves:
        for i in range(len(leaf.outputs)):
            s = spec(leaf, i)
            if s is not None:
                plan.out_quant.setdefault((id(leaf.node), i), s)  # any call of a shared node that needs one


def _split_activations(flat, plan):
    for layer_id in plan.quantize:  # a layer without an activation (Embedding, BN, LN, Rescaling) counts as fusable
        if not _has_fusable_activation(flat.calls[layer_id][0].op):
            plan.split.add(layer_id)


def _plan(model, config, quantize=True):
    """(flat graph, plan, resolved names) of the rewrite of ``model``."""
    import kslim.rules

    names = _Names(config, model)

    def expand(op, path):  # the rule's quant_expansion is asked (it may refuse with the reason)
        return (quantize and type(kslim.rules.get(op)).quant_expansion is not kslim.rules.LayerRule.quant_expansion
                and type(op).__name__ in config.quantizable_layer_type and names.skipped(path) is None)

    flat = _Flat(model, expand=expand)
    names.finish(flat)
    plan = _Plan()
    plan.unquantized.update(flat.not_expanded)
    _select(flat, names, config, plan, quantize)
    _fold(flat, config, plan, quantize)
    if quantize:
        _split_activations(flat, plan)
        _place_quantizers(flat, config, plan)
    return flat, plan, names


# ---------------------------------------------------------------------------------------- rewrite
def _is_float(tensor):
    return "float" in str(tensor.dtype)


def _copy_error(layer, path, what, error):
    return ModelError(
        f"Layer {path!r} ({type(layer).__name__}) cannot be copied for quantization: its {what} raised "
        f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}. Implement "
        f"get_config() returning its constructor arguments (and from_config() if they are not plain values), "
        f"or add {path!r} to skip to keep the layer as it is (it is then shared with the original model)."
    )


def _config_of(layer, path):
    try:
        return kg.layer_config(layer)
    except Exception as e:  # noqa: BLE001 - any failure of user code is reported the same way
        raise _copy_error(layer, path, "get_config()", e) from e


def _from_config(cls, cfg, layer, path):
    try:
        return cls.from_config(cfg)
    except Exception as e:  # noqa: BLE001
        raise _copy_error(layer, path, f"{cls.__name__}.from_config()", e) from e


class _Rewriter:
    """Builds the new model from the flat graph and the plan (clones are made before any wiring)."""

    def __init__(self, model, flat, plan, names, config):
        self.model, self.flat, self.plan, self.names, self.config = model, flat, plan, names, config
        self.new = {}        # id(original layer) -> new layer(s): layer, or (dw, pw) for a separable conv
        self.weights = {}    # id(new layer) -> weights to set after its first call
        self.models = {}     # id(nested model or expanded layer) -> new nested model
        self.quant_names = {}
        self._make_layers()

    # -------------------------------------------------------------- layers
    def _make_layers(self):
        from kslim.quant import layers as qlayers

        plan, config = self.plan, self.config
        for calls in self.flat.calls.values():
            layer, path = calls[0].op, calls[0].path
            if not kg.is_layer(layer) or id(layer) in plan.folded:
                continue
            try:
                cfg = _config_of(layer, path)
            except ModelError:
                if self.names.skipped(path) != "skip":
                    raise
                plan.unquantized[path] = "skip; shared with the original model (its get_config() fails)"
                self.new[id(layer)] = layer
                continue
            qcls = plan.quantize.get(id(layer))
            bn = plan.fold_into.get(id(layer))
            weights = folded_weights(layer, bn) if bn is not None else layer.get_weights()
            quant_args = dict(weight_bits=config.weight_bits, per_channel=config.per_channel,
                              weight_quantizer=config.weight_quantizer, lsq_init=config.lsq_init)
            if qcls is not None and qcls != "separable" and not getattr(qlayers, qcls).LOWBIT:
                # layers without a low-bit twin keep the default quantizer
                quant_args = dict(weight_bits=config.fallback_bits[0], per_channel=config.per_channel)
            if qcls == "separable":
                dw_cfg = {k: cfg[k] for k in ("kernel_size", "strides", "padding", "data_format", "dilation_rate",
                                              "depth_multiplier")}
                dw = qlayers.QuantDepthwiseConv2D(**dw_cfg, use_bias=False, name=f"{layer.name}_dw", **quant_args)
                act = "linear" if id(layer) in plan.split else cfg["activation"]
                pw = qlayers.QuantConv2D(layer.filters, 1, use_bias=layer.use_bias or bn is not None, activation=act,
                                         name=f"{layer.name}_pw", **quant_args)
                self.new[id(layer)] = (dw, pw)
                self.weights[id(dw)] = weights[:1]
                self.weights[id(pw)] = weights[1:]
                continue
            over = {}
            if bn is not None:
                over["use_bias"] = True
            if id(layer) in plan.split:
                over["activation"] = "linear"
            cls = type(layer)
            if qcls is not None:
                cls = getattr(qlayers, qcls)
                over.update(quant_args)
                if getattr(cls, "takes_activation_config", False):
                    over.update(activation_bits=config.fallback_bits[1], momentum=config.moving_rate,
                                activation_mode=config.activation_quantize_type)
            new = _from_config(cls, {**cfg, **over}, layer, path)
            self.new[id(layer)] = new
            self.weights[id(new)] = weights

    def _call_layer(self, layer, path, args, kwargs):
        out = layer(*args, **kwargs)
        weights = self.weights.pop(id(layer), None)
        if weights is not None:
            try:
                layer.set_weights(weights)
            except Exception as e:  # noqa: BLE001
                raise ModelError(
                    f"Layer {path!r} ({type(layer).__name__}): the weights of the original do not fit its copy "
                    f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); its get_config() does not "
                    f"return every constructor argument. Fix get_config() or add {path!r} to skip."
                ) from e
        return out

    def _act_quantizer(self, scope, base, fixed=None, edge=False):
        """The quantizer of one tensor: ``fixed`` range, or learned by ``config.activation_quantizer``
        (DoReFa's [0, 1] and BNN's sign are not put on the model's inputs and outputs (``edge``), which
        get the default quantizer, as the papers keep the first and last layers' inputs and outputs)."""
        from kslim.quant.layers import ActivationQuantizer

        used = self.quant_names.setdefault(id(scope), set())
        name, i = f"{base}_quant", 0
        while name in used:
            i += 1
            name = f"{base}_quant_{i}"
        used.add(name)
        c = self.config
        if fixed is not None:
            q = ActivationQuantizer(bits=8, mode=c.activation_quantize_type, momentum=c.moving_rate, name=name)
            q.set_range(*fixed)
            return q
        algo = c.activation_quantizer
        if edge and algo in ("dorefa", "bnn"):
            algo = "default"
        bits = c.fallback_bits[1] if algo == "default" else c.activation_bits
        return ActivationQuantizer(bits=bits, mode=c.activation_quantize_type, momentum=c.moving_rate,
                                   symmetric=c.activation_symmetric, quantizer=algo, name=name)

    # -------------------------------------------------------------- graphs
    def build(self):
        import keras

        model, plan = self.model, self.plan
        new_inputs = kg.fresh_inputs(model)
        flat_in = keras.tree.flatten(new_inputs)
        scope = object()
        self._reserve(scope, model)
        start = [self._act_quantizer(scope, kg.input_name(t), edge=True)(x) if i in plan.quantize_inputs else x
                 for i, (t, x) in enumerate(zip(self.flat.input_tensors, flat_in))]
        outs = self._graph(model, start, scope)
        return keras.Model(new_inputs, keras.tree.pack_sequence_as(kg.outputs_struct(model), outs), name=model.name)

    def _reserve(self, scope, model):
        used = self.quant_names.setdefault(id(scope), set())
        used.update(node.operation.name for node in kg.nodes(model))

    def _graph(self, model, inputs, scope, prefix=""):
        """Rebuild one graph (the top model, a nested model or an expansion) on new input tensors."""
        import keras

        def visit(node, values, pfx):
            return self._node(node, values, pfx, scope)

        def enter(node, values, pfx):
            sub = node.operation
            args, kwargs = kg.node_call_args(node, values)
            return keras.tree.flatten(self._nested(sub, pfx + sub.name)(*args, **kwargs))

        return kg.walk(model, inputs, visit, enter=enter, prefix=prefix)

    def _nested(self, sub, path):
        import keras

        if id(sub) not in self.models:
            new_inputs = kg.fresh_inputs(sub)
            scope = object()
            self._reserve(scope, sub)
            outs = self._graph(sub, keras.tree.flatten(new_inputs), scope, path + "/")
            new = keras.Model(new_inputs, keras.tree.pack_sequence_as(kg.outputs_struct(sub), outs), name=sub.name)
            if not sub.trainable:
                new.trainable = False
            self.models[id(sub)] = new
        return self.models[id(sub)]

    def _expanded(self, layer, sub, n, path):
        import keras

        if id(layer) not in self.models:
            new_inputs = [keras.Input(batch_shape=tuple(t.shape), dtype=t.dtype) for t in sub.inputs]
            scope = object()
            self._reserve(scope, sub)
            outs = self._graph(sub, new_inputs, scope, path + "/")[:n]
            self.models[id(layer)] = keras.Model(new_inputs if len(new_inputs) > 1 else new_inputs[0],
                                                 outs if n > 1 else outs[0], name=layer.name)
        return self.models[id(layer)]

    def _node(self, node, values, prefix, scope):
        import keras

        op = node.operation
        path = prefix + op.name
        args, kwargs = kg.node_call_args(node, values)
        if id(node) in self.flat.expansions:
            sub, n = self.flat.expansions[id(node)]
            flat = kg.tensor_args(args, kwargs)
            return keras.tree.flatten(self._expanded(op, sub, n, path)(flat if len(flat) > 1 else flat[0]))
        if not kg.is_layer(op):
            outs = keras.tree.flatten(op(*args, **kwargs))  # keras.ops nodes are stateless: reused
        elif id(op) in self.plan.folded:
            outs = [args[0]]
        else:
            outs = keras.tree.flatten(self._layer(op, path, args, kwargs, scope))
        return [self._maybe_quantize(node, i, t, op, scope) for i, t in enumerate(outs)]

    def _layer(self, op, path, args, kwargs, scope):
        import keras

        new = self.new[id(op)]
        if isinstance(op, keras.layers.Add) and len(args[0]) > 2:
            # TFLite adds n > 2 tensors pairwise: each partial sum is an int8 ADD output that needs a range
            x = args[0][0]
            for i, y in enumerate(args[0][1:-1]):
                x = self._act_quantizer(scope, f"{op.name}_partial{i}")(
                    keras.layers.Add(name=f"{op.name}_partial{i}")([x, y]))
            return self._call_layer(new, path, ([x, args[0][-1]],), kwargs)
        if isinstance(new, tuple):  # separable conv: depthwise, quantizer, pointwise
            dw, pw = new
            x = self._call_layer(dw, path, args, kwargs)
            x = self._act_quantizer(scope, dw.name)(x)
            out = self._call_layer(pw, path, (x,), {})
        elif isinstance(op, keras.layers.Activation) and _activation_name(op) == "hard_sigmoid" and not kwargs:
            out = self._hard_sigmoid(scope, op.name, args[0])
        else:
            out = self._call_layer(new, path, args, kwargs)
        if id(op) in self.plan.split:
            out = self._act_quantizer(scope, f"{op.name}_preact")(out)
            if _activation_name(op) == "hard_sigmoid":
                return self._hard_sigmoid(scope, f"{op.name}_act", out)
            act = keras.layers.Activation(op.get_config()["activation"], name=f"{op.name}_act")
            out = act(out)
        return out

    def _hard_sigmoid(self, scope, name, x):
        """``relu6(x + 3) / 6`` (Keras' hard_sigmoid), op by op: TFLite has no hard-sigmoid kernel and
        lowers it to ADD + MUL, whose intermediate needs a range ([0, 6], after the ReLU6 fused into the
        ADD) to be int8. The output range is the quantizer put after the activation, as for any other."""
        import keras

        y = keras.layers.ReLU(6.0, name=f"{name}_relu6")(keras.ops.add(x, 3.0))
        y = self._act_quantizer(scope, f"{name}_relu6", fixed=(0.0, 6.0))(y)
        return keras.ops.multiply(y, 1.0 / 6.0)

    def _maybe_quantize(self, node, i, tensor, op, scope):
        import keras

        s = self.plan.out_quant.get((id(node), i))
        if s is None or not isinstance(tensor, keras.KerasTensor) or not _is_float(tensor):
            return tensor
        if 0 in tuple(tensor.shape):  # an empty tensor (keras-hub's unused (0, ...) outputs) has no range
            return tensor
        fixed = None if s in ("learned", "output") else s
        return self._act_quantizer(scope, op.name, fixed=fixed, edge=s == "output")(tensor)


def rewrite(model, config, quantize=True):
    """Rebuild ``model`` following ``config``: fold BN, and if ``quantize``, insert the QAT layers.

    Internal engine of :func:`quant_aware` and :func:`kslim.quant.fold.fold_batch_norm`. Returns
    ``(new model, plan)``.
    """
    opaque = {}
    if quantize:  # composite layers (a call() made of Keras layers and keras.ops) are seen through
        # a subclass of a layer with a quantized twin is handled as that layer (see _select), not traced
        model = kg.expand_composites(model, known=lambda op: _twin(op) is not None, reasons=opaque)
    flat, plan, names = _plan(model, config, quantize=quantize)
    for path, why in opaque.items():
        if path in plan.unquantized and not plan.unquantized[path].startswith(_CHOSEN):
            plan.unquantized[path] = f"composite layer kslim cannot see through: {why}"
    return _Rewriter(model, flat, plan, names, config).build(), plan


def quant_aware(model, config=None, **overrides):
    """Return a quantization-aware copy of ``model`` (Functional or Sequential, built, nested models allowed).

    Args:
        model: the float Keras model (left untouched; its weights are copied).
        config: a :class:`QuantConfig`, a dict of its fields, or None for the defaults.
        **overrides: individual :class:`QuantConfig` fields, e.g. ``weight_bits=4``.

    Returns:
        A ``keras.Model`` (Functional; nested models come back as nested Functional models of the same
        name). Its attribute ``kslim_unquantized`` is ``{layer path: reason}`` for every layer with
        weights left float (a warning lists those kslim could not quantize).

    Raises:
        ConfigError: a config field has a bad value (the field is named).
        ModelError: the model is already quantized or subclassed, a skip name is unknown, or a layer
            cannot be copied (its ``get_config``/``from_config`` fails: the layer and what to do are named).
        UnsupportedLayerError: ``only_layers`` names a layer of a type that cannot be quantized.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="relu"),
        ...                       keras.layers.Dense(2)])
        >>> q = quant_aware(m, weight_quantize_type="abs_max")
        >>> [type(l).__name__ for l in q.layers][1:3]
        ['ActivationQuantizer', 'QuantDense']
    """
    cfg = QuantConfig.from_dict(config)
    if overrides:
        cfg = QuantConfig.from_dict({**cfg.to_dict(), **overrides})
    _check_model(model)
    q, plan = rewrite(model, cfg, quantize=True)
    unquantized = dict(sorted(plan.unquantized.items()))
    q.kslim_unquantized = unquantized
    left = {p: r for p, r in unquantized.items() if not r.startswith(_CHOSEN)}
    if left:
        lines = "; ".join(f"{p} ({r})" for p, r in list(left.items())[:10])
        more = f" and {len(left) - 10} more" if len(left) > 10 else ""
        warnings.warn(f"quant_aware left {len(left)} layer(s) of {model.name!r} float: {lines}{more}. "
                      "The full list is in the returned model's kslim_unquantized.", stacklevel=2)
    return q


# ---------------------------------------------------------------------------------------- export
def convert(qat_model, inference_input_type="float32", inference_output_type=None, check=True,
            check_data=None, verbose=False, converter_hook=None):
    """Convert a QAT model (from :func:`quant_aware`, trained or calibrated) into an int8 TFLite model.

    The same contract as :func:`kslim.lite.convert` (which converts a QAT model to int8 by default),
    with ``quantize="int8"`` fixed and a model that is not a QAT model refused.

    Weights become int8 (per-channel scales for ``channel_wise_abs_max``), biases int32 and
    activations int8, using the ranges the model learned; no representative data set is needed.
    Lower bit widths: conv/depthwise kernels keep their ``weight_bits`` grid inside int8 storage
    (e.g. codes -7..7 for 4 bits); Dense kernels quantized per channel are re-quantized by the
    converter on the 8-bit grid of the same range (the ``weight_bits`` levels stay distinct but are
    rounded to it); activations below 8 bits are exported on the 8-bit grid of their learned range,
    because TFLite has no sub-8-bit activation kernels. The low-bit quantizers (``weight_quantizer``
    ``"lsq"``, ``"dorefa"``, ``"bnn"``) export their kernels exactly, per-channel Dense included (codes up
    to +-7 as packed INT4 tensors, others int8); see :mod:`kslim.quant.lowbit`.

    Args:
        qat_model: a model returned by :func:`quant_aware` whose activation quantizers have a range
            (trained at least one step, or set with ``ActivationQuantizer.set_range``).
        inference_input_type: ``"float32"`` (a QUANTIZE op at the input) or ``"int8"``.
        inference_output_type: ``"float32"`` or ``"int8"``; defaults to ``inference_input_type``.
        check, check_data, verbose: as in :func:`kslim.lite.convert` (``lite.parity`` gets the
            argmax agreement with the Keras QAT model).
        converter_hook: extra settings on the ``tf.lite.TFLiteConverter``, applied after kslim's.

    Returns:
        :class:`kslim.lite.LiteModel`.

    Raises:
        ModelError: the model has no quantization layers.
        ConversionError: an activation quantizer never got a range, or the converter failed.
    """
    from kslim import lite

    if not is_quantized(qat_model):
        raise ModelError(
            f"Model {qat_model.name!r} has no quantization layers: run kslim.quant.quant_aware on it first "
            "(or use post-training quantization)."
        )
    if inference_output_type is None:
        inference_output_type = inference_input_type
    return lite.convert(qat_model, quantize="int8", inference_input_type=inference_input_type,
                        inference_output_type=inference_output_type, check=check, check_data=check_data,
                        verbose=verbose, converter_hook=converter_hook)


@contextlib.contextmanager
def export_ready(qat_model):
    """The QAT model made ready for the converter, restored afterwards (used by :func:`kslim.lite.convert`).

    Refuses a model with an activation quantizer that never got a range. TFLite has no kernels for
    activations below 8 bits: they are exported on the 8-bit grid of their range. A per-channel
    bias whose entries are all equal ("splat") would be quantized by the converter with the first
    channel's scale only; one ulp on one entry keeps it a dense constant (exact per channel). The
    kernels the converter re-quantizes itself (Dense, projection EinsumDense, Conv2DTranspose per
    channel) are given to it as constants, the values :meth:`quantized_kernel` computes.
    """
    from keras import ops as kops

    missing = [q.name for q in activation_quantizers(qat_model) if not q.calibrated]
    if missing:
        raise ConversionError(
            f"Activation quantizer(s) {missing[:5]}{' ...' if len(missing) > 5 else ''} have no range yet: "
            "train the QAT model (fit) or calibrate it (ActivationQuantizer.set_range) before converting."
        )
    broken = [f"{q.name} {q.range}" for q in activation_quantizers(qat_model) if not np.isfinite(q.range).all()]
    if broken:   # the converter would crash the process on them (LegalizeFakeQuantWithMinMaxVars)
        raise ConversionError(
            f"Activation quantizer(s) {broken[:5]}{' ...' if len(broken) > 5 else ''} learned a non-finite "
            "range: the QAT model produced inf/NaN in training (check the inputs and the learning rate), or "
            "set the range yourself (ActivationQuantizer.set_range) before converting."
        )
    low = [q for q in activation_quantizers(qat_model) if q.bits < 8]
    saved = [q.bits for q in low]
    splat = _splat_biases(qat_model)
    frozen = _requantized_layers(qat_model)
    try:
        for q in low:
            q.bits = 8
        for layer in frozen:
            layer._frozen_kernel = np.asarray(kops.convert_to_numpy(layer.quantized_kernel()))
        for layer, bias in splat:
            nudged = bias.copy()
            nudged.flat[0] = np.nextafter(nudged.flat[0], np.float32(np.inf))
            layer.bias.assign(nudged)
        with warnings.catch_warnings():
            # the converter warns that int8 input statistics were not given: the QAT ranges are used instead
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
            yield qat_model
    finally:
        for q, bits in zip(low, saved):
            q.bits = bits
        for layer, bias in splat:
            layer.bias.assign(bias)
        for layer in frozen:
            layer._frozen_kernel = None


def _requantized_layers(model):
    """The quantized layers whose kernel the converter re-quantizes itself (``requantized_by_converter``)."""
    from kslim.quant.layers import QUANT_LAYERS

    return [layer for layer in _all_layers(model)
            if isinstance(layer, QUANT_LAYERS) and layer.requantized_by_converter()]


def _splat_biases(model):
    """[(layer, bias)] of quantized layers whose bias has > 1 entries, all equal and non-zero."""
    from keras import ops as kops

    from kslim.quant.layers import QUANT_LAYERS

    out = []
    for layer in _all_layers(model):
        if isinstance(layer, QUANT_LAYERS) and layer.per_channel and getattr(layer, "bias", None) is not None:
            b = np.array(kops.convert_to_numpy(layer.bias))
            if b.size > 1 and b.flat[0] != 0 and np.all(b == b.flat[0]):
                out.append((layer, b))
    return out


# the one list of float compute ops lives in kslim.lite (LiteModel.float_ops); re-exported here
from kslim.lite.model import float_ops  # noqa: E402, F401
