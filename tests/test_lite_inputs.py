"""Multi-input, dict-input and integer-input models through kslim.lite.convert, LiteModel and PTQ.

Tolerances: float conversions match Keras to 1e-5 (same float graph); dynamic-range and int8 models
are compared by the error relative to the largest Keras output (int8: < 10 %, dynamic: < 5 %).
"""

import numpy as np
import pytest

from kslim.errors import KslimValueError


def _rel(got, ref):
    return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


def _int8(lite, op):
    """dtypes of the non-constant inputs and of the constant inputs of every ``op``."""
    rows = [d for d in lite.describe_ops() if d["op"] == op]
    assert rows, f"no {op} in {lite.ops()}"
    return ({t["dtype"] for d in rows for t in d["inputs"] if t is not None and not t["const"]},
            {t["dtype"] for d in rows for t in d["inputs"] if t is not None and t["const"] and t["dtype"] != "int32"})


@pytest.fixture(scope="module")
def two():
    """A two-input functional model built with its inputs in non-alphabetical order."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    a, b = keras.Input((6,), name="zeta"), keras.Input((6, 6, 1), name="alpha")
    x = layers.Concatenate()([layers.Dense(16, activation="relu")(a),
                              layers.GlobalAveragePooling2D()(layers.Conv2D(16, 3, activation="relu")(b))])
    x = layers.Dense(64, activation="relu")(x)  # 2048 weights: quantized by "dynamic"
    model = keras.Model([a, b], layers.Dense(4)(x), name="two")
    rng = np.random.default_rng(0)
    xa, xb = rng.uniform(0, 1, (96, 6)).astype("float32"), rng.uniform(0, 1, (96, 6, 6, 1)).astype("float32")
    return model, xa, xb, np.asarray(model([xa, xb]))


def test_two_inputs_float_by_name_and_order(two, tmp_path):
    from kslim.lite import LiteModel, convert

    model, xa, xb, ref = two
    lite = convert(model, check_data=[xa, xb])
    assert lite.input_names == ["zeta", "alpha"]  # the Keras order, not the converter's
    assert lite.parity["max_abs_diff"] < 1e-5 and lite.parity["samples"] == 96
    np.testing.assert_allclose(lite.predict([xa, xb]), ref, atol=1e-5)
    np.testing.assert_allclose(lite.predict({"alpha": xb, "zeta": xa}, batch_size=40), ref, atol=1e-5)
    again = LiteModel.load(lite.save(tmp_path / "two.tflite"))  # the order survives a file round trip
    assert again.input_names == ["zeta", "alpha"]
    np.testing.assert_allclose(again.predict((xa, xb)), ref, atol=1e-5)
    assert again.evaluate(([xa, xb], np.argmax(ref, -1))) == 1.0


def test_two_inputs_dynamic_and_static(two):
    import tensorflow as tf

    from kslim.lite import convert
    from kslim.quant import quant_post_dynamic, quant_post_static

    model, xa, xb, ref = two
    dyn = quant_post_dynamic(model, check_data=[xa, xb])
    assert any(d["dtype"] == np.int8 and tuple(d["shape"]) == (64, 32) for d in dyn.tensors())
    assert dyn.precision.startswith("dynamic-range") and _rel(dyn.predict([xa, xb]), ref) < 0.05
    # calibration from a tf.data of ((zeta, alpha), label) batches; int8 I/O on both float inputs
    ds = tf.data.Dataset.from_tensor_slices(((xa, xb), np.zeros(96, "int32"))).batch(32)
    st = quant_post_static(model, ds, algo="abs_max", inference_input_type="int8")
    assert [d["dtype"] for d in st.input_details] == [np.int8, np.int8]
    assert st.float_ops == [] and st.precision == "int8" and "int8" in repr(st)
    act, w = _int8(st, "CONV_2D")
    assert act == {"int8"} and w == {"int8"}
    assert _rel(st.predict([xa, xb]), ref) < 0.1 and st.parity["argmax_agreement"] >= 0.9
    # the converter's own int8 path with a list of arrays as representative data
    c8 = convert(model, quantize="int8", representative_data=[xa, xb], check_data=(xa, xb))
    assert c8.float_ops == [] and c8.parity["argmax_agreement"] >= 0.9


@pytest.fixture(scope="module")
def text():
    """dict inputs as keras-hub text models take them: int32 token ids and a boolean padding mask."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    tok = keras.Input((8,), dtype="int32", name="token_ids")
    mask = keras.Input((8,), dtype="bool", name="padding_mask")
    x = layers.GlobalAveragePooling1D()(layers.Embedding(100, 16)(tok), mask=mask)  # 1600 weights
    x = layers.Dense(64, activation="relu")(x)
    model = keras.Model({"token_ids": tok, "padding_mask": mask}, layers.Dense(3)(x), name="text")
    rng = np.random.default_rng(0)
    data = {"token_ids": rng.integers(0, 100, (96, 8)).astype("int32"), "padding_mask": rng.uniform(size=(96, 8)) > 0.3}
    data["padding_mask"][:, 0] = True
    return model, data, np.asarray(model(data))


