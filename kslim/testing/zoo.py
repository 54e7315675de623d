"""The model zoo of issue 13: tiny architectures kslim did not write, built as their users build them.

Every entry of :data:`ZOO` builds a small ``keras.Model`` from constructor arguments, with random
weights (no preset, nothing is downloaded): keras-hub backbones wrapped with the head a user would put
on them, and nets written the way the keras.io examples write them. They are tiny (32x32 images, two or
three stages of a few filters, hidden size 16-32, one or two transformer layers, vocabulary 100,
sequence length 16) so that running every kslim check on one entry takes seconds.

keras-hub is imported inside the builders only: this module imports (and the keras.io entries build)
without it. Install it with ``pip install -r requirements-zoo.txt`` (``--no-deps``: see that file).

Biases and BatchNormalization/LayerNormalization parameters are randomised after building (seeded), so
that nothing is zero or one by accident, then the BatchNormalization moving statistics are set to those of
sample inputs (:func:`recalibrate_batch_norm`): without it a deep random net gives almost the same output
for every input, and quantization parity would compare constants.

Example:
    >>> from kslim.testing.zoo import ZOO, sample_inputs
    >>> entry = ZOO["io_unet"]
    >>> entry.source, entry.input_kind
    ('keras.io', 'image')
    >>> model = entry.build()
    >>> tuple(model(sample_inputs(model, 2)).shape)
    (2, 32, 32, 3)
"""

from dataclasses import dataclass, field

from kslim.graph.keras_graph import all_layers, layer_nodes, node_inputs  # noqa: E402 (keras only, no TF)
import numpy as np

#: image side, classes, vocabulary and sequence length used by the entries
IMAGE = 32
CLASSES = 4
VOCAB = 100
SEQ = 16
#: the size ``sample_inputs`` gives to an input axis the model leaves undefined (``None``)
DEFAULT_LENGTH = SEQ


@dataclass(frozen=True)
class ZooEntry:
    """One architecture of the zoo.

    Attributes:
        name: registry key (``hub_*`` for keras-hub, ``io_*`` for keras.io-style nets).
        build: ``build(seed=0) -> keras.Model``, built, random weights.
        source: ``"keras-hub"`` or ``"keras.io"``.
        tags: what the architecture exercises (``composite``, ``nested``, ``attention``, ``rnn`` ...).
        input_kind: ``"image"``, ``"tokens"`` (keras-hub text dict: token ids, padding mask, segment
            ids), ``"sequence"`` (integer token ids), ``"multi"`` (a list of inputs) or ``"dict"``.
        description: one line: what is built.
    """

    name: str
    build: object = field(repr=False)
    source: str
    tags: tuple = ()
    input_kind: str = "image"
    description: str = ""

    @property
    def needs_keras_hub(self):
        return self.source == "keras-hub"


ZOO = {}


def _entry(name, source, input_kind="image", tags=(), description=""):
    def register(fn):
        def build(seed=0):
            import keras

            keras.utils.set_random_seed(seed)
            model = fn()
            randomize(model, seed)
            recalibrate_batch_norm(model, sample_inputs(model, 32, seed=seed + 2000))
            return model

        build.__name__ = f"build_{name}"
        build.__doc__ = fn.__doc__
        ZOO[name] = ZooEntry(name=name, build=build, source=source, tags=tuple(tags), input_kind=input_kind,
                             description=description or (fn.__doc__ or "").strip().splitlines()[0])
        return fn

    return register


def randomize(model, seed=0):
    """Give biases, norm parameters and BN moving statistics seeded random values (in place).

    Kernels and embeddings keep their initialiser's values. Returns ``model``.
    """
    rng = np.random.default_rng(seed + 1000)
    for v in model.weights:
        if "float" not in str(v.dtype):
            continue
        leaf = v.path.split("/")[-1]
        shape = tuple(v.shape)
        if leaf in ("bias", "beta", "moving_mean"):
            v.assign(rng.normal(0.0, 0.1, shape).astype("float32"))
        elif leaf == "gamma":
            v.assign(rng.uniform(0.8, 1.2, shape).astype("float32"))
        elif leaf == "moving_variance":
            v.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
    return model


def recalibrate_batch_norm(model, x):
    """Set every BatchNormalization's moving statistics to its input statistics on ``x`` (in place).

    A deep net with random weights and fixed BN statistics loses the input signal layer after layer (its
    outputs become the same for every input, so quantization parity would compare constants). One
    forward pass in training mode with momentum 0 makes the statistics those of the data, as training
    would. Returns ``model``.
    """
    import keras

    bns = [l for l in _all_sublayers(model) if isinstance(l, keras.layers.BatchNormalization)]
    if not bns:
        return model
    saved = [bn.momentum for bn in bns]
    try:
        for bn in bns:
            bn.momentum = 0.0
        model(x, training=True)
    finally:
        for bn, m in zip(bns, saved):
            bn.momentum = m
    return model


