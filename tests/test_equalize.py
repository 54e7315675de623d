"""Cross-layer equalization, weight-rounding bias correction and BatchNorm re-estimation (issue 15).

Tiny models only: the whole file runs in a few seconds on CPU.
"""
import keras
import numpy as np
import pytest

import kslim
from kslim.errors import KslimTypeError, KslimValueError, ModelError
from kslim.quant import correct_weight_bias, equalize_cross_layer, reestimate_batch_norm
from kslim.quant.bias_correction import quantized_kernel, simulate_weight_quant


def _separable(activation="relu", seed=0, bn=True):
    """stem conv -> (BN) -> act -> depthwise -> (BN) -> act -> pointwise -> act -> pool -> dense, with the
    depthwise channels' ranges spread over four orders of magnitude."""
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)

    def act(name):
        return keras.layers.ReLU(6.0, name=name) if activation == "relu6" else keras.layers.ReLU(name=name)

    inp = keras.Input((10, 10, 3), name="x")
    h = keras.layers.Conv2D(8, 3, padding="same", use_bias=not bn, name="stem")(inp)
    if bn:
        h = keras.layers.BatchNormalization(name="stem_bn")(h)
    h = act("stem_relu")(h)
    h = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=not bn, name="dw")(h)
    if bn:
        h = keras.layers.BatchNormalization(name="dw_bn")(h)
    h = act("dw_relu")(h)
    h = keras.layers.Conv2D(12, 1, name="pw")(h)
    h = act("pw_relu")(h)
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    out = keras.layers.Dense(5, name="fc")(h)
    model = keras.Model(inp, out, name="separable")
    c = 8
    if bn:
        for name in ("stem_bn", "dw_bn"):
            model.get_layer(name).set_weights([rng.uniform(0.5, 2.0, c), rng.normal(0, 0.2, c),
                                               rng.normal(0, 0.5, c), rng.uniform(0.5, 2.0, c)])
    # unbalance the depthwise channels (ranges over four orders of magnitude) without changing the
    # function: channel i of the depthwise output is multiplied by f_i, the pointwise input row divided
    f = np.logspace(-2, 2, c).astype("float32")
    if bn:
        layer = model.get_layer("dw_bn")
        gamma, beta, mean, var = layer.get_weights()
        layer.set_weights([gamma * f, beta * f, mean, var])
    else:
        w = model.get_layer("dw").get_weights()
        model.get_layer("dw").set_weights([w[0] * f[:, None], w[1] * f])
    w = model.get_layer("pw").get_weights()
    model.get_layer("pw").set_weights([w[0] / f[:, None], w[1]])
    return model


def _data(n=32, seed=1):
    return np.random.default_rng(seed).uniform(0, 1, size=(n, 10, 10, 3)).astype("float32")


def _per_channel(kernel):
    """Per output channel max |w| of a depthwise kernel (kh, kw, c, 1)."""
    return np.abs(kernel).max(axis=(0, 1, 3))


def _per_tensor_error(kernel):
    """Mean over output channels of the relative error of per-tensor symmetric int8 rounding."""
    scale = np.abs(kernel).max() / 127
    q = np.clip(np.round(kernel / scale), -127, 127) * scale
    axes = tuple(range(kernel.ndim - 2)) + (kernel.ndim - 1,)
    return float(np.mean(np.sqrt(((q - kernel) ** 2).sum(axes) / (kernel ** 2).sum(axes))))


# ------------------------------------------------------------------------------------------ CLE
def test_cle_keeps_outputs_and_balances_ranges():
    model = _separable()
    before = [w.copy() for w in model.get_weights()]
    x = _data()
    result = equalize_cross_layer(model)
    pairs = {(p.first, p.second) for p in result.pairs}
    assert {("stem", "dw"), ("dw", "pw"), ("pw", "fc")} <= pairs
    # the float function is unchanged (relative 1e-4)
    y0, y1 = np.asarray(model(x)), np.asarray(result.model(x))
    assert np.max(np.abs(y1 - y0)) <= 1e-4 * np.max(np.abs(y0))
    # BatchNorm was folded into the copy, the model passed in is untouched
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in result.model.layers)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    # the depthwise kernel's per-channel ranges are far more equal (measured on the kernels themselves)
    from kslim.quant import fold_batch_norm

    r0 = _per_channel(fold_batch_norm(model).get_layer("dw").get_weights()[0])
    r1 = _per_channel(result.model.get_layer("dw").get_weights()[0])
    assert r0.max() / r0.min() > 1e3
    assert r1.max() / r1.min() < (r0.max() / r0.min()) / 100
    dw = next(p for p in result.pairs if p.first == "dw")
    assert dw.balance_before < 0.3 and dw.balance_after > 1.3 * dw.balance_before
    assert result.to_dict()["pairs"][0]["first"] == result.pairs[0].first
    assert "dw -> pw" in str(result)


