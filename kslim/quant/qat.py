"""Quantization-aware training: ``quant_aware`` rewrites a Keras model, ``convert`` exports it to int8.

``quant_aware(model, config)`` rebuilds a Functional/Sequential model (the original is untouched,
weights are copied):

* every quantizable layer (``config.quantizable_layer_type`` minus skipped names) becomes its
  quantized twin (:class:`~kslim.quant.layers.QuantConv2D`, ``QuantDepthwiseConv2D``,
  ``QuantDense``) with a fake-quantized kernel; ``SeparableConv2D`` is split into a quantized
  depthwise and a quantized 1x1 pointwise conv (what TFLite runs anyway), with an activation quantizer
  between them;
* a BatchNormalization right after a quantized layer is folded into it (see :mod:`kslim.quant.fold`);
* an :class:`~kslim.quant.layers.ActivationQuantizer` is put on each model input and on the output of
  every layer whose output TFLite quantizes on its own: a quantized conv/dense or an Add is quantized
  after the ReLU/ReLU6 that follows it (TFLite fuses that activation), and nothing is put after
  layers that keep their input range (``config.passthrough_layer_type``: max pooling, reshape,
  dropout ...). A non-fusable activation inside a conv/dense (e.g. ``softmax``) is split out into an
  ``Activation`` layer so that both tensors get a range.

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
"""

import warnings
from dataclasses import dataclass, field

import numpy as np

from kslim.errors import ConversionError, KslimTypeError, KslimValueError, ModelError, UnsupportedLayerError
from kslim.quant.config import QuantConfig
from kslim.quant.fold import can_fold, folded_weights

# keras class name -> quantized class name (in kslim.quant.layers)
_QUANT_CLASS = {"Conv2D": "QuantConv2D", "DepthwiseConv2D": "QuantDepthwiseConv2D", "Dense": "QuantDense"}
# ops into which TFLite fuses a following ReLU / ReLU6
_FUSING_TYPES = ("Conv2D", "DepthwiseConv2D", "Dense", "SeparableConv2D", "Add")


def _keras_class(name):
    import keras

    return getattr(keras.layers, name)


def is_quantized(model):
    """True if ``model`` contains kslim quantization layers (i.e. came from :func:`quant_aware`)."""
    from kslim.quant.layers import QUANT_LAYERS, ActivationQuantizer

    return any(isinstance(l, (ActivationQuantizer, *QUANT_LAYERS)) for l in _all_layers(model))


def _all_layers(model):
    import keras

    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def activation_quantizers(model):
    """The :class:`~kslim.quant.layers.ActivationQuantizer` layers of ``model``, in graph order.

    Graph order is the topological order of the model (inputs first); for each quantizer,
    ``layer.input`` is the tensor whose range it holds. PTQ calibration uses this list.
    """
    from kslim.quant.layers import ActivationQuantizer

    return [l for l in _all_layers(model) if isinstance(l, ActivationQuantizer)]


# ---------------------------------------------------------------------------------------- planning
@dataclass
class _Plan:
    quantize: set = field(default_factory=set)          # names of layers to quantize
    folded: dict = field(default_factory=dict)          # bn name -> producer layer
    fold_into: dict = field(default_factory=dict)       # producer name -> bn layer
    quantize_output: set = field(default_factory=set)   # names of layers whose output gets a quantizer


def _as_functional(model):
    import keras
    from keras.src.models.functional import Functional

    if not isinstance(model, keras.Model):
        raise KslimTypeError(f"quant_aware() needs a keras.Model, got {type(model).__name__}.")
    if isinstance(model, keras.Sequential):
        if not model.built or not model.inputs:
            raise ModelError(
                f"Sequential model {model.name!r} has no input shape: start it with keras.Input(...) "
                "or build it before quantizing."
            )
        src = model.inputs[0]
        inputs = keras.Input(batch_shape=src.shape, dtype=src.dtype, name=src._keras_history.operation.name)
        x = inputs
        for layer in model.layers:
            x = layer(x)
        return keras.Model(inputs, x, name=model.name)
    if not isinstance(model, Functional):
        raise ModelError(
            f"Model {model.name!r} is a subclassed keras.Model ({type(model).__name__}); quant_aware needs "
            "a Functional or Sequential model (its layer graph must be visible)."
        )
    return model


