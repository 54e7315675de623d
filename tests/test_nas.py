"""kslim.nas: the simulated-annealing oracle, constraints, spaces, search(), auto_prune, plots, CLI."""

import json
import math
import statistics

import keras
import keras_tuner
import numpy as np
import pytest
from keras_tuner.src.engine.base_tuner import BaseTuner

from kslim.errors import KslimTypeError, KslimValueError, ModelError
from kslim.nas import (
    Constraint,
    InfeasibleConstraintError,
    MaxFlops,
    MaxLatency,
    MaxParams,
    MobileNetV2Space,
    ResNetSpace,
    SearchSpace,
    SimulatedAnnealingOracle,
    pareto_front,
    plot_history,
)

TARGET = [7, 2, 9, 4, 0, 5, 3, 8]


def _declare(hp):
    for i in range(len(TARGET)):
        hp.Int(f"x{i}", 0, 9, default=0)


def _toy_score(hp):
    return -float(sum((hp.get(f"x{i}") - t) ** 2 for i, t in enumerate(TARGET)))


class ToyTuner(BaseTuner):
    """No training: the objective is a deterministic function of the hyperparameters."""

    calls = 0

    def run_trial(self, trial, **kwargs):
        type(self).calls += 1
        return {"score": _toy_score(trial.hyperparameters)}


def _run(oracle, tmp_path, name, hypermodel=_declare, tuner_cls=ToyTuner, overwrite=True):
    tuner = tuner_cls(oracle, hypermodel=hypermodel, directory=str(tmp_path), project_name=name,
                      overwrite=overwrite)
    tuner.search(verbose=0)
    return tuner


def _best(oracle):
    return max(t.score for t in oracle.trials.values() if t.score is not None)


def _sa(**kw):
    kw.setdefault("max_trials", 40)
    kw.setdefault("init_temperature", 5.0)
    kw.setdefault("reduce_rate", 0.9)
    return SimulatedAnnealingOracle(keras_tuner.Objective("score", "max"), **kw)


# ------------------------------------------------------------------------------------- the oracle
def test_sa_beats_random_sampling_and_acceptance_steers(tmp_path):
    sa, hot, rnd = [], [], []
    for seed in range(3):
        sa.append(_best(_run(_sa(seed=seed), tmp_path, f"sa{seed}").oracle))
        # same proposals, but every candidate accepted: the accept/reject decision switched off
        hot.append(_best(_run(_sa(seed=seed, init_temperature=1e12, reduce_rate=1.0), tmp_path, f"hot{seed}").oracle))
        rnd.append(_best(_run(keras_tuner.oracles.RandomSearchOracle(
            keras_tuner.Objective("score", "max"), max_trials=40, seed=seed + 1), tmp_path, f"rs{seed}").oracle))
    # optimum is 0; a random point scores about -66 on average
    assert statistics.median(sa) > statistics.median(rnd) + 10, (sa, rnd)
    assert statistics.median(sa) > statistics.median(hot) + 5, (sa, hot)


def test_acceptance_rule_and_one_change_per_step(tmp_path):
    oracle = _sa(max_trials=25, init_temperature=20.0, reduce_rate=0.8, seed=3)
    _run(oracle, tmp_path, "rule")
    hist = oracle.history
    assert len(hist) == 25 and hist[0]["values"] == {f"x{i}": 0 for i in range(8)}  # starts from defaults
    current = None
    worse_accepted = worse_rejected = 0
    for k, rec in enumerate(hist):
        assert rec["temperature"] == pytest.approx(20.0 * 0.8 ** k)
        if current is not None:
            changed = [n for n in rec["values"] if rec["values"][n] != current["values"][n]]
            assert len(changed) == 1, (rec["values"], current["values"])  # one hyperparameter perturbed
            delta = rec["score"] - current["score"]
            assert rec["current_score_before"] == current["score"]
            if delta >= 0:
                assert rec["accepted"] and rec["accept_probability"] == 1.0
            else:
                assert rec["accept_probability"] == pytest.approx(math.exp(delta / rec["temperature"]))
                worse_accepted += rec["accepted"]
                worse_rejected += not rec["accepted"]
        if rec["accepted"]:
            current = rec
    assert worse_accepted and worse_rejected  # both branches of the Metropolis rule were taken
    assert oracle.current[1] == current["score"]


def test_cold_search_never_accepts_worse(tmp_path):
    oracle = _sa(max_trials=15, init_temperature=1e-9, seed=0)
    _run(oracle, tmp_path, "cold")
    for rec in oracle.history[1:]:
        assert rec["accepted"] == (rec["score"] >= rec["current_score_before"])


