"""kslim.models: the reference networks build at every width, train one step, cache when pretrained."""

import numpy as np
import pytest

from kslim import models
from kslim.errors import KslimValueError

NAMES = sorted(models.REFERENCE_MODELS)
WIDTHS = (0.25, 0.5, 1.0)


@pytest.mark.parametrize("name", NAMES)
def test_builds_at_every_width(name):
    params = []
    for width in WIDTHS:
        model = models.build(name, width=width)
        assert model.input_shape == (None, 28, 28, 1)
        assert model.output_shape == (None, 10)
        assert model.name == f"{name}_w{width:g}"
        assert model.get_layer("logits").activation.__name__ == "linear"  # logits, no softmax
        params.append(model.count_params())
    assert params[0] < params[1] < params[2], params


def test_layer_conventions():
    mb = models.mobilenet_v1(width=0.5)
    for i in range(1, 7):
        assert type(mb.get_layer(f"block{i}_dw")).__name__ == "DepthwiseConv2D"
        assert mb.get_layer(f"block{i}_pw").kernel_size == (1, 1)
    rn = models.resnet(width=0.25, blocks_per_stage=2)
    adds = [layer for layer in rn.layers if type(layer).__name__ == "Add"]
    assert len(adds) == 6
    assert rn.get_layer("stage2_block1_proj").strides == (2, 2)
    # projection shortcuts only where channels or stride change: first block of stages 2 and 3
    assert [layer.name for layer in rn.layers if layer.name.endswith("_proj")] == [
        "stage2_block1_proj", "stage3_block1_proj"]
    vg = models.vgg(width=0.5, num_classes=5, input_shape=(32, 32, 3))
    assert vg.output_shape == (None, 5) and vg.get_layer("fc1").units == 64


def test_width_scales_channels():
    assert models.mobilenet_v1(width=0.25).get_layer("block6_pw").filters == 128
    assert models.mobilenet_v1(width=1.0).get_layer("block6_pw").filters == 512
    assert models.vgg(width=0.5).get_layer("conv3_1").filters == 64


@pytest.mark.parametrize("name", NAMES)
def test_one_training_step(name, small_data):
    (x, y), _ = small_data
    model = models.compile_classifier(models.build(name, width=0.25))
    model.run_eagerly = True  # one step: skipping tf.function tracing is ~10x faster
    before = [w.copy() for w in model.get_weights()]
    logs = model.train_on_batch(x[:32], y[:32], return_dict=True)
    assert np.isfinite(logs["loss"]) and 0.0 <= logs["accuracy"] <= 1.0
    assert logs["loss"] == pytest.approx(np.log(10), rel=0.5)  # near chance at step 1
    changed = [not np.array_equal(a, b) for a, b in zip(before, model.get_weights())]
    assert sum(changed) >= len(changed) // 2


def test_train_returns_accuracy():
    model = models.build("vgg", width=0.25)
    history, acc = models.train(model, epochs=1, batch_size=64, train_limit=512, test_limit=256, verbose=0)
    assert history.history["loss"][0] > 0 and 0.1 < acc <= 1.0  # better than chance after 512 images


def test_bad_arguments():
    with pytest.raises(KslimValueError, match="width"):
        models.build("vgg", width=0)
    with pytest.raises(KslimValueError, match="width"):
        models.mobilenet_v1(width=-0.5)
    with pytest.raises(KslimValueError, match="'alexnet'.*mobilenet_v1"):
        models.build("alexnet")
    with pytest.raises(KslimValueError, match="input_shape"):
        models.resnet(input_shape=(28, 28))
    with pytest.raises(KslimValueError, match="num_classes"):
        models.vgg(num_classes=1)


def test_pretrained_is_cached(tmp_path, monkeypatch):
    from kslim.models import zoo

    monkeypatch.setenv("KSLIM_CACHE", str(tmp_path))
    calls = []

    def fake_train(model, **kw):
        calls.append(kw)
        return None, 0.5

    monkeypatch.setattr(zoo, "train", fake_train)
    ref = models.pretrained("vgg", epochs=1, width=0.25)
    model, acc = ref.model, ref.accuracy
    assert acc == 0.5 and len(calls) == 1
    assert len(list(tmp_path.glob("vgg-*.keras"))) == 1 and len(list(tmp_path.glob("vgg-*.json"))) == 1
    ref2 = models.pretrained("vgg", epochs=1, width=0.25)
    again, acc2 = ref2.model, ref2.accuracy
    assert len(calls) == 1 and acc2 == 0.5  # loaded, not retrained
    x = np.random.default_rng(0).uniform(size=(4, 28, 28, 1)).astype("float32")
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    models.pretrained("vgg", epochs=1, width=0.5)  # other settings -> other file
    assert len(calls) == 2 and len(list(tmp_path.glob("vgg-*.keras"))) == 2


