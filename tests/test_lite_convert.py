"""kslim.lite.convert / LiteModel: quantization modes, parity, QAT, save/load, bad input."""

import re

import numpy as np
import pytest

from kslim.errors import ConversionError, KslimFileError, KslimTypeError, KslimValueError


def _tiny(name="tiny"):
    import keras
    from keras import layers

    inp = keras.Input((28, 28, 1))
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inp)
    x = layers.DepthwiseConv2D(3, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU(6.0)(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)  # > 1024 weights: quantized by "dynamic"
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, layers.Dense(10)(x), name=name)


@pytest.fixture(scope="module")
def trained(small_data):
    import keras

    from kslim.models import compile_classifier

    keras.utils.set_random_seed(0)
    (x, y), (xt, yt) = small_data
    m = compile_classifier(_tiny("trained"))
    m.fit(x[:1200], y[:1200], epochs=1, batch_size=64, verbose=0)
    acc = float(m.evaluate(xt, yt, verbose=0)[1])
    return m, acc


@pytest.fixture(scope="module")
def float_lite(trained):
    from kslim.lite import convert

    return convert(trained[0])


def test_float_parity_predict_ops_and_evaluate(trained, float_lite, small_data):
    model, acc = trained
    lm = float_lite
    assert lm.parity["kind"] == "max_abs_diff" and lm.parity["value"] < 1e-4
    assert lm.parity["argmax_agreement"] == 1.0 and lm.parity["quantized"] is False
    ops = lm.ops()
    assert ops["CONV_2D"] == 2 and ops["DEPTHWISE_CONV_2D"] == 1 and ops["FULLY_CONNECTED"] == 1
    (_, _), (xt, yt) = small_data
    np.testing.assert_allclose(lm.predict(xt[:37]), np.asarray(model(xt[:37])), atol=1e-4)
    assert lm.predict(xt[:37], batch_size=10).shape == (37, 10)
    assert abs(lm.evaluate((xt, yt)) - acc) < 0.005
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((xt[:100], yt[:100])).batch(32)
    assert lm.evaluate(ds) == pytest.approx(lm.evaluate((xt[:100], yt[:100])))


def test_dynamic_and_float16_shrink_weights(trained, float_lite):
    from kslim.lite import convert

    dyn = convert(trained[0], quantize="dynamic")
    f16 = convert(trained[0], quantize="float16")
    assert dyn.parity["kind"] == "max_abs_diff" and dyn.parity["value"] < 0.1
    assert f16.parity["kind"] == "max_abs_diff" and f16.parity["value"] < 1e-2
    assert any(t["dtype"] == np.int8 for t in dyn.tensors())
    assert any(t["dtype"] == np.float16 for t in f16.tensors())
    assert dyn.size < float_lite.size and f16.size < float_lite.size


def test_int8_full_integer(trained, small_data):
    from kslim.lite import convert

    model, acc = trained
    (x, _), (xt, yt) = small_data
    lm = convert(model, quantize="int8", representative_data=x[:100], check_data=xt[:200])
    assert lm.parity["kind"] == "argmax_agreement" and lm.parity["quantized"] is True
    assert lm.parity["value"] >= 0.9 and lm.parity["samples"] == 200
    convs = [t for t in lm.tensors() if t["dtype"] == np.int8 and len(t["shape"]) == 4]
    assert convs, "int8 model has no int8 4-D tensors"
    assert abs(lm.evaluate((xt, yt)) - acc) < 0.05
    # int8 I/O: the LiteModel quantizes float inputs itself
    io8 = convert(model, quantize="int8", representative_data=x[:100], inference_input_type="int8",
                  inference_output_type="int8", check=False)
    assert io8.input_details[0]["dtype"] == np.int8 and io8.output_details[0]["dtype"] == np.int8
    agree = np.mean(np.argmax(io8.predict(xt[:200]), -1) == np.argmax(lm.predict(xt[:200]), -1))
    assert agree >= 0.95


def test_qat_model_converts_without_representative_data():
    """A model carrying fake-quant ranges (what kslim.quant's QAT produces) needs no calibration."""
    import keras
    import tensorflow as tf
    from keras import layers

    class FakeQuant(layers.Layer):
        def __init__(self, lo=-6.0, hi=6.0, **kw):
            super().__init__(**kw)
            self.lo, self.hi = lo, hi

        def call(self, x):
            return tf.quantization.fake_quant_with_min_max_args(x, min=self.lo, max=self.hi, num_bits=8,
                                                                narrow_range=False)

    inp = keras.Input((16, 16, 1))
    x = FakeQuant(0.0, 1.0)(inp)
    x = FakeQuant()(layers.Conv2D(4, 3, activation="relu")(x))
    x = layers.Flatten()(x)
    out = FakeQuant(-10.0, 10.0)(layers.Dense(3)(x))
    model = keras.Model(inp, out)
    from kslim.lite import convert

    lm = convert(model, quantize="int8")
    assert any(t["dtype"] == np.int8 and len(t["shape"]) == 4 for t in lm.tensors())
    assert lm.parity["kind"] == "argmax_agreement"


