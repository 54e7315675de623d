"""Post-training quantization: calibration algorithms (numpy), static int8 with enforced ranges, dynamic."""

import numpy as np
import pytest

from kslim.errors import KslimTypeError, KslimValueError, UnsupportedLayerError
from kslim.quant.calibration import ALGOS, TensorObserver, calibrate_range, kl_threshold, mse_threshold


# ----------------------------------------------------------------------------- calibration (pure numpy)
def _gauss_with_outliers(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(8, 20000)).astype(np.float32)
    x[0, :5] = 50.0  # 5 huge outliers among 160000 values
    return list(x)


def test_abs_max_and_avg_are_exact():
    batches = [np.array([-1.0, 0.5, 2.0]), np.array([0.25, -4.0]), np.array([3.0])]
    assert calibrate_range(batches, "abs_max") == (-4.0, 3.0)
    lo, hi = calibrate_range(batches, "avg")
    t = np.mean([2.0, 4.0, 3.0])
    assert hi == pytest.approx(min(3.0, t)) and lo == pytest.approx(-t)


@pytest.mark.parametrize("algo", ["hist", "KL"])
def test_hist_and_kl_clip_outliers(algo):
    lo, hi = calibrate_range(_gauss_with_outliers(), algo)
    assert 2.5 < hi < 6.0 and -6.0 < lo < -2.5  # the bulk of N(0,1), not the outliers at 50


def test_kl_clips_outliers_of_nonnegative_tensor():
    lo, hi = calibrate_range([np.maximum(b, 0) for b in _gauss_with_outliers()], "KL")
    assert lo == 0.0 and 2.5 < hi < 6.0


def test_mse_threshold_below_abs_max_for_gaussian():
    x = list(np.random.default_rng(1).normal(size=(4, 50000)).astype(np.float32))
    _, hi_abs = calibrate_range(x, "abs_max")
    _, hi_mse = calibrate_range(x, "mse")
    assert 2.5 < hi_mse < hi_abs


def test_mse_and_kl_on_handmade_histograms():
    edges = np.linspace(0, 10, 1001)
    hist = np.zeros(1000)
    hist[-1] = 1.0  # one outlier at c = 9.995
    c = 9.995
    for n in (1e5, 1e6):  # n values uniform on [0, 1]
        hist[:100] = n / 100
        # error(T) = (c - T)^2 + n * (T / 255)^2 / 12  ->  T* = c / (1 + n / (12 * 255^2))
        expected = c / (1 + n / (12 * 255.0 ** 2))
        assert mse_threshold(hist, edges, 255) == pytest.approx(expected, abs=0.011)
    # KL ignores the single outlier (its search starts at 128 bins: give the bulk 300 of them)
    edges = np.linspace(0, 10, 3001)
    hist = np.zeros(3000)
    hist[:300], hist[-1] = 1000.0, 1.0
    assert 0.9 < kl_threshold(hist, edges, 128) <= 1.0 + 1e-9


def test_observer_needs_histogram_pass_and_finite_values():
    obs = TensorObserver("t")
    obs.update_range(np.ones(10))
    with pytest.raises(KslimValueError, match="histogram pass"):
        obs.threshold("KL")
    with pytest.raises(KslimValueError, match="'bad'.*NaN"):
        TensorObserver("bad").update_range(np.array([1.0, np.nan]))


def test_unknown_algo_lists_allowed():
    with pytest.raises(KslimValueError, match="abs_max, avg, hist, KL, mse"):
        calibrate_range([np.ones(3)], "kl_div")


# ----------------------------------------------------------------------------- static int8 in TFLite
def _tiny_model(seed=0):
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inp = keras.Input((12, 12, 1), name="input")
    x = layers.Conv2D(8, 3, padding="same", name="conv1")(inp)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = layers.ReLU(6.0, name="relu2")(x)
    x = layers.Conv2D(16, 1, name="pw")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    out = layers.Dense(10, name="logits")(x)
    model = keras.Model(inp, out, name="tiny")
    # a few non-trivial BN statistics so that folding matters
    bn = model.get_layer("bn1")
    bn.moving_mean.assign(np.linspace(-0.2, 0.2, 8).astype("float32"))
    bn.moving_variance.assign(np.linspace(0.5, 2.0, 8).astype("float32"))
    return model


@pytest.fixture(scope="module")
def tiny():
    model = _tiny_model()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(96, 12, 12, 1)).astype(np.float32)
    x[0, 0, 0, 0] = 30.0  # one outlier pixel: abs_max must keep it, KL/hist must not
    return model, x


@pytest.fixture(scope="module")
def static_models(tiny):
    from kslim.quant import quant_post_static

    model, x = tiny
    return {algo: quant_post_static(model, x, algo=algo, batch_size=32) for algo in ("abs_max", "KL")}


def _int8_scales(lite):
    return {d["name"]: float(d["quantization_parameters"]["scales"][0]) for d in lite.tensors()
            if d["dtype"] == np.int8 and len(d["quantization_parameters"]["scales"]) == 1}


