#!/usr/bin/env python3
"""Combined strategies (PaddleSlim's table) on the converged net: pruned -50 % MACs + QAT int8 against the
equally fine-tuned baseline (issue 16's "prune -50 % + QAT: >= 86 % smaller at <= 1.0 pt").

Every row is a ``kslim.compressor.Compressor`` run from a dict config (the code path of
``kslim compress config.yaml``):

* student: the shipped converged MobileNetV1-style net (``kslim.models.pretrained("mobilenet_v1")``, nothing
  trained before the rows), given to the configs by path;
* data: Fashion-MNIST full set (Debian's ``dataset-fashion-mnist``). Every training step is ``--epochs`` pass(es)
  over ``--train-images`` training images (default all 60,000), batch 128, Adam with cosine decay to 0
  (``schedule: cosine``); every accuracy is the Compressor's own, top-1 of the stage's ``.tflite`` on all
  10,000 test images;
* runs of each seed (``--seeds``, default 0,1,2):
  ``finetuned``: ``[fine_tune, export, quant_aware, export]`` -> "baseline + same fine-tune" (the fair float
  reference) and its QAT int8;
  ``prune``: ``[prune(importance, flops_reduction 0.5, round_to, fine_tune), export, quant_aware, export]``
  -> "pruned -50 % MACs" and "pruned -50 % MACs + QAT int8"; ``prune_all``: the same with
  ``keep_classifier: false`` (the channels feeding the classifier are pruned too: the widest layer);
  ``prune_all_pt``: ``prune_all`` with per-tensor weight scales in QAT (``weight_quantize_type: abs_max``;
  per-channel scales cost 24 bytes per output channel in the ``.tflite``) -> "... + per-tensor QAT int8";
  ``baseline``: ``[export]`` of the shipped net, once (no training, so no seed);
  ``distill`` (on request, ``--rows``): distilled from the shipped ResNet-style net, then QAT int8.
* targets: the pruned + QAT ``.tflite`` >= 86 % smaller than the baseline float32 ``.tflite``, and its drop
  vs "baseline + same fine-tune" <= 1.0 pt (median of the per-seed drops, at the printed precision, with the
  test-set noise band beside it).

Latency: every row's seed-0 ``.tflite``, ai-edge-litert/XNNPACK, batch 1, 1 thread and all cores, rounds
interleaved, median with p10-p90; the CPU's ISA flags on the machine line.

Resumable: each Compressor run lives in ``--workdir`` (default: ``<kslim cache>/bench_combined``); a killed
run continues where it stopped (``Compressor.run(resume=True)``), finished runs are read back (``--redo``
starts them again). ``combined.json`` is rewritten after every run.

    python scripts/bench_combined.py --quick          # smoke run (~3 min, bundled subset; writes nothing)
    nice -n 10 python scripts/bench_combined.py       # full run, writes benchmarks/combined.{json,md}
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import bench  # noqa: E402
from _benchlib import (latency_ms, load_full, log_targets, noise_pt, seed_list, seed_verdict,  # noqa: E402
                       render_saved, write_fragment)

ANCHOR = (
    "PaddleSlim's model zoo (PaddlePaddle/models, PaddleSlim/docs/model_zoo.md; MobileNetV1 on ImageNet, top-1; "
    "120 fine-tune epochs per step): baseline 70.91 % (17 MB); distilled from ResNet50 71.97 % (+1.06 pt); "
    "distilled + int8 quantization 72.08 %; uniform filter pruning -50 % FLOPs 69.83 % (-1.08 pt, 9.0 MB); "
    "pruned -50 % FLOPs + quantization 69.70 %."
)
TARGETS = {"bytes_reduction": 0.86, "drop_pt": 1.0}
RUNS = ("baseline", "finetuned", "prune", "prune_all", "prune_all_pt", "distill")
CONTROL = "baseline + same fine-tune"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="Runs: " + ", ".join(RUNS) + " (distill on request).")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: bundled subset, 2,000 training / 500 test images, 1 seed; writes nothing")
    p.add_argument("--seeds", type=seed_list, default="0,1,2")
    p.add_argument("--train-images", type=int, default=None,
                   help="training images of every step's pass (default: all 60,000; --quick 2,000)")
    p.add_argument("--epochs", type=int, default=1, help="passes of the fine-tune after pruning (and its control)")
    p.add_argument("--qat-epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tune learning rate (cosine decay to 0)")
    p.add_argument("--qat-lr", type=float, default=1e-4)
    p.add_argument("--importance", default="hessian",
                   help="pruning criterion (kslim.prune.importance registry; hessian: best -50 % row of prune_methods)")
    p.add_argument("--importance-samples", type=int, default=512)
    p.add_argument("--flops-target", type=float, default=0.5)
    p.add_argument("--round-to", type=int, default=4)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--rows", nargs="+", default=["baseline", "finetuned", "prune", "prune_all", "prune_all_pt"], choices=RUNS)
    p.add_argument("--workdir", default=None, help="run directories (default: <kslim cache>/bench_combined)")
    p.add_argument("--redo", action="store_true", help="start the runs again instead of reading finished ones")
    p.add_argument("--out", default=str(ROOT / "benchmarks"))
    p.add_argument("--render", default=None, metavar="COMBINED_JSON",
                   help="only rewrite combined.md (targets re-checked) from a saved combined.json (no measurement)")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds = args.seeds[:1]
        args.train_images = args.train_images or 2000
    for name in ("epochs", "qat_epochs", "importance_samples", "round_to"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.train_images is not None and args.train_images < 1:
        p.error("--train-images must be >= 1")
    if not 0 < args.flops_target < 1:
        p.error("--flops-target must be in (0, 1)")
    return args


def _label(args, qat=False, classifier=False, per_tensor=False):
    return (f"pruned -{args.flops_target:.0%} MACs ({args.importance}" + (", classifier input too" if classifier else "")
            + ")" + (" + per-tensor QAT int8" if per_tensor else " + QAT int8" if qat else ""))


def configs(args, seed, student_path, teacher_path):
    """The dict configs of one seed: run name -> (config, {row label: stage index of its .tflite})."""
    data = {"source": "small" if args.quick else "full", "batch_size": 128}
    if args.train_images:
        data["train_limit"] = int(args.train_images)
    if args.quick:
        data["test_limit"] = 500
    ft = {"epochs": args.epochs, "learning_rate": args.lr, "schedule": "cosine"}
    common = {"seed": seed, "model": {"path": str(student_path)}, "data": data, "train": ft,
              "report": {"latency_runs": 3}}
    qat = {"quant_aware": {"epochs": args.qat_epochs, "learning_rate": args.qat_lr, "schedule": "cosine"}}
    out = {}
    if "baseline" in args.rows and seed == args.seeds[0]:  # no training: the same for every seed
        out["baseline"] = ({**common, "name": "baseline", "strategies": [{"export": {}}]}, {"baseline": 1})
    if "finetuned" in args.rows:
        out["finetuned"] = ({**common, "name": "finetuned", "strategies": [
            {"fine_tune": {}}, {"export": {}}, qat, {"export": {}}]},
            {CONTROL: 2, f"{CONTROL} + QAT int8": 4})
    # prune_all: the classifier's input channels too; prune_all_pt: the same with per-tensor weight scales
    # (``weight_quantize_type: abs_max``): each per-channel weight tensor stores a float32 scale and an int64
    # zero point per output channel, and so does its int32 bias, 24 bytes a channel in all
    for run, keep, pt in (("prune", True, False), ("prune_all", False, False), ("prune_all_pt", False, True)):
        if run in args.rows:
            q = {"quant_aware": {**qat["quant_aware"], "weight_quantize_type": "abs_max"}} if pt else qat
            labels = {_label(args, qat=True, classifier=not keep, per_tensor=pt): 4}
            if not pt:  # the float stage of prune_all_pt is prune_all's, pruned and fine-tuned alike
                labels = {_label(args, classifier=not keep): 2, **labels}
            out[run] = ({**common, "name": run, "strategies": [
                {"prune": {"importance": args.importance, "importance_samples": args.importance_samples,
                           "flops_reduction": args.flops_target, "round_to": args.round_to, "fine_tune": {},
                           **({} if keep else {"keep_classifier": False})}},
                {"export": {}}, q, {"export": {}}]}, labels)
    if "distill" in args.rows:
        out["distill"] = ({**common, "name": "distill", "strategies": [
            {"distill": {"teacher": {"path": str(teacher_path)}, "temperature": args.temperature}},
            {"export": {}}, qat, {"export": {}}]}, {"distilled": 2, "distilled + QAT int8": 4})
    return out


def run_one(cfg, run_dir, redo, log):
    """The Compressor run of ``cfg`` in ``run_dir``: read back when finished, resumed when interrupted."""
    from kslim.compressor import Compressor
    from kslim.compressor.run_dir import config_hash

    state_file = run_dir / "state.json"
    comp = Compressor(cfg, out=run_dir, verbose=0)
    if state_file.is_file() and json.loads(state_file.read_text()).get("config_hash") != config_hash(comp.config):
        log(f"{run_dir.name}: made from another config, starting again")
        redo = True
    if redo and run_dir.exists():
        shutil.rmtree(run_dir)
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        if state.get("finished"):
            log(f"{run_dir.name}: finished before, read back")
            return state
        log(f"{run_dir.name}: resuming the interrupted run")
        comp.run(resume=True)
    else:
        if run_dir.exists():  # a folder without a state: nothing of it can be resumed
            shutil.rmtree(run_dir)
        comp.run()
    return json.loads(state_file.read_text())


def per_seed_drop(result, label):
    """``{seed: drop in pt}`` of ``label`` vs the control of the same seed (positive = worse)."""
    by = {r["row"]: r for r in result["rows"]}
    if label not in by or CONTROL not in by:
        return {}
    ctl, row = by[CONTROL]["per_seed"], by[label]["per_seed"]
    return {int(s): 100 * (ctl[s] - row[s]) for s in sorted(set(ctl) & set(row), key=int)}


def check_targets(result):
    """The verdicts of each pruned + QAT row (size vs the baseline, accuracy vs the same-fine-tune control)."""
    by = {r["row"]: r for r in result["rows"]}
    labels = [r["row"] for r in result["rows"] if r["row"].startswith("pruned") and r["row"].endswith("QAT int8")]
    if not labels or "baseline" not in by:
        return [{"what": "prune -50 % MACs + QAT int8", "target": "measured", "value": "not run", "met": False}]
    out = []
    for label in labels:
        r = by[label]
        red = 1 - r["bytes"] / by["baseline"]["bytes"]
        out.append({"what": f"{label}: .tflite bytes vs the float32 baseline",
                    "target": f">= {TARGETS['bytes_reduction']:.0%} smaller",
                    "value": f"{100 * red:.1f} % smaller ({r['bytes']:,} vs {by['baseline']['bytes']:,} bytes)",
                    "met": round(red, 3) >= TARGETS["bytes_reduction"]})
        d = per_seed_drop(result, label)
        if d:
            n_test = result["settings"]["test_images"]
            _, band = noise_pt(by[CONTROL]["accuracy"], n_test)
            out.append(seed_verdict(f"{label}: accuracy drop vs '{CONTROL}' (median over {len(d)} seed(s))", d,
                                    TARGETS["drop_pt"], False,
                                    f"test-set noise ±{band:.2f} pt (1.96 SE, {n_test:,} images)"))
    return out


def build_rows(labels, results, lat):
    """One row per label: median accuracy over its seeds, its per-seed accuracies, seed-0 size and latency."""
    rows = []
    for lb in labels:
        seeds = sorted(results[lb])
        r0 = results[lb][seeds[0]]
        row = {"row": lb, "accuracy": statistics.median(results[lb][s]["accuracy"] for s in seeds),
               "per_seed": {str(s): results[lb][s]["accuracy"] for s in seeds},
               "bytes": int(statistics.median(results[lb][s]["bytes"] for s in seeds)),
               "params": r0["params"], "macs": r0["macs"]}
        if lb in lat:
            row.update(latency_ms_1t=lat[lb]["1"]["median"], latency_p10_1t=lat[lb]["1"]["p10"],
                       latency_p90_1t=lat[lb]["1"]["p90"], latency_ms_all=lat[lb]["all"]["median"])
        rows.append(row)
    by = {r["row"]: r for r in rows}
    for r in rows:
        for ref, key in (("baseline", "delta_pt"), (CONTROL, "delta_vs_ft_pt")):
            r[key] = 100 * (r["accuracy"] - by[ref]["accuracy"]) if ref in by else None
        r["bytes_ratio"] = r["bytes"] / by["baseline"]["bytes"] if "baseline" in by else None
        r["speedup_1t"] = (by["baseline"]["latency_ms_1t"] / r["latency_ms_1t"]
                           if "baseline" in by and r.get("latency_ms_1t") and by["baseline"].get("latency_ms_1t")
                           else None)
    return rows


def main(argv=None):
    args = parse_args(argv)
    from kslim._io import atomic_save_model

    if args.render:
        return render_saved(args.render, lambda r: r.update(targets=check_targets(r)), write_markdown)
    import keras

    from kslim.lite import LiteModel
    from kslim.models import cache_dir, pretrained

    start = time.time()

    def log(msg):
        print(f"[{time.time() - start:6.0f}s] {msg}", flush=True)

    work = Path(args.workdir) if args.workdir else Path(cache_dir()) / "bench_combined"
    work = work / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    log(f"run directories in {work} (a rerun resumes or reads them back; --redo starts again)")
    if args.quick:
        s_ref = pretrained("mobilenet_v1", epochs=1, width=0.25, verbose=0)
        t_ref = pretrained("resnet", epochs=1, width=0.25, verbose=0) if "distill" in args.rows else None
    else:
        s_ref = pretrained("mobilenet_v1", verbose=0)
        t_ref = pretrained("resnet", verbose=0) if "distill" in args.rows else None
    student_path, teacher_path = work / "student.keras", work / "teacher.keras"
    atomic_save_model(s_ref.model, student_path)
    if t_ref is not None:
        atomic_save_model(t_ref.model, teacher_path)
    what = "shipped converged" if not args.quick else "1-epoch width-0.25 (quick)"
    student_info = f"{what} mobilenet_v1 ({s_ref.model.count_params():,} params, Keras acc {s_ref.accuracy:.4f})"
    teacher_info = (f"{what} resnet ({t_ref.model.count_params():,} params, Keras acc {t_ref.accuracy:.4f})"
                    if t_ref is not None else None)
    log(f"student {student_info}" + (f"; teacher {teacher_info}" if teacher_info else ""))
    keras.backend.clear_session()

    _, test = load_full(args.quick)
    n_train = args.train_images or 60000
    settings = {"student": student_info, "teacher": teacher_info, "seeds": args.seeds, "epochs": args.epochs,
                "qat_epochs": args.qat_epochs, "lr": args.lr, "qat_lr": args.qat_lr, "importance": args.importance,
                "importance_samples": args.importance_samples, "flops_target": args.flops_target,
                "round_to": args.round_to, "temperature": args.temperature, "train_images": n_train,
                "test_images": 500 if args.quick else len(test[1]),
                "data": ("bundled subset, 2,000 train / 500 test images (--quick; smoke numbers only)" if args.quick
                         else f"Fashion-MNIST full set, {n_train:,} training images per pass, all "
                              f"{len(test[1]):,} test images")}
    lites, results, failures, labels = {}, {}, {}, []

    def result_now(lat=None, check=None):
        res = {"command": bench.command_line("scripts/bench_combined.py", argv), "date": bench.utc_now(),
               "machine": bench.machine(), "settings": settings,
               "rows": build_rows([lb for lb in labels if lb in results], results, lat or {}),
               "failures": failures, "accuracy_check": check, "anchor": ANCHOR,
               "wall_s": round(time.time() - start, 1)}
        res["targets"] = check_targets(res)
        return res

    for seed in args.seeds:
        for run_name, (cfg, stages) in configs(args, seed, student_path, teacher_path).items():
            labels += [lb for lb in stages if lb not in labels]
            t0 = time.time()
            try:
                state = run_one(cfg, work / f"{run_name}-s{seed}", args.redo, log)
            except Exception as e:  # a failed run is a finding: report it, keep the others
                failures[f"{run_name} (seed {seed})"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                log(f"{run_name} seed {seed}: FAILED {failures[f'{run_name} (seed {seed})']}")
                keras.backend.clear_session()
                continue
            run_dir = work / f"{run_name}-s{seed}"
            for label, idx in stages.items():
                entry = state["stages"][str(idx)]
                content = (run_dir / entry["lite"]).read_bytes()
                lites.setdefault(label, {})[seed] = content
                results.setdefault(label, {})[seed] = {
                    "accuracy": float(entry["row"]["accuracy"]), "bytes": len(content),
                    "params": entry["row"].get("params"), "macs": entry["row"].get("macs")}
            log(f"{run_name} seed {seed} in {time.time() - t0:.0f}s: "
                + ", ".join(f"{lb} {results[lb][seed]['accuracy']:.4f}" for lb in stages))
            keras.backend.clear_session()
            if not args.quick:  # every finished run lands in the table (a kill loses nothing measured)
                write_fragment(args.out, "combined", result_now(), write_markdown, log)

    labels = [lb for lb in labels if lb in lites]
    lat, check = {}, None
    if labels:
        s0 = {lb: min(lites[lb]) for lb in labels}
        log("latency: every row's first-seed .tflite, interleaved rounds")
        lat = latency_ms({lb: lites[lb][s0[lb]] for lb in labels}, rounds=3 if args.quick else 7,
                         runs=20 if args.quick else 50, stats=True)
        lb = labels[-1]  # the Compressor's accuracy must equal an independent LiteModel evaluation
        xte, yte = test[0][:settings["test_images"]], test[1][:settings["test_images"]]
        check = {"row": lb, "compressor": results[lb][s0[lb]]["accuracy"],
                 "litemodel": float(LiteModel(lites[lb][s0[lb]]).evaluate((xte, yte)))}
    else:
        log("every run failed")
    result = result_now(lat, check)
    print("\n".join(render(result)))
    log_targets(result["targets"], start, log)
    if args.quick:
        log("(quick run: nothing written)")
    else:
        write_fragment(args.out, "combined", result, write_markdown, log)
    return 1 if failures else 0


def write_markdown(result, path):
    from kslim._io import atomic_write_text

    atomic_write_text(path, "\n".join(render(result)) + "\n")


def render(res):
    s, m = res["settings"], res["machine"]
    f = bench.fmt
    lines = [
        f"Command: `{res['command']}`  ",
        f"Date: {res['date']}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; load average {m['load_avg_1_5_15']} when this "
        "was written (latency is noisy when the load exceeds the core count)  ",
        f"Setup: every row is a `kslim.compressor.Compressor` run (dict config, the path of `kslim compress`) on the "
        f"{s['data']}; student: the {s['student']}. Each training step is {s['epochs']} pass(es) over the training "
        f"images, batch 128, Adam with cosine decay to 0 (`schedule: cosine`): the fine-tune after pruning and its "
        f"control at lr {s['lr']:g}, QAT {s['qat_epochs']} pass(es) at lr {s['qat_lr']:g}. Pruning: "
        f"`{s['importance']}` importance ({s['importance_samples']} training images), `flops_reduction` "
        f"{s['flops_target']:g}, round_to {s['round_to']}. '{CONTROL}' is the unpruned net given the same "
        "fine-tune (the fair reference); '+ QAT int8' rows add the same QAT to each. Accuracy: top-1 of the row's "
        f"`.tflite` on the test images, median over seeds {s['seeds']} (per seed in the last column). Latency: "
        "ai-edge-litert, XNNPACK, batch 1, the first seed's `.tflite`, median of interleaved rounds (p10-p90).",
        "",
        "| row | .tflite acc | vs baseline (pt) | vs baseline + same FT (pt) | params | MACs (M) | bytes | "
        f"bytes vs baseline | latency 1 thr (ms, p10-p90) | latency {m['cores']} thr (ms) | speedup 1 thr | per seed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in res["rows"]:
        lat1 = (f"{r['latency_ms_1t']:.3f} ({r['latency_p10_1t']:.3f}-{r['latency_p90_1t']:.3f})"
                if r.get("latency_ms_1t") is not None else "")
        lines.append(
            f"| {r['row']} | {r['accuracy']:.4f} | {f(r['delta_pt'], '+.2f')} | {f(r['delta_vs_ft_pt'], '+.2f')} | "
            f"{f(r['params'], ',')} | {f(r['macs'] / 1e6 if r['macs'] else None, '.2f')} | {r['bytes']:,} | "
            f"{f(r['bytes_ratio'], '.3f')} | {lat1} | {f(r.get('latency_ms_all'), '.3f')} | "
            f"{f(r['speedup_1t'], '.2f')}{'x' if r['speedup_1t'] else ''} | "
            + ", ".join(f"{v:.4f}" for v in r["per_seed"].values()) + " |")
    lines += ["", "Params and MACs are those of the Keras model the row exports (QAT rows: the QAT model, with each "
              "BatchNormalization folded into its convolution and the quantizer variables added).", ""]
    if res.get("targets"):
        lines += ["Targets from issue 16:", "", "| target | required | measured | met |", "|---|---|---|---|"]
        lines += [f"| {t['what']} | {t['target']} | {t['value']} | {'yes' if t['met'] else '**no**'} |"
                  for t in res["targets"]] + [""]
    if res.get("accuracy_check"):
        c = res["accuracy_check"]
        lines += [f"Check: the Compressor's accuracy of '{c['row']}' ({c['compressor']:.4f}) vs an independent "
                  f"`LiteModel.evaluate` ({c['litemodel']:.4f}).", ""]
    if res["failures"]:
        lines += ["**Failed runs** (their rows are missing or have fewer seeds):", ""]
        lines += [f"- {k}: {v}" for k, v in res["failures"].items()] + [""]
    lines += ["Distillation is measured in its own table (scripts/bench_distill.py); here it is on request "
              "(`--rows ... distill`): the only shipped teacher, the ResNet-style net, is less accurate than this "
              "student (`kslim/models/weights/manifest.json`).", "", f"Anchor: {res['anchor']}", ""]
    return lines


if __name__ == "__main__":
    sys.exit(main())
