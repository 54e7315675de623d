"""Pluggable channel-group importances (kslim.prune.importance) and global ranking across groups.

Each importance is checked on a model built so that the channel it must drop is known and differs
from the one L1 drops.
"""

import keras
import numpy as np
import pytest
from keras import layers

from kslim.analysis import flops
from kslim.errors import KslimTypeError, KslimValueError
from kslim.prune import FilterPruner, L1NormFilterPruner, make_pruner
from kslim.prune.importance import (Importance, get_importance, importance_names, lamp, register_importance,
                                    unregister_importance)

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def known_model():
    """conv1 (4 filters) -> bn1 -> ReLU -> conv2 -> GAP -> Dense.

    channel 0: the largest filter (L1 10) but always negative on the positive inputs: dead after ReLU;
    channel 1: large filter (L1 8) whose BatchNormalization scale is 0.01;
    channel 2: the smallest filter (L1 1), alive; channel 3: L1 2.4, alive.
    """
    inp = keras.Input((6, 6, 2))
    x = layers.Conv2D(4, 1, name="conv1")(inp)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.Conv2D(3, 1, activation="relu", name="conv2")(x)
    out = layers.Dense(2, name="out")(layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out, name="known")
    kernel = np.array([[-5.0, 4.0, 0.5, 1.2], [-5.0, 4.0, 0.5, 1.2]]).reshape(1, 1, 2, 4)
    model.get_layer("conv1").set_weights([kernel, np.zeros(4)])
    model.get_layer("bn1").set_weights([np.array([1.0, 0.01, 1.0, 1.0]), np.zeros(4), np.zeros(4), np.ones(4)])
    rng = np.random.default_rng(0)
    model.get_layer("conv2").set_weights([rng.uniform(0.2, 1.0, (1, 1, 4, 3)), np.zeros(3)])
    return model


@pytest.fixture(scope="module")
def known_data():
    rng = np.random.default_rng(1)
    return rng.uniform(0, 1, (32, 6, 6, 2)).astype("float32"), rng.integers(0, 2, 32)


def removed(pruner, name="conv1", ratio=0.25):
    return pruner.plan({name: ratio})[name].tolist()


@pytest.mark.parametrize("name, drop", [("l1", 2), ("bn_scale", 1), ("apoz", 0), ("mean_activation", 0),
                                        ("taylor", 0), ("hessian", 0)])
def test_importances_drop_the_channel_known_by_construction(name, drop, known_data):
    model = known_model()
    p = FilterPruner(model, importance=name, data=known_data, loss=LOSS, batches=2, batch_size=16,
                     keep_classifier=False)
    assert removed(p) == [drop]
    scores = p.importance(p.graph.group("conv1"))
    assert scores.shape == (4,) and np.all(np.isfinite(scores))
    if name in ("apoz", "mean_activation", "taylor", "hessian"):
        assert scores[0] == 0  # the dead channel has no activation, hence no gradient x activation either


def test_apoz_and_mean_activation_values(known_data):
    x, _ = known_data
    model = known_model()
    apoz = FilterPruner(model, importance="apoz", data=x, keep_classifier=False)
    s = apoz.importance(apoz.graph.group("conv1"))
    np.testing.assert_allclose(s, [0.0, 1.0, 1.0, 1.0])  # 1 - APoZ: channel 0 is always zero
    mean = FilterPruner(model, importance="mean_activation", data=x, batches=1, batch_size=32, keep_classifier=False)
    m = mean.importance(mean.graph.group("conv1"))
    act = np.maximum(np.asarray(model.get_layer("conv1")(x)) * np.array([1.0, 0.01, 1.0, 1.0]) / np.sqrt(1 + 1e-3), 0)
    np.testing.assert_allclose(m, act.reshape(-1, 4).mean(0), rtol=1e-4)


@pytest.mark.parametrize("name, drop", [("l1", 1), ("l2", 4), ("lamp", 4), ("fpgm", 0)])
def test_weight_importances_on_hand_made_filters(name, drop):
    # the 1x1 filters of tests/test_prune.py: L1 ranks filter 1 last, L2 (and LAMP) filter 4, FPGM filter 0
    filters = np.array([[-1, 0, 3], [3, 0, 0], [-2, 3, 2], [-3, 1, 3], [-1, -1, -2]], dtype="float32")
    inp = keras.Input((4, 4, 3))
    x = layers.Conv2D(5, 1, use_bias=False, name="conv")(inp)
    model = keras.Model(inp, layers.Dense(2, name="head")(layers.GlobalAveragePooling2D()(x)))
    model.get_layer("conv").set_weights([filters.T.reshape(1, 1, 3, 5)])
    p = FilterPruner(model, importance=name, keep_classifier=False)
    assert removed(p, "conv", 0.2) == [drop]
    if name == "lamp":
        sq = np.square(filters).sum(1)
        np.testing.assert_allclose(p.importance(p.graph.group("conv")), lamp(sq))