#: the third of the zoo the default test suite runs (the rest is ``-m slow``): every source, input kind and
#: failure cause of issue 13 at least once, and quick to check
# one entry of each kind runs in the default test suite (the rest with -m slow): a keras-hub residual CNN
# and text transformer (composite layers, MultiHeadAttention inside them), an Embedding + Conv1D text CNN,
# recurrence, nesting, dict input. io_vit_mha (a functional MultiHeadAttention, 26 s) moved to -m slow for the
# 15-minute budget; its Flatten-after-attention shape is unit-tested in tests/test_qat_models.py.
REPRESENTATIVE = ("hub_resnet_basic", "hub_bert", "io_text_cnn", "io_lstm", "io_nested_twice", "io_dict_input")


# -------------------------------------------------------------------------------- input helpers
def _flat_inputs(model):
    """``[(key, KerasTensor)]`` of the model's inputs; key is the dict key, the list index or None."""
    import keras

    structure = model.input if not isinstance(model, keras.Sequential) else model.inputs[0]
    if isinstance(structure, dict):
        return list(structure.items())
    if isinstance(structure, (list, tuple)):
        return list(enumerate(structure))
    return [(None, structure)]


def _all_sublayers(layer):
    import keras

    return [l for l in all_layers(layer) if isinstance(l, keras.layers.Layer)]


def _consumers(model, tensor):
    """Layers (at any depth) with a call on ``tensor``."""
    return [layer for layer in _all_sublayers(model)
            if any(any(t is tensor for t in node_inputs(node)) for node in layer_nodes(layer))]


def _embedding_limit(model, tensor):
    """Largest valid id for an integer input: the smallest ``input_dim`` of the Embeddings it feeds.

    Looks at the layers that consume ``tensor`` (and their sublayers, e.g. keras-hub's
    TokenAndPositionEmbedding); falls back to every Embedding of the model.
    """
    import keras

    def dims(layers):
        return [int(l.input_dim) for layer in layers for l in _all_sublayers(layer)
                if isinstance(l, keras.layers.Embedding)]

    found = dims(_consumers(model, tensor)) or dims([model])
    return min(found) if found else VOCAB