def _graph(model):
    """(nodes in topological order, consumers: id(tensor) -> [node], output tensor ids)."""
    nodes = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                nodes.append(node)
    consumers = {}
    for node in nodes:
        for t in node.input_tensors:
            consumers.setdefault(id(t), []).append(node)
    outputs = {id(t) for t in model.outputs}
    return nodes, consumers, outputs


def _is_fusable_activation(layer):
    import keras

    if isinstance(layer, keras.layers.ReLU):
        return (not layer.negative_slope and not layer.threshold
                and layer.max_value in (None, 6.0, 6))
    if isinstance(layer, keras.layers.Activation):
        return getattr(layer.activation, "__name__", "") in ("relu", "relu6")
    return False


def _has_fusable_activation(layer):
    import keras

    act = getattr(layer, "activation", None)
    return act is None or act is keras.activations.linear or getattr(act, "__name__", "") in (
        "linear", "relu", "relu6")


def _plan(model, config, quantize=True):
    import keras

    from kslim.quant.layers import QUANT_LAYERS, ActivationQuantizer

    names = {l.name: l for l in model.layers}
    for layer in model.layers:
        if isinstance(layer, (ActivationQuantizer, *QUANT_LAYERS)):
            raise ModelError(
                f"Model {model.name!r} is already quantized (layer {layer.name!r} is a "
                f"{type(layer).__name__}); pass the float model to quant_aware."
            )
        if getattr(layer, "quantization_mode", None):
            raise ModelError(
                f"Layer {layer.name!r} is already quantized by Keras (quantization_mode="
                f"{layer.quantization_mode!r}); pass the float model."
            )
        if isinstance(layer, keras.Model):
            raise ModelError(
                f"Layer {layer.name!r} is a nested model; quant_aware needs a flat model "
                "(rebuild it with the nested model's layers called directly)."
            )
    for field_name in ("skip_layers", "only_layers"):
        for name in getattr(config, field_name) or ():
            if name not in names:
                raise ModelError(
                    f"{field_name}: model {model.name!r} has no layer named {name!r} "
                    f"(its layers: {sorted(names)[:20]}{' ...' if len(names) > 20 else ''})."
                )
    if config.only_layers is not None:
        for name in config.only_layers:
            tname = type(names[name]).__name__
            if tname not in config.quantizable_layer_type:
                raise UnsupportedLayerError(
                    f"only_layers: layer {name!r} is a {tname}, which cannot be quantized; quantizable "
                    f"types: {list(config.quantizable_layer_type)}."
                )

    plan = _Plan()
    nodes, consumers, outputs = _graph(model)
    calls = {}
    for node in nodes:
        calls[node.operation.name] = calls.get(node.operation.name, 0) + 1

    for layer in model.layers:
        tname = type(layer).__name__
        if not quantize or tname not in config.quantizable_layer_type:
            continue
        if not isinstance(layer, _keras_class(tname)):
            continue
        if config.only_layers is not None and layer.name not in config.only_layers:
            continue
        if layer.name in config.skip_layers or any(p in layer.name for p in config.not_quant_pattern):
            continue
        if getattr(layer, "lora_enabled", False):
            raise ModelError(f"Layer {layer.name!r} has LoRA enabled; merge it before quantizing.")
        plan.quantize.add(layer.name)

    # BN folding: producer used once, its output consumed only by the BN, BN used once
    if config.fold_batch_norm:
        for node in nodes:
            bn = node.operation
            if not isinstance(bn, keras.layers.BatchNormalization) or calls[bn.name] != 1:
                continue
            src = node.input_tensors[0]
            producer = src._keras_history.operation
            if producer is None or calls.get(producer.name) != 1:
                continue
            if (not quantize and type(producer).__name__ not in ("Conv2D", "DepthwiseConv2D", "Dense")) or (
                    quantize and producer.name not in plan.quantize):
                continue
            if len(consumers.get(id(src), [])) != 1 or id(src) in outputs:
                continue
            if not can_fold(producer, bn, len(src.shape)):
                continue
            plan.folded[bn.name] = producer
            plan.fold_into[producer.name] = bn

    if not quantize:
        return plan

    def effective_consumers(tensor):
        out = []
        for n in consumers.get(id(tensor), []):
            if n.operation.name in plan.folded:
                out.extend(effective_consumers(n.output_tensors[0]))
            else:
                out.append(n)
        return out

    def is_model_output(tensor):
        if id(tensor) in outputs:
            return True
        return any(n.operation.name in plan.folded and is_model_output(n.output_tensors[0])
                   for n in consumers.get(id(tensor), []))

    for node in nodes:
        layer = node.operation
        tname = type(layer).__name__
        if tname in config.passthrough_layer_type or layer.name in plan.fold_into:
            continue
        out_tensor = node.output_tensors[0]
        if layer.name in plan.folded:
            owner = plan.folded[layer.name]
            fusing = True
        else:
            owner = layer
            fusing = tname in _FUSING_TYPES and (tname == "Add" or layer.name in plan.quantize)
        if fusing and _has_fusable_activation(owner) and not is_model_output(out_tensor):
            cons = effective_consumers(out_tensor)
            is_plain = getattr(owner, "activation", None) in (None, keras.activations.linear)
            if is_plain and len(cons) == 1 and _is_fusable_activation(cons[0].operation):
                continue  # quantized after the ReLU that TFLite fuses into this op
        plan.quantize_output.add(layer.name)
    return plan


