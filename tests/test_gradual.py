"""Gradual (AGP) filter pruning during fit, masks kept at zero, and strip to the smaller model."""

import keras
import numpy as np
import pytest

from kslim.errors import KslimTypeError, KslimValueError
from kslim.prune.gradual import AGP, ConstantRatio, GradualPruning, PolynomialDecay, strip_pruning


def tiny_model():
    inputs = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.Conv2D(16, 1, name="pw")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="head")(x)  # feeds the classifier: kept
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(3, name="logits")(x)
    model = keras.Model(inputs, outputs, name="tiny")
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def data(n=64):
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, (n, 12, 12, 1)).astype("float32"), rng.integers(0, 3, n)


def masked_entries(model, cb):
    """Every weight entry of every masked channel, across all member weights."""
    out = []
    for name, channels in cb.masks.items():
        for m in cb.pruner.graph.groups[[g.name for g in cb.pruner.graph.groups].index(name)].members:
            w = model.get_layer(m.layer_name).weights[m.weight_index].numpy()
            out.append(np.take(w, m.indices(channels), axis=m.axis))
    return out


def test_schedule():
    s = PolynomialDecay(begin_step=10, end_step=30, frequency=5, power=3)
    assert s.fraction(0) == 0 and s.fraction(10) == 0 and s.fraction(30) == 1 and s.fraction(99) == 1
    assert s.fraction(20) == pytest.approx(1 - 0.5 ** 3)
    assert [t for t in range(40) if s.should_prune(t)] == [10, 15, 20, 25, 30]
    assert AGP(0, 100, 10).get_config() == {"begin_step": 0, "end_step": 100, "frequency": 10}
    with pytest.raises(KslimValueError, match="end_step"):
        PolynomialDecay(begin_step=5, end_step=1)
    with pytest.raises(KslimValueError, match="frequency"):
        AGP(0, 10, 0)


def test_masks_follow_schedule_stay_zero_and_strip():
    model = tiny_model()
    x, y = data()
    schedule = AGP(begin_step=2, end_step=8, frequency=2)
    cb = GradualPruning("l1", 0.5, schedule=schedule)
    # 16 steps: pruning at 2, 4, 6, 8, then 8 more Adam steps with the masks held
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[cb])
    assert int(model.optimizer.iterations.numpy()) == 16

    steps = [s for s, _ in cb.history]
    assert steps == [2, 4, 6, 8]
    for step, reached in cb.history:
        assert set(reached) == {"conv1", "pw"}
        for name, ratio in reached.items():
            expected = int(np.floor(16 * 0.5 * schedule.fraction(step) + 1e-9))
            assert ratio == expected / 16, (step, name)
    assert cb.sparsity() == {"conv1": 0.5, "pw": 0.5}
    assert [r["conv1"] for _, r in cb.history] == [0.0, 0.3125, 0.4375, 0.5]  # 1-(1-p)^3 ramp

    # every entry of every masked channel is exactly zero after 8 more optimizer steps (Adam would
    # move them otherwise), in producer kernels, BN parameters, the depthwise kernel and consumers
    entries = masked_entries(model, cb)
    assert len(entries) >= 6
    for e in entries:
        np.testing.assert_array_equal(e, 0.0)
    # the model still trains: unmasked weights of conv1 are not all zero
    assert np.count_nonzero(model.get_layer("conv1").kernel.numpy()) > 0

    small = strip_pruning(model, cb)
    assert small.get_layer("conv1").filters == 8 and small.get_layer("pw").filters == 8
    assert small.count_params() < model.count_params()
    np.testing.assert_allclose(np.asarray(small(x)), np.asarray(model(x)), atol=1e-5, rtol=1e-5)

    # after fit the constraints are gone: a plain fit now updates every weight again
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert any(np.any(e != 0) for e in masked_entries(model, cb))


