"""BatchNormalization folding reads the rule registry (kslim.rules LayerRule.bn_fold): subclasses of a
foldable layer fold, a subclass that overrides call() does not, the folded model equals the original."""

import keras
import numpy as np

from kslim.quant.fold import fold_batch_norm, fold_kind


@keras.saving.register_keras_serializable("kslim_test")
class PlainConv(keras.layers.Conv2D):
    """A user's subclass that only adds a docstring: the maths are Conv2D's."""


@keras.saving.register_keras_serializable("kslim_test")
class ScaledConv(keras.layers.Conv2D):
    def call(self, x):
        return 2.0 * super().call(x)


def _bn_model(conv):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = conv(inp)
    bn = keras.layers.BatchNormalization(name="bn")
    x = bn(x)
    m = keras.Model(inp, keras.layers.ReLU()(x))
    rng, c = np.random.default_rng(0), bn.gamma.shape[0]
    bn.set_weights([rng.uniform(0.5, 2, c), rng.normal(size=c), rng.normal(size=c), rng.uniform(0.5, 2, c)])
    return m


def test_fold_follows_the_registry():
    assert fold_kind(keras.layers.Conv2D(4, 3)) == "kernel"
    assert fold_kind(PlainConv(4, 3)) == "kernel"
    assert fold_kind(ScaledConv(4, 3)) is None
    assert fold_kind(keras.layers.DepthwiseConv1D(3)) == "depthwise"
    assert fold_kind(keras.layers.LayerNormalization()) is None
    x = np.random.default_rng(1).random((2, 8, 8, 3), dtype=np.float32)
    for conv, folds in ((PlainConv(4, 3, name="c"), True), (ScaledConv(4, 3, name="c"), False),
                        (keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="c"), True)):
        m = _bn_model(conv)
        f = fold_batch_norm(m)
        names = [type(layer).__name__ for layer in f.layers]
        assert ("BatchNormalization" not in names) == folds, names
        np.testing.assert_allclose(np.asarray(f(x)), np.asarray(m(x)), atol=1e-5)


@keras.saving.register_keras_serializable("kslim_test")
class TaggedDense(keras.layers.Dense):
    """A subclass with its own constructor argument: QAT cannot know what it changes."""

    def __init__(self, units, tag="x", **kwargs):
        super().__init__(units, **kwargs)
        self.tag = tag

    def get_config(self):
        return {**super().get_config(), "tag": self.tag}


def test_a_subclass_with_extra_constructor_arguments_stays_float():
    from kslim.quant import quant_aware

    inp = keras.Input((4,))
    m = keras.Model(inp, keras.layers.Dense(2, name="out")(TaggedDense(3, tag="y", name="td")(inp)))
    q = quant_aware(m)
    assert "tag" in q.kslim_unquantized["td"] and "out" not in q.kslim_unquantized
    plain = keras.Model(inp, keras.layers.Dense(2, name="out")(PlainDense(3, name="pd")(inp)))
    assert "pd" not in quant_aware(plain).kslim_unquantized


@keras.saving.register_keras_serializable("kslim_test")
class PlainDense(keras.layers.Dense):
    pass
