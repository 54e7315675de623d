"""One vocabulary across API, YAML and CLI (issue 17, item 10), old names kept for one release.

The names: ``ratios`` (fraction of channels removed: one float or ``{layer: float}``),
``flops_reduction`` (share of MACs removed) vs ``max_flops`` (an absolute ceiling), ``importance``
(how channels are ranked) vs ``pruner`` (a FilterPruner class or instance), ``skip`` /
``skip_pattern``, ``num_threads``, ``tolerance``; results are dataclasses; one ``measure_latency``
and one ``convert`` contract; one message for "not a keras.Model".
"""

import inspect
import warnings

import keras
import numpy as np
import pytest

import kslim
from kslim.errors import ConfigError, KslimTypeError

OLD_NAMES = {"target_ratio", "criterion", "tol", "threads", "not_quant_pattern", "skip_layers", "target_flops",
             "target"}
PUBLIC = ["kslim", "kslim.prune", "kslim.quant", "kslim.lite", "kslim.nas", "kslim.distill", "kslim.analysis",
          "kslim.compressor"]


def _public_callables():
    import importlib

    seen = {}
    for mod_name in PUBLIC:
        mod = importlib.import_module(mod_name)
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name, None)
            if inspect.ismodule(obj) or obj is None:
                continue
            if inspect.isclass(obj):
                seen[f"{mod_name}.{name}"] = obj.__init__
                for meth_name, meth in inspect.getmembers(obj, inspect.isfunction):
                    if not meth_name.startswith("_"):
                        seen[f"{mod_name}.{name}.{meth_name}"] = meth
            elif callable(obj):
                seen[f"{mod_name}.{name}"] = obj
    return seen


def test_no_public_signature_uses_an_old_name():
    bad = {}
    for where, fn in _public_callables().items():
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            continue
        old = sorted(OLD_NAMES & set(params))
        if where.startswith("kslim.prune.MagnitudeImportance"):  # its argument is a weight criterion function,
            old = [n for n in old if n != "criterion"]        # (n, d) filters -> (n,) scores: the right word
        if old:
            bad[where] = old
    assert not bad, bad


def _model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, name="c1", activation="relu")(inp)
    x = keras.layers.Conv2D(8, 3, name="c2", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(3, name="fc")(x), name="vocab")


def test_prune_to_flops_returns_a_result_and_the_old_spelling_warns():
    from kslim.prune import L1NormFilterPruner
    from kslim.prune.result import PruneResult

    pruner = L1NormFilterPruner(_model())
    res = pruner.prune_to_flops(0.3)
    assert isinstance(res, PruneResult) and res.reduction >= 0.3 and res.flops_reduction == 0.3
    assert res.macs_after == kslim.flops(res.model).macs < res.macs_before
    assert res.overshoot == pytest.approx(res.reduction - 0.3) and res.overshoot >= 0
    with pytest.warns(DeprecationWarning, match="target= is deprecated, use flops_reduction="):
        old = pruner.prune_to_flops(target=0.3)
    with pytest.warns(DeprecationWarning, match="unpacking a PruneResult"):
        model, info = old
    assert model is old.model and info["target"] == info["flops_reduction"] == 0.3
    with pytest.raises(KslimTypeError, match="give flops_reduction= only"):
        pruner.prune_to_flops(0.3, target=0.3)


def test_importance_is_the_name_of_the_ranking():
    from kslim.prune import FilterPruner, L1NormFilterPruner, make_pruner, sensitivity
    from kslim.prune.importance import l1_norm

    m = _model()
    expected = L1NormFilterPruner(m).plan(0.5)
    got = FilterPruner(m, importance=l1_norm).plan(0.5)  # a weight criterion function is an importance
    assert {k: v.tolist() for k, v in got.items()} == {k: v.tolist() for k, v in expected.items()}
    with pytest.warns(DeprecationWarning, match="criterion= is deprecated, use importance="):
        FilterPruner(m, criterion=l1_norm)
    assert type(make_pruner(m, importance="l2")).__name__ == "L2NormFilterPruner"
    with pytest.warns(DeprecationWarning, match="pruner='l2' is deprecated, use importance='l2'"):
        assert type(make_pruner(m, "l2")).__name__ == "L2NormFilterPruner"
    with pytest.raises(KslimTypeError, match="not both"):
        make_pruner(m, L1NormFilterPruner, importance="l2")
    score = lambda mm: 1.0  # noqa: E731
    with pytest.warns(DeprecationWarning, match="sensitivity\\(\\): pruner='l2'"):
        sensitivity(m, score, ratios=[0.5], checkpoint=None, verbose=0, pruner="l2")
    assert sensitivity(m, score, ratios=[0.5], checkpoint=None, verbose=0, importance="l2")


def test_gradual_pruning_ratios():
    from kslim.prune import GradualPruning

    assert GradualPruning("l1", 0.4).ratios == 0.4
    assert GradualPruning(importance="fpgm", ratios={"c1": 0.5}).ratios == {"c1": 0.5}
    with pytest.warns(DeprecationWarning, match="target_ratio= is deprecated, use ratios="):
        assert GradualPruning(target_ratio=0.3).ratios == 0.3


