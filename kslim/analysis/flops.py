"""Count multiply-accumulates (MACs), FLOPs and parameters of a Keras model, layer by layer.

Shapes come from Keras itself: the model's graph is walked with each layer's
``compute_output_spec`` at the requested input shape (the way ``Functional.compute_output_spec``
does it), so no shape rule is hand-written and the model is not modified. Nested models (a
``keras.applications`` network used as a layer, a Sequential inside a functional model) are
flattened: their layers appear as ``outer/inner`` rows.

Counting convention (per sample, batch size 1):

* ``.macs`` counts the multiply-accumulates of the linear layers only, bias excluded:

  - ``Conv1D/2D/3D``: ``prod(kernel_size) * (C_in / groups) * C_out * prod(output spatial dims)``
  - ``DepthwiseConv1D/2D``: ``prod(kernel_size) * C_in * depth_multiplier * prod(output spatial)``
  - ``SeparableConv1D/2D``: the depthwise part above plus the pointwise part
    ``C_in * depth_multiplier * C_out * prod(output spatial)``
  - ``Conv1D/2D/3DTranspose``: ``prod(kernel_size) * C_in * C_out * prod(input spatial dims)``
  - ``Dense``: ``prod(input dims) * units`` (``in_features * units`` for a 2D input)
  - ``EinsumDense``: output elements x product of the contracted kernel axes
  - ``SimpleRNN/GRU/LSTM``: ``timesteps * gates * (features + units) * units`` (gates 1/3/4)

  This is the convention of the published figures (MobileNet 569 M, MobileNetV2 300 M,
  ResNet50 ~3.9 G MACs at 224x224), which ``flops`` reproduces within 3 % (tested).
* ``.flops`` is ``2 * .macs``.
* ``.elementwise`` counts everything else, kept out of ``.macs``/``.flops``: bias adds and fused
  activations of linear layers (1 op per output element each), ``BatchNormalization`` and other
  normalisations (2 ops per element: scale and shift at inference), activation layers (1 per
  element), ``Add/Subtract/Multiply/Average/Maximum/Minimum`` (``inputs - 1`` per output element),
  pooling (``prod(pool_size)`` per output element), global pooling (1 per input element).
  Reshapes, padding, cropping, up-sampling, ``Concatenate``, ``Dropout``, ``Embedding`` cost 0.
* ``.params`` counts trainable and non-trainable weights (BN moving statistics included), like
  ``model.count_params()``.

Layers with weights that no rule knows (custom layers, subclassed models that cannot be traced)
are listed in ``report.uncounted`` and their MACs are not in the total; add a rule with
:func:`kslim.analysis.register_rule`.
"""

import functools
import math
from dataclasses import asdict, dataclass, field

from kslim.analysis._table import fmt_int, fmt_shape, format_table, human
from kslim.errors import ModelError
from kslim.validation import check_model


@dataclass
class LayerFlops:
    """One row of a :class:`FlopsReport`: a leaf layer call."""

    name: str
    type: str
    input_shape: object
    output_shape: object
    params: int
    macs: int
    elementwise: int
    counted: bool = True


@dataclass
class FlopsReport:
    """What :func:`flops` returns: totals plus one :class:`LayerFlops` row per layer call."""

    model_name: str
    input_shape: object
    macs: int
    params: int
    trainable_params: int
    non_trainable_params: int
    elementwise: int
    rows: list = field(default_factory=list)
    uncounted: list = field(default_factory=list)
    detail: bool = False

    @property
    def flops(self):
        """FLOPs = 2 x MACs (one multiply and one add per MAC)."""
        return 2 * self.macs

    def row(self, name):
        """The row of the layer called ``name`` (KeyError if absent)."""
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self):
        d = asdict(self)
        d["flops"] = self.flops
        del d["detail"]
        return d

    def table(self, detail=None):
        """The report as text: per-layer rows (if ``detail``) and the totals."""
        detail = self.detail if detail is None else detail
        out = []
        if detail:
            headers = ["Layer", "Type", "Input shape", "Output shape", "Params", "MACs", "Elementwise"]
            rows = [
                [r.name, r.type, fmt_shape(r.input_shape), fmt_shape(r.output_shape), fmt_int(r.params),
                 fmt_int(r.macs) if r.counted else "?", fmt_int(r.elementwise) if r.counted else "?"]
                for r in self.rows
            ]
            out.append(format_table(headers, rows, align="llllrrr"))
        totals = [
            ["Params", fmt_int(self.params), human(self.params)],
            ["  trainable", fmt_int(self.trainable_params), human(self.trainable_params)],
            ["  non-trainable", fmt_int(self.non_trainable_params), human(self.non_trainable_params)],
            ["MACs", fmt_int(self.macs), human(self.macs)],
            ["FLOPs (2 x MACs)", fmt_int(self.flops), human(self.flops)],
            ["Elementwise ops (not in MACs)", fmt_int(self.elementwise), human(self.elementwise)],
        ]
        out.append(f"Model {self.model_name!r}, input {fmt_shape(self.input_shape)}, per sample:")
        out.append(format_table(["Total", "Count", ""], totals, align="lrr"))
        if self.uncounted:
            out.append("Not counted (no rule; MACs missing from the totals): " + ", ".join(self.uncounted))
        return "\n".join(out)

    def __str__(self):
        return self.table()


