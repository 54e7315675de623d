"""Rules for keras-hub layers, registered by class path so that kslim never imports keras-hub.

keras-hub builds most of its models from composite layers, which kslim sees through by tracing their
``call()`` (:func:`kslim.graph.keras_graph.expand_composites`). A few cannot be traced into a graph that
is valid for every input shape; those that kslim still understands as a unit get a rule here.
"""

from kslim.rules.base import LayerRule, register


@register("keras_hub.src.layers.modeling.position_embedding.PositionEmbedding")
class PositionEmbeddingRule(LayerRule):
    """``PositionEmbedding``: its output is its own table ``embeddings[:seq_len, :]`` broadcast to the
    input's shape, one column per channel of the input (the token embeddings it is added to). Its call
    slices by the input's *length*, which a trace at one length would freeze, so it is handled as a
    unit: a ``"carry"`` whose table is cut with the channels, and a shift (zero with its channel)."""

    channels = "carry"
    shift_weights = ("embeddings",)

    def macs(self, layer, inputs, outputs):
        return 0, 0   # a slice of a constant: no arithmetic
