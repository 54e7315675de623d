"""Latency tables (per-op-configuration measurements) and the predictor."""

import json

import numpy as np
import pytest

from kslim.errors import ConfigError, KslimFileError, KslimValueError


def _net(width, size=16, name=None):
    import keras
    from keras import layers

    inp = keras.Input((size, size, 3))
    x = layers.Conv2D(width, 3, strides=2, padding="same", activation="relu")(inp)
    x = layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = layers.Conv2D(2 * width, 1, activation="relu6")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, layers.Dense(10)(x), name=name or f"net{width}")


@pytest.fixture(scope="module")
def lites():
    import keras

    from kslim.lite import convert

    keras.utils.set_random_seed(0)
    return {w: convert(_net(w), check=False) for w in (8, 16, 24)}


@pytest.fixture(scope="module")
def table(lites):
    from kslim.lite import LatencyTable, LocalDevice

    return LatencyTable.build(LocalDevice(), [lites[8], lites[16], lites[24]], runs=30, repeats=1,
                              calibration_runs=40)


def test_op_configs_describe_kernels_strides_groups_and_macs(lites):
    from kslim.lite import op_configs

    cfg = op_configs(lites[8])
    assert [c["op"] for c in cfg] == ["CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "MAX_POOL_2D", "MEAN",
                                      "FULLY_CONNECTED"]
    conv, dw, pw, pool, _, fc = cfg
    assert conv["kernel"] == [3, 3] and conv["stride"] == [2, 2] and conv["groups"] == 1
    assert conv["input_shape"] == [1, 16, 16, 3] and conv["output_shape"] == [1, 8, 8, 8]
    assert conv["padding"] == "SAME" and conv["activation"] == "RELU" and conv["dtype"] == "float32"
    assert conv["macs"] == 8 * 8 * 8 * 3 * 3 * 3
    assert dw["groups"] == 8 and dw["macs"] == 8 * 8 * 8 * 9 and dw["stride"] == [1, 1]
    assert pw["kernel"] == [1, 1] and pw["activation"] == "RELU6" and pw["macs"] == 8 * 8 * 16 * 8
    assert pool["kernel"] == [2, 2] and pool["stride"] == [2, 2]
    assert fc["macs"] == 16 * 10
    assert len({c["key"] for c in cfg}) == len(cfg)
    # same layer shapes -> same key; another width -> other keys
    assert op_configs(lites[8])[0]["key"] == conv["key"] and op_configs(lites[16])[0]["key"] != conv["key"]


def test_int8_configs_carry_quantization(small_data):
    import keras
    from keras import layers

    from kslim.lite import convert, op_configs

    inp = keras.Input((28, 28, 1))
    m = keras.Model(inp, layers.Dense(4)(layers.Flatten()(layers.Conv2D(4, 3)(inp))))
    lm = convert(m, quantize="int8", representative_data=small_data[0][0][:20], check=False)
    conv = next(c for c in op_configs(lm) if c["op"] == "CONV_2D")
    assert conv["dtype"] == "int8" and conv["quant"] in ("per_tensor", "per_channel")
    # every op runs alone, also the RESHAPE fed a computed shape (SHAPE -> STRIDED_SLICE -> PACK)
    from kslim.lite import LatencyTable, LocalDevice

    t = LatencyTable.build(LocalDevice(), [lm], runs=5, repeats=1, calibrate=False)
    assert {e["op"] for e in t.entries.values()} >= {"CONV_2D", "RESHAPE", "FULLY_CONNECTED", "QUANTIZE"}
    assert all(e["latency_us"] is not None for e in t.entries.values())


def test_build_measures_every_config_and_calibrates(table, lites):
    from kslim.lite import op_configs

    keys = {c["key"] for lm in lites.values() for c in op_configs(lm)}
    assert set(table.entries) == keys
    assert all(e["latency_us"] is not None and e["latency_us"] >= 0 and e["raw_us"] > 0 for e in table.entries.values())
    assert table.overhead_us > 0 and table.num_threads == 1 and table.device["kind"] == "local"
    # no op is timed in context by default (the calibration's memory term stands for it)
    assert table.settings["context"] is False and table.settings["context_models"] == []
    assert table.settings["cache_bytes"] > 0 and not any("context_us" in e for e in table.entries.values())
    cal = table.calibration
    assert len(cal["models"]) == 3 and all(r["measured_us"] > 0 for r in cal["models"])
    assert cal["scale"] == 1.0 and cal["per_op_us"] >= 0 and cal["method"] == "theil-sen"
    assert cal["cold_models"] == 0 and cal["cold_us_per_mb"] == 0.0  # tiny nets fit in cache
    # a wider net has more work in its biggest conv
    big = max(table.entries.values(), key=lambda e: e["macs"])
    assert big["output_shape"][-1] == 48