def test_cle_lowers_per_tensor_quantization_error():
    from kslim.quant import fold_batch_norm

    model = _separable()
    folded = fold_batch_norm(model)
    result = equalize_cross_layer(model)
    for name in ("dw", "pw"):
        e0 = _per_tensor_error(folded.get_layer(name).get_weights()[0])
        e1 = _per_tensor_error(result.model.get_layer(name).get_weights()[0])
        assert e1 < e0, name
    assert _per_tensor_error(result.model.get_layer("dw").get_weights()[0]) < \
        _per_tensor_error(folded.get_layer("dw").get_weights()[0]) / 5
    # and the model with per-tensor int8 weights is closer to the float model
    x = _data()
    y = np.asarray(model(x))
    err0 = np.abs(np.asarray(simulate_weight_quant(folded, "abs_max")(x)) - y).mean()
    err1 = np.abs(np.asarray(simulate_weight_quant(result.model, "abs_max")(x)) - y).mean()
    assert err1 < err0 / 2


def test_relu6_default_skip_and_relu_mode():
    model = _separable("relu6")
    x = _data()
    with pytest.raises(ModelError, match="ReLU6"):
        equalize_cross_layer(model)   # every pair has a ReLU6 in between
    result = equalize_cross_layer(model, relu6="relu")
    assert set(result.replaced) == {"stem_relu", "dw_relu", "pw_relu"}
    assert {(p.first, p.second) for p in result.pairs} >= {("stem", "dw"), ("dw", "pw")}
    relus = [l for l in result.model.layers if isinstance(l, keras.layers.ReLU)]
    assert relus and all(l.max_value is None for l in relus)
    # same function as the ReLU model with the same weights (ReLU6 replaced, then equalized)
    y_relu = np.asarray(_separable("relu")(x))
    assert np.max(np.abs(np.asarray(result.model(x)) - y_relu)) <= 1e-4 * np.max(np.abs(y_relu))


def test_cle_skips_branches_and_reports_them():
    inp = keras.Input((6, 6, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inp)
    r = keras.layers.ReLU(name="r")(a)
    b = keras.layers.Conv2D(4, 1, name="b")(r)
    c = keras.layers.Conv2D(4, 1, name="c")(r)            # a's channels feed two layers
    s = keras.layers.Activation("sigmoid", name="sig")(b)
    d = keras.layers.Conv2D(4, 1, name="d")(s)            # sigmoid is not scale-equivariant
    e = keras.layers.Conv2D(4, 1, name="e")(keras.layers.Add()([c, d]))
    f = keras.layers.Conv2D(2, 1, name="f")(keras.layers.ReLU()(e))
    model = keras.Model(inp, f)
    result = equalize_cross_layer(model)
    assert [(p.first, p.second) for p in result.pairs] == [("e", "f")]
    reasons = {s.layer: s.reason for s in result.skipped}
    assert "feeds 2 layers" in reasons["a"]
    assert "sigmoid" in reasons["b"]
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 3)).astype("float32")
    np.testing.assert_allclose(result.model(x), model(x), rtol=1e-4, atol=1e-5)


def test_cle_bad_input():
    with pytest.raises(KslimTypeError, match="equalize_cross_layer"):
        equalize_cross_layer("model.keras")
    dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    with pytest.raises(ModelError, match="no pair of layers to equalize"):
        equalize_cross_layer(dense)
    with pytest.raises(KslimValueError, match="relu6"):
        equalize_cross_layer(_separable(), relu6="clip")
    with pytest.raises(KslimValueError, match="iterations"):
        equalize_cross_layer(_separable(), iterations=0)


# ------------------------------------------------------------------------------------------ bias correction
@pytest.mark.parametrize("weight_quantize_type", ["abs_max", "channel_wise_abs_max"])
def test_bias_correction_reduces_mean_output_error(weight_quantize_type):
    model = _separable()
    x, x_eval = _data(64, seed=1), _data(64, seed=2)
    result = correct_weight_bias(model, x, weight_quantize_type=weight_quantize_type)
    assert {c.layer for c in result.layers} == {"stem", "dw", "pw", "fc"}
    assert result.samples == 64 and result.weight_quantize_type == weight_quantize_type
    y = np.asarray(model(x_eval))
    # corrected float model still close to the float model (only biases moved, by the rounding error)
    before = np.asarray(simulate_weight_quant(model, weight_quantize_type)(x_eval)) - y
    after = np.asarray(simulate_weight_quant(result.model, weight_quantize_type)(x_eval)) - y
    bias_before = np.abs(before.mean(axis=0)).mean()
    bias_after = np.abs(after.mean(axis=0)).mean()
    assert bias_after < bias_before / 2
    assert np.abs(after).mean() < np.abs(before).mean()


def test_bias_correction_simulates_the_converter_grid():
    dw = keras.layers.DepthwiseConv2D(3, depth_multiplier=2)
    dw.build((None, 5, 5, 3))
    q = quantized_kernel(dw)                           # per output channel c * 2 + m
    w = dw.get_weights()[0]
    scale = np.abs(w).max(axis=(0, 1)) / 127
    np.testing.assert_allclose(q, np.round(w / scale) * scale, rtol=1e-5, atol=1e-7)
    q = quantized_kernel(dw, "abs_max")
    scale = np.abs(w).max() / 127
    np.testing.assert_allclose(q, np.round(w / scale) * scale, rtol=1e-5, atol=1e-7)


