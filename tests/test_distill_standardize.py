"""Logit-standardized soft labels (Sun et al., CVPR 2024): ``standardize=True`` of the soft-label loss."""

import keras
import numpy as np
import pytest

from kslim.distill import Distiller, Pair, SoftLabelLoss, soft_label_loss, standardize_logits

RNG = np.random.default_rng(0)
T_LOGITS = RNG.normal(size=(8, 10)).astype("float32") * 5
S_LOGITS = RNG.normal(size=(8, 10)).astype("float32")


def _np_soft(t, s, temp):
    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    return float(np.mean(-(np.exp(log_softmax(t / temp)) * log_softmax(s / temp)).sum(-1)))


def test_standardize_logits_is_the_row_z_score():
    z = keras.ops.convert_to_numpy(standardize_logits(T_LOGITS))
    np.testing.assert_allclose(z.mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(-1), 1, atol=1e-4)
    expected = (T_LOGITS - T_LOGITS.mean(-1, keepdims=True)) / T_LOGITS.std(-1, keepdims=True)
    np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-5)


def test_standardized_soft_labels_equal_soft_labels_of_z_scored_logits_and_ignore_logit_range():
    zt = (T_LOGITS - T_LOGITS.mean(-1, keepdims=True)) / T_LOGITS.std(-1, keepdims=True)
    zs = (S_LOGITS - S_LOGITS.mean(-1, keepdims=True)) / S_LOGITS.std(-1, keepdims=True)
    got = float(soft_label_loss(T_LOGITS, S_LOGITS, 2.0, 2.0, standardize=True))
    assert got == pytest.approx(_np_soft(zt, zs, 2.0), rel=1e-5)
    # a student whose logits are an affine copy (shift + positive scale) of the teacher's: the same loss as
    # the teacher against itself (its minimum); the plain loss tells the two apart
    affine = 0.1 * T_LOGITS + 3.0
    assert got > float(soft_label_loss(T_LOGITS, affine, 2.0, 2.0, standardize=True))
    assert float(soft_label_loss(T_LOGITS, affine, 2.0, 2.0, standardize=True)) == pytest.approx(
        float(soft_label_loss(T_LOGITS, T_LOGITS, 2.0, 2.0, standardize=True)), rel=1e-5)
    assert float(soft_label_loss(T_LOGITS, affine, 2.0, 2.0)) > float(soft_label_loss(T_LOGITS, T_LOGITS, 2.0, 2.0))


def test_soft_label_loss_object_round_trips_standardize_and_a_pair_uses_it():
    loss = SoftLabelLoss(temperature=2.0, standardize=True)
    again = SoftLabelLoss.from_config(loss.get_config())
    assert again.standardize is True
    assert float(again(T_LOGITS, S_LOGITS)) == pytest.approx(
        float(soft_label_loss(T_LOGITS, S_LOGITS, 2.0, 2.0, standardize=True)), rel=1e-5)
    assert SoftLabelLoss.from_config(SoftLabelLoss(temperature=2.0).get_config()).standardize is False

    inputs = keras.Input((4,))
    teacher = keras.Model(inputs, keras.layers.Dense(3, name="logits")(inputs))
    s_in = keras.Input((4,))
    student = keras.Model(s_in, keras.layers.Dense(3, name="logits")(s_in))
    d = Distiller(student, teacher, pairs=[Pair("logits", "logits", "soft_label", temperature=2.0,
                                                standardize=True, weight=9.0)], hard_weight=0.1,
                  freeze_teacher=True)
    d.compile(optimizer="adam")
    hist = d.fit(RNG.normal(size=(32, 4)).astype("float32"), RNG.integers(0, 3, 32), epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][-1])
