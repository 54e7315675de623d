"""Mixed-precision PTQ (kslim.quant.mixed): the knapsack is optimal against brute force; under a size
budget the layer built to suffer from int4 weights keeps int8 while the robust one goes int4; the
exported file is measured against the budget; a latency budget buys int16 activations where they
lower the error most."""

import itertools

import keras
import numpy as np
import pytest

from kslim.errors import KslimValueError
from kslim.quant import quant_post_litert, tensor_types
from kslim.quant.mixed import quant_post_mixed, solve_knapsack

pytest.importorskip("ai_edge_quantizer")


def _brute(options, budgets):
    best = None
    for combo in itertools.product(*[range(len(v)) for v in options.values()]):
        value = sum(options[g][i][0] for g, i in zip(options, combo))
        cost = np.sum([options[g][i][1] for g, i in zip(options, combo)], axis=0)
        if np.all(cost <= np.asarray(budgets) + 1e-9) and (best is None or value < best):
            best = value
    return best


@pytest.mark.parametrize("seed", range(6))
def test_knapsack_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    k = 1 + seed % 2
    options = {f"g{i}": [(float(rng.normal()), tuple(rng.integers(-3, 6, k).astype(float)))
                         for _ in range(int(rng.integers(1, 4)))] for i in range(5)}
    budgets = tuple(rng.integers(-2, 12, k).astype(float))
    pick = solve_knapsack(options, budgets, resolution=400)
    optimum = _brute(options, budgets)
    if pick is None:
        assert optimum is None or _brute(options, tuple(b - 5 * 15 / 400 for b in budgets)) is None
        return
    cost = np.sum([options[g][i][1] for g, i in pick.items()], axis=0)
    value = sum(options[g][i][0] for g, i in pick.items())
    assert np.all(cost <= np.asarray(budgets) + 1e-9)  # the plan holds the budget exactly
    assert value >= optimum - 1e-12
    # costs are rounded up to the grid: at worst it misses plans within one step per group of the budget
    tight = _brute(options, tuple(b - 5 * 15 / 400 for b in budgets))
    assert tight is None or value <= tight + 1e-12


@pytest.fixture(scope="module")
def two_dense():
    """Two equal 64x64 Dense layers: 'fragile' has one large weight per output channel on an input that
    is always zero, so it changes nothing in float but sets the per-channel int4 step so wide that the
    other weights round to zero; 'robust' has Gaussian weights only."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((64,))
    h = keras.layers.Dense(64, activation="relu", name="fragile")(inp)
    h = keras.layers.Dense(64, activation="relu", name="robust")(h)
    out = keras.layers.Dense(4, name="logits")(h)
    m = keras.Model(inp, out)
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.2, (64, 64)).astype("float32")
    w[0, :] = 6.0
    m.get_layer("fragile").kernel.assign(w)
    m.get_layer("robust").kernel.assign(rng.normal(0, 0.2, (64, 64)).astype("float32"))
    x = rng.random((64, 64), dtype=np.float32)
    x[:, 0] = 0.0
    return m, x


def test_size_budget_moves_the_robust_layer_to_int4(two_dense):
    m, x = two_dense
    full = quant_post_mixed(m, x, size_budget=1.0)  # the base itself: nothing needs to move
    assert full.met and full.base_bytes <= full.size_budget_bytes
    # one of the two kernels must go to 4 bits (-2048 B each), the knapsack picks which
    res = quant_post_mixed(m, x, size_budget=full.base_bytes - 1500)
    assert res.choices.get("robust") == "int8x4" and "fragile" not in res.choices, res.summary()
    assert res.met and res.size_bytes <= res.size_budget_bytes and "INT4" in tensor_types(res.lite.content)
    assert res.predicted_bytes == pytest.approx(res.size_bytes, abs=64)  # sizes add up per layer
    by = {(o.layer, o.recipe): o for o in res.options}
    assert by[("fragile", "int8x4")].error_delta > 5 * by[("robust", "int8x4")].error_delta
    # the other plan of the same size is measurably worse
    swapped = quant_post_litert(m, [(".*", "int8"), (r"(^|[/;])fragile(_\d+)?/", "int8x4")], x, 64, check=False)
    ref = m.predict(x, verbose=0)
    err = float(np.mean((swapped.predict(x) - ref) ** 2) / np.mean(ref ** 2))
    assert res.error < err
    assert np.corrcoef(res.lite.predict(x).ravel(), ref.ravel())[0, 1] > 0.9  # measured 0.94: 16 levels on random weights


def test_latency_budget_buys_int16_where_it_helps(two_dense):
    m, x = two_dense

    def latency(lite):  # deterministic stand-in for a device: 1 ms + 0.1 ms per int16 tensor
        from kslim.lite.flatbuffer import read_flatbuffer, tensor_type

        int16 = tensor_type("INT16")
        return 1.0 + 0.1 * sum(t.type == int16 for t in read_flatbuffer(lite.content).subgraphs[0].tensors)

    res = quant_post_mixed(m, x, latency_budget=1.25, latency_fn=latency)
    assert res.base_latency_ms == 1.0 and res.latency_budget_ms == pytest.approx(1.25)
    assert res.met and res.latency_ms <= 1.25 + 1e-9
    assert set(res.choices.values()) == {"int16x8"} and res.error < res.base_error
    assert res.summary().count("int16x8") == len(res.choices)


def test_bad_arguments_fail_before_any_work(two_dense):
    m, x = two_dense
    with pytest.raises(KslimValueError, match="size_budget= .* latency_budget="):
        quant_post_mixed(m, x)
    with pytest.raises(KslimValueError, match="recipe 'int3'"):
        quant_post_mixed(m, x, size_budget=0.8, recipes=["int3"])
    with pytest.raises(KslimValueError, match="'nope' is not a Conv1D/Conv2D/DepthwiseConv2D/Dense layer"):
        quant_post_mixed(m, x, size_budget=0.8, layers=["nope"])
    with pytest.raises(KslimValueError, match="size_budget must be a positive number"):
        quant_post_mixed(m, x, size_budget=-1)
    with pytest.raises(KslimValueError, match="base must be one of"):
        quant_post_mixed(m, x, size_budget=0.8, base="int4")
