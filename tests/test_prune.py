"""Filter pruning: exactness, criteria, options, the rebuilt model's life (fit, save, TFLite), bad input."""

import keras
import numpy as np
import pytest
from keras import layers

import kslim
from kslim.analysis import flops
from kslim.errors import KslimTypeError, KslimValueError, UnsupportedLayerError
from kslim.prune import FilterPruner, FPGMFilterPruner, L1NormFilterPruner, L2NormFilterPruner, l1_norm
from kslim.testing.checks import zero_channels

TOL = 1e-4  # float32 re-association of sums over fewer channels


def zoo_model():
    """Add, Concatenate, DepthwiseConv2D (multiplier 2), SeparableConv2D, SE-Multiply, Flatten->Dense."""
    inp = keras.Input((16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", name="c1")(inp)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU()(x)
    d = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x)
    d = layers.BatchNormalization(name="dw_bn")(d)
    d = layers.ReLU()(d)
    a = layers.Conv2D(12, 1, name="pw_a")(d)
    a = layers.BatchNormalization(name="bn_a")(a)
    b = layers.SeparableConv2D(12, 3, padding="same", name="sep_b")(x)
    r = layers.Add(name="add")([a, b])
    s = layers.GlobalAveragePooling2D(keepdims=True)(r)
    s = layers.Conv2D(4, 1, activation="relu", name="se_reduce")(s)
    s = layers.Conv2D(12, 1, activation="sigmoid", name="se_expand")(s)
    r = layers.Multiply(name="se_mul")([r, s])
    c2 = layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="c2")(r)
    c3 = layers.Conv2D(5, 3, strides=2, padding="same", activation="relu", name="c3")(r)
    cat = layers.Concatenate(name="cat")([c2, c3])
    cat = layers.MaxPooling2D(2)(cat)
    c4 = layers.Conv2D(7, 1, name="c4")(cat)
    f = layers.Flatten()(layers.Concatenate(name="cat2")([c4, cat]))
    f = layers.Dense(10, activation="relu", name="fc")(f)
    out = layers.Dense(3, name="out")(f)
    model = keras.Model(inp, out, name="zoo")
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.3, n), rng.normal(0, 0.3, n),
                               rng.uniform(0.5, 1.5, n)])
        elif layer.weights:  # random biases too, so nothing is zero by accident
            layer.set_weights([rng.normal(0, 0.3, w.shape) for w in layer.get_weights()])
    return model


@pytest.fixture(scope="module")
def x16():
    return np.random.default_rng(1).normal(size=(4, 16, 16, 3)).astype("float32")


