"""Pruning scopes (kslim.prune.scope): which channel groups a pruner may prune, by name or function."""

import keras
import numpy as np
import pytest

import kslim
from kslim.errors import KslimValueError
from kslim.prune import FilterPruner, make_pruner, scope_names
from kslim.prune.scope import get_scope, register_scope, scope_description, unregister_scope


@pytest.fixture(scope="module")
def resnet():
    keras.utils.set_random_seed(0)
    return kslim.models.resnet(width=0.25)


def _adds(model):
    return {l.name: tuple(l.output.shape) for l in model.layers if isinstance(l, keras.layers.Add)}


def test_registry_names_and_errors():
    assert scope_names()[:2] == ["all", "uncoupled"]
    assert get_scope("Uncoupled")[0] == "uncoupled"
    assert "residual stream keeps its width" in scope_description("uncoupled")
    with pytest.raises(KslimValueError, match=r"Unknown pruning scope 'inside'.*'all', 'uncoupled'"):
        get_scope("inside")
    with pytest.raises(KslimValueError, match="already registered"):
        register_scope("all", "again", lambda g, graph: False)
    with pytest.raises(KslimValueError, match="lower-case identifier"):
        register_scope("Wide one", "x", lambda g, graph: True)
    with pytest.raises(KslimValueError, match="lower-case identifier"):  # not a TypeError (unhashable)
        register_scope(["wide"], "x", lambda g, graph: True)
    from kslim.validation import api_constant
    assert hasattr(api_constant, "cache_info")  # the source-reading helper stays cached


def test_uncoupled_keeps_the_residual_stream(resnet):
    """Only single-producer groups shrink: every Add keeps its width, the blocks' first convs shrink, and
    prune_to_flops still reaches the target from them alone."""
    pruner = make_pruner(resnet, scope="uncoupled")
    coupled = [g for g in pruner.graph.groups if g.prunable and len(g.layer_names) > 1]
    assert coupled and not any(len(g.layer_names) > 1 for g in pruner.groups)
    assert {g.name for g in pruner.groups} == {"stage1_block1_conv1", "stage2_block1_conv1", "stage3_block1_conv1"}
    found = pruner.prune_to_flops(0.4)
    assert found.reduction >= 0.4
    small = found.model
    assert _adds(small) == _adds(resnet)
    for name in ("stage1_block1_conv1", "stage2_block1_conv1", "stage3_block1_conv1"):
        assert small.get_layer(name).filters < resnet.get_layer(name).filters
    for g in coupled:
        for name in g.layer_names:
            assert small.get_layer(name).filters == resnet.get_layer(name).filters
    x = np.random.default_rng(0).random((2, 28, 28, 1), dtype=np.float32)
    assert small(x).shape == resnet(x).shape
    # the default scope prunes the stream too
    everything = make_pruner(resnet).prune(0.5)
    assert _adds(everything) != _adds(resnet)


def test_scope_all_is_the_default(resnet):
    a = make_pruner(resnet).prune(0.5)
    b = make_pruner(resnet, scope="all").prune(0.5)
    assert [l.get_config().get("filters") for l in a.layers] == [l.get_config().get("filters") for l in b.layers]


def test_a_layer_outside_the_scope_is_named(resnet):
    pruner = FilterPruner(resnet, importance="l1", scope="uncoupled")
    with pytest.raises(KslimValueError, match=r"'stem_conv' is not pruned by this pruner: outside the pruning "
                                              r"scope 'uncoupled'"):
        pruner.prune({"stem_conv": 0.5})
    with pytest.raises(KslimValueError, match="Unknown pruning scope"):
        FilterPruner(resnet, importance="l1", scope="internal")


def test_function_and_registered_scope(resnet):
    def wide(group, graph):
        return group.size >= 16

    pruner = make_pruner(resnet, scope=wide)
    assert pruner.scope == "wide" and pruner.groups and all(g.size >= 16 for g in pruner.groups)
    register_scope("wide16", "groups of at least 16 channels", wide)
    try:
        assert "wide16" in scope_names()
        assert [g.name for g in make_pruner(resnet, scope="wide16").groups] == [g.name for g in pruner.groups]
    finally:
        unregister_scope("wide16")
    assert "wide16" not in scope_names()


def test_mobilenet_v2_uncoupled_prunes_the_expansions():
    """keras.applications MobileNetV2: the uncoupled groups are the block expansions (and the stem and the
    two block outputs no Add ties); every Add keeps its width."""
    keras.utils.set_random_seed(0)
    m = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=10)
    pruner = make_pruner(m, scope="uncoupled", round_to=8)
    names = {g.name for g in pruner.groups}
    assert {f"block_{i}_expand" for i in range(1, 17)} <= names
    assert not any(n.endswith("_project") and n not in ("expanded_conv_project", "block_16_project") for n in names)
    small = pruner.prune_to_flops(0.3).model
    assert _adds(small) == _adds(m)
    assert small.get_layer("block_5_expand").filters < m.get_layer("block_5_expand").filters


