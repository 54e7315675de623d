"""Training stages of the pipeline under ``tf.distribute`` (the config's ``distribute:`` key).

``distribute: none`` (default) trains on the default device. ``mirrored`` trains with
``tf.distribute.MirroredStrategy`` over the visible devices (the GPUs, else the logical CPU devices);
``multi_worker`` with ``tf.distribute.MultiWorkerMirroredStrategy`` over the cluster that the
``TF_CONFIG`` environment variable describes (every worker runs the same ``kslim compress``).

What runs under the strategy: the fine-tuning of ``prune``, ``distill`` and ``quant_aware``. The model
of such a stage is copied into ``strategy.scope()`` (:func:`into_scope`; Keras 3 needs the variables
created there), compiled there (a new optimizer) and trained with
:func:`~kslim.compressor.training.fit_resumable`; the trained model is copied back out
(:func:`out_of_scope`) so that saving, pruning, quantization and TFLite export see a plain model.

The batch size of the config is the **global** batch: each of ``N`` replicas gets ``batch_size / N``
samples of each step and the gradients are summed, so a run takes the same steps as on one device
and its weights equal the single-device run's up to floating-point summation order (tested to
``atol=1e-4`` on the outputs after one epoch, ``tests/test_distribute.py``). Per-replica statistics
differ: ``BatchNormalization`` normalises with each replica's part of the batch unless it is
``synchronized=True``, and ``Dropout`` draws other masks; QAT activation ranges are taken over the
global batch (:func:`kslim.quant.ops.batch_range`).

In ``multi_worker`` mode only the chief (task ``chief``, else ``worker`` 0) writes the run directory;
every other worker does the same work in a folder of its own in the system's temporary folder
(:func:`worker_dir`), removed when the run finishes (the usual Keras multi-worker pattern). A resume
(``--resume``) needs those folders, so resume on the same machines.
"""

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

MODES = ("none", "mirrored", "multi_worker")

_STRATEGIES = {}  # mode -> strategy: one per process (a second one would clash with the first's collectives)


def _mode(config):
    return config.get("distribute") or "none"


def tf_config_errors(config):
    """``(field, message)`` errors of the ``TF_CONFIG`` that ``distribute: multi_worker`` needs (else none)."""
    if _mode(config) != "multi_worker":
        return []
    raw = os.environ.get("TF_CONFIG")
    what = "multi_worker needs the TF_CONFIG environment variable"
    if not raw:
        return [("distribute", f"{what} (a JSON cluster and task; see the README), and it is not set")]
    try:
        tf_config = json.loads(raw)
        cluster, task = tf_config["cluster"], tf_config["task"]
        kind, index = task["type"], int(task["index"])
        hosts = cluster[kind]
    except (ValueError, TypeError, KeyError) as e:
        return [("distribute", f"{what} as JSON {{'cluster': {{'worker': [host:port, ...]}}, "
                               f"'task': {{'type': 'worker', 'index': 0}}}}; TF_CONFIG={raw!r} is not ({e!r})")]
    if not (isinstance(hosts, list) and 0 <= index < len(hosts)):
        return [("distribute", f"TF_CONFIG names task {kind} {index}, but its cluster has "
                               f"{len(hosts) if isinstance(hosts, list) else 'no list of'} {kind} address(es)")]
    return []


def _task():
    """``(type, index)`` of this process in ``TF_CONFIG``."""
    task = json.loads(os.environ["TF_CONFIG"])["task"]
    return task["type"], int(task["index"])


def is_chief(config):
    """Whether this process writes the run directory: always, except a non-chief multi-worker task."""
    if _mode(config) != "multi_worker":
        return True
    kind, index = _task()
    has_chief = "chief" in json.loads(os.environ["TF_CONFIG"])["cluster"]
    return kind == "chief" or (kind == "worker" and index == 0 and not has_chief)


def worker_dir(out, config):
    """The folder a non-chief worker writes instead of ``out`` (``None`` for the chief).

    The same path for the same ``out`` and task, so that a resumed worker finds its own state.
    """
    if is_chief(config):
        return None
    kind, index = _task()
    tag = hashlib.sha256(str(Path(out).resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"kslim-{kind}{index}-{tag}"


def get_strategy(config):
    """The ``tf.distribute`` strategy of ``config["distribute"]`` (``None`` for ``none``), made once per process.

    ``multi_worker`` must be made before TensorFlow runs any operation in the process.
    """
    mode = _mode(config)
    if mode == "none":
        return None
    if mode not in _STRATEGIES:
        import tensorflow as tf

        if mode == "mirrored":  # the GPUs, else every (logical) CPU device: MirroredStrategy() alone takes one CPU
            devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
            _STRATEGIES[mode] = tf.distribute.MirroredStrategy([d.name for d in devices])
        else:
            _STRATEGIES[mode] = _multi_worker_strategy()
    return _STRATEGIES[mode]


def _multi_worker_strategy():
    """``tf.distribute.MultiWorkerMirroredStrategy`` whose ``reduce`` takes what Keras 3's ``fit`` gives it.

    ``fit`` reduces its first ``(x, y)`` batch with ``strategy.reduce`` to build the model
    symbolically, and TensorFlow's multi-worker ``reduce`` takes one value only (MirroredStrategy's
    takes a structure); it reduces the scalar logs with ``axis=0``, which a scalar has not (their
    mean over the replicas is meant). Unpatched, the first ``fit`` fails.
    """
    import tensorflow as tf

    class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis):
            one = super().reduce

            def reduce_one(v):
                scalar = len(getattr(self.experimental_local_results(v)[0], "shape", ())) == 0
                return one(reduce_op, v, None if scalar else axis)

            return tf.nest.map_structure(reduce_one, value)

    return MultiWorkerMirroredStrategy()


def scope(strategy):
    """``strategy.scope()``, or a context that does nothing for ``None``."""
    return contextlib.nullcontext() if strategy is None else strategy.scope()


def _copy(model):
    import keras

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    clone.trainable = model.trainable
    return clone


def into_scope(strategy, model):
    """A copy of ``model`` (same weights) with its variables made under ``strategy`` (``model`` itself for ``None``)."""
    if strategy is None:
        return model
    with strategy.scope():
        return _copy(model)


def out_of_scope(strategy, model):
    """A copy of a model trained under ``strategy`` with plain variables (``model`` itself for ``None``)."""
    return model if strategy is None else _copy(model)
