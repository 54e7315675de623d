"""Distillation benchmark (issue 16): a small MobileNetV1-style student from scratch vs distilled, on the .tflite.

* Data: the full Fashion-MNIST set (Debian's ``dataset-fashion-mnist``): every student trains on all
  60,000 training images (nothing is held out: no model selection, no early stopping); every accuracy
  is top-1 on all 10,000 test images.
* Teacher: the shipped converged ``kslim.models.pretrained("resnet").model`` (ResNet-style, trained by
  ``scripts/train_reference.py``; see ``kslim.models.shipped()``). Nothing trains it here; it is frozen.
  Its Keras and float32 ``.tflite`` accuracies are measured and recorded.
* Student: ``kslim.models.mobilenet_v1(width=--student-width)`` trained from scratch for ``--epochs``
  epochs (epochs x 60,000 training images seen), batch 128, Adam 1e-3 with cosine decay to 0; the same
  seed gives every variant the same initial weights and the same data order. ``--train-images N`` gives
  every student of a seed the same N labelled images instead (the seed's random slice: the small labelled
  set of a user who has a big pretrained net); the teacher was still trained on the full set.
* Variants (``--variants``), each a ``kslim.distill.Distiller`` with the hard-label cross-entropy (weight 1,
  ``lskd``: ``--lskd-hard-weight``) except ``scratch``:

  - ``scratch``         hard labels only (``compile`` + ``fit``);
  - ``soft``            + ``Pair("logits", "logits", "soft_label", temperature=4, scale_by_temperature=True)``;
  - ``dkd``             + ``Pair("logits", "logits", "dkd", alpha=1, beta=8, temperature=4)`` (decoupled KD,
    Zhao et al. 2022, the paper's settings, no warm-up of its weight; the Distiller passes the labels);
  - ``soft+attention``  soft + attention transfer (Zagoruyko & Komodakis 2017) between each teacher stage's
    output and the student's last block at that resolution (``AT_LAYERS``: 28x28, 14x14 and 7x7 maps;
    channel counts differ, which ``AttentionLoss`` allows), weight ``--at-weight`` each (500 = beta/2
    with the paper's beta = 1000, whose loss is the mean over positions like kslim's);
  - ``lskd``            logit-standardized KD (Sun et al., CVPR 2024): ``Pair("logits", "logits", "soft_label",
    temperature=2, scale_by_temperature=True, standardize=True, weight=9)`` with the hard labels at weight
    0.1 (``--lskd-*``; the authors' CIFAR-100 recipe);
  - ``soft+ensemble``   ``soft`` with a two-net teacher: the logits of the shipped resnet and the shipped
    ``pretrained("mobilenet_v1")`` averaged (``ensemble_teacher``);
  - ``soft+ensemble3``  the same with the shipped ``pretrained("vgg")`` teacher as a third member.

* Every (variant, seed) is one row: Keras accuracy, float32 ``.tflite`` accuracy (the headline figure),
  then the same short quantization-aware fine-tune for every row (``quant_aware(model, QuantConfig())``,
  ``--qat-images`` training images of the seed's random slice, hard labels, Adam ``--qat-lr`` constant)
  and the int8 ``.tflite`` accuracy (``kslim.quant.convert``).
* Table: per variant the median over seeds and the per-seed values, and the gain over ``scratch`` both as
  the median of the per-seed gains (what the target judges) and between the medians. Target (issue 16):
  the best distilled variant gains >= +1.0 pt (median of >= 3 per-seed gains) with a positive gain in
  every seed, on the float32 ``.tflite`` and again on the int8 ``.tflite`` after QAT; judged at the
  printed precision (0.01 pt), printed with the test set's noise band.

Each finished row is merged into ``benchmarks/distill.json`` (and ``distill.md`` re-rendered) at once,
keyed by (variant, seed, student width, epochs, QAT images, augmentation, training images): a run can
be split over sessions with ``--seeds`` / ``--variants``; rows already saved with the same settings are
skipped (``--redo`` measures them again and replaces them). Trained students are cached in
``kslim.models.cache_dir()/bench_distill/`` so an interrupted run does not train them again. A short
pilot (a few training steps of each kind) at the start prints how long the run will take.

    python scripts/bench_distill.py --quick            # smoke run (~2 min): 2,000 images, 1 epoch, writes nothing
    python scripts/bench_distill.py --estimate         # pilot only: prints the full run's duration
    nice -n 10 python scripts/bench_distill.py --seeds 0,1,2      # full run, writes benchmarks/distill.{json,md}
    nice -n 10 python scripts/bench_distill.py --seeds 1 --variants scratch,dkd   # part of it, merged
    python scripts/bench_distill.py --render benchmarks/distill.json               # re-render the .md
"""

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _benchlib import (changed_flags, cpu_name, load_full, log_targets, noise_pt, render_saved,  # noqa: E402
                       rows_date, seed_list, utc_now, write_fragment)

