"""Size of a model's weights in memory."""

import math
import re

from kslim.errors import KslimTypeError


def model_size(model):
    """Bytes of the floating-point weights of ``model``: sum of ``weight.size * itemsize``.

    Trainable and non-trainable weights (BN statistics) are counted, each shared variable once;
    integer weights (step counters, int8 quantized kernels) are not. This is the float model's
    footprint, the reference that a ``.tflite`` file size is compared with.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> model_size(m)  # (8 * 4 + 4) float32
        144
    """
    if not hasattr(model, "weights"):
        raise KslimTypeError(f"model_size() needs a Keras model or layer, got {type(model).__name__}.")
    seen, total = set(), 0
    for w in model.weights:
        if id(w) in seen:
            continue
        seen.add(id(w))
        m = re.fullmatch(r"b?float(\d+)", str(w.dtype))  # float16/32/64, bfloat16
        if m:
            total += math.prod(w.shape) * int(m.group(1)) // 8
    return int(total)
