"""Registry of the reference models, plus training and caching helpers used by demo, examples, benchmarks."""

import hashlib
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kslim.errors import KslimValueError
from kslim.models.mobilenet import mobilenet_v1
from kslim.models.resnet import resnet
from kslim.models.vgg import vgg
from kslim.validation import LegacyPair

REFERENCE_MODELS = {"mobilenet_v1": mobilenet_v1, "resnet": resnet, "vgg": vgg}

#: converged weights shipped in the package (``scripts/train_reference.py`` wrote them; the manifest
#: holds the command, seed, settings and test accuracies on all 10,000 test images)
SHIPPED_DIR = Path(__file__).parent / "weights"
SHIPPED_MANIFEST = SHIPPED_DIR / "manifest.json"


def build(name, **kwargs):
    """Build a reference model by name (``mobilenet_v1``, ``resnet``, ``vgg``); kwargs go to its builder.

    Example:
        >>> build("resnet", width=0.5).name
        'resnet_w0.5'
    """
    try:
        fn = REFERENCE_MODELS[name]
    except KeyError:
        raise KslimValueError(
            f"Unknown reference model {name!r}; choose one of {sorted(REFERENCE_MODELS)}."
        ) from None
    return fn(**kwargs)


def compile_classifier(model, learning_rate=1e-3):
    """Compile ``model`` (logits output) for integer-label classification with Adam.

    ``learning_rate`` is a float or a ``keras.optimizers.schedules.LearningRateSchedule``.
    """
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def train(model, source="small", epochs=3, batch_size=128, learning_rate=1e-3, seed=0, verbose=1,
          train_limit=None, test_limit=None, callbacks=None, schedule="cosine"):
    """Compile and fit ``model`` on Fashion-MNIST; returns ``(history, test_accuracy)``.

    ``schedule="cosine"`` decays the learning rate to 0 over the run (a steadier end-of-run accuracy
    than a constant rate, whose result swings by points between epochs); ``None`` keeps it constant.
    A first Ctrl-C stops at the next batch and raises ``KeyboardInterrupt`` (:mod:`kslim._interrupt`).
    """
    import keras

    from kslim import _interrupt
    from kslim.datasets import load_datasets

    keras.utils.set_random_seed(seed)
    train_ds, test_ds = load_datasets(source, batch_size=batch_size, train_limit=train_limit,
                                      test_limit=test_limit, seed=seed)
    lr = learning_rate
    if schedule == "cosine":
        steps = int(train_ds.cardinality()) * int(epochs)
        lr = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, steps))
    elif schedule is not None:
        raise KslimValueError(f"schedule must be 'cosine' or None, got {schedule!r}.")
    compile_classifier(model, lr)
    history = _interrupt.fit(model, train_ds, epochs=epochs, verbose=verbose, callbacks=callbacks, shuffle=False)
    _, acc = model.evaluate(test_ds, verbose=0)
    return history, float(acc)


def cache_dir():
    """Where trained reference models are cached: ``$KSLIM_CACHE`` or ``~/.cache/kslim``."""
    return Path(os.environ.get("KSLIM_CACHE", "~/.cache/kslim")).expanduser()


def _normalised_kwargs(name, kwargs):
    """The builder arguments that differ from the builder's defaults, with numbers as their default's type.

    ``width=1.0`` written out, ``width=1`` and no width at all build the same model, so they get the
    same cache key (the key of the defaults, as before).
    """
    try:
        params = inspect.signature(REFERENCE_MODELS[name]).parameters
    except KeyError:
        raise KslimValueError(f"Unknown reference model {name!r}; choose one of {sorted(REFERENCE_MODELS)}.") from None
    out = {}
    for key, value in kwargs.items():
        default = params[key].default if key in params else inspect.Parameter.empty
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(default, tuple):
            default = list(default)
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if value == default and type(value) is type(default):
            continue
        out[key] = value
    return out


def _cache_path(name, settings):
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir() / f"{name}-{key}.keras"


def _cache_entry(name, source, epochs, seed, kwargs):
    """``(path, settings, builder kwargs)`` of a reference model's cache entry.

    The path is the existing entry of an older kslim (whose key kept arguments equal to the defaults)
    when only that one exists, so an upgrade does not retrain what is already cached.
    """
    normal = _normalised_kwargs(name, kwargs)
    base = {"name": name, "source": source, "epochs": int(epochs), "seed": int(seed), "schedule": "cosine"}
    settings = {**base, **normal}
    path = _cache_path(name, settings)
    if not path.is_file() and kwargs != normal:
        legacy = _cache_path(name, {**base, **kwargs})
        if legacy.is_file() and legacy.with_suffix(".json").is_file():
            return legacy, settings, normal
    return path, settings, normal


