"""Architecture search spaces as keras-tuner hypermodels.

* :class:`MobileNetV2Space` — a chain of inverted-residual blocks; per block the expansion factor,
  output channels, depthwise kernel size and number of repeats are searched (PaddleSlim's
  ``MobileNetV2BlockSpace``).
* :class:`ResNetSpace` — stages of basic residual blocks; per stage the channels and number of
  blocks are searched, plus the stem width.

Writing your own space
----------------------
Any ``keras_tuner.HyperModel`` (or function ``hp -> compiled keras.Model``) works with
:class:`~kslim.nas.SimulatedAnnealingOracle` and :func:`~kslim.nas.search`. Subclassing
:class:`SearchSpace` adds two things: :meth:`SearchSpace.compile` (Adam + sparse categorical
cross-entropy on logits + accuracy) and :meth:`SearchSpace.smallest_values`, which lets the
oracle say at once when a FLOPs/latency limit is below the smallest model of the space::

    import keras
    from kslim.nas import SearchSpace

    class TinyCNN(SearchSpace):
        def build(self, hp):
            inputs = keras.Input(self.input_shape)
            x = inputs
            for i in range(hp.Int("layers", 1, 3)):
                x = keras.layers.Conv2D(hp.Choice(f"filters{i}", [8, 16, 32]), 3, strides=2,
                                        activation="relu")(x)
            x = keras.layers.GlobalAveragePooling2D()(x)
            return self.compile(keras.Model(inputs, keras.layers.Dense(self.num_classes)(x)))

Declare every hyperparameter with ``hp.Choice``/``hp.Int``/``hp.Float``/``hp.Boolean``; the
defaults are the starting point of the annealing. :meth:`SearchSpace.smallest_values` takes each
hyperparameter's smallest value; override it when "smaller value" does not mean "smaller model".
"""

import keras
import keras_tuner
from keras import layers
from keras_tuner.src.engine import hyperparameters as hp_module

from kslim.errors import KslimValueError
from kslim.models._common import BN_MOMENTUM, check_input
from kslim.models.resnet import _basic_block  # the reference ResNet's block, shared


