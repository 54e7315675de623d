"""LiteRT's quantizer through kslim (kslim.quant.litert): int16x8 has int16 activations and int8
weights, int4 weight-only really stores 4-bit weights (type and size), per-layer rules mix recipes,
and every result runs in ai-edge-litert close to the Keras model."""

import keras
import numpy as np
import pytest

from kslim.errors import KslimValueError
from kslim.quant import quant_post_litert, tensor_types

pytest.importorskip("ai_edge_quantizer")


@pytest.fixture(scope="module")
def model_and_data():
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Conv2D(32, 3, activation="relu", name="conv"),
                          keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(64, activation="relu", name="fc"),
                          keras.layers.Dense(10, name="logits")])
    x = np.random.default_rng(0).random((32, 12, 12, 3), dtype=np.float32)
    return m, x


def test_int16x8_and_int8(model_and_data):
    m, x = model_and_data
    ref = np.asarray(m(x))
    err = {}
    for recipe, act in (("int16x8", "INT16"), ("int8", "INT8")):
        lite = quant_post_litert(m, recipe, calibration_data=x)
        types = tensor_types(lite.content)
        assert act in types and "INT8" in types and "FLOAT32" not in types, (recipe, types)
        assert not lite.float_ops
        err[recipe] = np.abs(lite.predict(x) - ref).max() / np.abs(ref).max()
    assert err["int16x8"] < 0.05 and err["int8"] < 0.08, err  # int8 weights in both: most of the error


def test_int4_weight_only_is_four_bit_in_the_file(model_and_data):
    from kslim.lite import convert

    m, x = model_and_data
    float_size = convert(m, check=False).size
    int8 = quant_post_litert(m, "int8_weight_only")
    int4 = quant_post_litert(m, "int4_weight_only")
    assert "INT4" in tensor_types(int4.content) and "INT4" not in tensor_types(int8.content)
    n_weights = sum(int(np.prod(w.shape)) for w in m.weights)
    assert int8.size - int4.size > 0.4 * n_weights  # half a byte saved per weight (headers aside)
    assert int4.size < float_size / 2  # ~3.7k weights: the flatbuffer's own bytes weigh in
    ref = np.asarray(m(x))
    corr = np.corrcoef(int4.predict(x).ravel(), ref.ravel())[0, 1]
    assert corr > 0.95, corr  # 16 levels per channel on random weights (measured 0.994)


def test_per_layer_rules_mix_recipes(model_and_data):
    m, x = model_and_data
    mixed = quant_post_litert(m, [(".*", "int8"), (".*conv.*", "int16x8")], calibration_data=x)
    types = tensor_types(mixed.content)
    assert {"INT8", "INT16"} <= types
    with pytest.raises(KslimValueError, match="calibration_data"):
        quant_post_litert(m, "int16x8")
    with pytest.raises(KslimValueError, match="unknown recipe 'int3'"):
        quant_post_litert(m, "int3")


def _tensor_scales(content):
    """{tensor name: (type name, scale, zero point)} of the activation tensors of a .tflite."""
    from kslim.lite.flatbuffer import read_flatbuffer, tensor_name, tensor_type_names

    types = tensor_type_names()
    model_t = read_flatbuffer(content)
    out = {}
    for t in model_t.subgraphs[0].tensors:
        q = t.quantization
        if q is not None and q.scale is not None and len(q.scale) == 1:
            out[tensor_name(t)] = (types.get(t.type), float(q.scale[0]), int(q.zeroPoint[0]))
    return out


