"""The strategies a config can chain. Each takes the pipeline context and its parameters, and
leaves its output in ``ctx.model`` (a Keras model) and/or ``ctx.lite`` (a :class:`LiteModel`).

Every strategy is resumable: it writes its intermediate artefacts into its stage folder and picks
them up again when the run is resumed (see :mod:`kslim.compressor.run_dir`).
"""

import numpy as np

from kslim._io import atomic_save_model, atomic_write_json, read_json
from kslim.compressor.run_dir import crash_point, guarded_write
from kslim.compressor.training import fit_resumable
from kslim.errors import ConfigError


def accuracy(model, x, y, batch_size=256):
    """Top-1 accuracy of a Keras model on numpy arrays (no compile needed)."""
    pred = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(pred, axis=-1) == np.asarray(y).reshape(-1)))


def _load_keras(path):
    from kslim._model_io import load_keras_model

    return load_keras_model(path)  # registers kslim's layers (QAT, ...) first; safe_mode


def _train_settings(ctx, settings):
    """``(epochs, learning_rate, batch_size)`` of a strategy: its own ``settings``, else the config's ``train``.

    ``batch_size`` is ``None`` when neither sets it (the data's default batch size).
    """
    train = ctx.config["train"]
    return (int(settings.get("epochs", train.get("epochs", 1))),
            float(settings.get("learning_rate", train.get("learning_rate", 5e-4))),
            settings.get("batch_size", train.get("batch_size")))


def _fine_tune(ctx, model, settings, sdir, prefix, name="fine_tune"):
    """Compile ``model`` and fit it resumably with ``settings`` (epochs, learning_rate, batch_size)."""
    from kslim.models import compile_classifier

    epochs, lr, bs = _train_settings(ctx, settings)
    if epochs <= 0:
        return model, []
    compile_classifier(model, learning_rate=lr)  # always a fresh optimizer: a loaded model's may have decayed
    history = fit_resumable(
        model, lambda seed: ctx.data.train(seed, bs), epochs, sdir / "ckpt" / name, ctx.stage_seed,
        prefix, verbose=ctx.verbose, csv_log=ctx.run.logs / f"{sdir.name}_{name}.csv",
    )
    return model, history


# ----------------------------------------------------------------------------- prune
def run_prune(ctx, p, sdir, prefix):
    import kslim.prune as kp

    pruned_path = sdir / "pruned.keras"
    info_path = sdir / "pruned_info.json"  # written before pruned.keras: a resumed run gets it back
    info = {}
    if pruned_path.is_file():
        pruned = _load_keras(pruned_path)
        if info_path.is_file():
            info = read_json(info_path, "Pruning info")
    else:
        pruner = kp.make_pruner(ctx.model, p.get("criterion", "l1"), skip=p.get("skip"),
                                keep_classifier=p.get("keep_classifier", True), round_to=p.get("round_to", 1))
        if "ratio" in p:
            pruned = pruner.prune(float(p["ratio"]))
        elif "ratios" in p:
            pruned = pruner.prune(dict(p["ratios"]))
        elif "flops_target" in p:
            pruned, info = pruner.prune_to_flops(float(p["flops_target"]))
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
            if "flops_target" in s:
                ratios, found = kp.ratios_by_flops(ctx.model, sens, float(s["flops_target"]), pruner=pruner)
                info.update(max_loss=float(found["max_loss"]), reduction=float(found["reduction"]))
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
                ctx.model, lambda m: accuracy(m, x, y), target_flops=float(a["flops_target"]),
                pruner=pruner, max_trials=int(a.get("max_trials", 20)), seed=ctx.stage_seed,
                directory=str(sdir / "ckpt"), project_name="auto_prune", overwrite=False,
                plot=True, **kwargs,
            )
            pruned = result.model
            info.update(ratios={k: float(v) for k, v in result.ratios.items()}, score=float(result.score))
            if result.plot_path:
                import shutil

                shutil.copyfile(result.plot_path, ctx.run.plots / f"{sdir.name}_auto_prune.png")
        info = {k: v for k, v in info.items() if isinstance(v, (int, float, str, dict, list))}
        guarded_write(atomic_write_json, info_path, info)
        guarded_write(atomic_save_model, pruned, pruned_path)
        crash_point(f"{prefix}:pruned")
    model, history = _fine_tune(ctx, pruned, p.get("fine_tune", {}), sdir, prefix)
    ctx.info.update(info)
    ctx.model, ctx.lite = model, None


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
        from kslim._model_io import load_keras_model

        return load_keras_model(path), None
    kwargs = {"width": spec["width"]} if "width" in spec else {}
    source = ctx.config["data"].get("source", "small")
    if source == "hook":
        source = "small"
    return pretrained(spec["reference"], source=source, epochs=int(spec.get("pretrain_epochs", 3)),
                      seed=ctx.config["seed"], verbose=ctx.verbose, **kwargs)