def test_dict_inputs_float_dynamic_static(text):
    from kslim.lite import convert
    from kslim.quant import quant_post_dynamic, quant_post_static

    model, data, ref = text
    lite = convert(model, check_data=data)
    assert [d["dtype"] for d in lite.input_details] == [np.int32, np.bool_]
    assert lite.input_names == ["token_ids", "padding_mask"]
    np.testing.assert_allclose(lite.predict(data), ref, atol=1e-5)
    # integer ids given as int64 or as integral floats are fed as int32
    np.testing.assert_allclose(lite.predict({**data, "token_ids": data["token_ids"].astype("float64")}), ref, atol=1e-5)
    dyn = quant_post_dynamic(model, check_data=data)
    assert dyn.precision.startswith("dynamic-range") and _rel(dyn.predict(data), ref) < 0.05
    st = quant_post_static(model, data, algo="abs_max", inference_input_type="int8", inference_output_type="int8")
    assert [d["dtype"] for d in st.input_details] == [np.int32, np.bool_]  # int8 I/O: float inputs only
    assert st.output_details[0]["dtype"] == np.int8
    assert _int8(st, "GATHER")[1] == {"int8"} and _int8(st, "FULLY_CONNECTED") == ({"int8"}, {"int8"})
    # the boolean mask is cast to float before it is quantized: the one float op, and it is reported
    assert [op for op, _ in st.float_ops] == ["CAST"] and "int8 (1 float op: CAST)" in repr(st)
    assert _rel(st.predict(data), ref) < 0.1


def test_embedding_int32_input_static():
    import keras
    from keras import layers

    from kslim.quant import quant_post_static

    keras.utils.set_random_seed(1)
    inp = keras.Input((12,), dtype="int32", name="ids")
    x = layers.Flatten()(layers.Embedding(64, 8)(inp))
    model = keras.Model(inp, layers.Dense(5)(layers.Dense(32, activation="relu")(x)), name="emb")
    ids = np.random.default_rng(0).integers(0, 64, (128, 12))  # int64: calibrated as int32
    lite = quant_post_static(model, ids, algo="KL")
    assert lite.input_details[0]["dtype"] == np.int32
    assert lite.float_ops == [] and lite.precision == "int8"
    assert _int8(lite, "GATHER")[1] == {"int8"} and _int8(lite, "FULLY_CONNECTED") == ({"int8"}, {"int8"})
    assert _rel(lite.predict(ids), np.asarray(model(ids))) < 0.1


def test_keras_hub_backbone_dict_in_dict_out():
    keras_hub = pytest.importorskip("keras_hub")
    from kslim.lite import convert
    from kslim.quant import quant_post_static

    bb = keras_hub.models.BertBackbone(vocabulary_size=64, num_layers=1, num_heads=2, hidden_dim=16,
                                       intermediate_dim=32, max_sequence_length=16)
    rng = np.random.default_rng(0)
    data = {"token_ids": rng.integers(0, 64, (32, 12)), "segment_ids": np.zeros((32, 12), int),
            "padding_mask": np.ones((32, 12), int)}
    lite = convert(bb, check_data=data)
    assert lite.output_names == ["sequence_output", "pooled_output"] and lite.parity["max_abs_diff"] < 1e-4
    st = quant_post_static(bb, data, algo="abs_max")
    assert st.precision.startswith("int8") and st.parity["max_abs_diff"] < 0.5


@pytest.mark.parametrize("data, match", [
    (lambda xa, xb: xa, r"got a single ndarray, model 'two' takes 2 inputs"),
    (lambda xa, xb: [xa, xb, xa], "got 3 arrays"),
    (lambda xa, xb: {"zeta": xa}, r"missing key\(s\) \['alpha'\]"),
    (lambda xa, xb: {"zeta": xa, "alpha": xb, "beta": xa}, r"unknown key\(s\) \['beta'\]"),
    (lambda xa, xb: [xa, xb[:, :5]], r"\(96, 5, 6, 1\) does not match the model input 'alpha' \(batch, 6, 6, 1\)"),
    (lambda xa, xb: [xa[:10], xb], "'alpha' has 96 samples but 'zeta' has 10"),
])
def test_mismatched_data_named_before_any_conversion(two, monkeypatch, data, match):
    import kslim.lite.converter as conv
    from kslim.quant import quant_post_dynamic, quant_post_static

    model, xa, xb, _ = two

    def no_conversion(*a, **k):
        raise AssertionError("conversion started before the data was checked")

    monkeypatch.setattr(conv, "keras_converter", no_conversion)
    with pytest.raises(KslimValueError, match=match):
        quant_post_static(model, data(xa, xb))
    with pytest.raises(KslimValueError, match=match):
        conv.convert(model, quantize="int8", representative_data=data(xa, xb))
    with pytest.raises(KslimValueError, match=match):
        quant_post_dynamic(model, check_data=data(xa, xb))


def test_integer_input_refuses_fractions_and_predict_checks_names(text):
    from kslim.lite import convert

    model, data, _ = text
    bad = {**data, "token_ids": data["token_ids"] + 0.5}
    with pytest.raises(KslimValueError, match="'token_ids' takes int32 values"):
        convert(model, check_data=bad)
    lite = convert(model, check=False)
    with pytest.raises(KslimValueError, match=r"missing key\(s\) \['padding_mask'\]"):
        lite.predict({"token_ids": data["token_ids"]})
    with pytest.raises(KslimValueError, match="boolean input 'padding_mask' got values other than 0/1"):
        lite.predict({**data, "padding_mask": np.full((96, 8), 2)})