def shipped():
    """``{name: manifest entry}`` of the converged reference models shipped with kslim ({} if none).

    Each entry records ``accuracy`` (Keras) and ``tflite_accuracy`` (float ``.tflite``) on the 10,000
    test images, ``command``, ``seed``, ``epochs_run``, ``best_epoch`` and the training settings.
    """
    if not SHIPPED_MANIFEST.is_file():
        return {}
    entries = json.loads(SHIPPED_MANIFEST.read_text())
    return {k: v for k, v in entries.items() if (SHIPPED_DIR / v["file"]).is_file()}


def _load_shipped(name, kwargs):
    entries = shipped()
    normal = _normalised_kwargs(name, kwargs)
    if name not in entries or normal:
        have = ", ".join(sorted(entries)) or "none"
        what = f"{name!r} with {normal}" if normal and name in entries else repr(name)
        raise KslimValueError(
            f"pretrained(source='shipped'): kslim ships converged weights for its reference models at their "
            f"default settings only ({have}), not for {what}: pass source='small' or 'full' with epochs= to "
            "train one (cached).")
    entry = entries[name]
    model = build(name)
    model.load_weights(SHIPPED_DIR / entry["file"])
    return Pretrained(model, float(entry["accuracy"]), dict(entry))


def is_cached(name, source="small", epochs=3, seed=0, **kwargs):
    """Whether :func:`pretrained` with these arguments would load a cached model (no training)."""
    if source == "shipped":
        entry = shipped().get(name)
        return entry is not None and int(seed) == int(entry["seed"]) and not _normalised_kwargs(name, kwargs)
    path, _, _ = _cache_entry(name, source, epochs, seed, kwargs)
    return path.is_file() and path.with_suffix(".json").is_file()


def _train_size(source):
    return 10_000 if source == "small" else 60_000


@dataclass(frozen=True)
class Pretrained(LegacyPair):
    """What :func:`pretrained` returns: the trained ``model``, its test ``accuracy`` (top-1) and, for the
    shipped converged models, their manifest entry (``details``: command, seed, epochs, .tflite accuracy)."""

    model: Any
    accuracy: float
    details: Any = None

    def _pair(self):
        return self.model, self.accuracy


def pretrained(name, source=None, epochs=None, seed=0, verbose=1, progress=None, **kwargs):
    """A reference model trained on Fashion-MNIST: a :class:`Pretrained` (``.model``, ``.accuracy``).

    ``source="shipped"`` loads the converged weights kslim ships (trained on the full set by
    ``scripts/train_reference.py``, see :func:`shipped`; nothing is trained). ``source="small"`` or
    ``"full"`` trains for ``epochs`` (default 3) on the bundled subset or the full set, cached by its
    settings. Without ``source``: the shipped weights when kslim ships them for these settings and no
    ``epochs`` is given, else ``"small"``.

    Training happens on the first call only (a few minutes on 2 cores) and saves ``.keras`` + ``.json``
    in :func:`cache_dir`; later calls load them. Before training it prints what it trains and roughly
    how long it will take (``progress``, default ``verbose > 0``); ``verbose`` is Keras' ``fit`` verbosity.
    Arguments equal to the builder's defaults (``width=1.0``) give the same cache entry as leaving
    them out.
    """
    import keras

    from kslim import _progress
    from kslim._io import atomic_save_model, atomic_write_json

    if source is None:
        source = "shipped" if epochs is None and is_cached(name, "shipped", seed=seed, **kwargs) else "small"
    if source == "shipped":
        if epochs is not None:
            raise KslimValueError(f"pretrained({name!r}, source='shipped'): the shipped weights are trained already; "
                                  "drop epochs=, or pass source='small'/'full' to train for that many epochs.")
        return _load_shipped(name, kwargs)
    epochs = 3 if epochs is None else epochs
    path, settings, kwargs = _cache_entry(name, source, epochs, seed, kwargs)
    meta = path.with_suffix(".json")
    if path.is_file() and meta.is_file():
        return Pretrained(keras.models.load_model(path), float(json.loads(meta.read_text())["accuracy"]))
    model = build(name, **kwargs)
    if (verbose > 0) if progress is None else progress:
        import numpy as np

        n = _train_size(source)
        steps = -(-n // 128)
        est = _progress.estimate_fit_seconds(model, np.zeros((128, *model.input_shape[1:]), "float32"), steps,
                                             epochs)
        what = "the bundled Fashion-MNIST subset" if source == "small" else "Fashion-MNIST"
        _progress.note(f"training reference model {model.name} ({model.count_params():,} params) on {what} "
                       f"({n:,} images) for {epochs} epoch{'' if epochs == 1 else 's'}" + (f", {_progress.about(est)}" if est else "")
                       + f"; cached as {path} for later runs")
    _, acc = train(model, source=source, epochs=epochs, seed=seed, verbose=verbose)
    atomic_save_model(model, path)
    atomic_write_json(meta, {"settings": settings, "accuracy": acc})
    return Pretrained(model, float(acc))