class SearchSpace(keras_tuner.HyperModel):
    """Base class of kslim's search spaces (a ``keras_tuner.HyperModel`` for a classifier).

    Args:
        input_shape: (H, W, C) of the images.
        num_classes: classes of the final Dense layer (logits).
        learning_rate: Adam learning rate used by :meth:`compile`.
    """

    def __init__(self, input_shape=(28, 28, 1), num_classes=10, learning_rate=1e-3, name=None):
        check_input(input_shape, num_classes)
        super().__init__(name=name or type(self).__name__, tunable=True)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        self.learning_rate = float(learning_rate)

    def compile(self, model):
        """Compile ``model`` for integer labels and logits (Adam, sparse CE, accuracy); returns it."""
        model.compile(
            optimizer=keras.optimizers.Adam(self.learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        return model

    def hyperparameters(self):
        """The ``keras_tuner.HyperParameters`` this space declares (with default values)."""
        hp = keras_tuner.HyperParameters()
        self.build(hp)
        return hp

    def smallest_values(self):
        """Values giving the smallest model: each hyperparameter's smallest value.

        Used by :class:`~kslim.nas.SimulatedAnnealingOracle` to report an unreachable constraint
        before the search starts.
        """
        out = {}
        for hp in self.hyperparameters().space:
            if isinstance(hp, hp_module.Choice):
                try:
                    out[hp.name] = min(hp.values)
                except TypeError:
                    out[hp.name] = hp.default
            elif isinstance(hp, (hp_module.Int, hp_module.Float)):
                out[hp.name] = hp.min_value
            else:
                out[hp.name] = hp.default
        return out


class MobileNetV2Space(SearchSpace):
    """MobileNetV2-style block space: a stem conv, then ``len(blocks)`` searchable inverted-residual blocks.

    Per block ``i`` (1-based) the hyperparameters are ``block{i}_expansion`` (1x1 expansion factor),
    ``block{i}_channels`` (output channels), ``block{i}_kernel`` (depthwise kernel) and
    ``block{i}_repeats`` (how many inverted residuals; the first has the block's stride, the others
    stride 1 with an identity shortcut). Plus ``stem_channels``. Ends with global pooling and Dense.

    Args:
        input_shape, num_classes, learning_rate: see :class:`SearchSpace`.
        blocks: one ``(stride, channel_choices)`` per block.
        expansions, kernels, repeats: the choices shared by all blocks.
        stem_channels: choices for the stem's 3x3 conv.
        defaults: dict of default values (the annealing's starting point); otherwise each block's
            middle channel choice, expansion 4 (or the nearest), kernel 3, 1 repeat.

    Example:
        >>> import keras_tuner
        >>> space = MobileNetV2Space(input_shape=(16, 16, 1), num_classes=10)
        >>> space.build(keras_tuner.HyperParameters()).output_shape
        (None, 10)
    """

    DEFAULT_BLOCKS = ((1, (8, 12, 16)), (2, (16, 24, 32)), (2, (24, 32, 48, 64)), (1, (32, 48, 64, 96)))

    def __init__(self, input_shape=(28, 28, 1), num_classes=10, blocks=DEFAULT_BLOCKS,
                 expansions=(1, 2, 4, 6), kernels=(3, 5), repeats=(1, 2, 3), stem_channels=(8, 16, 24),
                 defaults=None, learning_rate=1e-3, name=None):
        super().__init__(input_shape, num_classes, learning_rate, name=name)
        if not blocks:
            raise KslimValueError("MobileNetV2Space: blocks must list at least one (stride, channel_choices).")
        self.blocks = tuple((int(s), tuple(int(c) for c in ch)) for s, ch in blocks)
        self.expansions = tuple(int(e) for e in expansions)
        self.kernels = tuple(int(k) for k in kernels)
        self.repeats = tuple(int(r) for r in repeats)
        self.stem_channels = tuple(int(c) for c in stem_channels)
        self.defaults = dict(defaults or {})

    def _default(self, name, choices, fallback):
        v = self.defaults.get(name, fallback)
        return v if v in choices else choices[len(choices) // 2]

    def build(self, hp):
        inputs = keras.Input(shape=self.input_shape, name="input")
        stem = hp.Choice("stem_channels", self.stem_channels,
                         default=self._default("stem_channels", self.stem_channels, self.stem_channels[0]))
        x = layers.Conv2D(stem, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
        x = layers.ReLU(6.0, name="stem_relu")(x)
        for i, (stride, channel_choices) in enumerate(self.blocks, start=1):
            e = hp.Choice(f"block{i}_expansion", self.expansions,
                          default=self._default(f"block{i}_expansion", self.expansions, 4))
            c = hp.Choice(f"block{i}_channels", channel_choices,
                          default=self._default(f"block{i}_channels", channel_choices,
                                                channel_choices[len(channel_choices) // 2]))
            k = hp.Choice(f"block{i}_kernel", self.kernels,
                          default=self._default(f"block{i}_kernel", self.kernels, 3))
            r = hp.Choice(f"block{i}_repeats", self.repeats,
                          default=self._default(f"block{i}_repeats", self.repeats, 1))
            for j in range(1, r + 1):
                x = _inverted_residual(x, e, c, k, stride if j == 1 else 1, name=f"block{i}_{j}")
        x = layers.GlobalAveragePooling2D(name="pool")(x)
        outputs = layers.Dense(self.num_classes, name="logits")(x)
        return self.compile(keras.Model(inputs, outputs, name="mobilenetv2_space"))


# PaddleSlim's name for the same space
MobileNetV2BlockSpace = MobileNetV2Space


def _inverted_residual(x, expansion, channels, kernel, stride, name):
    in_channels = x.shape[-1]
    y = x
    if expansion != 1:
        y = layers.Conv2D(in_channels * expansion, 1, use_bias=False, name=f"{name}_expand")(y)
        y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_expand_bn")(y)
        y = layers.ReLU(6.0, name=f"{name}_expand_relu")(y)
    y = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(y)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_dw_bn")(y)
    y = layers.ReLU(6.0, name=f"{name}_dw_relu")(y)
    y = layers.Conv2D(channels, 1, use_bias=False, name=f"{name}_project")(y)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_project_bn")(y)
    if stride == 1 and in_channels == channels:
        y = layers.Add(name=f"{name}_add")([x, y])
    return y


class ResNetSpace(SearchSpace):
    """ResNet-style space: a 3x3 stem, then stages of basic residual blocks (two 3x3 convs + Add).

    Hyperparameters: ``stem_channels``, and per stage ``i`` ``stage{i}_channels`` and
    ``stage{i}_blocks``. The first block of a stage has the stage's stride and a 1x1 projection
    shortcut when the shape changes.

    Args:
        stages: one ``(stride, channel_choices)`` per stage.
        blocks: choices of blocks per stage.
        stem_channels: choices for the stem conv.
        defaults: dict of default values (starting point).

    Example:
        >>> import keras_tuner
        >>> ResNetSpace(input_shape=(16, 16, 1)).build(keras_tuner.HyperParameters()).output_shape
        (None, 10)
    """

    DEFAULT_STAGES = ((1, (8, 16, 24, 32)), (2, (16, 32, 48, 64)), (2, (32, 64, 96, 128)))

    def __init__(self, input_shape=(28, 28, 1), num_classes=10, stages=DEFAULT_STAGES, blocks=(1, 2),
                 stem_channels=(8, 16, 24), defaults=None, learning_rate=1e-3, name=None):
        super().__init__(input_shape, num_classes, learning_rate, name=name)
        if not stages:
            raise KslimValueError("ResNetSpace: stages must list at least one (stride, channel_choices).")
        self.stages = tuple((int(s), tuple(int(c) for c in ch)) for s, ch in stages)
        self.blocks = tuple(int(b) for b in blocks)
        self.stem_channels = tuple(int(c) for c in stem_channels)
        self.defaults = dict(defaults or {})

    def _default(self, name, choices):
        v = self.defaults.get(name)
        return v if v in choices else choices[(len(choices) - 1) // 2]

    def build(self, hp):
        inputs = keras.Input(shape=self.input_shape, name="input")
        stem = hp.Choice("stem_channels", self.stem_channels,
                         default=self._default("stem_channels", self.stem_channels))
        x = layers.Conv2D(stem, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
        x = layers.ReLU(name="stem_relu")(x)
        for s, (stride, channel_choices) in enumerate(self.stages, start=1):
            c = hp.Choice(f"stage{s}_channels", channel_choices,
                          default=self._default(f"stage{s}_channels", channel_choices))
            n = hp.Choice(f"stage{s}_blocks", self.blocks,
                          default=self.defaults.get(f"stage{s}_blocks", self.blocks[0]))
            for b in range(1, n + 1):
                x = _basic_block(x, c, stride if b == 1 else 1, name=f"stage{s}_block{b}")
        x = layers.GlobalAveragePooling2D(name="pool")(x)
        outputs = layers.Dense(self.num_classes, name="logits")(x)
        return self.compile(keras.Model(inputs, outputs, name="resnet_space"))


SPACES = {"mobilenetv2": MobileNetV2Space, "resnet": ResNetSpace}


def get_space(name, **kwargs):
    """A search space by name (``"mobilenetv2"``, ``"resnet"``)."""
    try:
        cls = SPACES[str(name).lower().replace("-", "").replace("_", "")]
    except KeyError:
        raise KslimValueError(f"Unknown search space {name!r}; choose one of {sorted(SPACES)}.") from None
    return cls(**kwargs)