def test_random_importance_is_seeded_and_differs_from_l1():
    model = keras.Sequential([keras.Input((8,)), layers.Dense(32, name="fc"), layers.Dense(2, name="out")])
    l1 = make_pruner(model, "l1", keep_classifier=False).plan({"fc": 0.5})["fc"]
    a = FilterPruner(model, importance=get_importance("random", seed=1), keep_classifier=False).plan({"fc": 0.5})["fc"]
    b = FilterPruner(model, importance="random", keep_classifier=False).plan({"fc": 0.5})["fc"]
    again = make_pruner(model, "random", keep_classifier=False).plan({"fc": 0.5})["fc"]
    assert b.tolist() == again.tolist()                         # same seed (0), same channels
    assert a.tolist() != b.tolist() and b.tolist() != l1.tolist()


def test_taylor_equals_finite_difference_of_the_loss(known_data):
    """|sum a*g| per channel equals the central finite difference of the batch loss when the channel's
    activation is scaled by (1 +- eps) (relu(s*z) = s*relu(z) for s > 0: scaling the filter and bias
    scales the channel's activation), to 1e-3 relative + 1e-6 absolute (float32)."""
    rng = np.random.default_rng(2)
    inp = keras.Input((5, 5, 2))
    x = layers.Conv2D(3, 3, padding="same", activation="relu", name="conv1")(inp)
    x = layers.Conv2D(4, 1, activation="relu", name="conv2")(x)
    model = keras.Model(inp, layers.Dense(3, name="out")(layers.GlobalAveragePooling2D()(x)))
    x, y = rng.normal(size=(16, 5, 5, 2)).astype("float32"), rng.integers(0, 3, 16)
    p = FilterPruner(model, importance="taylor", data=(x, y), loss=LOSS, batches=1, batch_size=16,
                     keep_classifier=False)
    scores = p.importance(p.graph.group("conv1"))
    conv = model.get_layer("conv1")
    k0, b0 = [w.copy() for w in conv.get_weights()]
    eps = 1e-2

    def loss_with(c, scale):
        k, b = k0.copy(), b0.copy()
        k[..., c] *= scale
        b[c] *= scale
        conv.set_weights([k, b])
        return float(LOSS(y, model(x)))

    fd = [abs(loss_with(c, 1 + eps) - loss_with(c, 1 - eps)) / (2 * eps) for c in range(3)]
    conv.set_weights([k0, b0])
    assert min(fd) > 1e-4  # the check is not trivially passed by zeros
    np.testing.assert_allclose(scores, fd, rtol=1e-3, atol=1e-6)


def test_data_importances_refuse_missing_data_or_loss(known_data):
    x, y = known_data
    model = known_model()
    with pytest.raises(KslimValueError, match="importance 'apoz' needs data="):
        FilterPruner(model, importance="apoz")
    with pytest.raises(KslimValueError, match="importance 'taylor' needs loss="):
        FilterPruner(model, importance="taylor", data=(x, y))
    with pytest.raises(KslimValueError, match="importance 'hessian' needs labels"):
        FilterPruner(model, importance="hessian", data=x, loss=LOSS)
    with pytest.raises(KslimValueError, match="'mean_activation' needs data="):
        make_pruner(model, "mean_activation")
    p = FilterPruner(model, importance="taylor", data=[x[:8]], loss=LOSS)  # an iterable of inputs, no labels
    with pytest.raises(KslimValueError, match="'taylor' needs labels: batch 0"):
        p.plan(0.5)
    with pytest.raises(KslimValueError, match="batches must be an integer"):
        FilterPruner(model, importance="apoz", data=x, batches=0)


def test_data_as_tf_dataset_and_iterable(known_data):
    import tensorflow as tf

    x, y = known_data
    model = known_model()
    ref = FilterPruner(model, importance="taylor", data=(x, y), loss="sparse_categorical_crossentropy",
                       batch_size=8, batches=4, keep_classifier=False)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    tfd = FilterPruner(model, importance="taylor", data=ds, loss="sparse_categorical_crossentropy", batches=4,
                       keep_classifier=False)
    it = FilterPruner(model, importance="taylor", data=[(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)],
                      loss="sparse_categorical_crossentropy", keep_classifier=False)
    g = ref.graph.group("conv1")
    np.testing.assert_allclose(tfd.importance(tfd.graph.group("conv1")), ref.importance(g), rtol=1e-5)
    np.testing.assert_allclose(it.importance(it.graph.group("conv1")), ref.importance(g), rtol=1e-5)


def test_bn_scale_excludes_groups_without_batchnorm():
    model = known_model()
    p = FilterPruner(model, importance="bn_scale", keep_classifier=False)
    assert [g.name for g in p.groups] == ["conv1"]
    with pytest.raises(KslimValueError, match="importance 'bn_scale': no BatchNormalization"):
        p.prune({"conv2": 0.5})
    assert p.prune(0.5).get_layer("conv1").filters == 2