def sample_inputs(model, n=8, seed=0):
    """Valid random inputs for ``model``: what ``model(x)`` accepts, batch of ``n``.

    * float inputs: uniform in [0, 1) (images, features), in [0, 255) when the input feeds a
      ``Rescaling`` layer (the model scales pixels itself);
    * integer inputs feeding an ``Embedding``: ids in ``[0, input_dim)`` of the smallest Embedding they
      feed; an input named like ``segment_ids`` gets ids in ``[0, num_segments)`` the same way;
    * an input named ``padding_mask`` (or ``*mask``): 1 for the first L tokens of each row (L random in
      ``[len/2, len]``), 0 after;
    * undefined (``None``) axes get length :data:`DEFAULT_LENGTH`.

    Returns an array for a single-input model, a list for a list of inputs, a dict for dict inputs
    (keys as the model's).
    """
    import keras

    rng = np.random.default_rng(seed)
    flat = _flat_inputs(model)
    values = []
    for key, t in flat:
        shape = (n, *[DEFAULT_LENGTH if d is None else int(d) for d in tuple(t.shape)[1:]])
        dtype = str(t.dtype)
        name = str(key if isinstance(key, str) else getattr(t, "name", "") or "")
        if "mask" in name.lower():
            lengths = rng.integers(max(1, shape[-1] // 2), shape[-1] + 1, size=n)
            mask = np.arange(shape[-1])[None, :] < lengths[:, None]
            mask = np.broadcast_to(mask.reshape((n,) + (1,) * (len(shape) - 2) + (shape[-1],)), shape)
            values.append(mask.astype("bool" if dtype == "bool" else dtype))
        elif "int" in dtype:
            hi = _embedding_limit(model, t)
            values.append(rng.integers(0, hi, size=shape).astype(dtype))
        elif dtype == "bool":
            values.append(rng.random(shape) < 0.5)
        else:
            # pixels in [0, 255) for a model that rescales its input itself (keras.io style), else [0, 1)
            hi = 255.0 if any(isinstance(l, keras.layers.Rescaling) for l in _consumers(model, t)) else 1.0
            values.append((hi * rng.random(shape)).astype(dtype if "float" in dtype else "float32"))
    if len(flat) == 1 and flat[0][0] is None:
        return values[0]
    if isinstance(flat[0][0], str):
        return {key: v for (key, _), v in zip(flat, values)}
    structure = model.input if not isinstance(model, keras.Sequential) else model.inputs
    return tuple(values) if isinstance(structure, tuple) else list(values)


def batch_of(x, start, stop):
    """Rows ``start:stop`` of inputs made by :func:`sample_inputs` (array, list or dict)."""
    if isinstance(x, dict):
        return {k: v[start:stop] for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(v[start:stop] for v in x)
    return x[start:stop]


# -------------------------------------------------------------------------------- heads
def _last(output):
    """The last feature map of a backbone output (dicts/lists of pyramid levels give their last)."""
    if isinstance(output, dict):
        return list(output.values())[-1]
    if isinstance(output, (list, tuple)):
        return output[-1]
    return output


def _image_head(backbone, name):
    """``backbone`` (its own graph, not nested) + GlobalAveragePooling2D + Dense: a flat functional model."""
    import keras

    x = keras.layers.GlobalAveragePooling2D(name="pool")(_last(backbone.output))
    out = keras.layers.Dense(CLASSES, name="logits")(x)
    return keras.Model(backbone.input, out, name=name)


def _token_head(backbone, name):
    """Sequence backbone + its first token (or ``pooled_output`` when it has one) + Dense."""
    import keras

    out = backbone.output
    if isinstance(out, dict) and "pooled_output" in out:
        x = out["pooled_output"]
    else:
        seq = out["sequence_output"] if isinstance(out, dict) else out
        x = seq[:, 0, :]
    out = keras.layers.Dense(CLASSES, name="logits")(x)
    return keras.Model(backbone.input, out, name=name)


def _hub():
    import keras_hub

    return keras_hub.models


# -------------------------------------------------------------------------------- keras-hub: images
@_entry("hub_mobilenet", "keras-hub", tags=("composite", "depthwise", "squeeze-excite", "hard-swish"))
def _hub_mobilenet():
    """MobileNetBackbone (V3-style InvertedResidualBlock with SE, hard-swish) + GAP + Dense."""
    backbone = _hub().MobileNetBackbone(
        stackwise_expansion=[[16, 24], [32]],
        stackwise_num_blocks=[2, 1],
        stackwise_num_filters=[[16, 16], [24]],
        stackwise_kernel_size=[[3, 3], [5]],
        stackwise_num_strides=[[2, 1], [2]],
        stackwise_se_ratio=[[None, 0.25], [0.25]],
        stackwise_activation=[["relu", "relu"], ["hard_swish"]],
        stackwise_padding=[[1, 1], [2]],
        output_num_filters=32,
        depthwise_filters=8,
        depthwise_stride=1,
        depthwise_residual=False,
        last_layer_filter=32,
        squeeze_and_excite=0.5,
        input_num_filters=8,
        image_shape=(IMAGE, IMAGE, 3),
    )
    return _image_head(backbone, "hub_mobilenet")


@_entry("hub_efficientnet", "keras-hub", tags=("composite", "fused-mbconv", "mbconv", "squeeze-excite", "swish"))
def _hub_efficientnet():
    """EfficientNetBackbone, V2-style: FusedMBConvBlock stages then an MBConvBlock stage with SE + head."""
    backbone = _hub().EfficientNetBackbone(
        stackwise_kernel_sizes=[3, 3, 3],
        stackwise_num_repeats=[1, 2, 1],
        stackwise_input_filters=[8, 8, 16],
        stackwise_output_filters=[8, 16, 24],
        stackwise_expansion_ratios=[1, 2, 2],
        stackwise_squeeze_and_excite_ratios=[0.0, 0.0, 0.25],
        stackwise_strides=[1, 2, 2],
        stackwise_block_types=["fused", "fused", "unfused"],
        stackwise_width_coefficients=[1.0, 1.0, 1.0],
        stackwise_depth_coefficients=[1.0, 1.0, 1.0],
        dropout=0.0,
        num_features=32,
        input_shape=(IMAGE, IMAGE, 3),
    )
    return _image_head(backbone, "hub_efficientnet")


@_entry("hub_resnet_basic", "keras-hub", tags=("residual", "basic-block"))
def _hub_resnet_basic():
    """ResNetBackbone, basic blocks (ResNet18-style), 3 stages (keras-hub requires 64 filters first) + head."""
    backbone = _hub().ResNetBackbone(
        input_conv_filters=[16, 64], input_conv_kernel_sizes=[3, 3], stackwise_num_filters=[64, 16, 16],
        stackwise_num_blocks=[1, 1, 1], stackwise_num_strides=[1, 2, 2], block_type="basic_block",
        image_shape=(IMAGE, IMAGE, 3))
    return _image_head(backbone, "hub_resnet_basic")


@_entry("hub_resnet_v2_bottleneck", "keras-hub", tags=("residual", "bottleneck", "pre-activation"))
def _hub_resnet_v2_bottleneck():
    """ResNetBackbone, bottleneck blocks with pre-activation (ResNet50V2-style), 2 stages + GAP + Dense."""
    backbone = _hub().ResNetBackbone(
        input_conv_filters=[8], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 8],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="bottleneck_block",
        use_pre_activation=True, image_shape=(IMAGE, IMAGE, 3))
    return _image_head(backbone, "hub_resnet_v2_bottleneck")


@_entry("hub_resnet_classifier", "keras-hub", tags=("residual", "bottleneck", "nested", "task"))
def _hub_resnet_classifier():
    """keras_hub.models.ResNetImageClassifier(backbone, num_classes): the task model, backbone nested."""
    hub = _hub()
    backbone = hub.ResNetBackbone(
        input_conv_filters=[8], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 8],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="bottleneck_block",
        image_shape=(IMAGE, IMAGE, 3))
    return hub.ResNetImageClassifier(backbone=backbone, num_classes=CLASSES, preprocessor=None)


@_entry("hub_densenet", "keras-hub", tags=("concatenate", "average-pooling"))
def _hub_densenet():
    """DenseNetBackbone, 2 dense stacks (Concatenate growth, AveragePooling2D transitions) + GAP + Dense."""
    backbone = _hub().DenseNetBackbone(stackwise_num_repeats=[2, 2], growth_rate=8, compression_ratio=0.5,
                                       image_shape=(IMAGE, IMAGE, 3))
    return _image_head(backbone, "hub_densenet")


@_entry("hub_cspnet", "keras-hub", tags=("cross-stage-partial", "split", "leaky-relu"))
def _hub_cspnet():
    """CSPNetBackbone (CSPDarkNet-style: dark blocks, cross-stage partial stages) + GAP + Dense."""
    backbone = _hub().CSPNetBackbone(
        stem_filters=8, stem_kernel_size=3, stem_strides=1, stackwise_depth=[1, 1],
        stackwise_strides=[2, 2], stackwise_num_filters=[16, 24], block_type="dark_block", stage_type="csp",
        expand_ratio=[2.0, 1.0], block_ratio=[1.0, 0.5], bottle_ratio=[0.5, 1.0], down_growth=True,
        image_shape=(IMAGE, IMAGE, 3))
    return _image_head(backbone, "hub_cspnet")


@_entry("hub_vgg", "keras-hub", tags=("plain",))
def _hub_vgg():
    """VGGBackbone, 3 blocks of 3x3 convs + max pooling + GAP + Dense."""
    backbone = _hub().VGGBackbone(stackwise_num_repeats=[1, 2, 2], stackwise_num_filters=[8, 16, 16],
                                  image_shape=(IMAGE, IMAGE, 3))
    return _image_head(backbone, "hub_vgg")


@_entry("hub_xception", "keras-hub", tags=("separable", "residual"))
def _hub_xception():
    """XceptionBackbone (SeparableConv2D blocks with 1x1 strided residuals) + GAP + Dense."""
    backbone = _hub().XceptionBackbone(stackwise_conv_filters=[[8, 16], [16, 24], [24, 32]],
                                       stackwise_pooling=[True, True, False], image_shape=(IMAGE, IMAGE, 3))
    return _image_head(backbone, "hub_xception")


@_entry("hub_hgnetv2", "keras-hub", tags=("composite", "learnable-affine", "concatenate"))
def _hub_hgnetv2():
    """HGNetV2Backbone (embedder and encoder are composite layers; learnable affine blocks) + GAP + Dense."""
    backbone = _hub().HGNetV2Backbone(
        depths=[1, 1], embedding_size=16, hidden_sizes=[16, 32], stem_channels=[3, 8, 16], hidden_act="relu",
        use_learnable_affine_block=True,
        stackwise_stage_filters=[(16, 8, 16, 1, 2, 3), (16, 16, 32, 1, 2, 3)],
        apply_downsample=[False, True], use_lightweight_conv_block=[False, True],
        image_shape=(IMAGE, IMAGE, 3))
    return _image_head(backbone, "hub_hgnetv2")


@_entry("hub_mit", "keras-hub", tags=("composite", "attention", "layer-norm", "transformer"))
def _hub_mit():
    """MiTBackbone (Mix Transformer: overlapping patch embedding, efficient attention) + GAP + Dense."""
    backbone = _hub().MiTBackbone(
        layerwise_depths=[1, 1], num_layers=2, layerwise_num_heads=[1, 2], layerwise_sr_ratios=[2, 1],
        max_drop_path_rate=0.0, layerwise_patch_sizes=[7, 3], layerwise_strides=[4, 2],
        hidden_dims=[16, 32], image_shape=(IMAGE, IMAGE, 3))
    return _image_head(backbone, "hub_mit")


@_entry("hub_segformer", "keras-hub", tags=("composite", "attention", "nested", "segmentation"))
def _hub_segformer():
    """SegFormerBackbone on a MiT encoder (nested feature extractor + Sequential fuse) + 1x1 Conv2D head."""
    import keras

    hub = _hub()
    encoder = hub.MiTBackbone(
        layerwise_depths=[1, 1], num_layers=2, layerwise_num_heads=[1, 2], layerwise_sr_ratios=[2, 1],
        max_drop_path_rate=0.0, layerwise_patch_sizes=[7, 3], layerwise_strides=[4, 2],
        hidden_dims=[16, 32], image_shape=(IMAGE, IMAGE, 3))
    backbone = hub.SegFormerBackbone(image_encoder=encoder, projection_filters=16)
    out = keras.layers.Conv2D(CLASSES, 1, name="seg_logits")(backbone.output)
    return keras.Model(backbone.input, out, name="hub_segformer")


@_entry("hub_vit", "keras-hub", tags=("composite", "attention", "layer-norm", "transformer", "class-token"))
def _hub_vit():
    """ViTBackbone (patch 8 on 32x32, hidden 16, 2 layers) + class token + Dense."""
    import keras

    backbone = _hub().ViTBackbone(image_shape=(IMAGE, IMAGE, 3), patch_size=8, num_layers=2, num_heads=2,
                                  hidden_dim=16, mlp_dim=32)
    out = keras.layers.Dense(CLASSES, name="logits")(backbone.output[:, 0, :])
    return keras.Model(backbone.input, out, name="hub_vit")


@_entry("hub_deit", "keras-hub", tags=("composite", "attention", "layer-norm", "transformer", "class-token"))
def _hub_deit():
    """DeiTBackbone (class and distillation tokens, hidden 16, 1 layer) + class token + Dense."""
    import keras

    backbone = _hub().DeiTBackbone(image_shape=(IMAGE, IMAGE, 3), patch_size=8, num_layers=1, num_heads=2,
                                   hidden_dim=16, intermediate_dim=32)
    out = keras.layers.Dense(CLASSES, name="logits")(backbone.output[:, 0, :])
    return keras.Model(backbone.input, out, name="hub_deit")


@_entry("hub_swin", "keras-hub", tags=("composite", "attention", "layer-norm", "transformer", "window"))
def _hub_swin():
    """SwinTransformerBackbone (window attention, patch merging, 2 stages, embed 16) + pooling + Dense."""
    import keras

    backbone = _hub().SwinTransformerBackbone(image_shape=(IMAGE, IMAGE, 3), embed_dim=16, depths=(1, 1),
                                              num_heads=(1, 2), window_size=4, patch_size=4, drop_path=0.0)
    x = backbone.output
    pool = keras.layers.GlobalAveragePooling2D if len(x.shape) == 4 else keras.layers.GlobalAveragePooling1D
    out = keras.layers.Dense(CLASSES, name="logits")(pool(name="pool")(x))
    return keras.Model(backbone.input, out, name="hub_swin")


# -------------------------------------------------------------------------------- keras-hub: text
_TEXT = dict(num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32, dropout=0.0, max_sequence_length=SEQ)


@_entry("hub_bert", "keras-hub", input_kind="tokens", tags=("composite", "attention", "embedding", "transformer"))
def _hub_bert():
    """BertBackbone (vocab 100, hidden 16, 1 layer) + pooled_output + Dense."""
    return _token_head(_hub().BertBackbone(vocabulary_size=VOCAB, **_TEXT), "hub_bert")


@_entry("hub_distilbert", "keras-hub", input_kind="tokens",
        tags=("composite", "attention", "embedding", "transformer"))
def _hub_distilbert():
    """DistilBertBackbone (vocab 100, hidden 16, 1 layer) + first token + Dense."""
    return _token_head(_hub().DistilBertBackbone(vocabulary_size=VOCAB, **_TEXT), "hub_distilbert")


@_entry("hub_roberta", "keras-hub", input_kind="tokens",
        tags=("composite", "attention", "embedding", "transformer"))
def _hub_roberta():
    """RobertaBackbone (vocab 100, hidden 16, 1 layer) + first token + Dense."""
    return _token_head(_hub().RobertaBackbone(vocabulary_size=VOCAB, **_TEXT), "hub_roberta")


@_entry("hub_albert", "keras-hub", input_kind="tokens",
        tags=("composite", "attention", "embedding", "transformer", "shared-layers"))
def _hub_albert():
    """AlbertBackbone (factorised embedding 8 -> hidden 16, one shared layer run twice) + pooled + Dense."""
    return _token_head(_hub().AlbertBackbone(
        vocabulary_size=VOCAB, num_layers=2, num_heads=2, embedding_dim=8, hidden_dim=16, intermediate_dim=32,
        num_groups=1, num_inner_repetitions=1, dropout=0.0, max_sequence_length=SEQ), "hub_albert")


@_entry("hub_electra", "keras-hub", input_kind="tokens",
        tags=("composite", "attention", "embedding", "transformer"))
def _hub_electra():
    """ElectraBackbone (embedding 8 projected to hidden 16, 1 layer) + pooled_output + Dense."""
    return _token_head(_hub().ElectraBackbone(
        vocab_size=VOCAB, num_layers=1, num_heads=2, hidden_dim=16, embedding_dim=8, intermediate_dim=32,
        dropout=0.0, max_sequence_length=SEQ), "hub_electra")


@_entry("hub_gpt2", "keras-hub", input_kind="tokens",
        tags=("composite", "attention", "embedding", "transformer", "causal"))
def _hub_gpt2():
    """GPT2Backbone (causal attention, vocab 100, hidden 16, 1 layer) + first token + Dense."""
    return _token_head(_hub().GPT2Backbone(vocabulary_size=VOCAB, **_TEXT), "hub_gpt2")


@_entry("hub_fnet", "keras-hub", input_kind="tokens", tags=("composite", "fourier", "embedding"))
def _hub_fnet():
    """FNetBackbone (Fourier token mixing instead of attention, hidden 16, 1 layer) + pooled + Dense."""
    text = {k: v for k, v in _TEXT.items() if k != "num_heads"}
    return _token_head(_hub().FNetBackbone(vocabulary_size=VOCAB, **text), "hub_fnet")


# -------------------------------------------------------------------------------- keras.io-style nets
@_entry("io_xception_like", "keras.io", tags=("separable", "residual", "rescaling"))
def _io_xception_like():
    """keras.io 'Image classification from scratch' make_model: SeparableConv2D blocks + strided residuals."""
    import keras
    from keras import layers

    inputs = keras.Input((IMAGE, IMAGE, 3), name="image")
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Conv2D(16, 3, strides=2, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    previous = x
    for size in (16, 32):
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(size, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(size, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        residual = layers.Conv2D(size, 1, strides=2, padding="same")(previous)
        x = layers.add([x, residual])
        previous = x
    x = layers.SeparableConv2D(48, 3, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.25)(x)
    outputs = layers.Dense(CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs, name="io_xception_like")


@_entry("io_convmixer", "keras.io", tags=("depthwise", "gelu", "residual"))
def _io_convmixer():
    """keras.io ConvMixer: patch Conv2D, depthwise-conv mixer blocks with residual, pointwise convs, GELU+BN."""
    import keras
    from keras import layers

    def activation_block(x):
        x = layers.Activation("gelu")(x)
        return layers.BatchNormalization()(x)

    inputs = keras.Input((IMAGE, IMAGE, 3), name="image")
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = activation_block(layers.Conv2D(16, kernel_size=2, strides=2)(x))
    for _ in range(2):
        x0 = x
        x = layers.DepthwiseConv2D(kernel_size=5, padding="same")(x)
        x = layers.Add()([activation_block(x), x0])  # residual
        x = activation_block(layers.Conv2D(16, kernel_size=1)(x))  # pointwise
    x = layers.GlobalAvgPool2D()(x)
    outputs = layers.Dense(CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs, name="io_convmixer")


@_entry("io_unet", "keras.io", tags=("conv-transpose", "concatenate", "segmentation"))
def _io_unet():
    """U-Net: conv blocks + max pooling down, Conv2DTranspose up + Concatenate skips, 1x1 Conv2D logits."""
    import keras
    from keras import layers

    def block(x, filters):
        for _ in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.Activation("relu")(x)
        return x

    inputs = keras.Input((IMAGE, IMAGE, 3), name="image")
    s1 = block(inputs, 8)
    s2 = block(layers.MaxPooling2D()(s1), 16)
    b = block(layers.MaxPooling2D()(s2), 24)
    u2 = layers.Conv2DTranspose(16, 2, strides=2, padding="same")(b)
    u2 = block(layers.Concatenate()([u2, s2]), 16)
    u1 = layers.Conv2DTranspose(8, 2, strides=2, padding="same")(u2)
    u1 = block(layers.Concatenate()([u1, s1]), 8)
    outputs = layers.Conv2D(3, 1, name="seg_logits")(u1)
    return keras.Model(inputs, outputs, name="io_unet")


@_entry("io_text_cnn", "keras.io", input_kind="sequence", tags=("embedding", "conv1d"))
def _io_text_cnn():
    """keras.io 'Text classification from scratch': Embedding + Dropout + two Conv1D + GlobalMaxPooling1D."""
    import keras
    from keras import layers

    inputs = keras.Input((SEQ,), dtype="int64", name="tokens")
    x = layers.Embedding(VOCAB, 16)(inputs)
    x = layers.Dropout(0.5)(x)
    x = layers.Conv1D(16, 3, padding="valid", activation="relu", strides=1)(x)
    x = layers.Conv1D(16, 3, padding="valid", activation="relu", strides=2)(x)
    x = layers.GlobalMaxPooling1D()(x)
    x = layers.Dense(16, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs, name="io_text_cnn")


_IO_LAYERS = {}


def io_vit_layers():
    """The keras.io ViT example's ``Patches`` and ``PatchEncoder`` layers (registered, package ``kslim_zoo``)."""
    if _IO_LAYERS:
        return _IO_LAYERS["Patches"], _IO_LAYERS["PatchEncoder"]
    import keras
    from keras import layers, ops

    @keras.saving.register_keras_serializable(package="kslim_zoo")
    class Patches(layers.Layer):
        def __init__(self, patch_size, **kwargs):
            super().__init__(**kwargs)
            self.patch_size = patch_size

        def call(self, images):
            shape = ops.shape(images)
            patches = ops.image.extract_patches(images, size=self.patch_size)
            n = (shape[1] // self.patch_size) * (shape[2] // self.patch_size)
            return ops.reshape(patches, (shape[0], n, self.patch_size * self.patch_size * shape[3]))

        def get_config(self):
            return {**super().get_config(), "patch_size": self.patch_size}

    @keras.saving.register_keras_serializable(package="kslim_zoo")
    class PatchEncoder(layers.Layer):
        def __init__(self, num_patches, projection_dim, **kwargs):
            super().__init__(**kwargs)
            self.num_patches = num_patches
            self.projection_dim = projection_dim
            self.projection = layers.Dense(units=projection_dim)
            self.position_embedding = layers.Embedding(input_dim=num_patches, output_dim=projection_dim)

        def call(self, patch):
            positions = ops.expand_dims(ops.arange(start=0, stop=self.num_patches, step=1), axis=0)
            return self.projection(patch) + self.position_embedding(positions)

        def get_config(self):
            return {**super().get_config(), "num_patches": self.num_patches, "projection_dim": self.projection_dim}

    _IO_LAYERS.update(Patches=Patches, PatchEncoder=PatchEncoder)
    return Patches, PatchEncoder


@_entry("io_vit_mha", "keras.io", tags=("composite", "attention", "layer-norm", "transformer", "custom-layer"))
def _io_vit_mha():
    """keras.io 'Image classification with Vision Transformer': Patches, PatchEncoder, MultiHeadAttention."""
    import keras
    from keras import layers

    Patches, PatchEncoder = io_vit_layers()
    patch, dim = 8, 16
    num_patches = (IMAGE // patch) ** 2
    inputs = keras.Input((IMAGE, IMAGE, 3), name="image")
    encoded = PatchEncoder(num_patches, dim)(Patches(patch)(inputs))
    for _ in range(2):
        x1 = layers.LayerNormalization(epsilon=1e-6)(encoded)
        attention = layers.MultiHeadAttention(num_heads=2, key_dim=dim, dropout=0.1)(x1, x1)
        x2 = layers.Add()([attention, encoded])
        x3 = layers.LayerNormalization(epsilon=1e-6)(x2)
        x3 = layers.Dense(dim * 2, activation=keras.activations.gelu)(x3)
        x3 = layers.Dropout(0.1)(x3)
        x3 = layers.Dense(dim, activation=keras.activations.gelu)(x3)
        encoded = layers.Add()([x3, x2])
    x = layers.LayerNormalization(epsilon=1e-6)(encoded)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.5)(x)
    x = layers.Dense(32, activation=keras.activations.gelu)(x)
    outputs = layers.Dense(CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs, name="io_vit_mha")


@_entry("io_lstm", "keras.io", input_kind="sequence", tags=("embedding", "rnn", "lstm"))
def _io_lstm():
    """Embedding + LSTM(16) + Dense: the LSTM text classifier of the keras.io RNN guide."""
    import keras
    from keras import layers

    inputs = keras.Input((SEQ,), dtype="int32", name="tokens")
    x = layers.Embedding(VOCAB, 16)(inputs)
    x = layers.LSTM(16)(x)
    outputs = layers.Dense(CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs, name="io_lstm")


@_entry("io_gru_bidir", "keras.io", input_kind="sequence", tags=("embedding", "rnn", "gru", "bidirectional"))
def _io_gru_bidir():
    """keras.io 'Bidirectional LSTM on IMDB' with GRUs: Embedding + 2 Bidirectional(GRU) + Dense."""
    import keras
    from keras import layers

    inputs = keras.Input((SEQ,), dtype="int32", name="tokens")
    x = layers.Embedding(VOCAB, 16)(inputs)
    x = layers.Bidirectional(layers.GRU(8, return_sequences=True))(x)
    x = layers.Bidirectional(layers.GRU(8))(x)
    outputs = layers.Dense(CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs, name="io_gru_bidir")


@_entry("io_nested_twice", "keras.io", tags=("nested", "shared", "residual"))
def _io_nested_twice():
    """A residual block written as a small functional Model and called twice (shared weights) in a model."""
    import keras
    from keras import layers

    bin_ = keras.Input((16, 16, 16), name="block_in")
    y = layers.Conv2D(16, 3, padding="same", use_bias=False, name="block_conv1")(bin_)
    y = layers.BatchNormalization(name="block_bn1")(y)
    y = layers.ReLU(name="block_relu1")(y)
    y = layers.Conv2D(16, 3, padding="same", use_bias=False, name="block_conv2")(y)
    y = layers.BatchNormalization(name="block_bn2")(y)
    y = layers.ReLU(name="block_relu2")(layers.Add(name="block_add")([y, bin_]))
    block = keras.Model(bin_, y, name="res_block")

    inputs = keras.Input((IMAGE, IMAGE, 3), name="image")
    x = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="stem")(inputs)
    x = block(x)
    x = block(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs, name="io_nested_twice")


@_entry("io_transfer_mobilenetv2", "keras.io", tags=("nested", "sequential", "transfer-learning", "applications"))
def _io_transfer_mobilenetv2():
    """The transfer-learning guide: Sequential([Input, Rescaling, MobileNetV2(alpha 0.35) base, GAP, Dense])."""
    import keras
    from keras import layers

    base_model = keras.applications.MobileNetV2(input_shape=(IMAGE, IMAGE, 3), alpha=0.35, include_top=False,
                                                weights=None)
    return keras.Sequential([
        keras.Input((IMAGE, IMAGE, 3)),
        layers.Rescaling(1.0 / 127.5, offset=-1),
        base_model,
        layers.GlobalAveragePooling2D(),
        layers.Dropout(0.2),
        layers.Dense(CLASSES, name="logits"),
    ], name="io_transfer_mobilenetv2")


@_entry("io_multi_input", "keras.io", input_kind="multi", tags=("multi-input", "concatenate"))
def _io_multi_input():
    """Two inputs as a list, [image, features]: a conv branch and a Dense branch concatenated."""
    import keras
    from keras import layers

    image = keras.Input((IMAGE, IMAGE, 3), name="image")
    features = keras.Input((8,), name="features")
    x = layers.Conv2D(8, 3, strides=2, activation="relu")(image)
    x = layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    f = layers.Dense(8, activation="relu")(features)
    x = layers.Concatenate()([x, f])
    outputs = layers.Dense(CLASSES, name="logits")(x)
    return keras.Model([image, features], outputs, name="io_multi_input")


@_entry("io_dict_input", "keras.io", input_kind="dict", tags=("dict-input", "concatenate"))
def _io_dict_input():
    """Dict inputs {'image', 'meta'} (the functional API guide's multi-input pattern with named inputs)."""
    import keras
    from keras import layers

    image = keras.Input((IMAGE, IMAGE, 3), name="image")
    meta = keras.Input((4,), name="meta")
    x = layers.Conv2D(8, 3, strides=2, activation="relu")(image)
    x = layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    m = layers.Dense(8, activation="relu")(meta)
    x = layers.Concatenate()([x, m])
    outputs = layers.Dense(CLASSES, name="logits")(x)
    return keras.Model({"image": image, "meta": meta}, outputs, name="io_dict_input")


__all__ = ["ZOO", "REPRESENTATIVE", "ZooEntry", "sample_inputs", "batch_of", "randomize", "recalibrate_batch_norm",
           "io_vit_layers", "IMAGE", "CLASSES", "VOCAB", "SEQ"]