def test_ratio_zero_is_identity_and_original_untouched(x16):
    model = zoo_model()
    before = [w.copy() for w in model.get_weights()]
    pruner = L1NormFilterPruner(model)
    same = pruner.prune(0.0)
    assert same is not model and same.count_params() == model.count_params()
    np.testing.assert_allclose(same(x16), model(x16), atol=TOL)
    small = pruner.prune(0.5)
    assert small.count_params() < model.count_params()
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_pruning_zero_filters_is_exact(x16):
    model = zoo_model()
    pruner = L1NormFilterPruner(model, keep_classifier=False)
    names = {g.name for g in pruner.groups}
    assert {"c1", "pw_a", "se_reduce", "c2", "c3", "c4", "fc"} <= names
    assert pruner.graph.group("sep_b") is pruner.graph.group("pw_a") is pruner.graph.group("se_expand")
    rng = np.random.default_rng(2)
    plan = {}
    for g in pruner.groups:
        chans = np.sort(rng.choice(g.size, size=g.size // 2, replace=False))
        zero_channels(model, g, chans)
        plan[g.name] = chans
    reference = model(x16)
    # explicit surgery
    small = pruner.prune_channels(plan)
    np.testing.assert_allclose(small(x16), reference, atol=TOL)
    # and the L1 criterion finds exactly the zeroed filters
    ratios = {name: len(ch) / pruner.graph.group(name).size + 1e-6 for name, ch in plan.items()}
    pruner = L1NormFilterPruner(model, keep_classifier=False)
    chosen = pruner.plan(ratios)
    assert {k: v.tolist() for k, v in chosen.items()} == {k: v.tolist() for k, v in plan.items()}
    small2 = pruner.prune(ratios)
    np.testing.assert_allclose(small2(x16), reference, atol=TOL)
    # channel counts shrank where they should
    assert small2.get_layer("c1").filters == 4 and small2.get_layer("dw").kernel.shape[2] == 4
    assert small2.get_layer("pw_a").filters == small2.get_layer("sep_b").filters == 6
    assert small2.get_layer("fc").kernel.shape == ((4 + 3 + 3) * 16, 5)
    assert flops(small2).macs < flops(model).macs


@pytest.mark.parametrize("pruner_cls, removed", [(L1NormFilterPruner, 1), (L2NormFilterPruner, 4),
                                                 (FPGMFilterPruner, 0)])
def test_criteria_choose_different_filters(pruner_cls, removed):
    # 5 hand-made 1x1 filters over 3 inputs: L1 ranks filter 1 last, L2 filter 4, FPGM filter 0
    # (the one nearest the geometric median), see the scores in the comments.
    filters = np.array([[-1, 0, 3],     # L1 4, L2 3.16, distance to median 1.28
                        [3, 0, 0],      # L1 3, L2 3.00, 4.74
                        [-2, 3, 2],     # L1 7, L2 4.12, 2.41
                        [-3, 1, 3],     # L1 7, L2 4.36, 2.05
                        [-1, -1, -2]],  # L1 4, L2 2.45, 4.32
                       dtype="float32")
    inp = keras.Input((4, 4, 3))
    x = layers.Conv2D(5, 1, use_bias=False, name="conv")(inp)
    out = layers.Dense(2, name="head")(layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    model.get_layer("conv").set_weights([filters.T.reshape(1, 1, 3, 5)])
    pruner = pruner_cls(model, keep_classifier=False)
    assert pruner.plan({"conv": 0.2})["conv"].tolist() == [removed]
    small = pruner.prune({"conv": 0.2})
    kept = small.get_layer("conv").get_weights()[0].reshape(3, 4).T
    np.testing.assert_array_equal(kept, np.delete(filters, removed, axis=0))


def test_custom_criterion_and_importance_aggregation():
    model = kslim.models.resnet(width=0.25)
    pruner = FilterPruner(model, criterion=l1_norm)
    grp = pruner.graph.group("stem_conv")  # two producers: stem_conv and stage1_block1_conv2
    imp = pruner.importance(grp)
    k1 = model.get_layer("stem_conv").kernel.numpy()
    k2 = model.get_layer("stage1_block1_conv2").kernel.numpy()
    s1 = np.abs(k1).reshape(-1, k1.shape[-1]).sum(0)
    s2 = np.abs(k2).reshape(-1, k2.shape[-1]).sum(0)
    np.testing.assert_allclose(imp, s1 / s1.mean() + s2 / s2.mean(), rtol=1e-5)
    layer = model.get_layer("stem_conv")
    layer.set_weights([np.zeros_like(k1)])
    assert np.array_equal(pruner.importance(grp), imp)       # cached until refresh()
    np.testing.assert_allclose(pruner.refresh().importance(grp), s2 / s2.mean(), rtol=1e-5)
    with pytest.raises(KslimValueError, match="criterion"):
        FilterPruner(model)


def test_options_skip_keep_classifier_round_to():
    model = kslim.models.vgg(width=0.5)  # conv 16/16/32/32/64, fc1 64
    p = L1NormFilterPruner(model, skip=["conv1_1"])
    assert "conv1_1" not in {g.name for g in p.groups}
    assert "fc1" not in {g.name for g in p.groups}  # feeds the kept classifier
    small = p.prune(0.5)
    assert small.get_layer("conv1_1").filters == 16 and small.get_layer("conv1_2").filters == 8
    assert small.get_layer("fc1").units == 64 and small.get_layer("logits").units == 10
    np.testing.assert_array_equal(small.get_layer("logits").get_weights()[0],
                                  model.get_layer("logits").get_weights()[0])
    p = L1NormFilterPruner(model, keep_classifier=False, round_to=8)
    small = p.prune(0.3)
    counts = [small.get_layer(n).filters for n in ("conv1_1", "conv2_1", "conv3_1")] + [small.get_layer("fc1").units]
    assert counts == [16, 24, 48, 48] and all(c % 8 == 0 for c in counts)
    # at least one channel always survives
    tiny = L1NormFilterPruner(model).prune(0.999)
    assert tiny.get_layer("conv1_1").filters == 1 and tiny.output_shape == (None, 10)


def test_prune_to_flops():
    model = kslim.models.mobilenet_v1(width=0.25)
    pruner = L1NormFilterPruner(model)
    res = pruner.prune_to_flops(0.4)
    small, info = res.model, res.to_dict()
    assert res.macs_before == flops(model).macs and res.macs_after == flops(small).macs
    assert res.reduction >= 0.4 and 0 < res.ratio < 1 and res.flops_reduction == 0.4
    for r in (0.3, 0.7):  # the estimate used by the bisection is the real count
        assert pruner.estimate_macs(r) == flops(pruner.prune(r)).macs
    # smallest uniform ratio: a slightly smaller ratio misses the target
    lower = flops(pruner.prune(max(0.0, info["ratio"] - 0.02))).macs
    assert 1 - lower / info["macs_before"] < 0.4 + 0.05
    with pytest.raises(KslimValueError, match="not reachable"):
        L1NormFilterPruner(model, skip=[g.name for g in pruner.groups][1:]).prune_to_flops(0.9)
    with pytest.raises(KslimValueError, match="flops_reduction"):
        pruner.prune_to_flops(1.2)
    with pytest.raises(KslimValueError, match="mode"):
        pruner.prune_to_flops(0.5, mode="greedy")


def test_pruned_model_trains_saves_and_converts(tmp_path, small_data):
    (xtr, ytr), (xte, yte) = small_data
    model = kslim.models.resnet(width=0.25)
    small = L1NormFilterPruner(model).prune(0.5)
    assert small.count_params() < model.count_params() and flops(small).macs < flops(model).macs
    small.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=False)
    hist = small.fit(xtr[:128], ytr[:128], batch_size=64, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][-1])
    path = tmp_path / "small.keras"
    small.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(xte[:8], verbose=0), small.predict(xte[:8], verbose=0), atol=1e-5)
    from kslim.lite import convert

    lite = convert(small, check_data=xte[:8])
    assert lite.parity["value"] < 1e-3
    assert lite.predict(xte[:2]).shape == (2, 10)