def test_scope_in_config_and_cli_come_from_the_registry(tmp_path, capsys):
    from kslim.cli import main
    from kslim.compressor import validate_config
    from kslim.compressor.strategies import get_strategy
    from kslim.errors import ConfigError

    assert get_strategy("prune").schema["properties"]["scope"]["enum"] == scope_names()
    cfg = {"name": "t", "model": {"reference": "resnet"}, "data": {"source": "small"},
           "strategies": [{"prune": {"ratios": 0.5, "scope": "inside"}}]}
    with pytest.raises(ConfigError) as e:
        validate_config(cfg)
    assert e.value.path == "strategies[0].prune.scope" and "uncoupled" in str(e.value)
    cfg["strategies"][0]["prune"]["scope"] = "uncoupled"
    validate_config(cfg)

    keras.utils.set_random_seed(0)
    path, out = tmp_path / "r.keras", tmp_path / "small.keras"
    kslim.models.resnet(width=0.25).save(path)
    assert main(["prune", str(path), "-o", str(out), "--ratios", "0.5", "--scope", "uncoupled"]) == 0
    small = keras.models.load_model(out)
    assert small.get_layer("stem_conv").filters == 8 and small.get_layer("stage1_block1_conv1").filters == 4
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["prune", str(path), "-o", str(out), "--ratios", "0.5", "--scope", "inside"])
    assert "invalid choice" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- the schemes take it too
def _fresh_resnet():
    keras.utils.set_random_seed(0)
    m = kslim.models.resnet(width=0.25)
    m.compile(keras.optimizers.SGD(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return m


def _data(n=16):
    rng = np.random.default_rng(0)
    return rng.random((n, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, n)


def _only_uncoupled_shrank(small, model):
    assert _adds(small) == _adds(model)
    assert small.get_layer("stage1_block1_conv1").filters < model.get_layer("stage1_block1_conv1").filters


def test_admm_and_gradual_pruning_keep_to_the_scope():
    from kslim.prune import ADMMPruning, GradualPruning, strip_pruning
    from kslim.prune.gradual import AGP

    x, y = _data()
    with pytest.raises(KslimValueError, match="Unknown pruning scope 'inside'"):
        ADMMPruning(0.5, scope="inside")  # refused when the callback is made, before fit
    with pytest.raises(KslimValueError, match="Unknown pruning scope 'inside'"):
        GradualPruning("l1", 0.5, scope="inside")

    m = _fresh_resnet()
    admm = ADMMPruning(0.5, scope="uncoupled")
    m.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[admm])
    assert {g.name for g in admm.pruner.groups} == {"stage1_block1_conv1", "stage2_block1_conv1",
                                                   "stage3_block1_conv1"}
    _only_uncoupled_shrank(admm.prune(), m)

    m = _fresh_resnet()
    cb = GradualPruning("l1", 0.5, schedule=AGP(0, 2, 1), scope="uncoupled")
    m.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[cb])
    assert set(cb.masks) <= {g.name for g in cb.pruner.groups} and cb.get_state()["scope"] == "uncoupled"
    _only_uncoupled_shrank(strip_pruning(m, cb.get_state()), m)

    # a layer of the residual stream named in ratios: the error says it is outside the scope
    m = _fresh_resnet()
    cb = GradualPruning("l1", {"stem_conv": 0.5}, schedule=AGP(0, 2, 1), scope="uncoupled")
    with pytest.raises(KslimValueError, match="outside the pruning scope 'uncoupled'"):
        m.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[cb])


def test_netadapt_amc_and_auto_compress_keep_to_the_scope(tmp_path):
    from kslim.nas import amc_prune, auto_compress
    from kslim.prune.netadapt import netadapt

    m, (x, y) = _fresh_resnet(), _data()
    macs = lambda mm: kslim.flops(mm).macs / 1e6  # noqa: E731 -- a noise-free stand-in latency
    score = lambda mm: float(np.mean(np.argmax(mm.predict(x, verbose=0), -1) == y))  # noqa: E731
    with pytest.raises(KslimValueError, match="Unknown pruning scope"):
        netadapt(m, score, latency_reduction=0.2, latency_fn=macs, scope="inside")
    res = netadapt(m, score, latency_reduction=0.2, latency_fn=macs, step=0.1, scope="uncoupled")
    assert res.reached
    _only_uncoupled_shrank(res.model, m)

    res = amc_prune(m, score, 0.3, episodes=2, warmup=2, scope="uncoupled", directory=str(tmp_path / "amc"))
    assert set(res.ratios) <= {"stage1_block1_conv1", "stage2_block1_conv1", "stage3_block1_conv1"}
    assert _adds(res.model) == _adds(m)

    def train(model, callbacks):
        model.compile(keras.optimizers.SGD(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=callbacks)

    res = auto_compress(m, score, train, 0.2, rounds=1, max_trials=2, scope="uncoupled",
                        directory=str(tmp_path / "ac"))
    assert res.flops_reduction >= 0.2
    assert _adds(res.model) == _adds(m)


@pytest.mark.parametrize("strategy", ["prune", "admm", "auto_compress", "amc", "netadapt"])
def test_every_channel_pruning_strategy_takes_the_scope(strategy):
    from kslim.compressor import validate_config
    from kslim.compressor.strategies import get_strategy
    from kslim.errors import ConfigError

    assert get_strategy(strategy).schema["properties"]["scope"]["enum"] == scope_names()
    params = {"prune": {"ratios": 0.5}, "admm": {"ratios": 0.5}, "auto_compress": {"flops_reduction": 0.3},
              "amc": {"flops_reduction": 0.3}, "netadapt": {"latency_reduction": 0.2}}[strategy]
    cfg = {"name": "t", "model": {"reference": "resnet"}, "data": {"source": "small"},
           "strategies": [{strategy: {**params, "scope": "uncoupled"}}]}
    validate_config(cfg)
    cfg["strategies"][0][strategy]["scope"] = "inside"
    with pytest.raises(ConfigError) as e:
        validate_config(cfg)
    assert e.value.path == f"strategies[0].{strategy}.scope"
