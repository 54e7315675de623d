"""The strategy registry of the pipeline: the schema and the names derived from it, the steps for
equalization / bias correction / BatchNorm re-estimation, and a strategy registered by a user."""

import json

import numpy as np
import pytest

from kslim.compressor import (
    STRATEGIES, Compressor, get_strategy, register_strategy, registered_strategies, unregister_strategy,
    validate_config,
)
from kslim.compressor import config as C
from kslim.errors import ConfigError, KslimTypeError, KslimValueError
from test_compressor import _run_config, tiny_model_path  # noqa: F401  (a small trained VGG-style .keras)

BASE = {"model": {"reference": "vgg"}}


def _cfg(*strategies):
    return {**BASE, "strategies": list(strategies)}


# ----------------------------------------------------------------------------- derivation
def test_schema_names_and_messages_are_the_registry():
    names = [s.name for s in registered_strategies()]
    assert {"equalize", "bias_correction", "bn_reestimate", "prune", "export"} <= set(names)
    assert list(C.STRATEGIES) == names and set(STRATEGIES) <= set(names)
    items = C.config_schema()["properties"]["strategies"]["items"]
    assert items["propertyNames"]["enum"] == names and sorted(items["properties"]) == sorted(names)
    assert C.SCHEMA == C.config_schema()
    assert {n: get_strategy(n).schema for n in names} == C._STRATEGY_SCHEMAS
    for s in registered_strategies():
        assert s.schema["type"] == "object" and s.schema.get("additionalProperties") is False, s.name
        assert s.doc and callable(s.run), s.name
    with pytest.raises(ConfigError) as e:
        validate_config(_cfg({"equalise": {}}))
    assert e.value.path == "strategies[0]" and all(n in str(e.value) for n in names)
    with pytest.raises(ConfigError, match="choose one of.*bn_reestimate"):
        get_strategy("equalise")


def test_schema_enums_are_the_api_constants():
    """Read from the API modules' sources (no TensorFlow at validation), equal to the imported values."""
    from kslim.quant.calibration import ALGOS
    from kslim.quant.config import WEIGHT_QUANTIZE_TYPES
    from kslim.quant.dynamic import DTYPES
    from kslim.quant.equalize import RELU6_MODES

    props = {s.name: s.schema["properties"] for s in registered_strategies()}
    assert props["equalize"]["relu6"]["enum"] == list(RELU6_MODES)
    assert props["bias_correction"]["weight_quantize_type"]["enum"] == list(WEIGHT_QUANTIZE_TYPES)
    assert props["quant_post_static"]["weight_quantize_type"]["enum"] == list(WEIGHT_QUANTIZE_TYPES)
    assert props["quant_post_static"]["algo"]["enum"] == list(ALGOS)
    assert props["quant_post_dynamic"]["dtype"]["enum"] == list(DTYPES)
    from kslim.distill.losses import BUILTIN_LOSSES
    from kslim.quant.litert import RECIPES
    from kslim.quant.mixed import MIXED_RECIPES

    pair = props["distill"]["pairs"]["items"]["properties"]
    assert pair["loss"]["enum"] == list(BUILTIN_LOSSES)

    assert props["quant_post_litert"]["recipe"]["enum"] == list(RECIPES)
    assert props["quant_post_mixed"]["recipes"]["items"]["enum"] == list(MIXED_RECIPES)
    from kslim.commands.quant import RECIPES as CLI_RECIPES

    assert tuple(CLI_RECIPES) == tuple(RECIPES)
    from kslim.commands.quant import ALGOS as CLI_ALGOS, MODES   # the CLI's choices: the same source

    assert tuple(CLI_ALGOS) == tuple(ALGOS) and MODES[0] == "static"


@pytest.mark.slow  # ~20 s: a search and ADMM training in a pipeline (the default suite keeps the field checks)
def test_auto_compress_step(tmp_path, tiny_model_path):
    """The FLOPs target reached in rounds of search + ADMM, each round's search saved in the stage folder."""
    run = tmp_path / "run"
    cfg = _run_config(tiny_model_path, [{"auto_compress": {
        "flops_reduction": 0.4, "rounds": 2, "max_trials": 3, "eval_samples": 64, "epochs": 1,
        "fine_tune": {"epochs": 0}}}])
    _small(cfg, 64)
    result = Compressor(cfg, out=run, verbose=0).run()
    stages = _state(run)["stages"]
    info = stages["1"]["row"]["info"]
    assert info["flops_reduction"] >= 0.4 - 0.05 and len(info["rounds"]) == 2, info
    assert stages["1"]["row"]["macs"] < stages["base"]["row"]["macs"]
    assert (run / "stages" / "01_auto_compress" / "ckpt" / "auto_compress" / "round1").is_dir()
    assert result.model.count_params() < stages["base"]["row"]["params"]


