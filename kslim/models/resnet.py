"""A ResNet-style reference network for small images (residual Add, projection shortcuts)."""

import keras
from keras import layers

from kslim.models._common import BN_MOMENTUM, check_input, scaled

# (filters, stride) of each stage; each stage has ``blocks_per_stage`` basic blocks.
_STAGES = ((32, 1), (64, 2), (128, 2))


def _basic_block(x, filters, stride, name):
    shortcut = x
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn2")(y)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_proj")(x)
        shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_proj_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def resnet(input_shape=(28, 28, 1), num_classes=10, width=1.0, blocks_per_stage=1, name=None):
    """ResNet-style classifier: a 3x3 stem then stages of basic residual blocks (Add), GAP, Dense.

    Stages that change the channel count or stride use a 1x1 projection shortcut.

    Example:
        >>> model = resnet(width=0.5)
        >>> model.output_shape
        (None, 10)
    """
    check_input(input_shape, num_classes)
    inputs = keras.Input(shape=input_shape, name="input")
    x = layers.Conv2D(scaled(32, width), 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for s, (filters, stride) in enumerate(_STAGES, start=1):
        for b in range(1, int(blocks_per_stage) + 1):
            x = _basic_block(x, scaled(filters, width), stride if b == 1 else 1, name=f"stage{s}_block{b}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name or f"resnet_w{width:g}")
