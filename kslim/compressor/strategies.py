"""The strategies a config can chain, and their registry.

Each strategy takes the pipeline context and its parameters, and leaves its output in ``ctx.model``
(a Keras model) and/or ``ctx.lite`` (a :class:`LiteModel`). Every strategy is registered once, next to
its function, with :func:`register_strategy`: its name, its function, the JSON schema of its
parameters and a docstring. The config's schema (the strategy names, each one's parameters), its
error messages, ``kslim.compressor.STRATEGIES`` and ``kslim compress --list-strategies`` are all
derived from this registry; a strategy of your own is registered the same way (see
:func:`register_strategy`).

Every strategy is resumable: it writes its intermediate artefacts into its stage folder and picks
them up again when the run is resumed (see :mod:`kslim.compressor.run_dir`).
"""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from kslim._io import atomic_save_model, atomic_write_json, read_json
from kslim.compressor.config import FINE_TUNE_SCHEMA, MODEL_SCHEMA, RATIO_SCHEMA
from kslim.compressor.distribute import into_scope, out_of_scope, scope
from kslim.compressor.run_dir import crash_point, guarded_write
from kslim.compressor.training import fit_resumable
from kslim.errors import ConfigError, KslimTypeError, KslimValueError
from kslim.validation import api_constant
from kslim.lite.converter import QUANTIZE_MODES
from kslim.prune.importance import importance_names
from kslim.prune.scope import scope_names


# ----------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class Strategy:
    """One step a config's ``strategies:`` list can name (see :func:`register_strategy`).

    Attributes:
        name: the key in the config (``- prune: {...}``).
        run: ``run(ctx, params, sdir, prefix)``: transforms ``ctx.model`` / ``ctx.lite`` (see
            :mod:`kslim.compressor.strategies`); ``params`` is the validated mapping of the config.
        schema: JSON schema (draft 2020-12) of ``params``, an ``"object"`` schema; the config is
            validated against it, errors name the field (``strategies[2].equalize.iterations``).
        doc: one line saying what the step does (``kslim compress --list-strategies``).
        trains: the step trains; ``--quick`` caps its ``epochs`` and ``fine_tune.epochs`` at 1.
        keras_output: the step leaves a new Keras model in ``ctx.model`` (saved as the stage's
            ``model.keras``); ``False`` for the steps that only produce a ``.tflite`` or measure.
        measured: the stage's artefact is measured (accuracy, size) for the report; ``False``: its row
            repeats the previous stage's, plus what the step put in ``ctx.info`` (``profile``).
        check: optional ``check(params) -> [(field, message)]`` for what the schema cannot declare;
            run with the schema, before any work (``field`` relative to the step, e.g. ``"iterations"``).
        quick: optional ``quick(params)`` shrinking ``params`` in place for ``--quick`` (beyond epochs).
    """

    name: str
    run: Callable
    schema: dict
    doc: str = ""
    trains: bool = False
    keras_output: bool = True
    measured: bool = True
    check: Optional[Callable] = None
    quick: Optional[Callable] = None


_REGISTRY = {}  # name -> Strategy, in registration order (the order of the schema's enum)
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def _first_paragraph(text):
    return " ".join((text or "").strip().split("\n\n")[0].split())


def register_strategy(name, run=None, *, schema, doc=None, trains=False, keras_output=True, measured=True,
                      check=None, quick=None, replace=False):
    """Register a pipeline step under ``name``; as a decorator when ``run`` is not given.

    Args:
        name: the config key (lower case, digits, ``_``).
        run: ``run(ctx, params, sdir, prefix)``. It reads ``ctx.model`` (the current Keras model) and
            ``ctx.data`` (:class:`kslim.compressor.data.PipelineData`), writes resumable artefacts into
            ``sdir`` and leaves its result in ``ctx.model`` (and ``ctx.lite = None``) or ``ctx.lite``.
        schema: the JSON schema of the step's parameters, an ``"object"`` schema; :func:`params_schema`
            builds one where a misspelt field is an error. ``kslim.compressor.config``'s
            ``FINE_TUNE_SCHEMA`` and ``RATIO_SCHEMA`` are there to reuse.
        doc: one line for ``--list-strategies`` (default: the first paragraph of ``run``'s docstring).
        trains, keras_output, measured, check, quick: see :class:`Strategy`.
        replace: replace a strategy already registered under ``name`` (otherwise an error).

    Returns:
        the :class:`Strategy` (called directly) or the decorator, which returns ``run`` unchanged.

    Raises:
        KslimValueError: a bad or taken name, or a schema that is not a valid JSON object schema.
        KslimTypeError: ``run``, ``check`` or ``quick`` not callable.

    Example:
        >>> from kslim.compressor import (get_strategy, params_schema, register_strategy, unregister_strategy,
        ...                               validate_config)
        >>> factor = {"type": "number", "exclusiveMinimum": 0}
        >>> @register_strategy("scale_logits", schema=params_schema({"factor": factor}))
        ... def run_scale_logits(ctx, params, sdir, prefix):
        ...     \"\"\"Multiply the last layer's kernel and bias by ``factor``.\"\"\"
        ...     layer = ctx.model.layers[-1]
        ...     layer.set_weights([w * params.get("factor", 1.0) for w in layer.get_weights()])
        ...     ctx.lite = None
        >>> get_strategy("scale_logits").doc
        "Multiply the last layer's kernel and bias by ``factor``."
        >>> cfg = validate_config({"model": {"reference": "vgg"}, "strategies": [{"scale_logits": {"factor": 2}}]})
        >>> try:
        ...     validate_config({"model": {"reference": "vgg"}, "strategies": [{"scale_logits": {"factor": 0}}]})
        ... except Exception as e:
        ...     print(e.path)
        strategies[0].scale_logits.factor
        >>> unregister_strategy("scale_logits").name
        'scale_logits'
    """
    if run is None:
        def decorator(fn):
            register_strategy(name, fn, schema=schema, doc=doc, trains=trains, keras_output=keras_output,
                              measured=measured, check=check, quick=quick, replace=replace)
            return fn

        return decorator
    if not isinstance(name, str) or not _NAME.match(name):
        raise KslimValueError(f"register_strategy(): name must be lower case letters, digits and '_' "
                              f"(a config key), got {name!r}.")
    if name in _REGISTRY and not replace:
        raise KslimValueError(f"register_strategy(): a strategy {name!r} is registered already "
                              f"({_REGISTRY[name].run.__qualname__}); pass replace=True to replace it.")
    for what, fn in (("run", run), ("check", check), ("quick", quick)):
        if fn is not None and not callable(fn):
            raise KslimTypeError(f"register_strategy({name!r}): {what} must be callable, got {type(fn).__name__}.")
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise KslimValueError(f"register_strategy({name!r}): schema must be a JSON schema of type 'object' "
                              f"(the step's parameters), got {schema!r}.")
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise KslimValueError(f"register_strategy({name!r}): invalid JSON schema: {e.message}") from None
    strategy = Strategy(name, run, schema, _first_paragraph(doc if doc is not None else run.__doc__),
                        bool(trains), bool(keras_output), bool(measured), check, quick)
    _REGISTRY[name] = strategy
    return strategy


def unregister_strategy(name):
    """Remove the strategy ``name`` from the registry; returns it."""
    get_strategy(name)
    return _REGISTRY.pop(name)


