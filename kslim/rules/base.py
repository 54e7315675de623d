"""The layer-rule registry: everything kslim knows about one layer type, in one object.

A :class:`LayerRule` says, for one Keras layer class (and its subclasses, looked up along the MRO):

* how channels flow through the layer (:attr:`LayerRule.channels`, read by the dependency graph of
  :mod:`kslim.graph`): it makes a new channel space (``"producer"``: Conv, Dense, Embedding ...), passes
  the channels through unchanged (``"identity"``: activations, dropout), keeps them on the last axis of
  a feature map (``"spatial"``: pooling, padding), carries one weight entry per channel
  (``"carry"``: BatchNormalization, LayerNormalization, PReLU), unifies its inputs' channels
  (``"merge"``: Add, Multiply), stacks them (``"concat"``), spreads them over positions
  (``"flatten"``, ``"reshape"``, ``"permute"``), is a depthwise conv (``"depthwise"``), an attention
  block (``"attention"``), or is opaque (``None``: the channel groups it touches are not pruned, and
  :attr:`LayerRule.reason` says why);
* which weight axes its channels index (:meth:`LayerRule.producer_spec`) and how its config changes
  when output channels are removed (:meth:`LayerRule.pruned_config`, used by pruning surgery);
* its multiply-accumulates (:meth:`LayerRule.macs`, used by :func:`kslim.analysis.flops`);
* its quantization-aware twin (:attr:`LayerRule.quant_class`, used by :func:`kslim.quant.quant_aware`),
  or the graph of parts QAT quantizes one by one instead (:meth:`LayerRule.quant_expansion`: attention
  and recurrent layers).

Users teach kslim their own layer with one call (see :func:`register`)::

    >>> import keras
    >>> import kslim
    >>> class Gain(keras.layers.Layer):          # y = 2 x: channels pass through unchanged
    ...     def call(self, x):
    ...         return 2.0 * x
    >>> _ = kslim.rules.register(Gain, channels="identity",
    ...                          macs=lambda layer, ins, outs: (0, kslim.rules.numel(outs[0])))
    >>> kslim.rules.get(Gain()).channels
    'identity'
"""

import math

_REGISTRY = {}      # layer class -> LayerRule instance
_OP_REGISTRY = {}   # keras.ops operation class name -> LayerRule instance
_PATH_REGISTRY = {}  # "module.ClassName" of a layer class kslim does not import (keras-hub) -> LayerRule

#: the channel kinds the dependency graph understands (None = opaque)
CHANNEL_KINDS = ("input", "producer", "depthwise", "identity", "spatial", "carry", "merge", "concat",
                 "flatten", "reshape", "permute", "attention", "bidirectional", "constant")


def numel(shape):
    """Number of elements of a per-sample shape (``None`` dimensions count as 1)."""
    return int(math.prod(d for d in shape if d is not None))