def test_sequential_and_nested_models(x16):
    seq = keras.Sequential([keras.Input((16, 16, 3)), layers.Conv2D(8, 3, name="s1"), layers.ReLU(),
                            layers.Conv2D(8, 3, name="s2"), layers.Flatten(), layers.Dense(4, name="s_out")])
    small = L1NormFilterPruner(seq).prune(0.5)
    assert isinstance(small, keras.Model) and small.get_layer("s1").filters == 4
    assert small(x16).shape == (4, 4)
    inp = keras.Input((16, 16, 3))
    y = layers.GlobalAveragePooling2D()(_backbone()(inp))
    outer = keras.Model(inp, layers.Dense(3, name="head")(y))
    p = L1NormFilterPruner(outer)
    same = p.prune(0.0)
    np.testing.assert_allclose(same(x16), outer(x16), atol=TOL)
    small = p.prune(0.5)
    # the nested model comes back as a nested model of the same name, its layers pruned
    bb = small.get_layer("bb")
    assert isinstance(bb, keras.Model) and bb.get_layer("bb_conv1").filters == 4
    assert small(x16).shape == (4, 3)
    bb.trainable = False  # the transfer-learning idiom works on the pruned model
    assert not any(w.trainable for w in bb.weights) and small.get_layer("head").trainable


def _backbone():
    inp = keras.Input((16, 16, 3))
    x = layers.Conv2D(8, 3, name="bb_conv1")(inp)
    x = layers.BatchNormalization(name="bb_bn")(x)
    x = layers.Conv2D(8, 3, name="bb_conv2")(x)
    return keras.Model(inp, x, name="bb")


