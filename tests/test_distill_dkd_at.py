"""Decoupled KD and attention transfer (kslim.distill.losses): the DKD decomposition of Hinton's KD
holds numerically, attention transfer matches the paper's formula, both train inside a Distiller."""

import keras
import numpy as np
import pytest

from kslim.distill import AttentionLoss, DKDLoss, Distiller, Pair, attention_loss, dkd_loss
from kslim.distill.losses import dkd_per_sample


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_dkd_decomposes_hinton_kd():
    rng = np.random.default_rng(0)
    t, s, y, temp = rng.normal(size=(6, 5)) * 2, rng.normal(size=(6, 5)), rng.integers(0, 5, 6), 3.0
    pt, ps = _softmax(t / temp), _softmax(s / temp)
    kd = (pt * (np.log(pt) - np.log(ps))).sum(-1) * temp ** 2
    tckd = np.asarray(dkd_per_sample(t, s, y, alpha=1.0, beta=0.0, temperature=temp))
    nckd = np.asarray(dkd_per_sample(t, s, y, alpha=0.0, beta=1.0, temperature=temp))
    p_target = pt[np.arange(6), y]
    np.testing.assert_allclose(kd, tckd + (1 - p_target) * nckd, rtol=1e-4, atol=1e-5)  # Zhao et al., eq. 7
    one_hot = np.eye(5)[y]
    np.testing.assert_allclose(np.asarray(dkd_per_sample(t, s, one_hot)), np.asarray(dkd_per_sample(t, s, y)),
                               rtol=1e-6)
    assert float(dkd_loss(t, t, y)) == pytest.approx(0.0, abs=1e-5)
    cfg = DKDLoss(alpha=2.0, beta=4.0, temperature=2.0).get_config()
    assert DKDLoss.from_config(cfg).beta == 4.0


def test_attention_transfer_is_the_papers_formula():
    rng = np.random.default_rng(1)
    t, s = rng.normal(size=(2, 4, 4, 8)), rng.normal(size=(2, 4, 4, 3))  # channel counts may differ

    def at(f):
        a = (f ** 2).mean(-1).reshape(len(f), -1)
        return a / np.linalg.norm(a, axis=-1, keepdims=True)

    expected = ((at(t) - at(s)) ** 2).mean()
    assert float(attention_loss(t, s)) == pytest.approx(expected, rel=1e-5)
    assert float(AttentionLoss()(t, s)) == pytest.approx(expected, rel=1e-5)


def _net(channels, name):
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(channels, 3, padding="same", activation="relu", name="feat")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(4, name="logits")(x), name=name)


def test_dkd_and_attention_pairs_train_in_a_distiller():
    keras.utils.set_random_seed(0)
    teacher, student = _net(8, "teacher"), _net(3, "student")
    teacher.trainable = False
    rng = np.random.default_rng(0)
    x, y = rng.random((32, 8, 8, 1), dtype=np.float32), rng.integers(0, 4, 32)
    d = Distiller(student, teacher, pairs=[Pair(None, None, "dkd", temperature=2.0),
                                           Pair("feat", "feat", "attention", weight=10.0)],
                  hard_loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    d.compile(keras.optimizers.Adam(1e-2))
    before = student.get_layer("feat").get_weights()[0].copy()
    hist = d.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert {"dkd_loss", "attention_loss"} <= set(hist.history)
    assert hist.history["dkd_loss"][-1] < hist.history["dkd_loss"][0]
    assert not np.allclose(before, student.get_layer("feat").get_weights()[0])
