"""QAT on the models users bring: keras.ops nodes, nested models, new layer types, BN and pooling rules.

Every model here is tiny. Each goes QAT -> one calibration pass -> ``kslim.quant.convert`` -> int8
``.tflite`` and is checked for: no float compute op (``float_ops``), int8 weight tensors on its kernel
ops, and parity with the Keras QAT model on the same inputs: correlation of the outputs >= 0.999 and
the largest difference <= 8 steps of the output's int8 grid (TFLite's integer rounding differs from the
float simulation by one step here and there, and BN-heavy random nets amplify it; 1-7 steps seen).
"""

import warnings

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from kslim.errors import ConversionError, ModelError  # noqa: E402
from kslim.quant import ActivationQuantizer, activation_quantizers, convert, float_ops, quant_aware  # noqa: E402
from kslim.quant.layers import (  # noqa: E402
    QuantBatchNormalization,
    QuantConv1D,
    QuantConv2D,
    QuantConv2DTranspose,
    QuantDepthwiseConv2D,
    QuantEinsumDense,
    QuantEmbedding,
    QuantLayerNormalization,
)

L = keras.layers
KERNEL_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "GATHER", "BATCH_MATMUL")


def _images(shape, n=16, lo=0.0, hi=1.0, seed=0):
    return np.random.default_rng(seed).uniform(lo, hi, (n, *shape)).astype("float32")


def _random_bn_stats(model):
    """Non-trivial BN parameters so that folding and the int8 affine are really exercised."""
    rng = np.random.default_rng(1)
    for layer in _leaf_layers(model):
        if isinstance(layer, L.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 2, n), rng.normal(0, 0.5, n), rng.normal(0, 0.5, n),
                               rng.uniform(0.2, 3, n)])
    return model


def _leaf_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


def _qat_lite(model, x, **config):
    """(QAT model calibrated on ``x`` by one training-mode pass, its int8 LiteModel)."""
    q = quant_aware(model, **config)
    q(x, training=True)
    return q, convert(q, check=False)


def _kernel_weights(lite):
    """{op name: [dtype of its constant weight tensor, ...]} for the kernel ops of a .tflite."""
    interp = lite.interpreter(use_xnnpack=False)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    out = {}
    for op in interp._get_ops_details():
        if op["op_name"] not in KERNEL_OPS:
            continue
        ins = [i for i in op["inputs"] if i >= 0]
        if op["op_name"] == "GATHER":
            w = tensors[ins[0]]
        elif op["op_name"] == "TRANSPOSE_CONV":
            w = tensors[ins[1]]
        elif op["op_name"] == "BATCH_MATMUL":
            w = tensors[ins[1]]
        else:
            w = tensors[ins[1]]
        out.setdefault(op["op_name"], []).append(np.dtype(w["dtype"]))
    return out


def _assert_int8(lite, kernel_ops, float_allowed=()):
    assert [op for op, _ in float_ops(lite) if op not in float_allowed] == [], lite.ops()
    weights = _kernel_weights(lite)
    for name in kernel_ops:
        assert weights.get(name), (name, lite.ops())
        assert all(d == np.int8 for d in weights[name]), (name, weights[name])


def _assert_parity(q, lite, x, corr=0.999, steps=8):
    ref = np.asarray(q(x, training=False), np.float64)
    got = np.asarray(lite.predict(x), np.float64)
    assert ref.shape == got.shape
    c = np.corrcoef(ref.ravel(), got.ravel())[0, 1]
    out_q = activation_quantizers(q)[-1]
    lo, hi = out_q.range
    assert c >= corr, c
    assert np.max(np.abs(ref - got)) <= steps * (hi - lo) / 255 + 1e-6


def _quantizer_inputs(model):
    """Names of the operations whose output an activation quantizer of ``model`` (top graph) reads."""
    return {q.input._keras_history.operation.name for q in model.layers if isinstance(q, ActivationQuantizer)}


