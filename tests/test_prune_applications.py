"""Every keras.applications architecture of the issue prunes at 0.5 and still runs, smaller.

weights=None and the smallest input each model accepts, to stay fast. A group that must stay
unpruned (e.g. NASNet's adjust-concat added to a conv) is fine; a crash or a wrong shape is not.
"""

import keras
import numpy as np
import pytest

from kslim.analysis import flops
from kslim.prune import L1NormFilterPruner

A = keras.applications
SMALL = dict(input_shape=(32, 32, 3), classes=10)
APPS = {
    "MobileNet": (A.MobileNet, SMALL),
    "MobileNetV2": (A.MobileNetV2, SMALL),
    "MobileNetV3Small": (A.MobileNetV3Small, SMALL),
    "ResNet50": (A.ResNet50, SMALL),
    "ResNet50V2": (A.ResNet50V2, SMALL),
    "DenseNet121": (A.DenseNet121, SMALL),
    "EfficientNetB0": (A.EfficientNetB0, SMALL),
    # NASNetMobile needs 224x224 with its top; without it any input >= 32 works
    "NASNetMobile": (A.NASNetMobile, dict(input_shape=(32, 32, 3), include_top=False, pooling="avg")),
    "InceptionV3": (A.InceptionV3, dict(input_shape=(75, 75, 3), classes=10)),
    "Xception": (A.Xception, dict(input_shape=(71, 71, 3), classes=10)),
}
# the biggest graphs (~10-20 s each on 2 cores) run with `pytest -m slow`; add a name here to move it
SLOW = {"NASNetMobile", "InceptionV3", "Xception"}  # the suite's 15-minute budget (2026-12-02: 16:46 without)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in APPS]
)
def test_application_prunes_at_half(name):
    fn, kwargs = APPS[name]
    model = fn(weights=None, **kwargs)
    pruner = L1NormFilterPruner(model)
    assert len(pruner.groups) >= 10, pruner.graph
    small = pruner.prune(0.5)
    x = np.random.default_rng(0).uniform(0, 255, size=(1, *model.input_shape[1:])).astype("float32")
    y = small(x)
    assert small.output_shape == model.output_shape and tuple(y.shape) == (1, *model.output_shape[1:])
    assert np.all(np.isfinite(np.asarray(y)))
    before, after = flops(model).macs, flops(small).macs
    assert after < 0.6 * before, (before, after)
    assert small.count_params() < model.count_params()
