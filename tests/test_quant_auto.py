"""quant_post_auto: accuracy-aware PTQ tuning (algorithm x per-layer int16/float fallback), resumable."""

import json
import warnings

import numpy as np
import pytest

from kslim.errors import KslimTypeError, KslimValueError
from kslim.quant import ALGOS, AccuracyGoalNotMet, AutoQuantResult, quant_post_auto


@pytest.fixture(scope="module")
def outlier_case():
    """A net whose input has one enormous feature (x1000, a raw un-normalised column) that its first
    Dense barely uses: int8 of the input tensor rounds every other feature to 0 whatever the
    calibration algorithm (they all keep the outlier's range), while the first layer kept in float
    reads the float input and recovers the float accuracy."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((16,))
    h = keras.layers.Dense(16, activation="relu", name="wide")(inp)
    m = keras.Model(inp, keras.layers.Dense(4, name="head")(h))
    w, b = m.get_layer("wide").get_weights()
    w[0, :] *= 1e-3
    m.get_layer("wide").set_weights([w, b])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 16)).astype("float32")
    x[:, 0] *= 1000.0
    y = np.argmax(m.predict(x, verbose=0), -1)
    calls = []

    def accuracy(lite):
        calls.append(1)
        return float(np.mean(np.argmax(lite.predict(x[256:]), -1) == y[256:]))

    return m, x[:256], accuracy, calls


def _configs(result):
    return [(t["algo"], tuple(t["fallback"].items())) for t in result.trials]


def test_stops_within_max_drop_on_a_case_that_needs_a_fallback(outlier_case, tmp_path):
    m, xc, accuracy, _ = outlier_case
    res = quant_post_auto(m, xc, accuracy, max_drop=0.03, directory=tmp_path)
    assert isinstance(res, AutoQuantResult)
    assert res.met and res.reason == "met" and res.drop <= 0.03
    first = res.trials[: len(ALGOS)]
    assert [t["algo"] for t in first] == list(ALGOS) and all(not t["fallback"] for t in first)
    assert all(t["drop"] > 0.3 for t in first)  # no algorithm alone comes close
    assert list(res.fallback) == ["wide"] and res.fallback["wide"] in ("int16", "float")
    assert res.sensitivity[0] == "wide"  # quant_debug ranks the layer reading the outlier first
    assert not any(t["met"] for t in res.trials[:-1]) and res.trials[-1]["met"]  # stopped at the first one
    assert res.metric == pytest.approx(accuracy(res.lite))  # the returned model is the one measured
    assert res.float_metric == 1.0 and res.lite.calibration["auto"]["fallback"] == res.fallback
    assert "wide=" in str(res) and "met" in str(res)
    state = json.loads((res.directory / "quant_post_auto.json").read_text())
    assert state["result"]["fallback"] == res.fallback and state["result"]["met"]


def test_resumes_without_repeating_a_trial(outlier_case, tmp_path):
    m, xc, accuracy, calls = outlier_case
    kw = dict(max_drop=0.03, algos=["abs_max", "KL"], fallback=("float",), directory=tmp_path)
    del calls[:]
    with pytest.warns(UserWarning, match="no configuration within max_drop"):
        first = quant_post_auto(m, xc, accuracy, max_trials=2, **kw)
    assert first.reason == "max_trials" and not first.met and len(first.trials) == 2
    assert len(calls) == 1 + 2  # the float reference, then one per trial

    def interrupted(lite):  # Ctrl-C during the next trial's evaluation
        if calls:
            raise KeyboardInterrupt
        return accuracy(lite)

    del calls[:]
    with pytest.raises(KeyboardInterrupt):
        quant_post_auto(m, xc, interrupted, **kw)
    del calls[:]
    res = quant_post_auto(m, xc, accuracy, **kw)
    assert res.met and list(res.fallback) == ["wide"]
    assert _configs(res)[:2] == _configs(first)
    assert len(set(_configs(res))) == len(res.trials)  # no configuration quantized twice
    assert len(calls) == 1 + len(res.trials) - 2  # only the new trials (the interrupted one again) were evaluated
    assert [t["seconds"] is None for t in res.trials[:2]] == [True, True]
    del calls[:]
    again = quant_post_auto(m, xc, accuracy, **kw)  # nothing left to try: the choice is rebuilt, not re-tuned
    assert len(calls) == 1 and _configs(again) == _configs(res) and again.fallback == res.fallback
    assert again.metric == pytest.approx(accuracy(again.lite))


def test_directory_of_another_model_is_refused(outlier_case, tmp_path):
    m, xc, accuracy, _ = outlier_case
    quant_post_auto(m, xc, accuracy, max_drop=1.0, algos=["abs_max"], directory=tmp_path)
    with pytest.raises(KslimValueError, match="another model or other settings"):
        quant_post_auto(m, xc[:128], accuracy, max_drop=1.0, algos=["abs_max"], directory=tmp_path)
    res = quant_post_auto(m, xc[:128], accuracy, max_drop=1.0, algos=["abs_max"], directory=tmp_path,
                          overwrite=True)
    assert res.met and len(res.trials) == 1


def test_goal_not_met_returns_best_or_raises(outlier_case, tmp_path):
    m, xc, accuracy, _ = outlier_case
    kw = dict(max_drop=0.0, algos=["abs_max", "avg"], fallback=(), batch_nums=2)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res = quant_post_auto(m, xc, accuracy, directory=tmp_path / "a", **kw)
    assert not res.met and res.reason == "exhausted" and res.fallback == {} and res.sensitivity is None
    assert res.metric == max(t["metric"] for t in res.trials)
    assert any("no configuration within max_drop=0" in str(x.message) for x in w)
    with pytest.raises(AccuracyGoalNotMet, match="no configuration within") as e:  # (the finished search, resumed)
        quant_post_auto(m, xc, accuracy, directory=tmp_path / "a", raise_on_fail=True, **kw)
    assert not e.value.result.met and len(e.value.result.trials) == 2


def test_eval_fn_errors_propagate(outlier_case, tmp_path):
    m, xc, _, _ = outlier_case
    seen = []

    def broken(lite):
        seen.append(1)
        if len(seen) > 1:
            raise ZeroDivisionError("metric bug")
        return 1.0

    with pytest.raises(ZeroDivisionError, match="metric bug"):
        quant_post_auto(m, xc, broken, algos=["abs_max"], directory=tmp_path)
    with pytest.raises(KslimTypeError, match="eval_fn must return a number"):
        quant_post_auto(m, xc, lambda lite: "high", algos=["abs_max"], directory=tmp_path / "b")
    with pytest.raises(KslimValueError, match="relative drop is undefined"):
        quant_post_auto(m, xc, lambda lite: 0.0, relative=True, directory=tmp_path / "c")


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(eval_fn="accuracy"), KslimTypeError, "eval_fn must be callable"),
    (dict(max_drop=-0.1), KslimValueError, "max_drop must be"),
    (dict(max_drop=float("nan")), KslimValueError, "max_drop must be"),
    (dict(max_drop=True), KslimValueError, "max_drop must be"),
    (dict(algos=["KL", "minmax"]), KslimValueError, "algos=.*Unknown calibration algo 'minmax'"),
    (dict(algos=[]), KslimValueError, "algos is empty"),
    (dict(algos=["KL", "KL"]), KslimValueError, "duplicates"),
    (dict(fallback=("bf16",)), KslimValueError, "fallback kinds are"),
    (dict(max_trials=0), KslimValueError, "max_trials must be a positive integer"),
    (dict(max_fallback_layers=1.5), KslimValueError, "max_fallback_layers must be"),
    (dict(weight_quantize_type="per_row"), KslimValueError, "weight_quantize_type must be"),
    (dict(relative="yes"), KslimTypeError, "relative must be True or False"),
    (dict(calibration_data=None), KslimValueError, "calibration_data is required"),
    (dict(model="model.keras"), KslimTypeError, "needs a keras.Model"),
])
def test_arguments_are_checked_before_any_work(outlier_case, monkeypatch, kwargs, error, match):
    import kslim.lite

    m, xc, accuracy, _ = outlier_case

    def no_conversion(*a, **k):
        raise AssertionError("converted before validating the arguments")

    monkeypatch.setattr(kslim.lite, "convert", no_conversion)
    args = {"model": m, "calibration_data": xc, "eval_fn": accuracy, **kwargs}
    with pytest.raises(error, match=match):
        quant_post_auto(args.pop("model"), args.pop("calibration_data"), args.pop("eval_fn"), **args)


def test_relative_drop_and_int16_pair_fallback(tmp_path):
    """An outlier *between* two layers (the first one's output carries one x2000 channel that the second
    ignores): one layer's fallback is not enough, the pair at int16 (LiteRT) is."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((16,))
    a = keras.layers.Dense(16, name="wide")(inp)
    b = keras.layers.Dense(8, activation="relu", name="mid")(a)
    m = keras.Model(inp, keras.layers.Dense(4, name="head")(b))
    w, bias = m.get_layer("wide").get_weights()
    w[:, 0] *= 2000.0
    m.get_layer("wide").set_weights([w, bias])
    w2, b2 = m.get_layer("mid").get_weights()
    w2[0, :] = 0.0
    m.get_layer("mid").set_weights([w2, b2])
    x = np.random.default_rng(0).normal(size=(512, 16)).astype("float32")
    y = np.argmax(m.predict(x, verbose=0), -1)

    def accuracy(lite):
        return float(np.mean(np.argmax(lite.predict(x[256:]), -1) == y[256:]))

    res = quant_post_auto(m, x[:256], accuracy, max_drop=0.08, relative=True, algos=["KL"], fallback=("int16",),
                          max_fallback_layers=2, directory=tmp_path)
    assert res.met and res.backend == "litert" and res.relative
    assert res.fallback == {"mid": "int16", "wide": "int16"} and res.sensitivity[:2] == ["mid", "wide"]
    assert [len(t["fallback"]) for t in res.trials] == [0, 1, 2]
    from kslim.quant import tensor_types

    assert {"INT16", "INT8"} <= tensor_types(res.lite.content)