def test_bias_correction_bad_input():
    with pytest.raises(KslimTypeError):
        correct_weight_bias(np.zeros(3), _data())
    with pytest.raises(KslimValueError, match="weight_quantize_type"):
        correct_weight_bias(_separable(), _data(), weight_quantize_type="int4")
    no_conv = keras.Sequential([keras.Input((4,)), keras.layers.ReLU()])
    with pytest.raises(ModelError, match="no Conv/Dense"):
        correct_weight_bias(no_conv, np.zeros((4, 4), "float32"))
    with pytest.raises(KslimValueError):
        correct_weight_bias(_separable(), np.zeros((4, 3), "float32"))   # wrong input shape


# ------------------------------------------------------------------------------------------ BN re-estimation
def _true_bn_inputs(model, names, x):
    taps = keras.Model(model.input, [model.get_layer(n).input for n in names])
    outs = taps(x)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    return [np.asarray(t).reshape(-1, t.shape[-1]) for t in outs]


def test_bn_reestimation_recovers_statistics():
    model = _separable()
    x = _data(48)
    truth = _true_bn_inputs(model, ["stem_bn"], x)[0]
    for name in ("stem_bn", "dw_bn"):                    # corrupt the moving statistics
        bn = model.get_layer(name)
        bn.moving_mean.assign(np.full(bn.moving_mean.shape, 5.0, "float32"))
        bn.moving_variance.assign(np.full(bn.moving_variance.shape, 40.0, "float32"))
    result = reestimate_batch_norm(model, x, batch_size=48)
    assert result.layers == ("stem_bn", "dw_bn") and result.samples == 48 and result.batches == 1
    assert float(model.get_layer("stem_bn").moving_mean[0]) == 5.0    # the input model is unchanged
    new = result.model
    np.testing.assert_allclose(new.get_layer("stem_bn").moving_mean, truth.mean(0), atol=1e-5)
    np.testing.assert_allclose(new.get_layer("stem_bn").moving_variance, truth.var(0), rtol=1e-4, atol=1e-6)
    # one batch of all the data: the second BN sees what inference with the new first BN gives
    dw_in = _true_bn_inputs(new, ["dw_bn"], x)[0]
    np.testing.assert_allclose(new.get_layer("dw_bn").moving_mean, dw_in.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new.get_layer("dw_bn").moving_variance, dw_in.var(0), rtol=1e-3, atol=1e-5)
    assert result.mean_shift["stem_bn"] > 0.1
    # several batches: the first BN is still exact, the second close (batch vs population normalisation)
    small = reestimate_batch_norm(model, x, batch_size=16, batches=3).model
    np.testing.assert_allclose(small.get_layer("stem_bn").moving_mean, truth.mean(0), atol=1e-5)
    np.testing.assert_allclose(small.get_layer("dw_bn").moving_mean, dw_in.mean(0), rtol=0.1, atol=0.05)


def test_bn_reestimation_after_pruning_and_in_nested_models():
    from kslim.prune import L1NormFilterPruner

    model = _separable()
    pruned = L1NormFilterPruner(model).prune(0.5)
    x = _data(32)
    result = reestimate_batch_norm(pruned, x, batch_size=32)
    truth = _true_bn_inputs(pruned, ["stem_bn"], x)[0]
    assert truth.shape[1] < 8
    np.testing.assert_allclose(result.model.get_layer("stem_bn").moving_mean, truth.mean(0), atol=1e-5)
    # a BatchNormalization inside a nested model is found and named by its path
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc"),
                              keras.layers.BatchNormalization(name="bn")], name="inner")
    inp = keras.Input((4,))
    outer = keras.Model(inp, keras.layers.Dense(2, name="head")(inner(inp)))
    z = np.random.default_rng(0).normal(3.0, 2.0, size=(64, 4)).astype("float32")
    nested = reestimate_batch_norm(outer, z, batch_size=64)
    assert nested.layers == ("inner/bn",)
    fc_out = np.asarray(inner.get_layer("fc")(z))
    bn = nested.model.get_layer("inner").get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean, fc_out.mean(0), rtol=1e-4, atol=1e-5)


def test_bn_reestimation_bad_input():
    with pytest.raises(KslimTypeError, match="reestimate_batch_norm"):
        reestimate_batch_norm("model.keras", _data())
    no_bn = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ModelError, match="no BatchNormalization"):
        reestimate_batch_norm(no_bn, np.zeros((4, 4), "float32"))
    with pytest.raises(KslimValueError, match="empty"):
        reestimate_batch_norm(_separable(), np.zeros((0, 10, 10, 3), "float32"))


def test_public_names():
    assert kslim.quant.equalize_cross_layer is equalize_cross_layer
    assert {"equalize_cross_layer", "correct_weight_bias", "reestimate_batch_norm"} <= set(kslim.quant.__all__)
