"""kslim's rules for the layers and ``keras.ops`` operations that ship with Keras.

Written against the same registry users extend (:func:`kslim.rules.register`): one rule class per
family of layers, holding how channels flow through it, how it is pruned, its MACs and its QAT twin.
The counting convention of :meth:`macs` is documented in :mod:`kslim.analysis.flops`.
"""

import math
import numbers

import keras
import numpy as np
from keras import layers as L

from kslim.rules.base import LayerRule, numel, register, weight_index


def _split(shape, layer):
    """(channels, spatial dims) of a per-sample conv shape."""
    if getattr(layer, "data_format", "channels_last") != "channels_first":
        return shape[-1], shape[:-1]
    return shape[0], shape[1:]


def _extras(layer, out_shape):
    """Elementwise ops of a linear layer besides its MACs: bias add and fused activation."""
    n = 0
    if getattr(layer, "use_bias", False) or getattr(layer, "bias_axes", None):
        n += numel(out_shape)
    act = getattr(layer, "activation", None)
    if act is not None and act is not keras.activations.linear:
        n += numel(out_shape)
    return n


# --------------------------------------------------------------------------------------- producers
class _ProducerRule(LayerRule):
    channels = "producer"

    def channel_kind(self, layer):
        kind, reason = super().channel_kind(layer)
        if kind is None:
            return kind, reason
        if getattr(layer, "groups", 1) != 1:
            return None, f"grouped convolution (groups={layer.groups})"
        if getattr(layer, "lora_enabled", False):
            return None, "LoRA-enabled layer"
        if getattr(layer, "quantization_mode", None):
            return None, f"already quantized ({layer.quantization_mode})"
        return kind, ""