def test_steps_per_execution_and_saved_state(tmp_path):
    model = tiny_model()
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=4)
    x, y = data()
    cb = GradualPruning("l2", {"conv1": 0.5}, schedule=AGP(0, 4, 4), round_to=4)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[cb])
    assert list(cb.masks) == ["conv1"] and len(cb.masks["conv1"]) == 8
    assert len(masked_entries(model, cb)) == 8  # conv1 kernel, 4 BN vectors, dw kernel + bias, pw input
    for e in masked_entries(model, cb):  # held at zero inside the 4-step compiled loop too
        np.testing.assert_array_equal(e, 0.0)

    # masks survive a save/load through the state file
    model.save(tmp_path / "masked.keras")
    cb.save_state(tmp_path / "masks.json")
    loaded = keras.models.load_model(tmp_path / "masked.keras")
    small = strip_pruning(loaded, tmp_path / "masks.json")
    assert small.get_layer("conv1").filters == 8 and small.get_layer("pw").filters == 16
    np.testing.assert_allclose(np.asarray(small(x)), np.asarray(model(x)), atol=1e-5, rtol=1e-5)


def test_bad_inputs():
    with pytest.raises(KslimValueError, match="ratios"):
        GradualPruning("l1", 1.0)
    with pytest.raises(KslimValueError, match="criterion"):
        GradualPruning("l7", 0.5)
    with pytest.raises(KslimTypeError, match="schedule"):
        GradualPruning("l1", 0.5, schedule="agp")
    model = tiny_model()
    x, y = data(16)
    with pytest.raises(KslimValueError, match="nope"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0,
                  callbacks=[GradualPruning("l1", {"nope": 0.5}, schedule=AGP(0, 2, 1))])
    with pytest.raises(KslimValueError, match="never used"):
        strip_pruning(model, GradualPruning("l1", 0.5))


def test_ratio_must_be_a_number_not_a_bool():
    with pytest.raises(KslimTypeError, match="ratios"):
        GradualPruning("l1", False)
    with pytest.raises(KslimTypeError, match="conv1"):
        GradualPruning("l1", {"conv1": True})
    assert GradualPruning("l1", {"conv1": np.float32(0.25)}).ratios == {"conv1": 0.25}


def test_strip_refuses_a_state_naming_an_unknown_pruner():
    from kslim.prune.gradual import STATE_FORMAT
    from kslim.prune.sensitivity import model_fingerprint

    model = tiny_model()
    state = {"format": STATE_FORMAT, "model": model_fingerprint(model), "criterion": "L2NormFilterPruner",
             "skip": None, "keep_classifier": True, "masks": {"conv1": [0, 3]}}
    assert strip_pruning(model, state).get_layer("conv1").filters == 14
    state["criterion"] = "MagicPruner"  # was silently stripped as L1 before
    with pytest.raises(KslimValueError, match="MagicPruner.*L1NormFilterPruner"):
        strip_pruning(model, state)


def test_a_data_driven_importance_ranks_during_fit():
    """APoZ masks the channel that never fires although its weights are the largest (L1 keeps it)."""
    def model():
        inp = keras.Input((6, 6, 1))
        x = keras.layers.Conv2D(4, 3, name="c1")(inp)
        x = keras.layers.ReLU()(x)
        x = keras.layers.Conv2D(2, 3, name="c2")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        m = keras.Model(inp, keras.layers.Dense(2, name="fc")(x))
        k = np.full((3, 3, 1, 4), 0.1, "float32")
        k[..., 0] = -5.0                       # inputs are >= 0: channel 0 is always negative, ReLU -> 0
        k[..., 3] = 0.2
        m.get_layer("c1").set_weights([k, np.zeros(4, "float32")])
        return m

    xs = np.random.default_rng(0).random((16, 6, 6, 1), dtype=np.float32)
    masked = {}
    for name in ("apoz", "l1"):
        m = model()
        m.compile(keras.optimizers.SGD(0.0), "mse")  # no weight change: the ranking is the construction's
        cb = GradualPruning(name, {"c1": 0.25}, schedule=ConstantRatio(1),
                            **({"data": xs} if name == "apoz" else {}))
        m.fit(xs, np.zeros((16, 2)), batch_size=8, epochs=1, verbose=0, callbacks=[cb])
        masked[name] = cb.masks["c1"].tolist()
    assert masked == {"apoz": [0], "l1": [1]}