# ------------------------------------------------------------------------------------------ keras.ops
def test_keras_ops_nodes_reused_and_quantized():
    inp = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inp)
    x = keras.ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    a, b = keras.ops.split(x, 2, axis=-1)
    y = keras.ops.concatenate([a * 2.0, b[:, :, :, ::-1]], axis=-1)
    y = L.Conv2D(4, 3, name="conv2")(y)
    out = L.Dense(5, name="logits")(L.GlobalAveragePooling2D(name="gap")(y))
    q, lite = _qat_lite(keras.Model(inp, out), _images((8, 8, 3)))
    reads = _quantizer_inputs(q)
    # pad / split / slicing keep their input's scale in TFLite; the multiply gets its own range; the
    # concatenation quantizes its inputs with its own range (nothing else reads them)
    assert not any(n.startswith(("pad", "split", "get_item")) for n in reads), reads
    assert any(n.startswith("concatenate") for n in reads) and not any(n.startswith("multiply") for n in reads)
    assert q.kslim_unquantized == {}
    _assert_int8(lite, ["CONV_2D", "FULLY_CONNECTED"])
    assert {"PAD", "SPLIT", "MUL", "CONCATENATION"} <= set(lite.ops())
    _assert_parity(q, lite, _images((8, 8, 3)))


# ------------------------------------------------------------------------------------------ nested models
def _base():
    return keras.Sequential([
        keras.Input((16, 16, 3)),
        L.Conv2D(8, 3, use_bias=False, name="c1"), L.BatchNormalization(name="b1"), L.ReLU(name="r1"),
        L.DepthwiseConv2D(3, use_bias=False, name="dw"), L.BatchNormalization(name="b2"), L.ReLU(6.0, name="r2"),
        L.Conv2D(8, 1, name="c2"),
    ], name="base")


