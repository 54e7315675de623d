"""Sensitivity analysis, ratios from sensitivities, the plot, and checkpoint/resume."""

import json

import keras
import numpy as np
import pytest

from kslim.errors import KslimFileError, KslimValueError, ModelError
from kslim.prune import L1NormFilterPruner, L2NormFilterPruner
from kslim.prune.plot import plot_sensitivity
from kslim.prune.sensitivity import load_sensitivity, ratios_by_flops, ratios_by_loss, sensitivity

RATIOS = (0.25, 0.5, 0.75)


def tiny_model(seed=0, name="tiny"):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv3")(x)  # feeds the classifier: kept
    x = keras.layers.ReLU(name="relu3")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(4, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


class Agreement:
    """``1 / (1 + mean |logits - unpruned logits|)``: 1.0 for the unpruned model; counts its calls."""

    def __init__(self, model, n=32, fail_after=None):
        self.x = np.random.default_rng(0).uniform(0, 1, (n, 12, 12, 1)).astype("float32")
        self.ref = np.asarray(model(self.x))
        self.calls = 0
        self.fail_after = fail_after

    def __call__(self, model):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        return 1.0 / (1.0 + float(np.mean(np.abs(np.asarray(model(self.x)) - self.ref))))


@pytest.fixture
def model():
    return tiny_model()


def test_sensitivity_table_and_checkpoint(model, tmp_path):
    ev = Agreement(model)
    ckpt = tmp_path / "sens.json"
    sens = sensitivity(model, ev, ratios=RATIOS, checkpoint=ckpt, verbose=0)
    assert set(sens) == {"conv1", "conv2"}  # conv3 feeds the kept classifier
    for curve in sens.values():
        assert sorted(curve) == list(RATIOS)
        assert all(0.0 <= v <= 1.0 for v in curve.values())  # base agreement is exactly 1
    assert ev.calls == 1 + 2 * len(RATIOS)
    # removing channels changes the outputs, more so at higher ratios
    for curve in sens.values():
        assert 0 < curve[0.25] < curve[0.75]
    on_disk = json.loads(ckpt.read_text())
    assert on_disk["base"] == 1.0 and on_disk["criterion"] == "L1NormFilterPruner"
    assert load_sensitivity(ckpt) == sens
    # a complete checkpoint: rerun costs only the base evaluation
    ev2 = Agreement(model)
    assert sensitivity(model, ev2, ratios=RATIOS, checkpoint=ckpt, verbose=0) == sens
    assert ev2.calls == 1


def test_interrupted_run_resumes(model, tmp_path):
    ckpt = tmp_path / "sens.json"
    ratios = (0.25, 0.75)
    full = sensitivity(model, Agreement(model), ratios=ratios, checkpoint=None, verbose=0)

    first = Agreement(model, fail_after=3)  # base + 2 measurements, then "Ctrl-C"
    with pytest.raises(KeyboardInterrupt):
        sensitivity(model, first, ratios=ratios, checkpoint=ckpt, verbose=0)
    saved = json.loads(ckpt.read_text())["sensitivities"]
    assert saved == {"conv1": {"0.25": full["conv1"][0.25], "0.75": full["conv1"][0.75]}}

    second = Agreement(model)
    resumed = sensitivity(model, second, ratios=ratios, checkpoint=ckpt, verbose=0)
    assert second.calls == 1 + 2  # base + the 2 measurements still missing
    assert resumed == full


def test_layers_subset_and_layer_name_lookup(model):
    ev = Agreement(model)
    sens = sensitivity(model, ev, ratios=[0.5], layers=["conv2"], checkpoint=None, verbose=0)
    assert list(sens) == ["conv2"]
    assert ev.calls == 2
    with pytest.raises(ModelError, match="bn1"):  # BN produces no channels of its own: name conv1
        sensitivity(model, ev, ratios=[0.5], layers=["bn1"], checkpoint=None, verbose=0)


def test_bad_inputs(model, tmp_path):
    ev = Agreement(model)
    with pytest.raises(KslimValueError, match="1.0"):
        sensitivity(model, ev, ratios=[0.5, 1.0], checkpoint=None, verbose=0)
    with pytest.raises(KslimValueError, match="-0.1"):
        sensitivity(model, ev, ratios=[-0.1], checkpoint=None, verbose=0)
    with pytest.raises(KslimValueError, match="nope"):
        sensitivity(model, ev, ratios=[0.5], layers=["nope"], checkpoint=None, verbose=0)
    with pytest.raises(KslimValueError, match="logits"):  # exists but is not prunable (model output)
        sensitivity(model, ev, ratios=[0.5], layers=["logits"], checkpoint=None, verbose=0)
    with pytest.raises(KslimValueError, match="conv3"):  # feeds the classifier (keep_classifier=True)
        sensitivity(model, ev, ratios=[0.5], layers=["conv3"], checkpoint=None, verbose=0)

    ckpt = tmp_path / "sens.json"
    sensitivity(model, ev, ratios=[0.5], layers=["conv2"], checkpoint=ckpt, verbose=0)
    other_weights = tiny_model(seed=1)
    with pytest.raises(ModelError, match="other weights"):
        sensitivity(other_weights, Agreement(other_weights), ratios=[0.5], checkpoint=ckpt, verbose=0)
    other_arch = keras.Sequential([keras.Input((12, 12, 1)), keras.layers.Conv2D(4, 3, name="c"),
                                   keras.layers.Conv2D(4, 3, name="d"), keras.layers.Flatten(),
                                   keras.layers.Dense(2)], name="other")
    with pytest.raises(ModelError, match="another model"):
        sensitivity(other_arch, lambda m: 1.0, ratios=[0.5], checkpoint=ckpt, verbose=0)
    with pytest.raises(KslimValueError, match="L1NormFilterPruner"):
        sensitivity(model, ev, ratios=[0.5], checkpoint=ckpt, pruner=L2NormFilterPruner, verbose=0)
    with pytest.raises(KslimValueError, match="base metric"):  # same model, another evaluation
        sensitivity(model, lambda m: 0.5 * ev(m), ratios=[0.5], checkpoint=ckpt, verbose=0)
    (tmp_path / "junk.json").write_text("[1, 2]")
    with pytest.raises(KslimFileError, match="junk.json"):
        sensitivity(model, ev, ratios=[0.5], checkpoint=tmp_path / "junk.json", verbose=0)


def test_pruner_instance_must_be_bound_to_the_model(model):
    other = tiny_model(seed=1, name="other")
    with pytest.raises(KslimValueError, match="other"):
        sensitivity(model, Agreement(model), ratios=[0.5], pruner=L1NormFilterPruner(other),
                    checkpoint=None, verbose=0)


def test_ratios_by_loss_interpolates_like_paddleslim():
    sens = {
        "a": {0.1: 0.0, 0.2: 0.01, 0.3: 0.03, 0.4: 0.10},
        "b": {0.1: 0.2, 0.2: 0.3},          # too sensitive from the first ratio
        "c": {0.1: 0.0, 0.2: 0.0},          # insensitive everywhere: its largest ratio
    }
    r = ratios_by_loss(sens, 0.02)
    assert r["a"] == pytest.approx(0.25)          # between 0.2 (0.01) and 0.3 (0.03)
    assert r["b"] == pytest.approx(0.1 * 0.02 / 0.2)  # interpolated from (0, 0)
    assert r["c"] == 0.2
    assert ratios_by_loss(sens, -1.0) == {}
    # JSON-style string keys are accepted
    assert ratios_by_loss({"a": {"0.2": 0.01, "0.3": 0.03}}, 0.02) == {"a": pytest.approx(0.25)}
    with pytest.raises(KslimValueError, match="1.5"):
        ratios_by_loss({"a": {1.5: 0.1}}, 0.1)
    with pytest.raises(KslimValueError, match="max_loss"):
        ratios_by_loss(sens, "lots")


def test_ratios_by_flops_reaches_target(model):
    from kslim.analysis import flops

    sens = sensitivity(model, Agreement(model), ratios=(0.25, 0.5, 0.75), checkpoint=None, verbose=0)
    found = ratios_by_flops(model, sens, 0.3)
    pruned = L1NormFilterPruner(model).prune(found.ratios)
    reduction = 1 - flops(pruned).macs / flops(model).macs
    assert reduction == pytest.approx(found.reduction)
    assert 0.3 <= reduction <= 0.6
    with pytest.raises(KslimValueError, match="flops_reduction"):
        ratios_by_flops(model, sens, 1.2)
    with pytest.raises(KslimValueError, match="largest measured ratios"):
        ratios_by_flops(model, {"conv1": {0.1: 0.0}}, 0.9)
    with pytest.raises(ModelError, match="ghost"):
        ratios_by_flops(model, {"ghost": {0.1: 0.0}}, 0.1)


def test_plot_sensitivity(tmp_path):
    path = plot_sensitivity({"conv1": {0.2: 0.01, 0.5: 0.1}, "conv2": {0.2: 0.0, 0.5: 0.02}}, tmp_path / "s.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(KslimValueError):
        plot_sensitivity({}, tmp_path / "empty.png")


def test_checkpoint_of_other_pruner_options_is_refused(model, tmp_path):
    ckpt = tmp_path / "sens.json"
    sensitivity(model, Agreement(model), ratios=[0.5], layers=["conv2"], checkpoint=ckpt, verbose=0)
    assert json.loads(ckpt.read_text())["pruner_options"] == {"round_to": 1, "skip": [], "keep_classifier": True}
    with pytest.raises(KslimValueError, match="round_to"):  # would mix curves of other channel counts
        sensitivity(model, Agreement(model), ratios=[0.5], layers=["conv2"], checkpoint=ckpt,
                    pruner=L1NormFilterPruner(model, round_to=2), verbose=0)
    with pytest.raises(KslimValueError, match="skip"):
        sensitivity(model, Agreement(model), ratios=[0.5], layers=["conv2"], checkpoint=ckpt,
                    pruner=L1NormFilterPruner(model, skip=["conv1"]), verbose=0)
    old = json.loads(ckpt.read_text())
    del old["pruner_options"]  # a checkpoint of an older kslim: options unknown
    ckpt.write_text(json.dumps(old))
    with pytest.raises(KslimValueError, match="not recorded"):
        sensitivity(model, Agreement(model), ratios=[0.5], layers=["conv2"], checkpoint=ckpt, verbose=0)


def test_malformed_checkpoint_is_refused_with_advice(model, tmp_path):
    bad = tmp_path / "half.json"
    bad.write_text('{"format": "kslim.sensitivity/1", "sens')
    with pytest.raises(KslimFileError, match=r"half\.json.*not valid JSON.*Delete it"):
        sensitivity(model, Agreement(model), ratios=[0.5], checkpoint=bad, verbose=0)
    bad.write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(KslimFileError, match="Delete it"):
        sensitivity(model, Agreement(model), ratios=[0.5], checkpoint=bad, verbose=0)
