"""``search``: SANAS-like architecture search under FLOPs/latency limits, on top of keras-tuner."""

import dataclasses
import warnings
from pathlib import Path

from kslim.errors import KslimError, KslimTypeError, KslimValueError, ModelError
from kslim.nas.constraints import make_constraints


@dataclasses.dataclass
class SearchResult:
    """What :func:`search` returns.

    Attributes:
        model: the best model, with the weights of its best epoch.
        values: its hyperparameter values.
        score: its objective value.
        history: one dict per trial (see :attr:`SimulatedAnnealingOracle.history`).
        rejected: candidates rejected before training, with the reason.
        tuner, oracle: the keras-tuner objects (for ``tuner.results_summary()`` ...).
        directory: the project directory (trials, ``sa_history.json``, ``search.png``, ``tensorboard/``).
        history_path, plot_path: the JSON history and the figure.
    """

    model: object
    values: dict
    score: float
    history: list
    rejected: list
    tuner: object
    oracle: object
    directory: Path
    history_path: Path
    plot_path: Path = None


def _split(data, name):
    """``(x, y)`` tuple or a tf.data.Dataset / other iterable -> (fit args, is_arrays)."""
    if data is None:
        return None
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise KslimValueError(f"{name} must be (x, y) or a tf.data.Dataset, got a sequence of {len(data)}.")
        return tuple(data)
    if hasattr(data, "element_spec") or hasattr(data, "__iter__"):
        return data
    raise KslimTypeError(f"{name} must be (x, y) arrays or a tf.data.Dataset, got {type(data).__name__}.")