def test_save_load_json_and_csv(table, tmp_path):
    from kslim.lite import LatencyTable

    for name in ("t.json", "t.csv"):
        table.save(tmp_path / name)
        back = LatencyTable.load(tmp_path / name)
        assert set(back.entries) == set(table.entries)
        for k, e in table.entries.items():
            b = back.entries[k]
            assert b["latency_us"] == pytest.approx(e["latency_us"]) and b["kernel"] == e["kernel"]
            assert b["input_shape"] == e["input_shape"] and b["macs"] == e["macs"]
        assert back.device == table.device and back.calibration["scale"] == pytest.approx(table.calibration["scale"])
    doc = json.loads((tmp_path / "t.json").read_text())
    assert doc["format"] == "kslim.latency_table" and doc["version"] == 1
    assert (tmp_path / "t.csv").read_text().splitlines()[1].startswith("key,op,input_shape")


def test_load_bad_tables(table, tmp_path):
    from kslim.lite import LatencyTable

    with pytest.raises(KslimFileError, match="does not exist"):
        LatencyTable.load(tmp_path / "none.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(KslimFileError, match="not a readable kslim latency table"):
        LatencyTable.load(tmp_path / "junk.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something"}))
    with pytest.raises(ConfigError, match="format"):
        LatencyTable.load(tmp_path / "other.json")
    doc = table.to_dict()
    doc["version"] = 99
    (tmp_path / "v99.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="version 99.*rebuild"):
        LatencyTable.load(tmp_path / "v99.json")
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="not a kslim latency table"):
        LatencyTable.load(tmp_path / "x.csv")


def test_predict_known_model_uses_table_only(table, lites):
    from kslim.lite import LatencyPredictor, LocalDevice

    pred = LatencyPredictor(table)
    r = pred.predict(lites[16])
    assert r.fallback_ops == 0 and not r.flagged and r.fallback_fraction == 0.0
    assert len(r.ops) == 6 and all(o["source"] == "table" for o in r.ops)
    raw = LatencyPredictor(table, calibrated=False).predict(lites[16])
    cal = table.calibration
    assert r.total_ms == pytest.approx((cal["intercept_us"] + cal["per_op_us"] * 6 + raw.total_ms * 1e3) / 1e3,
                                       rel=1e-6)
    measured = LocalDevice().measure(lites[16].content, runs=60, repeats=3) / 1e3
    assert 0.2 < r.total_ms / measured < 5  # loose: CI machines are shared; the benchmark reports accuracy


def test_unseen_configs_go_to_the_flagged_fallback(table):
    import keras

    from kslim.lite import LatencyPredictor, convert

    keras.utils.set_random_seed(0)
    wide = convert(_net(40, size=24, name="wide"), check=False)
    r = LatencyPredictor(table).predict(wide)
    assert r.flagged and r.fallback_ops >= 3 and 0 < r.fallback_fraction <= 1
    assert all(o["latency_ms"] >= 0 for o in r.ops)
    small = LatencyPredictor(table).predict(convert(_net(4, size=16, name="thin"), check=False))
    assert r.total_ms > small.total_ms  # more MACs -> slower, through the fitted fallback


def test_build_single_ops_and_bad_input(lites):
    from kslim.lite import LatencyTable, LocalDevice, op_configs

    t = LatencyTable.build(LocalDevice(), [(lites[8], 0), (lites[8], 2)], runs=10, repeats=1)
    assert len(t) == 2 and t.calibration["models"] == []
    assert op_configs(lites[8])[0]["key"] in t
    with pytest.raises(KslimValueError, match="at least one"):
        LatencyTable.build(LocalDevice(), [])
    with pytest.raises(KslimValueError, match="expected a LiteModel"):
        LatencyTable.build(LocalDevice(), [42])
    with pytest.raises(KslimValueError, match="device must be"):
        LatencyTable.build("pixel", [lites[8]])
    from kslim.lite import LatencyPredictor

    with pytest.raises(KslimValueError, match="LatencyTable"):
        LatencyPredictor({"not": "a table"})