def test_quant_config_skip_names():
    from kslim.quant import QuantConfig

    cfg = QuantConfig(skip=["fc"], skip_pattern=["c"])
    assert cfg.skip == ("fc",) and cfg.skip_pattern == ("c",)
    with pytest.warns(DeprecationWarning, match="not_quant_pattern= is deprecated, use skip_pattern="):
        assert QuantConfig(not_quant_pattern=["c"]).skip_pattern == ("c",)
    with pytest.warns(DeprecationWarning, match="'skip_layers' is deprecated"):
        assert QuantConfig.from_dict({"skip_layers": ["fc"]}).skip == ("fc",)
    with pytest.raises(ConfigError, match="give 'skip' only"):
        QuantConfig.from_dict({"skip_layers": ["fc"], "skip": ["fc"]})


def test_yaml_fields_have_the_api_names_and_old_ones_warn():
    from kslim.compressor import config as C

    names = set()

    def walk(schema):
        if isinstance(schema, dict):
            names.update(schema.get("properties", {}))
            for v in schema.values():
                walk(v)
        elif isinstance(schema, list):
            for v in schema:
                walk(v)

    walk(C._STRATEGY_SCHEMAS)
    walk(C.SCHEMA)
    assert {"importance", "ratios", "flops_reduction", "num_threads", "skip"} <= names
    assert not names & {"criterion", "ratio", "flops_target", "threads", "skip_layers", "not_quant_pattern"}
    old = {"model": {"reference": "vgg"}, "report": {"threads": 2}, "strategies": [
        {"prune": {"criterion": "l2", "sensitivity": {"flops_target": 0.5}}}, {"profile": {"threads": 2}}]}
    with pytest.warns(DeprecationWarning) as rec:
        cfg = C.validate_config(old)
    assert len(rec) == 4
    assert cfg["strategies"][0]["prune"] == {"importance": "l2", "sensitivity": {"flops_reduction": 0.5}}
    assert cfg["strategies"][1]["profile"] == {"num_threads": 2} and cfg["report"]["num_threads"] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ConfigError, match="give 'ratios' only"):
            C.validate_config({"model": {"reference": "vgg"}, "strategies": [{"prune": {"ratio": 0.2, "ratios": 0.3}}]})
    # the export enum is the API's (kslim.lite.QUANTIZE_MODES), plus the YAML spelling "none"
    from kslim.lite import QUANTIZE_MODES

    assert C._STRATEGY_SCHEMAS["export"]["properties"]["quantize"]["enum"] == [*QUANTIZE_MODES, "none"]


def test_cli_flags_have_the_api_names_and_old_ones_still_work(tmp_path, capsys):
    from kslim.cli import main

    path = tmp_path / "m.keras"
    _model().save(path)
    for new, old in ((["--ratios", "0.5", "--importance", "l2"], ["--ratio", "0.5", "--criterion", "l2"]),
                     (["--flops-reduction", "0.3"], ["--flops-target", "0.3"])):
        assert main(["prune", str(path), "-o", str(tmp_path / "a.keras"), *new]) == 0
        a_out, a_err = capsys.readouterr()
        assert "deprecated" not in a_err
        assert main(["prune", str(path), "-o", str(tmp_path / "b.keras"), *old]) == 0
        b_out, b_err = capsys.readouterr()
        assert "is deprecated, use" in b_err
        assert a_out.splitlines()[1:] == b_out.splitlines()[1:]  # same params / MACs lines
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    help_text = capsys.readouterr().out
    assert "--importance" in help_text and "--flops-reduction" in help_text and "--criterion" not in help_text
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    assert "{none,float32,dynamic,float16,int8}" in capsys.readouterr().out


def test_one_measure_latency():
    from kslim import lite, nas

    assert nas.measure_latency is lite.measure_latency
    m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    assert lite.measure_latency(m, runs=3) > 0
    assert lite.measure_latency(lite.convert(m, check=False), runs=3) > 0


def test_one_convert_contract_for_qat_models():
    from kslim import lite, quant

    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                          keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    q = quant.quant_aware(m, weight_bits=4, activation_bits=4)
    x = np.random.default_rng(0).random((16, 8, 8, 1), dtype=np.float32)
    q(x, training=True)  # the activation quantizers get their ranges
    a, b = quant.convert(q), lite.convert(q)
    assert a.conversion["quantize"] == b.conversion["quantize"] == "int8"
    assert a.content == b.content and not a.float_ops
    with pytest.raises(kslim.ModelError, match="no quantization layers"):
        quant.convert(m)


@pytest.mark.parametrize("call", [
    lambda: kslim.flops("m.keras"),
    lambda: kslim.lite.convert("m.keras"),
    lambda: kslim.quant.quant_aware("m.keras"),
    lambda: kslim.prune.L1NormFilterPruner("m.keras"),
    lambda: kslim.prune.sensitivity("m.keras", lambda m: 1.0),
    lambda: kslim.build_dependency_graph("m.keras"),
    lambda: kslim.quant.quant_post_dynamic("m.keras"),
    lambda: kslim.nas.auto_prune("m.keras", lambda m: 1.0, flops_reduction=0.5),
    lambda: kslim.distill.Distiller("m.keras", _model()),
], ids=["flops", "convert", "quant_aware", "pruner", "sensitivity", "graph", "ptq_dynamic", "auto_prune",
        "distiller"])
def test_one_message_for_a_model_that_is_not_a_keras_model(call):
    with pytest.raises(KslimTypeError, match=r"^\S+ needs a keras\.Model, got str \(load a file with "
                                            r"keras\.models\.load_model\)\.$"):
        call()