def test_kslim_algo_writes_its_ranges_into_the_litert_model(model_and_data):
    """algo= replaces the quantizer's min/max with kslim's calibration: a calibrator clipping at half
    the largest value halves the scale of every inner int8 activation (outputs keep abs_max)."""
    from kslim.quant.calibration import register_calibrator, unregister_calibrator

    m, x = model_and_data
    own = quant_post_litert(m, "int8", calibration_data=x)
    absmax = quant_post_litert(m, "int8", calibration_data=x, algo="abs_max")
    register_calibrator("half_abs_max", lambda obs, **kw: 0.5 * obs.abs_max)
    try:
        half = quant_post_litert(m, "int8", calibration_data=x, algo="half_abs_max")
    finally:
        unregister_calibrator("half_abs_max")
    assert absmax.conversion["algo"] == "abs_max" and own.conversion["algo"] is None
    s_own, s_abs, s_half = (_tensor_scales(v.content) for v in (own, absmax, half))
    relu = next(n for n in s_abs if "conv" in n and "Relu" in n)
    lo, hi = absmax.activation_ranges[relu]
    assert lo == 0.0 and s_abs[relu][0] == "INT8"
    assert s_abs[relu][1] == pytest.approx(hi / 255, rel=1e-5)
    # LiteRT's own min/max is a moving average of per-sample ranges (qsv_utils.moving_average_update):
    # never above the maximum over all samples
    assert s_own[relu][1] <= s_abs[relu][1] * (1 + 1e-6)
    assert s_half[relu][1] == pytest.approx(0.5 * s_abs[relu][1], rel=1e-5)
    out = next(n for n in s_abs if n.startswith("StatefulPartitionedCall"))
    assert s_half[out][1] == pytest.approx(s_abs[out][1], rel=1e-5)  # the graph output keeps abs_max
    ref = np.asarray(m(x))
    assert np.corrcoef(absmax.predict(x).ravel(), ref.ravel())[0, 1] > 0.99


def test_kslim_algo_on_int16_activations_and_mixed_rules(model_and_data):
    """int16x8 with kslim's ranges: symmetric int16 grid (zero point 0, scale T / 32767); in a mixed
    recipe each tensor is calibrated at its own width."""
    m, x = model_and_data
    lite = quant_post_litert(m, "int16x8", calibration_data=x, algo="mse")
    scales = _tensor_scales(lite.content)
    relu = next(n for n in scales if "conv" in n and "Relu" in n)
    kind, scale, zp = scales[relu]
    lo, hi = lite.activation_ranges[relu]
    assert kind == "INT16" and zp == 0 and scale == pytest.approx(max(-lo, hi) / 32767, rel=1e-4)
    ref = np.asarray(m(x))
    assert np.abs(lite.predict(x) - ref).max() / np.abs(ref).max() < 0.05
    mixed = quant_post_litert(m, [(".*", "int8"), (".*conv.*", "int16x8")], calibration_data=x, algo="KL")
    kinds = {n: v[0] for n, v in _tensor_scales(mixed.content).items()}
    assert kinds[relu] == "INT16" and "INT8" in {kinds[n] for n in kinds if "fc" in n}
    with pytest.raises(KslimValueError, match="Unknown calibration algo 'nope'"):
        quant_post_litert(m, "int8", calibration_data=x, algo="nope")


def test_int8x4_has_int4_weights_and_int8_activations(model_and_data):
    m, x = model_and_data
    lite = quant_post_litert(m, "int8x4", calibration_data=x, algo="abs_max")
    types = {n: v[0] for n, v in _tensor_scales(lite.content).items()}
    relu = next(n for n in types if "conv" in n and "Relu" in n)
    assert types[relu] == "INT8" and "INT4" in tensor_types(lite.content) and not lite.float_ops
    int8 = quant_post_litert(m, "int8", calibration_data=x, algo="abs_max")
    n_weights = sum(int(np.prod(w.shape)) for w in m.weights)
    assert int8.size - lite.size > 0.4 * n_weights
    ref = np.asarray(m(x))
    assert np.corrcoef(lite.predict(x).ravel(), ref.ravel())[0, 1] > 0.95


def test_float32_rule_keeps_a_layer_float(model_and_data):
    m, x = model_and_data
    lite = quant_post_litert(m, [(".*", "int8"), ("conv", "float32")], calibration_data=x)
    assert [op for op, _ in lite.float_ops] == ["CONV_2D"]  # the rest int8: FULLY_CONNECTED, MEAN
    ref = np.asarray(m(x))
    assert np.abs(lite.predict(x) - ref).max() / np.abs(ref).max() < 0.08


def test_bad_calibration_settings_fail_before_converting(model_and_data, monkeypatch):
    import kslim.lite.converter as converter

    m, x = model_and_data
    monkeypatch.setattr(converter, "convert", lambda *a, **k: pytest.fail("converted before checking"))
    for kwargs, words in (({"algo": "hist", "hist_percent": 1.5}, "hist_percent"), ({"algo": "KL", "bins": 4}, "bins"),
                          ({"num_calibration_samples": 0}, "num_calibration_samples")):
        with pytest.raises(KslimValueError, match=words):
            quant_post_litert(m, "int8", calibration_data=x, **kwargs)