def get_strategy(name):
    """The registered :class:`Strategy` called ``name``.

    Raises:
        ConfigError: no such strategy (the message lists the registered ones).
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown strategy {name!r}; choose one of {list(_REGISTRY)}", path="strategies") from None


def registered_strategies():
    """Every registered :class:`Strategy`, in registration order."""
    return tuple(_REGISTRY.values())


def params_schema(properties, **extra):
    """The JSON schema of a step's parameters: an object with these ``properties`` and no other field
    (a misspelt field is an error); ``extra`` adds keywords (``required=[...]``, ``oneOf=[...]``)."""
    return {"type": "object", "additionalProperties": False, "properties": properties, **extra}


def _enum(module, name):
    return {"enum": list(api_constant(module, name))}




def accuracy(model, x, y, batch_size=256):
    """Top-1 accuracy of a Keras model on numpy arrays (no compile needed)."""
    pred = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(pred, axis=-1) == np.asarray(y).reshape(-1)))


def _load_keras(path, unsafe=False):
    from kslim._model_io import load_keras_model

    # registers kslim's layers (QAT, ...) first; Keras' safe mode unless the user trusts the files
    return load_keras_model(path, safe_mode=not unsafe)


def _macs(model):
    try:
        from kslim.analysis import flops

        return int(flops(model).macs)
    except Exception:  # MACs are informative; a model flops() cannot count still compresses
        return None


def describe_model(model):
    """``"mobilenet_v1_w1 (3,210,000 params, 11.9 M MACs)"`` for the progress lines."""
    from kslim.analysis._table import human

    macs = _macs(model)
    return f"{model.name} ({model.count_params():,} params" + (f", {human(macs)} MACs)" if macs else ")")


def _epochs(n):
    return f"{n} epoch" + ("" if n == 1 else "s")


def _training_text(ctx, model, epochs, batch_size):
    """``"for 3 epochs on 10,000 images, about 2 min"`` (the estimate only when progress is shown)."""
    from kslim import _progress

    bs = int(batch_size or ctx.data.batch_size)
    n = ctx.data.train_size()
    text = f"for {_epochs(epochs)}" + (f" on {n:,} images" if n else "")
    if ctx.progress and epochs > 0:
        est = _progress.estimate_fit_seconds(model, ctx.data.batch(bs), ctx.data.steps_per_epoch(bs), epochs)
        if est:
            text += f", {_progress.about(est)}"
    return text


def _train_settings(ctx, settings):
    """``(epochs, learning_rate, batch_size)`` of a strategy: its own ``settings``, else the config's ``train``.

    ``batch_size`` is ``None`` when neither sets it (the data's default batch size).
    """
    train = ctx.config["train"]
    return (int(settings.get("epochs", train.get("epochs", 1))),
            float(settings.get("learning_rate", train.get("learning_rate", 5e-4))),
            settings.get("batch_size", train.get("batch_size")))


def _learning_rate(ctx, settings, epochs, batch_size):
    """The learning rate of a training step: a float (``schedule: constant``, the default) or a
    ``keras.optimizers.schedules.CosineDecay`` from ``learning_rate`` to 0 over the step's ``epochs``
    (``schedule: cosine``). The schedule reads the optimizer's iteration count, which the epoch
    checkpoints restore, so a resumed step continues its decay where it stopped."""
    lr = _train_settings(ctx, settings)[1]
    if settings.get("schedule", ctx.config["train"].get("schedule", "constant")) != "cosine":
        return lr
    import keras

    steps = max(1, epochs * ctx.data.steps_per_epoch(batch_size))
    return keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps)


def _fine_tune(ctx, model, settings, sdir, prefix, name="fine_tune", announce=True, callbacks=None, in_place=False):
    """Compile ``model`` and fit it resumably with ``settings`` (epochs, learning_rate, batch_size).

    ``announce`` prints what is trained, for how long and the estimated time (``ctx.header``).
    Under ``ctx.strategy`` (``distribute:``) a copy of ``model`` is trained, and a plain copy returned;
    ``in_place`` trains ``model`` itself without the strategy (for training that holds state on the
    model's own variables: masks, ADMM penalties). ``callbacks`` are passed to ``fit``.
    """
    from kslim.models import compile_classifier

    epochs, _, bs = _train_settings(ctx, settings)
    if epochs <= 0:
        return model, []
    lr = _learning_rate(ctx, settings, epochs, bs)
    strategy = None if in_place else ctx.strategy
    model = into_scope(strategy, model)
    with scope(strategy):
        compile_classifier(model, learning_rate=lr)  # always a fresh optimizer: a loaded model's may have decayed
        if announce:
            ctx.header(f"fine-tuning {describe_model(model)} {_training_text(ctx, model, epochs, bs)}")
        history = fit_resumable(
            model, lambda seed: ctx.data.train(seed, bs), epochs, sdir / "ckpt" / name, ctx.stage_seed,
            prefix, verbose=ctx.verbose, callbacks=callbacks, csv_log=ctx.run.logs / f"{sdir.name}_{name}.csv",
            note=ctx.note,
        )
    return out_of_scope(strategy, model), history


@register_strategy("fine_tune", trains=True, schema=params_schema(FINE_TUNE_SCHEMA["properties"]))
def run_fine_tune(ctx, p, sdir, prefix):
    """Training of the current model on the run's data with hard labels (``epochs``, ``learning_rate``,
    ``schedule``; any left out: the config's ``train``): on its own, the equally fine-tuned reference a
    compressed model is compared with; after a step, more recovery than its own ``fine_tune``."""
    model, _ = _fine_tune(ctx, ctx.model, p, sdir, prefix)
    ctx.model, ctx.lite = model, None


# ----------------------------------------------------------------------------- prune
def _prune_target(p):
    if "ratios" in p and not isinstance(p["ratios"], dict):
        return f"{100 * float(p['ratios']):g} % of the channels of every prunable group"
    if "ratios" in p:
        return f"per-layer ratios for {len(p['ratios'])} layer(s)"
    if "flops_reduction" in p:
        return f"to remove {100 * float(p['flops_reduction']):g} % of the MACs"
    if "sensitivity" in p:
        s = p["sensitivity"]
        goal = (f"to remove {100 * float(s['flops_reduction']):g} % of the MACs" if "flops_reduction" in s
                else f"at most {float(s['max_loss']):g} relative accuracy loss per layer")
        return f"ratios from a sensitivity analysis, {goal}"
    a = p["auto"]
    return (f"ratios searched by simulated annealing ({int(a.get('max_trials', 20))} trials) "
            f"to remove {100 * float(a['flops_reduction']):g} % of the MACs")


def write_layer_table(before, after, sdir):
    """The per-layer pruning table (``kslim.analysis.summary_diff``) as ``layers.json`` + ``layers.csv``
    in the stage folder; returns the JSON path."""
    import csv
    import io

    from kslim._io import atomic_write_text
    from kslim.analysis import summary_diff

    d = summary_diff(before, after)
    rows = [{"layer": r.name, "type": r.type, "channels_before": r.channels_before,
             "channels_after": r.channels_after, "macs_before": r.macs_before, "macs_after": r.macs_after}
            for r in d.rows]
    data = {"before": d.before_name, "after": d.after_name, "params_before": d.params_before,
            "params_after": d.params_after, "macs_before": d.macs_before, "macs_after": d.macs_after,
            "layers": rows}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["layer"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    guarded_write(atomic_write_text, sdir / "layers.csv", buf.getvalue())
    guarded_write(atomic_write_json, sdir / "layers.json", data)
    return sdir / "layers.json"


#: one ratio for every prunable group, or {layer: ratio}
_RATIOS = {"oneOf": [RATIO_SCHEMA, {"type": "object", "additionalProperties": RATIO_SCHEMA, "minProperties": 1}]}
_SCOPE = {"enum": scope_names()}  # the registry of kslim.prune.scope: which channel groups a pruner may prune


@register_strategy("prune", trains=True, schema=params_schema({
    "importance": {"enum": importance_names()},  # the registry of kslim.prune.importance
    # training samples the data-driven importances (apoz, mean_activation, taylor, hessian) read
    "importance_samples": {"type": "integer", "minimum": 1},
    "ratios": _RATIOS,
    "flops_reduction": RATIO_SCHEMA,
    "sensitivity": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "flops_reduction": RATIO_SCHEMA,
            "max_loss": {"type": "number", "exclusiveMinimum": 0},
            "ratios": {"type": "array", "items": RATIO_SCHEMA, "minItems": 1},
            "eval_samples": {"type": "integer", "minimum": 1},
        },
        "oneOf": [{"required": ["flops_reduction"]}, {"required": ["max_loss"]}],
    },
    "auto": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "flops_reduction": RATIO_SCHEMA,
            "max_trials": {"type": "integer", "minimum": 1},
            "init_temperature": {"type": "number", "exclusiveMinimum": 0},
            "reduce_rate": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "eval_samples": {"type": "integer", "minimum": 1},
        },
        "required": ["flops_reduction"],
    },
    "skip": {"type": "array", "items": {"type": "string"}},
    "scope": _SCOPE,
    "round_to": {"type": "integer", "minimum": 1},
    "keep_classifier": {"type": "boolean"},
    "fine_tune": FINE_TUNE_SCHEMA,
}, oneOf=[
    {"required": ["ratios"]}, {"required": ["flops_reduction"]},
    {"required": ["sensitivity"]}, {"required": ["auto"]},
]))
def run_prune(ctx, p, sdir, prefix):
    """Filter pruning that physically removes channels (:func:`kslim.prune.make_pruner`): one ``ratios`` for
    every group or per layer, a ``flops_reduction`` target, ratios from a ``sensitivity`` analysis or
    searched by ``auto`` (simulated annealing); then ``fine_tune``."""
    import kslim.prune as kp

    epochs = _train_settings(ctx, p.get("fine_tune", {}))[0]
    ctx.header(f"{p.get('importance', 'l1').upper()} filter pruning of {describe_model(ctx.model)}: "
               f"{_prune_target(p)}" + (f", then fine-tuning {_epochs(epochs)}" if epochs > 0 else ""))
    def make():
        info = {}
        name, measured_on = p.get("importance", "l1"), {}
        if name not in kp.importance_names(data=False):  # apoz, mean_activation, taylor, hessian
            import keras

            measured_on = dict(data=ctx.data.train_arrays(int(p.get("importance_samples", 256))),
                               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        pruner = kp.make_pruner(ctx.model, importance=name, skip=p.get("skip"), scope=p.get("scope", "all"),
                                keep_classifier=p.get("keep_classifier", True), round_to=p.get("round_to", 1),
                                **measured_on)
        if "ratios" in p:
            ratios = p["ratios"]
            pruned = pruner.prune(dict(ratios) if isinstance(ratios, dict) else float(ratios))
        elif "flops_reduction" in p:
            found = pruner.prune_to_flops(float(p["flops_reduction"]))
            pruned, info = found.model, found.to_dict()
        elif "sensitivity" in p:
            s = p["sensitivity"]
            x, y = ctx.data.eval_arrays(s.get("eval_samples", 500))
            sens = kp.sensitivity(
                ctx.model, lambda m: accuracy(m, x, y),
                ratios=tuple(s.get("ratios", (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9))),
                checkpoint=str(sdir / "ckpt" / "sensitivity.json"), pruner=pruner,
            )
            try:
                kp.plot_sensitivity(sens, str(ctx.run.plots / f"{sdir.name}_sensitivity.png"))
            except Exception:  # a plot is a nicety; never fail a run for it
                pass
            if "flops_reduction" in s:
                found = kp.ratios_by_flops(ctx.model, sens, float(s["flops_reduction"]), pruner=pruner)
                ratios = found.ratios
                info.update(max_loss=float(found.max_loss), reduction=float(found.reduction))
            else:
                ratios = kp.ratios_by_loss(sens, float(s["max_loss"]))
            info["ratios"] = {k: float(v) for k, v in ratios.items()}
            pruned = pruner.prune(ratios)
        else:  # auto
            from kslim.nas import auto_prune

            a = p["auto"]
            x, y = ctx.data.eval_arrays(a.get("eval_samples", 500))
            kwargs = {k: float(a[k]) for k in ("init_temperature", "reduce_rate") if k in a}
            result = auto_prune(
                ctx.model, lambda m: accuracy(m, x, y), flops_reduction=float(a["flops_reduction"]),
                pruner=pruner, max_trials=int(a.get("max_trials", 20)), seed=ctx.stage_seed,
                directory=str(sdir / "ckpt"), project_name="auto_prune", overwrite=False,
                plot=True, **kwargs,
            )
            pruned = result.model
            info.update(ratios={k: float(v) for k, v in result.ratios.items()}, score=float(result.score))
            if result.plot_path:
                import shutil

                shutil.copyfile(result.plot_path, ctx.run.plots / f"{sdir.name}_auto_prune.png")
        return pruned, {k: v for k, v in info.items() if isinstance(v, (int, float, str, dict, list))}

    _prune_then_fine_tune(ctx, sdir, prefix, make, p)


def _in_place_note(ctx, what):
    if ctx.strategy is not None:
        ctx.note(f"({what} trains on one device: its state lives on the model's own variables, "
                 "not under tf.distribute)")


def _prune_then_fine_tune(ctx, sdir, prefix, make, p):
    """The end of every channel-pruning step: :func:`_pruned_stage`, then the step's ``fine_tune``; the
    result becomes the pipeline's model."""
    pruned, info = _pruned_stage(ctx, sdir, prefix, make)
    model, _ = _fine_tune(ctx, pruned, p.get("fine_tune", {}), sdir, prefix)
    ctx.info.update(info)
    ctx.model, ctx.lite = model, None


def _pruned_stage(ctx, sdir, prefix, make):
    """``(model, info)`` of a pruning step: ``make() -> (model, info)`` once, saved as ``pruned_info.json``
    then ``pruned.keras`` (a resumed run picks them up), and the per-layer table of the stage."""
    pruned_path, info_path = sdir / "pruned.keras", sdir / "pruned_info.json"
    if pruned_path.is_file():
        pruned = _load_keras(pruned_path, ctx.unsafe)
        info = read_json(info_path, "Pruning info") if info_path.is_file() else {}
    else:
        pruned, info = make()
        guarded_write(atomic_write_json, info_path, info)  # before pruned.keras: a resumed run gets it back
        guarded_write(atomic_save_model, pruned, pruned_path)
        crash_point(f"{prefix}:pruned")
    if not (sdir / "layers.json").is_file():
        try:
            write_layer_table(ctx.model, pruned, sdir)
        except Exception as e:  # the table is a report extra; never fail the pruning for it
            ctx.note(f"(per-layer pruning table unavailable: {e})")
    return pruned, info


@register_strategy("lottery", trains=True, schema=params_schema({
    "sparsity": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    "iterations": {"type": "integer", "minimum": 1},
    "layers": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    "fine_tune": FINE_TUNE_SCHEMA,  # the training of each round and of the final ticket
}))
def run_lottery(ctx, p, sdir, prefix):
    """Lottery ticket (:func:`kslim.prune.lottery.lottery_ticket`): ``iterations`` rounds of training
    (``fine_tune``), magnitude pruning of the kernels up to ``sparsity`` and rewinding to the stage's
    starting weights, then the ticket trained with its mask; zeros in place (same shapes), not fewer
    channels. Resumable after each round."""
    from kslim.models import compile_classifier
    from kslim.prune.lottery import lottery_ticket

    args = _api_args(lottery_ticket, p, "sparsity", "iterations")
    settings = p.get("fine_tune", {})
    epochs, _, bs = _train_settings(ctx, settings)
    model = ctx.model
    ctx.header(f"lottery ticket of {describe_model(model)}: {args['iterations']} rounds to "
               f"{100 * float(args['sparsity']):g} % zeros, {_training_text(ctx, model, epochs, bs)} each")
    _in_place_note(ctx, "lottery")
    ckpt = sdir / "ckpt"
    ckpt.mkdir(parents=True, exist_ok=True)
    state = ckpt / "lottery.json"
    rounds_done = len(read_json(state, "Lottery ticket checkpoint").get("rounds", [])) if state.is_file() else 0
    names = iter(f"round{i}" for i in range(rounds_done + 1, 10 ** 6))

    def train(m, name=None):
        _fine_tune(ctx, m, settings, sdir, prefix, name=name or next(names), announce=False, in_place=True)

    compile_classifier(model)  # the masks retrace a compiled train step
    ticket = lottery_ticket(model, train, checkpoint=str(state), layers=p.get("layers"), verbose=0, **args)
    ticket.train(model, lambda m: train(m, "ticket"))
    ctx.info.update(sparsity=ticket.sparsity, rounds=[vars(r) for r in ticket.rounds])
    ctx.model, ctx.lite = model, None


@register_strategy("admm", trains=True, schema=params_schema({
    "ratios": _RATIOS,
    "rho": {"type": "number", "exclusiveMinimum": 0},
    "epochs": {"type": "integer", "minimum": 1},  # ADMM training, one Z/U update after each epoch
    "learning_rate": {"type": "number", "exclusiveMinimum": 0},
    "skip": {"type": "array", "items": {"type": "string"}},
    "scope": _SCOPE,
    "round_to": {"type": "integer", "minimum": 1},
    "keep_classifier": {"type": "boolean"},
    "fine_tune": FINE_TUNE_SCHEMA,  # after the channels are removed
}, required=["ratios"]))
def run_admm(ctx, p, sdir, prefix):
    """ADMM filter pruning (:class:`kslim.prune.admm.ADMMPruning`): ``epochs`` of training pulled towards
    ``ratios`` of zero channels per group (penalty ``rho``, Z/U updated after every epoch), the
    channels removed, then ``fine_tune``."""
    from kslim.prune.admm import ADMMPruning

    settings = {k: p[k] for k in ("epochs", "learning_rate") if k in p}
    epochs, _, bs = _train_settings(ctx, settings)
    if epochs < 1:  # train.epochs: 0 and no epochs of its own
        where = f"strategies[{int(prefix.split(':')[0]) - 1}].admm.epochs"  # prefix: "<stage>:admm"
        raise ConfigError("ADMM needs at least 1 epoch of training (train.epochs is 0); give epochs", path=where)
    ctx.header(f"ADMM filter pruning of {describe_model(ctx.model)}: {_prune_target(p)}, "
               f"{_training_text(ctx, ctx.model, epochs, bs)}")
    _in_place_note(ctx, "ADMM")

    def make():
        admm = ADMMPruning(ratios=p["ratios"], skip=p.get("skip"),
                           **_api_args(ADMMPruning.__init__, p, "rho", "keep_classifier", "round_to", "scope"))
        _fine_tune(ctx, ctx.model, settings, sdir, prefix, name="admm", announce=False, callbacks=[admm],
                   in_place=True)
        removed = {g.name if hasattr(g, "name") else str(g): int(len(v)) for g, v in admm.plan.items()}
        return admm.prune(), {"admm_residual": [float(r) for r in admm.history], "channels_removed": removed}

    _prune_then_fine_tune(ctx, sdir, prefix, make, p)


@register_strategy("auto_compress", trains=True, schema=params_schema({
    "flops_reduction": RATIO_SCHEMA,
    "rounds": {"type": "integer", "minimum": 1},
    "max_trials": {"type": "integer", "minimum": 1},
    "eval_samples": {"type": "integer", "minimum": 1},
    "rho": {"type": "number", "exclusiveMinimum": 0},
    "epochs": {"type": "integer", "minimum": 1},  # ADMM training of each round
    "learning_rate": {"type": "number", "exclusiveMinimum": 0},
    "importance": {"enum": importance_names(data=False)},  # the searched candidates are pruned one-shot
    "skip": {"type": "array", "items": {"type": "string"}},
    "scope": _SCOPE,
    "round_to": {"type": "integer", "minimum": 1},
    "keep_classifier": {"type": "boolean"},
    "init_temperature": {"type": "number", "exclusiveMinimum": 0},
    "reduce_rate": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    "fine_tune": FINE_TUNE_SCHEMA,  # after the last round
}, required=["flops_reduction"]))
def run_auto_compress(ctx, p, sdir, prefix):
    """AutoCompress (:func:`kslim.nas.auto_compress`, NNI's AutoCompressPruner): ``rounds`` rounds of a
    simulated-annealing search of per-group ratios (candidates scored by accuracy on ``eval_samples``
    test images after one-shot pruning) then ADMM training (``epochs``) towards them and channel
    removal, until ``flops_reduction`` of the FLOPs is gone; then ``fine_tune``. The searches live in
    the stage folder (a resumed run reuses their trials; the ADMM rounds run again)."""
    from kslim.nas import auto_compress

    settings = {k: p[k] for k in ("epochs", "learning_rate") if k in p}
    epochs, _, bs = _train_settings(ctx, settings)
    if epochs < 1:
        where = f"strategies[{int(prefix.split(':')[0]) - 1}].auto_compress.epochs"
        raise ConfigError("AutoCompress's ADMM rounds need at least 1 epoch of training (train.epochs is 0); "
                          "give epochs", path=where)
    args = _api_args(auto_compress, p, "rounds", "max_trials", "rho", "importance", "keep_classifier", "round_to",
                     "scope")
    x, y = ctx.data.eval_arrays(int(p.get("eval_samples", 500)))
    ctx.header(f"AutoCompress of {describe_model(ctx.model)}: {100 * float(p['flops_reduction']):g} % of the FLOPs "
               f"in {args['rounds']} rounds of search ({args['max_trials']} candidates scored on {len(x)} test "
               f"images) + ADMM ({_training_text(ctx, ctx.model, epochs, bs)} per round)")
    _in_place_note(ctx, "ADMM")
    rounds = iter(range(1, 10 ** 6))

    def train(model, callbacks):
        _fine_tune(ctx, model, settings, sdir, prefix, name=f"admm_round{next(rounds)}", announce=False,
                   callbacks=callbacks, in_place=True)

    def make():
        res = auto_compress(ctx.model, lambda m: accuracy(m, x, y), train, float(p["flops_reduction"]),
                            skip=p.get("skip"), seed=ctx.stage_seed, directory=str(sdir / "ckpt"),
                            project_name="auto_compress",
                            **{k: float(p[k]) for k in ("init_temperature", "reduce_rate") if k in p}, **args)
        rows = [{k: v for k, v in r.items() if isinstance(v, (int, float, str, dict, type(None)))} for r in res.rounds]
        return res.model, {"flops_reduction": float(res.flops_reduction), "rounds": rows}

    _prune_then_fine_tune(ctx, sdir, prefix, make, p)


@register_strategy("amc", trains=True, schema=params_schema({
    "flops_reduction": RATIO_SCHEMA,
    "episodes": {"type": "integer", "minimum": 1},
    "warmup": {"type": "integer", "minimum": 0},
    "eval_samples": {"type": "integer", "minimum": 1},
    "action_max": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    "importance": {"enum": importance_names(data=False)},  # every episode is pruned one-shot
    "skip": {"type": "array", "items": {"type": "string"}},
    "scope": _SCOPE,
    "round_to": {"type": "integer", "minimum": 1},
    "keep_classifier": {"type": "boolean"},
    "fine_tune": FINE_TUNE_SCHEMA,
}, required=["flops_reduction"]))
def run_amc(ctx, p, sdir, prefix):
    """AMC (:func:`kslim.nas.amc_prune`, NNI's AMCPruner): a DDPG agent picks per-group ratios over
    ``episodes`` (the first ``warmup`` random), each episode meeting ``flops_reduction`` and scored by
    the accuracy on ``eval_samples`` test images after one-shot pruning; the best is kept, then
    ``fine_tune``. The agent is checkpointed in the stage folder after every episode (a resumed run
    continues it)."""
    from kslim.nas import amc_prune

    args = _api_args(amc_prune, p, "episodes", "warmup", "action_max", "importance")
    x, y = ctx.data.eval_arrays(int(p.get("eval_samples", 500)))
    ctx.header(f"AMC search of {describe_model(ctx.model)}: {100 * float(p['flops_reduction']):g} % of the FLOPs, "
               f"{args['episodes']} episodes scored on {len(x)} test images")

    def make():
        res = amc_prune(ctx.model, lambda m: accuracy(m, x, y), float(p["flops_reduction"]), skip=p.get("skip"),
                        keep_classifier=p.get("keep_classifier", True), round_to=int(p.get("round_to", 1)),
                        scope=p.get("scope", "all"), seed=ctx.stage_seed, directory=str(sdir / "ckpt" / "amc"),
                        **args)
        return res.model, {"flops_reduction": float(res.flops_reduction), "score": float(res.score),
                           "ratios": res.ratios, "best_episode": res.best_episode}

    _prune_then_fine_tune(ctx, sdir, prefix, make, p)


#: what ``netadapt``'s ``latency`` field names: the ``.tflite`` timed on this host, or the MACs (millions) as
#: a noise-free stand-in (a relative budget only)
NETADAPT_LATENCIES = ("measure", "macs")


def _check_netadapt(p):
    if "latency_reduction" not in p and "max_latency" not in p:
        return [("latency_reduction", "netadapt needs a budget: give latency_reduction (share of the starting "
                                      "latency to remove) and/or max_latency (ms)")]
    if p.get("latency") == "macs" and "max_latency" in p:
        return [("max_latency", "is in ms; with latency: macs give latency_reduction instead")]
    return []


@register_strategy("netadapt", trains=True, check=_check_netadapt, schema=params_schema({
    "latency_reduction": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    "max_latency": {"type": "number", "exclusiveMinimum": 0},
    "latency": {"enum": list(NETADAPT_LATENCIES)},
    "num_threads": {"type": "integer", "minimum": 1},
    "runs": {"type": "integer", "minimum": 1},
    "step": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    "importance": {"enum": importance_names(data=False)},  # netadapt ranks channels without data
    "skip": {"type": "array", "items": {"type": "string"}},
    "scope": _SCOPE,
    "keep_classifier": {"type": "boolean"},
    "round_to": {"type": "integer", "minimum": 1},
    "max_steps": {"type": "integer", "minimum": 1},
    "eval_samples": {"type": "integer", "minimum": 1},
    "candidate_fine_tune": FINE_TUNE_SCHEMA,  # the short fine-tune of every candidate (default: none)
    "fine_tune": FINE_TUNE_SCHEMA,  # of the result
}))
def run_netadapt(ctx, p, sdir, prefix):
    """NetAdapt (:func:`kslim.prune.netadapt.netadapt`): channels removed ``step`` by step, each time from
    the group whose pruning keeps the best accuracy on ``eval_samples`` test images, until the
    latency (``measure``: the ``.tflite`` on this host; ``macs``) meets ``latency_reduction`` /
    ``max_latency``; then ``fine_tune``. Resumable after every step."""
    from kslim.prune.netadapt import netadapt

    latency = p.get("latency", "measure")
    goal = (f"{100 * float(p['latency_reduction']):g} % less latency" if "latency_reduction" in p else
            f"at most {float(p['max_latency']):g} ms")
    ctx.header(f"NetAdapt pruning of {describe_model(ctx.model)} to {goal} ({latency})")
    x, y = ctx.data.eval_arrays(int(p.get("eval_samples", 500)))
    if latency == "macs":
        def latency_fn(m):
            return (_macs(m) or 0) / 1e6
    else:
        from kslim.lite import measure_latency

        def latency_fn(m):
            return measure_latency(m, num_threads=int(p.get("num_threads", 1)), runs=int(p.get("runs", 20)))
    finetune_fn = None
    if "candidate_fine_tune" in p:
        from kslim.models import compile_classifier

        epochs, _, bs = _train_settings(ctx, p["candidate_fine_tune"])
        lr = _learning_rate(ctx, p["candidate_fine_tune"], epochs, bs)

        def finetune_fn(m):  # short and not checkpointed: each candidate has other shapes
            compile_classifier(m, learning_rate=lr)
            if epochs > 0:
                m.fit(ctx.data.train(ctx.stage_seed, bs), epochs=epochs, verbose=0)

    def make():
        kwargs = {k: p[k] for k in ("latency_reduction", "max_latency", "step", "importance", "skip",
                                     "keep_classifier", "round_to", "max_steps", "scope") if k in p}
        res = netadapt(ctx.model, lambda m: accuracy(m, x, y), latency_fn=latency_fn, finetune_fn=finetune_fn,
                       directory=sdir / "ckpt" / "netadapt", **kwargs)
        return res.model, {"latency_before": res.latency_before, "latency": res.latency, "budget": res.budget,
                           "reached": bool(res.reached), "steps": len(res.steps), "latency_unit": latency}

    _prune_then_fine_tune(ctx, sdir, prefix, make, p)


# ----------------------------------------------------------------------------- distill
def _build_model(ctx, spec, what):
    from kslim.models import pretrained

    if "path" in spec:
        from pathlib import Path

        path = Path(spec["path"])
        if not path.is_absolute():
            path = ctx.base_dir / path
        if not path.is_file():
            raise ConfigError(f"{what} model file {path} does not exist", path=f"{what}.path")
        return _load_keras(path, ctx.unsafe)
    return pretrained(**_reference_args(ctx, spec), verbose=ctx.verbose, progress=ctx.progress).model


def _reference_args(ctx, spec):
    """The :func:`kslim.models.pretrained` arguments of a ``{reference: ...}`` model spec: the weights
    kslim ships (converged on the full training set) when the spec gives no ``pretrain_epochs`` and
    kslim ships them for its settings, else ``pretrain_epochs`` (default 3) of training on the data."""
    from kslim.models.zoo import is_cached

    kwargs = {"width": spec["width"]} if "width" in spec else {}
    if "pretrain_epochs" not in spec and is_cached(spec["reference"], "shipped", seed=ctx.config["seed"], **kwargs):
        return dict(name=spec["reference"], source="shipped", epochs=None, seed=ctx.config["seed"], **kwargs)
    source = ctx.config["data"].get("source", "small")
    if source == "hook":
        source = "small"
    return dict(name=spec["reference"], source=source, epochs=int(spec.get("pretrain_epochs", 3)),
                seed=ctx.config["seed"], **kwargs)


def needs_training(ctx, spec):
    """Whether building ``spec`` trains a reference model first (it is not in the cache)."""
    from kslim.models.zoo import is_cached

    return "reference" in spec and not is_cached(**_reference_args(ctx, spec))


#: a distillation pair's layer: a name or path, or two of them (fsp)
_PAIR_SIDE = {"oneOf": [{"type": "string", "minLength": 1},
                        {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 2, "maxItems": 2}]}


def _check_distill(p):
    """Per pair: the loss's own options only, and two layers per side for fsp (one for the others)."""
    out = []
    for i, pair in enumerate(p.get("pairs", [])):
        loss = pair.get("loss")
        for k in ("temperature", "alpha", "beta"):
            if k in pair and loss not in ({"temperature": ("soft_label", "dkd")}.get(k, ("dkd",))):
                out.append((f"pairs[{i}].{k}", f"is an option of {'soft_label and dkd' if k == 'temperature' else 'dkd'}, "
                                              f"not of loss {loss!r}"))
        for side in ("teacher", "student"):
            two = isinstance(pair.get(side), list)
            if side in pair and two != (loss == "fsp"):
                out.append((f"pairs[{i}].{side}", "fsp takes two layer names per side ([a, b])" if loss == "fsp" else
                            f"loss {loss!r} takes one layer name per side"))
    return out


@register_strategy("distill", trains=True, check=_check_distill, schema=params_schema({
    "teacher": MODEL_SCHEMA,
    "pairs": {
        "type": "array",
        "items": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "teacher": _PAIR_SIDE,
                "student": _PAIR_SIDE,
                "loss": _enum("kslim.distill.losses", "LOSS_NAMES"),
                "weight": {"type": "number", "minimum": 0},
                "temperature": {"type": "number", "exclusiveMinimum": 0},  # soft_label, dkd
                "alpha": {"type": "number", "minimum": 0},  # dkd: target-class term
                "beta": {"type": "number", "minimum": 0},  # dkd: non-target term
                "adaptor": {"type": "boolean"},
            },
            "required": ["teacher", "student", "loss"],
        },
    },
    "hard_weight": {"type": "number", "minimum": 0},
    "temperature": {"type": "number", "exclusiveMinimum": 0},
    "soft_weight": {"type": "number", "minimum": 0},
    "epochs": {"type": "integer", "minimum": 0},
    "learning_rate": {"type": "number", "exclusiveMinimum": 0},
    "schedule": FINE_TUNE_SCHEMA["properties"]["schedule"],
}, required=["teacher"]))
def run_distill(ctx, p, sdir, prefix):
    """Fine-tuning of the current model distilled from a frozen ``teacher`` (:class:`kslim.distill.Distiller`);
    the ``pairs`` default to soft labels on the logits."""
    import keras

    from kslim.distill import Distiller, Pair

    epochs, _, bs = _train_settings(ctx, p)
    student = describe_model(ctx.model)
    late = needs_training(ctx, p["teacher"])
    if late:  # the teacher's training prints its own lines: say first what this stage is
        ctx.header(f"fine-tuning {student} for {_epochs(epochs)}, distilled from reference model "
                   f"{p['teacher']['reference']} (trained first)")
    teacher = _build_model(ctx, p["teacher"], "strategies.distill.teacher")
    teacher = into_scope(ctx.strategy, teacher)
    teacher.trainable = False
    temperature = float(p.get("temperature", 4.0))
    pairs = []
    for pair in p.get("pairs", []):
        kwargs = {"temperature": float(pair.get("temperature", temperature))} if pair["loss"] in ("soft_label", "dkd") else {}
        kwargs.update({k: float(pair[k]) for k in ("alpha", "beta") if k in pair})
        side = {k: tuple(pair[k]) if isinstance(pair[k], list) else pair[k] for k in ("teacher", "student")}
        pairs.append(Pair(side["teacher"], side["student"], pair["loss"], weight=float(pair.get("weight", 1.0)),
                          adaptor="auto" if pair.get("adaptor") else False, **kwargs))
    if not pairs:
        pairs = [Pair(None, None, "soft_label", weight=float(p.get("soft_weight", 1.0)), temperature=temperature)]
    with scope(ctx.strategy):  # the student's copy, adaptors and optimizer under the strategy
        distiller = Distiller(
            into_scope(ctx.strategy, ctx.model), teacher, pairs=pairs, hard_weight=float(p.get("hard_weight", 1.0)),
            hard_loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        distiller.compile(optimizer=keras.optimizers.Adam(_learning_rate(ctx, p, epochs, bs)), metrics=["accuracy"])
        text = _training_text(ctx, distiller, epochs, bs)
        ctx.header(f"distillation {text}" if late else
                   f"fine-tuning {student} {text}, distilled from {describe_model(teacher)}")
        fit_resumable(distiller, lambda seed: ctx.data.train(seed, bs), epochs, sdir / "ckpt" / "distill",
                      ctx.stage_seed, prefix, verbose=ctx.verbose, csv_log=ctx.run.logs / f"{sdir.name}_distill.csv",
                      note=ctx.note)
    ctx.model, ctx.lite = out_of_scope(ctx.strategy, distiller.student), None


# ----------------------------------------------------------------------------- quantization
def _check_quant_aware(p):
    """The bit widths each quantizer takes (``kslim.quant.lowbit.BITS``, read without TensorFlow)."""
    bits = api_constant("kslim.quant.lowbit", "BITS")
    out = []
    for i, kind in enumerate(("weight", "activation")):
        algo, b = p.get(f"{kind}_quantizer", "default"), p.get(f"{kind}_bits", 8)
        lo, hi = bits.get(algo, ((2, 8), (2, 8)))[i]
        if not lo <= b <= hi:
            out.append((f"{kind}_bits", f"must be in {lo}..{hi} with {kind}_quantizer {algo!r}, got {b}"))
    return out


@register_strategy("quant_aware", trains=True, check=_check_quant_aware, schema=params_schema({
    "weight_quantize_type": _enum("kslim.quant.config", "WEIGHT_QUANTIZE_TYPES"),
    "activation_quantize_type": _enum("kslim.quant.config", "ACTIVATION_QUANTIZE_TYPES"),
    "weight_quantizer": _enum("kslim.quant.lowbit", "QUANTIZERS"),
    "activation_quantizer": _enum("kslim.quant.lowbit", "QUANTIZERS"),
    "lsq_init": _enum("kslim.quant.lowbit", "LSQ_INITS"),
    "weight_bits": {"type": "integer", "minimum": 1, "maximum": 8},       # 1: bnn only (QuantConfig checks)
    "activation_bits": {"type": "integer", "minimum": 1, "maximum": 8},
    "skip": {"type": "array", "items": {"type": "string"}},
    "epochs": {"type": "integer", "minimum": 0},
    "learning_rate": {"type": "number", "exclusiveMinimum": 0},
    "schedule": FINE_TUNE_SCHEMA["properties"]["schedule"],
}))
def run_quant_aware(ctx, p, sdir, prefix):
    """Quantization-aware training (:func:`kslim.quant.quant_aware`) for ``epochs``; ``export`` then gives
    int8 kernels from the learnt ranges."""
    from kslim.quant import QuantConfig, quant_aware

    qcfg = {k: v for k, v in p.items() if k not in ("epochs", "learning_rate", "schedule", "skip")}
    if p.get("skip"):
        qcfg["skip"] = tuple(p["skip"])
    qat = quant_aware(ctx.model, QuantConfig(**qcfg))
    settings = {k: p[k] for k in ("epochs", "learning_rate", "schedule") if k in p}
    epochs, _, bs = _train_settings(ctx, settings)
    ctx.header(f"quantization-aware training of {describe_model(ctx.model)} "
               f"{_training_text(ctx, qat, epochs, bs)}")
    model, _ = _fine_tune(ctx, qat, settings, sdir, prefix, name="qat", announce=False)
    ctx.model, ctx.lite, ctx.qat = model, None, True


@register_strategy("quant_post_static", keras_output=False, schema=params_schema({
    "algo": _enum("kslim.quant.calibration", "ALGOS"),
    "batch_nums": {"type": "integer", "minimum": 1},
    "batch_size": {"type": "integer", "minimum": 1},
    "weight_quantize_type": _enum("kslim.quant.config", "WEIGHT_QUANTIZE_TYPES"),
    "bias_correction": {"type": "boolean"},
}))
def run_quant_post_static(ctx, p, sdir, prefix):
    """Full-integer post-training quantization (:func:`kslim.quant.quant_post_static`), ``algo`` calibration
    on ``batch_nums`` x ``batch_size`` training images."""
    from kslim.quant import quant_post_static

    batch_size = int(p.get("batch_size", 32))
    batches = int(p.get("batch_nums", 10))
    calib = ctx.data.calibration(batch_size * batches)
    ctx.header(f"post-training int8 quantization of {describe_model(ctx.model)}, {p.get('algo', 'KL')} "
               f"calibration on {len(calib)} training images")
    kwargs = {k: p[k] for k in ("weight_quantize_type", "bias_correction") if k in p}
    ctx.lite = quant_post_static(ctx.model, calib, algo=p.get("algo", "KL"), batch_size=batch_size,
                                 batch_nums=batches, **kwargs)


@register_strategy("quant_post_dynamic", keras_output=False, schema=params_schema({
    "dtype": _enum("kslim.quant.dynamic", "DTYPES"),
    "skip": {"type": "array", "items": {"type": "string"}},
}))
def run_quant_post_dynamic(ctx, p, sdir, prefix):
    """Post-training weight quantization without data (:func:`kslim.quant.quant_post_dynamic`): int8 or
    float16 weights."""
    from kslim.quant import quant_post_dynamic

    kwargs = {"skip": list(p["skip"])} if p.get("skip") else {}
    ctx.header(f"post-training {p.get('dtype', 'int8')} weight quantization of {describe_model(ctx.model)} "
               "(no data needed)")
    ctx.lite = quant_post_dynamic(ctx.model, dtype=p.get("dtype", "int8"), **kwargs)


def _check_litert(p):
    if "recipe" in p and "rules" in p:
        return [("rules", "give recipe (one for the whole model) or rules (per layer), not both")]
    return []


def _check_mixed(p):
    if "size_budget" not in p and "latency_budget" not in p:
        return [("size_budget", "quant_post_mixed needs a budget: give size_budget (bytes, or a fraction of the "
                                "int8 model) and/or latency_budget (ms, or a multiple)")]
    return []


@register_strategy("quant_post_litert", keras_output=False, check=_check_litert, schema=params_schema({
    "recipe": _enum("kslim.quant.litert", "RECIPES"),
    "rules": {"type": "array", "minItems": 1, "items": {
        "type": "array", "minItems": 2, "maxItems": 2,
        "prefixItems": [{"type": "string"}, _enum("kslim.quant.litert", "RECIPES")]}},
    "algo": _enum("kslim.quant.calibration", "ALGOS"),
    "batch_nums": {"type": "integer", "minimum": 1},
    "batch_size": {"type": "integer", "minimum": 1},
}))
def run_quant_post_litert(ctx, p, sdir, prefix):
    """Post-training quantization with LiteRT's own quantizer (:func:`kslim.quant.quant_post_litert`):
    one ``recipe`` (default int8) or per-layer ``rules`` (``[[regex, recipe], ...]``, later rules win); the
    static recipes are calibrated on ``batch_nums`` x ``batch_size`` training images, with kslim's ``algo``
    ranges when given (else LiteRT's own min/max)."""
    from kslim.quant import quant_post_litert
    from kslim.quant.litert import STATIC_RECIPES

    recipe = [tuple(r) for r in p["rules"]] if "rules" in p else p.get("recipe", "int8")
    names = {recipe} if isinstance(recipe, str) else {r for _, r in recipe}
    batch_size, batches = int(p.get("batch_size", 32)), int(p.get("batch_nums", 10))
    calib = ctx.data.calibration(batch_size * batches) if names & set(STATIC_RECIPES) else None
    ctx.header(f"LiteRT-quantizer {', '.join(sorted(names))} quantization of {describe_model(ctx.model)}"
               + (f", {p.get('algo', 'its own min/max')} calibration on {len(calib)} training images"
                  if calib is not None else " (no data needed)"))
    ctx.lite = quant_post_litert(ctx.model, recipe, calib, batch_size * batches, algo=p.get("algo"),
                                 batch_size=batch_size)


@register_strategy("quant_post_mixed", keras_output=False, check=_check_mixed, schema=params_schema({
    "size_budget": {"type": "number", "exclusiveMinimum": 0},
    "latency_budget": {"type": "number", "exclusiveMinimum": 0},
    "recipes": {"type": "array", "minItems": 1, "uniqueItems": True, "items": _enum("kslim.quant.mixed", "MIXED_RECIPES")},
    "base": _enum("kslim.quant.mixed", "MIXED_RECIPES"),
    "algo": _enum("kslim.quant.calibration", "ALGOS"),
    "batch_nums": {"type": "integer", "minimum": 1},
    "batch_size": {"type": "integer", "minimum": 1},
}))
def run_quant_post_mixed(ctx, p, sdir, prefix):
    """Mixed-precision post-training quantization (:func:`kslim.quant.quant_post_mixed`): a recipe per
    layer (int4 weights, int16 activations) chosen under ``size_budget`` (bytes, or a fraction of the int8
    model) and/or ``latency_budget`` (ms on this CPU, or a multiple), measured on the exported file."""
    from kslim.quant.mixed import quant_post_mixed

    batch_size, batches = int(p.get("batch_size", 32)), int(p.get("batch_nums", 8))
    calib = ctx.data.calibration(batch_size * batches)
    budgets = ", ".join(f"{k} {p[k]:g}" for k in ("size_budget", "latency_budget") if k in p)
    ctx.header(f"mixed-precision quantization of {describe_model(ctx.model)} under {budgets}, "
               f"{len(calib)} calibration images")
    args = {k: p[k] for k in ("size_budget", "latency_budget", "base", "algo") if k in p}
    if "recipes" in p:
        args["recipes"] = list(p["recipes"])
    res = quant_post_mixed(ctx.model, calib, num_calibration_samples=len(calib), **args)
    ctx.lite = res.lite
    ctx.info.update(met=res.met, choices=res.choices, size_bytes=res.size_bytes, base_bytes=res.base_bytes,
                    latency_ms=res.latency_ms, error=res.error, base_error=res.base_error)


@register_strategy("quant_post_auto", keras_output=False, schema=params_schema({
    "max_drop": {"type": "number", "minimum": 0},
    "relative": {"type": "boolean"},
    "algos": {"type": "array", "minItems": 1, "uniqueItems": True, "items": _enum("kslim.quant.calibration", "ALGOS")},
    "fallback": {"type": "array", "uniqueItems": True, "items": _enum("kslim.quant.auto", "FALLBACK_KINDS")},
    "max_fallback_layers": {"type": "integer", "minimum": 1},
    "max_trials": {"type": "integer", "minimum": 1},
    "batch_nums": {"type": "integer", "minimum": 1},
    "batch_size": {"type": "integer", "minimum": 1},
    "weight_quantize_type": _enum("kslim.quant.config", "WEIGHT_QUANTIZE_TYPES"),
    "eval_samples": {"type": "integer", "minimum": 1},
    "raise_on_fail": {"type": "boolean"},
}))
def run_quant_post_auto(ctx, p, sdir, prefix):
    """Accuracy-aware int8 post-training quantization (:func:`kslim.quant.quant_post_auto`): calibration
    algorithm x per-layer int16/float fallback until the ``.tflite`` loses at most ``max_drop`` top-1
    accuracy on ``eval_samples`` test images; the search lives in the stage folder (a resumed run reuses
    its finished trials)."""
    from kslim.quant import quant_post_auto

    batch_size = int(p.get("batch_size", 32))
    batches = int(p.get("batch_nums", 10))
    args = _api_args(quant_post_auto, p, "max_drop", "relative", "max_fallback_layers", "max_trials",
                     "weight_quantize_type", "raise_on_fail")
    for name in ("algos", "fallback"):
        if name in p:
            args[name] = list(p[name])
    calib = ctx.data.calibration(batch_size * batches)
    x, y = ctx.data.eval_arrays(int(p.get("eval_samples", 500)))
    y = np.asarray(y).reshape(-1)
    ctx.header(f"accuracy-aware int8 quantization of {describe_model(ctx.model)}: at most {args['max_drop']:g} "
               f"accuracy lost on {len(x)} test images, {len(calib)} calibration images")

    def lite_accuracy(lite):
        return float(np.mean(np.argmax(lite.predict(x), axis=-1) == y))

    res = quant_post_auto(ctx.model, calib, lite_accuracy, batch_size=batch_size, batch_nums=batches,
                          directory=sdir, project_name="quant_post_auto", **args)
    ctx.lite = res.lite
    ctx.info.update(met=res.met, algo=res.algo, fallback=res.fallback, backend=res.backend,
                    float_accuracy=res.float_metric, drop=res.drop, trials=len(res.trials))


# ----------------------------------------------------------------------------- equalize / bias / BatchNorm
def _batch_settings(p):
    """``(batches, batch_size)`` of a step that runs the model on some training images (10 x 32 by default,
    the calibration ``quant_post_static`` uses by default)."""
    return int(p.get("batches", 10)), int(p.get("batch_size", 32))


def _api_args(fn, p, *names):
    """``{name: value}`` of ``fn``'s parameters ``names``: the step's ``p``, else ``fn``'s own defaults."""
    import inspect

    params = inspect.signature(fn).parameters
    return {n: p.get(n, params[n].default) for n in names}


def _keras_step(ctx, sdir, prefix, name, transform, summary, fine_tune=None):
    """Run ``transform() -> result`` (a kslim result with ``.model`` and ``.to_dict()``) on the current
    model, write ``<name>.json`` into the stage folder, optionally fine-tune, and leave the model in
    ``ctx.model``; ``summary(details) -> dict`` is what the stage's report row shows (``ctx.info``).

    With ``fine_tune`` the transformed model is saved first (``<name>.keras``), so a resumed run
    continues the fine-tuning from it instead of transforming again.
    """
    path, details_path = sdir / f"{name}.keras", sdir / f"{name}.json"
    if fine_tune is not None and path.is_file() and details_path.is_file():
        model, details = _load_keras(path, ctx.unsafe), read_json(details_path, f"{name} details")
    else:
        result = transform()
        model, details = result.model, result.to_dict()
        guarded_write(atomic_write_json, details_path, details)
        if fine_tune is not None:
            guarded_write(atomic_save_model, model, path)
        crash_point(f"{prefix}:{name}")
    if fine_tune is not None:
        model, _ = _fine_tune(ctx, model, fine_tune, sdir, prefix)
    ctx.info.update(summary(details))
    ctx.model, ctx.lite = model, None


@register_strategy("equalize", trains=True, schema=params_schema({
    "relu6": _enum("kslim.quant.equalize", "RELU6_MODES"),
    "iterations": {"type": "integer", "minimum": 1},
    "fine_tune": FINE_TUNE_SCHEMA,  # only when given (relu6: relu changes the float function)
}))
def run_equalize(ctx, p, sdir, prefix):
    """Cross-layer equalization (:func:`kslim.quant.equalize_cross_layer`, data-free): BatchNorm folded,
    the kernels of consecutive layers rescaled to balanced per-channel ranges, same function (``relu6:
    relu`` turns the ReLU6 between two layers into a ReLU); before ``bias_correction`` /
    ``quant_post_static``. Fine-tunes only with ``fine_tune``."""
    from kslim.quant import equalize_cross_layer

    args = _api_args(equalize_cross_layer, p, "relu6", "iterations")
    args["iterations"] = int(args["iterations"])
    ctx.header(f"cross-layer equalization of {describe_model(ctx.model)} ({args['iterations']} sweeps, "
               f"ReLU6: {args['relu6']})")
    _keras_step(ctx, sdir, prefix, "equalize", lambda: equalize_cross_layer(ctx.model, **args),
                lambda d: {"equalized_pairs": len(d["pairs"]), "skipped_pairs": len(d["skipped"]),
                           "relu6_replaced": list(d["replaced"])},
                fine_tune=p.get("fine_tune"))


@register_strategy("bias_correction", schema=params_schema({
    "weight_quantize_type": _enum("kslim.quant.config", "WEIGHT_QUANTIZE_TYPES"),
    "batches": {"type": "integer", "minimum": 1},
    "batch_size": {"type": "integer", "minimum": 1},
}))
def run_bias_correction(ctx, p, sdir, prefix):
    """Bias correction for int8 weight rounding (:func:`kslim.quant.correct_weight_bias`) on ``batches``
    x ``batch_size`` calibration images: a float model whose biases cancel the mean error of the
    ``weight_quantize_type`` grid; give the following ``quant_post_static`` the same grid."""
    from kslim.quant import correct_weight_bias

    batches, batch_size = _batch_settings(p)
    args = _api_args(correct_weight_bias, p, "weight_quantize_type")
    calib = ctx.data.calibration(batches * batch_size)
    ctx.header(f"bias correction of {describe_model(ctx.model)} for {args['weight_quantize_type']} int8 weights, "
               f"on {len(calib)} calibration images")
    _keras_step(ctx, sdir, prefix, "bias_correction",
                lambda: correct_weight_bias(ctx.model, calib, batches=batches, batch_size=batch_size, **args),
                lambda d: {"corrected_layers": len(d["layers"]), "samples": d["samples"],
                           "max_bias_shift": max((c["max_shift"] for c in d["layers"]), default=0.0)})


@register_strategy("bn_reestimate", schema=params_schema({
    "batches": {"type": "integer", "minimum": 1},
    "batch_size": {"type": "integer", "minimum": 1},
}))
def run_bn_reestimate(ctx, p, sdir, prefix):
    """BatchNormalization re-estimation (:func:`kslim.quant.reestimate_batch_norm`): the moving mean and
    variance recomputed exactly on ``batches`` x ``batch_size`` training images (after ``prune``); no
    other weight changes, no training."""
    from kslim.quant import reestimate_batch_norm

    batches, batch_size = _batch_settings(p)
    x = ctx.data.calibration(batches * batch_size)
    ctx.header(f"BatchNorm re-estimation of {describe_model(ctx.model)} on {len(x)} training images")
    _keras_step(ctx, sdir, prefix, "bn_reestimate",
                lambda: reestimate_batch_norm(ctx.model, x, batches=batches, batch_size=batch_size),
                lambda d: {"bn_layers": len(d["layers"]), "samples": d["samples"],
                           "max_mean_shift": max(d["mean_shift"].values(), default=0.0)})


# ----------------------------------------------------------------------------- export / profile
@register_strategy("export", keras_output=False, schema=params_schema({
    "quantize": {"enum": [*QUANTIZE_MODES, "none"]},  # kslim.lite.convert's quantize=
    "inference_input_type": {"enum": ["float32", "int8"]},
    "inference_output_type": {"enum": ["float32", "int8"]},
}))
def run_export(ctx, p, sdir, prefix):
    """TFLite export (:func:`kslim.lite.convert`): float32, dynamic, float16 or int8 (``quantize``); keeps
    the ``.tflite`` of a previous post-training quantization."""
    from kslim.lite import convert

    quantize = p.get("quantize")
    quantize = None if quantize in (None, "none") else quantize
    x_check = ctx.data.eval_arrays(64)[0]
    if ctx.lite is not None and quantize is None:
        ctx.header("keeping the TFLite model of the previous stage")
        return  # the previous strategy already produced the TFLite model
    what = ("int8 kernels from the QAT ranges" if ctx.qat else
            {None: "float32", "int8": "full int8, calibrated on 200 training images"}.get(quantize, quantize))
    ctx.header(f"TFLite export of {ctx.model.name}: {what}")
    # a QAT model: int8 kernels from its own ranges (no calibration data)
    rep = ctx.data.calibration(200) if quantize == "int8" and not ctx.qat else None
    ctx.lite = convert(ctx.model, quantize="int8" if ctx.qat else quantize, representative_data=rep,
                       check_data=None if ctx.qat else x_check,
                       inference_input_type=p.get("inference_input_type", "float32"),
                       inference_output_type=p.get("inference_output_type", "float32"))


def _quick_profile(params):
    from kslim.compressor.config import QUICK

    params["runs"] = min(int(params.get("runs", QUICK["latency_runs"])), QUICK["latency_runs"])


@register_strategy("profile", keras_output=False, measured=False, quick=_quick_profile, schema=params_schema({
    "device": {"enum": ["local"]},
    "num_threads": {"type": "integer", "minimum": 1},
    "runs": {"type": "integer", "minimum": 1},
    "warmup": {"type": "integer", "minimum": 0},
}))
def run_profile(ctx, p, sdir, prefix):
    """Latency profile of the current ``.tflite`` on the host (``num_threads``, ``runs``, ``warmup``)."""
    from kslim.compressor.report import profile_figures

    ctx.header(f"latency profile on the host ({int(p.get('num_threads', 1))} thread(s), {int(p.get('runs', 50))} runs)")
    lite = ctx.lite or ctx.float_lite(ctx.model)
    ctx.info["profile"] = profile_figures(lite, num_threads=int(p.get("num_threads", 1)), runs=int(p.get("runs", 50)),
                                          warmup=int(p.get("warmup", 5)))