VARIANTS = ("scratch", "soft", "dkd", "soft+attention", "lskd", "soft+ensemble", "soft+ensemble3")
#: the shipped nets whose logits each ensemble variant averages with the teacher's
ENSEMBLES = {"soft+ensemble": ("mobilenet_v1",), "soft+ensemble3": ("mobilenet_v1", "vgg")}
#: (teacher layer, student layer) of the attention-transfer pairs: each ResNet stage's output and the
#: MobileNetV1 block ending at the same resolution (28x28, 14x14, 7x7)
AT_LAYERS = (("stage1_block1_out", "block1_pw_relu"), ("stage2_block1_out", "block3_pw_relu"),
             ("stage3_block1_out", "block6_pw_relu"))
TARGET_GAIN_PT = 1.0
TARGET_SEEDS = 3
#: Fashion-MNIST's training set: a section whose students train on fewer images says so in its title
FULL_TRAIN_IMAGES = 60000
DEFAULT_EPOCHS = 3
DEFAULT_QAT_IMAGES = 10240
#: the settings a row's figures depend on besides its key (a saved row with other settings is re-measured)
ROW_SETTINGS = ("train_images", "batch_size", "lr", "temperature", "soft_weight", "dkd_alpha", "dkd_beta",
                "at_weight", "qat_lr")
#: the settings of one variant only, recorded (and keying its cache) on that variant's rows alone
VARIANT_SETTINGS = {"lskd": ("lskd_temperature", "lskd_weight", "lskd_hard_weight")}


def row_settings(args, variant):
    """The settings a row of ``variant`` depends on (the saved row is re-measured when they change)."""
    return {k: getattr(args, k) for k in (*ROW_SETTINGS, *VARIANT_SETTINGS.get(variant, ()))}


def hard_weight(variant, args):
    return args.lskd_hard_weight if variant == "lskd" else 1.0


# ------------------------------------------------------------------------------------------------ training
def flip_shift(seed):
    """Horizontal flips and shifts of up to 10 % (2.8 px) each way, zero fill: Fashion-MNIST's usual
    label-preserving augmentation, drawn afresh for every image of every batch."""
    import keras

    return keras.Sequential([keras.layers.RandomFlip("horizontal", seed=seed),
                             keras.layers.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=seed + 1)],
                            name="flip_shift")


#: ``--augment`` choices: the students' training augmentation (``None``: the images as they are). The teacher of
#: a distilled student sees the same augmented batch (consistent teaching, Beyer et al. 2022).
AUGMENTS = {"none": None, "flip+shift": flip_shift}
AUGMENT_TEXT = {"flip+shift": "Keras `RandomFlip(\"horizontal\")` + `RandomTranslation(0.1, 0.1, "
                              "fill_mode=\"constant\")`, a fresh draw per image"}


def train_dataset(x, y, seed, batch_size, augment="none"):
    from kslim.datasets import to_dataset

    make = AUGMENTS[augment]
    return to_dataset(x, y, batch_size=batch_size, shuffle=True, seed=seed, normalize=False,
                      augment=None if make is None else make(seed))


def pairs_for(variant, args):
    """The distillation pairs of a variant (``[]`` for scratch)."""
    from kslim.distill import Pair

    soft = Pair("logits", "logits", "soft_label", temperature=args.temperature, scale_by_temperature=True,
                weight=args.soft_weight)
    if variant == "scratch":
        return []
    if variant == "soft" or variant in ENSEMBLES:
        return [soft]
    if variant == "dkd":
        return [Pair("logits", "logits", "dkd", alpha=args.dkd_alpha, beta=args.dkd_beta,
                     temperature=args.temperature)]
    if variant == "soft+attention":
        return [soft] + [Pair(t, s, "attention", weight=args.at_weight, name=f"at_{s}") for t, s in AT_LAYERS]
    if variant == "lskd":
        return [Pair("logits", "logits", "soft_label", temperature=args.lskd_temperature, scale_by_temperature=True,
                     standardize=True, weight=args.lskd_weight)]
    raise ValueError(f"unknown variant {variant!r}")


def ensemble_teacher(teacher, members=ENSEMBLES["soft+ensemble"]):
    """``teacher`` and the shipped converged ``pretrained(name)`` of each of ``members``, frozen, their logits
    averaged (a layer named ``logits``, which the soft-label pair reads): an ensemble variant's teacher."""
    import keras

    from kslim.models import pretrained

    others = [pretrained(name, source="shipped").model for name in members]
    for other in others:
        other.trainable = False
    x = keras.Input(teacher.input_shape[1:])
    ens = keras.Model(x, keras.layers.Average(name="logits")([teacher(x)] + [o(x) for o in others]),
                      name="ensemble_teacher")
    ens.trainable = False
    return ens


def student_images(train, seed, n):
    """The ``n`` labelled images every student of ``seed`` trains on: the first ``n`` of the seed's random
    permutation of the training set (all of it, in order, when ``n`` covers it). The QAT fine-tune takes the
    first ``--qat-images`` of the same permutation, so with ``n >= --qat-images`` it stays inside this slice."""
    import numpy as np

    if n >= len(train[0]):
        return train
    idx = np.sort(np.random.default_rng(seed).permutation(len(train[0]))[:n])
    return train[0][idx], train[1][idx]