def test_nested_sequential_kept_nested():
    """The transfer-learning pattern: Sequential([Input, Rescaling, base, GlobalAveragePooling2D, Dense])."""
    base = _base()
    m = _random_bn_stats(keras.Sequential([keras.Input((16, 16, 3)), L.Rescaling(1 / 255.0, name="rescale"), base,
                                           L.ReLU(name="outer_relu"), L.GlobalAveragePooling2D(name="gap"),
                                           L.Dense(4, name="head")], name="tl"))
    x = _images((16, 16, 3), hi=255.0)
    q, lite = _qat_lite(m, x)
    qbase = q.get_layer("base")
    assert isinstance(qbase, keras.Model) and qbase.name == "base"
    inner = {l.name: l for l in qbase.layers}
    assert type(inner["c1"]) is QuantConv2D and type(inner["dw"]) is QuantDepthwiseConv2D
    assert not any(isinstance(l, L.BatchNormalization) for l in qbase.layers)  # folded inside the nested model
    # no quantizer on the nested model's input (the outer Rescaling's already has one), and c2 -- the last
    # layer of base -- is quantized after the ReLU outside that TFLite fuses into it
    assert type(qbase.layers[1]) is QuantConv2D
    assert not isinstance(qbase.layers[-1], ActivationQuantizer)
    assert "outer_relu" in _quantizer_inputs(q) and "rescale" in _quantizer_inputs(q)
    n_trainable = len(q.trainable_weights)
    q.get_layer("base").trainable = False
    assert len(q.trainable_weights) == n_trainable - 6  # 3 kernels + 3 biases of base
    _assert_int8(lite, ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"])
    assert lite.ops()["CONV_2D"] == 2
    _assert_parity(q, lite, x)


def test_nested_called_with_training_false():
    """base(x, training=False) of a frozen base: its quantizers learn in fit (Keras 3 passes training=True)."""
    base = keras.Sequential([keras.Input((16, 16, 3)), L.Conv2D(8, 3, name="c1"), L.ReLU(name="r1"),
                             L.Dropout(0.5, name="drop"), L.Conv2D(8, 3, name="c2"), L.ReLU(name="r2")],
                            name="base")
    base.trainable = False
    inp = keras.Input((16, 16, 3))
    out = L.Dense(3, name="head")(L.GlobalAveragePooling2D(name="gap")(base(inp, training=False)))
    q = quant_aware(keras.Model(inp, out))
    assert not q.get_layer("base").trainable and len(q.trainable_weights) == 2
    x = _images((16, 16, 3))
    q.compile(optimizer="adam", loss="mse")
    q.fit(x, np.zeros((len(x), 3)), epochs=1, batch_size=8, verbose=0)
    assert all(a.calibrated for a in activation_quantizers(q))
    lite = convert(q, check=False)
    _assert_int8(lite, ["CONV_2D", "FULLY_CONNECTED"])


def test_nested_model_used_twice_stays_shared():
    blk_in = keras.Input((8, 8, 8))
    b = L.Conv2D(8, 3, padding="same", use_bias=False, name="c")(blk_in)
    b = L.ReLU(name="r")(L.BatchNormalization(name="bn")(b))
    block = keras.Model(blk_in, b, name="block")
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 1, name="stem")(inp)
    y = block(x)
    z = block(y)
    out = L.Dense(2, name="head")(L.GlobalAveragePooling2D()(L.Add(name="add")([y, z])))
    x = _images((8, 8, 3))
    q, lite = _qat_lite(_random_bn_stats(keras.Model(inp, out)), x)
    assert [l.name for l in q.layers].count("block") == 1
    assert len(q.get_layer("block")._inbound_nodes) == 2  # one model, called twice
    inner = {l.name: l for l in q.get_layer("block").layers}
    assert type(inner["c"]) is QuantConv2D
    # a BN inside a model called twice is not folded (its conv runs twice): it becomes the int8 affine
    assert type(inner["bn"]) is QuantBatchNormalization
    _assert_int8(lite, ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"])
    assert lite.ops()["CONV_2D"] == 3
    _assert_parity(q, lite, x)


def test_bn_folded_across_the_nesting_boundary():
    """A conv outside feeding a nested model that starts with BatchNormalization: folded into the conv."""
    inner = keras.Sequential([keras.Input((8, 8, 8)), L.BatchNormalization(name="bn"), L.ReLU(name="relu"),
                              L.Conv2D(4, 1, name="pw")], name="inner")
    inp = keras.Input((8, 8, 3))
    out = L.Flatten()(inner(L.Conv2D(8, 3, padding="same", name="conv")(inp)))
    q, lite = _qat_lite(_random_bn_stats(keras.Model(inp, out)), _images((8, 8, 3)))
    assert not any(isinstance(l, L.BatchNormalization) for l in _leaf_layers(q))
    assert "conv" not in _quantizer_inputs(q)  # quantized after the ReLU inside the nested model
    _assert_int8(lite, ["CONV_2D"])
    _assert_parity(q, lite, _images((8, 8, 3), seed=1))


def test_skip_and_only_with_paths():
    def model():
        inp = keras.Input((16, 16, 3))
        return keras.Model(inp, L.Dense(2, name="head")(L.GlobalAveragePooling2D()(_base()(inp))))

    q = quant_aware(model(), skip=["base/c1", "dw"])  # a path, and a bare name unique at any depth
    inner = q.get_layer("base")
    assert type(inner.get_layer("c1")) is L.Conv2D and type(inner.get_layer("dw")) is L.DepthwiseConv2D
    assert type(inner.get_layer("c2")) is QuantConv2D
    assert q.kslim_unquantized == {"base/c1": "skip", "base/dw": "skip"}
    q = quant_aware(model(), only_layers=["base"])
    assert type(q.get_layer("head")) is L.Dense and type(q.get_layer("base").get_layer("c2")) is QuantConv2D
    with pytest.raises(ModelError, match="skip: No layer 'c3'"):
        quant_aware(model(), skip=["c3"])
    twice = keras.Sequential([keras.Input((4,)), L.Dense(4, name="fc")], name="a")
    other = keras.Sequential([keras.Input((4,)), L.Dense(4, name="fc")], name="b")
    inp = keras.Input((4,))
    with pytest.raises(ModelError, match="ambiguous"):
        quant_aware(keras.Model(inp, other(twice(inp))), skip=["fc"])


# ------------------------------------------------------------------------------------------ layer types
def test_conv1d_text_classifier_matches_keras():
    """Embedding + Conv1D (strided, dilated causal) + BN + sigmoid head: the int8 model matches the QAT model.

    (The sigmoid's output used to get a learned range while TFLite's int8 LOGISTIC always writes
    scale 1/256: the .tflite then correlated 0.6-0.9 with the Keras QAT model.)
    """
    inp = keras.Input((40,), dtype="int32")
    x = L.Dropout(0.2)(L.Embedding(100, 16, name="emb")(inp))
    x = L.Conv1D(16, 5, strides=2, activation="relu", name="c1")(x)
    x = L.Conv1D(16, 3, dilation_rate=2, padding="causal", use_bias=False, name="c2")(x)
    x = L.ReLU()(L.BatchNormalization(name="bn")(x))
    out = L.Dense(1, activation="sigmoid", name="prob")(L.GlobalMaxPooling1D()(x))
    x = np.random.default_rng(0).integers(0, 100, (32, 40)).astype("int32")
    q, lite = _qat_lite(_random_bn_stats(keras.Model(inp, out)), x)
    assert type(q.get_layer("emb")) is QuantEmbedding and type(q.get_layer("c2")) is QuantConv1D
    assert not any(isinstance(l, L.BatchNormalization) for l in q.layers)  # folded into c2
    assert activation_quantizers(q)[-1].range == (0.0, 255 / 256) and activation_quantizers(q)[-1].frozen
    _assert_int8(lite, ["CONV_2D", "FULLY_CONNECTED", "GATHER"])
    ref, got = np.asarray(q(x, training=False)), lite.predict(x)
    assert np.max(np.abs(ref - got)) <= 1 / 256 + 1e-6  # at most one step of the sigmoid's int8 grid


def test_conv2d_transpose_unet():
    inp = keras.Input((16, 16, 3))
    c1 = L.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
    c2 = L.ReLU()(L.BatchNormalization(name="bn2")(L.Conv2D(16, 3, padding="same", use_bias=False)(
        L.MaxPooling2D()(c1))))
    up = L.BatchNormalization(name="up_bn")(L.Conv2DTranspose(8, 3, strides=2, padding="same", name="up")(c2))
    out = L.Conv2D(2, 1, name="mask")(L.Concatenate(name="cat")([up, c1]))
    x = _images((16, 16, 3))
    q, lite = _qat_lite(_random_bn_stats(keras.Model(inp, out)), x)
    assert type(q.get_layer("up")) is QuantConv2DTranspose
    assert not any(isinstance(l, L.BatchNormalization) for l in q.layers)  # both folded, up_bn into "up"
    _assert_int8(lite, ["CONV_2D", "TRANSPOSE_CONV"])
    _assert_parity(q, lite, x)


def test_multi_head_attention_int8():
    inp = keras.Input((6, 16))
    x = L.Dense(16, name="embed")(inp)
    a = L.MultiHeadAttention(2, 8, name="mha")(x, x)
    out = L.Dense(3, name="logits")(L.GlobalAveragePooling1D()(L.Add()([x, a])))
    x = np.random.default_rng(0).normal(size=(32, 6, 16)).astype("float32")
    q, lite = _qat_lite(keras.Model(inp, out), x)
    mha = q.get_layer("mha")
    assert isinstance(mha, keras.Model)  # expanded into its projections and attention ops
    assert sorted(l.name for l in mha.layers if isinstance(l, QuantEinsumDense)) == [
        "attention_output", "key", "query", "value"]
    softmax_q = next(l for l in mha.layers if isinstance(l, ActivationQuantizer) and l.name.startswith("softmax"))
    assert softmax_q.range == (0.0, 255 / 256)
    _assert_int8(lite, ["FULLY_CONNECTED"])
    assert lite.ops()["FULLY_CONNECTED"] == 6 and lite.ops()["BATCH_MATMUL"] == 2 and "SOFTMAX" in lite.ops()
    _assert_parity(q, lite, x)


def test_transformer_block_with_layer_norm_fully_int8(tmp_path):
    """Post-LN and pre-LN encoder blocks (MHA + LayerNormalization + FFN): every op int8, LN included."""
    inp = keras.Input((None, 16))   # an undefined sequence length, as keras-hub text backbones have
    x = L.Dense(16, name="embed")(inp)
    a = L.MultiHeadAttention(2, 8, name="mha")(x, x)
    x = L.LayerNormalization(epsilon=1e-6, name="ln1")(L.Add()([x, a]))       # post-LN
    h = L.LayerNormalization(name="ln2", center=False)(x)                      # pre-LN, no beta
    h = L.Dense(16, name="ffn_out")(L.Dense(32, activation="relu", name="ffn_in")(h))
    out = L.Dense(3, name="logits")(L.GlobalAveragePooling1D()(L.Add()([x, h])))
    model = keras.Model(inp, out)
    rng = np.random.default_rng(0)
    for name in ("ln1", "ln2"):
        layer = model.get_layer(name)
        layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in layer.get_weights()])
    x = rng.normal(size=(32, 6, 16)).astype("float32")
    q, lite = _qat_lite(model, x)
    assert q.kslim_unquantized == {}
    lns = [l for l in _leaf_layers(q) if isinstance(l, QuantLayerNormalization)]
    assert len(lns) == 2 and all(s.calibrated for l in lns for s in l.step_quantizers)
    assert set(activation_quantizers(q)) >= {s for l in lns for s in l.step_quantizers}
    _assert_int8(lite, ["FULLY_CONNECTED", "DEPTHWISE_CONV_2D"])   # gamma: an int8 1x1 depthwise conv
    assert {"MEAN", "RSQRT", "SUB"} <= set(lite.ops())
    _assert_parity(q, lite, x)
    ref = np.asarray(model(x))
    assert np.corrcoef(ref.ravel(), np.asarray(q(x)).ravel())[0, 1] > 0.99   # QAT stays close to float
    path = tmp_path / "ln.keras"
    q.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(q(x)), rtol=0, atol=1e-6)


