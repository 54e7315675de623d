"""Graph repairs the model zoo needed (issue 13): patterns keras-hub writes that int8 or pruning cannot take as-is.

* ``ops.pad(x, ..., constant_values=-inf)`` before a max pool (keras-hub's ResNetV2 stem): int8 cannot
  hold ``-inf``; :func:`kslim.graph.keras_graph.replace_infinite_pool_pads` makes it an edge pad, which
  leaves every max-pool result unchanged when each pooling window holds at least one real value.
* batch-dependent shapes in composite layers (``ops.tile(token, (B, 1, 1))`` with ``B = ops.shape(x)[0]``,
  ``B // n``, ``ops.broadcast_to`` with the traced ``None`` batch): repaired when a composite is expanded,
  so DeiT, Swin, GPT-2 and FNet prune and the pruned model runs on any batch size.
"""

import numpy as np
import pytest

from kslim.errors import KslimValueError

from kslim.graph import keras_graph as kg

NEG_INF = float("-inf")


def _pad_pool_model(pad=((0, 0), (1, 1), (1, 1), (0, 0)), value=NEG_INF, pool=3, strides=2, extra_use=False,
                    nested=False):
    import keras
    from keras import layers, ops

    def stem(inp):
        x = layers.Conv2D(8, 3, padding="same", name="conv")(inp)   # negative values too: no ReLU first
        p = ops.pad(x, pad, constant_values=value)
        y = layers.MaxPooling2D(pool, strides=strides, name="pool")(p)
        if extra_use:
            y = layers.Add()([y, layers.MaxPooling2D(pool, strides=strides)(ops.abs(p))])
        return y

    inp = keras.Input((16, 16, 3), name="image")
    if nested:
        sub_in = keras.Input((16, 16, 3))
        x = keras.Model(sub_in, stem(sub_in), name="stem")(inp)
    else:
        x = stem(inp)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, layers.Dense(4, name="logits")(x), name="pad_pool")


def _images(n=64, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 16, 16, 3)).astype("float32")


# ------------------------------------------------------------------------------------------ -inf pads
@pytest.mark.parametrize("pad, pool, strides, value, nested", [
    (((0, 0), (1, 1), (1, 1), (0, 0)), 3, 2, NEG_INF, False),    # keras-hub ResNetV2 stem
    (((0, 0), (2, 1), (0, 2), (0, 0)), 3, 1, NEG_INF, False),    # wider and asymmetric: two edge steps
    (((0, 0), (1, 1), (1, 1), (0, 0)), 2, 2, -3.0e38, False),    # a huge finite stand-in for -inf
    (((0, 0), (1, 1), (1, 1), (0, 0)), 3, 2, NEG_INF, True),     # inside a nested model
])
def test_infinite_pad_becomes_edge_pad_with_identical_max_pool(pad, pool, strides, value, nested):
    # Exact for every input when every pooling window holds a real value (pad widths < pool size, valid
    # pooling, batch/channel axes not padded): the copied edge value is a real value of that same window.
    model = _pad_pool_model(pad, value, pool, strides, nested=nested)
    new, paths = kg.replace_infinite_pool_pads(model)
    assert len(paths) == 1 and (paths[0].startswith("stem/") == nested)
    assert new.name == model.name and new.count_params() == model.count_params()
    x = _images() * 10.0   # far outside any range: the result does not depend on calibration data
    want, got = np.asarray(model(x)), np.asarray(new(x))
    assert np.isfinite(want).all() and np.array_equal(want, got)
    ops = [type(n.operation).__name__ for m in [new] + [l for l in new.layers if kg.is_graph_model(l)]
           for n in kg.nodes(m)]
    assert "Pad" in ops and all(getattr(n.operation, "mode", "symmetric") == "symmetric"
                                for m in [new] + [l for l in new.layers if kg.is_graph_model(l)]
                                for n in kg.nodes(m) if type(n.operation).__name__ == "Pad")


