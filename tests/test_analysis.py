"""kslim.analysis: exact MAC counts on hand-computable models, published figures, size, diff, loading."""

import json
import zipfile

import keras
import pytest
from keras import layers

from kslim.analysis import flops, model_size, register_rule, summary_diff
from kslim.errors import KslimFileError, KslimTypeError, ModelError


def one_layer(layer, shape):
    inp = keras.Input(shape)
    return keras.Model(inp, layer(inp))


def row(model, name, **kw):
    return flops(model, **kw).row(name)


# ---------------------------------------------------------------- exact counts, layer by layer
# (layer, input shape, MACs, elementwise ops) computed by hand from the module docstring's rules.
CASES = {
    # 3x3 kernel, 3 in, 4 out, 4x4 output positions; + bias add per output element
    "conv2d": (layers.Conv2D(4, 3, name="x"), (6, 6, 3), 9 * 3 * 4 * 16, 4 * 16),
    "conv2d_strided_same": (layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="x"),
                            (8, 8, 2), 9 * 2 * 8 * 16, 0),
    "conv2d_groups": (layers.Conv2D(4, 3, groups=2, padding="same", use_bias=False, name="x"),
                      (6, 6, 4), 9 * 2 * 4 * 36, 0),
    "conv2d_relu": (layers.Conv2D(2, 1, activation="relu", name="x"), (3, 3, 2), 2 * 2 * 9, 2 * 18),
    "conv2d_channels_first": (layers.Conv2D(4, 3, data_format="channels_first", use_bias=False, name="x"),
                              (3, 6, 6), 9 * 3 * 4 * 16, 0),
    "conv1d": (layers.Conv1D(5, 3, use_bias=False, name="x"), (10, 3), 3 * 3 * 5 * 8, 0),
    "conv3d": (layers.Conv3D(2, 2, use_bias=False, name="x"), (3, 3, 3, 1), 8 * 1 * 2 * 8, 0),
    "dense": (layers.Dense(3, name="x"), (7,), 7 * 3, 3),
    "dense_3d_input": (layers.Dense(3, use_bias=False, name="x"), (4, 7), 4 * 7 * 3, 0),
    "einsum_dense": (layers.EinsumDense("ab,bc->ac", output_shape=5, name="x"), (7,), 7 * 5, 0),
    "depthwise": (layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", use_bias=False, name="x"),
                  (5, 5, 3), 9 * 3 * 2 * 25, 0),
    # depthwise 9*3 per position on 3x3 output + pointwise 3->6 on 3x3
    "separable": (layers.SeparableConv2D(6, 3, use_bias=False, name="x"), (5, 5, 3), 9 * 3 * 9 + 3 * 6 * 9, 0),
    # each of the 3x3x2 input values meets the 3x3x4 kernel
    "conv2d_transpose": (layers.Conv2DTranspose(4, 3, strides=2, padding="same", use_bias=False, name="x"),
                         (3, 3, 2), 9 * 2 * 4 * 9, 0),
    "lstm": (layers.LSTM(4, name="x"), (6, 3), 6 * 4 * (3 + 4) * 4, 0),
    "gru": (layers.GRU(4, name="x"), (6, 3), 6 * 3 * (3 + 4) * 4, 0),
    "bidirectional": (layers.Bidirectional(layers.SimpleRNN(4), name="x"), (6, 3), 2 * 6 * (3 + 4) * 4, 0),
    "time_distributed": (layers.TimeDistributed(layers.Dense(3), name="x"), (5, 7), 5 * 7 * 3, 5 * 3),
    "batchnorm": (layers.BatchNormalization(name="x"), (4, 4, 3), 0, 2 * 48),
    "relu": (layers.ReLU(name="x"), (4, 4, 3), 0, 48),
    "activation": (layers.Activation("sigmoid", name="x"), (4, 4, 3), 0, 48),
    "maxpool": (layers.MaxPooling2D(2, name="x"), (4, 4, 3), 0, 4 * 12),
    "avgpool": (layers.AveragePooling2D(2, name="x"), (4, 4, 3), 0, 4 * 12),
    "global_avgpool": (layers.GlobalAveragePooling2D(name="x"), (4, 4, 3), 0, 48),
    "flatten": (layers.Flatten(name="x"), (4, 4, 3), 0, 0),
    "zero_padding": (layers.ZeroPadding2D(1, name="x"), (4, 4, 3), 0, 0),
    "dropout": (layers.Dropout(0.5, name="x"), (4, 4, 3), 0, 0),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_exact_counts(case):
    layer, shape, macs, elementwise = CASES[case]
    model = one_layer(layer, shape)
    report = flops(model)
    r = report.row("x")
    assert (r.macs, r.elementwise) == (macs, elementwise)
    assert r.params == layer.count_params()
    assert report.macs == macs and report.flops == 2 * macs
    assert report.params == model.count_params()
    assert r.output_shape == tuple(model.output.shape)
    assert report.uncounted == []


