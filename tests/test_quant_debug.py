"""The per-layer quantization error report (``kslim.quant.quant_debug``)."""

import json

import numpy as np
import pytest

from kslim.errors import KslimValueError


def _model():
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    inp = keras.Input((10, 10, 1), name="input")
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    out = layers.Dense(5, name="logits")(x)
    return keras.Model(inp, out, name="dbg")


@pytest.fixture(scope="module")
def setup():
    from kslim.quant import quant_debug

    model = _model()
    x = np.random.default_rng(0).uniform(0, 1, size=(64, 10, 10, 1)).astype(np.float32)
    # conv2's kernel gets one huge weight: its per-channel weight scale becomes coarse for that channel
    k = model.get_layer("conv2").kernel
    w = np.asarray(k)
    w[1, 1, 0, 3] = 40.0
    k.assign(w)
    report = quant_debug(model, x, algo="abs_max", batches=1, batch_size=32)
    return model, x, report


def test_rows_in_graph_order_with_finite_metrics(setup):
    _, _, report = setup
    names = [r["weight_layer"] for r in report.rows if r["has_weights"]]
    assert names == ["conv1", "conv2", "logits"]
    assert report.rows[0]["op"] == "QUANTIZE" and report.rows[0]["layers"] == ["input"]
    assert [r["index"] for r in report.rows] == list(range(len(report.rows)))
    for r in report.rows:
        assert np.isfinite(r["snr_db"]) and r["mse"] >= 0 and 0 <= r["clipped"] <= 1
        assert r["range"][0] <= 0 <= r["range"][1]
    # accumulated error only grows along a chain: SNR never improves by much from conv1 to conv2
    snr = {r["weight_layer"]: r["snr_db"] for r in report.rows if r["has_weights"]}
    assert snr["conv2"] < snr["conv1"] + 1.0
    assert report.model["snr_db"] > 10 and report.model["argmax_agreement"] > 0.8


def test_mse_matches_manual_comparison(setup):
    from kslim.quant.ptq import TensorRunner, _quantize_static

    model, x, report = setup
    calibrated, quantized, _, _ = _quantize_static(
        model, x, "abs_max", None, 32, 0.9999, 2048, "channel_wise_abs_max", "float32", "float32",
        False, None, False)
    row = next(r for r in report.rows if r["weight_layer"] == "conv1")
    f = TensorRunner(calibrated)(x[:32], {row["tensor"]})[row["tensor"]]
    q = TensorRunner(quantized)(x[:32], {row["tensor"]})[row["tensor"]]
    assert row["mse"] == pytest.approx(float(np.mean((f - q) ** 2)), rel=1e-4)
    # the whole-model figure is per element too (32 samples x 5 logits; per sample it would be 5x larger)
    from kslim.lite import LiteModel

    f_out, q_out = LiteModel(calibrated).predict(x[:32]), LiteModel(quantized).predict(x[:32])
    assert report.model["mse"] == pytest.approx(float(np.mean((f_out.astype(np.float64) - q_out) ** 2)), rel=1e-4)


def test_str_plot_json_and_skip_suggestion(setup, tmp_path):
    _, _, report = setup
    text = str(report)
    for name in ("conv1", "conv2", "logits", "SNR dB", "algo=abs_max"):
        assert name in text
    assert all(s in ("conv1", "conv2", "logits") for s in report.suggest_skip(n=3, min_drop_db=0.0))
    assert report.worst(1)[0]["snr_drop_db"] == max(r["snr_drop_db"] for r in report.rows)
    path = report.plot(tmp_path / "snr.png")
    assert (tmp_path / "snr.png").read_bytes()[:4] == b"\x89PNG" and str(path).endswith("snr.png")
    data = json.loads(json.dumps(report.to_dict()))
    assert data["algo"] == "abs_max" and len(data["rows"]) == len(report.rows)


def test_skipped_layer_leaves_the_report(setup):
    from kslim.quant import quant_debug

    model, x, _ = setup
    report = quant_debug(model, x, algo="abs_max", batches=1, skip=["conv2"])
    assert "conv2" not in [r["weight_layer"] for r in report.rows]
    assert "conv1" in [r["weight_layer"] for r in report.rows]


def test_bad_arguments(setup):
    from kslim.quant import quant_debug

    model, x, _ = setup
    with pytest.raises(KslimValueError, match="batches"):
        quant_debug(model, x, batches=0)
    with pytest.raises(KslimValueError, match="allowed"):
        quant_debug(model, x, algo="percentile")
    with pytest.raises(KslimValueError, match="debug_data.*shape"):
        quant_debug(model, x[:8], algo="abs_max", debug_data=np.zeros((4, 5, 5, 1), "float32"))


def test_regression_output_has_no_argmax_agreement():
    import keras

    from kslim.quant import quant_debug

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1)], name="reg")
    x = np.random.default_rng(1).uniform(0, 1, size=(32, 8)).astype(np.float32)
    report = quant_debug(model, x, algo="abs_max", batches=1, batch_size=32)
    assert report.model["argmax_agreement"] is None
    assert "argmax agreement n/a" in str(report)
    from kslim.lite import LiteModel
    from kslim.quant.ptq import _quantize_static

    calibrated, quantized, _, _ = _quantize_static(
        model, x, "abs_max", None, 32, 0.9999, 2048, "channel_wise_abs_max", "float32", "float32",
        False, None, False)
    f, q = LiteModel(calibrated).predict(x), LiteModel(quantized).predict(x)
    assert report.model["mse"] == pytest.approx(float(np.mean((f.astype(np.float64) - q) ** 2)), rel=1e-4)
    assert json.loads(json.dumps(report.to_dict()))["model"]["argmax_agreement"] is None


def test_plot_leaves_pyplot_alone(setup, tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt

    _, _, report = setup
    before = matplotlib.get_backend()
    plt.switch_backend("svg")
    try:
        user_fig = plt.figure()
        report.plot(tmp_path / "snr.png")
        assert matplotlib.get_backend() == "svg" and plt.fignum_exists(user_fig.number)
        assert plt.get_fignums() == [user_fig.number]  # the report's figure is not left in pyplot
    finally:
        plt.close("all")
        plt.switch_backend(before)
