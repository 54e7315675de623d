"""kslim.distill: losses (maths), Distiller (fit/evaluate/callbacks/tf.data/saving/tf.distribute), bad input."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from kslim.distill import (  # noqa: E402
    Distiller,
    FeatureAdaptor,
    FSPLoss,
    L2Loss,
    Pair,
    SoftLabelLoss,
    feature_model,
    fsp_loss,
    fsp_matrix,
    l2_loss,
    resolve_layer,
    soft_label_loss,
)
from kslim.errors import KslimTypeError, KslimValueError, ModelError  # noqa: E402
from kslim.models import mobilenet_v1, resnet  # noqa: E402

SHAPE = (16, 16, 1)
SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def tiny_teacher():
    t = resnet(input_shape=SHAPE, width=0.25, name="teacher")
    t.trainable = False
    return t


def tiny_student():
    return mobilenet_v1(input_shape=SHAPE, width=0.25, dropout=0.0, name="student")


def data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, *SHAPE), dtype=np.float32), rng.integers(0, 10, n).astype(np.int32)


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_fsp(a, b):
    n, h, w, _ = a.shape
    return np.einsum("nhwi,nhwj->nij", a, b) / (h * w)


# ---------------------------------------------------------------------------------------------
# losses


def test_soft_label_loss_matches_numpy_and_temperature_scaling():
    rng = np.random.default_rng(1)
    t, s = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    for tt, ts in ((1.0, 1.0), (4.0, 4.0), (2.0, 3.0)):
        ref = np.mean(-np.sum(np_softmax(t / tt) * np.log(np_softmax(s / ts)), -1))
        assert float(soft_label_loss(t, s, tt, ts)) == pytest.approx(ref, rel=1e-5)
        scaled = soft_label_loss(t, s, tt, ts, scale_by_temperature=True)
        assert float(scaled) == pytest.approx(ref * tt * ts, rel=1e-5)
        as_loss = SoftLabelLoss(teacher_temperature=tt, student_temperature=ts)
        assert float(as_loss(t, s)) == pytest.approx(ref, rel=1e-5)
    # minimum over student logits is at the teacher's distribution (cross-entropy >= entropy)
    entropy = np.mean(-np.sum(np_softmax(t) * np.log(np_softmax(t)), -1))
    assert float(soft_label_loss(t, t)) == pytest.approx(entropy, rel=1e-5)
    assert float(soft_label_loss(t, s)) > entropy
    with pytest.raises(KslimValueError, match="teacher_temperature"):
        soft_label_loss(t, s, 0.0, 1.0)


def test_l2_loss_and_sample_weight():
    rng = np.random.default_rng(2)
    t, s = rng.normal(size=(4, 3, 3, 2)), rng.normal(size=(4, 3, 3, 2))
    per = ((t - s) ** 2).reshape(4, -1).mean(-1)
    assert float(l2_loss(t, s)) == pytest.approx(per.mean(), rel=1e-5)
    w = np.array([1.0, 0.0, 2.0, 1.0])
    assert float(L2Loss()(t, s, sample_weight=w)) == pytest.approx((per * w).sum() / 4, rel=1e-5)
    with pytest.raises(KslimValueError, match="differ"):
        l2_loss(t, s[..., :1])


def test_fsp_matrix_and_loss_with_different_spatial_sizes():
    rng = np.random.default_rng(3)
    a, b = rng.random((2, 8, 8, 3)).astype("float32"), rng.random((2, 4, 4, 5)).astype("float32")
    g = np.asarray(fsp_matrix(a, b))
    # the larger map is max-pooled to the smaller size (2x2 windows here), then G = a^T b / (h w)
    a_pooled = a.reshape(2, 4, 2, 4, 2, 3).max(axis=(2, 4))
    np.testing.assert_allclose(g, np_fsp(a_pooled, b), rtol=1e-5)
    assert g.shape == (2, 3, 5)
    c, d = rng.random((2, 8, 8, 3)).astype("float32"), rng.random((2, 4, 4, 5)).astype("float32")
    c_pooled = c.reshape(2, 4, 2, 4, 2, 3).max(axis=(2, 4))
    ref = np.mean((np_fsp(a_pooled, b) - np_fsp(c_pooled, d)) ** 2)
    assert float(fsp_loss(a, b, c, d)) == pytest.approx(ref, rel=1e-5)
    assert float(FSPLoss()((a, b), (c, d))) == pytest.approx(ref, rel=1e-5)
    assert float(fsp_loss(a, b, a, b)) == 0.0
    with pytest.raises(KslimValueError, match="channel"):
        fsp_loss(a, b, a[..., :2], b)


def test_feature_adaptor_is_a_1x1_conv_and_serializes():
    x = np.random.default_rng(4).random((2, 5, 5, 3)).astype("float32")
    layer = FeatureAdaptor(6)
    y = np.asarray(layer(x))
    kernel = np.asarray(layer.projection.kernel)  # (1, 1, 3, 6)
    np.testing.assert_allclose(y, np.einsum("nhwc,cd->nhwd", x, kernel[0, 0]), rtol=1e-5, atol=1e-6)
    clone = FeatureAdaptor.from_config(layer.get_config())
    assert clone.channels == 6 and y.shape == (2, 5, 5, 6)


# ---------------------------------------------------------------------------------------------
# layer lookup, nested models


def nested_teacher():
    inner_in = keras.Input((16, 16, 4))
    h = keras.layers.Conv2D(6, 3, padding="same", name="conv1")(inner_in)
    h = keras.layers.ReLU(name="relu1")(h)
    backbone = keras.Model(inner_in, h, name="backbone")
    head = keras.Sequential([keras.layers.GlobalAveragePooling2D(name="gap"),
                             keras.layers.Dense(10, name="fc")], name="head")
    inp = keras.Input(SHAPE)
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inp)
    x = backbone(x)
    out = head(x)
    model = keras.Model(inp, out, name="nested")
    model.trainable = False
    return model, backbone


def test_nested_paths_and_unique_names_tap_the_right_tensors():
    model, backbone = nested_teacher()
    assert resolve_layer(model, "backbone/conv1") == "backbone/conv1"
    assert resolve_layer(model, "conv1") == "backbone/conv1"  # unique at any depth
    assert resolve_layer(model, "head/fc") == "head/fc"
    fm = feature_model(model, ["backbone/conv1", "head/gap", "stem"])
    x, _ = data(4)
    out = fm(x)
    np.testing.assert_allclose(out["output"], model(x), rtol=1e-5, atol=1e-6)
    stem = model.get_layer("stem")(x)
    conv1 = backbone.get_layer("conv1")(stem)
    np.testing.assert_allclose(out["features"][0], conv1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["features"][1], np.mean(np.maximum(conv1, 0), axis=(1, 2)), rtol=1e-5, atol=1e-6)
    assert fm.count_params() == model.count_params()  # shared weights, nothing copied
    assert fm.weights[0] is model.weights[0]


def test_unknown_layer_lists_close_matches():
    model, _ = nested_teacher()
    with pytest.raises(ModelError, match=r"No layer 'backbone/conv2'.*backbone/conv1"):
        resolve_layer(model, "backbone/conv2")
    with pytest.raises(ModelError, match=r"block2_pw"):
        Distiller(tiny_student(), tiny_teacher(), pairs=[Pair("logits", "block2_pwx", "l2")])


# ---------------------------------------------------------------------------------------------
# Distiller: bad input


def test_bad_input_errors():
    student, teacher = tiny_student(), tiny_teacher()
    # channel mismatch without adaptor (teacher stage2 16 ch, student block3 32 ch)
    with pytest.raises(ModelError, match=r"channel counts differ.*stage2_block1_out.*adaptor=True"):
        Distiller(student, teacher, pairs=[Pair("stage2_block1_out", "block3_pw_relu", "l2")])
    # spatial mismatch: an adaptor cannot fix it
    with pytest.raises(ModelError, match=r"incompatible shapes.*stage3_block1_out.*block1_pw_relu"):
        Distiller(student, teacher, pairs=[Pair("stage3_block1_out", "block1_pw_relu", "l2", adaptor=True)])
    # trainable teacher: raise unless freeze_teacher=True
    trainable_teacher = resnet(input_shape=SHAPE, width=0.25, name="teacher_t")
    with pytest.raises(ModelError, match=r"teacher 'teacher_t' is trainable.*freeze_teacher=True"):
        Distiller(student, trainable_teacher)
    d = Distiller(student, trainable_teacher, freeze_teacher=True)
    assert trainable_teacher.trainable_weights == [] and d.teacher is trainable_teacher
    # different input signatures
    other = resnet(input_shape=(28, 28, 1), width=0.25, name="big_input")
    other.trainable = False
    with pytest.raises(ModelError, match=r"different input signatures.*16, 16, 1.*28, 28, 1"):
        Distiller(student, other)
    # loss / pair / argument errors
    with pytest.raises(KslimValueError, match=r"Unknown distillation loss 'soft_lable'.*soft_label"):
        Pair("logits", "logits", "soft_lable")
    with pytest.raises(KslimValueError, match="takes 2 layer"):
        Pair("a", "b", "fsp")
    with pytest.raises(KslimTypeError, match="keras.Model"):
        Distiller(student, "teacher.keras")
    with pytest.raises(ModelError, match="same model object"):
        Distiller(student, student)
    d = Distiller(student, teacher, hard_loss=SCE)
    with pytest.raises(KslimValueError, match="given twice"):
        d.compile(optimizer="adam", loss=SCE)


# ---------------------------------------------------------------------------------------------
# Distiller: training


def test_evaluate_reports_each_term_and_the_weighted_total():
    """test_step: every term equals the loss computed by hand on the same batch."""
    student, teacher = tiny_student(), tiny_teacher()
    x, y = data(32)

    def attention(t, s):  # user callable, teacher tensors first; channel counts may differ (16 vs 32)
        return keras.ops.square(keras.ops.mean(t, axis=-1) - keras.ops.mean(s, axis=-1))

    pairs = [
        Pair("logits", "logits", "soft_label", weight=0.5, temperature=4.0),
        Pair(("stem_relu", "stage1_block1_out"), ("stem_relu", "block1_pw_relu"), "fsp", weight=2.0,
             adaptor="auto"),
        ("stage2_block1_out", "block2_pw_relu", attention, 0.1),
    ]
    d = Distiller(student, teacher, pairs=pairs, hard_weight=0.7)
    d.compile(optimizer="adam", loss=SCE, metrics=["accuracy"])  # compile(loss=) is the hard loss
    assert d.pair_names == ["soft_label", "fsp", "attention"]
    assert len(d.adaptors) == 1  # block1_pw_relu 16 ch -> stage1 8 ch; stem_relu matches (8 ch)
    res = d.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)

    t_fm = feature_model(teacher, ["stem_relu", "stage1_block1_out", "stage2_block1_out"])(x, training=False)
    s_fm = feature_model(student, ["stem_relu", "block1_pw_relu", "block2_pw_relu"])(x, training=False)
    hard = float(SCE(y, s_fm["output"]))
    soft = float(soft_label_loss(t_fm["output"], s_fm["output"], 4.0, 4.0))
    adapted = d.adaptors[0](s_fm["features"][1])
    fsp = float(fsp_loss(t_fm["features"][0], t_fm["features"][1], s_fm["features"][0], adapted))
    att = float(np.mean((np.mean(t_fm["features"][2], -1) - np.mean(s_fm["features"][2], -1)) ** 2))
    for key, ref in (("hard_loss", hard), ("soft_label_loss", soft), ("fsp_loss", fsp), ("attention_loss", att)):
        assert res[key] == pytest.approx(ref, rel=1e-4, abs=1e-6), key
    assert res["loss"] == pytest.approx(0.7 * hard + 0.5 * soft + 2.0 * fsp + 0.1 * att, rel=1e-4)
    # predict() gives the student's output
    np.testing.assert_allclose(d.predict(x, verbose=0), student.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_fit_with_callbacks_tfdata_teacher_frozen_adaptor_dropped(tmp_path):
    import tensorflow as tf

    student, teacher = tiny_student(), tiny_teacher()
    n_student_params = student.count_params()
    teacher_before = [np.array(w) for w in teacher.weights]  # includes BN moving statistics
    student_before = [np.array(w) for w in student.trainable_weights]
    x, y = data(64)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(64, seed=0).batch(16)
    d = Distiller(student, teacher, hard_loss=SCE,
                  pairs=[Pair("logits", "logits", "soft_label", temperature=2.0),
                         Pair("stage2_block1_out", "block3_pw_relu", "l2", weight=0.1, adaptor=True)])
    d.compile(optimizer=keras.optimizers.Adam(1e-2), metrics=["accuracy"])
    assert len(d.trainable_weights) == len(student.trainable_weights) + 1  # + the adaptor kernel
    tb_dir = tmp_path / "tb"
    callbacks = [
        keras.callbacks.ModelCheckpoint(str(tmp_path / "best.weights.h5"), monitor="val_soft_label_loss", mode="min",
                                        save_weights_only=True, save_best_only=True),
        keras.callbacks.EarlyStopping(monitor="val_l2_loss", mode="min", patience=5),
        keras.callbacks.TensorBoard(str(tb_dir), update_freq="epoch", write_graph=False, profile_batch=0),
    ]
    hist = d.fit(ds, validation_data=ds.take(1), epochs=2, verbose=0, callbacks=callbacks, shuffle=False)
    for key in ("loss", "hard_loss", "soft_label_loss", "l2_loss", "accuracy", "val_soft_label_loss",
                "val_l2_loss"):
        assert len(hist.history[key]) == 2, key
    assert (tmp_path / "best.weights.h5").is_file()
    # TensorBoard shows each loss term
    tags = set()
    for root, _, files in os.walk(tb_dir / "train"):
        for f in files:
            for event in tf.compat.v1.train.summary_iterator(os.path.join(root, f)):
                tags.update(v.tag for v in event.summary.value)
    assert {"epoch_loss", "epoch_hard_loss", "epoch_soft_label_loss", "epoch_l2_loss"} <= tags
    # the teacher is never updated (weights and BN statistics bit-identical), the student is
    for before, w in zip(teacher_before, teacher.weights):
        np.testing.assert_array_equal(before, np.array(w))
    assert any(not np.array_equal(b, np.array(w)) for b, w in zip(student_before, student.trainable_weights))
    # the adaptor is not part of the student, which stays a plain Keras model
    assert student.count_params() == n_student_params
    assert not any(isinstance(layer, FeatureAdaptor) for layer in student.layers)
    path = tmp_path / "student.keras"
    student.save(path)
    reloaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(reloaded.predict(x[:8], verbose=0), student.predict(x[:8], verbose=0), atol=1e-5)


def test_distiller_save_load_roundtrip(tmp_path):
    student, teacher = tiny_student(), tiny_teacher()
    d = Distiller(student, teacher, hard_loss=SCE, hard_weight=0.5,
                  pairs=[Pair("logits", "logits", "soft_label", temperature=3.0, scale_by_temperature=True),
                         Pair("stage2_block1_out", "block2_pw_relu", L2Loss(), adaptor="auto", name="hint")])
    d.compile(optimizer="adam")
    d.optimizer.build(d.trainable_variables)
    x, y = data(16)
    before = d.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    path = tmp_path / "distiller.keras"
    d.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert isinstance(loaded, Distiller) and loaded.pair_names == ["soft_label", "hint"]
    assert loaded.hard_weight == 0.5 and loaded.pairs[0].loss_fn.scale_by_temperature
    assert not loaded.teacher.trainable_weights
    after = loaded.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    for key in ("loss", "hard_loss", "soft_label_loss", "hint_loss"):
        assert after[key] == pytest.approx(before[key], rel=1e-5), key


def test_label_free_distillation_has_no_hard_term():
    student, teacher = tiny_student(), tiny_teacher()
    d = Distiller(student, teacher, pairs=[Pair("logits", "logits", SoftLabelLoss(temperature=2.0))])
    d.compile(optimizer="adam")
    x, _ = data(16)
    res = d.evaluate(x, batch_size=16, verbose=0, return_dict=True)  # images only, no labels
    assert "hard_loss" not in res
    ref = float(soft_label_loss(teacher(x, training=False), student(x, training=False), 2.0, 2.0))
    assert res["soft_label_loss"] == pytest.approx(ref, rel=1e-4)
    assert res["loss"] == pytest.approx(ref, rel=1e-4)


_MIRRORED = textwrap.dedent("""
    import os, json
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from kslim.distill import Distiller, Pair
    from kslim.models import mobilenet_v1, resnet
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).random((32, 16, 16, 1), dtype=np.float32)
    y = np.random.default_rng(1).integers(0, 10, 32).astype(np.int32)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        teacher = resnet(input_shape=(16, 16, 1), width=0.25); teacher.trainable = False
        student = mobilenet_v1(input_shape=(16, 16, 1), width=0.25, dropout=0.0)
        d = Distiller(student, teacher, hard_loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      pairs=[Pair("logits", "logits", "soft_label", temperature=2.0),
                             Pair("stage2_block1_out", "block3_pw_relu", "l2", weight=0.1, adaptor="auto")])
        d.compile(optimizer="adam")
    dist = d.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    # reference: the same terms computed eagerly, outside the strategy
    from kslim.distill import feature_model, l2_loss, soft_label_loss
    t = feature_model(teacher, ["stage2_block1_out"])(x, training=False)
    s = feature_model(student, ["block3_pw_relu"])(x, training=False)
    hard = float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, s["output"]))
    soft = float(soft_label_loss(t["output"], s["output"], 2.0, 2.0))
    l2 = float(l2_loss(t["features"][0], d.adaptors[0](s["features"][0])))
    single = {"hard_loss": hard, "soft_label_loss": soft, "l2_loss": l2, "loss": hard + soft + 0.1 * l2}
    hist = d.fit(x, y, batch_size=16, epochs=1, verbose=0)
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "dist": dist, "single": single,
                      "fit_loss": hist.history["loss"][0]}))
""")


@pytest.mark.slow  # tests/test_distribute.py runs the pipeline's distillation under MirroredStrategy by default
def test_mirrored_strategy_two_cpu_replicas():
    """Under MirroredStrategy (2 logical CPUs) the reported losses equal the single-device ones."""
    import json

    proc = subprocess.run([sys.executable, "-c", _MIRRORED], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    for key in ("loss", "hard_loss", "soft_label_loss", "l2_loss"):
        assert out["dist"][key] == pytest.approx(out["single"][key], rel=1e-4), key
    assert np.isfinite(out["fit_loss"])