@pytest.mark.slow  # a few AMC episodes in a pipeline (the default suite keeps the field checks)
def test_amc_step(tmp_path, tiny_model_path):
    """The FLOPs target met by the AMC step, the agent checkpointed in the stage folder."""
    run = tmp_path / "run"
    cfg = _run_config(tiny_model_path, [{"amc": {"flops_reduction": 0.4, "episodes": 3, "warmup": 2,
                                                 "eval_samples": 64, "fine_tune": {"epochs": 0}}}])
    _small(cfg, 64)
    Compressor(cfg, out=run, verbose=0).run()
    stages = _state(run)["stages"]
    info = stages["1"]["row"]["info"]
    assert info["flops_reduction"] >= 0.4 and stages["1"]["row"]["macs"] < stages["base"]["row"]["macs"], info
    assert (run / "stages" / "01_amc" / "ckpt" / "amc" / "amc_state.json").is_file()


@pytest.mark.parametrize("step, path, words", [
    ({"equalize": {"relu6": "clip"}}, "strategies[0].equalize.relu6", "'skip', 'relu'"),
    ({"equalize": {"iterations": 0}}, "strategies[0].equalize.iterations", "minimum"),
    ({"equalize": {"iterations": "two"}}, "strategies[0].equalize.iterations", "integer"),
    ({"equalize": {"sweeps": 2}}, "strategies[0].equalize", "sweeps"),
    ({"equalize": {"fine_tune": {"epochs": -1}}}, "strategies[0].equalize.fine_tune.epochs", "minimum"),
    ({"bias_correction": {"weight_quantize_type": "int4"}}, "strategies[0].bias_correction.weight_quantize_type",
     "channel_wise_abs_max"),
    ({"bias_correction": {"batches": 0}}, "strategies[0].bias_correction.batches", "minimum"),
    ({"bn_reestimate": {"batch_size": 0}}, "strategies[0].bn_reestimate.batch_size", "minimum"),
    ({"bn_reestimate": {"fine_tune": {}}}, "strategies[0].bn_reestimate", "fine_tune"),
    ({"distill": {"teacher": {"reference": "vgg"}, "pairs": [{"teacher": "a", "student": "b", "loss": "kd"}]}},
     "strategies[0].distill.pairs[0].loss", "dkd"),
    ({"distill": {"teacher": {"reference": "vgg"}, "pairs": [{"teacher": "a", "student": "b", "loss": "fsp"}]}},
     "strategies[0].distill.pairs[0].teacher", "two layer names"),
    ({"distill": {"teacher": {"reference": "vgg"}, "pairs": [{"teacher": "a", "student": "b", "loss": "l2",
                                                             "alpha": 1.0}]}},
     "strategies[0].distill.pairs[0].alpha", "option of dkd"),
    ({"auto_compress": {}}, "strategies[0].auto_compress", "flops_reduction"),
    ({"auto_compress": {"flops_reduction": 1.5}}, "strategies[0].auto_compress.flops_reduction", "maximum"),
    ({"auto_compress": {"flops_reduction": 0.5, "importance": "taylor"}}, "strategies[0].auto_compress.importance",
     "fpgm"),
    ({"amc": {}}, "strategies[0].amc", "flops_reduction"),
    ({"amc": {"flops_reduction": 0.5, "episodes": 0}}, "strategies[0].amc.episodes", "minimum"),
    ({"amc": {"flops_reduction": 0.5, "action_max": 1}}, "strategies[0].amc.action_max", "maximum"),
    ({"amc": {"flops_reduction": 0.5, "importance": "taylor"}}, "strategies[0].amc.importance", "fpgm"),
    ({"quant_post_litert": {"recipe": "int3"}}, "strategies[0].quant_post_litert.recipe", "int16x8"),
    ({"quant_post_litert": {"rules": [[".*", "int3"]]}}, "strategies[0].quant_post_litert.rules[0][1]", "int8x4"),
    ({"quant_post_litert": {"recipe": "int8", "rules": [[".*", "int8"]]}}, "strategies[0].quant_post_litert.rules", "not both"),
    ({"quant_post_mixed": {}}, "strategies[0].quant_post_mixed.size_budget", "latency_budget"),
    ({"quant_post_mixed": {"size_budget": 0}}, "strategies[0].quant_post_mixed.size_budget", "0"),
    ({"quant_post_mixed": {"size_budget": 0.8, "recipes": ["int4"]}}, "strategies[0].quant_post_mixed.recipes[0]",
     "int8x4"),
])
def test_bad_fields_of_the_new_steps_name_the_field(step, path, words):
    with pytest.raises(ConfigError) as e:
        validate_config(_cfg(step))
    assert e.value.path == path and words in str(e.value), str(e.value)