@pytest.mark.parametrize("case", ["zero_pad", "pad_as_wide_as_pool", "channel_pad", "other_consumer"])
def test_pads_without_the_guarantee_are_left_alone(case):
    kwargs = {"zero_pad": dict(value=0.0),
              "pad_as_wide_as_pool": dict(pad=((0, 0), (2, 2), (2, 2), (0, 0)), pool=2),  # a window of pad only
              "channel_pad": dict(pad=((0, 0), (1, 1), (1, 1), (0, 1))),
              "other_consumer": dict(extra_use=True)}[case]
    model = _pad_pool_model(**kwargs)
    new, paths = kg.replace_infinite_pool_pads(model)
    assert new is model and paths == []


def test_ptq_int8_of_infinite_pad_model_converts_and_matches_keras():
    from kslim.lite import convert
    from kslim.quant import quant_post_static

    model = _pad_pool_model()
    x = _images(128)
    ref = np.asarray(model(x))
    lites = [quant_post_static(model, x, algo="abs_max"),
             convert(model, quantize="int8", representative_data=x, check=False)]
    try:
        from kslim.quant import quant_post_litert

        lites.append(quant_post_litert(model, "int8", x, 128, algo="abs_max", check=False))  # LiteRT's quantizer
    except KslimValueError:  # ai-edge-quantizer not installed
        pass
    for lite in lites:
        assert lite.float_ops == [] and lite.precision == "int8"
        ops = lite.ops()
        assert ops.get("MIRROR_PAD") == 1 and "PADV2" not in ops and ops.get("MAX_POOL_2D") == 1
        pad = next(d for d in lite.describe_ops() if d["op"] == "MIRROR_PAD")
        assert pad["inputs"][0]["dtype"] == "int8" and pad["outputs"][0]["dtype"] == "int8"
        got = lite.predict(x)
        corr = np.corrcoef(got.ravel(), ref.ravel())[0, 1]
        err = np.abs(got - ref).max() / np.ptp(ref)
        assert corr > 0.99 and err < 0.05, (corr, err)   # measured: corr 0.99996, err 1.1 % of the output range