def test_never_reevaluates_and_stops_when_exhausted(tmp_path):
    def small(hp):
        hp.Choice("a", [1, 2, 3])
        hp.Choice("b", ["x", "y"])

    class T(BaseTuner):
        def run_trial(self, trial, **kw):
            hp = trial.hyperparameters
            return {"score": float(hp.get("a")) + (hp.get("b") == "y")}

    oracle = _sa(max_trials=20, max_tries=30, seed=0)
    _run(oracle, tmp_path, "small", hypermodel=small, tuner_cls=T)
    configs = [json.dumps(r["values"], sort_keys=True) for r in oracle.history]
    assert len(configs) == len(set(configs)) == 6  # the whole space, each configuration once


def test_constraints_reject_before_training(tmp_path):
    ToyTuner.calls = 0
    built = []

    def hypermodel(hp):
        _declare(hp)
        units = 1 + hp.get("x0") + hp.get("x1")
        built.append(units)
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(units)])

    oracle = _sa(max_trials=12, seed=1, hypermodel=hypermodel, constraints=[MaxParams(30)])
    _run(oracle, tmp_path, "cons", hypermodel=hypermodel)
    assert ToyTuner.calls == 12  # every trial trained was within the limit; rejections cost no trial
    for rec in oracle.history:
        assert rec["params"] <= 30
        assert 5 * (1 + rec["values"]["x0"] + rec["values"]["x1"]) == rec["params"]
    assert oracle.rejected, "expected some candidates over the limit"
    for r in oracle.rejected:
        assert r["measures"]["params"] > 30 and r["reason"].startswith("params") and "> max 30" in r["reason"]
    summary = json.loads((tmp_path / "cons" / "sa_history.json").read_text())  # written by the oracle
    assert summary["n_rejected"] == len(oracle.rejected) and len(summary["trials"]) == 12
    assert summary["constraints"] == [{"name": "params", "limit": 30.0, "unit": "", "type": "MaxParams"}]


def test_latency_constraint_accepts_any_callable(tmp_path):
    def hypermodel(hp):
        _declare(hp)
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(1 + hp.get("x0"))])

    latency = MaxLatency(3.0, latency_fn=lambda m: m.count_params() / 10.0)  # "ms" = params / 10
    oracle = _sa(max_trials=6, seed=0, hypermodel=hypermodel, constraints=[latency])
    _run(oracle, tmp_path, "lat", hypermodel=hypermodel)
    assert all(r["latency_ms"] <= 3.0 for r in oracle.history)
    assert all("latency_ms" in r["reason"] and "ms > max 3 ms" in r["reason"] for r in oracle.rejected)


class _TinySpace(SearchSpace):
    def build(self, hp):
        inputs = keras.Input(self.input_shape)
        x = keras.layers.Conv2D(hp.Choice("filters", [4, 8, 16]), 3)(inputs)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return self.compile(keras.Model(inputs, keras.layers.Dense(self.num_classes)(x)))


def test_unreachable_constraint_is_reported_early(tmp_path):
    space = _TinySpace(input_shape=(8, 8, 1))
    oracle = _sa(max_trials=5, hypermodel=space, constraints=[MaxParams(10)])
    tuner = ToyTuner(oracle, hypermodel=space, directory=str(tmp_path), project_name="inf", overwrite=True)
    with pytest.raises(InfeasibleConstraintError, match=r"smallest configuration .* params \d+ > max 10"):
        tuner.search(verbose=0)
    assert ToyTuner.calls == 0 or not oracle.trials  # nothing trained

    # without smallest_values(): after max_tries rejections, with the closest candidate named
    oracle = _sa(max_trials=5, max_tries=15, hypermodel=space.build, constraints=[MaxParams(10)])
    tuner = ToyTuner(oracle, hypermodel=space.build, directory=str(tmp_path), project_name="inf2", overwrite=True)
    with pytest.raises(InfeasibleConstraintError, match="no candidate met the constraints in 15 draws"):
        tuner.search(verbose=0)