def test_new_steps_validate_and_quick_caps_only_training_steps():
    cfg = validate_config(_cfg({"prune": {"ratios": 0.5, "fine_tune": {"epochs": 3}}}, {"bn_reestimate": {}},
                               {"equalize": {"relu6": "relu", "iterations": 3, "fine_tune": {"epochs": 4}}},
                               {"bias_correction": {"weight_quantize_type": "abs_max", "batches": 2}},
                               {"quant_post_static": {"weight_quantize_type": "abs_max"}},
                               {"profile": {"runs": 40}}))
    quick = C.quick_config(cfg)["strategies"]
    assert quick[0]["prune"]["fine_tune"]["epochs"] == 1 and quick[2]["equalize"]["fine_tune"]["epochs"] == 1
    assert quick[3]["bias_correction"] == {"weight_quantize_type": "abs_max", "batches": 2}
    assert quick[5]["profile"]["runs"] == 10


# ----------------------------------------------------------------------------- registering
@pytest.fixture
def registered():
    """Names registered by a test, removed afterwards."""
    names = []
    yield names
    for n in names:
        if n in C.STRATEGIES:
            unregister_strategy(n)


def test_register_refuses_bad_names_schemas_and_duplicates(registered):
    def run(ctx, p, sdir, prefix):
        pass

    schema = {"type": "object", "additionalProperties": False, "properties": {}}
    with pytest.raises(KslimValueError, match="registered already"):
        register_strategy("prune", run, schema=schema)
    with pytest.raises(KslimValueError, match="lower case"):
        register_strategy("My Step", run, schema=schema)
    with pytest.raises(KslimValueError, match="type 'object'"):
        register_strategy("mine", run, schema={"enum": [1]})
    with pytest.raises(KslimValueError, match="invalid JSON schema"):
        register_strategy("mine", run, schema={"type": "object", "properties": {"a": {"type": "nonsense"}}})
    with pytest.raises(KslimTypeError, match="run must be callable"):
        register_strategy("mine", "run", schema=schema)
    assert "mine" not in [s.name for s in registered_strategies()]
    registered.append("mine")
    s = register_strategy("mine", run, schema=schema, doc="first")
    assert get_strategy("mine") is s and s.doc == "first"
    assert register_strategy("mine", run, schema=schema, doc="second", replace=True).doc == "second"


def test_cli_lists_the_registry(registered, capsys):
    from kslim.cli import main

    registered.append("noop_step")
    register_strategy("noop_step", lambda ctx, p, sdir, prefix: None, doc="Does nothing.",
                      schema={"type": "object", "additionalProperties": False, "properties": {"level": {}}})
    assert main(["compress", "--list-strategies"]) == 0
    out = capsys.readouterr().out
    for s in registered_strategies():
        assert f"{s.name}: {s.doc}" in out
    assert "noop_step: Does nothing.\n    fields: level" in out


# ----------------------------------------------------------------------------- runs
def _small(cfg, train_limit=128):
    """Fewer training images and one latency run: these tests check the steps, not the numbers."""
    cfg["data"]["train_limit"], cfg["report"]["latency_runs"] = train_limit, 1
    return cfg


def _state(run):
    return json.loads((run / "state.json").read_text())


def test_equalize_bias_correction_then_int8(tmp_path, tiny_model_path):
    from kslim.lite import LiteModel

    run = tmp_path / "run"
    cfg = _run_config(tiny_model_path, [
        {"equalize": {"iterations": 2}},
        {"bias_correction": {"batches": 2, "batch_size": 32}},
        {"quant_post_static": {"algo": "abs_max", "batch_nums": 2, "batch_size": 32}},
    ])
    result = Compressor(_small(cfg), out=run, verbose=0).run()
    assert LiteModel.load(result.final_tflite).precision == "int8"
    stages = _state(run)["stages"]
    eq, bc = stages["1"]["row"]["info"], stages["2"]["row"]["info"]
    assert eq["equalized_pairs"] >= 1 and bc["corrected_layers"] >= 1 and bc["samples"] == 64
    assert json.loads((run / "stages" / "01_equalize" / "equalize.json").read_text())["relu6"] == "skip"
    assert (run / "stages" / "02_bias_correction" / "model.keras").is_file()
    # equalization keeps the function (BatchNorm folded): same accuracy as the baseline
    assert abs(stages["1"]["row"]["accuracy"] - stages["base"]["row"]["accuracy"]) <= 0.02


