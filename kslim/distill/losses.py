"""Distillation losses: soft labels (Hinton et al.; optionally of z-scored logits, Sun et al. 2024), L2
feature matching (FitNets), FSP (Yim et al.), attention transfer (Zagoruyko & Komodakis 2017) and
decoupled KD (DKD, Zhao et al. 2022).

Each loss exists in two forms:

* a function ``fn(teacher, student, ...) -> scalar`` (mean over the batch), usable on its own:
  :func:`soft_label_loss`, :func:`l2_loss`, :func:`fsp_loss`, :func:`attention_loss`,
  :func:`dkd_loss` (which also takes the labels);
* a ``keras.losses.Loss`` subclass called as ``loss(teacher, student, sample_weight=None)``
  (teacher in the ``y_true`` slot, student in ``y_pred``), which is what a :class:`~kslim.distill.Pair`
  uses: :class:`SoftLabelLoss`, :class:`L2Loss`, :class:`FSPLoss`, :class:`AttentionLoss`,
  :class:`DKDLoss` (its ``y_true`` is ``(teacher_logits, labels)``; a Distiller passes the batch's
  labels). They reduce per-sample values
  like every Keras loss (sample weights, ``tf.distribute`` scaling) and serialise with ``get_config``.

The teacher argument always comes first. All values are computed in float32.
"""

import keras
from keras import ops

from kslim.errors import KslimValueError

# ------------------------------------------------------------------------------------------------
# per-sample values (shape (batch,))


def _f32(x):
    return ops.cast(x, "float32")


def _check_temperature(name, value):
    if not isinstance(value, (int, float)) or value <= 0:
        raise KslimValueError(f"{name} must be a number > 0, got {value!r}.")
    return float(value)


def standardize_logits(logits, epsilon=1e-7):
    """Z-score of each row of logits over the last axis: ``(z - mean(z)) / (std(z) + epsilon)``.

    The pre-process of logit-standardized KD (Sun et al., CVPR 2024): the softened distributions then
    depend on the logits' relations, not on their range, so a small student is not pushed to match a
    big teacher's logit magnitude. Invariant to adding a constant and to a positive scale.

    Example:
        >>> import numpy as np
        >>> [round(float(v), 4) for v in standardize_logits(np.array([[3.0, 1.0, -1.0]]))[0]]
        [1.2247, 0.0, -1.2247]
    """
    logits = _f32(logits)
    centred = logits - ops.mean(logits, axis=-1, keepdims=True)
    return centred / (ops.std(logits, axis=-1, keepdims=True) + epsilon)


def soft_label_per_sample(teacher_logits, student_logits, teacher_temperature=1.0, student_temperature=1.0,
                          scale_by_temperature=False, standardize=False):
    """Per-sample cross-entropy ``H(softmax(t / Tt), softmax(s / Ts))`` over the last axis -> (batch,);
    ``standardize=True``: of the z-scored logits (:func:`standardize_logits`)."""
    teacher_logits, student_logits = _f32(teacher_logits), _f32(student_logits)
    if standardize:
        teacher_logits, student_logits = standardize_logits(teacher_logits), standardize_logits(student_logits)
    p_teacher = ops.softmax(teacher_logits / teacher_temperature, axis=-1)
    log_p_student = ops.log_softmax(student_logits / student_temperature, axis=-1)
    ce = -ops.sum(ops.stop_gradient(p_teacher) * log_p_student, axis=-1)
    if len(ce.shape) > 1:  # e.g. per-position logits (batch, T, classes): mean over the extra axes
        ce = ops.mean(ops.reshape(ce, (ops.shape(ce)[0], -1)), axis=-1)
    if scale_by_temperature:
        ce = ce * (teacher_temperature * student_temperature)
    return ce


def l2_per_sample(teacher_feature, student_feature):
    """Per-sample mean squared difference over every non-batch axis -> (batch,)."""
    diff = ops.square(_f32(student_feature) - ops.stop_gradient(_f32(teacher_feature)))
    return ops.mean(ops.reshape(diff, (ops.shape(diff)[0], -1)), axis=-1)