@pytest.mark.parametrize("ratio, exc", [(-0.1, KslimValueError), (1.0, KslimValueError), (1.5, KslimValueError),
                                        (float("nan"), KslimValueError), ("half", KslimTypeError)])
def test_bad_ratio(ratio, exc):
    pruner = L1NormFilterPruner(kslim.models.vgg(width=0.25))
    with pytest.raises(exc, match="ratio"):
        pruner.prune(ratio)
    with pytest.raises(exc, match="conv1_1"):
        pruner.prune({"conv1_1": ratio})


def test_bad_layer_names():
    model = kslim.models.vgg(width=0.25)
    pruner = L1NormFilterPruner(model)
    with pytest.raises(KslimValueError, match="'conv9'"):
        pruner.prune({"conv9": 0.5})
    with pytest.raises(UnsupportedLayerError, match="'bn1_1'.*BatchNormalization"):
        pruner.prune({"bn1_1": 0.5})
    with pytest.raises(UnsupportedLayerError, match="'logits'.*model output"):
        pruner.prune({"logits": 0.5})
    with pytest.raises(KslimValueError, match="'fc1'.*keep_classifier"):
        pruner.prune({"fc1": 0.5})
    with pytest.raises(KslimValueError, match="skip.*'nope'"):
        L1NormFilterPruner(model, skip=["nope"])
    with pytest.raises(UnsupportedLayerError, match="skip.*'relu1_1'"):
        L1NormFilterPruner(model, skip=["relu1_1"])
    with pytest.raises(KslimValueError, match="at least one"):
        pruner.prune_channels({"conv1_1": list(range(8))})
    with pytest.raises(KslimValueError, match=r"\[0, 8\)"):
        pruner.prune_channels({"conv1_1": [8]})
    with pytest.raises(KslimValueError, match="round_to"):
        L1NormFilterPruner(model, round_to=0)


def test_unsupported_layer_in_explicit_list():
    inp = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, name="conv")(inp)
    x = layers.GroupNormalization(groups=2, name="gn")(x)
    x = layers.Conv2D(4, 3, name="conv2")(x)
    model = keras.Model(inp, layers.Dense(2, name="head")(layers.Flatten()(x)))
    pruner = L1NormFilterPruner(model, keep_classifier=False)
    assert "conv" not in {g.name for g in pruner.groups}
    with pytest.raises(UnsupportedLayerError, match="'conv'.*'gn' \\(GroupNormalization\\)"):
        pruner.prune({"conv": 0.5})
    small = pruner.prune({"conv2": 0.5})  # the rest of the model is still prunable
    assert small.get_layer("conv2").filters == 2


def test_split_group_pruning_is_exact(x16):
    # a conv added to a concatenation of two convs (NASNet's adjust branch): a's channels split in two groups
    inp = keras.Input((16, 16, 3))
    a = layers.Conv2D(6, 1, name="a")(inp)
    cat = layers.Concatenate(name="cat")([layers.Conv2D(2, 1, name="b")(inp), layers.Conv2D(4, 1, name="c")(inp)])
    x = layers.ReLU()(layers.Add(name="add")([a, cat]))
    out = layers.Dense(3, name="head")(layers.Flatten()(layers.Conv2D(4, 3, strides=4, name="d")(x)))
    model = keras.Model(inp, out)
    pruner = L1NormFilterPruner(model, keep_classifier=False)
    assert [g.name for g in pruner.graph.groups_for("a")] == ["b", "c"]
    zero_channels(model, pruner.graph.group("b"), [1])
    zero_channels(model, pruner.graph.group("c"), [0, 3])
    small = pruner.prune_channels({"b": [1], "c": [0, 3]})
    assert small.get_layer("a").filters == 3 and small.get_layer("d").kernel.shape[2] == 3
    np.testing.assert_allclose(small(x16), model(x16), atol=TOL)
    # a ratio on the split layer applies to every group it produces
    assert {k: len(v) for k, v in pruner.plan({"a": 0.5}).items()} == {"b": 1, "c": 2}


