"""Quantization-aware training: graph rewrite, BN folding, training, saving, int8 TFLite export."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from kslim.errors import (  # noqa: E402
    ConfigError,
    ConversionError,
    KslimValueError,
    ModelError,
    UnsupportedLayerError,
)
from kslim.quant import (  # noqa: E402
    ActivationQuantizer,
    QuantConfig,
    QuantConv2D,
    QuantDense,
    QuantDepthwiseConv2D,
    activation_quantizers,
    convert,
    quant_aware,
)
from kslim.quant.fold import fold_batch_norm  # noqa: E402
from kslim.quant.qat import float_ops  # noqa: E402

L = keras.layers
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _crop(x):
    return x[:, 6:22, 6:22, :]  # 28x28 -> 16x16


def tiny_net(bn_stats=False):
    """Conv-BN-ReLU6, depthwise-BN-ReLU6, pointwise-BN-ReLU6, MaxPool, Flatten, Dense: all kernel kinds."""
    inp = keras.Input((16, 16, 1), name="input")
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inp)
    x = L.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    x = L.ReLU(6.0, name="stem_relu")(x)
    x = L.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False, name="dw")(x)
    x = L.BatchNormalization(momentum=0.9, name="dw_bn")(x)
    x = L.ReLU(6.0, name="dw_relu")(x)
    x = L.Conv2D(16, 1, use_bias=False, name="pw")(x)
    x = L.BatchNormalization(momentum=0.9, name="pw_bn")(x)
    x = L.ReLU(6.0, name="pw_relu")(x)
    x = L.MaxPooling2D(2, name="pool")(x)
    x = L.Flatten(name="flatten")(x)
    out = L.Dense(10, name="logits")(x)
    model = keras.Model(inp, out, name="tiny")
    if bn_stats:  # non-trivial BN parameters so that folding is really exercised
        rng = np.random.default_rng(0)
        for layer in model.layers:
            if isinstance(layer, L.BatchNormalization):
                n = layer.gamma.shape[0]
                layer.set_weights([rng.uniform(0.5, 2, n), rng.normal(0, 0.5, n), rng.normal(0, 0.5, n),
                                   rng.uniform(0.2, 3, n)])
    return model


def _compile(model, lr=1e-3):
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=LOSS, metrics=["accuracy"])
    return model


@pytest.fixture(scope="module")
def trained(small_data):
    """(float model, QAT model fine-tuned 1 epoch, loss before/after, int8 LiteModel, test x, test y)."""
    keras.utils.set_random_seed(0)
    (xtr, ytr), (xte, yte) = small_data
    xtr, xte = _crop(xtr), _crop(xte)
    model = _compile(tiny_net(), lr=1e-2)
    model.fit(xtr, ytr, epochs=2, batch_size=64, verbose=0)
    float_weights = [w.copy() for w in model.get_weights()]
    qat = _compile(quant_aware(model), lr=1e-3)
    hist = qat.fit(xtr[:1024], ytr[:1024], epochs=2, batch_size=64, verbose=0)
    lite = convert(qat, inference_input_type="int8", check_data=xte[:32])
    return {"float": model, "float_weights": float_weights, "qat": qat, "hist": hist, "lite": lite,
            "x": xte, "y": yte}


def _kernel_ops(lite):
    """[(op_name, weight tensor, bias tensor, input tensor, output tensor)] of the conv/FC ops."""
    interp = lite.interpreter(use_xnnpack=False)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    out = []
    for op in interp._get_ops_details():
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            ins = list(op["inputs"])
            bias = tensors[ins[2]] if len(ins) > 2 and ins[2] >= 0 else None
            out.append((op["op_name"], tensors[ins[1]], bias, tensors[ins[0]], tensors[op["outputs"][0]]))
    return out


def _channels(op_name, weight):
    return weight["shape"][3] if op_name == "DEPTHWISE_CONV_2D" else weight["shape"][0]


# ------------------------------------------------------------------------------------------ graph
def test_rewrite_structure():
    q = quant_aware(tiny_net())
    types = {l.name: type(l) for l in q.layers}
    assert types["stem"] is QuantConv2D and types["dw"] is QuantDepthwiseConv2D
    assert types["pw"] is QuantConv2D and types["logits"] is QuantDense
    assert not any(isinstance(l, L.BatchNormalization) for l in q.layers)  # all folded
    assert [l.name for l in activation_quantizers(q)] == [
        "input_quant", "stem_relu_quant", "dw_relu_quant", "pw_relu_quant", "logits_quant"]
    assert q.get_layer("stem").use_bias  # the folded BN gives the conv a bias


def test_skip_and_pattern():
    q = quant_aware(tiny_net(), skip=["logits"], skip_pattern=["dw"])
    assert type(q.get_layer("logits")) is L.Dense
    assert type(q.get_layer("dw")) is L.DepthwiseConv2D
    assert isinstance(q.get_layer("dw_bn"), L.BatchNormalization)  # not folded into a float layer
    assert type(q.get_layer("stem")) is QuantConv2D
    q2 = quant_aware(tiny_net(), quantizable_layer_type=["Dense"])
    assert type(q2.get_layer("stem")) is L.Conv2D and type(q2.get_layer("logits")) is QuantDense


def test_original_model_untouched(trained):
    """QAT training copied the weights: the float model did not move."""
    for a, b in zip(trained["float_weights"], trained["float"].get_weights()):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------ BN folding
def test_bn_folding_exact():
    m = tiny_net(bn_stats=True)
    x = np.random.default_rng(1).uniform(0, 1, (8, 16, 16, 1)).astype("float32")
    folded = fold_batch_norm(m)
    assert not any(isinstance(l, L.BatchNormalization) for l in folded.layers)
    assert len(folded.layers) == len(m.layers) - 3
    ref = np.asarray(m(x, training=False))
    np.testing.assert_allclose(np.asarray(folded(x, training=False)), ref, rtol=1e-4, atol=1e-4)
    # the QAT model trains exactly the folded kernels
    q = quant_aware(m)
    for name in ("stem", "dw", "pw"):
        np.testing.assert_allclose(q.get_layer(name).kernel, folded.get_layer(name).kernel, rtol=1e-6)
        np.testing.assert_allclose(q.get_layer(name).bias, folded.get_layer(name).bias, rtol=1e-6)


# ------------------------------------------------------------------------------------------ training, saving
def test_fit_loss_decreases(trained):
    losses = trained["hist"].history["loss"]
    assert np.all(np.isfinite(losses)) and losses[1] < losses[0]
    for q in activation_quantizers(trained["qat"]):
        lo, hi = q.range
        assert lo <= 0 <= hi and hi > lo


def test_save_load_roundtrip(trained, tmp_path):
    q = trained["qat"]
    path = tmp_path / "qat.keras"
    q.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    x = trained["x"][:64]
    np.testing.assert_allclose(np.asarray(loaded(x, training=False)), np.asarray(q(x, training=False)),
                               rtol=0, atol=1e-6)
    assert [type(l) for l in loaded.layers] == [type(l) for l in q.layers]
    assert [a.range for a in activation_quantizers(loaded)] == [a.range for a in activation_quantizers(q)]
    assert loaded.get_layer("logits").per_channel and loaded.get_layer("logits").weight_bits == 8


# ------------------------------------------------------------------------------------------ TFLite
def test_tflite_int8_per_channel(trained):
    lite = trained["lite"]
    ops = _kernel_ops(lite)
    assert sorted({o[0] for o in ops}) == ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"]
    for op_name, w, b, x, y in ops:
        assert w["dtype"] == np.int8, op_name
        scales = w["quantization_parameters"]["scales"]
        assert len(scales) == _channels(op_name, w) > 1, op_name
        assert np.all(w["quantization_parameters"]["zero_points"] == 0)
        assert b is not None and b["dtype"] == np.int32 and b["shape"][0] == len(scales), op_name
        assert x["dtype"] == np.int8 and y["dtype"] == np.int8, op_name
    assert float_ops(lite) == []
    assert lite.input_details[0]["dtype"] == np.int8
    assert not any(t["dtype"] == np.float32 for t in lite.tensors())


def test_keras_and_tflite_agree(trained):
    x, y = trained["x"], trained["y"]
    keras_pred = np.argmax(trained["qat"].predict(x, verbose=0), -1)
    lite_pred = np.argmax(trained["lite"].predict(x), -1)
    assert np.mean(keras_pred == lite_pred) >= 0.99
    assert np.mean(lite_pred == y) > 0.5  # it learned something (10 classes)


def test_per_tensor_abs_max(trained, small_data):
    (xtr, ytr), _ = small_data
    cfg = QuantConfig(weight_quantize_type="abs_max", activation_quantize_type="abs_max")
    q = _compile(quant_aware(trained["float"], cfg), lr=1e-4)
    q.fit(_crop(xtr[:256]), ytr[:256], epochs=1, batch_size=128, verbose=0)
    lite = convert(q)
    for op_name, w, b, _, _ in _kernel_ops(lite):
        assert w["dtype"] == np.int8 and len(w["quantization_parameters"]["scales"]) == 1, op_name
        assert b["dtype"] == np.int32
    assert float_ops(lite) == []
    x = trained["x"]
    agree = np.mean(np.argmax(q.predict(x, verbose=0), -1) == np.argmax(lite.predict(x), -1))
    assert agree >= 0.98


def test_calibrated_by_set_range_converts(trained):
    """The PTQ path: ranges set with set_range (frozen), no training."""
    q = quant_aware(trained["float"])
    x = trained["x"][:64]
    lo_hi = {}
    probe = keras.Model(q.input, [a.input for a in activation_quantizers(q)])
    for a, t in zip(activation_quantizers(q), probe(x)):
        t = np.asarray(t)
        lo_hi[a.name] = (t.min(), t.max())
        a.set_range(t.min(), t.max())
    assert all(a.frozen for a in activation_quantizers(q))
    q(x, training=True)  # frozen: training does not move the range
    for a in activation_quantizers(q):
        lo, hi = lo_hi[a.name]
        assert a.range == pytest.approx((min(lo, 0), max(hi, 0)), rel=1e-6, abs=1e-7)
    lite = convert(q, check_data=x)
    assert lite.parity["argmax_agreement"] >= 0.9


def test_graph_with_add_concat_separable_is_all_int8():
    inp = keras.Input((16, 16, 3))
    a = L.Conv2D(8, 3, padding="same", activation="relu")(inp)
    b = L.SeparableConv2D(8, 3, padding="same")(a)
    s = L.ReLU()(L.Add()([a, b]))
    c = L.Concatenate()([s, L.Conv2D(4, 1)(a)])
    c = L.MaxPooling2D()(c)
    c = L.Concatenate()([L.Flatten()(c), L.GlobalAveragePooling2D()(a)])
    out = L.Dense(5, activation="softmax")(c)
    q = _compile(quant_aware(keras.Model(inp, out)))
    x = np.random.default_rng(0).uniform(0, 1, (32, 16, 16, 3)).astype("float32")
    q.fit(x, np.arange(32) % 5, epochs=1, batch_size=32, verbose=0)
    lite = convert(q, inference_input_type="int8")
    assert float_ops(lite) == []
    assert lite.ops().get("CONV_2D", 0) == 3 and lite.ops().get("DEPTHWISE_CONV_2D", 0) == 1
    assert lite.parity["argmax_agreement"] >= 0.9


@keras.saving.register_keras_serializable(package="kslim_test")
class MyConv(L.Conv2D):
    """A user's Conv2D subclass that keeps Conv2D's maths (no call override)."""


@keras.saving.register_keras_serializable(package="kslim_test")
class MyOddConv(L.Conv2D):
    """A Conv2D subclass with its own call(): kslim cannot know its maths."""

    def call(self, x):
        return super().call(x) * 2.0


def _subclass_net(conv_cls):
    inp = keras.Input((8, 8, 1))
    x = conv_cls(4, 3, name="myconv")(inp)
    x = L.Flatten()(L.ReLU()(x))
    return keras.Model(inp, L.Dense(3, name="head")(x))


def test_conv2d_subclass_is_quantized_like_conv2d():
    """The twin comes from the rule registry (MRO lookup), not an exact-class table (issue 13)."""
    q = quant_aware(_subclass_net(MyConv))
    assert isinstance(q.get_layer("myconv"), QuantConv2D)
    assert not any("myconv" in p for p in q.kslim_unquantized)
    q = _compile(q)
    x = np.random.default_rng(0).uniform(0, 1, (32, 8, 8, 1)).astype("float32")
    q.fit(x, np.arange(32) % 3, epochs=1, batch_size=32, verbose=0)
    lite = convert(q)
    assert lite.float_ops == []
    assert lite.ops().get("CONV_2D", 0) == 1


def test_conv2d_subclass_overriding_call_stays_float():
    with pytest.warns(UserWarning):
        q = quant_aware(_subclass_net(MyOddConv))
    assert type(q.get_layer("myconv")) is MyOddConv
    assert isinstance(q.get_layer("head"), QuantDense)
    (reason,) = [r for p, r in q.kslim_unquantized.items() if "myconv" in p]
    assert reason == "MyOddConv overrides call(); kslim cannot know its maths: its weights stay float"


# ------------------------------------------------------------------------------------------ bits, quantizer
def test_lower_bits_simulated():
    q = quant_aware(tiny_net(bn_stats=True), weight_bits=4, activation_bits=4)
    for name in ("stem", "dw", "pw", "logits"):
        k = np.asarray(q.get_layer(name).quantized_kernel())
        k = k.reshape(-1, k.shape[-1]) if name != "dw" else k.reshape(-1, k.shape[2] * k.shape[3])
        for ch in range(k.shape[1]):
            assert len(np.unique(k[:, ch])) <= 16, (name, ch)
    aq = activation_quantizers(q)[1]
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 8)).astype("float32")
    y = np.asarray(aq(x, training=True))
    assert len(np.unique(y)) <= 16
    # exports: conv kernels keep the 4-bit codes (-7..7) inside int8 storage, activations go to 8 bits
    q = _compile(q)
    x = np.random.default_rng(0).uniform(0, 1, (32, 16, 16, 1)).astype("float32")
    q.fit(x, np.arange(32) % 10, epochs=1, batch_size=32, verbose=0)
    lite = convert(q, check_data=x)
    assert float_ops(lite) == [] and lite.parity["argmax_agreement"] >= 0.9
    interp = lite.interpreter()
    for op_name, w, _, _, _ in _kernel_ops(lite):
        if op_name != "FULLY_CONNECTED":
            assert np.abs(interp.get_tensor(w["index"])).max() <= 7, op_name
    assert activation_quantizers(q)[1].bits == 4  # restored after export


def test_activation_quantizer_modes():
    x1 = np.array([[-1.0, 2.0]], "float32")
    x2 = np.array([[-3.0, 4.0]], "float32")
    ema = ActivationQuantizer(mode="moving_average_abs_max", momentum=0.9)
    ema(x1, training=True)
    ema(x2, training=True)
    assert ema.range == pytest.approx((0.9 * -1 + 0.1 * -3, 0.9 * 2 + 0.1 * 4))
    ema(np.array([[-50.0, 50.0]], "float32"), training=False)  # inference: frozen
    assert ema.range == pytest.approx((-1.2, 2.2))
    last = ActivationQuantizer(mode="abs_max")
    last(x1, training=True)
    last(x2, training=True)
    assert last.range == (-3.0, 4.0)
    assert not ActivationQuantizer().calibrated and ema.calibrated
    cfg = ActivationQuantizer(bits=6, mode="abs_max", symmetric=True, name="q").get_config()
    assert ActivationQuantizer.from_config(cfg).get_config() == cfg


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kw, field", [
    ({"weight_bits": 9}, "weight_bits"),
    ({"activation_bits": 1}, "activation_bits"),
    ({"weight_quantize_type": "range_abs_max"}, "weight_quantize_type"),
    ({"activation_quantize_type": "max"}, "activation_quantize_type"),
    ({"quantizable_layer_type": ["ConvLSTM2D"]}, "quantizable_layer_type"),
    ({"moving_rate": 1.5}, "moving_rate"),
])
def test_bad_config(kw, field):
    with pytest.raises(ConfigError, match=field):
        QuantConfig(**kw)
    with pytest.raises(ConfigError, match=field):
        quant_aware(tiny_net(), **kw)


def test_bits_accept_integral_floats_like_the_layers():
    cfg = QuantConfig(weight_bits=8.0, activation_bits=4.0)
    assert (cfg.weight_bits, cfg.activation_bits) == (8, 4) and isinstance(cfg.weight_bits, int)
    assert ActivationQuantizer(bits=8.0).bits == 8
    with pytest.raises(ConfigError, match="weight_bits: must be an integer"):
        QuantConfig(weight_bits=7.5)
    with pytest.raises(ConfigError, match="activation_bits"):
        QuantConfig(activation_bits=True)


def test_bad_config_dict():
    with pytest.raises(ConfigError, match="weight_bitz"):
        QuantConfig.from_dict({"weight_bitz": 8})


def test_bad_layer_names():
    with pytest.raises(ModelError, match="no_such_layer"):
        quant_aware(tiny_net(), skip=["no_such_layer"])
    with pytest.raises(UnsupportedLayerError, match="stem_relu"):
        quant_aware(tiny_net(), only_layers=["stem", "stem_relu"])


def test_already_quantized_and_not_quantized():
    q = quant_aware(tiny_net())
    with pytest.raises(ModelError, match="already quantized"):
        quant_aware(q)
    with pytest.raises(ModelError, match="quant_aware"):
        convert(tiny_net())
    with pytest.raises(ConversionError, match="input_quant"):
        convert(q)  # never trained nor calibrated
    with pytest.raises(KslimValueError, match="inference_input_type"):
        convert(q, inference_input_type="uint16")


def test_bad_quantizer_args():
    with pytest.raises(KslimValueError, match="bits"):
        ActivationQuantizer(bits=12)
    with pytest.raises(KslimValueError, match="mode"):
        ActivationQuantizer(mode="ema")
    with pytest.raises(KslimValueError, match="set_range"):
        ActivationQuantizer().set_range(2.0, 1.0)


def test_subclassed_model_rejected():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = L.Dense(2)

        def call(self, x):
            return self.d(x)

    net = Net()
    net(np.zeros((1, 3), "float32"))
    with pytest.raises(ModelError, match="subclassed"):
        quant_aware(net)


def test_uniform_bias_exported_per_channel():
    """A bias whose entries are all equal must still be quantized with each channel's own scale."""
    inp = keras.Input((8, 8, 2))
    x = L.Flatten()(L.Conv2D(4, 3, bias_initializer="ones", name="c")(inp))
    q = quant_aware(keras.Model(inp, L.Dense(3, bias_initializer="ones", name="d")(x)))
    xs = np.random.default_rng(0).uniform(0, 1, (16, 8, 8, 2)).astype("float32")
    q(xs, training=True)
    lite = convert(q, check_data=xs)
    interp = lite.interpreter()
    for op_name, w, b, _, _ in _kernel_ops(lite):
        want = np.round(1.0 / b["quantization_parameters"]["scales"])
        np.testing.assert_allclose(interp.get_tensor(b["index"]), want, atol=1, err_msg=op_name)
    np.testing.assert_array_equal(np.asarray(q.get_layer("d").bias), np.ones(3))  # restored
    assert lite.parity["max_abs_diff"] < 1e-3
