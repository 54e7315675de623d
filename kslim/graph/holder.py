"""``WeightHolder``: a weight that a composite layer uses directly in ``call()``, as a graph node.

When kslim expands a composite layer (see :func:`kslim.graph.keras_graph.expand_composites`) that owns
weights of its own (``self.add_weight`` in a keras-hub block: a learnable scale, a position
embedding), each such weight becomes the output of a ``WeightHolder`` node, so the dependency graph
sees which channels it indexes, surgery can slice it, and FLOPs count it (0). In the expanded model the
holder *is* the original variable (shared); a pruned copy gets its own.
"""

import keras


@keras.saving.register_keras_serializable(package="kslim")
class WeightHolder(keras.layers.Layer):
    """Outputs its weight (shape ``shape``, no batch axis); its input only anchors it in the graph.

    Example:
        >>> import numpy as np
        >>> h = WeightHolder(shape=(3,), name="gain")
        >>> tuple(h(np.zeros((2, 5))).shape)
        (3,)
    """

    def __init__(self, shape, initializer="zeros", variable=None, **kwargs):
        super().__init__(**kwargs)
        self.weight_shape = tuple(int(d) for d in shape)
        self.initializer = keras.initializers.get(initializer)
        self._given = variable

    def build(self, input_shape=None):
        if self._given is not None:
            from kslim.graph.keras_graph import track_variable

            self.weight = self._given
            track_variable(self, self._given)
        else:
            self.weight = self.add_weight(shape=self.weight_shape, initializer=self.initializer, name="weight",
                                          trainable=self.trainable)
        self.built = True

    def call(self, anchor):
        return keras.ops.convert_to_tensor(self.weight)

    def compute_output_shape(self, input_shape):
        return self.weight_shape

    def get_config(self):
        return {**super().get_config(), "shape": list(self.weight_shape),
                "initializer": keras.initializers.serialize(self.initializer)}


__all__ = ["WeightHolder"]