# ----------------------------------------------------------------------------- the pipeline step
def test_pipeline_step_schema():
    from kslim.compressor import get_strategy, validate_config
    from kslim.errors import ConfigError
    from kslim.quant.auto import FALLBACK_KINDS

    props = get_strategy("quant_post_auto").schema["properties"]
    assert props["algos"]["items"]["enum"] == list(ALGOS) and props["fallback"]["items"]["enum"] == list(FALLBACK_KINDS)
    base = {"model": {"reference": "vgg"}}
    validate_config({**base, "strategies": [{"quant_post_auto": {"max_drop": 0.01, "fallback": ["float"]}}]})
    for params, field in (({"max_drop": -1}, "max_drop"), ({"fallback": ["bf16"]}, "fallback"),
                          ({"algos": []}, "algos"), ({"max_dorp": 0.1}, "quant_post_auto")):
        with pytest.raises(ConfigError) as e:
            validate_config({**base, "strategies": [{"quant_post_auto": params}]})
        assert field in e.value.path


@pytest.mark.slow  # a whole Compressor run (~5 s): the default suite checks the step's schema only
def test_pipeline_step_runs(tmp_path):
    import keras

    from kslim.compressor import Compressor

    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
                          keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
    m.save(tmp_path / "tiny.keras")
    cfg = {"name": "auto", "model": {"path": str(tmp_path / "tiny.keras")},
           "data": {"source": "small", "train_limit": 64, "test_limit": 64, "batch_size": 32},
           "report": {"latency_runs": 1},
           "strategies": [{"quant_post_auto": {"max_drop": 1.0, "algos": ["abs_max"], "batch_nums": 2,
                                               "eval_samples": 64}}]}
    run = tmp_path / "run"
    result = Compressor(cfg, out=run, verbose=0).run()
    state = json.loads((run / "state.json").read_text())
    info = state["stages"]["1"]["row"]["info"]
    assert info["met"] and info["algo"] == "abs_max" and info["fallback"] == {} and info["trials"] == 1
    assert result.final_tflite is not None
    assert (run / "stages").is_dir() and list(run.glob("stages/*/quant_post_auto/quant_post_auto.json"))