def test_static_ranges_are_enforced(static_models):
    for algo, lite in static_models.items():
        scales = _int8_scales(lite)
        matched = [n for n in lite.activation_ranges if n in scales]
        assert len(matched) >= 4, algo
        for name in matched:
            lo, hi = lite.activation_ranges[name]
            assert scales[name] == pytest.approx((hi - lo) / 255.0, rel=2e-3), (algo, name)
    # the input outlier is inside abs_max's range and clipped by KL: the scales differ
    a, k = (static_models[a].activation_ranges for a in ("abs_max", "KL"))
    inp = next(n for n in a if n.startswith("serving_default"))
    assert a[inp][1] == pytest.approx(30.0) and k[inp][1] < 2.0


def test_static_outputs_match_float_model(tiny, static_models):
    model, x = tiny
    xs = x[1:65]
    ref = np.asarray(model(xs, training=False))
    for algo, lite in static_models.items():
        assert lite.ops().get("CONV_2D") == 2 and "DEPTHWISE_CONV_2D" in lite.ops()
        got = lite.predict(xs)
        rel = np.mean(np.abs(got - ref)) / np.std(ref)
        assert rel < (0.15 if algo == "KL" else 0.5), (algo, rel)
    # abs_max spends its int8 range on the outlier: KL (clipped input range) is more accurate
    err = {a: np.mean(np.abs(lite.predict(xs) - ref)) for a, lite in static_models.items()}
    assert err["KL"] < err["abs_max"]
    assert static_models["KL"].parity["samples"] == 64


def test_static_int8_io_per_tensor_skip_and_bias_correction(tiny, static_models):
    from kslim.quant import quant_post_static

    model, x = tiny
    lite = quant_post_static(model, x[1:], algo="mse", batch_nums=2, inference_input_type="int8",
                             inference_output_type="int8", weight_quantize_type="abs_max", skip=["pw"],
                             bias_correction=True)
    assert lite.calibration["samples"] == 64 and lite.calibration["batches"] == 2
    assert lite.input_details[0]["dtype"] == np.int8 and lite.output_details[0]["dtype"] == np.int8
    tensors = {d["name"]: d for d in lite.tensors()}
    conv_w = next(d for n, d in tensors.items() if "conv1" in n and len(d["shape"]) == 4 and d["shape"][0] == 8
                  and d["dtype"] == np.int8)
    assert len(conv_w["quantization_parameters"]["scales"]) == 1  # per-tensor weights
    pw_w = [d for n, d in tensors.items() if "/pw" in n and len(d["shape"]) == 4 and d["shape"][0] == 16]
    assert pw_w and all(d["dtype"] == np.float32 for d in pw_w)  # kept in float
    assert "DEQUANTIZE" in lite.ops()
    ref = np.asarray(model(x[1:65], training=False))
    assert np.mean(np.abs(lite.predict(x[1:65]) - ref)) / np.std(ref) < 0.5


def test_bias_correction_changes_biases_and_does_not_hurt(tiny):
    from kslim.quant.ptq import TensorRunner, _quantize_static, correct_bias

    model, x = tiny
    calibrated, quantized, _, _ = _quantize_static(
        model, x[1:65], "KL", None, 32, 0.9999, 2048, "channel_wise_abs_max", "float32", "float32",
        False, None, False)
    fixed = correct_bias(quantized, calibrated, x[1:65])
    assert fixed != quantized
    ref = TensorRunner(calibrated)(x[1:65])
    errs = []
    for content in (quantized, fixed):
        out = TensorRunner(content)(x[1:65])
        name = next(n for n in ref if n.startswith("StatefulPartitionedCall"))
        errs.append(abs(np.mean(out[name] - ref[name])))
    assert errs[1] <= errs[0] + 1e-3


@pytest.mark.parametrize("data, match", [
    (np.zeros((0, 12, 12, 1), "float32"), "empty"),
    (np.full((4, 12, 12, 1), np.nan, "float32"), "NaN"),
    (np.zeros((4, 10, 10, 1), "float32"), r"\(4, 10, 10, 1\).*\(batch, 12, 12, 1\)"),
    ([], "empty"),
])
def test_static_bad_calibration_data(tiny, data, match):
    from kslim.quant import quant_post_static

    with pytest.raises(KslimValueError, match=match):
        quant_post_static(tiny[0], data)


def test_static_bad_options(tiny):
    from kslim.quant import quant_post_static

    model, x = tiny
    with pytest.raises(KslimValueError, match="allowed: abs_max, avg, hist, KL, mse"):
        quant_post_static(model, x, algo="entropy")
    with pytest.raises(KslimValueError, match="weight_quantize_type"):
        quant_post_static(model, x, weight_quantize_type="per_channel")
    with pytest.raises(KslimValueError, match="inference_input_type"):
        quant_post_static(model, x, inference_input_type="uint4")
    with pytest.raises(KslimTypeError, match="keras.Model"):
        quant_post_static("model.keras", x)
    with pytest.raises(KslimValueError, match="no layer 'nope'"):
        quant_post_static(model, x[:8], skip=["nope"])
    with pytest.raises(UnsupportedLayerError, match="'pool'"):
        quant_post_static(model, x[:8], skip=["pool"])