class LayerRule:
    """What kslim knows about one layer type. Subclass it (or pass attributes to :func:`register`).

    Attributes:
        channels: how channels flow through the layer (one of :data:`CHANNEL_KINDS`, or None for opaque).
        reason: why the layer is opaque (shown in ``ChannelGroup.reason``) when ``channels`` is None.
        exact: False when removing channels that are zero does not leave the other channels' values
            unchanged (LayerNormalization's statistics cover every channel): pruning through it is
            approximate, and the contract test does not demand exactness.
        out_config_key: the ``get_config()`` key holding the output channel count of a producer
            (``"filters"``, ``"units"``, ``"output_dim"``).
        quant_class: name of the quantization-aware twin in :mod:`kslim.quant.layers`, or None when
            QAT leaves the layer float.
        passthrough: TFLite keeps the input's quantization scale on the output (max pooling, reshape):
            QAT puts no output quantizer after it.
        bn_fold: how a BatchNormalization right after the layer folds into its weights
            (:mod:`kslim.quant.fold`): ``"kernel"`` (kernel's last axis), ``"transpose"`` (a transposed
            conv's output axis -2), ``"depthwise"`` (channel ``c * multiplier + m``), ``"separable"``
            (the pointwise kernel); None: it does not fold.
        shift_weights: names of a ``"carry"`` layer's weights that are added to their channel (beta,
            a moving mean, a position table): zeroed with the channel where a test makes pruned
            channels exactly zero.
    """

    channels = None
    reason = ""
    exact = True
    out_config_key = None
    quant_class = None
    passthrough = False
    bn_fold = None
    shift_weights = ("beta", "moving_mean", "bias")

    def channel_kind(self, layer):
        """``(kind, reason)`` for this layer instance (a rule may refuse a configuration, e.g. groups>1)."""
        if self.channels is None:
            return None, self.reason or f"layer type {type(layer).__name__} is not supported by the pruner"
        if getattr(layer, "data_format", "channels_last") not in (None, "channels_last"):
            return None, "data_format='channels_first'"
        return self.channels, ""

    def quant_refusal(self, layer, rank, channels):
        """Why :func:`kslim.quant.quant_aware` cannot quantize this layer with its settings (a sentence
        naming them), or None if it can. ``rank``: the rank of its input (None unknown); ``channels``:
        the input's last dimension (None unknown). Only asked when :attr:`quant_class` is set."""
        return None

    def quant_expansion(self, layer, node):
        """A Functional model (named like ``layer``) computing the call at ``node`` from layers and
        ``keras.ops`` that :func:`kslim.quant.quant_aware` quantizes one by one in place of the layer, or
        None (the default) when the layer is quantized as a unit (:attr:`quant_class`) or stays float.
        Raises :class:`kslim.graph.keras_graph.NotExpandable` with the reason when this call cannot be
        expanded. Asked only for layers whose class name is in ``QuantConfig.quantizable_layer_type``."""
        return None

    def producer_spec(self, layer):
        """How a producer's weights index channels.

        Returns ``{"inputs": [(weight_index, axis, role, extra_multiplier)], "outputs": [(weight_index,
        axis, role)]}`` (roles ``"input"``, ``"filter"``, ``"bias"``), or None when not a producer.
        The default reads ``layer.kernel`` (input axis -2, output axis -1) and ``layer.bias``.
        """
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            return None
        k = weight_index(layer, kernel)
        out = [(k, -1, "filter")]
        if getattr(layer, "bias", None) is not None:
            out.append((weight_index(layer, layer.bias), 0, "bias"))
        return {"inputs": [(k, -2, "input", 1)], "outputs": out}

    def pruned_config(self, layer, config, n_out_removed, node=None, args=None):
        """``config`` of the layer rebuilt with ``n_out_removed`` fewer output channels (and new inputs)."""
        if n_out_removed:
            key = self.out_config_key
            if key is None or key not in config:
                from kslim.errors import ModelError

                raise ModelError(f"Layer {layer.name!r} ({type(layer).__name__}) cannot change its output channel "
                                 f"count: its rule names no config key for it (LayerRule.out_config_key).")
            config[key] = int(config[key]) - int(n_out_removed)
        return config

    def resized_config(self, layer, config, weight_cuts):
        """``config`` of the layer rebuilt after entries of its weights were removed.

        ``weight_cuts`` is ``{(weight_index, axis): number removed}``. Most layers need nothing (they
        build their weights from their input shape); a layer whose config fixes a weight's shape
        (:class:`kslim.graph.holder.WeightHolder`) updates it here.
        """
        return config

    def macs(self, layer, inputs, outputs):
        """``(macs, elementwise)`` per sample for per-sample ``inputs``/``outputs`` shapes, or None (unknown)."""
        return None

    def __repr__(self):
        return f"<{type(self).__name__} channels={self.channels!r} quant_class={self.quant_class!r}>"


class OpaqueRule(LayerRule):
    """The rule of a layer nobody registered: opaque for pruning, not counted, not quantized."""


_OPAQUE = OpaqueRule()