def test_litert_rules_and_mixed_precision_steps(tmp_path, tiny_model_path):
    pytest.importorskip("ai_edge_quantizer")
    from kslim.lite import LiteModel
    from kslim.quant import tensor_types

    run = tmp_path / "run"
    cfg = _run_config(tiny_model_path, [
        {"quant_post_litert": {"rules": [[".*", "int8"], ["conv", "int16x8"]], "algo": "mse", "batch_nums": 2}},
        {"quant_post_mixed": {"size_budget": 0.9, "batch_nums": 2}},
    ])
    result = Compressor(_small(cfg), out=run, verbose=0).run()
    stages = _state(run)["stages"]
    litert = LiteModel.load(next((run / "stages" / "01_quant_post_litert").glob("*.tflite")))
    assert {"INT16", "INT8"} <= tensor_types(litert.content)
    info = stages["2"]["row"]["info"]
    assert info["met"] and info["size_bytes"] <= 0.9 * info["base_bytes"] and info["choices"]
    assert "INT4" in tensor_types(LiteModel.load(result.final_tflite).content)


def test_bn_reestimate_after_prune_changes_only_the_moving_statistics(tmp_path, tiny_model_path):
    from kslim._model_io import load_keras_model

    run = tmp_path / "run"
    cfg = _run_config(tiny_model_path, [{"prune": {"ratios": 0.5, "fine_tune": {"epochs": 0}}},
                                        {"bn_reestimate": {"batches": 4, "batch_size": 32}}])
    Compressor(_small(cfg), out=run, verbose=0).run()
    pruned = load_keras_model(run / "stages" / "01_prune" / "model.keras")
    fixed = load_keras_model(run / "stages" / "02_bn_reestimate" / "model.keras")
    bns = [layer.name for layer in pruned.layers if "BatchNormalization" in type(layer).__name__]
    assert bns
    for name in bns:
        a, b = pruned.get_layer(name), fixed.get_layer(name)
        assert not np.allclose(a.moving_mean, b.moving_mean) and not np.allclose(a.moving_variance, b.moving_variance)
        assert np.array_equal(a.gamma, b.gamma) and np.array_equal(a.beta, b.beta)
    info = _state(run)["stages"]["2"]["row"]["info"]
    assert info["bn_layers"] == len(bns) and info["samples"] == 128 and info["max_mean_shift"] > 0


def test_a_registered_strategy_validates_and_runs(tmp_path, tiny_model_path, registered):
    def check(params):
        return [("factor", "must not be 1 (nothing to do)")] if params.get("factor") == 1 else []

    @register_strategy("scale_head", check=check, schema={
        "type": "object", "additionalProperties": False, "required": ["factor"],
        "properties": {"layer": {"type": "string"}, "factor": {"type": "number", "exclusiveMinimum": 0}}})
    def run_scale_head(ctx, params, sdir, prefix):
        """Scale the kernel and bias of the last layer (the logits) by ``factor``."""
        layer = ctx.model.get_layer(params.get("layer", ctx.model.layers[-1].name))
        layer.set_weights([w * params["factor"] for w in layer.get_weights()])
        ctx.info["scaled"] = layer.name
        ctx.lite = None

    registered.append("scale_head")
    assert "scale_head" in C.STRATEGIES and "scale_head" in C.config_schema()["properties"]["strategies"][
        "items"]["propertyNames"]["enum"]
    for bad, path in (({"factor": -2}, "strategies[0].scale_head.factor"), ({}, "strategies[0].scale_head"),
                      ({"factor": 1}, "strategies[0].scale_head.factor")):
        with pytest.raises(ConfigError) as e:
            validate_config(_cfg({"scale_head": bad}))
        assert e.value.path == path, str(e.value)
    run = tmp_path / "run"
    cfg = _small(_run_config(tiny_model_path, [{"scale_head": {"factor": 2.0}}, {"export": {}}]))
    result = Compressor(cfg, out=run, verbose=0).run()
    state = _state(run)["stages"]
    assert state["1"]["row"]["info"] == {"scaled": result.model.layers[-1].name}
    # the logits doubled: same predictions, so the same accuracy; the stage's model is saved
    assert state["1"]["row"]["accuracy"] == state["base"]["row"]["accuracy"]
    assert (run / "stages" / "01_scale_head" / "model.keras").is_file() and result.final_tflite.is_file()