def search(hypermodel, train_data, val_data=None, *, max_flops=None, max_latency=None, latency_fn=None,
           max_params=None, constraints=(), max_trials=10, epochs_per_trial=1, objective="val_accuracy",
           init_temperature=0.05, reduce_rate=0.85, initial_values=None, perturb=1, seed=0,
           directory="kslim_runs", project_name="search", overwrite=True, batch_size=128, callbacks=None,
           tensorboard=True, plot=True, verbose=0, max_retries_per_trial=0, max_consecutive_failed_trials=3):
    """Search architectures of ``hypermodel`` with simulated annealing under resource limits.

    Each trial builds ``hypermodel.build(hp)`` (a compiled model), trains it ``epochs_per_trial``
    epochs on ``train_data`` and scores it on ``val_data``. Candidates over ``max_flops`` /
    ``max_latency`` / ``max_params`` are rejected before training.

    Args:
        hypermodel: a :class:`kslim.nas.SearchSpace`, any ``keras_tuner.HyperModel``, or a
            function ``hp -> compiled keras.Model``.
        train_data: ``(x, y)`` arrays or a batched ``tf.data.Dataset``.
        val_data: same; ``None`` with arrays: the last 20% of ``train_data`` are held out.
        max_flops: FLOPs limit (:func:`kslim.analysis.flops` ``.flops``, = 2 x MACs).
        max_latency: milliseconds, measured by ``latency_fn(model) -> ms`` (e.g.
            ``kslim.lite.LatencyPredictor(table).predict``); default: TFLite timing on this CPU.
        max_params: parameter-count limit.
        constraints: further :class:`kslim.nas.Constraint` objects.
        max_trials, epochs_per_trial: the budget.
        objective: keras-tuner objective (``"val_accuracy"``, ``"val_loss"``, ``keras_tuner.Objective``).
        init_temperature, reduce_rate, initial_values, perturb, seed: see
            :class:`SimulatedAnnealingOracle`.
        directory, project_name: where keras-tuner keeps trials; the JSON history, the figure and
            TensorBoard logs (``tensorboard/``) go there too.
        overwrite: start afresh (``False``: resume a previous search of the same project).
        batch_size: for array inputs.
        callbacks: extra Keras callbacks for each trial's ``fit``.
        tensorboard: add a ``keras.callbacks.TensorBoard`` (keras-tuner gives each trial its own
            log dir and records the hyperparameters for the HParams dashboard).
        plot: save ``search.png`` (:func:`kslim.nas.plot_history`).

    Distributed: run the same script on a chief and workers with keras-tuner's
    ``KERASTUNER_TUNER_ID`` / ``KERASTUNER_ORACLE_IP`` / ``KERASTUNER_ORACLE_PORT`` set and a shared
    ``directory``; the chief's call returns the result, the workers' calls return ``None``.

    Returns:
        :class:`SearchResult`.

    Example:
        >>> import tempfile
        >>> from kslim.nas import MobileNetV2Space, search
        >>> from kslim.datasets import fashion_mnist_small, preprocess
        >>> (x, y), (xv, yv) = fashion_mnist_small()
        >>> space = MobileNetV2Space(blocks=[(2, (8, 16))], repeats=(1,))  # one small block, one trial: quick
        >>> result = search(space, (preprocess(x[:128]), y[:128]), (preprocess(xv[:64]), yv[:64]),
        ...                 max_flops=5e6, max_trials=1, directory=tempfile.mkdtemp(prefix="kslim_doc_search_"))
        >>> result.model.count_params() > 0
        True
    """
    import keras
    import keras_tuner

    from kslim.nas.history import plot_history
    from kslim.nas.oracle import SimulatedAnnealingOracle

    if int(epochs_per_trial) < 1:
        raise KslimValueError(f"epochs_per_trial must be >= 1, got {epochs_per_trial!r}.")
    if hypermodel is None or not (isinstance(hypermodel, keras_tuner.HyperModel) or callable(hypermodel)):
        raise KslimTypeError(
            f"hypermodel must be a keras_tuner.HyperModel (e.g. kslim.nas.MobileNetV2Space()) or a "
            f"function hp -> keras.Model, got {hypermodel!r}."
        )
    cons = make_constraints(max_flops=max_flops, max_latency=max_latency, latency_fn=latency_fn,
                            max_params=max_params, constraints=constraints, input_shape=None)
    train = _split(train_data, "train_data")
    val = _split(val_data, "val_data")
    hm_name = getattr(hypermodel, "name", None) or getattr(hypermodel, "__name__", type(hypermodel).__name__)

    oracle = SimulatedAnnealingOracle(
        objective=objective, max_trials=max_trials, init_temperature=init_temperature,
        reduce_rate=reduce_rate, initial_values=initial_values, perturb=perturb, constraints=cons,
        hypermodel=hypermodel, seed=seed, max_retries_per_trial=max_retries_per_trial,
        max_consecutive_failed_trials=max_consecutive_failed_trials,
    )
    try:
        tuner = keras_tuner.Tuner(oracle=oracle, hypermodel=hypermodel, directory=str(directory),
                                  project_name=project_name, overwrite=overwrite)
    except KslimError:
        raise
    except Exception as e:
        raise ModelError(
            f"hypermodel {hm_name!r} failed to build with its default hyperparameters: "
            f"{type(e).__name__}: {e}"
        ) from e
    project_dir = Path(directory) / project_name

    cbs = list(callbacks or [])
    if tensorboard:
        cbs.append(keras.callbacks.TensorBoard(log_dir=str(project_dir / "tensorboard")))
    fit_kwargs = {"epochs": int(epochs_per_trial), "callbacks": cbs, "verbose": verbose}
    if isinstance(train, tuple):
        fit_args = train
        fit_kwargs["batch_size"] = int(batch_size)
        if val is not None:
            fit_kwargs["validation_data"] = val
        else:
            fit_kwargs["validation_split"] = 0.2
    else:
        if val is None and str(getattr(oracle.objective, "name", "")).startswith("val_"):
            raise KslimValueError(f"objective {oracle.objective.name!r} needs val_data when train_data is a dataset.")
        fit_args = (train,)
        if val is not None:
            fit_kwargs["validation_data"] = val
    try:
        tuner.search(*fit_args, **fit_kwargs)
    except RuntimeError as e:
        if "consecutive failures" in str(e):
            last = [ln for ln in str(e).strip().splitlines() if ln.strip()]
            raise ModelError(
                f"search stopped: {max_consecutive_failed_trials} trials in a row failed to build or train "
                f"hypermodel {hm_name!r}. Last error: {last[-1] if last else e}"
            ) from e
        raise

    from keras_tuner.src.distribute import utils as dist_utils

    if dist_utils.has_chief_oracle() and not dist_utils.is_chief_oracle():
        return None  # a distributed worker: the chief holds the oracle, the history and the best trial
    history_path = project_dir / (oracle.history_file or "sa_history.json")
    oracle.export_history(history_path)
    completed = [t for t in oracle.history if t.get("score") is not None]
    if not completed:
        failed = [t.get("message", "") for t in oracle.history if t.get("message")]
        raise ModelError(f"no trial of the search on {hm_name!r} completed"
                         + (f"; last error: {failed[-1]}" if failed else "."))
    best_trial = oracle.get_best_trials(1)[0]
    with warnings.catch_warnings():  # the checkpoint's optimizer slots are not needed for inference
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        best_model = tuner.get_best_models(1)[0]
    plot_path = None
    if plot:
        plot_path = plot_history(oracle, project_dir / "search.png",
                                 title=f"{hm_name}: simulated annealing, {len(completed)} trials")
    return SearchResult(
        model=best_model, values=dict(best_trial.hyperparameters.values), score=float(best_trial.score),
        history=oracle.history, rejected=oracle.rejected, tuner=tuner, oracle=oracle,
        directory=project_dir, history_path=history_path, plot_path=plot_path,
    )


__all__ = ["search", "SearchResult"]