def test_bad_arguments():
    with pytest.raises(KslimValueError, match="hypermodel"):
        SimulatedAnnealingOracle("val_accuracy", constraints=[MaxParams(10)])
    with pytest.raises(KslimValueError, match="reduce_rate"):
        SimulatedAnnealingOracle("val_accuracy", reduce_rate=1.5)
    with pytest.raises(KslimValueError, match="init_temperature"):
        SimulatedAnnealingOracle("val_accuracy", init_temperature=0)
    with pytest.raises(KslimTypeError, match="Constraint"):
        SimulatedAnnealingOracle("val_accuracy", constraints=[lambda m: 1], hypermodel=_declare)
    with pytest.raises(KslimValueError, match="'flops'.*positive"):
        MaxFlops(-1)
    with pytest.raises(KslimTypeError, match="latency_fn"):
        MaxLatency(5.0, latency_fn="fast")


def test_hypermodel_that_fails_to_build_for_some_values(tmp_path):
    def fragile(hp):
        _declare(hp)
        if sum(hp.get(f"x{i}") for i in range(len(TARGET))) % 2 == 1:
            raise ValueError("odd sum is broken")
        return keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])

    oracle = _sa(max_trials=15, seed=0, hypermodel=fragile, constraints=[MaxParams(100)])
    _run(oracle, tmp_path, "fragile", hypermodel=fragile)
    assert all(sum(r["values"].values()) % 2 == 0 for r in oracle.history)
    assert any("build failed: ValueError: odd sum is broken" in r["reason"] for r in oracle.rejected)


def test_resume_after_kill(tmp_path):
    class Killed(ToyTuner):
        def run_trial(self, trial, **kw):
            if trial.trial_id == "05":
                raise KeyboardInterrupt  # the process dies in the middle of trial 05
            return super().run_trial(trial, **kw)

    first = _sa(max_trials=12, seed=4)
    with pytest.raises(KeyboardInterrupt):
        _run(first, tmp_path, "resume", tuner_cls=Killed)
    before = first.history[:5]
    assert len(before) == 5 and first._step == 5

    again = _sa(max_trials=12, seed=4)  # the same code run again, overwrite=False
    _run(again, tmp_path, "resume", overwrite=False)
    hist = again.history
    assert [r["trial_id"] for r in hist] == [f"{i:02d}" for i in range(12)]
    assert hist[:5] == before  # the SA state and history were restored, not restarted
    assert hist[5]["runs"] == 2 and hist[5]["status"] == "COMPLETED"  # the interrupted trial was retried
    assert again._step == 12 and hist[-1]["temperature"] == pytest.approx(5.0 * 0.9 ** 11)
    assert len({json.dumps(r["values"], sort_keys=True) for r in hist}) == 12


def test_dead_worker_is_reaped(tmp_path):
    oracle = _sa(max_trials=3, worker_timeout=10, max_retries_per_trial=0, seed=0)
    ToyTuner(oracle, hypermodel=_declare, directory=str(tmp_path), project_name="reap", overwrite=True)
    trial = oracle.create_trial("w1")
    oracle.create_trial("w2")
    assert oracle.reap_dead_workers() == []
    oracle._last_seen["w1"] -= 60  # w1 silent for a minute
    assert oracle.reap_dead_workers() == ["w1"]
    assert "w1" not in oracle.tuner_ids and "w1" not in oracle.ongoing_trials
    rec = {r["trial_id"]: r for r in oracle.history}[trial.trial_id]
    assert rec["status"] == "FAILED" and "presumed dead" in rec["message"]


# ------------------------------------------------------------------------------------- spaces
@pytest.mark.parametrize("cls", [MobileNetV2Space, ResNetSpace])
def test_spaces_build_and_smallest(cls):
    from kslim.analysis import flops

    space = cls(input_shape=(16, 16, 1), num_classes=7)
    hp = space.hyperparameters()
    default = space.build(hp)
    assert default.output_shape == (None, 7)
    small_hp = keras_tuner.HyperParameters()
    small_hp.values = space.smallest_values()
    small = space.build(small_hp)
    assert flops(small).flops < flops(default).flops
    names = {h.name for h in hp.space}
    if cls is MobileNetV2Space:
        assert {"block1_expansion", "block1_channels", "block1_kernel", "block1_repeats", "stem_channels"} <= names
        big = keras_tuner.HyperParameters()
        big.values = {**hp.values, "block2_repeats": 3, "block2_kernel": 5}
        m = space.build(big)
        assert m.get_layer("block2_3_dw").kernel_size == (5, 5) and m.get_layer("block2_3_add")
    else:
        assert {"stage1_channels", "stage1_blocks", "stem_channels"} <= names


