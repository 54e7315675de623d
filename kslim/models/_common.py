"""Helpers shared by the reference models."""

from kslim.errors import KslimValueError


def scaled(channels, width, divisor=4, min_value=4):
    """Channel count ``channels * width`` rounded to a multiple of ``divisor`` (never below ``min_value``)."""
    if not width or width <= 0:
        raise KslimValueError(f"width must be > 0, got {width!r}.")
    v = max(min_value, int(channels * width + divisor / 2) // divisor * divisor)
    if v < 0.9 * channels * width:
        v += divisor
    return v


def check_input(input_shape, num_classes):
    if len(tuple(input_shape)) != 3:
        raise KslimValueError(f"input_shape must be (H, W, C), got {input_shape!r}.")
    if int(num_classes) < 2:
        raise KslimValueError(f"num_classes must be >= 2, got {num_classes!r}.")

# Keras' default 0.99 leaves the moving statistics far from the batch statistics after the few
# hundred steps a Fashion-MNIST subset gives; 0.9 tracks them within an epoch.
BN_MOMENTUM = 0.9