# ---------------------------------------------------------------------------------------- rewrite
def _is_float(tensor):
    return "float" in str(tensor.dtype)


def _clone(layer, config_overrides=None, cls=None):
    cfg = layer.get_config()
    if config_overrides:
        cfg.update(config_overrides)
    return (cls or type(layer)).from_config(cfg)


def rewrite(model, config, quantize=True):
    """Rebuild ``model`` following ``config``: fold BN, and if ``quantize``, insert the QAT layers.

    Internal engine of :func:`quant_aware` and :func:`kslim.quant.fold.fold_batch_norm`.
    """
    import keras

    from kslim.quant import layers as qlayers

    functional = _as_functional(model)
    plan = _plan(functional, config, quantize=quantize)
    weights_done = set()
    quant_calls = {}

    def act_quantizer(name):
        i = quant_calls.get(name, 0)
        quant_calls[name] = i + 1
        return qlayers.ActivationQuantizer(
            bits=config.activation_bits, mode=config.activation_quantize_type, momentum=config.moving_rate,
            symmetric=config.activation_symmetric, name=f"{name}_quant" + (f"_{i}" if i else ""))

    new_inputs = keras.tree.map_structure(
        lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t._keras_history.operation.name),
        functional.input)
    input_ids = {id(t): t for t in keras.tree.flatten(new_inputs)}
    quantized_inputs = {}

    def maybe_quantize_input(t):
        if (quantize and config.quantize_inputs and isinstance(t, keras.KerasTensor) and id(t) in input_ids
                and _is_float(t)):
            if id(t) not in quantized_inputs:
                quantized_inputs[id(t)] = act_quantizer(t._keras_history.operation.name)(t)
            return quantized_inputs[id(t)]
        return t

    new_layers = {}

    def built(name, factory, *args, set_weights=None, **kwargs):
        """Create (once) and call a new layer; set its weights after the first call."""
        if name not in new_layers:
            new_layers[name] = factory()
        layer = new_layers[name]
        out = layer(*args, **kwargs)
        if name not in weights_done and set_weights is not None:
            layer.set_weights(set_weights)
            weights_done.add(name)
        return out

    def quant_layer(orig, *args, **kwargs):
        tname = type(orig).__name__
        qcls = getattr(qlayers, _QUANT_CLASS[tname]) if quantize and orig.name in plan.quantize else type(orig)
        over = {}
        if qcls is not type(orig):
            over.update(weight_bits=config.weight_bits, per_channel=config.per_channel)
        bn = plan.fold_into.get(orig.name)
        if bn is not None:
            kernel, bias = folded_weights(orig, bn)
            over["use_bias"] = True
        else:
            kernel, bias = orig.get_weights()[0], (orig.get_weights()[1] if orig.use_bias else None)
        split = quantize and orig.name in plan.quantize and not _has_fusable_activation(orig)
        if split:
            over["activation"] = "linear"
        weights = [kernel] + ([bias] if bias is not None else [])
        out = built(orig.name, lambda: _clone(orig, over, qcls), *args, set_weights=weights, **kwargs)
        if split:
            out = act_quantizer(f"{orig.name}_preact")(out)
            act = keras.layers.Activation(orig.get_config()["activation"], name=f"{orig.name}_act")
            out = act(out)
        return out

    def separable(orig, x, **kwargs):
        w = orig.get_weights()
        dw_cfg = {k: orig.get_config()[k] for k in ("kernel_size", "strides", "padding", "data_format",
                                                      "dilation_rate", "depth_multiplier")}
        dw = built(f"{orig.name}_dw", lambda: qlayers.QuantDepthwiseConv2D(
            **dw_cfg, use_bias=False, weight_bits=config.weight_bits, per_channel=config.per_channel,
            name=f"{orig.name}_dw"), x, set_weights=[w[0]])
        dw = act_quantizer(f"{orig.name}_dw")(dw)
        pw_weights = [w[1]] + ([w[2]] if orig.use_bias else [])
        split = not _has_fusable_activation(orig)
        out = built(f"{orig.name}_pw", lambda: qlayers.QuantConv2D(
            orig.filters, 1, use_bias=orig.use_bias, activation="linear" if split else orig.get_config()["activation"],
            weight_bits=config.weight_bits, per_channel=config.per_channel, name=f"{orig.name}_pw"),
            dw, set_weights=pw_weights)
        if split:
            out = act_quantizer(f"{orig.name}_preact")(out)
            out = keras.layers.Activation(orig.get_config()["activation"], name=f"{orig.name}_act")(out)
        return out

    def call_function(layer, *args, **kwargs):
        args, kwargs = keras.tree.map_structure(maybe_quantize_input, (args, kwargs))
        tname = type(layer).__name__
        if layer.name in plan.folded:
            out = args[0]
        elif tname == "SeparableConv2D" and layer.name in plan.quantize:
            out = separable(layer, *args, **kwargs)
        elif layer.name in plan.quantize or layer.name in plan.fold_into:
            out = quant_layer(layer, *args, **kwargs)
        else:
            out = built(layer.name, lambda: _clone(layer), *args, set_weights=layer.get_weights(), **kwargs)
        if quantize and layer.name in plan.quantize_output and isinstance(out, keras.KerasTensor) and _is_float(out):
            out = act_quantizer(layer.name)(out)
        return out

    return keras.models.clone_model(functional, input_tensors=new_inputs, clone_function=lambda l: l,
                                    call_function=call_function)