def test_layer_norm_of_a_constant_row_saturates_like_tflite():
    """A row with no variance (DeiT's zero-initialised class token): the shifted variance rounds to the
    zero point, TFLite's int8 RSQRT answers with the top of its range, and so must QAT: before, its ranges
    became inf/NaN and the converter crashed the process (segfault in LegalizeFakeQuantWithMinMaxVars)."""
    inp = keras.Input((5, 8))
    x = L.Dense(8, use_bias=False, name="embed")(inp)
    x = L.LayerNormalization(epsilon=1e-6, name="ln")(x)
    model = keras.Model(inp, L.Dense(3, name="head")(L.Flatten()(x)))
    x = np.random.default_rng(0).normal(size=(32, 5, 8)).astype("float32")
    x[:, 0, :] = 0.0                                           # a constant token: variance 0
    q = quant_aware(model)
    q(x, training=True)
    ranges = [a.range for a in activation_quantizers(q)]
    assert all(np.isfinite(r).all() for r in ranges), ranges      # checked before converting: no crash
    assert np.isfinite(np.asarray(q(x))).all()
    lite = convert(q, check=False)
    assert not float_ops(lite)
    _assert_parity(q, lite, x)
    ln_std = next(s for s in q.get_layer("ln").step_quantizers if "inv_std" in s.name)
    ln_std.max.assign(np.inf)                                  # a range broken some other way: refused, no crash
    with pytest.raises(ConversionError, match="inv_std_quant.*non-finite"):
        convert(q, check=False)