def test_more_layer_kinds_are_exact():
    """Two inputs, two outputs, a shared conv, Conv2DTranspose, PReLU, padding/upsampling, Permute and
    Reshape that keep the channel axis, keras.ops arithmetic, Conv1D on a reshaped map."""
    in1, in2 = keras.Input((8, 8, 3), name="in1"), keras.Input((8, 8, 3), name="in2")
    shared = layers.Conv2D(6, 3, padding="same", name="shared")
    x = layers.Add()([shared(in1), shared(in2)])
    x = layers.PReLU(name="prelu")(x)
    x = layers.ReLU(6.0)(x + 3.0) * (1.0 / 6.0) - 0.5      # hard-sigmoid style ops, zero stays zero
    t = layers.Conv2DTranspose(5, 2, strides=2, name="up_conv")(x)
    t = layers.ZeroPadding2D(1)(layers.UpSampling2D(1)(t))
    t = layers.Permute((2, 1, 3))(t)
    s = layers.Reshape((18 * 18, 5), name="to_seq")(t)
    s = layers.Conv1D(4, 3, name="c1d")(s)
    out1 = layers.Dense(2, name="out1")(layers.GlobalAveragePooling1D()(s))
    out2 = layers.Dense(3, name="out2")(layers.GlobalMaxPooling2D()(x))
    model = keras.Model({"in1": in1, "in2": in2}, [out1, out2])
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([rng.normal(0, 0.3, w.shape) for w in layer.get_weights()])
    pruner = L1NormFilterPruner(model, keep_classifier=False)
    assert {g.name for g in pruner.groups} == {"shared", "up_conv", "c1d"}
    zero_channels(model, pruner.graph.group("shared"), [1, 4])   # relu6(0 + 3) / 6 - 0.5 == 0
    zero_channels(model, pruner.graph.group("up_conv"), [0, 2])
    zero_channels(model, pruner.graph.group("c1d"), [1])
    data = {"in1": rng.normal(size=(2, 8, 8, 3)).astype("float32"),
            "in2": rng.normal(size=(2, 8, 8, 3)).astype("float32")}
    small = pruner.prune_channels({"shared": [1, 4], "up_conv": [0, 2], "c1d": [1]})
    for a, b in zip(small(data), model(data)):
        np.testing.assert_allclose(a, b, atol=TOL)
    small = pruner.prune(0.5)
    assert small.get_layer("shared").filters == 3 and small.get_layer("prelu").get_weights()[0].shape[-1] == 3
    assert small.get_layer("to_seq").target_shape == (324, 3)
    assert [tuple(o.shape) for o in small(data)] == [(2, 2), (2, 3)]



def test_make_pruner_from_name_class_or_instance():
    from kslim.prune import criterion_class, make_pruner

    model = zoo_model()
    p = make_pruner(model, "FPGM", round_to=2, skip=["c1"])
    assert type(p) is FPGMFilterPruner and p.round_to == 2 and p.skip == ("c1",)
    assert type(make_pruner(model)) is L1NormFilterPruner
    assert type(make_pruner(model, L2NormFilterPruner, keep_classifier=False)) is L2NormFilterPruner
    bound = L1NormFilterPruner(model)
    assert make_pruner(model, bound) is bound
    assert criterion_class("l2") is L2NormFilterPruner
    with pytest.raises(KslimValueError, match=r"pruner 'l7'.*\['fpgm', 'l1', 'l2'\]"):
        make_pruner(model, "l7")
    with pytest.raises(KslimValueError, match="round_to"):  # options of an existing instance: ambiguous
        make_pruner(model, bound, round_to=4)
    other = keras.Sequential([keras.Input((4, 4, 1)), layers.Conv2D(2, 1), layers.Flatten(), layers.Dense(2)],
                             name="other")
    with pytest.raises(KslimValueError, match="'other'"):
        make_pruner(model, L1NormFilterPruner(other))
    with pytest.raises(KslimTypeError, match="int"):
        make_pruner(model, 3)
