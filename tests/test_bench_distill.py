"""scripts/bench_distill.py without training: arguments, the per-seed gain statistics, the target verdicts
(judged at the printed precision), the merge of saved rows and the rendering (issue 16)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def bd():
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location("_bench_test_distill", SCRIPTS / "bench_distill.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(variant, seed, acc, int8=None, **kw):
    return {"variant": variant, "seed": seed, "student_width": 0.25, "epochs": 3, "qat_images": 10240,
            "test_images": 10000, "images_seen": 180000, "params": 1000, "keras_acc": acc, "tflite_acc": acc,
            "int8_acc": acc if int8 is None else int8, "settings": {"train_images": 60000, "batch_size": 128,
            "lr": 1e-3, "temperature": 4.0, "soft_weight": 1.0, "dkd_alpha": 1.0, "dkd_beta": 8.0,
            "at_weight": 500.0, "qat_lr": 1e-4}, **kw}


def _rows(gains_pt, variant="soft", int8_gains_pt=None):
    rows = []
    for s, g in enumerate(gains_pt):
        base = 0.85 + 0.01 * s
        gi = g if int8_gains_pt is None else int8_gains_pt[s]
        rows += [_row("scratch", s, base), _row(variant, s, base + g / 100, base + gi / 100)]
    return rows


def test_arguments(bd, capsys):
    quick = bd.parse_args(["--quick", "--seeds", "3,4"])
    assert quick.seeds == [3] and quick.epochs == 1 and quick.qat_images == 512 and quick.pilot_steps == 2
    full = bd.parse_args([])
    assert full.seeds == [0, 1, 2] and full.epochs == bd.DEFAULT_EPOCHS and full.variants == list(bd.VARIANTS)
    for bad, says in ((["--variants", "soft,crd"], "crd"), (["--seeds", "a"], "--seeds"),
                      (["--epochs", "0"], "--epochs")):
        with pytest.raises(SystemExit):
            bd.parse_args(bad)
        assert says in capsys.readouterr().err
    assert bd.command_line(full) == "nice -n 10 python scripts/bench_distill.py --seeds 0,1,2"
    assert "--variants scratch,dkd" in bd.command_line(bd.parse_args(["--variants", "scratch,dkd"]))


def test_pairs_per_variant(bd):
    args = bd.parse_args([])
    assert bd.pairs_for("scratch", args) == []
    assert [p.loss for p in bd.pairs_for("soft", args)] == ["soft_label"]
    assert [p.loss for p in bd.pairs_for("dkd", args)] == ["dkd"]
    at = bd.pairs_for("soft+attention", args)
    assert [p.loss for p in at] == ["soft_label"] + ["attention"] * len(bd.AT_LAYERS)
    assert [(p.teacher, p.student) for p in at[1:]] == [((t,), (s,)) for t, s in bd.AT_LAYERS]
    (ls,) = bd.pairs_for("lskd", args)
    assert ls.loss == "soft_label" and ls.weight == 9.0
    assert ls.loss_fn.standardize and ls.loss_fn.teacher_temperature == 2.0
    assert bd.hard_weight("lskd", args) == 0.1 and bd.hard_weight("soft", args) == 1.0


def test_a_variants_own_settings_key_only_its_rows_and_cache(bd, tmp_path, monkeypatch):
    import kslim.models

    monkeypatch.setattr(kslim.models, "cache_dir", lambda: tmp_path)
    args = bd.parse_args([])
    other = bd.parse_args(["--lskd-weight", "3"])
    args.train_images = other.train_images = 60000  # main sets it from the data
    assert "lskd_weight" in bd.row_settings(args, "lskd") and "lskd_weight" not in bd.row_settings(args, "soft")
    # an lskd setting re-trains the lskd students only: the other variants keep their cache (and saved rows)
    assert bd.student_cache(args, "soft") == bd.student_cache(other, "soft")
    assert bd.student_cache(args, "lskd") != bd.student_cache(other, "lskd")
    rows = _rows([1.2, 0.8, 1.5], variant="lskd")
    for r in rows:
        if r["variant"] == "lskd":
            r["settings"].update(lskd_temperature=2.0, lskd_weight=9.0, lskd_hard_weight=0.1)
    md = "\n".join(bd.describe({}, rows))
    assert "`lskd` = logit-standardized KD" in md and "weight 9;" in md and "different settings" not in md
    rows[-1]["settings"]["lskd_weight"] = 3.0
    assert "different settings** (2 sets)" in "\n".join(bd.describe({}, rows))


def test_median_of_per_seed_gains_meets_the_bar(bd):
    stats = bd.summary(_rows([1.2, 0.8, 1.5]))[(0.25, 3, 10240, "none", 60000)]["soft"]["tflite_acc"]
    assert stats["gains"] == pytest.approx({0: 1.2, 1: 0.8, 2: 1.5})
    assert stats["gain_median"] == pytest.approx(1.2) and stats["gain_min"] == pytest.approx(0.8)
    assert bd.meets(stats)
    t = bd.check_targets(_rows([1.2, 0.8, 1.5]))
    assert [x["metric"] for x in t] == ["tflite_acc", "int8_acc"] and all(x["met"] for x in t)
    assert "±0." in t[0]["value"] and "10,000 images" in t[0]["value"]


@pytest.mark.parametrize("gains, met", [
    ([1.2, -0.1, 1.5], False),       # a seed with a loss misses however large the median
    ([1.2, 0.9], False),             # fewer than 3 seeds
    ([0.999, 0.5, 1.3], True),       # +1.00 at the printed precision
    ([0.994, 0.5, 1.3], False),      # +0.99 printed
    ([1.2, 0.004, 1.5], False),      # +0.00 printed is not a positive gain
])
def test_target_verdicts(bd, gains, met):
    stats = bd.summary(_rows(gains))[(0.25, 3, 10240, "none", 60000)]["soft"]["tflite_acc"]
    assert bd.meets(stats) is met


def test_int8_target_judges_the_variant_chosen_on_float(bd):
    rows = _rows([1.2, 1.1, 1.5], int8_gains_pt=[0.5, -0.2, 0.3])
    t = {x["metric"]: x for x in bd.check_targets(rows)}
    assert t["tflite_acc"]["met"] and not t["int8_acc"]["met"]
    assert t["int8_acc"]["variant"] == "soft"


def test_targets_carry_the_date_of_the_newest_row_they_judge(bd):
    rows = _rows([1.2, 1.1, 1.5])
    assert all("date" not in x for x in bd.check_targets(rows))          # rows saved before rows were dated
    for i, r in enumerate(rows):
        r["date"] = f"2026-12-0{1 + i} 09:00 UTC"
    assert {x["date"] for x in bd.check_targets(rows)} == {max(r["date"] for r in rows)}


def test_best_variant_is_the_highest_median_gain(bd):
    rows = _rows([0.5, 0.6, 0.7], variant="soft") + [r for r in _rows([1.1, 1.2, 1.3], variant="dkd")
                                                      if r["variant"] == "dkd"]
    assert {x["variant"] for x in bd.check_targets(rows)} == {"dkd"}


def test_merge_replaces_rows_of_the_same_key_and_keeps_sections_apart(bd):
    old = _rows([1.0, 1.0, 1.0])
    new = [_row("soft", 0, 0.99)]
    other = [_row("scratch", 0, 0.5, epochs=5)]
    rows = bd.merged(old, new + other)
    assert len(rows) == len(old) + 1
    assert next(r for r in rows if r["variant"] == "soft" and r["seed"] == 0)["tflite_acc"] == 0.99
    assert set(bd.summary(rows)) == {(0.25, 3, 10240, "none", 60000), (0.25, 5, 10240, "none", 60000)}
    assert rows[0]["variant"] == "scratch"  # scratch first in its section


def test_augmented_rows_are_judged_against_the_better_scratch_of_the_seed(bd):
    plain = _rows([0.5, 0.5, 0.5])                                   # scratch 85/86/87 %, soft +0.5 each
    aug = [_row("scratch", 0, 0.84, augment="flip+shift"), _row("soft", 0, 0.862, augment="flip+shift"),
           _row("scratch", 1, 0.87, augment="flip+shift"), _row("soft", 1, 0.882, augment="flip+shift")]
    rows = bd.merged(plain, aug)
    assert len(rows) == len(plain) + len(aug)                        # augment keys its own rows
    sections = bd.summary(rows)
    assert set(sections) == {(0.25, 3, 10240, "none", 60000), (0.25, 3, 10240, "flip+shift", 60000)}
    stats = sections[(0.25, 3, 10240, "flip+shift", 60000)]["soft"]["tflite_acc"]
    # seed 0: the un-augmented scratch (85 %) is the better baseline; seed 1: the augmented one (87 %)
    assert stats["gains"] == pytest.approx({0: 1.2, 1: 1.2})
    t = [x for x in bd.check_targets(rows) if "flip+shift" in x["what"]]
    assert t and "better of augmented and not" in t[0]["what"] and not t[0]["met"]  # 2 seeds only
    text = "\n".join(bd.render({"rows": rows, "targets": bd.check_targets(rows)}))
    assert "flip+shift augmentation" in text and "better scratch row of the seed" in text
    assert "--augment flip+shift" in bd.command_line(bd.parse_args(["--augment", "flip+shift"]))
    tuned = bd.command_line(bd.parse_args(["--temperature", "2", "--lskd-weight", "3"]))
    assert tuned.endswith(" --temperature 2 --lskd-weight 3")         # a non-default setting reproduces
    assert "--temperature" not in bd.command_line(bd.parse_args([]))
    assert "Only the baseline was measured" not in text
    only = bd.merged(plain, [r for r in aug if r["variant"] == "scratch"])  # a section with scratch alone
    text = "\n".join(bd.render({"rows": only, "targets": bd.check_targets(only)}))
    assert text.count("Only the baseline was measured in this section") == 1
    assert len(bd.check_targets(only)) == 2                           # the un-augmented section's pair only


def _few(row, n=10240):
    return {**row, "settings": {**row["settings"], "train_images": n}}


def test_rows_on_fewer_training_images_are_a_section_of_their_own_judged_against_its_own_scratch(bd):
    full = _rows([0.5, 0.5, 0.5])                                    # scratch 85/86/87 %, soft +0.5 each
    few = [_few(_row("scratch", s, 0.80 + 0.01 * s)) for s in range(3)] + [
        _few(_row("soft", s, 0.815 + 0.01 * s)) for s in range(3)]   # +1.5 over their own scratch
    rows = bd.merged(full, few)
    assert len(rows) == len(full) + len(few)                         # training images key their own rows
    sections = bd.summary(rows)
    assert list(sections) == [(0.25, 3, 10240, "none", 60000), (0.25, 3, 10240, "none", 10240)]  # full set first
    assert sections[(0.25, 3, 10240, "none", 10240)]["soft"]["tflite_acc"]["gains"] == pytest.approx(
        {0: 1.5, 1: 1.5, 2: 1.5})
    t = bd.check_targets(rows)
    assert [x["met"] for x in t] == [False, False, True, True]
    assert t[2]["what"].startswith("10,240 labelled training images, student width 0.25")
    text = "\n".join(bd.render({"rows": rows, "targets": t}))
    assert "### 10,240 labelled training images, student width 0.25, 3 epochs" in text
    assert "on 10,240 labelled training images only (the seed's random slice" in text
    assert "### student width 0.25, 3 epochs, QAT 10,240 images\n" in text  # the full-set title is unchanged


def test_train_images_slice_is_the_seeds_and_holds_the_qat_images(bd, capsys):
    import numpy as np

    x = np.arange(100, dtype=np.float32).reshape(100, 1, 1, 1)
    y = np.arange(100)
    xs, ys = bd.student_images((x, y), 3, 20)
    assert len(xs) == 20 and np.array_equal(xs[:, 0, 0, 0], ys)     # images keep their labels
    assert np.array_equal(ys, bd.student_images((x, y), 3, 20)[1])   # the same slice for every variant
    assert not np.array_equal(ys, bd.student_images((x, y), 4, 20)[1])
    qat = np.random.default_rng(3).permutation(100)[:8]             # what qat_int8 takes with 8 QAT images
    assert set(qat) <= set(ys)
    assert bd.student_images((x, y), 3, 100)[0] is x                 # all of them: the set as it is
    args = bd.parse_args(["--train-images", "20000"])
    assert args.train_images == 20000 and "--train-images 20000" in bd.command_line(args)
    with pytest.raises(SystemExit):
        bd.parse_args(["--train-images", "5000"])                    # below the 10,240 QAT images
    assert "--qat-images" in capsys.readouterr().err


def test_flip_shift_augments_every_batch(bd):
    import numpy as np

    x = np.zeros((64, 28, 28, 1), np.float32)
    x[:, :, :6] = 1.0                                                # a bar on the left edge
    (xb, yb), = list(bd.train_dataset(x, np.zeros(64, np.int32), 0, 64, "flip+shift"))
    right = xb.numpy()[:, :, -8:].mean(axis=(1, 2, 3)) > 0.3
    assert 0 < right.sum() < 64 and xb.shape == x.shape               # some images flipped, not all
    (xp, _), = list(bd.train_dataset(x, np.zeros(64, np.int32), 0, 64))
    assert np.array_equal(xp.numpy(), x)                             # "none": the images as they are


def test_render_and_render_flag(bd, tmp_path):
    rows = _rows([1.2, 0.8, 1.5])
    result = {"rows": rows, "command": "x", "date": "2026-12-04 00:00 UTC", "data": "full set",
              "teacher": {"what": "t", "keras_acc": 0.9254, "tflite_acc": 0.9254, "test_images": 10000},
              "targets": bd.check_targets(rows), "notes": bd.NOTES}
    md = "\n".join(bd.render(result))
    assert "### student width 0.25, 3 epochs, QAT 10,240 images" in md
    assert "| soft | 0,1,2 |" in md and "+1.20" in md and "92.54" in md
    assert md.count("-> met") == 2
    path = tmp_path / "distill.json"
    result["targets"] = []
    path.write_text(json.dumps(result))
    assert bd.main(["--render", str(path)]) == 0
    assert "-> met" in (tmp_path / "distill.md").read_text()  # targets recomputed from the rows
    # ... and saved in the JSON too, where the README's headline rows read them
    assert json.loads(path.read_text())["targets"] == json.loads(json.dumps(bd.check_targets(rows)))


def test_ensemble_teacher_averages_the_two_shipped_nets_logits(bd):
    import numpy as np

    from kslim.models import pretrained

    res = pretrained("resnet", verbose=0).model
    ens = bd.ensemble_teacher(res)
    x = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    mob = pretrained("mobilenet_v1", verbose=0).model
    want = (np.asarray(res(x, training=False)) + np.asarray(mob(x, training=False))) / 2
    np.testing.assert_allclose(np.asarray(ens(x, training=False)), want, rtol=1e-5, atol=1e-5)
    assert ens.get_layer("logits") is not None and not ens.trainable_weights  # what the soft-label pair reads
    assert "soft+ensemble" in bd.VARIANTS and bd.pairs_for("soft+ensemble", bd.parse_args([]))[0].loss == "soft_label"
    # soft+ensemble3: the shipped vgg teacher as a third member
    ens3 = bd.ensemble_teacher(res, bd.ENSEMBLES["soft+ensemble3"])
    vgg = pretrained("vgg", source="shipped").model
    want3 = (np.asarray(res(x, training=False)) + np.asarray(mob(x, training=False))
             + np.asarray(vgg(x, training=False))) / 3
    np.testing.assert_allclose(np.asarray(ens3(x, training=False)), want3, rtol=1e-5, atol=1e-5)
    assert not ens3.trainable_weights and bd.pairs_for("soft+ensemble3", bd.parse_args([]))[0].loss == "soft_label"