@pytest.mark.parametrize("make, words", [
    (lambda: L.Conv1D(4, 3, groups=2, name="layer"), "grouped Conv1D"),
    (lambda: L.BatchNormalization(axis=1, name="layer"), "not the last one"),
    (lambda: L.Rescaling(np.ones((6, 4), "float32"), name="layer"), "Rescaling with scale/offset of shapes"),
])
def test_settings_a_rule_refuses_stay_float_and_say_why(make, words):
    """Each layer type's refusal comes from its rule (LayerRule.quant_refusal) and is reported by name."""
    inp = keras.Input((6, 4))
    x = make()(L.Dense(4, name="d")(inp))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quant_aware(keras.Model(inp, L.Dense(2, name="head")(L.Flatten()(x))))
    assert words in q.kslim_unquantized["layer"]
    assert not type(q.get_layer("layer")).__name__.startswith("Quant")


def test_layer_norm_over_another_axis_stays_float_and_says_why():
    inp = keras.Input((4, 6))
    y = L.LayerNormalization(axis=1, name="ln")(L.Dense(6, name="d")(inp))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quant_aware(keras.Model(inp, L.Dense(2, name="head")(L.Flatten()(y))))
    assert "axis" in q.kslim_unquantized["ln"]
    assert type(q.get_layer("ln")) is L.LayerNormalization