def make_trainer(variant, args, teacher, seed, n_train):
    """The model to ``fit`` (the student itself, or a Distiller around it), compiled; and the student."""
    import keras

    from kslim.distill import Distiller
    from kslim.models import mobilenet_v1

    keras.utils.set_random_seed(seed)  # the same initial student weights for every variant of a seed
    student = mobilenet_v1(width=args.student_width)
    steps = args.epochs * math.ceil(n_train / args.batch_size)
    opt = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(args.lr, decay_steps=max(1, steps)))
    hard = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    pairs = pairs_for(variant, args)
    if not pairs:
        student.compile(optimizer=opt, loss=hard, metrics=["accuracy"])
        return student, student
    if variant in ENSEMBLES:
        teacher = ensemble_teacher(teacher, ENSEMBLES[variant])
    distiller = Distiller(student, teacher, pairs=pairs, hard_loss=hard, hard_weight=hard_weight(variant, args))
    distiller.compile(optimizer=opt, metrics=["accuracy"])
    return distiller, student


def train_student(variant, seed, args, train, teacher, log):
    """Train (or load from the cache) one student; returns ``(student, info)``."""
    import keras

    from kslim._io import atomic_save_model, atomic_write_json

    path = None if args.quick else student_cache(args, variant) / f"{variant}-seed{seed}.keras"
    if path is not None and path.is_file() and path.with_suffix(".json").is_file():
        info = json.loads(path.with_suffix(".json").read_text())
        log(f"[{variant} s{seed}] trained student loaded from {path}")
        return keras.models.load_model(path), {**info, "cached": True}
    train = student_images(train, seed, args.train_images)
    trainer, student = make_trainer(variant, args, teacher, seed, len(train[0]))
    keras.utils.set_random_seed(seed)
    t0 = time.time()
    hist = trainer.fit(train_dataset(*train, seed, args.batch_size, args.augment), epochs=args.epochs, verbose=0)
    info = {"train_seconds": round(time.time() - t0, 1),
            "history": {k: round(float(v[-1]), 4) for k, v in hist.history.items()}}
    if path is not None:
        atomic_save_model(student, path)
        atomic_write_json(path.with_suffix(".json"), info)
    return student, {**info, "cached": False}


