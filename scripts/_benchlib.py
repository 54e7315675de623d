"""Helpers shared by the benchmark scripts (machine description, data slices, fine-tuning, latency, noise)."""

import math
import os
import statistics


def cpu_name():
    """The CPU model and its ISA flags relevant to int8/fp kernels (``kslim.lite.devices.cpu_info``), e.g.
    ``"AMD EPYC 9B14 (avx2 fma avx512f avx512_vnni)"``: every benchmark's machine line carries them."""
    from kslim.lite.devices import cpu_info

    info = cpu_info()
    return f"{info['cpu']} ({' '.join(info['isa']) or 'no AVX2/AVX-512/VNNI/AMX flags'})"


def load_data(quick):
    """The bundled Fashion-MNIST subset as float32 NHWC arrays (quick: 2000 train / 500 test)."""
    import numpy as np

    from kslim.datasets import fashion_mnist_small, preprocess

    (xtr, ytr), (xte, yte) = fashion_mnist_small()
    xtr, xte = preprocess(xtr), preprocess(xte)
    ytr, yte = ytr.astype(np.int32), yte.astype(np.int32)
    if quick:
        xtr, ytr, xte, yte = xtr[:2000], ytr[:2000], xte[:500], yte[:500]
    return (xtr, ytr), (xte, yte)


def load_full(quick):
    """Fashion-MNIST as shuffled (seed 0) float32 NHWC ``(train, test)``: the full 60k/10k set (Debian's
    ``dataset-fashion-mnist``), or with ``quick`` the bundled subset's 10k train / 500 test images."""
    import numpy as np

    from kslim.datasets import fashion_mnist, fashion_mnist_small, preprocess

    if quick:
        (xtr, ytr), (xte, yte) = fashion_mnist_small()
        xte, yte = xte[:500], yte[:500]
    else:
        (xtr, ytr), (xte, yte) = fashion_mnist()
    perm = np.random.default_rng(0).permutation(len(xtr))
    return (preprocess(xtr)[perm], ytr.astype(np.int32)[perm]), (preprocess(xte), yte.astype(np.int32))


def latency_ms(models, threads=(1, None), warmup=20, rounds=5, runs=40, stats=False):
    """Median batch-1 latency (ms) of each ``.tflite`` per thread count, rounds interleaved across models.

    ``models``: ``{name: bytes or LiteModel}``. ``threads`` entries of ``None`` mean all cores
    (``os.cpu_count()``). Returns ``{name: {"1": ms, "all": ms}}``. Runs through ai-edge-litert with
    XNNPACK (the default); inputs are random (seed 0), int8 inputs quantized. ``stats=True``: each figure is
    ``{"median", "p10", "p90"}`` of every timed run instead of the median alone.
    """
    import numpy as np

    from kslim.lite.runner import make_interpreter, random_inputs, time_invokes

    out = {k: {} for k in models}
    for t in threads:
        n = t or os.cpu_count() or 1
        key = str(t) if t else "all"
        interps = {}
        for name, m in models.items():
            it = make_interpreter(bytes(getattr(m, "content", m)), num_threads=n)
            inp = it.get_input_details()[0]
            shape = [1, *[int(s) for s in inp["shape"][1:]]]
            if [int(s) for s in inp["shape"]] != shape:
                it.resize_tensor_input(inp["index"], shape)
                it.allocate_tensors()
            feeds = random_inputs(it, seed=0)
            time_invokes(it, warmup, feeds)
            interps[name] = it
        samples = {k: [] for k in interps}
        for _ in range(rounds):
            for name, it in interps.items():
                samples[name].extend(time_invokes(it, runs).tolist())
        for name, s in samples.items():
            s = np.asarray(s, float) / 1e3
            out[name][key] = ({"median": float(np.median(s)), "p10": float(np.percentile(s, 10)),
                               "p90": float(np.percentile(s, 90))} if stats else float(np.median(s)))
    return out


def row_machines(rows):
    """``"<cpu> (n rows), ..."``: the machines a table's rows were measured on (each row's ``cpu``, stamped
    with :func:`cpu_name` when it was measured), most rows first. A table merged over sessions mixes machines
    (an AVX-512 VNNI host and an AVX2-only one differ 1.4-1.6x in float latency), which its one "Machine"
    line, the last run's, does not tell."""
    from collections import Counter

    counts = Counter(r.get("cpu", "not recorded") for r in rows)
    return ", ".join(f"{cpu} ({n} row{'s' if n != 1 else ''})" for cpu, n in counts.most_common())


def utc_now():
    """Now, as every table dates its runs and rows (``2026-12-06 10:34 UTC``)."""
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def rows_date(rows):
    """The date of the latest of ``rows`` when every one carries a ``date`` (rows of a table merged over several
    runs); ``None`` when one does not (measured before rows were dated): the table's date stands then."""
    dates = [r.get("date") for r in rows]
    return max(dates) if dates and all(dates) else None


def log_targets(targets, t0, log):
    """Print each target verdict (``{"what", "value", "target", "met"}``) and the wall time since ``t0``."""
    import time

    log("\ntargets:")
    for t in targets:
        log(f"  {t['what']}: {t['value']} (target {t['target']}) -> {'met' if t['met'] else 'MISSED'}")
    log(f"wall time {time.time() - t0:.0f}s")


def write_fragment(out, stem, result, write_markdown, log=print):
    """Write ``out/<stem>.json`` (every figure) and ``out/<stem>.md`` (``write_markdown(result, path)``),
    each atomically, and say so."""
    from pathlib import Path

    from kslim._io import atomic_write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{stem}.json", result)
    write_markdown(result, out / f"{stem}.md")
    log(f"wrote {out / f'{stem}.json'} and {out / f'{stem}.md'}")


