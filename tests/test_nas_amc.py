"""AMC (kslim.nas.amc_prune): budget met, learns the redundant layer, resumable, deterministic, checks."""
import keras
import numpy as np
import pytest

import kslim
from kslim.errors import KslimTypeError, KslimValueError
from kslim.nas import InfeasibleConstraintError, amc_prune

FAST = dict(hidden=16, batch_size=4)


def _model():
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(8, 3, padding="same", name="c1")(x)
    b = keras.layers.Conv2D(8, 3, padding="same", name="c2")(a)
    c = keras.layers.Conv2D(8, 3, padding="same", name="c3")(b)
    y = keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling2D()(c))
    return keras.Model(x, y)


def _keeps(name, weight=1.0):
    """A score that falls with the channels removed from every layer but ``name`` (which is free to prune)."""
    def score(m):
        lost = [1 - m.get_layer(n).filters / 8 for n in ("c1", "c2", "c3") if n != name]
        return float(1.0 - weight * np.mean(lost))
    return score


def test_budget_met_and_result():
    m = _model()
    res = amc_prune(m, _keeps("c2"), flops_reduction=0.5, episodes=4, warmup=2, **FAST)
    assert len(res.history) == 4
    before, after = kslim.analysis.flops(m).flops, kslim.analysis.flops(res.model).flops
    assert after <= 0.5 * before + 1e-6
    assert res.flops == after and res.flops_reduction >= 0.5
    assert all(h["flops"] <= 0.5 * before + 1e-6 and h["feasible"] for h in res.history)
    assert res.ratios == res.history[res.best_episode]["ratios"]
    assert set(res.ratios) == {"c1", "c2"}  # c3 feeds the kept classifier


def test_prefers_pruning_the_redundant_layer():
    m = _model()
    res = amc_prune(m, _keeps("c1"), flops_reduction=0.3, episodes=12, warmup=6, **FAST)
    assert res.ratios["c1"] > res.ratios["c2"]


def test_agent_learns():
    """After the random warm-up the agent's own episodes put the cut on c1 (measured: late - warm-up score
    +0.09/+0.20/+0.14 for seeds 0/1/2; c1 - c2 ratio over the last 10 episodes +0.34/+0.63/+0.49)."""
    res = amc_prune(_model(), _keeps("c1"), flops_reduction=0.3, episodes=30, warmup=10, lr_actor=1e-3,
                    updates=40, noise=0.2, **FAST)
    h = res.history
    assert np.mean([x["score"] for x in h[-10:]]) > np.mean([x["score"] for x in h[:10]]) + 0.05
    assert np.mean([x["ratios"]["c1"] - x["ratios"]["c2"] for x in h[-10:]]) > 0.2


def test_same_seed_same_search_and_resume(tmp_path):
    calls = []

    def score(m):
        calls.append(1)
        return _keeps("c2")(m)

    full = amc_prune(_model(), score, flops_reduction=0.4, episodes=5, warmup=2, seed=3, **FAST)
    again = amc_prune(_model(), score, flops_reduction=0.4, episodes=5, warmup=2, seed=3, **FAST)
    assert [h["ratios"] for h in full.history] == [h["ratios"] for h in again.history]
    calls.clear()
    part = amc_prune(_model(), score, flops_reduction=0.4, episodes=3, warmup=2, seed=3, directory=tmp_path, **FAST)
    assert len(calls) == 3 and len(part.history) == 3
    rest = amc_prune(_model(), score, flops_reduction=0.4, episodes=5, warmup=2, seed=3, directory=tmp_path, **FAST)
    assert len(calls) == 5  # only the 2 missing episodes were evaluated
    assert [h["ratios"] for h in rest.history] == [h["ratios"] for h in full.history]
    assert not list(tmp_path.glob("*.pkl")) and (tmp_path / "amc_state.json").is_file()
    with pytest.raises(KslimValueError, match="another setting"):
        amc_prune(_model(), score, flops_reduction=0.6, episodes=6, directory=tmp_path, **FAST)


def test_latency_budget():
    m = _model()

    def latency(p):  # a pseudo latency: c1's filters
        return float(p.get_layer("c1").filters)

    res = amc_prune(m, _keeps("c2"), max_latency=5.0, latency_fn=latency, episodes=4, warmup=4, **FAST)
    assert res.model.get_layer("c1").filters <= 5
    assert all(h["feasible"] == (h["latency"] <= 5.0) for h in res.history)


@pytest.mark.parametrize("kwargs, error, field", [
    (dict(flops_reduction=1.5), KslimValueError, "flops_reduction"),
    (dict(), KslimValueError, "needs a goal"),
    (dict(flops_reduction=0.5, episodes=0), KslimValueError, "episodes"),
    (dict(flops_reduction=0.5, warmup=-1), KslimValueError, "warmup"),
    (dict(flops_reduction=0.5, action_max=1.0), KslimValueError, "action_max"),
    (dict(flops_reduction=0.5, reward="acc"), KslimValueError, "reward"),
    (dict(flops_reduction=0.5, tau=0), KslimValueError, "tau"),
    (dict(flops_reduction=0.5, discount=1.5), KslimValueError, "discount"),
    (dict(flops_reduction=0.5, updates=0), KslimValueError, "updates"),
    (dict(max_latency=3.0), KslimTypeError, "latency_fn"),
    (dict(flops_reduction=0.95, action_max=0.5), InfeasibleConstraintError, "not reachable"),
])
def test_bad_arguments_raise_before_work(kwargs, error, field):
    calls = []
    with pytest.raises(error, match=field):
        amc_prune(_model(), lambda m: calls.append(1) or 1.0, **kwargs)
    assert not calls
    with pytest.raises(KslimTypeError, match="eval_fn"):
        amc_prune(_model(), "accuracy", flops_reduction=0.5)


@pytest.mark.parametrize("build", [lambda: kslim.models.mobilenet_v1(width=0.25), lambda: kslim.models.resnet()],
                         ids=["mobilenet_v1", "resnet"])
def test_reference_architectures(build):
    """Depthwise-coupled and residual groups: the budget is met on the measured pruned model."""
    m = build()
    res = amc_prune(m, lambda p: 1.0, flops_reduction=0.5, episodes=2, warmup=1, **FAST)
    assert kslim.analysis.flops(res.model).flops <= 0.5 * kslim.analysis.flops(m).flops + 1e-6
    assert len(res.ratios) > 1