def test_merge_layers():
    a, b, c = keras.Input((4, 4, 3)), keras.Input((4, 4, 3)), keras.Input((4, 4, 3))
    outs = [layers.Add(name="add2")([a, b]), layers.Add(name="add3")([a, b, c]),
            layers.Multiply(name="mul")([a, b]), layers.Concatenate(name="cat")([a, b])]
    report = flops(keras.Model([a, b, c], outs))
    assert [report.row(n).elementwise for n in ("add2", "add3", "mul", "cat")] == [48, 96, 48, 0]
    assert report.row("add3").input_shape == [(None, 4, 4, 3)] * 3
    assert report.macs == 0


def test_shared_layer_counts_macs_per_call_params_once():
    dense = layers.Dense(3, use_bias=False, name="shared")
    a, b = keras.Input((5,)), keras.Input((5,))
    report = flops(keras.Model([a, b], [dense(a), dense(b)]))
    assert report.macs == 2 * 15
    assert [(r.name, r.params) for r in report.rows if r.type == "Dense"] == [("shared", 15), ("shared#2", 0)]
    assert report.params == 15


def test_reference_model_rows_add_up():
    from kslim.models import mobilenet_v1, resnet

    for model in (mobilenet_v1(width=0.25), resnet(width=0.25)):
        report = flops(model)
        assert sum(r.params for r in report.rows) == model.count_params() == report.params
        assert report.macs == sum(r.macs for r in report.rows)
        assert report.trainable_params + report.non_trainable_params == report.params
    # stem conv of the ResNet: 3x3x1 kernel, 8 filters at width 0.25, 28x28 positions
    assert report.row("stem_conv").macs == 9 * 1 * 8 * 28 * 28


# ---------------------------------------------------------------- nesting and input shapes
def test_nested_models_are_flattened():
    base = keras.applications.MobileNetV2(input_shape=(None, None, 3), alpha=0.35, include_top=False,
                                          weights=None)
    inp = keras.Input((32, 32, 3))
    inner_seq = keras.Sequential([keras.Input((1280,)), layers.Dense(16, use_bias=False, name="hidden")],
                                 name="head")
    x = layers.GlobalAveragePooling2D(name="gap")(base(inp))
    out = layers.Dense(10, use_bias=False, name="logits")(inner_seq(x))
    model = keras.Model(inp, out)

    report = flops(model)
    base_report = flops(base, input_shape=(32, 32, 3))
    assert report.macs == base_report.macs + 1280 * 16 + 16 * 10
    assert report.params == model.count_params() == sum(r.params for r in report.rows)
    assert f"{base.name}/Conv1" in [r.name for r in report.rows]
    assert report.row("head/hidden").macs == 1280 * 16
    assert not any(r.type in ("Functional", "Sequential") for r in report.rows)


