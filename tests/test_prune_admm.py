"""ADMM filter pruning (kslim.prune.admm): the penalty drives the channels Z removes to zero, the
pruned model is exact for the weights it keeps, the model's own regularizers come back."""

import keras
import numpy as np
import pytest

from kslim.errors import KslimValueError
from kslim.prune import ADMMPruning
from kslim.prune.regularizers import group_norms


def _model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, name="c1", kernel_regularizer=keras.regularizers.L2(1e-4))(inp)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(8, 3, name="c2")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(3, name="fc")(x))


def _data(n=64):
    rng = np.random.default_rng(0)
    x = rng.random((n, 8, 8, 1), dtype=np.float32)
    return x, rng.integers(0, 3, n)


def test_admm_shrinks_the_removed_channels_and_prunes_exactly():
    m = _model()
    m.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data()
    own = m.get_layer("c1").kernel.regularizer
    admm = ADMMPruning(ratios=0.5, rho=1.0)
    hist = m.fit(x, y, batch_size=8, epochs=8, verbose=0, callbacks=[admm])
    assert "admm_residual" in hist.history and len(admm.history) == 8
    assert admm.history[-1] < 0.25 * admm.history[0]                # W converges to the sparse Z (measured 0.37 -> 0.03)
    g = admm.pruner.graph.group("c1")
    norms = group_norms(admm.pruner, g)
    removed = admm.plan["c1"]
    kept = np.setdiff1d(np.arange(g.size), removed)
    assert len(removed) == 4 and norms[removed].max() < 0.1 * norms[kept].min()  # measured 0.03 vs 1.1
    assert m.get_layer("c1").kernel.regularizer is own                # the model's own regularizer is back
    small = admm.prune()
    assert small.get_layer("c1").filters == 4 and small.get_layer("c2").filters == 8  # c2 feeds the classifier
    assert set(admm.plan) == {"c1"}
    assert small.count_params() < m.count_params()
    # the pruned model is the trained model with the removed channels' contributions taken out
    ref = keras.models.clone_model(m)
    ref.set_weights(m.get_weights())
    for layer, axis, name in (("c2", 2, "c1"),):
        k, b = ref.get_layer(layer).get_weights()
        idx = admm.plan[name]
        np.moveaxis(k, axis, 0)[idx] = 0.0
        ref.get_layer(layer).set_weights([k, b])
    np.testing.assert_allclose(np.asarray(small(x[:8])), np.asarray(ref(x[:8])), atol=1e-5)


def test_admm_bad_settings():
    with pytest.raises(KslimValueError, match="rho"):
        ADMMPruning(rho=0)
    with pytest.raises(KslimValueError, match="ratios"):
        ADMMPruning(ratios=1.0)
    with pytest.raises(KslimValueError, match="update_every"):
        ADMMPruning(update_every=0)
    with pytest.raises(KslimValueError, match="never used"):
        ADMMPruning().prune()
