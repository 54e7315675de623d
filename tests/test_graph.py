"""Channel-dependency graph: groups, members and index mappings on small hand-built models."""

import keras
import numpy as np
import pytest
from keras import layers

from kslim.errors import KslimTypeError, KslimValueError, ModelError
from kslim.graph import ChannelGroup, DependencyGraph, Member, build_dependency_graph


def _member(group, layer, role=None):
    ms = [m for m in group.members_of(layer) if role is None or m.role == role]
    assert ms, f"no member on {layer} in {group}"
    return ms


def test_residual_add_shares_one_group():
    import kslim

    g = build_dependency_graph(kslim.models.resnet(width=0.25))
    assert isinstance(g, DependencyGraph)
    stem = g.group("stem_conv")
    assert stem.layer_names == ["stem_conv", "stage1_block1_conv2"]
    assert g.group("stage1_block1_conv2") is stem
    assert stem.prunable and stem.size == 8
    # BN statistics, the next block's inputs and the projection shortcut's input are members
    assert {m.layer_name for m in stem.members} >= {"stem_bn", "stage1_block1_bn2", "stage2_block1_conv1",
                                                    "stage2_block1_proj"}
    assert g.classifiers == ["logits"]
    logits = g.group("logits")
    assert not logits.prunable and "model output" in logits.reason
    assert not g.groups[0].prunable and "model input" in g.groups[0].reason


def test_concatenate_offsets():
    inp = keras.Input((8, 8, 2))
    a = layers.Conv2D(3, 1, name="a")(inp)
    b = layers.Conv2D(5, 1, name="b")(inp)
    x = layers.Concatenate(name="cat")([a, b])
    out = layers.Conv2D(2, 1, name="head")(x)
    g = build_dependency_graph(keras.Model(inp, out))
    (ma,) = _member(g.group("a"), "head", "input")
    (mb,) = _member(g.group("b"), "head", "input")
    assert ma.axis == 2 and ma.indices([0, 2]).tolist() == [0, 2]
    assert mb.indices([0, 4]).tolist() == [3, 7]
    assert g.group("a") is not g.group("b")


def test_flatten_dense_expansion_and_depthwise_multiplier():
    inp = keras.Input((3, 3, 2))
    x = layers.Conv2D(4, 1, name="c")(inp)
    x = layers.DepthwiseConv2D(1, depth_multiplier=2, name="dw")(x)   # 8 channels, 2 per c-channel
    x = layers.Flatten(name="flat")(x)                               # 9 positions x 8 channels
    out = layers.Dense(3, name="fc")(x)
    g = build_dependency_graph(keras.Model(inp, out))
    grp = g.group("c")
    (dwk,) = [m for m in _member(grp, "dw") if m.weight_name == "kernel"]
    assert dwk.axis == 2 and dwk.indices([1]).tolist() == [1]
    (dwb,) = [m for m in _member(grp, "dw") if m.weight_name == "bias"]
    assert dwb.indices([1]).tolist() == [2, 3]
    (fc,) = _member(grp, "fc", "input")
    assert fc.axis == 0
    assert fc.indices([1]).tolist() == [p * 8 + j for p in range(9) for j in (2, 3)]


def test_squeeze_excite_multiply_and_separable():
    inp = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 1, name="expand")(inp)
    s = layers.GlobalAveragePooling2D(keepdims=True)(x)
    s = layers.Conv2D(2, 1, activation="relu", name="se_reduce")(s)
    s = layers.Conv2D(6, 1, activation="sigmoid", name="se_expand")(s)
    x = layers.Multiply(name="se")([x, s])
    x = layers.SeparableConv2D(4, 3, depth_multiplier=2, name="sep")(x)
    out = layers.Dense(2, name="head")(layers.GlobalAveragePooling2D()(x))
    g = build_dependency_graph(keras.Model(inp, out))
    grp = g.group("expand")
    assert grp.layer_names == ["expand", "se_expand"]
    assert g.group("se_reduce").prunable
    dk, pk = sorted(_member(grp, "sep", "input"), key=lambda m: m.weight_index)
    assert dk.indices([1]).tolist() == [1]          # depthwise kernel: one slice per input channel
    assert pk.indices([1]).tolist() == [2, 3]       # pointwise rows: depth_multiplier per input channel
    assert "se_expand" in str(grp) and "Member(" in str(grp)