def test_input_shape_needed_and_used():
    seq = keras.Sequential([layers.Conv2D(4, 3, use_bias=False), layers.Flatten(), layers.Dense(2, use_bias=False)])
    with pytest.raises(ModelError, match="input_shape"):
        flops(seq)
    assert flops(seq, input_shape=(8, 8, 1)).macs == 9 * 1 * 4 * 36 + 144 * 2

    fcn = keras.Sequential([keras.Input((None, None, 3)), layers.Conv2D(4, 3, padding="same", use_bias=False)])
    with pytest.raises(ModelError, match="input_shape"):
        flops(fcn)
    small, big = flops(fcn, input_shape=(8, 8, 3)).macs, flops(fcn, input_shape=(16, 16, 3)).macs
    assert small == 9 * 3 * 4 * 64 and big == 4 * small


def test_input_shape_incompatible_names_layer():
    from kslim.models import vgg

    with pytest.raises(ModelError, match="fc1"):
        flops(vgg(width=0.25), input_shape=(32, 32, 1))
    with pytest.raises(ModelError, match="positive"):
        flops(vgg(width=0.25), input_shape=(0, 28, 1))
    with pytest.raises(KslimTypeError, match="keras.Model"):
        flops(layers.Dense(3))


def test_uncounted_layer_is_reported_and_register_rule_counts_it():
    class Gain(layers.Layer):
        def build(self, shape):
            self.g = self.add_weight(shape=(shape[-1],), initializer="ones")

        def call(self, x):
            import tensorflow as tf

            return tf.multiply(x, self.g)  # raw TensorFlow: cannot be traced, so kslim cannot see inside

    model = one_layer(Gain(name="gain"), (4, 3))
    report = flops(model)
    assert report.uncounted == ["gain"] and "gain" in str(report)

    register_rule(Gain)(lambda layer, ins, outs: (0, 12))
    report = flops(model)
    assert report.uncounted == [] and report.row("gain").elementwise == 12


def test_subclassed_model_is_seen_through():
    class Net(keras.Model):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.dense = layers.Dense(3, name="fc")

        def call(self, x):
            return keras.ops.relu(self.dense(x))

    net = Net(name="net")
    with pytest.raises(ModelError, match="input_shape"):
        flops(net)
    report = flops(net, input_shape=(5,))
    assert report.uncounted == [] and report.params == 18
    assert report.row("net/fc").macs == 5 * 3 and report.macs == 15
    assert report.rows[-1].output_shape == (None, 3)


def test_opaque_subclassed_model_is_one_uncounted_row():
    class Net(keras.Model):  # calls TensorFlow directly: cannot be seen through
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1], 3), name="w")

        def call(self, x):
            import tensorflow as tf

            return tf.matmul(x, self.w)  # raw TensorFlow: not traceable

    net = Net(name="net")
    report = flops(net, input_shape=(5,))
    assert report.uncounted == ["net"] and report.params == 15
    assert report.rows[0].output_shape == (None, 3)


def test_report_text():
    model = one_layer(layers.Conv2D(4, 3, name="conv"), (6, 6, 3))
    totals = str(flops(model))
    assert "1,728" in totals and "3,456" in totals and "conv" not in totals.split("per sample")[0]
    detail = flops(model, detail=True)
    text = str(detail)
    assert "conv" in text and "(None, 4, 4, 4)" in text and "Conv2D" in text
    d = detail.to_dict()
    assert d["macs"] == 1728 and d["flops"] == 3456 and d["rows"][-1]["name"] == "conv"
    json.dumps(d)


# ---------------------------------------------------------------- published figures (224x224)
# Published: MobileNet 569 M MACs / 4.2 M params (Howard et al. 2017), MobileNetV2 300 M / 3.4-3.5 M
# (Sandler et al. 2018), ResNet50 3.9 G MACs (3.86 G for conv+fc) / 25.6 M. Tolerance: 3 %.
PUBLISHED = {
    "MobileNet": (569e6, 4.2e6),
    "MobileNetV2": (300e6, 3.5e6),
    "ResNet50": (3.9e9, 25.6e6),
}
TOLERANCE = 0.03