def weight_index(layer, variable):
    """Index of ``variable`` in ``layer.weights`` (by identity, then by path)."""
    for i, w in enumerate(layer.weights):
        if w is variable:
            return i
    path = getattr(variable, "path", None)
    for i, w in enumerate(layer.weights):
        if path is not None and getattr(w, "path", None) == path:
            return i
    raise KeyError(f"variable {variable} not found in {layer.name}")


def _as_rule(rule, attributes, name):
    if rule is None:
        bad = [k for k in attributes if not hasattr(LayerRule, k)]
        if bad:
            from kslim.errors import KslimValueError

            raise KslimValueError(f"register: unknown LayerRule attribute(s) {bad}; known: channels, reason, exact, "
                                  f"out_config_key, quant_class, passthrough, bn_fold, shift_weights, producer_spec, "
                                  f"pruned_config, macs, quant_refusal, quant_expansion.")
        methods = {k: (staticmethod(v) if callable(v) and k in ("producer_spec", "pruned_config", "macs",
                                                                 "quant_refusal", "quant_expansion") else v)
                   for k, v in attributes.items()}
        rule = type(f"{name}Rule", (LayerRule,), methods)()
    elif isinstance(rule, type):
        rule = rule()
    channels = getattr(rule, "channels", None)
    if channels is not None and channels not in CHANNEL_KINDS:
        from kslim.errors import KslimValueError

        raise KslimValueError(f"register: channels must be one of {CHANNEL_KINDS} or None, got {channels!r}.")
    return rule


def register(*layer_classes, rule=None, **attributes):
    """Register the rule for ``layer_classes`` (and their subclasses); returns the rule instance.

    Either pass ``rule=`` (a :class:`LayerRule` subclass or instance), or the rule's attributes as
    keywords (``channels="identity"``, ``macs=fn`` ...; functions get ``(layer, ...)`` like the methods,
    without ``self``), or use it as a class decorator: ``@register(MyLayer) class MyRule(LayerRule): ...``.
    A keras.ops operation is registered by its class name (a string), e.g. ``register("Einsum", ...)``;
    a layer class of a library kslim does not import, by its dotted path
    (``"keras_hub.src.layers.modeling.position_embedding.PositionEmbedding"``, matched against
    ``cls.__module__ + "." + cls.__qualname__`` along the MRO).
    """
    def do(r):
        names = [c.rsplit(".", 1)[-1] if isinstance(c, str) else c.__name__ for c in layer_classes]
        r = _as_rule(r, attributes if r is None else {}, names[0] if names else "Layer")
        for cls in layer_classes:
            _registry_of(cls)[cls] = r
        return r

    if rule is None and not attributes:
        def deco(cls):
            do(cls)
            return cls

        return deco
    return do(rule)


def _registry_of(key):
    if isinstance(key, str):
        return _PATH_REGISTRY if "." in key else _OP_REGISTRY
    return _REGISTRY


def get(layer):
    """The rule of ``layer`` (or of a keras.ops operation): the nearest registered class in its MRO."""
    for cls in type(layer).__mro__:
        r = _REGISTRY.get(cls)
        if r is None and _PATH_REGISTRY:
            r = _PATH_REGISTRY.get(f"{cls.__module__}.{cls.__qualname__}")
        if r is not None:
            return r
    r = _OP_REGISTRY.get(type(layer).__name__)
    return r if r is not None else _OPAQUE


def registered():
    """``{layer class, op name or class path: rule}`` of every registered rule (for contract tests and docs)."""
    return {**_REGISTRY, **_OP_REGISTRY, **_PATH_REGISTRY}


def unregister(layer_class):
    """Remove the rule registered for ``layer_class`` exactly (subclass lookups fall back to parents)."""
    _registry_of(layer_class).pop(layer_class, None)


__all__ = ["LayerRule", "OpaqueRule", "CHANNEL_KINDS", "register", "get", "registered", "unregister", "numel",
           "weight_index"]