def test_converter_noise_is_captured(capfd):
    from kslim.lite import convert

    capfd.readouterr()
    convert(_tiny(), check=False)
    out, err = capfd.readouterr()
    for noise in ("Saved artifact", "Captures:", "TensorSpec", "tf_tfl", "flatbuffer"):
        assert noise not in out + err
    print("after")  # printing works again afterwards
    assert capfd.readouterr().out == "after\n"


def test_failed_redirection_restores_fds(monkeypatch):
    """If redirecting fd 2 fails, fd 1 is restored and no saved descriptor leaks."""
    import os

    from kslim.lite import _quiet

    real_dup2 = os.dup2
    calls = []

    def dup2(fd, fd2, *args):
        calls.append(fd2)
        if fd2 == 2 and calls.count(2) == 1:  # redirecting fd 2 (after fd 1 was redirected) fails
            raise OSError("dup2 refused")
        return real_dup2(fd, fd2, *args)

    stdout_id = os.fstat(1).st_ino, os.fstat(1).st_dev
    before = set(map(int, os.listdir("/proc/self/fd")))
    monkeypatch.setattr(os, "dup2", dup2)
    with pytest.raises(OSError, match="dup2 refused"):
        with _quiet.captured_output():
            pass
    monkeypatch.undo()
    assert (os.fstat(1).st_ino, os.fstat(1).st_dev) == stdout_id
    assert set(map(int, os.listdir("/proc/self/fd"))) == before


def test_float_ops_lists_float_kernels(float_lite):
    from kslim.lite import float_ops
    from kslim.quant import float_ops as quant_float_ops
    from kslim.quant.qat import float_ops as qat_float_ops

    assert quant_float_ops is float_ops and qat_float_ops is float_ops  # one implementation
    bad = float_lite.float_ops  # a float model: every op computes in float
    assert bad == float_ops(float_lite) == float_ops(float_lite.content)
    assert [i for _, i in bad] == list(range(sum(float_lite.ops().values())))
    assert {op for op, _ in bad} == set(float_lite.ops()) >= {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}
    assert float_lite.precision == "float32" and "float32" in repr(float_lite)


def test_precision_names_float_ops_left_in_an_int8_model(trained, small_data):
    """Integer-only ops (SHAPE, int32 shape arithmetic) are not float; float compute ops are listed."""
    from kslim.lite import LiteModel, convert
    from kslim.lite.runner import _pack, read_model

    (x, _), _ = small_data
    lm = convert(trained[0], quantize="int8", representative_data=x[:64], check=False)
    assert lm.float_ops == [] and lm.precision == "int8" and repr(lm).endswith(", int8)")
    assert lm.summary().splitlines()[0].endswith(" bytes, int8")
    assert re.search(r"inputs:  input_layer\w* float32 \(batch, 28, 28, 1\)", lm.summary())
    # mark the two convs' filters float (as if the converter had left them float; only inspected, never
    # run): both are reported, by name
    schema, m = read_model(lm.content)
    sg = m.subgraphs[0]
    convs = [op for op in sg.operators if m.operatorCodes[op.opcodeIndex].builtinCode == schema.BuiltinOperator.CONV_2D]
    for op in convs:
        sg.tensors[op.inputs[1]].type = schema.TensorType.FLOAT32
    bad = LiteModel(_pack(schema, m))
    assert [op for op, _ in bad.float_ops] == ["CONV_2D", "CONV_2D"]
    assert bad.precision == "int8 (2 float ops: CONV_2D\u00d72)" and "CONV_2D\u00d72" in repr(bad)
    dyn = convert(trained[0], quantize="dynamic", check=False)
    assert dyn.precision == "dynamic-range (int8 weights, float activations)"
    assert convert(trained[0], quantize="float16", check=False).precision == "float16 weights"


