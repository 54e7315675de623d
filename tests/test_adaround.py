"""AdaRound (learned weight rounding): lower layer error than nearest, kernels on the grid, and the
int8 ``.tflite`` of ``quant_post_static`` holds AdaRound's integers. Tiny models only."""
import keras
import numpy as np
import pytest

import kslim
from kslim.errors import KslimTypeError, KslimValueError, ModelError
from kslim.quant import AdaRoundResult, adaround, quant_aware, quant_post_static


def _net(seed=0):
    keras.utils.set_random_seed(seed)
    L = keras.layers
    inp = keras.Input((8, 8, 3))
    h = L.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inp)
    h = L.BatchNormalization(name="bn")(h)
    h = L.ReLU()(h)
    h = L.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = L.ReLU()(h)
    h = L.Conv2D(16, 1, activation="relu", name="pw")(h)
    h = L.GlobalAveragePooling2D()(h)
    model = keras.Model(inp, L.Dense(5, name="fc")(h), name="tiny")
    rng = np.random.default_rng(seed)
    model.get_layer("bn").set_weights([rng.uniform(0.5, 2, 8), rng.normal(0, 0.2, 8), rng.normal(0, 0.5, 8),
                                       rng.uniform(0.5, 2, 8)])
    return model


def _data(n=128, seed=1):
    return np.random.default_rng(seed).uniform(size=(n, 8, 8, 3)).astype("float32")


_AXES = {"stem": (0, 1, 2), "dw": (0, 1), "pw": (0, 1, 2), "fc": (0,)}


def _codes(kernel, axes, levels=127):
    scale = np.abs(kernel).max(axis=axes, keepdims=True) / levels
    return kernel / scale


@pytest.fixture(scope="module")
def rounded():
    model = _net()
    return model, adaround(model, _data(), iterations=300)


def test_adaround_lowers_layer_error(rounded):
    model, result = rounded
    assert isinstance(result, AdaRoundResult) and result.samples == 128 and result.bits == 8
    assert [r.path for r in result.layers] == ["stem", "dw", "pw", "fc"] and result.skipped == ()
    for r in result.layers:
        assert r.mse_adaround <= r.mse_nearest
    # most layers really change their rounding and gain on the calibration data
    gained = [r for r in result.layers if r.flipped > 0 and r.mse_adaround < 0.99 * r.mse_nearest]
    assert len(gained) >= 2, str(result)
    assert sum(r.mse_adaround for r in result.layers) < 0.9 * sum(r.mse_nearest for r in result.layers)
    assert "bn" in {layer.name for layer in model.layers}            # the input model is unchanged


def test_kernels_on_the_grid_and_scale_kept(rounded):
    model, result = rounded
    folded = kslim.quant.fold_batch_norm(model)
    for name, axes in _AXES.items():
        w = result.model.get_layer(name).get_weights()[0]
        w0 = folded.get_layer(name).get_weights()[0]
        codes = _codes(w, axes)
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
        np.testing.assert_array_equal(np.abs(np.round(codes)).max(axis=axes), 127)
        # same scale as the float kernel's, at most one step from it
        np.testing.assert_allclose(np.abs(w).max(axis=axes), np.abs(w0).max(axis=axes), rtol=1e-6)
        step = np.abs(w0).max(axis=axes, keepdims=True) / 127
        assert np.all(np.abs(w - w0) <= step * (1 + 1e-4))


def test_int8_tflite_holds_adaround_integers(rounded):
    _, result = rounded
    lite = quant_post_static(result.model, _data(32), algo="abs_max", check=False)
    kernels = [d for d in lite.tensors() if d["dtype"] == np.int8 and len(d["shape"]) >= 2
               and len(d["quantization_parameters"]["scales"]) > 1]
    interp = lite.interpreter(use_xnnpack=False)
    found = {}
    for name in _AXES:
        w = result.model.get_layer(name).get_weights()[0]
        codes = np.round(_codes(w, _AXES[name])).astype(np.int8)
        if name == "dw":       # TFLite (1, kh, kw, c*m)
            want = codes.reshape((1,) + codes.shape[:2] + (-1,))
        elif name == "fc":     # (out, in)
            want = codes.T
        else:                  # (out, kh, kw, in)
            want = np.transpose(codes, (3, 0, 1, 2))
        for d in kernels:
            if tuple(d["shape"]) == want.shape and np.array_equal(interp.get_tensor(d["index"]), want):
                found[name] = d
    assert set(found) == set(_AXES)


def test_bits4_matches_litert_int4_weight_only():
    model = _net()
    result = adaround(model, _data(64), bits=4, iterations=100)
    for name, axes in _AXES.items():
        codes = _codes(result.model.get_layer(name).get_weights()[0], axes, levels=7)
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
    lite = kslim.quant.quant_post_litert(result.model, "int4_weight_only", check=False)
    x = _data(16, seed=3)
    np.testing.assert_allclose(lite.predict(x), np.asarray(result.model(x)), rtol=1e-3, atol=1e-4)


def test_adaround_bad_input():
    model, x = _net(), _data(8)
    with pytest.raises(KslimTypeError):
        adaround("model.keras", x)
    with pytest.raises(KslimValueError, match="weight_quantize_type"):
        adaround(model, x, weight_quantize_type="int4")
    with pytest.raises(KslimValueError, match="bits"):
        adaround(model, x, bits=16)
    with pytest.raises(KslimValueError, match="iterations"):
        adaround(model, x, iterations=0)
    with pytest.raises(KslimValueError, match="beta"):
        adaround(model, x, beta=(2, 20))
    with pytest.raises(KslimValueError, match="warm_start"):
        adaround(model, x, warm_start=1.0)
    with pytest.raises(KslimValueError, match="lr"):
        adaround(model, x, lr=0)
    with pytest.raises(KslimValueError, match="reg_weight"):
        adaround(model, x, reg_weight=-1)
    with pytest.raises(KslimValueError, match="nope"):
        adaround(model, x, skip=["nope"])
    with pytest.raises(ModelError, match="no Conv/Dense"):
        adaround(keras.Sequential([keras.Input((4,)), keras.layers.ReLU()]), np.zeros((4, 4), "float32"))
    with pytest.raises(ModelError, match="quantization-aware"):
        adaround(quant_aware(_net()), x)
    with pytest.raises(KslimValueError):
        adaround(model, np.zeros((4, 3), "float32"))                   # wrong input shape


def test_skip_and_public_names():
    result = adaround(_net(), _data(16), iterations=20, skip=["fc"])
    assert ("fc", "skip= names it") in result.skipped and "fc" not in [r.path for r in result.layers]
    assert {"adaround", "AdaRoundResult"} <= set(kslim.quant.__all__)
