"""A Distiller given nothing to learn from (issue 17.9): soft-label distillation of the outputs, with a warning."""

import keras
import numpy as np
import pytest

from kslim.distill import Distiller


def _net(name, width):
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(width, 3, name="conv"),
                             keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, name="logits")], name=name)


def test_no_pairs_and_no_hard_loss_defaults_to_soft_labels_on_the_outputs():
    teacher, student = _net("teacher", 8), _net("student", 4)
    teacher.trainable = False
    with pytest.warns(UserWarning, match="no pairs and no hard_loss.*soft labels"):
        d = Distiller(student, teacher)
    (pair,) = d.pairs
    assert pair.teacher == (None,) and pair.student == (None,) and pair.builtin == "soft_label"
    d.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = [w.copy() for w in student.get_weights()]
    x = np.random.default_rng(0).uniform(size=(32, 8, 8, 1)).astype("float32")
    history = d.fit(x, epochs=2, batch_size=8, verbose=0)  # no labels needed, no "No gradients provided"
    assert "soft_label_loss" in history.history
    assert history.history["soft_label_loss"][-1] < history.history["soft_label_loss"][0]
    assert any(not np.allclose(a, b) for a, b in zip(before, student.get_weights()))


def test_an_explicit_choice_does_not_warn(recwarn):
    teacher, student = _net("teacher", 8), _net("student", 4)
    teacher.trainable = False
    Distiller(student, teacher, hard_loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    Distiller(student, teacher, pairs=[("logits", "logits", "l2")])
    assert not [w for w in recwarn if issubclass(w.category, UserWarning) and "no pairs" in str(w.message)]