def test_registry_and_custom_importance():
    names = importance_names()
    assert names[:3] == ["l1", "l2", "fpgm"]
    assert {"bn_scale", "apoz", "mean_activation", "taylor", "lamp", "hessian", "random"} <= set(names)
    assert "taylor" not in importance_names(data=False) and "lamp" in importance_names(data=False)

    @register_importance("last_first")
    class LastFirst(Importance):
        def __call__(self, group, pruner_or_graph):
            return np.arange(group.size, dtype=float)

    try:
        model = known_model()
        assert removed(make_pruner(model, "last_first", keep_classifier=False)) == [0]
        with pytest.raises(KslimValueError, match="already registered"):
            register_importance("last_first", type("Other", (Importance,), {}))
    finally:
        unregister_importance("last_first")
    with pytest.raises(KslimValueError, match="Unknown importance 'l3'"):
        FilterPruner(known_model(), importance="l3")
    with pytest.raises(KslimValueError, match="takes no option 'seed'"):
        get_importance("l1", seed=1)
    with pytest.raises(KslimValueError, match="options \\['data'\\] cannot be applied"):
        FilterPruner(known_model(), importance=get_importance("l2"), data=np.zeros((1, 6, 6, 2)))
    with pytest.raises(KslimTypeError, match="importance must be a name"):
        get_importance(3)
    with pytest.raises(KslimTypeError, match="give importance= only"):
        FilterPruner(known_model(), importance="l1", criterion=np.sum)


# ---------------------------------------------------------------------------------------------- global
def redundant_model():
    """convA: 4 strong filters and 12 near-zero ones (redundant); convB: 16 alike filters; head kept."""
    rng = np.random.default_rng(3)
    inp = keras.Input((8, 8, 3))
    a = layers.Conv2D(16, 3, padding="same", activation="relu", name="convA")(inp)
    b = layers.Conv2D(16, 3, padding="same", activation="relu", name="convB")(a)
    c = layers.Conv2D(8, 1, name="head")(b)
    model = keras.Model(inp, layers.Dense(2, name="out")(layers.GlobalAveragePooling2D()(c)), name="redundant")
    ka = rng.normal(0, 1, (3, 3, 3, 16))
    ka[..., 4:] *= 0.01
    model.get_layer("convA").set_weights([ka, np.zeros(16)])
    model.get_layer("convB").set_weights([rng.normal(0, 1, (3, 3, 16, 16)) * rng.uniform(0.9, 1.1, 16),
                                          np.zeros(16)])
    return model


def test_global_ranking_removes_more_from_the_redundant_layer():
    model = redundant_model()
    p = L1NormFilterPruner(model)
    assert [g.name for g in p.groups] == ["convA", "convB"]
    local = p.plan(0.375)
    glob = p.plan(0.375, ranking="global")
    assert [len(local[k]) for k in ("convA", "convB")] == [6, 6]
    assert len(glob["convA"]) == 12 and "convB" not in glob       # 12 of the 32 channels: all in convA
    assert glob["convA"].tolist() == list(range(4, 16))
    # the cap: never more than max_layer_ratio of a group, at least one channel kept
    capped = p.plan(0.5, ranking="global", max_layer_ratio=0.5)
    assert [len(capped[k]) for k in ("convA", "convB")] == [8, 8]
    almost_all = p.plan(0.99, ranking="global", max_layer_ratio=1.0)
    assert [len(almost_all[k]) for k in ("convA", "convB")] == [15, 15]
    small = p.prune(0.375, ranking="global")
    assert small.get_layer("convA").filters == 4 and small.get_layer("convB").filters == 16
    # round_to: counts stay multiples of it, and within the cap
    r = L1NormFilterPruner(model, round_to=8).plan(0.375, ranking="global", max_layer_ratio=0.7)
    assert {k: 16 - len(v) for k, v in r.items()} == {"convA": 8}
    with pytest.raises(KslimValueError, match="one ratio"):
        p.plan({"convA": 0.5}, ranking="global")
    with pytest.raises(KslimValueError, match="max_layer_ratio"):
        p.plan(0.5, ranking="global", max_layer_ratio=0)
    with pytest.raises(KslimValueError, match="ranking must be"):
        p.prune(0.5, ranking="best")


def test_global_prune_to_flops_and_estimate():
    model = redundant_model()
    p = L1NormFilterPruner(model)
    res = p.prune_to_flops(0.4, ranking="global")
    small = res.model
    assert res.ranking == "global" and res.reduction >= 0.4
    assert res.macs_after == flops(small).macs
    assert small.get_layer("convA").filters < small.get_layer("convB").filters
    assert p.estimate_macs(res.ratio, ranking="global") == res.macs_after
    local = p.prune_to_flops(0.4).model
    assert local.get_layer("convA").filters == local.get_layer("convB").filters