@pytest.fixture(scope="module", params=sorted(PUBLISHED))
def application(request):
    model = getattr(keras.applications, request.param)(weights=None)
    yield request.param, model
    keras.backend.clear_session()


def test_published_figures(application):
    name, model = application
    macs, params = PUBLISHED[name]
    report = flops(model)
    assert report.macs == pytest.approx(macs, rel=TOLERANCE)
    assert report.params == pytest.approx(params, rel=TOLERANCE)
    assert report.params == model.count_params()
    assert report.uncounted == []


# ---------------------------------------------------------------- model_size
def test_model_size():
    m = keras.Sequential([keras.Input((8,)), layers.Dense(4)])
    assert model_size(m) == (8 * 4 + 4) * 4
    half = keras.Sequential([keras.Input((8,)), layers.Dense(4, dtype="float16")])
    assert model_size(half) == (8 * 4 + 4) * 2
    from kslim.models import vgg

    v = vgg(width=0.25)  # BN moving statistics are counted too
    assert model_size(v) == v.count_params() * 4
    with pytest.raises(KslimTypeError):
        model_size("model.keras")


# ---------------------------------------------------------------- summary_diff
def _net(c1, c2, extra=False):
    inp = keras.Input((8, 8, 3))
    x = layers.Conv2D(c1, 3, padding="same", use_bias=False, name="conv1")(inp)
    x = layers.ReLU(name="relu1")(x)
    x = layers.Conv2D(c2, 1, use_bias=False, name="conv2")(x)
    if extra:
        x = layers.Conv2D(c2, 1, use_bias=False, name="conv_extra")(x)
    return keras.Model(inp, x, name=f"net_{c1}_{c2}{'_extra' if extra else ''}")


def test_summary_diff():
    before, after = _net(8, 4), _net(4, 4, extra=True)
    d = summary_diff(before, after)
    rows = {r.name: r for r in d.rows}
    assert (rows["conv1"].channels_before, rows["conv1"].channels_after) == (8, 4)
    assert (rows["conv1"].macs_before, rows["conv1"].macs_after) == (9 * 3 * 8 * 64, 9 * 3 * 4 * 64)
    assert rows["conv2"].macs_delta == (4 - 8) * 4 * 64
    assert (rows["conv_extra"].channels_before, rows["conv_extra"].macs_before) == (None, None)
    assert d.params_before == before.count_params() and d.params_after == after.count_params()
    assert d.macs_reduction == pytest.approx(1 - flops(after).macs / flops(before).macs)
    text = str(d)
    assert "8 -> 4" in text and "- -> 4" in text and "Reduction" in text and f"{d.macs_reduction:.1%}" in text

    gone = summary_diff(after, before)
    assert {r.name: r.channels_after for r in gone.rows}["conv_extra"] is None


# ---------------------------------------------------------------- load_keras_model
def test_load_keras_model(tmp_path):
    from kslim._model_io import load_keras_model

    model = _net(4, 2)
    model.save(tmp_path / "m.keras")
    loaded = load_keras_model(tmp_path / "m.keras")
    assert flops(loaded).macs == flops(model).macs

    with pytest.raises(KslimFileError, match="nope.keras"):
        load_keras_model(tmp_path / "nope.keras")
    with pytest.raises(KslimFileError, match="folder"):
        load_keras_model(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(KslimFileError, match="notes.txt.*not a Keras model archive"):
        load_keras_model(tmp_path / "notes.txt")
    (tmp_path / "bad.h5").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(KslimFileError, match="bad.h5"):
        load_keras_model(tmp_path / "bad.h5")
    with zipfile.ZipFile(tmp_path / "empty.keras", "w") as z:
        z.writestr("hello.txt", "not a model")
    with pytest.raises(ModelError, match="empty.keras"):
        load_keras_model(tmp_path / "empty.keras")