def quant_aware(model, config=None, **overrides):
    """Return a quantization-aware copy of ``model`` (Functional or Sequential, built).

    Args:
        model: the float Keras model (left untouched; its weights are copied).
        config: a :class:`QuantConfig`, a dict of its fields, or None for the defaults.
        **overrides: individual :class:`QuantConfig` fields, e.g. ``weight_bits=4``.

    Raises:
        ConfigError: a config field has a bad value (the field is named).
        ModelError: the model is already quantized, subclassed, nested, or a skip name is unknown.
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
    if is_quantized(model):
        bad = next(l for l in _all_layers(model) if "Quant" in type(l).__name__)
        raise ModelError(
            f"Model {model.name!r} is already quantized (layer {bad.name!r} is a {type(bad).__name__}); "
            "pass the float model to quant_aware."
        )
    return rewrite(model, cfg, quantize=True)


# ---------------------------------------------------------------------------------------- export
def convert(qat_model, inference_input_type="float32", inference_output_type=None, check=True,
            check_data=None, verbose=False, converter_hook=None):
    """Convert a QAT model (from :func:`quant_aware`, trained or calibrated) into an int8 TFLite model.

    Weights become int8 (per-channel scales for ``channel_wise_abs_max``), biases int32 and
    activations int8, using the ranges the model learned; no representative data set is needed.
    Lower bit widths: conv/depthwise kernels keep their ``weight_bits`` grid inside int8 storage
    (e.g. codes -7..7 for 4 bits); Dense kernels quantized per channel are re-quantized by the
    converter on the 8-bit grid of the same range (the ``weight_bits`` levels stay distinct but are
    rounded to it); activations below 8 bits are exported on the 8-bit grid of their learned range,
    because TFLite has no sub-8-bit activation kernels.

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
    import tensorflow as tf

    from kslim import lite

    if not is_quantized(qat_model):
        raise ModelError(
            f"Model {qat_model.name!r} has no quantization layers: run kslim.quant.quant_aware on it first "
            "(or use post-training quantization)."
        )
    if inference_output_type is None:
        inference_output_type = inference_input_type
    for name, t in (("inference_input_type", inference_input_type),
                    ("inference_output_type", inference_output_type)):
        if t not in ("float32", "int8"):
            raise KslimValueError(f"{name} must be 'float32' or 'int8', got {t!r}.")
    missing = [q.name for q in activation_quantizers(qat_model) if not q.calibrated]
    if missing:
        raise ConversionError(
            f"Activation quantizer(s) {missing[:5]}{' ...' if len(missing) > 5 else ''} have no range yet: "
            "train the QAT model (fit) or calibrate it (ActivationQuantizer.set_range) before converting."
        )

    def hook(converter):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.inference_input_type = tf.as_dtype(inference_input_type)
        converter.inference_output_type = tf.as_dtype(inference_output_type)
        if converter_hook is not None:
            converter_hook(converter)

    # TFLite has no kernels for activations below 8 bits: export them on the 8-bit grid of their range
    low = [q for q in activation_quantizers(qat_model) if q.bits < 8]
    saved = [q.bits for q in low]
    splat = _splat_biases(qat_model)
    try:
        for q in low:
            q.bits = 8
        for layer, bias in splat:
            # the converter quantizes a constant whose values are all equal ("splat") with the first
            # channel's scale only; one ulp on one entry keeps it a dense constant (exact per channel)
            nudged = bias.copy()
            nudged[0] = np.nextafter(nudged[0], np.float32(np.inf))
            layer.bias.assign(nudged)
        with warnings.catch_warnings():
            # the converter warns that int8 input statistics were not given: the QAT ranges are used instead
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
            return lite.convert(qat_model, quantize=None, check=check, check_data=check_data,
                                verbose=verbose, converter_hook=hook)
    finally:
        for q, bits in zip(low, saved):
            q.bits = bits
        for layer, bias in splat:
            layer.bias.assign(bias)


def _splat_biases(model):
    """[(layer, bias)] of quantized layers whose bias has > 1 entries, all equal and non-zero."""
    from kslim.quant.layers import QUANT_LAYERS

    out = []
    for layer in _all_layers(model):
        if isinstance(layer, QUANT_LAYERS) and layer.per_channel and getattr(layer, "bias", None) is not None:
            b = np.asarray(layer.bias).copy()
            if b.size > 1 and b[0] != 0 and np.all(b == b[0]):
                out.append((layer, b))
    return out


# the one list of float compute ops lives in kslim.lite (LiteModel.float_ops); re-exported here
from kslim.lite.model import float_ops  # noqa: E402, F401