@pytest.mark.slow  # ~30 s: three training schemes in one pipeline (the default suite keeps their field checks)
def test_lottery_admm_netadapt_steps(tmp_path, tiny_model_path):
    """lottery: the kernels keep their shapes with >= sparsity zeros; admm: channels removed; netadapt:
    the MACs budget reached (one run for the three: a run's baseline and latencies cost seconds)."""
    from kslim._model_io import load_keras_model
    from kslim.prune.unstructured import prunable_weights

    run = tmp_path / "run"
    cfg = _run_config(tiny_model_path, [
        {"lottery": {"sparsity": 0.6, "iterations": 2, "fine_tune": {"epochs": 1}}},
        {"admm": {"ratios": 0.5, "rho": 0.01, "epochs": 1, "fine_tune": {"epochs": 0}}},
        {"netadapt": {"latency_reduction": 0.3, "latency": "macs", "step": 0.3, "eval_samples": 64,
                      "fine_tune": {"epochs": 0}}},
    ])
    _small(cfg, 64)
    result = Compressor(cfg, out=run, verbose=0).run()
    stages = _state(run)["stages"]
    assert [round(r["sparsity"], 2) for r in stages["1"]["row"]["info"]["rounds"]] == [0.37, 0.6]
    ticket = load_keras_model(run / "stages" / "01_lottery" / "model.keras")
    base = load_keras_model(run / "stages" / "00_baseline" / "model.keras")
    for name, w in prunable_weights(ticket).items():
        assert np.mean(np.asarray(w) == 0) >= 0.59, name
        assert tuple(w.shape) == tuple(prunable_weights(base)[name].shape)
    assert (run / "stages" / "01_lottery" / "ckpt" / "lottery.json").is_file()
    assert stages["2"]["row"]["params"] < stages["1"]["row"]["params"] == stages["base"]["row"]["params"]
    assert stages["2"]["row"]["info"]["channels_removed"] and len(stages["2"]["row"]["info"]["admm_residual"]) == 1
    assert (run / "stages" / "02_admm" / "layers.json").is_file()
    info = stages["3"]["row"]["info"]
    assert info["reached"] and info["latency"] <= 0.7 * info["latency_before"] and info["steps"] >= 1
    assert stages["3"]["row"]["macs"] <= 0.7 * stages["2"]["row"]["macs"]
    assert (run / "stages" / "03_netadapt" / "ckpt" / "netadapt" / "netadapt.json").is_file()
    assert result.model.count_params() < base.count_params()


@pytest.mark.parametrize("step, path, words", [
    ({"lottery": {"sparsity": 1.0}}, "strategies[0].lottery.sparsity", "maximum"),
    ({"lottery": {"iterations": 0}}, "strategies[0].lottery.iterations", "minimum"),
    ({"admm": {"rho": 0.1}}, "strategies[0].admm", "ratios"),
    ({"admm": {"ratios": 0.5, "rho": 0}}, "strategies[0].admm.rho", "minimum"),
    ({"admm": {"ratios": 0.5, "update_every": 2}}, "strategies[0].admm", "update_every"),
])
def test_bad_fields_of_lottery_and_admm(step, path, words):
    with pytest.raises(ConfigError) as e:
        validate_config(_cfg(step))
    assert e.value.path == path and words in str(e.value), str(e.value)


@pytest.mark.parametrize("params, path, words", [
    ({"step": 0.1}, "strategies[0].netadapt.latency_reduction", "budget"),
    ({"latency": "macs", "max_latency": 2.0}, "strategies[0].netadapt.max_latency", "latency_reduction"),
    ({"latency_reduction": 0.3, "latency": "flops"}, "strategies[0].netadapt.latency", "macs"),
    ({"latency_reduction": 0.3, "importance": "taylor"}, "strategies[0].netadapt.importance", "l1"),
])
def test_bad_fields_of_netadapt(params, path, words):
    with pytest.raises(ConfigError) as e:
        validate_config(_cfg({"netadapt": params}))
    assert e.value.path == path and words in str(e.value), str(e.value)
