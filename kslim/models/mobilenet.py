"""A MobileNetV1-style reference network for small images (depthwise separable blocks)."""

import keras
from keras import layers

from kslim.models._common import BN_MOMENTUM, check_input, scaled

# (filters, stride) of each depthwise-separable block, for 28x28 inputs.
_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 1))


def mobilenet_v1(input_shape=(28, 28, 1), num_classes=10, width=1.0, dropout=0.2, name=None):
    """MobileNetV1-style classifier: a 3x3 stem, depthwise-separable blocks, global pooling, Dense.

    Args:
        input_shape: (H, W, C) of the images.
        num_classes: classes of the final Dense layer (logits, no softmax).
        width: channel multiplier (0.25, 0.5, 1.0 ...).
        dropout: dropout rate before the classifier.

    Example:
        >>> model = mobilenet_v1(width=0.5)
        >>> model.output_shape
        (None, 10)
    """
    check_input(input_shape, num_classes)
    inputs = keras.Input(shape=input_shape, name="input")
    x = layers.Conv2D(scaled(32, width), 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    for i, (filters, stride) in enumerate(_BLOCKS, start=1):
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"block{i}_dw")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"block{i}_dw_bn")(x)
        x = layers.ReLU(6.0, name=f"block{i}_dw_relu")(x)
        x = layers.Conv2D(scaled(filters, width), 1, use_bias=False, name=f"block{i}_pw")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"block{i}_pw_bn")(x)
        x = layers.ReLU(6.0, name=f"block{i}_pw_relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name or f"mobilenet_v1_w{width:g}")
