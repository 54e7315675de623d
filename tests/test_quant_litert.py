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