def _as_graph(model):
    """The Functional graph behind a Functional or a built Sequential, else None."""
    from kslim.graph import keras_graph as kg

    return kg.graph_of(model) if kg.is_graph_model(model) else None


def _accepted_kwargs(fn, kwargs):
    """``kwargs`` without ``training``/``mask`` when ``fn`` does not take them (Layer.__call__ drops them too)."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params or k not in ("training", "mask")}


def _shape(t):
    return tuple(t.shape)


class _Tracer:
    def __init__(self):
        self.rows = []
        self.uncounted = []
        self._calls = {}

    def trace_graph(self, graph, inputs, prefix):
        import keras

        from kslim.graph import keras_graph as kg

        flat = keras.tree.flatten(inputs)
        return kg.run_through_graph(graph, flat, lambda op: functools.partial(self.visit, op, prefix))

    def visit(self, op, prefix, *args, **kwargs):
        import keras

        from kslim.analysis.rules import find_rule
        from kslim.graph import keras_graph as kg

        graph = _as_graph(op)
        if graph is not None:
            inputs = args[0] if args else kwargs.get("inputs")
            return self.trace_graph(graph, inputs, f"{prefix}{op.name}/")
        tensors = [t for t in keras.tree.flatten((args, kwargs)) if isinstance(t, keras.KerasTensor)]
        identity = False
        if find_rule(op) is None and kg.expandable(op)[0]:
            try:  # a composite layer: count the layers and ops its call() runs
                sub = kg.expand_call(op, args, kwargs)
            except kg.IdentityCall:
                sub, identity = None, True
            except kg.NotExpandable:
                sub = None
            if sub is not None:
                out = self.trace_graph(kg.graph_of(sub), tensors, f"{prefix}{op.name}/")
                return keras.tree.pack_sequence_as(kg.outputs_struct(sub), keras.tree.flatten(out))
        try:
            if args and getattr(op, "input_spec", None) is not None:
                kg.assert_input_compatibility(op, args[0])  # what Layer.__call__ checks (e.g. Dense input dim)
            out = op.compute_output_spec(*args, **_accepted_kwargs(op.compute_output_spec, kwargs))
        except Exception as e:  # noqa: BLE001 - Keras raises many kinds; name the layer
            raise ModelError(
                f"Layer {prefix}{op.name!r} ({type(op).__name__}) cannot take input shape "
                f"{[fmt_shape(_shape(t)) for t in tensors]}: {e}"
            ) from e
        in_shapes = [_shape(t)[1:] for t in tensors]
        out_shapes = [_shape(t)[1:] for t in keras.tree.flatten(out)]

        key = id(op)
        ncall = self._calls.get(key, 0)
        self._calls[key] = ncall + 1
        name = f"{prefix}{op.name}" + (f"#{ncall + 1}" if ncall else "")
        params = 0
        if ncall == 0 and isinstance(op, keras.layers.Layer):
            params = int(sum(math.prod(w.shape) for w in op.weights))
        rule = find_rule(op)
        result = rule(op, in_shapes, out_shapes) if rule is not None else ((0, 0) if identity else None)
        counted = True
        if result is None:
            result = (0, 0)
            if isinstance(op, keras.layers.Layer) and op.weights:
                counted = False
                self.uncounted.append(name)
        macs, elementwise = result

        def shapes(ts):
            s = [_shape(t) for t in ts]
            return s[0] if len(s) == 1 else s

        self.rows.append(LayerFlops(
            name=name, type=type(op).__name__, input_shape=shapes(tensors),
            output_shape=shapes(keras.tree.flatten(out)), params=params, macs=int(macs),
            elementwise=int(elementwise), counted=counted,
        ))
        return out


def _normalise_input_shape(input_shape, n_inputs):
    if input_shape is None:
        return None
    shapes = list(input_shape)
    if shapes and all(isinstance(d, (int, type(None))) for d in shapes):
        shapes = [tuple(shapes)]
    shapes = [tuple(s) for s in shapes]
    if n_inputs and len(shapes) != n_inputs:
        raise ModelError(f"The model has {n_inputs} inputs but input_shape gives {len(shapes)} shapes.")
    for s in shapes:
        if any(d is not None and (not isinstance(d, int) or d < 1) for d in s):
            raise ModelError(f"input_shape must hold positive integers (without the batch axis), got {s}.")
    return shapes


def flops(model, input_shape=None, detail=False):
    """Count MACs, FLOPs and parameters of ``model``, per layer; see the module docstring for the rules.

    Args:
        model: a ``keras.Model`` (Functional, Sequential, nested models included).
        input_shape: input shape without the batch axis, e.g. ``(28, 28, 1)`` (a list of shapes for a
            multi-input model). Needed when the model has no fully defined input shape (a Sequential
            without ``Input``, ``None`` spatial dims); otherwise it overrides the model's own shape.
            An unbuilt Sequential is built at this shape (as calling it once would do).
        detail: ``str(report)`` shows the per-layer table too (``report.rows`` is always filled).

    Returns:
        A :class:`FlopsReport` with ``.macs``, ``.flops`` (= 2 x MACs), ``.params``, ``.elementwise``,
        ``.rows``.

    Raises:
        ModelError: the model has no defined input shape and ``input_shape`` is not given, or a layer
            cannot take the given shape.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> r = flops(m)
        >>> r.macs, r.flops, r.params
        (32, 64, 36)
    """
    import keras

    check_model(model, "flops()")
    graph = _as_graph(model)
    n_inputs = len(graph.inputs) if graph is not None else 0
    shapes = _normalise_input_shape(input_shape, n_inputs)

    if graph is None and isinstance(model, keras.Sequential):
        if shapes is None:
            raise ModelError(
                f"Model {model.name!r} has no defined input shape: pass input_shape=(H, W, C) "
                "(without the batch axis; CLI: --input-shape H,W,C) or give it a keras.Input."
            )
        if len(shapes) != 1:
            raise ModelError(f"A Sequential model has one input; input_shape gives {len(shapes)} shapes.")
        try:
            model.build((None, *shapes[0]))
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"Cannot build model {model.name!r} at input shape {shapes[0]}: {e}") from e
        graph = _as_graph(model)
        n_inputs = 1

    tracer = _Tracer()
    if graph is not None:
        if shapes is None:
            shapes = [tuple(x.shape)[1:] for x in graph.inputs]
            for x, s in zip(graph.inputs, shapes):
                if any(d is None for d in s):
                    raise ModelError(
                        f"Model {model.name!r} has no fully defined input shape (input {x.name!r} is "
                        f"{fmt_shape((None, *s))}): pass input_shape=(H, W, C) (CLI: --input-shape H,W,C)."
                    )
        inputs = [keras.KerasTensor((None, *s), dtype=x.dtype) for s, x in zip(shapes, graph.inputs)]
        tracer.trace_graph(graph, inputs, "")
    else:
        # A subclassed model: Keras cannot see inside call(); count it as one opaque row.
        if not model.built:
            if shapes is None:
                raise ModelError(
                    f"Model {model.name!r} is not built: pass input_shape=(H, W, C) (CLI: --input-shape)."
                )
            try:  # call it once on zeros, as users build subclassed models
                zeros = [keras.ops.zeros((1, *s)) for s in shapes]
                model(zeros[0] if len(zeros) == 1 else zeros)
            except Exception as e:  # noqa: BLE001
                raise ModelError(f"Cannot build model {model.name!r} at input shape {shapes}: {e}") from e
        if shapes is None:
            raise ModelError(f"Model {model.name!r} (subclassed) needs input_shape=(H, W, C).")
        inputs = [keras.KerasTensor((None, *s)) for s in shapes]
        tracer.visit(model, "", inputs[0] if len(inputs) == 1 else inputs)

    trainable = int(sum(math.prod(w.shape) for w in model.trainable_weights))
    non_trainable = int(sum(math.prod(w.shape) for w in model.non_trainable_weights))
    return FlopsReport(
        model_name=model.name,
        input_shape=shapes[0] if len(shapes) == 1 else shapes,
        macs=sum(r.macs for r in tracer.rows),
        params=trainable + non_trainable,
        trainable_params=trainable,
        non_trainable_params=non_trainable,
        elementwise=sum(r.elementwise for r in tracer.rows),
        rows=tracer.rows,
        uncounted=tracer.uncounted,
        detail=detail,
    )
