"""Knowledge distillation: train a small student against a frozen teacher with plain Keras ``fit``.

:class:`Distiller` is a ``keras.Model`` whose loss is the hard-label loss plus weighted
distillation terms, each a :class:`Pair` of teacher and student layers (any depth, nested models
by path) with a loss: :func:`soft_label_loss`, :func:`l2_loss`, :func:`fsp_loss` (also as Keras
losses :class:`SoftLabelLoss`, :class:`L2Loss`, :class:`FSPLoss`) or any callable. Mismatched
channel counts can be bridged by a learnable :class:`FeatureAdaptor` (1x1 conv) that is dropped
afterwards: ``distiller.student`` is the plain trained student.

Example:
    >>> import keras
    >>> from kslim.distill import Distiller, Pair
    >>> from kslim.models import mobilenet_v1, resnet
    >>> teacher = resnet(width=0.25); teacher.trainable = False
    >>> d = Distiller(mobilenet_v1(width=0.25), teacher,
    ...               pairs=[Pair("logits", "logits", "soft_label", temperature=4.0)],
    ...               hard_loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> d.pair_names
    ['soft_label']
"""

from kslim.distill.adaptor import FeatureAdaptor
from kslim.distill.distiller import Distiller
from kslim.distill.features import feature_model, layer_paths, resolve_layer
from kslim.distill.losses import (
    AttentionLoss,
    DKDLoss,
    FSPLoss,
    L2Loss,
    SoftLabelLoss,
    attention_loss,
    dkd_loss,
    fsp_loss,
    fsp_matrix,
    l2_loss,
    soft_label_loss,
    standardize_logits,
)
from kslim.distill.pair import Pair

__all__ = [
    "Distiller", "Pair", "FeatureAdaptor",
    "soft_label_loss", "l2_loss", "fsp_loss", "fsp_matrix", "SoftLabelLoss", "L2Loss", "FSPLoss",
    "attention_loss", "dkd_loss", "AttentionLoss", "DKDLoss", "standardize_logits",
    "feature_model", "layer_paths", "resolve_layer",
]
