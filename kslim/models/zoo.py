"""Registry of the reference models, plus training and caching helpers used by demo, examples, benchmarks."""

import hashlib
import json
import os
from pathlib import Path

from kslim.errors import KslimValueError
from kslim.models.mobilenet import mobilenet_v1
from kslim.models.resnet import resnet
from kslim.models.vgg import vgg

REFERENCE_MODELS = {"mobilenet_v1": mobilenet_v1, "resnet": resnet, "vgg": vgg}


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
    """
    import keras

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
    history = model.fit(train_ds, epochs=epochs, verbose=verbose, callbacks=callbacks, shuffle=False)
    _, acc = model.evaluate(test_ds, verbose=0)
    return history, float(acc)


def cache_dir():
    """Where trained reference models are cached: ``$KSLIM_CACHE`` or ``~/.cache/kslim``."""
    return Path(os.environ.get("KSLIM_CACHE", "~/.cache/kslim")).expanduser()


def pretrained(name, source="small", epochs=3, seed=0, verbose=1, **kwargs):
    """A reference model trained on Fashion-MNIST, cached by its settings; returns ``(model, accuracy)``.

    The first call trains (a few minutes on 2 cores) and saves ``.keras`` + ``.json`` in
    :func:`cache_dir`; later calls load them.
    """
    import keras

    from kslim._io import atomic_save_model, atomic_write_json

    settings = {"name": name, "source": source, "epochs": epochs, "seed": seed, "schedule": "cosine", **kwargs}
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    path = cache_dir() / f"{name}-{key}.keras"
    meta = path.with_suffix(".json")
    if path.is_file() and meta.is_file():
        return keras.models.load_model(path), json.loads(meta.read_text())["accuracy"]
    model = build(name, **kwargs)
    _, acc = train(model, source=source, epochs=epochs, seed=seed, verbose=verbose)
    atomic_save_model(model, path)
    atomic_write_json(meta, {"settings": settings, "accuracy": acc})
    return model, acc