def test_unknown_layer_blocks_groups_with_reason():
    inp = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, name="conv")(inp)
    x = layers.GroupNormalization(groups=2, name="gn")(x)
    y = layers.Conv2D(4, 3, name="conv2")(x)
    y = layers.Reshape((8, 8), name="reshape")(y)
    out = layers.Dense(2, name="head")(layers.Flatten()(y))
    g = build_dependency_graph(keras.Model(inp, out))
    conv = g.group("conv")
    assert not conv.prunable and "'gn'" in conv.reason and "GroupNormalization" in conv.reason
    conv2 = g.group("conv2")
    assert not conv2.prunable and "reshape" in conv2.reason


def test_layer_norm_carries_channels_approximately():
    inp = keras.Input((6, 8))
    x = layers.Dense(8, name="fc1")(inp)
    x = layers.LayerNormalization(name="ln")(x)
    out = layers.Dense(2, name="head")(layers.Dense(4, name="fc2")(x))
    g = build_dependency_graph(keras.Model(inp, out))
    fc1, fc2 = g.group("fc1"), g.group("fc2")
    assert fc1.prunable and {"ln"} <= {m.layer_name for m in fc1.members} and not fc1.exact
    assert fc2.prunable and fc2.exact


def test_reshape_keeping_channels_and_python_ops():
    inp = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 1, name="conv")(inp)
    x = layers.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)   # keras.ops nodes (hard-sigmoid as in MobileNetV3)
    s = layers.GlobalAveragePooling2D()(x)
    s = layers.Reshape((1, 1, 4), name="rs")(s)
    x = layers.Multiply()([x, s])
    out = layers.Dense(2, name="head")(layers.GlobalAveragePooling2D()(x))
    g = build_dependency_graph(keras.Model(inp, out))
    assert g.group("conv").prunable, g.group("conv").reason


def test_nested_models_are_walked_into_with_paths():
    backbone = keras.Sequential([keras.Input((8, 8, 3)), layers.Conv2D(4, 3, name="b_conv"),
                                 layers.BatchNormalization(name="b_bn")], name="backbone")
    inp = keras.Input((8, 8, 3))
    x = layers.GlobalAveragePooling2D()(backbone(inp))
    out = layers.Dense(2, name="head")(x)
    g = build_dependency_graph(keras.Model(inp, out))
    assert g.nested
    assert "backbone/b_conv" in g.layers and "backbone/b_bn" in g.layers and "b_conv" not in g.layers
    grp = g.group("b_conv")  # a bare name unique at every depth resolves to its path
    assert grp is g.group("backbone/b_conv")
    assert grp.prunable and {"backbone/b_bn", "head"} <= {m.layer_name for m in grp.members}


def test_group_lookup_errors():
    import kslim

    g = build_dependency_graph(kslim.models.vgg(width=0.25))
    with pytest.raises(KslimValueError, match="nope"):
        g.group("nope")
    with pytest.raises(ModelError, match="bn1_1.*conv1_1"):
        g.group("bn1_1")


def test_bad_models():
    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ModelError, match="subclassed"):
        build_dependency_graph(Sub())
    with pytest.raises(KslimTypeError):
        build_dependency_graph("model")
    with pytest.raises(ModelError, match="input shape"):
        build_dependency_graph(keras.Sequential([layers.Dense(2)]))


def test_member_indices_doc():
    m = Member("fc", 0, 0, offset=1, multiplier=2, period=5, repeats=2)
    assert m.indices([0]).tolist() == [1, 2, 6, 7]
    assert ChannelGroup("x", 3).prunable
    assert np.array_equal(Member("c", 0, 3).indices([2, 0]), [0, 2])


def test_add_of_conv_and_concat_splits_the_group():
    inp = keras.Input((8, 8, 3))
    a = layers.Conv2D(4, 1, name="a")(inp)
    b = layers.Conv2D(1, 1, name="b")(inp)
    c = layers.Conv2D(3, 1, name="c")(inp)
    x = layers.Add(name="add")([a, layers.Concatenate(name="cat")([b, c])])
    out = layers.Dense(2, name="head")(layers.GlobalAveragePooling2D()(layers.Conv2D(5, 1, name="d")(x)))
    g = build_dependency_graph(keras.Model(inp, out))
    gb, gc = g.group("b"), g.group("c")
    assert (gb.size, gc.size) == (1, 3) and gb.prunable and gc.prunable
    assert gb.layer_names == ["b", "a"] and gc.layer_names == ["c", "a"]
    assert g.groups_for("a") == [gb, gc]
    (ma,) = _member(gc, "a", "filter")
    assert ma.indices([0, 2]).tolist() == [1, 3]
    (md,) = _member(gc, "d", "input")
    assert md.indices([0]).tolist() == [1]
    with pytest.raises(ModelError, match="'a' are split.*'b', 'c'"):
        g.group("a")
