"""A learnable 1x1 projection mapping a student feature to the teacher's channel count."""

import keras

from kslim.errors import KslimValueError


@keras.saving.register_keras_serializable(package="kslim")
class FeatureAdaptor(keras.layers.Layer):
    """1x1 convolution (rank-4 NHWC features) or Dense (any other rank) to ``channels`` channels.

    The :class:`~kslim.distill.Distiller` inserts one after a student feature when a pair asks
    for it (``adaptor=True`` or ``"auto"``); it is trained with the student and is not part of
    ``distiller.student``, so it is dropped when you take the student out.

    Example:
        >>> import numpy as np
        >>> FeatureAdaptor(64)(np.zeros((2, 7, 7, 16), "float32")).shape
        TensorShape([2, 7, 7, 64])
    """

    def __init__(self, channels, use_bias=False, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(channels, int) or channels < 1:
            raise KslimValueError(f"FeatureAdaptor channels must be a positive int, got {channels!r}.")
        self.channels = channels
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.projection = None

    def build(self, input_shape):
        kw = dict(use_bias=self.use_bias, kernel_initializer=self.kernel_initializer, name="projection")
        if len(input_shape) == 4:
            self.projection = keras.layers.Conv2D(self.channels, 1, **kw)
        else:
            self.projection = keras.layers.Dense(self.channels, **kw)
        self.projection.build(input_shape)

    def call(self, inputs):
        return self.projection(inputs)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.channels)

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, use_bias=self.use_bias,
                      kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
        return config