def student_cache(args, variant):
    """The cache folder of a variant's students: named by the settings that change a trained student."""
    from kslim.models import cache_dir

    sig = {k: getattr(args, k) for k in ("student_width", "epochs", *ROW_SETTINGS, *VARIANT_SETTINGS.get(variant, ()))
           if k != "qat_lr"}
    if args.augment != "none":
        sig["augment"] = args.augment
    digest = hashlib.sha1(json.dumps(sig, sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir() / "bench_distill" / f"w{args.student_width:g}-e{args.epochs}-{digest}"


def qat_int8(model, train, seed, args):
    """The short QAT fine-tune every row gets; returns ``(qat Keras model, int8 LiteModel, seconds)``."""
    import keras
    import numpy as np

    from kslim.models import compile_classifier
    from kslim.quant import QuantConfig, convert, quant_aware

    t0 = time.time()
    idx = np.random.default_rng(seed).permutation(len(train[0]))[:args.qat_images]
    qat = quant_aware(model, QuantConfig())
    compile_classifier(qat, learning_rate=args.qat_lr)
    keras.utils.set_random_seed(seed)
    qat.fit(train_dataset(train[0][idx], train[1][idx], seed, args.batch_size), epochs=1, verbose=0)
    return qat, convert(qat, check=False), round(time.time() - t0, 1)


def keras_acc(model, test):
    import numpy as np

    return float(np.mean(np.argmax(model.predict(test[0], batch_size=500, verbose=0), -1) == test[1]))


def measure_row(variant, seed, args, train, test, teacher, log):
    from kslim.lite import convert

    t0 = time.time()
    student, info = train_student(variant, seed, args, train, teacher, log)
    lite = convert(student, check=False)
    qat, int8, qat_s = qat_int8(student, train, seed, args)
    row = {"variant": variant, "seed": seed, "student_width": args.student_width, "epochs": args.epochs,
           "qat_images": args.qat_images, "augment": args.augment, "test_images": len(test[1]),
           "images_seen": args.epochs * args.train_images, "params": int(student.count_params()),
           "keras_acc": keras_acc(student, test), "tflite_acc": float(lite.evaluate(test)),
           "qat_keras_acc": keras_acc(qat, test), "int8_acc": float(int8.evaluate(test)),
           "tflite_bytes": lite.size, "int8_bytes": int8.size, "qat_seconds": qat_s,
           "seconds": round(time.time() - t0, 1), **info,
           "settings": row_settings(args, variant), "date": utc_now()}
    log(f"[{variant} s{seed}] float .tflite {pt(row['tflite_acc'])} %, int8 after QAT {pt(row['int8_acc'])} % "
        f"(Keras {pt(row['keras_acc'])} %); train {info['train_seconds']:.0f} s"
        f"{' (cached)' if info['cached'] else ''}, QAT {qat_s:.0f} s")
    return row


# ------------------------------------------------------------------------------------------------ pilot
def pilot(args, train, teacher, variants, steps):
    """Seconds per training step (batch ``--batch-size``) of a scratch student, of a distilled one (the
    heaviest variant asked for) and of a QAT copy, timed on the first training images after 2 warm-up
    steps (tracing)."""
    from kslim.models import compile_classifier
    from kslim.quant import QuantConfig, quant_aware

    n = args.batch_size * (steps + 2)
    ds = train_dataset(train[0][:n], train[1][:n], 0, args.batch_size, args.augment)

    def per_step(model):
        model.fit(ds.take(2), epochs=1, verbose=0)
        t0 = time.time()
        model.fit(ds.skip(2), epochs=1, verbose=0)
        return (time.time() - t0) / steps

    out = {}
    distilled = [v for v in VARIANTS[::-1] if v in variants and v != "scratch"]
    for kind, variant in (("scratch", "scratch"), ("distilled", distilled[0] if distilled else None)):
        if variant is not None:
            trainer, student = make_trainer(variant, args, teacher, 0, n)
            out[kind] = per_step(trainer)
    qat = quant_aware(make_trainer("scratch", args, teacher, 0, n)[1], QuantConfig())
    compile_classifier(qat, learning_rate=args.qat_lr)
    out["qat"] = per_step(qat)
    out["distilled_variant"] = distilled[0] if distilled else None
    return out


def estimate_seconds(todo, per_step, n_train, args, lite_seconds):
    """Wall time of the rows ``todo`` (``[(variant, seed, cached)]``) from the pilot's step times."""
    steps = math.ceil(n_train / args.batch_size) * args.epochs
    total = 0.0
    for variant, _, cached in todo:
        if not cached:
            total += steps * per_step["scratch" if variant == "scratch" else "distilled"]
        total += math.ceil(args.qat_images / args.batch_size) * per_step["qat"] + 2 * lite_seconds + 10
    return total


# ------------------------------------------------------------------------------------------------ table
def pt(v):
    return "n/a" if v is None else f"{100 * v:.2f}"


def key(r):
    return (r["variant"], r["seed"], *section(r))


def run_key(variant, seed, args):
    """The :func:`key` of the row this run measures for ``variant`` and ``seed``."""
    return key({"variant": variant, "seed": seed, "student_width": args.student_width, "epochs": args.epochs,
                "qat_images": args.qat_images, "augment": args.augment,
                "settings": {"train_images": args.train_images}})


def merged(saved_rows, new_rows):
    """New rows replace the saved rows of the same :func:`key` (variant, seed and :func:`section`)."""
    out = {key(r): r for r in saved_rows}
    out.update({key(r): r for r in new_rows})
    order = {v: i for i, v in enumerate(VARIANTS)}
    return sorted(out.values(), key=lambda r: (*section_order(section(r)),
                                               order.get(r["variant"], len(order)), r["variant"], r["seed"]))


def section(r):
    """(student width, epochs, QAT images, augmentation, training images) of a row."""
    return (r["student_width"], r["epochs"], r["qat_images"], r.get("augment", "none"), r["settings"]["train_images"])


def unaugmented(sec):
    """The section of the same width, epochs, QAT and training images without augmentation."""
    return (*sec[:3], "none", sec[4])


def section_order(sec):
    """Sections sorted by training images (the full set first), width, epochs and QAT images; the
    un-augmented one first among those."""
    return (-sec[4], *sec[:3], sec[3] != "none", sec[3])


def baseline(rows, sec, metric):
    """``{seed: accuracy}`` a distilled row of section ``sec`` is judged against on ``metric``: its section's
    ``scratch`` row; in an augmented section the better of that and the un-augmented ``scratch`` of the same
    seed (width, epochs, QAT), so that a gain cannot come from augmentation hurting the baseline."""
    twins = {sec, unaugmented(sec)}
    base = {}
    for r in rows:
        if r["variant"] == "scratch" and section(r) in twins:
            base[r["seed"]] = max(base.get(r["seed"], r[metric]), r[metric])
    return base


def gains(rows, variant, metric, base):
    """``{seed: gain in pt}`` of ``variant``'s rows (of one section) over ``base`` (``{seed: accuracy}``) on
    ``metric``, for the seeds both have."""
    return {r["seed"]: 100 * (r[metric] - base[r["seed"]]) for r in rows
            if r["variant"] == variant and r["seed"] in base}


def summary(rows):
    """``{section: {variant: stats}}`` with, per metric (``tflite_acc``, ``int8_acc``, ``keras_acc``), the
    per-seed values, their median, the per-seed gains over the scratch baseline (:func:`baseline`), their
    median and the gain between the medians (both over the seeds the variant shares with the baseline)."""
    out = {}
    for sec in sorted({section(r) for r in rows}, key=section_order):
        rs = [r for r in rows if section(r) == sec]
        out[sec] = {}
        for variant in [v for v in VARIANTS if any(r["variant"] == v for r in rs)] + sorted(
                {r["variant"] for r in rs} - set(VARIANTS)):
            mine = {r["seed"]: r for r in rs if r["variant"] == variant}
            stats = {"seeds": sorted(mine)}
            for metric in ("tflite_acc", "int8_acc", "keras_acc"):
                base = baseline(rows, sec, metric)
                g = gains(rs, variant, metric, base) if variant != "scratch" else {}
                common = sorted(g)
                stats[metric] = {
                    "per_seed": {s: mine[s][metric] for s in sorted(mine)},
                    "median": statistics.median(mine[s][metric] for s in mine),
                    "gains": g,
                    "gain_median": statistics.median(g.values()) if g else None,
                    "gain_min": min(g.values()) if g else None,
                    "gain_between_medians": (100 * (statistics.median(mine[s][metric] for s in common)
                                                    - statistics.median(base[s] for s in common))
                                             if g else None)}
            out[sec][variant] = stats
    return out


def meets(stats):
    """Issue 16's bar on one metric's stats: median per-seed gain >= +1.0 pt over >= 3 seeds and > 0 in every
    seed, at the printed precision (0.01 pt)."""
    if not stats["gains"]:
        return False
    return (len(stats["gains"]) >= TARGET_SEEDS and round(stats["gain_median"], 2) >= TARGET_GAIN_PT
            and round(stats["gain_min"], 2) > 0)


def section_title(sec):
    width, epochs, qat, augment, n_train = sec
    return (("" if n_train == FULL_TRAIN_IMAGES else f"{n_train:,} labelled training images, ")
            + f"student width {width:g}, {epochs} epoch{'s' if epochs != 1 else ''}, QAT {qat:,} images"
            + ("" if augment == "none" else f", {augment} augmentation"))


def _signed(v):
    return "n/a" if v is None else f"{v:+.2f}"


def check_targets(rows):
    """One pair of targets per section: the best distilled variant (highest median per-seed gain on the
    float32 .tflite, then highest smallest gain) on the float32 .tflite and the same variant after QAT."""
    targets = []
    for sec, variants in summary(rows).items():
        cands = [v for v in variants if v != "scratch" and variants[v]["tflite_acc"]["gains"]]
        if not cands:
            continue
        best = max(cands, key=lambda v: (round(variants[v]["tflite_acc"]["gain_median"], 2),
                                         round(variants[v]["tflite_acc"]["gain_min"], 2)))
        n_test = next(r["test_images"] for r in rows if section(r) == sec)
        for metric, what in (("tflite_acc", "float32 .tflite"), ("int8_acc", "int8 .tflite after QAT")):
            s = variants[best][metric]
            se, band = noise_pt(s["median"], n_test)
            per = ", ".join(f"{g:+.2f}" for _, g in sorted(s["gains"].items()))
            targets.append({
                "what": f"{section_title(sec)}: best distilled variant ({best}) vs scratch"
                        + ("" if sec[3] == "none" else " (the better of augmented and not, per seed)")
                        + f", {what}, gain over "
                        f"{len(s['gains'])} seed(s)",
                "value": f"{s['gain_median']:+.2f} pt median of per-seed gains (per seed {per}; between medians "
                         f"{s['gain_between_medians']:+.2f}); test-set noise ±{band:.2f} pt (1.96 SE, SE "
                         f"{se:.2f} pt, {n_test:,} images)",
                "target": f">= +{TARGET_GAIN_PT:.2f} pt median over >= {TARGET_SEEDS} seeds and > 0 in every seed",
                "met": meets(s), "variant": best, "metric": metric})
            date = rows_date([r for r in rows if (section(r) == sec and r["variant"] == best)
                              or (r["variant"] == "scratch" and section(r) in (sec, unaugmented(sec)))])
            if date:
                targets[-1]["date"] = date
    return targets


def _table(variants, metric, what, extra=None):
    lines = [f"| variant | seeds | {what} % (median) | per seed | gain vs scratch (pt): median of per-seed gains "
             "| per-seed gains | gain between medians | target |" + (f" {extra[0]} |" if extra else ""),
             "|---|---|---:|---|---:|---|---:|---|" + ("---:|" if extra else "")]
    for v, st in variants.items():
        s = st[metric]
        per = ", ".join(f"s{k} {pt(a)}" for k, a in s["per_seed"].items())
        g = ", ".join(f"s{k} {x:+.2f}" for k, x in sorted(s["gains"].items()))
        verdict = "" if v == "scratch" else ("met" if meets(s) else "**MISSED**")
        lines.append(f"| {v} | {','.join(map(str, st['seeds']))} | {pt(s['median'])} | {per} | "
                     f"{_signed(s['gain_median'])} | {g} | {_signed(s['gain_between_medians'])} | {verdict} |"
                     + (f" {pt(st[extra[1]]['median'])} |" if extra else ""))
    return lines


def describe(result, rows):
    """The setup paragraph of a section, from its rows' recorded settings."""
    r0 = rows[0]
    st = r0["settings"]
    t = result.get("teacher", {})
    # the shared settings across all rows, a variant's own settings among that variant's rows
    common = {json.dumps({k: r["settings"].get(k) for k in ROW_SETTINGS}, sort_keys=True) for r in rows}
    own = {(r["variant"], json.dumps({k: r["settings"].get(k) for k in VARIANT_SETTINGS.get(r["variant"], ())},
                                     sort_keys=True)) for r in rows}
    mixed = len(common) + len(own) - len({v for v, _ in own})
    ls = next((r["settings"] for r in rows if r["variant"] == "lskd"), None)
    return [
        f"Student `mobilenet_v1(width={r0['student_width']:g})` ({r0['params']:,} params), trained from scratch "
        + (f"on all {st['train_images']:,} training images" if st["train_images"] == FULL_TRAIN_IMAGES else
           f"on {st['train_images']:,} labelled training images only (the seed's random slice of the "
           f"{FULL_TRAIN_IMAGES:,}, the same for every variant of the seed; the teacher was trained on the full "
           "set)")
        + f" for {r0['epochs']} epoch(s) = {r0['images_seen']:,} "
        f"images seen (nothing held out), batch {st['batch_size']}, Adam {st['lr']:g} with cosine decay to 0; "
        "every variant of a seed starts from the same weights and sees the same data order. Variants (plus "
        "the hard-label cross-entropy, weight 1 except `lskd`): `soft` = soft labels T="
        f"{st['temperature']:g} "
        f"(`scale_by_temperature=True`, weight {st['soft_weight']:g}); `dkd` = decoupled KD "
        f"(alpha={st['dkd_alpha']:g}, beta={st['dkd_beta']:g}, T={st['temperature']:g}, no warm-up); "
        f"`soft+attention` = soft + attention transfer (weight {st['at_weight']:g} each) between "
        + ", ".join(f"`{a}`->`{b}`" for a, b in result.get("at_layers", AT_LAYERS)) + " (teacher->student)"
        + ("" if ls is None else
           f"; `lskd` = logit-standardized KD (soft labels of z-scored logits, Sun et al. 2024, T="
           f"{ls['lskd_temperature']:g}, `scale_by_temperature=True`, weight {ls['lskd_weight']:g}; hard labels "
           f"weight {ls['lskd_hard_weight']:g})")
        + "".join(f"; `{v}` = `soft` with the logits of the teacher and of the shipped "
                  + " and ".join(f"`pretrained(\"{m}\")`" for m in ms) + " averaged"
                  for v, ms in ENSEMBLES.items() if any(r["variant"] == v for r in rows)) + ". "
        f"QAT: `quant_aware(model, QuantConfig())`, {r0['qat_images']:,} training images seen (the seed's "
        "random slice" + ("" if st["train_images"] == FULL_TRAIN_IMAGES else ", inside the students' images")
        + f"), hard labels, Adam {st['qat_lr']:g} constant, the same for every row; then "
        f"`kslim.quant.convert` (int8 .tflite). Teacher: {t.get('what', 'see above')}."
        + ("" if r0.get("augment", "none") == "none" else
           f" Augmentation `{r0['augment']}` ({AUGMENT_TEXT.get(r0['augment'], '')}) on every student's training "
           "images, scratch and distilled alike; a distilled student's teacher sees the same augmented batch "
           "(consistent teaching); the QAT fine-tune is not augmented. **Gains here are over the better scratch "
           "row of the seed, with or without this augmentation** (the un-augmented scratch rows of the same "
           "width, epochs and QAT images), so that augmentation hurting the baseline cannot make a gain."),
        *([] if mixed == 1 else ["", "**Rows of this section were measured with different settings** "
                                 f"({mixed} sets): compare with care."]),
    ]


def render(result):
    """The markdown of a result (lines)."""
    rows = result["rows"]
    t = result.get("teacher", {})
    lines = ["## Knowledge distillation (`kslim.distill`, issue 16)", "",
             f"Command: `{result.get('command', '')}`  ", f"Date: {result.get('date', '')}  ",
             f"Machine: {result.get('platform', '')}, {result.get('cpu', '')}, {result.get('cores', '')} cores, "
             f"load average {result.get('load_average', '')} at the end of the run  ", "", result.get("data", ""), ""]
    if t:
        lines += [f"Teacher: {t.get('what', '')}: Keras {pt(t.get('keras_acc'))} %, float32 .tflite "
                  f"{pt(t.get('tflite_acc'))} % on {t.get('test_images', 0):,} test images.", ""]
    for sec, variants in summary(rows).items():
        rs = [r for r in rows if section(r) == sec]
        lines += [f"### {section_title(sec)}", "", *describe(result, rs), "",
                  *_table(variants, "tflite_acc", "float32 .tflite", ("Keras % (median)", "keras_acc")), "",
                  *_table(variants, "int8_acc", "int8 .tflite after QAT"), ""]
        if set(variants) == {"scratch"}:
            lines += ["Only the baseline was measured in this section (no distilled variant): no target is judged "
                      "on it.", ""]
    lines += ["Targets (issue 16; judged at the printed precision; the gain a target uses is the median of the "
              "per-seed gains):", ""]
    for t in result.get("targets", []):
        lines.append(f"- {t['what']}: {t['value']} (target {t['target']}) -> {'met' if t['met'] else '**MISSED**'}")
    lines += [""] + [f"- {n}" for n in result.get("notes", [])] + [""]
    return lines


def write_markdown(result, path):
    from kslim._io import atomic_write_text

    atomic_write_text(path, "\n".join(render(result)))


def print_tables(result, log):
    for sec, variants in summary(result["rows"]).items():
        log(f"\n{section_title(sec)}")
        for line in (_table(variants, "tflite_acc", "float32 .tflite", ("Keras % (median)", "keras_acc")) + [""]
                     + _table(variants, "int8_acc", "int8 .tflite after QAT")):
            log(line)


NOTES = [
    "Test-set noise: the binomial standard error of one accuracy on n test images is sqrt(p(1-p)/n) "
    "(0.26 pt at 93 % on 10,000 images; the 95 % band 1.96 SE = ±0.51 pt). A gain is a paired difference on "
    "the same images, whose noise is below sqrt(2) x that band; the spread between seeds (per-seed columns) is "
    "the larger noise here.",
    "The best distilled variant is chosen on the float32 .tflite gains of the same seeds it is judged on (best "
    "of the distilled variants in the table): a variant that just clears the bar is weaker evidence than its "
    "figure alone.",
]


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2,000 training / 500 test images of the bundled subset, 1 epoch, 1 seed, "
                         "512 QAT images, every variant; no cache, writes nothing")
    ap.add_argument("--estimate", action="store_true", help="run the pilot, print the full run's duration, exit")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"some of {','.join(VARIANTS)}")
    ap.add_argument("--seeds", type=seed_list, default="0,1,2", help="seeds of every row")
    ap.add_argument("--student-width", type=float, default=0.25)
    ap.add_argument("--epochs", type=int, default=None, help=f"student epochs on the 60,000 training images "
                                                             f"(default {DEFAULT_EPOCHS}; --quick 1)")
    ap.add_argument("--train-images", type=int, default=None,
                    help="labelled training images of every student: the seed's random slice (default: all; "
                         "at least --qat-images, whose fine-tune takes the first of the same slice)")
    ap.add_argument("--augment", choices=sorted(AUGMENTS), default="none",
                    help="the students' training augmentation (the teacher sees the same images)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--temperature", type=float, default=4.0, help="soft labels and DKD")
    ap.add_argument("--soft-weight", type=float, default=1.0)
    ap.add_argument("--dkd-alpha", type=float, default=1.0)
    ap.add_argument("--dkd-beta", type=float, default=8.0)
    ap.add_argument("--at-weight", type=float, default=500.0, help="weight of each attention-transfer pair")
    ap.add_argument("--lskd-temperature", type=float, default=2.0, help="lskd: temperature of the z-scored logits")
    ap.add_argument("--lskd-weight", type=float, default=9.0, help="lskd: weight of the soft-label term")
    ap.add_argument("--lskd-hard-weight", type=float, default=0.1, help="lskd: weight of the hard-label term")
    ap.add_argument("--qat-images", type=int, default=None,
                    help=f"training images of the QAT fine-tune (default {DEFAULT_QAT_IMAGES}; --quick 512)")
    ap.add_argument("--qat-lr", type=float, default=1e-4)
    ap.add_argument("--pilot-steps", type=int, default=None, help="timed steps of each pilot model (default 10; "
                                                                  "--quick 2)")
    ap.add_argument("--redo", action="store_true", help="measure rows already saved with the same settings again")
    ap.add_argument("--out", default=str(ROOT / "benchmarks"))
    ap.add_argument("--render", metavar="JSON", help="rewrite the .md of a saved .json and exit")
    args = ap.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad or not args.variants:
        ap.error(f"--variants: unknown variant(s) {bad}; choose from {','.join(VARIANTS)}")
    if args.epochs is None:
        args.epochs = 1 if args.quick else DEFAULT_EPOCHS
    if args.qat_images is None:
        args.qat_images = 512 if args.quick else DEFAULT_QAT_IMAGES
    if args.pilot_steps is None:
        args.pilot_steps = 2 if args.quick else 10
    for name in ("epochs", "qat_images", "batch_size", "pilot_steps"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.train_images is not None and args.train_images < args.qat_images:
        ap.error(f"--train-images {args.train_images} is below --qat-images {args.qat_images}: the QAT fine-tune "
                 "takes the first --qat-images of the students' slice; give at least as many training images")
    args.train_images_given = args.train_images
    if args.quick:
        args.seeds = args.seeds[:1]
    return args


def command_line(args):
    default_variants = args.variants == list(VARIANTS)
    return ("nice -n 10 python scripts/bench_distill.py" + (" --quick" if args.quick else "")
            + f" --seeds {','.join(map(str, args.seeds))}"
            + ("" if default_variants else f" --variants {','.join(args.variants)}")
            + (f" --student-width {args.student_width:g}" if args.student_width != 0.25 else "")
            + (f" --epochs {args.epochs}" if args.epochs != DEFAULT_EPOCHS else "")
            + (f" --augment {args.augment}" if args.augment != "none" else "")
            + (f" --train-images {args.train_images_given}" if args.train_images_given else "")
            + (f" --qat-images {args.qat_images}" if args.qat_images != DEFAULT_QAT_IMAGES else "")
            + changed_flags(args, parse_args, _TUNED))


#: the numeric settings a command line names when they are not the default (so that it reproduces the rows)
_TUNED = tuple(k for k in (*ROW_SETTINGS, *(k for ks in VARIANT_SETTINGS.values() for k in ks))
               if k != "train_images")


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.render:
        return render_saved(args.render, lambda r: r.update(targets=check_targets(r["rows"])), write_markdown)

    def log(msg):
        print(msg, flush=True)

    t_start = time.time()
    import keras

    from kslim.lite import convert
    from kslim.models import pretrained

    train, test = load_full(args.quick)
    if args.quick:
        train = (train[0][:2000], train[1][:2000])
    args.train_images = min(args.train_images or len(train[0]), len(train[0]))
    data = ("Bundled Fashion-MNIST subset, 2,000 training / 500 test images (--quick)" if args.quick else
            f"Fashion-MNIST full set (Debian's `dataset-fashion-mnist`): students train on all {len(train[0]):,} "
            "training images unless their section's title gives fewer (the seed's random slice); every "
            f"accuracy is top-1 on all {len(test[1]):,} test images, the headline the float32 `.tflite`'s.")

    shipped = pretrained("resnet")
    teacher = shipped.model
    teacher.trainable = False
    t0 = time.time()
    teacher_lite = convert(teacher, check=False)
    teacher_tflite = float(teacher_lite.evaluate(test))
    lite_seconds = time.time() - t0
    details = shipped.details or {}
    teacher_info = {"what": f"the shipped converged `kslim.models.pretrained(\"resnet\")` ({teacher.count_params():,} "
                            f"params, trained on {details.get('train_images', '?'):,} images by "
                            f"`{details.get('command', '?')}`, seed {details.get('seed', '?')}), frozen, not "
                            "trained here",
                    "keras_acc": keras_acc(teacher, test), "tflite_acc": teacher_tflite,
                    "test_images": len(test[1]), "manifest_accuracy": details.get("accuracy")}
    log(f"teacher: shipped resnet (not trained here, frozen): Keras {pt(teacher_info['keras_acc'])} %, float32 "
        f".tflite {pt(teacher_tflite)} % on {len(test[1]):,} test images")

    saved_path = Path(args.out) / "distill.json"
    result = json.loads(saved_path.read_text()) if saved_path.is_file() and not args.quick else {}
    if not all(isinstance(r, dict) and "variant" in r for r in result.get("rows", [])):
        log(f"{saved_path} was written by the previous version of this script (no per-variant rows): "
            "starting a new table")
        result = {}
    result.setdefault("rows", [])
    saved = {key(r): r for r in result["rows"]}
    todo, skipped = [], 0
    for seed in args.seeds:
        for variant in args.variants:
            k = run_key(variant, seed, args)
            if not args.redo and k in saved and saved[k].get("settings") == row_settings(args, variant):
                skipped += 1
                continue
            cached = (not args.quick and (student_cache(args, variant) / f"{variant}-seed{seed}.keras").is_file()
                      and (student_cache(args, variant) / f"{variant}-seed{seed}.json").is_file())
            todo.append((variant, seed, cached))
    if skipped:
        log(f"{skipped} row(s) already in {saved_path} with these settings: skipped (--redo measures them again)")

    per_step = pilot(args, train, teacher, {v for v, _, _ in todo} or set(args.variants), args.pilot_steps)
    steps_epoch = math.ceil(args.train_images / args.batch_size)
    est = estimate_seconds(todo, per_step, args.train_images, args, lite_seconds)
    log(f"pilot ({args.pilot_steps} steps of batch {args.batch_size}, load average "
        f"{os.getloadavg()[0]:.1f}): scratch {per_step['scratch']:.3f} s/step = "
        f"{per_step['scratch'] * steps_epoch:.0f} s/epoch of {args.train_images:,} images"
        + (f"; distilled ({per_step['distilled_variant']}) {per_step['distilled']:.3f} s/step = "
           f"{per_step['distilled'] * steps_epoch:.0f} s/epoch" if "distilled" in per_step else "")
        + f"; QAT {per_step['qat']:.3f} s/step")
    log(f"{len(todo)} row(s) to measure ({sum(c for _, _, c in todo)} student(s) cached), {args.epochs} epoch(s) = "
        f"{args.epochs * args.train_images:,} training images seen each, QAT {args.qat_images:,} images: "
        f"about {est / 60:.0f} min")
    if args.estimate:
        return 0

    commands = set(result.get("commands", []))
    commands.add(command_line(args))
    new = []
    for variant, seed, _ in todo:
        new.append(measure_row(variant, seed, args, train, test, teacher, log))
        result["rows"] = merged(result["rows"], new[-1:])
        result.update({
            "commands": sorted(commands), "command": "; ".join(sorted(commands)),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "platform": platform.platform(), "cpu": cpu_name(), "cores": os.cpu_count(),
            "load_average": [round(x, 1) for x in os.getloadavg()],
            "versions": {"keras": keras.__version__, "tensorflow": __import__("tensorflow").__version__},
            "data": data, "teacher": teacher_info, "at_layers": [list(p) for p in AT_LAYERS],
            "pilot": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in per_step.items()},
            "notes": NOTES})
        result["targets"] = check_targets(result["rows"])
        if not args.quick:
            write_fragment(args.out, "distill", result, write_markdown, log)
    if not todo:
        result["targets"] = check_targets(result["rows"])
    print_tables(result, log)
    log_targets(result.get("targets", []), t_start, log)
    if args.quick:
        log("(quick run: nothing written, no student cached)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