@register(L.Conv1D, L.Conv2D, L.Conv3D)
class ConvRule(_ProducerRule):
    out_config_key = "filters"

    def macs(self, layer, inputs, outputs):
        cin, _ = _split(inputs[0], layer)
        _, out_spatial = _split(outputs[0], layer)
        groups = int(getattr(layer, "groups", 1) or 1)
        macs = math.prod(layer.kernel_size) * (int(cin) // groups) * int(layer.filters) * numel(out_spatial)
        return macs, _extras(layer, outputs[0])


class Conv2DRule(ConvRule):
    quant_class = "QuantConv2D"
    bn_fold = "kernel"


class Conv1DRule(ConvRule):
    quant_class = "QuantConv1D"
    bn_fold = "kernel"

    def quant_refusal(self, layer, rank, channels):
        if getattr(layer, "groups", 1) != 1:
            return "grouped Conv1D (groups > 1): TFLite has no grouped int8 1-D convolution"
        return None


register(L.Conv2D, rule=Conv2DRule)
register(L.Conv1D, rule=Conv1DRule)


@register(L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
class ConvTransposeRule(_ProducerRule):
    out_config_key = "filters"

    def producer_spec(self, layer):
        k = weight_index(layer, layer.kernel)
        out = [(k, -2, "filter")]
        if layer.bias is not None:
            out.append((weight_index(layer, layer.bias), 0, "bias"))
        return {"inputs": [(k, -1, "input", 1)], "outputs": out}

    def macs(self, layer, inputs, outputs):
        # every input pixel is multiplied by the whole kernel and scattered into the output
        cin, in_spatial = _split(inputs[0], layer)
        macs = math.prod(layer.kernel_size) * int(cin) * int(layer.filters) * numel(in_spatial)
        return macs, _extras(layer, outputs[0])


class Conv2DTransposeRule(ConvTransposeRule):
    quant_class = "QuantConv2DTranspose"
    bn_fold = "transpose"


register(L.Conv2DTranspose, rule=Conv2DTransposeRule)


@register(L.SeparableConv1D, L.SeparableConv2D)
class SeparableConvRule(_ProducerRule):
    out_config_key = "filters"

    def producer_spec(self, layer):
        dk, pk = weight_index(layer, layer.depthwise_kernel), weight_index(layer, layer.pointwise_kernel)
        out = [(pk, -1, "filter")]
        if layer.bias is not None:
            out.append((weight_index(layer, layer.bias), 0, "bias"))
        return {"inputs": [(dk, -2, "input", 1), (pk, -2, "input", int(layer.depth_multiplier))], "outputs": out}

    def macs(self, layer, inputs, outputs):
        cin, _ = _split(inputs[0], layer)
        _, out_spatial = _split(outputs[0], layer)
        mid = int(cin) * int(layer.depth_multiplier)
        depthwise = math.prod(layer.kernel_size) * mid * numel(out_spatial)
        pointwise = mid * int(layer.filters) * numel(out_spatial)
        return depthwise + pointwise, _extras(layer, outputs[0])


class SeparableConv2DRule(SeparableConvRule):
    quant_class = "SeparableConv2D"   # split into a quantized depthwise + pointwise pair
    bn_fold = "separable"


register(L.SeparableConv2D, rule=SeparableConv2DRule)


@register(L.Dense)
class DenseRule(_ProducerRule):
    out_config_key = "units"
    quant_class = "QuantDense"
    bn_fold = "kernel"

    def producer_spec(self, layer):
        spec = super().producer_spec(layer)
        spec["inputs"] = [(spec["inputs"][0][0], 0, "input", 1)]
        return spec

    def macs(self, layer, inputs, outputs):
        return numel(inputs[0]) * int(layer.units), _extras(layer, outputs[0])


def _einsum_parts(layer):
    lhs, out_spec = layer.equation.split("->")
    x_spec, kernel_spec = lhs.split(",")
    return x_spec, kernel_spec, out_spec


@register(L.EinsumDense)
class EinsumDenseRule(_ProducerRule):
    """A producer when its kernel is ``(c_in, c_out)``, contracting the input's last axis into the output's."""

    quant_class = "QuantEinsumDense"

    def quant_refusal(self, layer, rank, channels):
        if "." in layer.equation.split("->")[0].split(",")[1]:
            return f"EinsumDense kernel with an ellipsis ({layer.equation!r})"
        return None

    def _dense_like(self, layer):
        x_spec, k_spec, out_spec = _einsum_parts(layer)
        x_spec, out_spec = x_spec.replace("...", ""), out_spec.replace("...", "")
        return (len(k_spec) == 2 and x_spec and out_spec and x_spec[-1] == k_spec[0] and out_spec[-1] == k_spec[1]
                and k_spec[0] not in out_spec and k_spec[1] not in x_spec)

    def channel_kind(self, layer):
        kind, reason = super().channel_kind(layer)
        if kind is not None and not self._dense_like(layer):
            return None, f"EinsumDense equation {layer.equation!r} does not map input channels to output channels"
        return kind, reason

    def producer_spec(self, layer):
        k = weight_index(layer, layer.kernel)
        out = [(k, 1, "filter")]
        if layer.bias is not None:
            bias_shape = tuple(layer.bias.shape)
            if len(bias_shape) != 1:
                return None
            out.append((weight_index(layer, layer.bias), 0, "bias"))
        return {"inputs": [(k, 0, "input", 1)], "outputs": out}

    def pruned_config(self, layer, config, n_out_removed, node=None, args=None):
        if n_out_removed:
            shape = list(config["output_shape"]) if isinstance(config["output_shape"], (list, tuple)) else \
                [config["output_shape"]]
            shape[-1] = int(shape[-1]) - int(n_out_removed)
            config["output_shape"] = shape
        return config

    def macs(self, layer, inputs, outputs):
        # MACs = output elements x product of the contracted axes (kernel axes absent from the output)
        _, kernel_spec, out_spec = _einsum_parts(layer)
        kernel_spec = kernel_spec.replace(".", "")
        sizes = dict(zip(kernel_spec, layer.kernel.shape))
        contracted = math.prod(int(sizes[c]) for c in kernel_spec if c not in out_spec)
        return numel(outputs[0]) * contracted, _extras(layer, outputs[0])


@register(L.Embedding)
class EmbeddingRule(_ProducerRule):
    """Token ids in, ``output_dim`` channels out: a producer with no input channels."""

    out_config_key = "output_dim"
    quant_class = "QuantEmbedding"

    def producer_spec(self, layer):
        return {"inputs": [], "outputs": [(weight_index(layer, layer.embeddings), 1, "filter")]}

    def macs(self, layer, inputs, outputs):
        return 0, 0


# --------------------------------------------------------------------------------------- carry
@register(L.DepthwiseConv1D, L.DepthwiseConv2D)
class DepthwiseRule(LayerRule):
    channels = "depthwise"
    quant_class = "QuantDepthwiseConv2D"
    bn_fold = "depthwise"

    def macs(self, layer, inputs, outputs):
        cin, _ = _split(inputs[0], layer)
        _, out_spatial = _split(outputs[0], layer)
        macs = math.prod(layer.kernel_size) * int(cin) * int(layer.depth_multiplier) * numel(out_spatial)
        return macs, _extras(layer, outputs[0])


@register(L.BatchNormalization)
class BatchNormRule(LayerRule):
    """One entry per channel in every weight (gamma, beta, moving mean and variance)."""

    channels = "carry"
    quant_class = "QuantBatchNormalization"

    def quant_refusal(self, layer, rank, channels):
        axis = layer.axis if isinstance(layer.axis, int) else (layer.axis[0] if len(layer.axis) == 1 else None)
        if rank is None or axis not in (-1, rank - 1):
            return f"BatchNormalization over axis {layer.axis} (not the last one)"
        if not 2 <= rank <= 4:
            return f"BatchNormalization of a rank-{rank} input (kslim quantizes ranks 2 to 4)"
        return None

    def macs(self, layer, inputs, outputs):
        return 0, 2 * numel(outputs[0])   # a scale and a shift per element at inference


@register(*[c for c in (L.LayerNormalization, getattr(L, "RMSNormalization", None)) if c is not None])
class LayerNormRule(BatchNormRule):
    """gamma/beta per channel; the statistics span every channel, so pruning through it is approximate.
    Quantized step by step (:class:`kslim.quant.layers.QuantLayerNormalization`; RMSNormalization has no
    twin yet)."""

    exact = False
    quant_class = "QuantLayerNormalization"

    def quant_refusal(self, layer, rank, channels):
        axes = [layer.axis] if isinstance(layer.axis, int) else list(layer.axis)
        if rank is None or len(axes) != 1 or axes[0] not in (-1, rank - 1) or not 2 <= rank <= 4:
            return (f"{type(layer).__name__} over axis {layer.axis} of a rank-{rank} input (kslim quantizes the "
                    "last axis of ranks 2 to 4)")
        return None


@register(L.GroupNormalization)
class GroupNormRule(BatchNormRule):
    exact = False
    quant_class = None

    def channel_kind(self, layer):
        return None, (f"GroupNormalization with {layer.groups} groups: removing channels changes the groups "
                      f"(prune whole groups is not supported yet)")


@register(L.UnitNormalization, L.Normalization)
class NormalizationRule(LayerRule):
    reason = "normalises over channels with fixed statistics"

    def macs(self, layer, inputs, outputs):
        return 0, 2 * numel(outputs[0])


@register(L.PReLU)
class PReLURule(LayerRule):
    channels = "carry"

    def macs(self, layer, inputs, outputs):
        return 0, numel(outputs[0])


# --------------------------------------------------------------------------------------- pass-through
_CHANNEL_MIXING_ACTIVATIONS = {"softmax", "log_softmax", "glu"}


@register(L.ReLU, L.LeakyReLU, L.ELU)
class ActivationRule(LayerRule):
    channels = "identity"

    def macs(self, layer, inputs, outputs):
        return 0, numel(outputs[0])


@register(L.Activation)
class ActivationLayerRule(ActivationRule):
    def channel_kind(self, layer):
        try:
            act = keras.activations.serialize(layer.activation)
        except Exception:  # noqa: BLE001 - unserialisable custom function
            act = None
        act = act if isinstance(act, str) else (act.get("config") if isinstance(act, dict) else None)
        if isinstance(act, str) and act in _CHANNEL_MIXING_ACTIVATIONS:
            return None, f"activation {act!r} mixes channels"
        if not isinstance(act, str):
            return None, "custom activation"
        return "identity", ""


@register(L.Softmax)
class SoftmaxRule(ActivationRule):
    channels = None
    reason = "softmax mixes channels"


_DROPOUTS = (L.Dropout, L.GaussianNoise, L.GaussianDropout, L.AlphaDropout, L.ActivityRegularization, L.Identity,
             L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D, L.Masking)


@register(*_DROPOUTS)
class NoOpRule(LayerRule):
    """Does nothing at inference: 0 MACs, channels unchanged."""

    channels = "identity"
    passthrough = True

    def channel_kind(self, layer):
        ns = getattr(layer, "noise_shape", None)
        if isinstance(layer, L.Dropout) and ns is not None and ns[-1] not in (None, 1):
            return None, f"noise_shape {tuple(ns)} fixes the channel count"
        return super().channel_kind(layer)

    def macs(self, layer, inputs, outputs):
        return 0, 0


@register(L.Rescaling)
class RescalingRule(LayerRule):
    channels = "identity"
    quant_class = "QuantRescaling"

    def quant_refusal(self, layer, rank, channels):
        from kslim.quant.layers import rescaling_vectors

        if rank is None or not 2 <= rank <= 4 or channels is None:
            return f"Rescaling of a rank-{rank} input (kslim quantizes ranks 2 to 4 with known channels)"
        if rescaling_vectors(layer, channels) is None:
            return (f"Rescaling with scale/offset of shapes {np.shape(layer.scale)}/{np.shape(layer.offset)} "
                    f"(kslim quantizes a scalar or one value per channel)")
        return None

    def channel_kind(self, layer):
        if np.size(layer.scale) != 1 or np.size(layer.offset) != 1:
            return None, "per-channel scale/offset"
        return "identity", ""

    def macs(self, layer, inputs, outputs):
        return 0, 2 * numel(outputs[0])


@register(L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D)
class MaxPoolRule(LayerRule):
    channels = "spatial"
    passthrough = True

    def macs(self, layer, inputs, outputs):
        return 0, math.prod(layer.pool_size) * numel(outputs[0])


@register(L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D)
class AvgPoolRule(MaxPoolRule):
    passthrough = False


@register(L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
          L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D)
class GlobalPoolRule(LayerRule):
    channels = "spatial"

    def macs(self, layer, inputs, outputs):
        return 0, numel(inputs[0])


@register(L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D, L.Cropping1D, L.Cropping2D, L.Cropping3D,
          L.UpSampling1D, L.UpSampling2D, L.UpSampling3D)
class SpatialMoveRule(LayerRule):
    channels = "spatial"
    passthrough = True

    def macs(self, layer, inputs, outputs):
        return 0, 0


# --------------------------------------------------------------------------------------- merges, shapes
@register(L.Add, L.Subtract, L.Maximum, L.Minimum, L.Average, L.Multiply)
class MergeRule(LayerRule):
    channels = "merge"

    def macs(self, layer, inputs, outputs):
        return 0, (len(inputs) - 1) * numel(outputs[0])


@register(L.Concatenate)
class ConcatRule(LayerRule):
    channels = "concat"
    passthrough = False

    def macs(self, layer, inputs, outputs):
        return 0, 0


@register(L.Flatten)
class FlattenRule(SpatialMoveRule):
    channels = "flatten"


@register(L.Reshape)
class ReshapeRule(SpatialMoveRule):
    channels = "reshape"

    def pruned_config(self, layer, config, n_out_removed, node=None, args=None):
        if node is None:
            return config
        old_in = tuple(node.input_tensors[0].shape)
        new_in = tuple(args[0].shape) if args else old_in
        target = tuple(config["target_shape"])
        if old_in != new_in and -1 not in target:
            if len(target) == 1:
                target = (int(math.prod(new_in[1:])),)
            else:
                target = target[:-1] + (new_in[-1],)
            config["target_shape"] = target
        return config


@register(L.Permute)
class PermuteRule(SpatialMoveRule):
    channels = "permute"


class ReshapeOpRule(SpatialMoveRule):
    """``keras.ops.reshape``: its ``newshape`` names the channel count when it does not use -1 there."""

    channels = "reshape"

    def pruned_config(self, layer, config, n_out_removed, node=None, args=None):
        if node is None or not args:
            return config
        shape = list(config.get("newshape") or ())
        new_c = args[0].shape[-1]
        if shape and shape[-1] not in (-1, None) and new_c is not None and node.input_tensors[0].shape[-1] == \
                shape[-1]:
            shape[-1] = int(new_c)
            config["newshape"] = tuple(shape)
        return config


register("Reshape", rule=ReshapeOpRule)


class TransposeOpRule(SpatialMoveRule):
    """``keras.ops.transpose`` keeping the last axis last (a permutation of the other axes)."""

    channels = "permute"


register("Transpose", rule=TransposeOpRule)


@register(L.RepeatVector)
class RepeatVectorRule(SpatialMoveRule):
    channels = None
    reason = "RepeatVector adds a time axis"


@register(L.InputLayer)
class InputRule(LayerRule):
    channels = "input"

    def macs(self, layer, inputs, outputs):
        return 0, 0


from kslim.graph.holder import WeightHolder  # noqa: E402


@register(WeightHolder)
class WeightHolderRule(LayerRule):
    """A composite layer's own weight as a graph node: its last axis indexes the channels it meets."""

    channels = "constant"

    def resized_config(self, layer, config, weight_cuts):
        shape = list(config["shape"])
        for (index, axis), n in weight_cuts.items():
            if index == 0:
                shape[axis] -= int(n)
        config["shape"] = shape
        return config

    def macs(self, layer, inputs, outputs):
        return 0, 0


# --------------------------------------------------------------------------------------- attention, RNN
@register(L.MultiHeadAttention)
class MultiHeadAttentionRule(LayerRule):
    """Query/key/value projections consume the inputs' channels; the output projection produces new ones.

    MACs: the four projections plus the attention itself (``Q K^T`` and ``A V``: ``2 x heads x T_q x T_k
    x head_dim``); the softmax over ``T_k`` scores is elementwise.
    """

    channels = "attention"
    reason = "MultiHeadAttention"
    quant_class = "QuantMultiHeadAttention"

    def quant_expansion(self, layer, node):
        """Its projections and attention ops (:func:`kslim.graph.keras_graph.expand_attention`)."""
        from kslim.graph import keras_graph as kg

        if type(layer) is not L.MultiHeadAttention:
            raise kg.NotExpandable(f"{type(layer).__name__} is a subclass of MultiHeadAttention")
        return kg.expand_attention(layer, node)

    def pruned_config(self, layer, config, n_out_removed, node=None, args=None):
        if n_out_removed:
            d_out = int(node.outputs[0].shape[-1]) if node is not None else None
            if d_out is None:
                from kslim.errors import ModelError

                raise ModelError(f"Cannot prune the output of {layer.name!r}: its output width is unknown.")
            config["output_shape"] = (d_out - int(n_out_removed),)
        return config

    def macs(self, layer, inputs, outputs):
        q_shape = inputs[0]
        v_shape = inputs[1] if len(inputs) > 1 else inputs[0]
        t_q, t_k = numel(q_shape[:-1]), numel(v_shape[:-1])
        heads, key_dim = int(layer.num_heads), int(layer.key_dim)
        value_dim = int(layer.value_dim or key_dim)
        d_q, d_v = int(q_shape[-1]), int(v_shape[-1])
        d_k = int(inputs[2][-1]) if len(inputs) > 2 else d_v
        d_out = int(outputs[0][-1])
        proj = t_q * d_q * heads * key_dim + t_k * d_k * heads * key_dim + t_k * d_v * heads * value_dim
        proj += t_q * heads * value_dim * d_out
        attention = heads * t_q * t_k * (key_dim + value_dim)
        biases = (t_q * heads * key_dim + t_k * heads * (key_dim + value_dim) + t_q * d_out) if layer.use_bias else 0
        return proj + attention, biases + 2 * heads * t_q * t_k


def _unrolled(rule, layer, node):
    """``LayerRule.quant_expansion`` of a recurrent layer (and of a Bidirectional of them): unrolled over its
    fixed number of steps (:func:`kslim.graph.unroll.unroll`)."""
    from kslim.graph.unroll import unroll

    return unroll(layer, node)


def _recurrent(gates):
    class RecurrentRule(_ProducerRule):
        """An RNN layer produces ``units`` channels; its kernels hold one column block per gate.

        Pruning unit ``c`` removes column ``c`` of every gate block of the kernel, the recurrent kernel
        and the bias, and row ``c`` of the recurrent kernel. A unit whose columns are zero stays zero
        (its gates sit at 0.5 and its candidate at 0), so pruning it is exact.
        """

        out_config_key = "units"
        quant_class = None

        quant_expansion = _unrolled

        def channel_kind(self, layer):
            kind, reason = super().channel_kind(layer)
            if kind is not None and (getattr(layer, "return_state", False) or getattr(layer, "stateful", False)):
                return None, "recurrent layer with return_state/stateful"
            return kind, reason

        def producer_spec(self, layer):
            cell = getattr(layer, "cell", layer)
            k, rk = weight_index(layer, cell.kernel), weight_index(layer, cell.recurrent_kernel)
            out = [(k, 1, "filter", gates), (rk, 1, "filter", gates), (rk, 0, "carry")]
            bias = getattr(cell, "bias", None)
            if bias is not None:
                out.append((weight_index(layer, bias), len(bias.shape) - 1, "bias", gates))
            return {"inputs": [(k, 0, "input", 1)], "outputs": out}

        def macs(self, layer, inputs, outputs):
            steps, features = inputs[0][0], inputs[0][-1]
            units = int(layer.units if hasattr(layer, "units") else layer.cell.units)
            return int(steps) * gates * (int(features) + units) * units, 0

    return RecurrentRule


register(L.SimpleRNN, rule=_recurrent(1))
register(L.GRU, rule=_recurrent(3))
register(L.LSTM, rule=_recurrent(4))


@register(L.Wrapper)
class WrapperRule(LayerRule):
    """Any other wrapper (e.g. a quantization wrapper) costs what the layer it wraps costs."""

    reason = "wrapper layer"

    def macs(self, layer, inputs, outputs):
        from kslim.rules.base import get

        return get(layer.layer).macs(layer.layer, inputs, outputs)


@register(L.TimeDistributed)
class TimeDistributedRule(WrapperRule):
    def macs(self, layer, inputs, outputs):
        from kslim.rules.base import get

        r = get(layer.layer).macs(layer.layer, [s[1:] for s in inputs], [s[1:] for s in outputs])
        if r is None:
            return None
        steps = int(inputs[0][0])
        return steps * r[0], steps * r[1]


@register(L.Bidirectional)
class BidirectionalRule(WrapperRule):
    """Forward and backward units pruned together (see ``h_bidirectional`` in kslim/graph/builder.py)."""

    channels = "bidirectional"

    quant_expansion = _unrolled

    def channel_kind(self, layer):
        from kslim.rules.base import get

        for part in (layer.forward_layer, layer.backward_layer):
            kind, reason = get(part).channel_kind(part)
            if kind != "producer":
                return None, reason or f"{type(part).__name__} inside Bidirectional"
        return "bidirectional", ""

    def pruned_config(self, layer, config, n_out_removed, node=None, args=None):
        for key in ("layer", "backward_layer"):
            inner = config.get(key)
            if isinstance(inner, dict):
                inner.pop("build_config", None)
                if n_out_removed:
                    inner["config"]["units"] = int(inner["config"]["units"]) - int(n_out_removed)
        return config

    def macs(self, layer, inputs, outputs):
        from kslim.rules.base import get

        a = get(layer.forward_layer).macs(layer.forward_layer, inputs, outputs)
        b = get(layer.backward_layer).macs(layer.backward_layer, inputs, outputs)
        if a is None or b is None:
            return None
        return a[0] + b[0], a[1] + b[1]


# --------------------------------------------------------------------------------------- keras.ops
# element-wise keras.ops (created by e.g. ``x + 3.0`` or ``keras.ops.relu(x)`` in a functional model)
_ELEMENTWISE_OPS = (
    "Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum", "Power", "Negative", "Abs",
    "Absolute", "Square", "Sqrt", "Exp", "Log", "Clip", "Relu", "Relu6", "Sigmoid", "HardSigmoid", "Silu",
    "HardSilu", "Swish", "HardSwish", "Gelu", "Tanh", "Elu", "Selu", "LeakyRelu", "Softplus", "Softsign",
    "Mish", "Celu", "Cast", "Erf", "Rsqrt", "Reciprocal",
)


class ElementwiseOpRule(MergeRule):
    def macs(self, layer, inputs, outputs):
        return 0, numel(outputs[0]) if outputs else 0


register(*_ELEMENTWISE_OPS, rule=ElementwiseOpRule)


class ConcatOpRule(ConcatRule):
    pass


register("Concatenate", rule=ConcatOpRule)


class EinsumOpRule(LayerRule):
    """``keras.ops.einsum`` / ``matmul``: MACs = output elements x product of the contracted axes."""

    reason = "keras.ops.einsum mixes channels"

    def macs(self, layer, inputs, outputs):
        return _matmul_macs(layer, inputs, outputs), 0


def _matmul_macs(op, inputs, outputs):
    out = numel(outputs[0]) if outputs else 0
    equation = getattr(op, "subscripts", None)
    if equation and "->" in equation and len(inputs) == 2:
        lhs, out_spec = equation.replace("...", "").split("->")
        specs = lhs.split(",")
        sizes = {}
        for spec, shape in zip(specs, inputs):
            shape = shape[-len(spec):] if spec else ()
            sizes.update({c: d for c, d in zip(spec, shape) if d is not None})
        contracted = math.prod(int(sizes.get(c, 1)) for c in set("".join(specs)) if c not in out_spec)
        return out * contracted
    if len(inputs) == 2 and inputs[0]:
        return out * int(inputs[0][-1] or 1)
    return 0


register("Einsum", "Matmul", rule=EinsumOpRule)


def op_axis(node):
    """The ``axis`` argument of a keras.ops node, when it is an int."""
    axis = getattr(node.operation, "axis", None)
    return axis if isinstance(axis, (int, numbers.Integral)) else None
