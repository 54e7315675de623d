"""Low-bit QAT quantizers (LSQ, DoReFa, BNN): maths, layers, config, int8 .tflite export with parity."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from kslim.errors import ConfigError, KslimValueError  # noqa: E402
from kslim.quant import (  # noqa: E402
    ActivationQuantizer,
    QuantConfig,
    QuantConv2D,
    QuantDense,
    QuantEmbedding,
    activation_quantizers,
    convert,
    lowbit,
    lowbit_size_bytes,
    ops,
    quant_aware,
)
from kslim.quant.qat import float_ops  # noqa: E402

L = keras.layers
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def tiny_net():
    """Conv2D-BN-ReLU, depthwise-ReLU, Dense on 8x8 inputs (the BN folds into the conv)."""
    inp = keras.Input((8, 8, 1), name="image")
    x = L.Conv2D(8, 3, padding="same", name="conv")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    x = L.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(x)
    x = L.ReLU(name="relu2")(x)
    x = L.Flatten(name="flat")(x)
    return keras.Model(inp, L.Dense(10, name="logits")(x), name="tiny")


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, 8, 8, 1)).astype("float32")
    return x, (x[:, :4].mean(axis=(1, 2, 3)) * 20).astype("int32") % 10   # learnable labels


def _fit(q, x, y, epochs=2, lr=3e-3):
    q.compile(optimizer=keras.optimizers.Adam(lr), loss=LOSS)
    q.fit(x, y, epochs=epochs, batch_size=16, verbose=0)
    return q


# ------------------------------------------------------------------------------------------ registry, config
def test_registry_is_the_literal_the_schema_reads():
    from kslim.compressor.strategies import get_strategy
    from kslim.validation import api_constant

    assert lowbit.registered() == lowbit.QUANTIZERS == api_constant("kslim.quant.lowbit", "QUANTIZERS")
    assert api_constant("kslim.quant.lowbit", "BITS") == {n: (lowbit.get(n).weight_bits, lowbit.get(n).activation_bits)
                                                            for n in lowbit.QUANTIZERS}
    props = get_strategy("quant_aware").schema["properties"]
    assert props["weight_quantizer"]["enum"] == props["activation_quantizer"]["enum"] == list(lowbit.QUANTIZERS)
    with pytest.raises(KslimValueError, match="unknown quantizer 'lsk'"):
        lowbit.get("lsk")


@pytest.mark.parametrize("kw, field", [
    (dict(weight_quantizer="lsk"), "weight_quantizer"),
    (dict(activation_quantizer="xnor"), "activation_quantizer"),
    (dict(weight_quantizer="bnn"), "weight_bits"),                  # bnn needs weight_bits=1
    (dict(activation_quantizer="bnn", activation_bits=2), "activation_bits"),
    (dict(weight_bits=1), "weight_bits"),                           # 1 bit only for bnn
    (dict(weight_quantizer="dorefa", weight_bits=8), "weight_bits"),  # 2^8 odd codes do not fit int8
    (dict(weight_quantizer="lsq", weight_bits=4, lsq_init="minmax"), "lsq_init"),
])
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(ConfigError) as e:
        QuantConfig(**kw)
    assert e.value.path == field


def test_config_round_trip_and_yaml_check():
    from kslim.compressor import validate_config

    cfg = QuantConfig(weight_quantizer="bnn", weight_bits=1, activation_quantizer="lsq")
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg and cfg.fallback_bits == (8, 8)
    base = {"model": {"reference": "vgg"}}
    ok = validate_config({**base, "strategies": [{"quant_aware": {"weight_quantizer": "lsq", "weight_bits": 4}}]})
    assert ok["strategies"][0]["quant_aware"]["weight_quantizer"] == "lsq"
    with pytest.raises(ConfigError, match="weight_bits"):
        validate_config({**base, "strategies": [{"quant_aware": {"weight_quantizer": "bnn", "weight_bits": 4}}]})
    with pytest.raises(ConfigError, match="weight_quantizer"):
        validate_config({**base, "strategies": [{"quant_aware": {"weight_quantizer": "lsk"}}]})


def test_bad_layer_arguments():
    with pytest.raises(KslimValueError, match="weight_quantizer"):
        QuantConv2D(4, 3, weight_quantizer="lsk")
    with pytest.raises(KslimValueError, match="weight_bits"):
        QuantDense(4, weight_quantizer="bnn", weight_bits=2)
    with pytest.raises(ValueError):       # layers without a low-bit twin take no weight_quantizer
        QuantEmbedding(10, 4, weight_quantizer="lsq", weight_bits=4)
    with pytest.raises(KslimValueError, match="quantizer"):
        ActivationQuantizer(quantizer="lsk")


# ------------------------------------------------------------------------------------------ maths
def test_lsq_gradient_is_the_papers():
    """d x_hat / d s = -x/s + round(x/s) inside [qn, qp], qn below, qp above; times g. d/dx: 1 inside."""
    x = tf.constant([-3.0, -0.8, 0.3, 0.74, 1.26, 5.0])
    s = tf.Variable(0.5)
    qn, qp, g = -4.0, 3.0, 0.25
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = ops.lsq_quantize(x, s, qn, qp, g)
    v = x.numpy() / 0.5
    np.testing.assert_allclose(y.numpy(), np.clip(np.round(v), qn, qp) * 0.5)
    per = np.where(v < qn, qn, np.where(v > qp, qp, -v + np.round(v)))
    np.testing.assert_allclose(tape.gradient(y, s).numpy(), g * per.sum(), rtol=1e-6)
    np.testing.assert_allclose(tape.gradient(y, x).numpy(), ((v >= qn) & (v <= qp)).astype("float32"))
    assert ops.lsq_gradient_scale(64, 7) == pytest.approx(1 / np.sqrt(64 * 7))


def test_lsq_layer_step_init_gradient_and_fit():
    layer = QuantDense(3, weight_quantizer="lsq", weight_bits=4, use_bias=False)
    layer.build((None, 4))
    kernel = np.array([[0.1, -0.4, 0.05], [0.3, 0.2, -0.6], [-0.2, 0.0, 0.15], [0.45, -0.1, 0.3]], "float32")
    layer.set_weights([kernel])  # the float layer's weights: the step is re-initialised from them
    qp = 7.0
    assert layer.step.trainable and layer.step.shape == (3,)
    np.testing.assert_allclose(layer.step.numpy(), 2 * np.abs(kernel).mean(0) / np.sqrt(qp), rtol=1e-6)
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(layer._lowbit_kernel(layer.kernel))   # per tensor: the exact LSQ values
    s = layer.step.numpy()
    v = kernel / s
    per = np.where(v < -qp, -qp, np.where(v > qp, qp, -v + np.round(v))).sum(0)
    grad = tape.gradient(total, layer.step).numpy()
    np.testing.assert_allclose(grad, per / np.sqrt(4 * qp), rtol=1e-5, atol=1e-7)   # N = 4 weights per step
    codes = np.asarray(ops.lsq_weight(kernel, s, 4)[0]) / s
    np.testing.assert_allclose(codes, np.clip(np.round(v), -qp, qp), atol=1e-5)

    x, y = _data()
    q = quant_aware(tiny_net(), weight_quantizer="lsq", activation_quantizer="lsq", weight_bits=4)
    before = {n: q.get_layer(n).step.numpy().copy() for n in ("conv", "dw", "logits")}
    act_steps = [a for a in activation_quantizers(q) if a.quantizer == "lsq"]
    assert act_steps and all(a.step.trainable for a in act_steps)
    _fit(q, x, y, epochs=1)
    for n, s0 in before.items():
        assert not np.allclose(q.get_layer(n).step.numpy(), s0), n
    image = q.get_layer("image_quant")     # inputs in [0, 1]: unsigned, range = [0, 255 step]
    assert float(image.signed.numpy()) == 0.0
    assert image.range == pytest.approx((0.0, 255 * float(image.step.numpy())), rel=1e-6)


def test_lsq_init_methods():
    rng = np.random.default_rng(2)
    kernel = rng.normal(0, 0.2, (3, 3, 4, 6)).astype("float32")
    flat = kernel.reshape(-1, 6)

    def err(step):
        return ((np.clip(np.round(flat / step), -7, 7) * step - flat) ** 2).sum(0)

    steps = {}
    for init in ("paper", "max", "mse"):
        layer = QuantConv2D(6, 3, weight_quantizer="lsq", weight_bits=4, lsq_init=init)
        layer.build((None, 8, 8, 4))
        layer.set_weights([kernel, np.zeros(6, "float32")])
        steps[init] = layer.step.numpy()
        assert layer.get_config()["lsq_init"] == init
    np.testing.assert_allclose(steps["max"], np.abs(flat).max(0) / 7, rtol=1e-6)
    assert np.all(err(steps["mse"]) <= err(steps["max"]) + 1e-9)
    assert np.all(err(steps["mse"]) <= err(steps["paper"]) + 1e-9)


def test_dorefa_weights_on_the_k_bit_grid():
    rng = np.random.default_rng(0)
    kernel = rng.normal(0, 0.3, (3, 3, 2, 5)).astype("float32")
    layer = QuantConv2D(5, 3, weight_quantizer="dorefa", weight_bits=3)
    layer.build((None, 6, 6, 2))
    layer.set_weights([kernel, np.zeros(5, "float32")])
    k = np.asarray(layer.quantized_kernel()).reshape(-1, 5)
    a = np.abs(kernel).reshape(-1, 5).max(0)
    codes = k / (a / 7)                    # 2^3 - 1 = 7: odd codes -7..7, no zero level
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-4)
    assert set(np.unique(np.round(codes)).astype(int)) <= {-7, -5, -3, -1, 1, 3, 5, 7}
    # the paper's formula on w / max|w|: 2 quantize_k(tanh(v) / (2 max|tanh v|) + 1/2) - 1, times max|w|
    t = np.tanh(kernel.reshape(-1, 5) / a)
    ref = (2 * np.round((t / (2 * np.abs(t).max(0)) + 0.5) * 7) / 7 - 1) * a
    np.testing.assert_allclose(k, ref, atol=1e-5)
    aq = ActivationQuantizer(bits=2, quantizer="dorefa")
    y = np.asarray(aq(np.array([[-1.0, 0.2, 0.5, 2.0]], "float32"), training=True))
    assert aq.range == (0.0, 1.0) and aq.frozen
    np.testing.assert_allclose(y, [[0.0, 1 / 3, 2 / 3, 1.0]], atol=1e-6)


def test_bnn_weights_and_activations_are_binary():
    rng = np.random.default_rng(1)
    kernel = rng.normal(0, 0.3, (6, 4)).astype("float32")
    layer = QuantDense(4, weight_quantizer="bnn", weight_bits=1)
    layer.build((None, 6))
    layer.set_weights([kernel, np.zeros(4, "float32")])
    k = np.asarray(layer.quantized_kernel())
    np.testing.assert_allclose(np.abs(k), np.broadcast_to(np.abs(kernel).mean(0), k.shape), rtol=1e-6)
    assert np.array_equal(np.sign(k), np.where(kernel >= 0, 1.0, -1.0))
    aq = ActivationQuantizer(bits=1, quantizer="bnn")
    x = tf.constant([[-2.0, -0.5, 0.0, 0.5, 3.0]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = aq(x, training=True)
    assert np.asarray(y).tolist() == [[-1.0, -1.0, 1.0, 1.0, 1.0]]
    assert np.asarray(tape.gradient(y, x)).tolist() == [[0.0, 1.0, 1.0, 1.0, 0.0]]   # hard-tanh STE
    assert np.asarray(aq(x, training=False)).tolist() == [[-1.0, -1.0, 1.0, 1.0, 1.0]]


# ------------------------------------------------------------------------------------------ export
def _kernels(lite):
    """{op name: (int8 codes, scales)} of the conv/FC ops."""
    interp = lite.interpreter(use_xnnpack=False)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    out = {}
    for op in interp._get_ops_details():
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            w = tensors[op["inputs"][1]]
            assert w["dtype"] == np.int8, op["op_name"]
            out[op["op_name"]] = (interp.get_tensor(w["index"]), w["quantization_parameters"]["scales"])
    return out


def _tensor_types(lite):
    """The tensor types the flatbuffer declares (TFLite's analyzer), e.g. {"INT4", "INT8", ...}."""
    import contextlib
    import io
    import re

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        tf.lite.experimental.Analyzer.analyze(model_content=lite.content)
    return set(re.findall(r"type:(\w+)", buf.getvalue()))


def _as_tflite_layout(op, k):
    return {"CONV_2D": lambda: np.transpose(k, (3, 0, 1, 2)), "FULLY_CONNECTED": lambda: k.T,
            "DEPTHWISE_CONV_2D": lambda: k.reshape(1, k.shape[0], k.shape[1], -1)}[op]()


def test_dense_kernel_on_exact_ties_exports_the_kernel_keras_computes():
    """A Dense kernel on a coarse grid (codes x step with an even max code, as LSQ makes them) puts many
    entries on an exact .5 of the int8 grid the converter re-quantizes it on. The int8 kernel must be the
    one Keras computes: the converter folding the rounding ops itself broke 3 of these ties the other way
    (code 64 in the .tflite for Keras' 63)."""
    rng = np.random.default_rng(0)
    inp = keras.Input((16,))
    q = quant_aware(keras.Model(inp, L.Dense(64, name="logits")(inp)))
    x = rng.normal(size=(64, 16)).astype("float32")
    q.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    q.fit(x, np.zeros((64, 64), "float32"), epochs=1, verbose=0)   # calibrates the activation ranges
    cmax = rng.choice([2, 4, 6, 8, 10, 12, 14], 64)
    codes = np.stack([rng.integers(-c, c + 1, 16) for c in cmax], axis=1)
    codes[0] = cmax
    q.get_layer("logits").kernel.assign((codes * rng.uniform(0.001, 1.0, 64)).astype("float32"))
    codes, scales = _kernels(convert(q, check_data=x))["FULLY_CONNECTED"]
    k = np.asarray(q.get_layer("logits").quantized_kernel()).T
    np.testing.assert_allclose(codes * scales[:, None], k, rtol=0, atol=1e-6 * np.abs(k).max())


@pytest.mark.parametrize("kw, conv_codes", [
    (dict(weight_quantizer="lsq", activation_quantizer="lsq", weight_bits=4), set(range(-7, 8))),
    (dict(weight_quantizer="dorefa", activation_quantizer="dorefa", weight_bits=4), set(range(-15, 16, 2))),
    (dict(weight_quantizer="bnn", activation_quantizer="bnn", weight_bits=1, activation_bits=1), {-1, 1}),
], ids=["lsq", "dorefa", "bnn"])
def test_lowbit_exports_int8_with_parity_and_round_trips(kw, conv_codes, tmp_path):
    keras.utils.set_random_seed(0)
    x, y = _data()
    q = _fit(quant_aware(tiny_net(), **kw), x, y)
    lite = convert(q, check_data=x)
    assert float_ops(lite) == []
    layer_of = {"CONV_2D": "conv", "DEPTHWISE_CONV_2D": "dw", "FULLY_CONNECTED": "logits"}
    for op, (codes, scales) in _kernels(lite).items():
        k = _as_tflite_layout(op, np.asarray(q.get_layer(layer_of[op]).quantized_kernel()))
        shape = (-1,) + (1,) * (codes.ndim - 1) if op != "DEPTHWISE_CONV_2D" else (1, 1, 1, -1)
        np.testing.assert_allclose(codes * np.reshape(scales, shape), k, rtol=0, atol=1e-6 * np.abs(k).max())
        if op != "FULLY_CONNECTED":   # per-channel Dense: the converter's int8 grid of each unit's max|w|
            assert set(np.unique(codes).astype(int)) <= conv_codes, op
    types = _tensor_types(lite)
    assert ("INT4" in types) == (kw["weight_quantizer"] in ("lsq", "bnn")), types   # codes up to +-7: INT4
    ref, got = q.predict(x, verbose=0), lite.predict(x)
    out_q = q.get_layer("logits_quant")
    step = (out_q.range[1] - out_q.range[0]) / 255
    # the kernels are exact (above); what differs is int8 arithmetic: a one-code rounding difference of an
    # intermediate tensor (integer requantization, int32 bias) grows by the ratio of the scales downstream
    codes = np.abs(ref - got) / step
    print(kw["weight_quantizer"], codes.max(), codes.mean())
    assert codes.max() <= 8 and codes.mean() <= 2, (codes.max(), codes.mean())
    assert lite.parity["argmax_agreement"] >= 0.9
    path = tmp_path / "lowbit.keras"
    q.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(np.asarray(loaded(x, training=False)), np.asarray(q(x, training=False)), atol=1e-6)
    assert loaded.get_layer("conv").weight_quantizer == kw["weight_quantizer"]
    assert [a.quantizer for a in activation_quantizers(loaded)] == [a.quantizer for a in activation_quantizers(q)]


def test_dorefa_and_bnn_activations_spare_inputs_and_outputs():
    q = quant_aware(tiny_net(), activation_quantizer="bnn", activation_bits=1)
    kinds = {a.name: (a.quantizer, a.bits) for a in activation_quantizers(q)}
    assert kinds["image_quant"] == kinds["logits_quant"] == ("default", 8)
    assert kinds["relu_quant"] == ("bnn", 1)


def test_lowbit_size_bytes():
    m = keras.Sequential([keras.Input((8,)), L.Dense(16, name="d")])
    q = quant_aware(m, weight_quantizer="bnn", weight_bits=1)
    assert lowbit_size_bytes(q) == 8 * 16 / 8 + 16 * 4       # 1-bit kernel + float32 bias
    q4 = quant_aware(m, weight_quantizer="lsq", weight_bits=4)
    assert lowbit_size_bytes(q4) == 8 * 16 / 2 + 16 * 4 + 16 * 4  # 4-bit kernel, bias, one step per unit


# ------------------------------------------------------------------------------------------ benchmark script
def _bench_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_lowbit.py"
    spec = importlib.util.spec_from_file_location("_bench_lowbit_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_script_arguments_and_tables(tmp_path):
    bench = _bench_module()
    full, quick = bench.parse_args([]), bench.parse_args(["--quick"])
    assert full.images == 20480 and quick.images == 2048 and full.rows == list(bench.ROWS)
    for cfg in bench.ROWS.values():   # every row is a valid QuantConfig
        assert cfg is None or QuantConfig(**cfg)
    rows = [{"variant": "float32", "accuracy": 0.93, "delta_pt": 0.0, "tflite_bytes": 10, "lowbit_bytes": 40.0,
             "seconds": 0.0},
            {"variant": "lsq_w4", "accuracy": 0.925, "delta_pt": -0.5, "tflite_bytes": 5, "lowbit_bytes": 5.0,
             "seconds": 3.0, "argmax_agreement": 0.99, "max_conv_code": 7},
            {"variant": "bnn_w1", "failed": "ValueError: x"}]
    targets = bench.check_targets({"rows": rows})
    assert targets[0]["met"] and "lsq_w4" in targets[0]["what"]
    result = {"command": "c", "date": "d", "platform": "p", "cpu": "c", "cores": 2, "load_average": [1, 1, 1],
              "data": "data", "images": 2048, "lr": 1e-4, "test_samples": 500, "rows": rows, "targets": targets,
              "notes": ["n"]}
    bench.write_markdown(result, tmp_path / "lowbit.md")
    text = (tmp_path / "lowbit.md").read_text()
    assert "| lsq_w4 | 92.50 | -0.50 |" in text and "failed: ValueError" in text and "2,048 training images" in text


@pytest.mark.slow
def test_bench_quick_runs(tmp_path):
    import subprocess
    import sys

    bench = _bench_module()
    out = subprocess.run([sys.executable, bench.__file__, "--quick", "--out", str(tmp_path)], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "lsq_w4:" in out.stdout and "FAILED" not in out.stdout