def _match_spatial(a, b):
    """Max-pool the larger of two NHWC maps down to the spatial size of the smaller (Yim et al. 2017)."""
    ha, wa = a.shape[1], a.shape[2]
    hb, wb = b.shape[1], b.shape[2]
    if None in (ha, wa, hb, wb):
        raise KslimValueError(
            f"fsp needs static spatial sizes, got {tuple(a.shape)} and {tuple(b.shape)}."
        )
    if (ha, wa) == (hb, wb):
        return a, b
    size = (min(ha, hb), min(wa, wb))
    if (ha, wa) != size:
        a = ops.adaptive_max_pool(a, size, data_format="channels_last")
    if (hb, wb) != size:
        b = ops.adaptive_max_pool(b, size, data_format="channels_last")
    return a, b


def fsp_matrix(a, b):
    """Flow of Solution Procedure matrix of two NHWC feature maps -> (batch, C_a, C_b).

    ``G[i, j] = sum_{h,w} a[h, w, i] * b[h, w, j] / (H * W)``. When the two maps have different
    spatial sizes the larger one is max-pooled down to the smaller (as Yim et al. do).

    Example:
        >>> import numpy as np
        >>> fsp_matrix(np.ones((2, 8, 8, 3)), np.ones((2, 4, 4, 5))).shape
        TensorShape([2, 3, 5])
    """
    a, b = _f32(a), _f32(b)
    if len(a.shape) != 4 or len(b.shape) != 4:
        raise KslimValueError(
            f"fsp needs two rank-4 NHWC feature maps, got shapes {tuple(a.shape)} and {tuple(b.shape)}."
        )
    a, b = _match_spatial(a, b)
    hw = a.shape[1] * a.shape[2]
    a = ops.reshape(a, (ops.shape(a)[0], hw, a.shape[3]))
    b = ops.reshape(b, (ops.shape(b)[0], hw, b.shape[3]))
    return ops.einsum("nki,nkj->nij", a, b) / float(hw)


def fsp_per_sample(teacher_maps, student_maps):
    """Per-sample mean squared difference of the teacher and student FSP matrices -> (batch,)."""
    t_a, t_b = teacher_maps
    s_a, s_b = student_maps
    g_t = ops.stop_gradient(fsp_matrix(t_a, t_b))
    g_s = fsp_matrix(s_a, s_b)
    if tuple(g_t.shape[1:]) != tuple(g_s.shape[1:]):
        raise KslimValueError(
            f"fsp: teacher FSP matrix is {tuple(g_t.shape[1:])} but student's is {tuple(g_s.shape[1:])}; "
            "the paired feature maps need the same channel counts (use adaptor=True)."
        )
    return ops.mean(ops.reshape(ops.square(g_s - g_t), (ops.shape(g_s)[0], -1)), axis=-1)


# ------------------------------------------------------------------------------------------------
# scalar functions


def soft_label_loss(teacher_logits, student_logits, teacher_temperature=1.0, student_temperature=1.0,
                    scale_by_temperature=False, standardize=False):
    """Softmax cross-entropy between the softened teacher and student distributions (a scalar).

    ``mean_batch( -sum_k softmax(t / Tt)_k * log softmax(s / Ts)_k )``; no gradient flows to the
    teacher. With the same temperature ``T`` on both sides the gradients of this term shrink as
    ``1 / T**2`` (Hinton et al., 2015): pass ``scale_by_temperature=True`` (multiplies by ``Tt * Ts``)
    or put ``T**2`` into the pair weight to keep its contribution independent of ``T``.
    PaddleSlim's ``soft_label_loss`` does not scale (``scale_by_temperature=False``).
    ``standardize=True`` z-scores both sides' logits first (logit-standardized KD, Sun et al. 2024;
    :func:`standardize_logits`); its authors pair it with a lower temperature (2 on CIFAR-100).

    Example:
        >>> import numpy as np
        >>> t = np.array([[2.0, 0.0, -1.0]]); s = np.array([[1.0, 0.5, 0.0]])
        >>> round(float(soft_label_loss(t, s, 2.0, 2.0)), 4)
        0.9973
    """
    tt = _check_temperature("teacher_temperature", teacher_temperature)
    ts = _check_temperature("student_temperature", student_temperature)
    return ops.mean(soft_label_per_sample(teacher_logits, student_logits, tt, ts, scale_by_temperature,
                                          bool(standardize)))


