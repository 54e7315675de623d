"""AutoCompress (kslim.nas.auto_compress): rounds of simulated-annealing ratios + ADMM reach the FLOPs
target on the physically pruned model, each round through the user's own fit."""

import keras
import numpy as np
import pytest

import kslim
from kslim.errors import KslimTypeError
from kslim.nas import auto_compress


def _model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, name="c1", activation="relu")(inp)
    x = keras.layers.Conv2D(8, 3, name="c2", activation="relu")(x)
    x = keras.layers.Conv2D(8, 1, name="c3", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(3, name="fc")(x))


def test_auto_compress_reaches_the_target_in_rounds(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.random((32, 8, 8, 1), dtype=np.float32), rng.integers(0, 3, 32)
    fits = []

    def train_fn(model, callbacks):
        model.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=callbacks)
        fits.append(type(callbacks[0]).__name__)

    def score(m):
        return float(np.mean(np.argmax(np.asarray(m(x)), -1) == y))

    m = _model()
    res = auto_compress(m, score, train_fn, flops_reduction=0.4, rounds=2, max_trials=3, rho=0.5,
                        directory=tmp_path)
    assert res.flops_reduction >= 0.4 and res.flops == 2 * kslim.flops(res.model).macs
    assert len(res.rounds) == 2 and res.rounds[0]["target"] < res.rounds[1]["target"] == pytest.approx(0.4)
    assert fits == ["ADMMPruning"] * sum(1 for r in res.rounds if r["ratios"])
    assert res.model.count_params() < m.count_params() and m.get_layer("c1").filters == 8
    with pytest.raises(KslimTypeError, match="train_fn"):
        auto_compress(m, score, None, flops_reduction=0.4)