# ------------------------------------------------------------------------------------------ BN and pooling
def test_bn_not_foldable_becomes_int8_affine():
    """BN after an activation (rank 4 and rank 2) and after a non-foldable layer: int8 DEPTHWISE_CONV_2D."""
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inp)
    x = L.BatchNormalization(name="bn_act")(x)                      # after the conv's own ReLU
    x = L.SeparableConv2D(8, 3, padding="same", use_bias=False, name="sep")(x)
    x = L.ReLU()(L.BatchNormalization(name="bn_sep")(x))            # folded into the pointwise conv
    x = L.BatchNormalization(name="bn_pool")(L.AveragePooling2D(2, name="pool")(x))
    x = L.Dense(8, activation="relu", name="fc")(L.Flatten()(x))
    out = L.Dense(3, name="logits")(L.BatchNormalization(name="bn_fc")(x))
    x = _images((8, 8, 3))
    q, lite = _qat_lite(_random_bn_stats(keras.Model(inp, out)), x)
    kinds = {l.name: type(l) for l in q.layers}
    assert kinds["bn_act"] is QuantBatchNormalization and kinds["bn_pool"] is QuantBatchNormalization
    assert kinds["bn_fc"] is QuantBatchNormalization and "bn_sep" not in kinds
    assert "pool" not in _quantizer_inputs(q)  # average pooling keeps its input's scale in TFLite
    _assert_int8(lite, ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"])
    assert "MUL" not in lite.ops() and "ADD" not in lite.ops()
    assert lite.ops()["DEPTHWISE_CONV_2D"] == 4  # the separable's depthwise + three BN affines
    _assert_parity(q, lite, x)


def test_densenet_style_pooling_and_concat():
    """BN-ReLU-conv blocks concatenated, AveragePooling2D transition (used to violate the same-scale rule)."""
    def block(x, name):
        y = L.BatchNormalization(name=f"{name}_bn")(x)
        y = L.Conv2D(4, 3, padding="same", name=f"{name}_conv")(L.ReLU(name=f"{name}_relu")(y))
        return L.Concatenate(name=f"{name}_cat")([x, y])

    inp = keras.Input((16, 16, 3))
    x = block(L.Conv2D(8, 3, padding="same", name="stem")(inp), "b1")
    x = L.Conv2D(8, 1, name="t_conv")(L.ReLU(name="t_relu")(L.BatchNormalization(name="t_bn")(x)))
    x = block(L.AveragePooling2D(2, name="t_pool")(x), "b2")
    out = L.Dense(3, name="logits")(L.GlobalAveragePooling2D(name="gap")(x))
    x = _images((16, 16, 3))
    q, lite = _qat_lite(_random_bn_stats(keras.Model(inp, out)), x)
    reads = _quantizer_inputs(q)
    assert "t_pool" not in reads and "b1_conv" not in reads and "b2_conv" not in reads  # share the concat's range
    assert {"b1_cat", "b2_cat", "gap"} <= reads
    _assert_int8(lite, ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"])
    assert "AVERAGE_POOL_2D" in lite.ops()
    _assert_parity(q, lite, x)


# ------------------------------------------------------------------------------------------ what stays float
def test_conv3d_left_float_and_reported():
    inp = keras.Input((4, 8, 8, 2))
    x = L.Conv3D(4, 3, padding="same", activation="relu", name="c3d")(inp)
    out = L.Dense(3, name="logits")(L.GlobalAveragePooling3D()(x))
    with pytest.warns(UserWarning, match="c3d .TFLite has no int8 CONV_3D"):
        q = quant_aware(keras.Model(inp, out))
    assert q.kslim_unquantized == {"c3d": "TFLite has no int8 CONV_3D kernel (it runs in float32 only)"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q2 = quant_aware(keras.Model(inp, out), skip=["c3d"], quantizable_layer_type=["Conv2D"])
    assert q2.kslim_unquantized == {"c3d": "skip", "logits": "quantizable_layer_type excludes Dense"}
    x = _images((4, 8, 8, 2), n=4)
    q(x, training=True)
    lite = convert(q, check=False)
    assert float_ops(lite)  # the float conv (its bias, its ReLU) and nothing else:
    _assert_int8(lite, ["FULLY_CONNECTED"], float_allowed=("CONV_3D", "ADD", "RELU"))


class _NoConfig(keras.layers.Layer):
    """An opaque layer (its call uses a raw TensorFlow op, so it cannot be expanded) whose get_config fails."""

    def build(self, shape):
        self.g = self.add_weight(shape=(shape[-1],), initializer="ones")

    def call(self, x):
        import tensorflow as tf

        return tf.nn.relu(x) * self.g

    def get_config(self):
        return keras.layers.LayerNormalization.get_config()  # the keras-hub Swin failure: TypeError


class _BadFromConfig(keras.layers.Layer):
    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, shape):
        self.g = self.add_weight(shape=(self.units,), initializer="ones")

    def call(self, x):
        import tensorflow as tf

        return tf.nn.relu(x[..., :self.units]) * self.g

    def get_config(self):
        return {"name": self.name}  # forgets "units": from_config fails


def test_get_config_and_from_config_failures_are_kslim_errors():
    inp = keras.Input((8,))
    m = keras.Model(inp, L.Dense(2, name="head")(_NoConfig(name="scale")(L.Dense(8, name="fc")(inp))))
    with pytest.raises(ModelError, match=r"'scale' \(_NoConfig\).*get_config\(\) raised TypeError.*skip"):
        quant_aware(m)
    q = quant_aware(m, skip=["scale"])  # kept as it is: shared with the original
    assert q.get_layer("scale") is m.get_layer("scale")
    assert "get_config() fails" in q.kslim_unquantized["scale"]
    m2 = keras.Model(inp, _BadFromConfig(4, name="take")(inp))
    with pytest.raises(ModelError, match=r"'take' \(_BadFromConfig\).*from_config\(\)"):
        quant_aware(m2)


class _Block(keras.layers.Layer):
    """A composite layer (keras-hub style): its call() runs Keras layers."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv = L.Conv2D(filters, 3, padding="same", use_bias=False)
        self.bn = L.BatchNormalization()

    def call(self, x):
        return x + keras.ops.relu(self.bn(self.conv(x)))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


def test_composite_layer_seen_through():
    inp = keras.Input((8, 8, 4))
    out = L.Dense(2, name="head")(L.GlobalAveragePooling2D()(_Block(4, name="blk")(inp)))
    x = _images((8, 8, 4))
    q, lite = _qat_lite(_random_bn_stats(keras.Model(inp, out)), x)
    blk = q.get_layer("blk")
    assert isinstance(blk, keras.Model) and any(type(l) is QuantConv2D for l in blk.layers)
    assert q.kslim_unquantized == {}
    _assert_int8(lite, ["CONV_2D", "FULLY_CONNECTED"])
    _assert_parity(q, lite, x)


# ------------------------------------------------------------------------------------------ saving
def test_save_load_new_layers_safe_mode(tmp_path):
    """Every new quantized layer, a nested model and an expanded attention survive .keras (safe_mode=True)."""
    tokens = keras.Input((12,), dtype="int32")
    x = L.Embedding(50, 8, name="emb")(tokens)
    x = L.MultiHeadAttention(2, 4, name="mha")(x, x)
    x = L.Conv1D(8, 3, name="c1")(x)
    x = L.ReLU()(L.BatchNormalization(name="bn_act")(L.ReLU()(x)))
    x = L.Reshape((10, 8, 1))(x)
    inner = keras.Sequential([keras.Input((10, 8, 1)), L.Conv2DTranspose(4, 3, strides=2, padding="same", name="up"),
                              L.BatchNormalization(name="up_bn")], name="decoder")
    out = L.Dense(2, name="head")(L.Flatten()(inner(x)))
    x = np.random.default_rng(0).integers(0, 50, (4, 12)).astype("int32")
    q = quant_aware(_random_bn_stats(keras.Model(tokens, out)))
    q(x, training=True)
    path = tmp_path / "q.keras"
    q.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(q(x)), rtol=0, atol=1e-6)
    kinds = {type(l) for l in _leaf_layers(loaded)}
    assert {QuantEmbedding, QuantEinsumDense, QuantConv1D, QuantBatchNormalization, QuantConv2DTranspose} <= kinds
    assert isinstance(loaded.get_layer("decoder"), keras.Model) and isinstance(loaded.get_layer("mha"), keras.Model)
    assert [a.range for a in activation_quantizers(loaded)] == [a.range for a in activation_quantizers(q)]


def test_rescaling_preprocessing_becomes_an_int8_depthwise_affine():
    # the transfer-learning guide's Rescaling(1/127.5, offset=-1) in front of the base model: without a
    # quantized twin it is a float MUL + ADD in an otherwise int8 model
    inp = keras.Input((8, 8, 3))
    x = L.Rescaling(1.0 / 127.5, offset=-1.0, name="pre")(inp)
    x = L.Conv2D(4, 3, activation="relu", name="conv")(x)
    out = L.Dense(2, name="head")(L.GlobalAveragePooling2D()(x))
    m = keras.Model(inp, out)
    x = _images((8, 8, 3), lo=0.0, hi=255.0)
    q, lite = _qat_lite(m, x)
    assert type(q.get_layer("pre")).__name__ == "QuantRescaling" and q.kslim_unquantized == {}
    assert "DEPTHWISE_CONV_2D" in lite.ops() and "MUL" not in lite.ops() and "ADD" not in lite.ops()
    _assert_int8(lite, ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"])
    _assert_parity(q, lite, x)
    # the float maths is Keras' own (the one scale per channel is exact on its int8 grid)
    pre = q.get_layer("pre")
    np.testing.assert_allclose(np.asarray(pre(x)), np.asarray(m.get_layer("pre")(x)), atol=1e-5)
    # per-channel scale/offset of another shape than the channels stays float, with the reason
    m2 = keras.Sequential([keras.Input((4, 6)), L.Rescaling([1.0, 2.0], name="odd"), L.Dense(2)])
    assert "odd" in quant_aware(m2).kslim_unquantized


def test_einsum_dense_output_keeps_the_known_sequence_length():
    # Keras' EinsumDense leaves it None; a Flatten after an expanded MultiHeadAttention needs it
    layer = QuantEinsumDense("abc,cde->abde", output_shape=(None, 2, 4), bias_axes="de")
    assert layer(keras.Input((5, 8))).shape == (None, 5, 2, 4)
    assert QuantEinsumDense("abcd,cde->abe", output_shape=(None, 4))(keras.Input((5, 2, 3))).shape == (None, 5, 4)


def test_hard_sigmoid_gate_is_int8():
    # the squeeze-excite gate of MobileNetV3-style blocks (keras-hub's MobileNet): TFLite lowers
    # hard_sigmoid to ADD + MUL, float unless the relu6(x + 3) in between has a range
    inp = keras.Input((8, 8, 4))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inp)
    g = L.Conv2D(8, 1, name="reduce")(L.GlobalAveragePooling2D(keepdims=True)(x))
    g = L.Activation("hard_sigmoid", name="gate")(g)
    y = L.Multiply()([x, g])
    y = L.Dense(3, activation="hard_sigmoid", name="fused")(L.GlobalAveragePooling2D()(y))
    m = keras.Model(inp, L.Dense(2, name="head")(y))
    x = _images((8, 8, 4), lo=-1.0, hi=1.0)
    q, lite = _qat_lite(m, x)
    _assert_int8(lite, ["CONV_2D", "FULLY_CONNECTED"])
    _assert_parity(q, lite, x, corr=0.99)
    # the QAT model still computes hard_sigmoid (up to int8 steps of 6/255 and 1/255)
    np.testing.assert_allclose(np.asarray(q(x)), np.asarray(m(x)), atol=0.1)


class _AttentionBlock(keras.layers.Layer):
    """A keras-hub style encoder block: a composite layer whose call() runs a MultiHeadAttention."""

    def __init__(self, dim, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim
        self.mha = L.MultiHeadAttention(2, dim // 2, name="attention")
        self.ln = L.LayerNormalization(epsilon=1e-6, name="ln")

    def call(self, x):
        return self.ln(x + self.mha(x, x))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim}


def test_attention_still_quantized_after_the_model_was_pruned():
    # pruning traces composite layers at fixed shapes, which leaves extra calls on their sublayers: QAT of
    # the same model afterwards must not take them for the user calling the attention differently
    from kslim.prune import L1NormFilterPruner

    inp = keras.Input((None, 8))
    x = _AttentionBlock(8, name="block")(L.Dense(8, name="embed")(inp))
    x = L.Dense(16, activation="relu", name="fc")(L.GlobalAveragePooling1D()(x))
    m = keras.Model(inp, L.Dense(2, name="head")(x))
    before = quant_aware(m).kslim_unquantized
    L1NormFilterPruner(m).prune(0.3)
    t = keras.Input(batch_shape=(3, 5, 8))
    m.get_layer("block").mha(t, t)  # a node at fixed shapes, as kslim's own traces of composites leave
    after = quant_aware(m).kslim_unquantized
    assert after == before and not any("attention" in k for k in after), after