def test_save_is_atomic_and_load_roundtrips(float_lite, tmp_path):
    from kslim.lite import LiteModel

    p = float_lite.save(tmp_path / "sub" / "m.tflite")
    assert [f.name for f in p.parent.iterdir()] == ["m.tflite"]  # no temp file left behind
    again = LiteModel.load(p)
    assert again.content == float_lite.content and again.size == p.stat().st_size
    x = np.random.default_rng(0).uniform(0, 1, (3, 28, 28, 1)).astype("float32")
    np.testing.assert_array_equal(again.predict(x), float_lite.predict(x))


def test_load_bad_files(float_lite, tmp_path):
    from kslim.lite import LiteModel

    with pytest.raises(KslimFileError, match="does not exist"):
        LiteModel.load(tmp_path / "missing.tflite")
    (tmp_path / "text.tflite").write_text("this is not a model at all")
    with pytest.raises(KslimFileError, match="TFL3"):
        LiteModel.load(tmp_path / "text.tflite")
    (tmp_path / "cut.tflite").write_bytes(float_lite.content[: len(float_lite.content) // 2])
    with pytest.raises(KslimFileError, match="corrupt or truncated"):
        LiteModel.load(tmp_path / "cut.tflite")
    with pytest.raises(KslimValueError, match="bytes"):
        LiteModel("not bytes")


def test_bad_convert_arguments():
    from kslim.lite import convert

    m = _tiny()
    with pytest.raises(KslimValueError, match="quantize"):
        convert(m, quantize="int4")
    with pytest.raises(KslimTypeError, match="keras.Model"):
        convert("model.keras")
    with pytest.raises(KslimValueError, match="inference_input_type"):
        convert(m, inference_input_type="int8")
    with pytest.raises(KslimValueError, match="representative_data"):
        convert(m, quantize="dynamic", representative_data=np.zeros((4, 28, 28, 1), "float32"))
    with pytest.raises(ConversionError, match="representative_data"):
        convert(m, quantize="int8")


def test_predict_rejects_wrong_shape(float_lite):
    with pytest.raises(KslimValueError, match="does not match"):
        float_lite.predict(np.zeros((2, 27, 28, 1), "float32"))


def test_qat_model_without_quantize_converts_to_int8():
    """convert(qat_model) with no quantize= gives int8 kernels (the fake-quant ranges), not a float model."""
    import keras
    from keras import layers

    from kslim.lite import convert
    from kslim.lite.converter import has_int8_kernels
    from kslim.quant import quant_aware

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), layers.Conv2D(4, 3), layers.ReLU(), layers.Flatten(),
                              layers.Dense(3)])
    qat = quant_aware(model)
    qat.compile(optimizer="adam", loss="mse")
    x = np.random.default_rng(0).random((32, 8, 8, 1)).astype("float32")
    qat.fit(x, np.zeros((32, 3), "float32"), epochs=1, batch_size=16, verbose=0)  # calibrates the ranges

    lm = convert(qat)
    assert lm.conversion["quantize"] == "int8"
    assert has_int8_kernels(lm)
    assert lm.float_ops == []
    flt = convert(qat, quantize="float32", check=False)  # explicit float stays available
    assert flt.conversion["quantize"] is None
    assert not has_int8_kernels(flt)


@pytest.mark.parametrize("length", [6, None])
def test_fourier_mixing_converts_with_builtin_ops(length):
    """keras.ops.fft2 (FNet's token mixing) traces to complex ops TFLite has no kernel for; kslim exports it
    as real DFT matmuls: the float .tflite matches Keras, and full-integer PTQ quantizes the model around it."""
    import keras

    from kslim.lite import convert
    from kslim.quant import quant_post_static

    class FourierMix(keras.layers.Layer):   # a layer, as in keras-hub's FNetEncoder: any sequence length
        def call(self, h):
            return keras.ops.fft2((h, keras.ops.zeros_like(h)))[0]    # the real part

    inp = keras.Input((length, 8))
    h = keras.layers.Dense(8, name="embed")(inp)
    mixed = FourierMix()(h)
    x = keras.layers.LayerNormalization(name="ln")(keras.layers.Add()([h, mixed]))
    model = keras.Model(inp, keras.layers.Dense(3, name="head")(x))
    data = np.random.default_rng(0).normal(size=(16, 6, 8)).astype("float32")
    lite = convert(model)
    assert not any("COMPLEX" in op or "FFT" in op for op in lite.ops())
    np.testing.assert_allclose(lite.predict(data), np.asarray(model(data)), rtol=0, atol=1e-4)
    q = quant_post_static(model, data)
    ref, got = np.asarray(model(data)).ravel(), q.predict(data).ravel()
    assert np.corrcoef(ref, got)[0, 1] > 0.98
    assert "FULLY_CONNECTED" in q.ops()
