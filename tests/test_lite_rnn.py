"""Recurrent models to builtin TFLite ops (float, dynamic, PTQ static) and converter errors in one line.

Tolerances: float conversions match Keras to 1e-5; dynamic-range within 5 % and int8 within 10 % of
the largest Keras output.
"""

import numpy as np
import pytest

from kslim.errors import ConversionError

T, F = 8, 4


def _classifier(kind, timesteps=T, name=None):
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    inp = keras.Input((timesteps, F), name="seq")
    rnn = {"lstm": lambda: layers.LSTM(24, name="rnn"), "gru": lambda: layers.GRU(24, name="rnn"),
           "bilstm": lambda: layers.Bidirectional(layers.LSTM(8), name="rnn")}[kind]()
    return keras.Model(inp, layers.Dense(3, name="logits")(rnn(inp)), name=name or kind)


def _rel(got, ref):
    return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


@pytest.fixture(scope="module")
def seq():
    return np.random.default_rng(0).normal(size=(64, T, F)).astype("float32")


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_rnn_float_dynamic_static(kind, seq):
    from kslim.lite import convert
    from kslim.quant import quant_post_dynamic, quant_post_static

    model = _classifier(kind)
    ref = np.asarray(model(seq))
    lite = convert(model, check_data=seq)
    assert lite.conversion["rnn"] == {"layers": ["rnn"], "mode": "unrolled", "batch_size": None}
    ops = lite.ops()
    assert "WHILE" not in ops and ops["FULLY_CONNECTED"] >= 2 * T and {"LOGISTIC", "TANH", "MUL"} <= set(ops)
    np.testing.assert_allclose(lite.predict(seq), ref, atol=1e-5)
    assert model.get_layer("rnn").unroll is False  # unrolled for the export only

    dyn = quant_post_dynamic(model, check_data=seq)  # the 24x96 / 24x72 recurrent kernels become int8
    assert dyn.precision.startswith("dynamic-range") and _rel(dyn.predict(seq), ref) < 0.05

    st = quant_post_static(model, seq, algo="abs_max")
    assert st.float_ops == [] and st.precision == "int8"  # every gate, every step in int8
    fc = [d for d in st.describe_ops() if d["op"] == "FULLY_CONNECTED"]
    assert all(t["dtype"] == "int8" for d in fc for t in d["inputs"][:2])
    assert _rel(st.predict(seq), ref) < 0.1 and st.parity["argmax_agreement"] >= 0.9


def test_variable_length_bidirectional_is_a_while_loop_and_refuses_int8(seq, monkeypatch):
    import kslim.lite.converter as conv
    from kslim.quant import quant_post_static

    model = _classifier("bilstm", timesteps=None)
    lite = conv.convert(model, check_data=seq)
    assert lite.conversion["rnn"]["mode"] == "while_loop_batch_1" and "WHILE" in lite.ops()
    for x in (seq[:5], seq[:3, :5]):  # any batch (run one sample at a time) and any sequence length
        np.testing.assert_allclose(lite.predict(x), np.asarray(model(x)), atol=1e-5)
    # int8 needs the recurrence unrolled: refused with the layer named, before any conversion work
    monkeypatch.setattr(conv, "keras_converter", lambda *a, **k: pytest.fail("conversion started"))
    with pytest.raises(ConversionError, match=r"layer 'rnn' \(Bidirectional\) runs over a variable number"):
        quant_post_static(model, seq)
    with pytest.raises(ConversionError, match="fixed sequence length"):
        conv.convert(model, quantize="int8", representative_data=seq)


def test_converter_failure_is_one_line_with_op_and_layer():
    import keras
    import tensorflow as tf
    from keras import layers

    from kslim.lite import convert

    class Determinant(layers.Layer):  # no builtin TFLite kernel (MatrixDeterminant needs TF Select)
        def call(self, x):
            return tf.linalg.det(tf.reshape(x, (-1, 4, 4)))[:, None]

    inp = keras.Input((16,))
    model = keras.Model(inp, Determinant(name="det")(layers.Dense(16)(inp)), name="detm")
    with pytest.raises(ConversionError) as info:
        convert(model)
    e = info.value
    assert "\n" not in str(e) and "loc(" not in str(e)
    assert "layer 'det' (Determinant)" in str(e) and "'tf.MatrixDeterminant' op is neither" in str(e)
    assert e.layer == "det" and e.op == "tf.MatrixDeterminant"
    assert "error:" in e.log and e.log.count("\n") > 5  # the whole converter output is kept