def l2_loss(teacher_feature, student_feature):
    """Mean squared difference between a teacher and a student feature of the same shape (a scalar).

    Example:
        >>> import numpy as np
        >>> float(l2_loss(np.zeros((2, 4)), np.ones((2, 4))))
        1.0
    """
    _check_same_shape("l2_loss", teacher_feature, student_feature)
    return ops.mean(l2_per_sample(teacher_feature, student_feature))


def fsp_loss(t_a, t_b, s_a, s_b):
    """FSP loss (Yim et al., CVPR 2017): mean squared difference of the FSP matrices (a scalar).

    ``G_t = fsp_matrix(t_a, t_b)`` and ``G_s = fsp_matrix(s_a, s_b)`` (see :func:`fsp_matrix`; maps
    of different spatial sizes are max-pooled to the smaller one). ``t_a``/``s_a`` and ``t_b``/``s_b``
    need the same channel counts. Like PaddleSlim, the mean (not the sum) over the ``C_a x C_b``
    entries is taken.

    Example:
        >>> import numpy as np
        >>> x, y = np.random.rand(2, 8, 8, 3), np.random.rand(2, 4, 4, 5)
        >>> float(fsp_loss(x, y, x, y))
        0.0
    """
    return ops.mean(fsp_per_sample((t_a, t_b), (s_a, s_b)))


def _check_same_shape(where, t, s):
    ts, ss = tuple(getattr(t, "shape", ())), tuple(getattr(s, "shape", ()))
    if len(ts) != len(ss) or any(a is not None and b is not None and a != b for a, b in zip(ts[1:], ss[1:])):
        raise KslimValueError(f"{where}: teacher shape {ts} and student shape {ss} differ.")


def attention_map(feature, p=2):
    """Spatial attention of an NHWC feature map: ``mean_c |F|^p`` flattened and L2-normalised -> (batch, H*W)."""
    a = ops.mean(ops.power(ops.abs(_f32(feature)), p), axis=-1)
    a = ops.reshape(a, (ops.shape(a)[0], -1))
    return a / (ops.sqrt(ops.sum(ops.square(a), axis=-1, keepdims=True)) + 1e-12)


def attention_per_sample(teacher_feature, student_feature, p=2):
    """Per-sample ``mean((AT(t) - AT(s))^2)`` over positions (the paper's reference code) -> (batch,).

    Channel counts may differ (the maps are averaged over channels); different spatial sizes are
    max-pooled to the smaller one.
    """
    t, s = _match_spatial(teacher_feature, student_feature)
    d = ops.square(ops.stop_gradient(attention_map(t, p)) - attention_map(s, p))
    return ops.mean(d, axis=-1)


def attention_loss(teacher_feature, student_feature, p=2):
    """Attention transfer (Zagoruyko & Komodakis 2017): match where the two networks look.

    Example:
        >>> import numpy as np
        >>> x = np.random.rand(2, 4, 4, 8)
        >>> float(attention_loss(x, np.concatenate([x, x], -1)))  # same attention, other channel count
        0.0
    """
    return ops.mean(attention_per_sample(teacher_feature, student_feature, p))


def _kl_rows(p_teacher, log_p_student):
    """``sum p_t (log p_t - log p_s)`` over the last axis (0 log 0 = 0)."""
    log_t = ops.log(ops.maximum(p_teacher, 1e-30))
    return ops.sum(ops.where(p_teacher > 0, p_teacher * (log_t - log_p_student), 0.0), axis=-1)