# ------------------------------------------------------------------------------- search(), real training
def test_search_trains_under_flops_cap(tmp_path, small_data):
    from kslim.analysis import flops
    from kslim.nas import search

    (x, y), (xv, yv) = small_data
    x, xv = x[:256, ::2, ::2], xv[:128, ::2, ::2]  # 14x14
    space = MobileNetV2Space(input_shape=(14, 14, 1), blocks=((1, (8, 16)), (2, (16, 24))), repeats=(1, 2))
    cap = 6e5
    result = search(space, (x, y[:256]), (xv, yv[:128]), max_flops=cap, max_trials=2, epochs_per_trial=1,
                    batch_size=64, directory=tmp_path, project_name="s", seed=0)
    assert len(result.history) == 2 and all(t["flops"] <= cap for t in result.history)
    assert flops(result.model).flops <= cap
    assert result.model.predict(xv[:4], verbose=0).shape == (4, 10)
    assert 0.0 <= result.score <= 1.0 and result.score == max(t["score"] for t in result.history)
    saved = json.loads(result.history_path.read_text())
    assert saved["objective"] == "val_accuracy" and len(saved["trials"]) == 2
    assert result.plot_path.stat().st_size > 10_000
    assert list((result.directory / "tensorboard").rglob("events.out.tfevents*"))


def test_search_bad_hypermodel(tmp_path, small_data):
    from kslim.nas import search

    (x, y), _ = small_data

    def broken(hp):
        raise RuntimeError("no such layer")

    with pytest.raises(ModelError, match="'broken' failed to build.*no such layer"):
        search(broken, (x[:32], y[:32]), max_trials=1, directory=tmp_path)
    with pytest.raises(KslimTypeError, match="hypermodel"):
        search("mobilenet", (x[:32], y[:32]), directory=tmp_path)
    with pytest.raises(InfeasibleConstraintError, match="smallest"):
        search(MobileNetV2Space(input_shape=(28, 28, 1)), (x[:32], y[:32]), max_flops=1e3, max_trials=1,
               directory=tmp_path)


# ------------------------------------------------------------------------------------- auto_prune
def _prunable_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c1")(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c3")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))


def test_auto_prune_meets_target_and_maximises_score(tmp_path):
    from kslim.analysis import flops
    from kslim.nas import auto_prune

    model = _prunable_model()
    before = flops(model).flops

    def score(m):  # deterministic toy score: keep channels of c1 (weight 3) more than the others
        return 3 * m.get_layer("c1").filters + m.get_layer("c2").filters

    res = auto_prune(model, score, flops_reduction=0.5, max_trials=12, init_temperature=1.0, seed=0,
                     directory=tmp_path, project_name="ap")
    assert res.flops <= 0.5 * before + 1 and res.flops_reduction >= 0.5 - 1e-6
    assert len(set(res.initial_ratios.values())) == 1  # starts from the uniform ratio meeting the target
    uniform = res.history[0]
    assert uniform["values"] == res.initial_ratios and res.score >= uniform["score"]
    best = max(res.history, key=lambda h: h["score"])
    assert res.search_score == best["score"] and res.search_ratios == best["values"]
    assert res.score == score(res.model) >= res.search_score  # filled: pruned no further than the target needs
    factor = {res.ratios[g] / r for g, r in res.search_ratios.items() if r}
    assert len(factor) == 1 and 0 < factor.pop() <= 1  # one factor scales every ratio of the grid candidate
    grid = auto_prune(model, score, flops_reduction=0.5, max_trials=12, init_temperature=1.0, seed=0, fill=False,
                      directory=tmp_path, project_name="ap_grid")
    assert grid.ratios == grid.search_ratios and grid.score == grid.search_score == score(grid.model)
    from kslim.prune import L1NormFilterPruner

    searched = flops(L1NormFilterPruner(model).prune(res.search_ratios)).flops
    assert searched <= res.flops <= 0.5 * before + 1  # the filled model lands nearer the limit
    assert res.rejected and all("flops" in r["reason"] for r in res.rejected)
    assert res.model.count_params() < model.count_params()
    assert res.history_path.is_file() and res.plot_path.is_file()


def test_auto_prune_bad_input(tmp_path):
    from kslim.nas import auto_prune

    model = _prunable_model()
    with pytest.raises(KslimValueError, match="flops_reduction"):
        auto_prune(model, lambda m: 0.0, directory=tmp_path)
    with pytest.raises(KslimTypeError, match="eval_fn"):
        auto_prune(model, None, flops_reduction=0.5, directory=tmp_path)
    with pytest.raises(InfeasibleConstraintError, match="even pruning 10% of every group"):
        auto_prune(model, lambda m: 0.0, flops_reduction=0.9, max_ratio=0.1, directory=tmp_path)
    with pytest.raises(KslimValueError, match="'l7'"):
        auto_prune(model, lambda m: 0.0, flops_reduction=0.5, importance="l7", directory=tmp_path)