def test_build_in_context(lites):
    """context=True: each op is timed right after a run of its whole model."""
    from kslim.lite import LatencyTable, LocalDevice

    t = LatencyTable.build(LocalDevice(), [lites[8]], runs=10, repeats=1, context=True, context_runs=5,
                           calibrate=False)
    assert t.settings["context"] is True and t.settings["context_models"] == ["net8"] and len(t) == 6
    assert all(e["context"] == "net8" and e["context_us"] >= 0 and e["latency_us"] >= 0 for e in t.entries.values())
    # the predictor uses in-context timings only for models bigger than the table's cache size
    from kslim.lite import LatencyPredictor

    t.settings["cache_bytes"] = 0
    ctx = LatencyPredictor(t, calibrated=False, use_context=True).predict(lites[8]).total_ms
    assert ctx == pytest.approx(sum(e["context_us"] for e in t.entries.values()) / 1e3)
    t.settings["cache_bytes"] = 1 << 30
    warm = LatencyPredictor(t, calibrated=False, use_context=True).predict(lites[8]).total_ms
    assert warm == pytest.approx(sum(e["latency_us"] for e in t.entries.values()) / 1e3)


def test_merge_requires_same_threads(table):
    from kslim.lite import LatencyTable

    other = LatencyTable(num_threads=2)
    with pytest.raises(KslimValueError, match="threads"):
        LatencyTable(num_threads=1).merge(other)
    merged = LatencyTable(num_threads=1).merge(table)
    assert len(merged) == len(table)
    assert np.isfinite([e["latency_us"] for e in merged.entries.values()]).all()


def test_calibration_is_robust_and_adds_the_cold_weights_of_models_bigger_than_the_cache():
    """Theil-Sen: one wild timing among the fitting models moves neither the intercept nor the per-op cost;
    a model whose weights exceed the cache gets ``cold_us_per_mb`` per MiB of weights its ops read from memory."""
    import keras

    from kslim.lite import LatencyPredictor, LatencyTable, convert, op_configs
    from kslim.lite.latency import cold_weight_bytes, weight_bytes

    keras.utils.set_random_seed(0)
    models = [convert(keras.Sequential([keras.Input((16,))] + [keras.layers.Dense(16 * (i + 1)) for i in range(k)]),
                      check=False) for k in (1, 2, 3, 4, 5)]
    entries = {c["key"]: {**c, "latency_us": 1.0, "raw_us": 2.0, "count": 1} for m in models for c in op_configs(m)}
    t = LatencyTable(entries, {"kind": "local"}, settings={"cache_bytes": 1 << 30, "aggregate": "min"})
    n_ops = [len(op_configs(m)) for m in models]
    assert len(set(n_ops)) == 5
    true = [3.0 + 0.5 * n + n * 1.0 for n in n_ops]  # intercept 3 us, 0.5 us per op, every op 1 us
    true[3] += 500.0  # one disturbed measurement
    cal = t.calibrate(None, models, measured_us=dict(enumerate(true)))
    assert cal["per_op_us"] == pytest.approx(0.5) and cal["intercept_us"] == pytest.approx(3.0)
    # a "big" model: the cache shrunk below the weights of the widest net
    big = models[-1]
    wb = weight_bytes(big)
    t.settings["cache_bytes"] = wb // 2
    cold = cold_weight_bytes(op_configs(big), wb, wb // 2)
    assert 0 < cold <= wb / 2
    measured = {i: 3 + 1.5 * n for i, n in enumerate(n_ops[:3])}
    measured[3] = 3 + 1.5 * n_ops[-1] + 40.0 * cold / 2 ** 20
    cal = t.calibrate(None, models[:3] + [big], measured_us=measured)
    assert cal["cold_models"] == 1 and cal["cold_us_per_mb"] == pytest.approx(40.0)
    assert cal["per_op_us"] == pytest.approx(0.5) and cal["intercept_us"] == pytest.approx(3.0)
    p = LatencyPredictor(t).predict(big).total_ms * 1e3
    assert p == pytest.approx(measured[3], rel=1e-6)


def test_ops_bigger_than_the_cache_add_no_cold_weights():
    """An op whose own weights exceed the cache streams them in its single-op timing already: only the other
    ops' weights count as cold, a share ``1 - cache/total`` of them."""
    from kslim.lite.latency import cold_weight_bytes, streamed_weight_bytes

    configs = [{"weight_bytes": 100}, {"weight_bytes": 300}, {"weight_bytes": 1000}, {}]
    assert streamed_weight_bytes(configs, 500) == 1000
    assert streamed_weight_bytes(configs, 0) == 0
    assert cold_weight_bytes(configs, 1400, 500) == pytest.approx((1 - 500 / 1400) * 400)
    assert cold_weight_bytes(configs, 1400, 2000) == 0.0