def dkd_per_sample(teacher_logits, student_logits, labels, alpha=1.0, beta=8.0, temperature=4.0):
    """Decoupled KD per sample: ``alpha * TCKD + beta * NCKD`` (both ``* T^2``) -> (batch,).

    TCKD is the KL divergence of the binary (target class, all others) distributions, NCKD that of
    the distributions over the non-target classes; Hinton's KD is ``TCKD + (1 - p_t) * NCKD`` with
    ``p_t`` the teacher's target probability (Zhao et al. 2022, eq. 7). ``labels``: class indices
    ``(batch,)`` or one-hot ``(batch, classes)``.
    """
    t, s = ops.stop_gradient(_f32(teacher_logits)) / temperature, _f32(student_logits) / temperature
    classes = s.shape[-1]
    labels = _f32(labels)
    gt = labels if len(labels.shape) == len(s.shape) else ops.one_hot(ops.cast(labels, "int32"), classes)
    gt = ops.cast(gt > 0.5, "float32")
    p_t, p_s = ops.softmax(t, axis=-1), ops.softmax(s, axis=-1)
    bt = ops.stack([ops.sum(p_t * gt, axis=-1), ops.sum(p_t * (1 - gt), axis=-1)], axis=-1)
    bs = ops.stack([ops.sum(p_s * gt, axis=-1), ops.sum(p_s * (1 - gt), axis=-1)], axis=-1)
    tckd = _kl_rows(bt, ops.log(ops.maximum(bs, 1e-30)))
    nt = ops.softmax(t - 1000.0 * gt, axis=-1)
    ns = ops.log_softmax(s - 1000.0 * gt, axis=-1)
    nckd = _kl_rows(nt, ns)
    return (alpha * tckd + beta * nckd) * temperature ** 2


def dkd_loss(teacher_logits, student_logits, labels, alpha=1.0, beta=8.0, temperature=4.0):
    """:func:`dkd_per_sample` averaged over the batch.

    Example:
        >>> import numpy as np
        >>> t = np.array([[3.0, 1.0, 0.0]]); y = np.array([0])
        >>> round(float(dkd_loss(t, t, y)), 4)  # 0 up to float32 rounding
        0.0
    """
    return ops.mean(dkd_per_sample(teacher_logits, student_logits, labels, alpha, beta, temperature))


# ------------------------------------------------------------------------------------------------
# keras.losses.Loss forms (what a Pair uses)


