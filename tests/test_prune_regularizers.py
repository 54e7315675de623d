"""Sparsity training (kslim.prune.regularizers): Slim L1 on BatchNormalization scales and group lasso
set on an existing model's variables drive gamma / channel norms down during fit, then prune."""

import keras
import numpy as np
import pytest

from kslim.errors import KslimValueError, ModelError
from kslim.prune import FilterPruner, make_pruner
from kslim.prune.regularizers import group_lasso_penalty, group_norms, slim_penalty


def bn_model():
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    inner_in = keras.Input((8, 8, 8))
    y = keras.layers.Conv2D(8, 3, padding="same", name="c2")(inner_in)
    y = keras.layers.BatchNormalization(name="bn2")(y)
    inner = keras.Model(inner_in, keras.layers.ReLU()(y), name="block")   # a nested model
    x = inner(x)
    out = keras.layers.Dense(3, name="fc")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out, name="bn_model")
    model.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def data(n=64):
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, (n, 8, 8, 1)).astype("float32"), rng.integers(0, 3, n)


def gammas(model):
    return np.concatenate([np.abs(model.get_layer("bn1").gamma.numpy()),
                           np.abs(model.get_layer("block").get_layer("bn2").gamma.numpy())])


def test_slim_penalty_drives_gamma_down_then_prunes_with_bn_scale():
    x, y = data()
    plain, slim = bn_model(), bn_model()
    slim.set_weights(plain.get_weights())
    plain.fit(x, y, batch_size=16, epochs=2, verbose=0)     # one fit before: the penalty must still be traced in
    slim.fit(x, y, batch_size=16, epochs=1, verbose=0)
    keras.utils.set_random_seed(1)
    with slim_penalty(slim, 1.0) as pen:
        assert pen.groups == ["bn1", "block/bn2"] and pen.value() == pytest.approx(gammas(slim).sum(), rel=1e-5)
        slim.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert slim.get_layer("bn1").gamma.regularizer is None    # removed after the with block
    assert gammas(slim).mean() < 0.9 * gammas(plain).mean()
    small = FilterPruner(slim, importance="bn_scale").prune(0.5, ranking="global")
    assert small.count_params() < slim.count_params()
    # the penalty is in the loss: one step's loss includes it
    pen = slim_penalty(slim, 10.0, layers=["bn2"])
    assert len(pen.variables) == 1 and len(slim.losses) == 1
    pen.remove()
    assert slim.losses == []


def test_group_lasso_drives_group_norms_down():
    x, y = data()
    plain, lasso = bn_model(), bn_model()
    lasso.set_weights(plain.get_weights())
    pen = group_lasso_penalty(lasso, 1.0)
    p = make_pruner(lasso)
    assert pen.groups == [g.name for g in p.groups] == ["c1"]   # block/c2 feeds the kept classifier
    norms0 = group_norms(p, p.groups[0])
    assert pen.value() == pytest.approx(norms0.sum(), rel=1e-4)
    plain.fit(x, y, batch_size=16, epochs=2, verbose=0)
    lasso.fit(x, y, batch_size=16, epochs=2, verbose=0)
    pen.remove()
    q = make_pruner(plain)
    assert group_norms(p, p.groups[0]).sum() < 0.8 * group_norms(q, q.groups[0]).sum()
    small = FilterPruner(lasso, importance="l2").prune(0.5)
    assert small.get_layer("c1").filters == 4
    # the variable's own regularizer is kept next to the penalty, and restored
    var = lasso.get_layer("c1").kernel
    own = keras.regularizers.L2(1e-3)
    var.regularizer = own
    pen = group_lasso_penalty(lasso, 0.05)
    assert float(var.regularizer(var)) == pytest.approx(float(own(var)) + pen.value(), rel=1e-5)
    pen.remove()
    assert var.regularizer is own


def test_bad_input():
    with pytest.raises(KslimValueError, match="strength"):
        slim_penalty(bn_model(), 0)
    no_bn = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    with pytest.raises(ModelError, match="no BatchNormalization"):
        slim_penalty(no_bn)
    with pytest.raises(ModelError, match="'c1' is a Conv2D"):
        slim_penalty(bn_model(), layers=["c1"])
    with pytest.raises(ModelError, match="no prunable channel group"):
        group_lasso_penalty(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))
