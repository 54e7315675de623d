"""Attention-head pruning (kslim.prune.heads) on a tiny ViT-like model with keras.layers.MultiHeadAttention."""

import keras
import numpy as np
import pytest
from keras import layers

from kslim.errors import KslimValueError, ModelError
from kslim.prune.heads import head_importance, plan_heads, prune_heads

HEADS, KEY_DIM = 4, 4


def tiny_vit():
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 1))
    x = layers.Conv2D(16, 4, strides=4, name="patches")(inp)           # 4x4 patches -> 16 tokens of 16
    x = layers.Reshape((16, 16))(x)
    y = layers.LayerNormalization(name="ln1")(x)
    y = layers.MultiHeadAttention(HEADS, KEY_DIM, name="mha")(y, y)
    x = layers.Add()([x, y])
    y = layers.LayerNormalization(name="ln2")(x)
    y = layers.Dense(16, activation="gelu", name="mlp")(y)
    x = layers.Add()([x, y])
    out = layers.Dense(3, name="logits")(layers.GlobalAveragePooling1D()(x))
    return keras.Model(inp, out, name="tiny_vit")


def images(n=4):
    return np.random.default_rng(1).normal(size=(n, 16, 16, 1)).astype("float32")


def zero_value_heads(model, heads):
    mha = model.get_layer("mha")
    k, b = mha._value_dense.get_weights()
    k[:, heads, :] = 0
    b[heads, :] = 0
    mha._value_dense.set_weights([k, b])


def test_pruning_zeroed_heads_is_exact():
    model = tiny_vit()
    x = images()
    zero_value_heads(model, [1, 3])
    ref = np.asarray(model(x))
    small = prune_heads(model, {"mha": [1, 3]})
    mha = small.get_layer("mha")
    assert mha.num_heads == 2 and model.get_layer("mha").num_heads == HEADS   # the original is untouched
    assert tuple(mha._query_dense.kernel.shape) == (16, 2, KEY_DIM)
    assert tuple(mha._output_dense.kernel.shape) == (2, KEY_DIM, 16)
    np.testing.assert_allclose(np.asarray(small(x)), ref, atol=1e-5)
    np.testing.assert_array_equal(mha._key_dense.kernel.numpy(), model.get_layer("mha")._key_dense.kernel.numpy()[:, [0, 2]])
    assert small.count_params() < model.count_params()
    # the pruned model is an ordinary model: it trains
    small.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert np.isfinite(small.fit(images(8), np.arange(8) % 3, epochs=1, verbose=0).history["loss"][-1])


def test_head_importance_by_weight_norm():
    model = tiny_vit()
    mha = model.get_layer("mha")
    for dense in (mha._query_dense, mha._key_dense, mha._value_dense):
        k, b = dense.get_weights()
        k[:, 2] *= 0.01
        dense.set_weights([k, b])
    o, ob = mha._output_dense.get_weights()
    o[2] *= 0.01
    mha._output_dense.set_weights([o, ob])
    imp = head_importance(model, "mha")
    assert imp.shape == (HEADS,) and int(np.argmin(imp)) == 2
    assert plan_heads(model, 0.25) == {"mha": [2]}
    assert len(plan_heads(model, 0.99)["mha"]) == HEADS - 1          # at least one head kept
    assert prune_heads(model, plan_heads(model, 0.5)).get_layer("mha").num_heads == 2


def test_bad_input():
    model = tiny_vit()
    with pytest.raises(KslimValueError, match="at least one must remain"):
        prune_heads(model, {"mha": [0, 1, 2, 3]})
    with pytest.raises(KslimValueError, match="must be in \\[0, 4\\)"):
        prune_heads(model, {"mha": [4]})
    with pytest.raises(ModelError, match="No MultiHeadAttention layer 'attn'"):
        prune_heads(model, {"attn": [0]})
    with pytest.raises(KslimValueError, match="no MultiHeadAttention"):
        prune_heads(keras.Sequential([keras.Input((3,)), layers.Dense(2)]), {"mha": [0]})
