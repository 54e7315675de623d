"""A plain VGG-style reference network (conv-BN-ReLU stacks, max pooling, Flatten, Dense)."""

import keras
from keras import layers

from kslim.models._common import BN_MOMENTUM, check_input, scaled

_STAGES = ((32, 2), (64, 2), (128, 1))  # (filters, convs) per stage, each followed by 2x2 max pooling


def vgg(input_shape=(28, 28, 1), num_classes=10, width=1.0, hidden=128, dropout=0.3, name=None):
    """VGG-style classifier: stacks of 3x3 conv + BN + ReLU with max pooling, Flatten, Dense, Dense.

    Example:
        >>> model = vgg(width=0.5)
        >>> model.output_shape
        (None, 10)
    """
    check_input(input_shape, num_classes)
    inputs = keras.Input(shape=input_shape, name="input")
    x = inputs
    for s, (filters, convs) in enumerate(_STAGES, start=1):
        for c in range(1, convs + 1):
            x = layers.Conv2D(scaled(filters, width), 3, padding="same", use_bias=False, name=f"conv{s}_{c}")(x)
            x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"bn{s}_{c}")(x)
            x = layers.ReLU(name=f"relu{s}_{c}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{s}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(scaled(hidden, width), activation="relu", name="fc1")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name or f"vgg_w{width:g}")