def run_distill(ctx, p, sdir, prefix):
    """Fine-tune ``ctx.model`` distilled from a frozen teacher; the pairs default to soft labels on logits."""
    import keras

    from kslim.distill import Distiller, Pair

    teacher, _ = _build_model(ctx, p["teacher"], "strategies.distill.teacher")
    teacher.trainable = False
    temperature = float(p.get("temperature", 4.0))
    pairs = []
    for pair in p.get("pairs", []):
        kwargs = {"temperature": float(pair.get("temperature", temperature))} if pair["loss"] == "soft_label" else {}
        pairs.append(Pair(pair["teacher"], pair["student"], pair["loss"], weight=float(pair.get("weight", 1.0)),
                          adaptor="auto" if pair.get("adaptor") else False, **kwargs))
    if not pairs:
        pairs = [Pair(None, None, "soft_label", weight=float(p.get("soft_weight", 1.0)), temperature=temperature)]
    distiller = Distiller(
        ctx.model, teacher, pairs=pairs, hard_weight=float(p.get("hard_weight", 1.0)),
        hard_loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    epochs, lr, bs = _train_settings(ctx, p)
    distiller.compile(optimizer=keras.optimizers.Adam(lr), metrics=["accuracy"])
    fit_resumable(distiller, lambda seed: ctx.data.train(seed, bs), epochs, sdir / "ckpt" / "distill",
                  ctx.stage_seed, prefix, verbose=ctx.verbose, csv_log=ctx.run.logs / f"{sdir.name}_distill.csv")
    ctx.model, ctx.lite = distiller.student, None


# ----------------------------------------------------------------------------- quantization
def run_quant_aware(ctx, p, sdir, prefix):
    from kslim.quant import QuantConfig, quant_aware

    qcfg = {k: v for k, v in p.items() if k not in ("epochs", "learning_rate", "skip")}
    if p.get("skip"):
        qcfg["skip_layers"] = tuple(p["skip"])
    qat = quant_aware(ctx.model, QuantConfig(**qcfg))
    model, _ = _fine_tune(ctx, qat, {k: p[k] for k in ("epochs", "learning_rate") if k in p}, sdir, prefix,
                          name="qat")
    ctx.model, ctx.lite, ctx.qat = model, None, True


def run_quant_post_static(ctx, p, sdir, prefix):
    from kslim.quant import quant_post_static

    batch_size = int(p.get("batch_size", 32))
    batches = int(p.get("batch_nums", 10))
    calib = ctx.data.calibration(batch_size * batches)
    kwargs = {k: p[k] for k in ("weight_quantize_type", "bias_correction") if k in p}
    ctx.lite = quant_post_static(ctx.model, calib, algo=p.get("algo", "KL"), batch_size=batch_size,
                                 batch_nums=batches, **kwargs)


def run_quant_post_dynamic(ctx, p, sdir, prefix):
    from kslim.quant import quant_post_dynamic

    kwargs = {"skip": list(p["skip"])} if p.get("skip") else {}
    ctx.lite = quant_post_dynamic(ctx.model, dtype=p.get("dtype", "int8"), **kwargs)


# ----------------------------------------------------------------------------- export / profile
def run_export(ctx, p, sdir, prefix):
    from kslim.lite import convert

    quantize = p.get("quantize")
    quantize = None if quantize in (None, "none") else quantize
    x_check = ctx.data.eval_arrays(64)[0]
    if ctx.lite is not None and quantize is None:
        return  # the previous strategy already produced the TFLite model
    if ctx.qat:
        from kslim.quant import convert as qconvert

        ctx.lite = qconvert(ctx.model, inference_input_type=p.get("inference_input_type", "float32"),
                            inference_output_type=p.get("inference_output_type", "float32"))
    else:
        rep = ctx.data.calibration(200) if quantize == "int8" else None
        ctx.lite = convert(ctx.model, quantize=quantize, representative_data=rep, check_data=x_check,
                           inference_input_type=p.get("inference_input_type", "float32"),
                           inference_output_type=p.get("inference_output_type", "float32"))


def run_profile(ctx, p, sdir, prefix):
    from kslim.compressor.report import measure_latency

    lite = ctx.lite or ctx.float_lite(ctx.model)
    ctx.info["profile"] = measure_latency(lite, threads=int(p.get("threads", 1)), runs=int(p.get("runs", 50)),
                                          warmup=int(p.get("warmup", 5)))


STRATEGY_FUNCTIONS = {
    "prune": run_prune,
    "distill": run_distill,
    "quant_aware": run_quant_aware,
    "quant_post_static": run_quant_post_static,
    "quant_post_dynamic": run_quant_post_dynamic,
    "export": run_export,
    "profile": run_profile,
}