def test_all_algos_listed():
    from kslim.quant.calibration import calibrator_names

    assert ALGOS == ("abs_max", "avg", "hist", "KL", "mse") == calibrator_names()


def test_a_registered_calibrator_is_used_by_quant_post_static(tiny, static_models):
    from kslim.quant import quant_post_static
    from kslim.quant.calibration import calibrator_names, register_calibrator, unregister_calibrator

    model, x = tiny
    seen = []

    def median_of_maxima(obs, **options):   # a user's algorithm: the median of the batch maxima
        seen.append(obs.name)
        return float(np.median(obs.batch_abs_max))

    register_calibrator("median_max", median_of_maxima)
    try:
        assert calibrator_names()[-1] == "median_max"
        lite = quant_post_static(model, x, algo="median_max", batch_size=32)
    finally:
        unregister_calibrator("median_max")
    assert seen and lite.calibration["algo"] == "median_max"
    inp = next(n for n in lite.activation_ranges if n.startswith("serving_default"))
    # three batches; the outlier pixel (30) is in one of them: the median of the maxima clips it
    assert lite.activation_ranges[inp][1] < 2.0 and static_models["abs_max"].activation_ranges[inp][1] == 30.0
    assert "median_max" not in calibrator_names()
    with pytest.raises(KslimValueError, match="register_calibrator"):
        quant_post_static(model, x, algo="median_max")


def test_register_calibrator_validates():
    from kslim.quant.calibration import register_calibrator, unregister_calibrator

    with pytest.raises(KslimValueError, match="built-in"):
        register_calibrator("KL", lambda obs, **kw: 1.0)
    with pytest.raises(KslimValueError, match="callable"):
        register_calibrator("bad", 3.0)
    register_calibrator("negative", lambda obs, **kw: float("nan"))
    try:
        with pytest.raises(KslimValueError, match="finite"):
            calibrate_range([np.ones(4)], algo="negative", name="t")
    finally:
        unregister_calibrator("negative")
    with pytest.raises(KslimValueError, match="built in"):
        unregister_calibrator("mse")


# ----------------------------------------------------------------------------- dynamic / float16
@pytest.fixture(scope="module")
def dense_model():
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(256, activation="relu", name="fc1"),
                             keras.layers.Dense(256, activation="relu", name="fc2"),
                             keras.layers.Dense(10, name="head")], name="mlp")


def test_dynamic_int8_and_float16_sizes(dense_model):
    from kslim.lite import convert
    from kslim.quant import quant_post_dynamic

    base = convert(dense_model, check=False).size
    x = np.random.default_rng(0).normal(size=(16, 64)).astype(np.float32)
    dyn = quant_post_dynamic(dense_model, check_data=x)
    fp16 = quant_post_dynamic(dense_model, weight_bits=16)
    assert dyn.size < 0.30 * base  # ~ -75 %
    assert 0.45 * base < fp16.size < 0.56 * base  # ~ -50 %
    assert dyn.parity["max_abs_diff"] < 0.05 * np.abs(np.asarray(dense_model(x))).max()
    w = [d for d in dyn.tensors() if len(d["shape"]) == 2 and d["shape"][0] == 256]
    assert w and all(d["dtype"] == np.int8 for d in w)


@pytest.mark.parametrize("dtype", ["int8", "float16"])
def test_dynamic_skip_keeps_layer_float(dense_model, dtype):
    from kslim.quant import quant_post_dynamic

    x = np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32)
    plain = quant_post_dynamic(dense_model, dtype=dtype, check=False)
    lite = quant_post_dynamic(dense_model, dtype=dtype, skip=["fc2"], check_data=x)
    fc2 = [d for d in lite.tensors() if "fc2" in d["name"] and tuple(d["shape"]) == (256, 256)]
    fc1 = [d for d in lite.tensors() if "fc1" in d["name"] and tuple(d["shape"]) == (256, 64)]
    assert fc2 and all(d["dtype"] == np.float32 for d in fc2)
    assert any(d["dtype"] == (np.int8 if dtype == "int8" else np.float16) for d in fc1)
    assert lite.size > plain.size + 256 * 256 * (2 if dtype == "int8" else 1)
    ref = np.asarray(dense_model(x))
    assert np.max(np.abs(lite.predict(x) - ref)) <= np.max(np.abs(plain.predict(x) - ref)) * 1.5 + 1e-5


def test_dynamic_bad_options(dense_model):
    from kslim.quant import quant_post_dynamic

    with pytest.raises(KslimValueError, match="weight_bits"):
        quant_post_dynamic(dense_model, weight_bits=4)
    with pytest.raises(KslimValueError, match="dtype"):
        quant_post_dynamic(dense_model, dtype="bfloat16")
    with pytest.raises(KslimValueError, match="no layer 'fc9'"):
        quant_post_dynamic(dense_model, skip=["fc9"])