def test_cache_key_normalises_defaults(tmp_path, monkeypatch):
    """issue 17.2: width 1.0 written out (or 1) is the default width: one cache entry, trained once; an
    entry cached by an older kslim under the written-out key is reused, not retrained."""
    from kslim.models import zoo

    monkeypatch.setenv("KSLIM_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(zoo, "train", lambda model, **kw: (calls.append(kw), (None, 0.5))[1])
    models.pretrained("vgg", epochs=1, verbose=0)
    models.pretrained("vgg", epochs=1, width=1.0, verbose=0)
    models.pretrained("vgg", epochs=1, width=1, dropout=0.3, verbose=0)
    assert len(calls) == 1 and len(list(tmp_path.glob("vgg-*.keras"))) == 1
    assert zoo.is_cached("vgg", epochs=1, width=1.0) and not zoo.is_cached("vgg", epochs=2)

    legacy = {"name": "resnet", "source": "small", "epochs": 1, "seed": 0, "schedule": "cosine", "width": 1.0}
    models.pretrained("resnet", epochs=1, verbose=0)
    current = zoo._cache_path("resnet", {k: v for k, v in legacy.items() if k != "width"})
    for suffix in (".keras", ".json"):  # make it look like an older kslim's entry (width in the key)
        current.with_suffix(suffix).rename(zoo._cache_path("resnet", legacy).with_suffix(suffix))
    models.pretrained("resnet", epochs=1, width=1.0, verbose=0)  # an old cache entry: loaded
    assert len(calls) == 2


def test_pretrained_says_it_trains_and_how_long(tmp_path, monkeypatch, capsys):
    """issue 17.1: training a reference model is announced with an estimate; loading from the cache is quiet."""
    from kslim.models import zoo

    monkeypatch.setenv("KSLIM_CACHE", str(tmp_path))
    monkeypatch.setattr(zoo, "train", lambda model, **kw: (None, 0.5))
    models.pretrained("vgg", epochs=2, width=0.25, verbose=0, progress=True)
    out = capsys.readouterr().out
    assert "training reference model vgg_w0.25" in out and "for 2 epochs" in out
    assert ("about" in out or "a few seconds" in out) and str(tmp_path) in out
    models.pretrained("vgg", epochs=2, width=0.25, verbose=0, progress=True)
    assert capsys.readouterr().out == ""
    models.pretrained("vgg", epochs=3, width=0.25, verbose=0)  # progress follows verbose: silent
    assert capsys.readouterr().out == ""


# ------------------------------------------------------------------------------------------ shipped weights
SHIPPED = sorted(models.shipped())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_load_without_training(name, monkeypatch):
    """The converged weights in the package (scripts/train_reference.py) load without training."""
    from kslim.models import zoo

    monkeypatch.setattr(zoo, "train", lambda *a, **k: pytest.fail("pretrained() trained a shipped model"))
    ref = models.pretrained(name)
    entry = models.shipped()[name]
    assert ref.details["file"] == entry["file"] and ref.accuracy == entry["accuracy"]
    assert ref.details["test_images"] == 10_000 and "scripts/train_reference.py" in ref.details["command"]
    assert models.pretrained(name, source="shipped").accuracy == entry["accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_reproduce_their_manifest_accuracy(name):
    """They score on all 10,000 test images what their manifest says (to 0.1 pt: oneDNN rounding of ties)."""
    from kslim.datasets import fashion_mnist, preprocess
    from kslim.errors import DataNotFoundError

    ref, entry = models.pretrained(name), models.shipped()[name]
    try:
        _, (xt, yt) = fashion_mnist()
    except DataNotFoundError:
        pytest.skip("the full Fashion-MNIST test set is not installed (dataset-fashion-mnist)")
    pred = ref.model.predict(preprocess(xt), batch_size=1000, verbose=0).argmax(-1)
    assert abs(float((pred == yt).mean()) - entry["accuracy"]) <= 1e-3


def test_shipped_weights_exist_only_at_the_default_settings():
    name = SHIPPED[0] if SHIPPED else "vgg"
    with pytest.raises(KslimValueError, match="default settings"):
        models.pretrained(name, source="shipped", width=0.5)
    with pytest.raises(KslimValueError, match="drop epochs"):
        models.pretrained(name, source="shipped", epochs=3)
    assert not models.zoo.is_cached(name, source="shipped", width=0.5)


def test_epochs_or_other_settings_still_train(tmp_path, monkeypatch):
    """Asking for epochs (or a width, a seed) means a trained-here model, as before the weights were shipped."""
    from kslim.models import zoo

    monkeypatch.setenv("KSLIM_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(zoo, "train", lambda model, **kw: (calls.append(kw), (None, 0.5))[1])
    for name in SHIPPED:
        assert models.pretrained(name, epochs=1, verbose=0).details is None
        assert models.pretrained(name, seed=3, verbose=0).accuracy == 0.5
    assert len(calls) == 2 * len(SHIPPED)