# ----------------------------------------------------------------------------------- plot, CLI
def test_pareto_front_and_plot(tmp_path):
    assert pareto_front([(1, 0.5), (2, 0.4), (3, 0.9), (4, 0.8), (0.5, 0.1)]) == [4, 0, 2]
    assert pareto_front([(1, 5.0), (2, 1.0)], direction="min") == [0, 1]
    summary = {
        "objective": "val_accuracy", "direction": "max",
        "constraints": [{"name": "flops", "limit": 5e6, "unit": "", "type": "MaxFlops"}],
        "trials": [{"trial_id": str(i), "score": 0.5 + 0.01 * i, "flops": 1e6 * (1 + i % 4),
                    "temperature": 0.05 * 0.85 ** i, "accepted": i % 3 != 1, "best_score": 0.5 + 0.01 * i}
                   for i in range(10)],
        "rejected": [{"values": {}, "reason": "flops", "measures": {"flops": 7e6}}], "n_rejected": 1,
    }
    path = plot_history(summary, tmp_path / "h.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(KslimValueError, match="latency_ms"):
        plot_history(summary, tmp_path / "x.png", cost="latency_ms")


@pytest.mark.slow  # the search itself runs in test_search_trains_under_flops_cap
def test_cli_search(tmp_path, capsys):
    from kslim.cli import main

    assert main(["search", "--space", "mobilenetv2", "--max-flops", "2e6", "--trials", "1", "--train-limit", "128",
                 "--val-limit", "64", "--batch-size", "64", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "best val_accuracy" in out and (tmp_path / "mobilenetv2" / "best.keras").is_file()
    m = keras.models.load_model(tmp_path / "mobilenetv2" / "best.keras")
    assert m.output_shape == (None, 10)
    assert main(["search", "--trials", "0", "--out", str(tmp_path)]) == 1
    assert "--trials must be >= 1" in capsys.readouterr().err


def test_constraint_generic():
    c = Constraint("width", 8, measure=lambda m: m.output_shape[-1])
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(9)])
    assert c.check(model) == (False, 9.0) and c.describe(9.0) == "width 9 > max 8"
    assert np.isclose(MaxParams(100).check(model)[1], 27)


def test_latency_prefers_the_median_and_measure_latency_uses_profile(monkeypatch):
    import types

    import kslim.lite
    from kslim.nas import measure_latency

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    report = types.SimpleNamespace(mean_ms=5.0, median_ms=2.0)  # e.g. a kslim.lite.ProfileReport
    assert MaxLatency(3.0, latency_fn=lambda m: report).check(model) == (True, 2.0)
    no_median = types.SimpleNamespace(mean_ms=5.0, median_ms=None)  # a device without per-run timings
    assert MaxLatency(3.0, latency_fn=lambda m: no_median).check(model) == (False, 5.0)

    import kslim.lite.profiling

    calls = []
    real_profile = kslim.lite.profiling.profile

    def spy(lite, **kw):
        rep = real_profile(lite, **kw)
        calls.append((kw, rep))
        return rep

    monkeypatch.setattr(kslim.lite.profiling, "profile", spy)
    ms = measure_latency(model, runs=5)
    (kw, rep), = calls
    assert kw["device"] is None and kw["num_threads"] == 1 and kw["runs"] == 5  # None: this host (LocalDevice)
    assert rep.device["kind"] == "local"
    assert ms == rep.median_ms > 0


def test_auto_prune_latency_fn_needs_max_latency(tmp_path):
    from kslim.nas import auto_prune

    with pytest.raises(KslimValueError, match="max_latency"):  # was silently ignored
        auto_prune(_prunable_model(), lambda m: 0.0, flops_reduction=0.5, latency_fn=lambda m: 1.0,
                   directory=tmp_path)


def test_plot_history_leaves_pyplot_alone(tmp_path, monkeypatch):
    import matplotlib
    import matplotlib.pyplot as plt

    def no_switch(*a, **k):
        raise AssertionError("plot_history must not switch the matplotlib backend")

    monkeypatch.setattr(matplotlib, "use", no_switch)
    before = plt.get_fignums()
    summary = {"trials": [{"score": 0.5, "flops": 1e6, "temperature": 0.1}, {"score": 0.6, "flops": 2e6,
                                                                             "temperature": 0.05}]}
    assert plot_history(summary, tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    assert plt.get_fignums() == before  # no figure left open in pyplot
