"""Recurrent layers unrolled for QAT (kslim.graph.unroll) and quantized to int8 through it."""

import numpy as np
import pytest

import keras

from kslim.graph.keras_graph import NotExpandable, layer_nodes
from kslim.graph.unroll import unroll
from kslim.quant import convert, float_ops, quant_aware
from kslim.testing.checks import QAT_MIN_CORR

L = keras.layers
STEPS, FEATURES = 6, 3


def _seq_model(layer, steps=STEPS):
    model = keras.Sequential([keras.Input((steps, FEATURES)), layer])
    rng = np.random.default_rng(0)
    for w in model.weights:   # biases too: a GRU's recurrent bias must be carried over exactly
        w.assign(rng.normal(scale=0.5, size=w.shape).astype("float32"))
    return model


def _call(layer):
    return layer_nodes(layer)[0]


@pytest.mark.parametrize("make", [
    lambda: L.LSTM(4, name="rnn"),
    lambda: L.LSTM(4, return_sequences=True, go_backwards=True, name="rnn"),
    lambda: L.LSTM(4, return_state=True, use_bias=False, name="rnn"),
    lambda: L.GRU(4, name="rnn"),                                   # reset_after=True: two biases
    lambda: L.GRU(4, reset_after=False, return_sequences=True, name="rnn"),
    lambda: L.GRU(4, go_backwards=True, return_sequences=True, return_state=True, name="rnn"),
    lambda: L.SimpleRNN(4, activation="relu", return_sequences=True, name="rnn"),
    lambda: L.Bidirectional(L.GRU(4, return_sequences=True), name="rnn"),
    lambda: L.Bidirectional(L.LSTM(4, return_state=True), merge_mode="sum", name="rnn"),
], ids=["lstm", "lstm_backwards_seq", "lstm_state_nobias", "gru", "gru_reset_before", "gru_backwards_state",
        "simple_relu", "bidir_gru_seq", "bidir_lstm_sum_state"])
def test_unrolled_layer_computes_what_the_layer_computes(make):
    model = _seq_model(make())
    layer = model.get_layer("rnn")
    sub = unroll(layer, _call(layer))
    assert sub.name == "rnn" and not any(isinstance(s, keras.layers.RNN) for s in sub.layers)
    x = np.random.default_rng(1).normal(size=(4, STEPS, FEATURES)).astype("float32")
    want, got = keras.tree.flatten(layer(x)), keras.tree.flatten(sub(x))
    assert len(want) == len(got)
    for w, g in zip(want, got):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5)


@pytest.mark.parametrize("model, reason", [
    (lambda: keras.Sequential([keras.Input((None, FEATURES)), L.LSTM(4, name="rnn")]), "no fixed sequence length"),
    (lambda: keras.Sequential([keras.Input((STEPS,), dtype="int32"), L.Embedding(9, 3, mask_zero=True),
                               L.GRU(4, name="rnn")]), "mask"),
    (lambda: keras.Sequential([keras.Input((STEPS, FEATURES), batch_size=2), L.LSTM(4, stateful=True, name="rnn")]),
     "stateful"),
])
def test_what_cannot_be_unrolled_says_why(model, reason):
    m = model()
    layer = m.get_layer("rnn")
    with pytest.raises(NotExpandable, match=reason):
        unroll(layer, _call(layer))
    q = quant_aware(m)      # QAT keeps it float and names it, with the reason
    assert reason in q.kslim_unquantized["rnn"]


def _qat_lite(stack):
    inputs = keras.Input((8,), dtype="int32", name="tokens")
    x = stack(L.Embedding(20, 6)(inputs))
    model = keras.Model(inputs, L.Dense(4, name="logits")(x))
    tokens = np.random.default_rng(0).integers(0, 20, size=(32, 8)).astype("int32")
    q = quant_aware(model)
    assert q.kslim_unquantized == {}
    for i in range(2):  # the activation quantizers learn their ranges as in fit
        q(tokens[16 * i:16 * (i + 1)], training=True)
    return q, convert(q), tokens[:16]


@pytest.mark.slow   # ~30 s; the default suite converts io_lstm's QAT model in tests/test_zoo.py
def test_stacked_recurrent_layers_convert_to_int8_with_no_float_op():
    q, lite, _ = _qat_lite(lambda x: L.Bidirectional(L.GRU(3), name="bigru")(
        L.LSTM(5, return_sequences=True, name="lstm")(x)))
    assert isinstance(q.get_layer("lstm"), keras.Model) and isinstance(q.get_layer("bigru"), keras.Model)
    assert float_ops(lite) == []
    assert {"FULLY_CONNECTED", "LOGISTIC", "TANH", "MUL", "ADD", "SUB", "PACK"} <= set(lite.ops())
    assert not {"WHILE", "UNIDIRECTIONAL_SEQUENCE_LSTM"} & set(lite.ops())


@pytest.mark.slow   # ~20 s
def test_recurrent_qat_tflite_matches_the_keras_qat_model():
    # TFLite's integer kernels round a tie or an ADD rescale differently from the float simulation now and
    # then (one step), and the recurrence carries it on: parity is the zoo's, not exactness (a second
    # recurrent layer on top of random weights amplifies it further: 0.94 on io_gru_bidir)
    q, lite, tokens = _qat_lite(lambda x: L.Flatten()(L.Bidirectional(L.LSTM(5, return_sequences=True),
                                                                       name="bilstm")(x)))
    assert float_ops(lite) == []
    want = np.asarray(q(tokens, training=False))
    got = lite.predict(tokens)
    assert np.corrcoef((got - got.mean(0)).ravel(), (want - want.mean(0)).ravel())[0, 1] > QAT_MIN_CORR


@pytest.mark.slow   # ~6 s (default suite budget); io_lstm's QAT model converts in tests/test_zoo.py
def test_an_unrolled_qat_model_trains_saves_and_loads(tmp_path):
    model = keras.Sequential([keras.Input((3, FEATURES)), L.Bidirectional(L.GRU(3), name="bigru"),
                              L.Dense(2, name="logits")])
    q = quant_aware(model)
    assert isinstance(q.get_layer("bigru"), keras.Model) and q.kslim_unquantized == {}
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 3, FEATURES)).astype("float32"), rng.normal(size=(16, 2)).astype("float32")
    before = q.get_layer("bigru").get_layer("forward_recurrent_kernel").get_weights()[0].copy()
    q.compile(optimizer="adam", loss="mse")
    q.fit(x, y, epochs=1, batch_size=8, verbose=0)   # the shared recurrent kernel learns
    assert not np.allclose(q.get_layer("bigru").get_layer("forward_recurrent_kernel").get_weights()[0], before)
    path = tmp_path / "q.keras"
    q.save(path)
    back = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(np.asarray(back(x)), np.asarray(q(x)), atol=1e-6)


def test_recurrent_layers_can_be_left_out_by_type():
    model = keras.Sequential([keras.Input((STEPS, FEATURES)), L.LSTM(4, name="rnn"), L.Dense(2)])
    q = quant_aware(model, quantizable_layer_type=["Dense"])
    assert q.kslim_unquantized == {"rnn": "quantizable_layer_type excludes LSTM"}