def render_saved(path, refresh, write_markdown, log=print):
    """``--render PATH``: re-derive what a saved run implies without measuring anything (``refresh(result)``
    updates it in place: targets, notes, ...), then rewrite ``PATH`` and the ``.md`` beside it, each atomically.
    Both, because the README's headline rows read the targets from the JSON: an ``.md`` re-rendered alone would
    leave the README judging with the old ones."""
    import json
    from pathlib import Path

    path = Path(path)
    result = json.loads(path.read_text(encoding="utf-8"))
    refresh(result)
    write_fragment(path.parent, path.stem, result, write_markdown, log)
    return 0


def clone(model):
    """A copy of ``model`` with its weights (the starting point every fine-tuned row is built from)."""
    import keras

    c = keras.models.clone_model(model)
    c.set_weights(model.get_weights())
    return c


def ft_slice(train, images, seed):
    """The ``images`` fine-tune images of ``seed``: a seed-dependent slice of ``train`` (numpy only, so the
    tf_keras peer process draws the very same images). More images than ``train`` holds are further passes
    over it, each in a fresh order (the first pass is the slice a smaller budget of the same seed takes)."""
    import numpy as np

    rng, n = np.random.default_rng(seed), len(train[0])
    idx = np.concatenate([rng.permutation(n) for _ in range(max(1, -(-images // n)))])[:images]
    return train[0][idx], train[1][idx]


def fine_tune(model, train, images, lr, seed, teacher=None, temperature=4.0):
    """Fine-tune ``model`` in place on ``images`` training images (a seed-dependent slice of ``train``, see
    ``ft_slice``; batch 128), Adam from ``lr`` with cosine decay to 0: the budget every pruned row and every QAT row
    gets, stated in images seen. ``teacher``: a model distilled into ``model`` meanwhile (a frozen copy of it;
    soft labels at ``temperature`` + hard labels, ``kslim.distill.Distiller``) -- same images and schedule."""
    import keras

    from kslim.datasets import to_dataset
    from kslim.models import compile_classifier

    keras.utils.set_random_seed(seed)
    if teacher is not None:
        teacher = clone(teacher)
        teacher.trainable = False
    x, y = ft_slice(train, images, seed)
    ds = to_dataset(x, y, batch_size=128, shuffle=True, seed=seed, normalize=False)
    lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, int(ds.cardinality())))
    trainer = model
    if teacher is None:
        compile_classifier(model, learning_rate=lr)
    else:
        from kslim.distill import Distiller, Pair

        trainer = Distiller(model, teacher, pairs=[Pair(None, None, "soft_label", temperature=temperature)],
                            hard_loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), hard_weight=1.0)
        trainer.compile(optimizer=keras.optimizers.Adam(lr), metrics=["accuracy"])
    trainer.fit(ds, epochs=1, verbose=0, shuffle=False)
    return model


def noise_pt(p, n):
    """Test-set sampling noise of an accuracy ``p`` on ``n`` images: ``(SE, 1.96 SE)`` in pt."""
    se = 100 * math.sqrt(p * (1 - p) / n)
    return se, 1.96 * se


def at_least(delta_pt, target_pt):
    """``delta_pt >= target_pt`` at the 0.01 pt the tables print (-0.2000001 meets -0.2)."""
    return round(delta_pt, 2) >= target_pt


TARGET_SEEDS = 3  # a seed-median target is judged only over at least this many seeds


def seed_verdict(what, per_seed, limit, floor, noise, min_seeds=TARGET_SEEDS):
    """One target verdict on the median of per-seed differences ``{seed: pt}``, judged at the printed 0.01 pt.

    ``floor``: the target is ``median >= limit`` (else ``median <= limit``); it is never met over fewer
    than ``min_seeds`` seeds. ``noise``: the test-set noise text printed beside the value.

    >>> v = seed_verdict("QAT vs float", {1: -0.05, 0: -0.2000001, 2: 0.1}, -0.2, True, "noise ±0.51 pt")
    >>> v["value"], v["met"]
    ('-0.05 pt (per seed -0.20, -0.05, +0.10); noise ±0.51 pt', True)
    >>> seed_verdict("drop", {0: 0.1}, 1.0, False, "")["met"]  # one seed is not enough
    False
    """
    med = statistics.median(per_seed.values())
    seeds = ", ".join(f"{v:+.2f}" for _, v in sorted(per_seed.items()))
    ok = at_least(med, limit) if floor else round(med, 2) <= limit
    return {"what": what, "target": f"{'>=' if floor else '<='} {limit} pt over >= {min_seeds} seeds",
            "value": f"{med:+.2f} pt (per seed {seeds}); {noise}", "met": len(per_seed) >= min_seeds and ok}


def changed_flags(args, parse_args, names):
    """`` --name value`` for each of ``names`` (numeric settings) whose value in ``args`` differs from the
    default that ``parse_args`` gives (with ``--quick`` when ``args.quick``): the part of a run's printed command
    that makes it reproduce the run."""
    defaults = parse_args(["--quick"] if getattr(args, "quick", False) else [])
    return "".join(f" --{k.replace('_', '-')} {getattr(args, k):g}" for k in names
                   if getattr(args, k) != getattr(defaults, k))


def seed_list(text):
    """``--seeds`` of the benchmark scripts (an argparse ``type``): ``"0,1,2"`` -> ``[0, 1, 2]``."""
    import argparse

    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma-separated list of integers, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("give at least one seed")
    return seeds