# ------------------------------------------------------------------------------------------ batch-dependent shapes
def _token_block_classes():
    import keras
    from keras import layers, ops

    class ClassToken(layers.Layer):   # DeiT / ViT style: a learnt token tiled over the batch
        def build(self, input_shape):
            self.token = self.add_weight(shape=(1, 1, input_shape[-1]), name="token")

        def call(self, x):
            batch = ops.shape(x)[0]
            return ops.concatenate([ops.tile(self.token, (batch, 1, 1)), x], axis=1)

    class Windows(layers.Layer):      # Swin style: B // n windows and back, sizes from ops.shape
        def __init__(self, units, **kwargs):
            super().__init__(**kwargs)
            self.inner = layers.Dense(units, activation="relu")
            self.out = layers.Dense(8)

        def call(self, x):
            b, n, c = ops.shape(x)
            windows = ops.reshape(x, (b * 2, n // 2, c))
            y = self.out(self.inner(windows))
            back = ops.reshape(y, (ops.shape(y)[0] // 2, n, c))
            return back + ops.broadcast_to(ops.mean(x, axis=1, keepdims=True), ops.shape(x))

    return ClassToken, Windows


def _token_model():
    import keras
    from keras import layers

    ClassToken, Windows = _token_block_classes()
    inp = keras.Input((8, 4), name="seq")
    x = layers.Dense(8, name="embed")(inp)
    x = ClassToken(name="cls")(x)                   # (B, 9, 8)
    x = layers.ZeroPadding1D((0, 1))(x)              # (B, 10, 8)
    x = Windows(16, name="windows")(x)
    return keras.Model(inp, layers.Dense(3, name="logits")(layers.Flatten()(x)), name="tokens")


def test_batch_dependent_composites_are_expanded_for_any_batch_size():
    from kslim.graph import rules

    model = _token_model()
    reasons = {}
    expanded = kg.expand_composites(model, rules.is_known, reasons)
    assert reasons == {}, reasons            # before: "cannot be traced symbolically (... NoneType ...)"
    ops = {type(n.operation).__name__ for m in expanded.layers if kg.is_graph_model(m) for n in kg.nodes(m)}
    assert "BatchBroadcast" in ops and "Tile" not in ops and "BroadcastTo" not in ops
    x = np.random.default_rng(0).standard_normal((7, 8, 4)).astype("float32")   # traced at 3 and 5
    for n in (7, 1):
        assert np.allclose(model(x[:n]), expanded(x[:n]), atol=1e-5)


def test_batch_dependent_composite_prunes_and_runs_on_another_batch_size(tmp_path):
    import keras

    from kslim.prune import L1NormFilterPruner

    model = _token_model()
    small = L1NormFilterPruner(model).prune(0.5)
    assert small.count_params() < model.count_params()
    x = np.random.default_rng(1).standard_normal((11, 8, 4)).astype("float32")
    assert small.predict(x, batch_size=11, verbose=0).shape == (11, 3)
    assert small.predict(x[:2], verbose=0).shape == (2, 3)
    path = tmp_path / "small.keras"
    small.save(path)
    again = keras.saving.load_model(path, custom_objects=dict(zip(("ClassToken", "Windows"), _token_block_classes())))
    assert np.allclose(again.predict(x, verbose=0), small.predict(x, verbose=0), atol=1e-5)


def test_batch_dependence_other_than_the_first_axis_stays_opaque():
    import keras
    from keras import layers, ops

    class Transposed(layers.Layer):    # puts the batch size on the last axis: no batch-free graph exists
        def call(self, x):
            return ops.reshape(ops.transpose(x), (4, ops.shape(x)[0]))

    inp = keras.Input((4,))
    model = keras.Model(inp, layers.Dense(2)(ops.transpose(Transposed(name="t")(layers.Dense(4)(inp)))))
    reasons = {}
    kg.expand_composites(model, None, reasons)
    assert list(reasons) == ["t"]


@pytest.mark.parametrize("name", ["hub_deit", "hub_swin"])
def test_keras_hub_deit_and_swin_prune_and_run_on_another_batch_size(name):
    pytest.importorskip("keras_hub")
    from kslim.prune import L1NormFilterPruner
    from kslim.testing.zoo import ZOO, sample_inputs

    model = ZOO[name].build()
    small = L1NormFilterPruner(model).prune(0.3)
    assert small.count_params() < model.count_params()
    x = sample_inputs(model, 7, seed=4)               # composites were traced at batch 3 and 5
    assert small.predict(x, batch_size=7, verbose=0).shape == (7, 4)
    assert small.predict(x[:1], verbose=0).shape == (1, 4)


# ----------------------------------------------------- layers Keras' auto-config cannot serialise
def _identity_policy_model():
    # keras-hub's Swin builds ``Identity(dtype=policy_object)``: Keras' auto-config raises
    # NotImplementedError for it, yet the base-layer config (name, trainable, dtype) is all it has.
    import keras
    from keras import layers

    inp = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    x = layers.Identity(dtype=keras.DTypePolicy("float32"), name="drop_path")(x)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, layers.Dense(4, name="logits")(x))


def test_identity_built_with_a_policy_object_prunes_and_quantizes():
    from kslim.prune import L1NormFilterPruner
    from kslim.quant import quant_aware

    model = _identity_policy_model()
    with pytest.raises(NotImplementedError):
        model.get_layer("drop_path").get_config()
    assert kg.layer_config(model.get_layer("drop_path"))["name"] == "drop_path"
    x = _images(8, seed=1)[:, :8, :8]
    pruned = L1NormFilterPruner(model).prune(0.5)
    assert pruned.get_layer("conv1").filters == 4 and pruned.count_params() < model.count_params()
    assert pruned(x).shape == (8, 4)
    q = quant_aware(model)
    assert q.kslim_unquantized == {} and np.isfinite(np.asarray(q(x))).all()


def test_a_layers_own_failing_get_config_is_not_papered_over():
    import keras

    class Broken(keras.layers.Layer):
        def call(self, x):
            return x

        def get_config(self):
            raise TypeError("broken on purpose")

    with pytest.raises(TypeError, match="broken on purpose"):
        kg.layer_config(Broken())