@keras.saving.register_keras_serializable(package="kslim")
class SoftLabelLoss(keras.losses.Loss):
    """:func:`soft_label_loss` as a Keras loss: ``SoftLabelLoss(T)(teacher_logits, student_logits)``.

    Args:
        temperature: sets both temperatures (shortcut).
        teacher_temperature, student_temperature: the softmax temperatures (default 1).
        scale_by_temperature: multiply by ``Tt * Ts`` (Hinton's ``T**2``).
        standardize: z-score both sides' logits before the softmax (logit-standardized KD).

    Example:
        >>> import numpy as np
        >>> loss = SoftLabelLoss(temperature=2.0)
        >>> t = np.array([[2.0, 0.0, -1.0]]); s = np.array([[1.0, 0.5, 0.0]])
        >>> round(float(loss(t, s)), 4)
        0.9973
    """

    def __init__(self, temperature=None, teacher_temperature=1.0, student_temperature=1.0,
                 scale_by_temperature=False, standardize=False, reduction="sum_over_batch_size", name="soft_label",
                 dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if temperature is not None:
            teacher_temperature = student_temperature = temperature
        self.teacher_temperature = _check_temperature("teacher_temperature", teacher_temperature)
        self.student_temperature = _check_temperature("student_temperature", student_temperature)
        self.scale_by_temperature = bool(scale_by_temperature)
        self.standardize = bool(standardize)

    def call(self, y_true, y_pred):
        return soft_label_per_sample(y_true, y_pred, self.teacher_temperature, self.student_temperature,
                                     self.scale_by_temperature, self.standardize)

    def get_config(self):
        config = super().get_config()
        config.update(teacher_temperature=self.teacher_temperature, student_temperature=self.student_temperature,
                      scale_by_temperature=self.scale_by_temperature, standardize=self.standardize)
        return config


@keras.saving.register_keras_serializable(package="kslim")
class L2Loss(keras.losses.Loss):
    """:func:`l2_loss` as a Keras loss: ``L2Loss()(teacher_feature, student_feature)``.

    Example:
        >>> import numpy as np
        >>> float(L2Loss()(np.zeros((2, 4)), np.ones((2, 4))))
        1.0
    """

    def __init__(self, reduction="sum_over_batch_size", name="l2", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        return l2_per_sample(y_true, y_pred)


@keras.saving.register_keras_serializable(package="kslim")
class FSPLoss(keras.losses.Loss):
    """:func:`fsp_loss` as a Keras loss: ``FSPLoss()((t_a, t_b), (s_a, s_b))``.

    Example:
        >>> import numpy as np
        >>> x, y = np.random.rand(2, 8, 8, 3), np.random.rand(2, 4, 4, 5)
        >>> float(FSPLoss()((x, y), (x, y)))
        0.0
    """

    def __init__(self, reduction="sum_over_batch_size", name="fsp", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        return fsp_per_sample(y_true, y_pred)


@keras.saving.register_keras_serializable(package="kslim")
class AttentionLoss(keras.losses.Loss):
    """:func:`attention_loss` as a Keras loss: ``AttentionLoss(p=2)(teacher_feature, student_feature)``."""

    def __init__(self, p=2, reduction="sum_over_batch_size", name="attention", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not isinstance(p, (int, float)) or p <= 0:
            raise KslimValueError(f"AttentionLoss(): p must be a number > 0, got {p!r}.")
        self.p = p

    def call(self, y_true, y_pred):
        return attention_per_sample(y_true, y_pred, self.p)

    def get_config(self):
        return {**super().get_config(), "p": self.p}


@keras.saving.register_keras_serializable(package="kslim")
class DKDLoss(keras.losses.Loss):
    """:func:`dkd_loss` as a Keras loss: ``DKDLoss()((teacher_logits, labels), student_logits)``.

    In a :class:`~kslim.distill.Pair` (``loss="dkd"``) the Distiller passes the batch's labels.
    Defaults are the paper's (``alpha=1, beta=8, T=4``).
    """

    needs_labels = True

    def __init__(self, alpha=1.0, beta=8.0, temperature=4.0, reduction="sum_over_batch_size", name="dkd",
                 dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        for what, v in (("alpha", alpha), ("beta", beta)):
            if not isinstance(v, (int, float)) or v < 0:
                raise KslimValueError(f"DKDLoss(): {what} must be a number >= 0, got {v!r}.")
        self.alpha, self.beta = float(alpha), float(beta)
        self.temperature = _check_temperature("temperature", temperature)

    def call(self, y_true, y_pred):
        teacher_logits, labels = y_true
        return dkd_per_sample(teacher_logits, y_pred, labels, self.alpha, self.beta, self.temperature)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta, "temperature": self.temperature}


#: the built-in loss names (a literal: the YAML schema reads it from the source, before TensorFlow)
LOSS_NAMES = ("soft_label", "l2", "fsp", "attention", "dkd")
# name -> (class, number of tensors per side)
BUILTIN_LOSSES = dict(zip(LOSS_NAMES, ((SoftLabelLoss, 1), (L2Loss, 1), (FSPLoss, 2), (AttentionLoss, 1),
                                       (DKDLoss, 1))))

__all__ = [
    "soft_label_loss", "standardize_logits", "l2_loss", "fsp_loss", "fsp_matrix", "attention_loss", "attention_map", "dkd_loss",
    "SoftLabelLoss", "L2Loss", "FSPLoss", "AttentionLoss", "DKDLoss", "BUILTIN_LOSSES", "LOSS_NAMES",
]
