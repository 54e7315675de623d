"""kslim.graph.keras_graph: the one owner of Keras' graph and private API (walk, rebuild, composites)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from kslim.graph import keras_graph as kg

TOL = 1e-5
ROOT = Path(__file__).resolve().parents[1]


def test_keras_internals_still_work():
    # fails loudly, naming the private attribute, when a Keras upgrade breaks one
    assert kg.check_keras_internals() == keras.__version__


def test_only_keras_graph_touches_keras_internals():
    pattern = re.compile(r"keras\.src\.|\._nodes_by_depth|\._keras_history|\._run_through_graph|"
                         r"\._functional\b|\._inputs_struct|\._outputs_struct|\._flat_arguments|"
                         r"\._assert_input_compatibility|\._flatten_layers|\._inbound_nodes|\._seed_generators")
    offenders = []
    for path in sorted((ROOT / "kslim").rglob("*.py")):
        if path.name == "keras_graph.py":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) and "TODO(keras_graph)" not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, "Keras internals outside kslim/graph/keras_graph.py:\n" + "\n".join(offenders)


class Block(layers.Layer):
    """A composite layer: conv-BN-relu-conv with a residual, written with sublayers and keras.ops."""

    def __init__(self, filters, **kw):
        super().__init__(**kw)
        self.filters = filters
        self.c1 = layers.Conv2D(filters, 3, padding="same", name="c1")
        self.bn = layers.BatchNormalization(name="bn")
        self.c2 = layers.Conv2D(filters, 3, padding="same", name="c2")

    def call(self, x, training=None):
        y = keras.ops.relu(self.bn(self.c1(x), training=training))
        return x + self.c2(y)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


class Holder(layers.Layer):
    """Owns a weight used directly in call(): it becomes a WeightHolder node of the expansion."""

    def build(self, shape):
        self.scale = self.add_weight(shape=(shape[-1],), initializer="ones", name="scale")

    def call(self, x):
        return x * self.scale


class RawTF(layers.Layer):
    """Calls TensorFlow directly: cannot be traced, stays opaque."""

    def call(self, x):
        import tensorflow as tf

        return tf.nn.relu(x)


class ValueBranch(layers.Layer):
    """Python control flow on a tensor value: cannot be traced symbolically."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.fc = layers.Dense(4)  # as many units as the input: the output shape is the input's

    def build(self, shape):
        self.fc.build(shape)

    def call(self, x):
        if keras.ops.convert_to_numpy(keras.ops.sum(x)) > 0:
            return self.fc(x)
        return x

    def compute_output_shape(self, shape):
        return shape


def _composite_model():
    inp = keras.Input((8, 8, 4), name="img")
    x = layers.Conv2D(4, 3, padding="same", name="stem")(inp)
    blk = Block(4, name="blk")
    x = blk(blk(x))  # shared: called twice
    x = Holder(name="holder")(x)
    x = RawTF(name="raw")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, layers.Dense(3, name="head")(x), name="composite")


def test_expand_composites_sees_through_and_shares_weights():
    model = _composite_model()
    reasons = {}
    expanded = kg.expand_composites(model, reasons=reasons)
    assert expanded is not model
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 4)).astype("float32")
    np.testing.assert_allclose(expanded(x), model(x), atol=TOL)
    paths, _ = kg.leaf_layers(expanded)
    assert {"blk/c1", "blk/bn", "blk/c2", "holder/scale", "raw", "head"} <= set(paths)
    assert paths["holder/scale"].weights[0] is model.get_layer("holder").scale  # the variable itself
    assert paths["blk/c1"] is model.get_layer("blk").c1  # the same layer object: weights shared
    sub = expanded.get_layer("blk")
    assert isinstance(sub, keras.Model) and len(kg.layer_nodes(sub)) == 2  # still one shared block
    assert "raw" in reasons and "cannot be traced" in reasons["raw"] and "holder" not in reasons


def test_untraceable_composite_stays_opaque_with_reason():
    inp = keras.Input((4,))
    model = keras.Model(inp, ValueBranch(name="vb")(inp))
    reasons = {}
    assert kg.expand_composites(model, reasons=reasons) is model
    assert "cannot be traced" in reasons["vb"]


def test_rebuild_keeps_nesting_and_sharing():
    inner = keras.Sequential([keras.Input((6,)), layers.Dense(5, name="fc")], name="base")
    a, b = keras.Input((6,), name="a"), keras.Input((6,), name="b")
    out = layers.Add(name="add")([inner(a), inner(b)])
    model = keras.Model({"a": a, "b": b}, out, name="siamese")
    seen = []

    def leaf(node, path, args, kwargs):
        seen.append(path)
        return node.operation(*args, **kwargs)

    new = kg.rebuild(model, leaf)
    assert "base/fc" in seen and seen.count("base/fc") == 1  # the shared model is rebuilt once
    assert isinstance(new.get_layer("base"), keras.Model) and len(kg.layer_nodes(new.get_layer("base"))) == 2
    x = {"a": np.ones((2, 6), "float32"), "b": np.zeros((2, 6), "float32")}
    np.testing.assert_allclose(new(x), model(x), atol=TOL)


def test_resolve_path_accepts_unique_bare_names():
    paths = ["stem", "base/conv", "base/bn", "head/conv"]
    assert kg.resolve_path(paths, "bn") == "base/bn"
    assert kg.resolve_path(paths, "base/conv") == "base/conv"
    with pytest.raises(Exception, match="ambiguous"):
        kg.resolve_path(paths, "conv")
    with pytest.raises(Exception, match="Close matches"):
        kg.resolve_path(paths, "stemm")


def test_importing_kslim_does_not_import_keras_graph_internals():
    code = "import kslim, sys; print('keras.src.models.functional' in sys.modules)"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"
