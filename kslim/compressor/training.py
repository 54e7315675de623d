"""Deterministic, resumable fine-tuning used by every strategy of the pipeline.

Training runs one epoch at a time. Before epoch ``e`` the global seeds and the layers' own random
generators (Dropout) are set from ``seed + e`` and the training data are shuffled with that seed, so an epoch's result depends only on the weights,
the optimizer state and ``e``. After each epoch the weights and the optimizer variables are saved
(one ``ckpt/train.npz``, written atomically, with the number of finished epochs and the history); a resumed run restores them
and continues with the next epoch, reaching the same weights as an uninterrupted run.
"""

import json

import numpy as np

from kslim._io import atomic_path, atomic_write_text
from kslim.compressor.run_dir import crash_point, guarded_write


def _save_checkpoint(path, weights, opt_vars, epochs_done, history):
    """One atomic .npz holding weights, optimizer variables, epoch count and history (no pickle)."""
    def write(p, _):
        with atomic_path(p, suffix=".npz") as tmp:
            arrays = {f"w{i:05d}": a for i, a in enumerate(weights)}
            arrays.update({f"o{i:05d}": np.asarray(a) for i, a in enumerate(opt_vars)})
            np.savez(tmp, epochs_done=np.int64(epochs_done), history=np.str_(json.dumps(history)), **arrays)

    guarded_write(write, path, None)


def _load_checkpoint(path):
    with np.load(path, allow_pickle=False) as z:
        weights = [z[k] for k in sorted(k for k in z.files if k.startswith("w"))]
        opt_vars = [z[k] for k in sorted(k for k in z.files if k.startswith("o"))]
        return weights, opt_vars, int(z["epochs_done"]), json.loads(str(z["history"]))


def _reseed(model, seed):
    """Set the state of every random-number generator of the model's layers (Dropout ...) from ``seed``.

    Keras seeds a layer's ``SeedGenerator`` when the layer is created, from the global Python RNG,
    and its state is not part of ``get_weights()``: a model loaded in a resumed process would draw
    other dropout masks than the uninterrupted one. Reseeding at each epoch makes them equal.
    """
    import zlib

    from kslim.graph import keras_graph as kg

    for layer in kg.all_layers(model):
        for i, gen in enumerate(kg.seed_generators(layer)):
            value = zlib.crc32(f"{seed}/{layer.name}/{i}".encode()) & 0x7FFFFFFF
            gen.state.assign(np.array([value, 0], dtype=gen.state.dtype))


def _optimizer_variables(model):
    opt = model.optimizer
    if not opt.built:
        opt.build(model.trainable_variables)
    return opt.variables


def _write_csv_log(path, history):
    """The per-epoch CSV log, rewritten from the checkpointed history (so a resumed run has each epoch once)."""
    import csv
    import io

    keys = sorted({k for logs in history for k in logs if k != "epoch"})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["epoch", *keys])
    for logs in history:
        writer.writerow([logs["epoch"], *(logs.get(k, "") for k in keys)])
    guarded_write(atomic_write_text, path, buf.getvalue())


def fit_resumable(model, make_train_data, epochs, ckpt_dir, seed, point_prefix, verbose=1, callbacks=None,
                  csv_log=None, note=None):
    """Fit a compiled ``model`` for ``epochs`` epochs with a checkpoint after each.

    Args:
        model: a compiled ``keras.Model`` (a Distiller included).
        make_train_data: callable ``seed -> dataset`` giving that epoch's (shuffled) training data.
        epochs: total epochs of this stage.
        ckpt_dir: folder for the checkpoint ``train.npz``.
        seed: base seed of the stage.
        point_prefix: name prefix of the crash points (``"<i>:<strategy>"``).
        csv_log: CSV file of the per-epoch logs (rewritten from the checkpointed history).
        note: callable printing progress lines ("epoch 2/3"; "continuing at epoch ..." on a resume).

    A first Ctrl-C ends the current epoch's ``fit`` at the next batch and raises
    ``KeyboardInterrupt`` before that unfinished epoch is checkpointed (:mod:`kslim._interrupt`):
    the checkpoint holds the last finished epoch, and a resumed run repeats the interrupted one.

    Returns:
        list of per-epoch logs (dicts), including epochs restored from the checkpoint.
    """
    import keras

    from kslim import _interrupt

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    npz_file = ckpt_dir / "train.npz"
    history, start = [], 0
    if npz_file.is_file():
        weights, opt_values, start, history = _load_checkpoint(npz_file)
        model.set_weights(weights)
        for var, value in zip(_optimizer_variables(model), opt_values):
            var.assign(value)
        if note is not None and start < epochs:
            note(f"continuing at epoch {start + 1}/{epochs} ({start} finished epoch(s) restored from {npz_file})")
    for epoch in range(start, epochs):
        keras.utils.set_random_seed(seed + epoch)
        _reseed(model, seed + epoch)
        if note is not None:
            note(f"epoch {epoch + 1}/{epochs}")  # Keras numbers the epochs of one fit() call only
        h = _interrupt.fit(model, make_train_data(seed + epoch), epochs=1, verbose=verbose,
                           callbacks=list(callbacks or []), shuffle=False)
        logs = {k: float(v[-1]) for k, v in h.history.items()}
        logs["epoch"] = epoch
        history.append(logs)
        _save_checkpoint(npz_file, model.get_weights(), _optimizer_variables(model), epoch + 1, history)
        if csv_log is not None:
            _write_csv_log(csv_log, history)
        crash_point(f"{point_prefix}:epoch{epoch}")
    return history
