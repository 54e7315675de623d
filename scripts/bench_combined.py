#!/usr/bin/env python3
"""Combined-strategies benchmark (PaddleSlim's table): baseline, distilled, distilled + quant, pruned, pruned + quant.

Every row is produced by ``kslim.compressor.Compressor`` from a dict config (the same code path as
``kslim compress config.yaml``), on the bundled Fashion-MNIST subset:

* student: the reference MobileNetV1-style net (``kslim.models.pretrained("mobilenet_v1", epochs=3)``,
  cached, the one of scripts/bench_prune.py and scripts/bench_quant.py), given to the configs by path;
* teacher: the reference ResNet-style net (width 0.5, 6 epochs; the teacher of scripts/bench_distill.py);
* rows: ``[export]`` (baseline); ``[distill(soft_weight=0), export]`` (the baseline given the same extra
  training on hard labels only: the fair reference for every fine-tuned row);
  ``[distill, export, quant_aware, export]`` (distilled, then + QAT int8);
  ``[prune(flops_target=0.5), export, quant_aware, export]`` (pruned -50 % MACs, then + QAT int8).

Each row is measured on its own ``.tflite``: top-1 accuracy on the test images (median over seeds),
bytes, and latency (ai-edge-litert, XNNPACK, batch 1, 1 thread and all cores, rounds interleaved
across rows).

    python scripts/bench_combined.py --quick          # smoke run (~3 min)
    nice -n 10 python scripts/bench_combined.py       # full run, writes benchmarks/combined.{json,md}
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402
from _benchlib import latency_ms  # noqa: E402

ANCHOR = (
    "PaddleSlim's model zoo (PaddlePaddle/models, PaddleSlim/docs/model_zoo.md; MobileNetV1 on ImageNet, top-1; "
    "120 fine-tune epochs per step): baseline 70.91 % (17 MB); distilled from ResNet50 71.97 % (+1.06 pt); "
    "distilled + int8 quantization 72.08 %; uniform filter pruning -50 % FLOPs 69.83 % (-1.08 pt, 9.0 MB); "
    "pruned -50 % FLOPs + quantization 69.70 %."
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: width 0.25, 2000/500 images, 1 seed, 1 epoch")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=2, help="distill / prune fine-tune epochs")
    p.add_argument("--qat-epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--qat-lr", type=float, default=1e-4)
    p.add_argument("--flops-target", type=float, default=0.5)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--rows", nargs="+", default=["baseline", "finetuned", "distill", "prune"],
                   choices=["baseline", "finetuned", "distill", "prune"])
    p.add_argument("--workdir", default=None, help="run directories (default: a temp folder, removed after)")
    p.add_argument("--out", default=str(ROOT / "benchmarks"))
    p.add_argument("--render", default=None, metavar="COMBINED_JSON",
                   help="only rewrite the markdown fragment from an existing combined.json (no measurement)")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs = args.seeds[:1], 1
        args.student, args.teacher = ("mobilenet_v1", 0.25, 1), ("resnet", 0.25, 1)
    else:
        args.student, args.teacher = ("mobilenet_v1", 1.0, 3), ("resnet", 0.5, 6)
    return args


def configs(args, seed, student_path, teacher_path):
    """The dict configs of one seed: run name -> (config, {row label: stage index of its .tflite})."""
    data = {"source": "small", "batch_size": 128}
    if args.quick:
        data.update(train_limit=2000, test_limit=500)
    common = {"seed": seed, "model": {"path": str(student_path)}, "data": data,
              "train": {"epochs": args.epochs, "learning_rate": args.lr}, "report": {"latency_runs": 5}}
    teacher = {"path": str(teacher_path)}
    qat = {"quant_aware": {"epochs": args.qat_epochs, "learning_rate": args.qat_lr}}
    out = {}
    if "baseline" in args.rows:
        out["baseline"] = ({**common, "name": "baseline", "strategies": [{"export": {}}]}, {"baseline": 1})
    if "finetuned" in args.rows:
        out["finetuned"] = ({**common, "name": "finetuned", "strategies": [
            {"distill": {"teacher": teacher, "soft_weight": 0.0, "epochs": args.epochs}}, {"export": {}}]},
            {"baseline + same fine-tune": 2})
    if "distill" in args.rows:
        out["distill"] = ({**common, "name": "distill", "strategies": [
            {"distill": {"teacher": teacher, "temperature": args.temperature, "epochs": args.epochs}},
            {"export": {}}, qat, {"export": {}}]}, {"distilled": 2, "distilled + QAT int8": 4})
    if "prune" in args.rows:
        out["prune"] = ({**common, "name": "prune", "strategies": [
            {"prune": {"importance": "l1", "flops_reduction": args.flops_target, "round_to": 4,
                       "fine_tune": {"epochs": args.epochs}}},
            {"export": {}}, qat, {"export": {}}]},
            {f"pruned -{args.flops_target:.0%} MACs": 2, f"pruned -{args.flops_target:.0%} MACs + QAT int8": 4})
    return out


ORDER = ["baseline", "baseline + same fine-tune", "distilled", "distilled + QAT int8"]


def main(argv=None):
    args = parse_args(argv)
    if args.render:
        from kslim._io import atomic_write_text

        atomic_write_text(Path(args.out) / "combined.md", markdown(json.loads(Path(args.render).read_text())))
        return 0
    import keras

    from kslim._io import atomic_save_model, atomic_write_json, atomic_write_text
    from kslim.compressor import Compressor
    from kslim.lite import LiteModel
    from kslim.models import pretrained

    start = time.time()

    def log(msg):
        print(f"[{time.time() - start:6.0f}s] {msg}", flush=True)

    machine = bench.machine()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="kslim-combined-"))
    work.mkdir(parents=True, exist_ok=True)
    sname, swidth, sep = args.student
    tname, twidth, tep = args.teacher
    s_ref, t_ref = pretrained(sname, epochs=sep, width=swidth, verbose=0), pretrained(tname, epochs=tep, width=twidth, verbose=0)
    student, s_acc, teacher, t_acc = s_ref.model, s_ref.accuracy, t_ref.model, t_ref.accuracy
    student_path, teacher_path = work / "student.keras", work / "teacher.keras"
    atomic_save_model(student, student_path)
    atomic_save_model(teacher, teacher_path)
    log(f"student {sname} w{swidth:g} ({sep} ep, Keras acc {s_acc:.4f}); teacher {tname} w{twidth:g} "
        f"({tep} ep, Keras acc {t_acc:.4f})")
    del student, teacher
    keras.backend.clear_session()

    lites, results, failures = {}, {}, {}   # label -> {seed: content}; label -> {seed: row}
    labels = []
    for seed in args.seeds:
        for run_name, (cfg, stages) in configs(args, seed, student_path, teacher_path).items():
            for label in stages:
                if label not in labels:
                    labels.append(label)
            t0 = time.time()
            try:
                res = Compressor(cfg, out=work / f"{run_name}-s{seed}", verbose=0).run()
            except Exception as e:  # a failed row is a finding: report it, keep the others
                failures[f"{run_name} (seed {seed})"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                log(f"{run_name} seed {seed}: FAILED {failures[f'{run_name} (seed {seed})']}")
                keras.backend.clear_session()
                continue
            state = json.loads((res.run_dir / "state.json").read_text())
            for label, idx in stages.items():
                entry = state["stages"][str(idx)]
                content = (res.run_dir / entry["lite"]).read_bytes()
                lites.setdefault(label, {})[seed] = content
                results.setdefault(label, {})[seed] = {
                    "accuracy": float(entry["row"]["accuracy"]), "bytes": len(content),
                    "params": entry["row"].get("params"), "macs": entry["row"].get("macs"),
                    "compressor_latency_ms": entry["row"].get("latency_ms")}
            log(f"{run_name} seed {seed} in {time.time() - t0:.0f}s: "
                + ", ".join(f"{lb} {results[lb][seed]['accuracy']:.4f}" for lb in stages))
            keras.backend.clear_session()

    # accuracy from the Compressor's own measurement on the .tflite; check one against LiteModel
    labels = [lb for lb in labels if lb in lites]
    if not labels:
        log("every run failed")
    s0 = {lb: min(lites[lb]) for lb in labels}
    lat = latency_ms({lb: lites[lb][s0[lb]] for lb in labels}, rounds=3 if args.quick else 7,
                           runs=20 if args.quick else 50) if labels else {}
    base = "baseline"
    rows = []
    for lb in labels:
        accs = [results[lb][s]["accuracy"] for s in sorted(results[lb])]
        r0 = results[lb][s0[lb]]
        rows.append({"row": lb, "accuracy": bench.median(accs), "accuracies": accs, "seeds": sorted(results[lb]),
                     "bytes": r0["bytes"], "params": r0["params"], "macs": r0["macs"],
                     "latency_ms_1t": lat[lb]["1"], "latency_ms_all": lat[lb]["all"]})
    by = {r["row"]: r for r in rows}
    for r in rows:
        for ref, key in ((base, "delta_pt"), ("baseline + same fine-tune", "delta_vs_ft_pt")):
            r[key] = 100 * (r["accuracy"] - by[ref]["accuracy"]) if ref in by else None
        r["bytes_ratio"] = r["bytes"] / by[base]["bytes"] if base in by else None
        r["speedup_1t"] = by[base]["latency_ms_1t"] / r["latency_ms_1t"] if base in by else None
    check = None
    if labels:  # the Compressor's accuracy must equal an independent LiteModel evaluation
        _, test = bench.load_data(args.quick)
        lb = labels[-1]
        check = {"row": lb, "compressor": results[lb][s0[lb]]["accuracy"],
                 "litemodel": float(LiteModel(lites[lb][s0[lb]]).evaluate(test))}
    result = {
        "command": bench.command_line("scripts/bench_combined.py", argv),
        "date": bench.utc_now(), "machine": machine, "load_end": bench.machine()["load_avg_1_5_15"],
        "settings": {"student": f"{sname} width {swidth:g}, {sep} epochs (Keras acc {s_acc:.4f})",
                     "teacher": f"{tname} width {twidth:g}, {tep} epochs (Keras acc {t_acc:.4f})",
                     "seeds": args.seeds, "epochs": args.epochs, "qat_epochs": args.qat_epochs, "lr": args.lr,
                     "qat_lr": args.qat_lr, "flops_target": args.flops_target, "temperature": args.temperature,
                     "data": "bundled subset" + (" (2000 train / 500 test)" if args.quick else
                                                 " (10000 train / 2000 test)")},
        "rows": rows, "failures": failures, "accuracy_check": check, "anchor": ANCHOR,
        "wall_s": round(time.time() - start, 1),
    }
    md = markdown(result)
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "combined.json", result)
    atomic_write_text(out / "combined.md", md)
    log(f"wrote {out / 'combined.json'} and {out / 'combined.md'}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


def markdown(res):
    s, m = res["settings"], res["machine"]
    f = bench.fmt
    lines = [
        f"Command: `{res['command']}`  ",
        f"Date: {res['date']}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; load average at start {m['load_avg_1_5_15']}, "
        f"at end {res['load_end']} (latency is noisy when the load exceeds the core count)  ",
        f"Setup: every row is a `kslim.compressor.Compressor` run (dict config) on the {s['data']}; student "
        f"{s['student']}, teacher {s['teacher']}. Distillation: soft labels T={s['temperature']:g} + hard labels, "
        f"{s['epochs']} epoch(s); pruning: L1 filters to -{s['flops_target']:.0%} MACs, round_to 4, fine-tune "
        f"{s['epochs']} epoch(s); QAT: {s['qat_epochs']} epoch(s), lr {s['qat_lr']:g}. 'baseline + same fine-tune' "
        f"gets the same {s['epochs']} extra epoch(s) on hard labels only (the fair reference). Accuracy: top-1 of "
        f"the row's `.tflite` on the test images, median over seeds {s['seeds']}. Latency: ai-edge-litert, XNNPACK, "
        "batch 1, median of interleaved rounds.",
        "",
        f"| row | .tflite acc | delta vs baseline (pt) | delta vs baseline+FT (pt) | params | MACs (M) | bytes | "
        f"bytes vs baseline | latency 1 thr (ms) | latency {m['cores']} thr (ms) | speedup 1 thr |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['row']} | {r['accuracy']:.4f} | {f(r['delta_pt'], '+.2f')} | {f(r['delta_vs_ft_pt'], '+.2f')} | "
            f"{f(r['params'], ',')} | {f(r['macs'] / 1e6 if r['macs'] else None, '.2f')} | {r['bytes']:,} | "
            f"{f(r['bytes_ratio'], '.2f')} | {r['latency_ms_1t']:.3f} | {r['latency_ms_all']:.3f} | "
            f"{f(r['speedup_1t'], '.2f')}x |")
    lines += ["", "Params and MACs are those of the Keras model the row exports (QAT rows: the QAT model, with each "
              "BatchNormalization folded into its convolution and the quantizer variables added).", ""]
    if res.get("accuracy_check"):
        c = res["accuracy_check"]
        lines.append(f"Check: the Compressor's accuracy of '{c['row']}' ({c['compressor']:.4f}) vs an independent "
                     f"`LiteModel.evaluate` ({c['litemodel']:.4f}).")
        lines.append("")
    if res["failures"]:
        lines += ["**Failed runs** (their rows are missing or have fewer seeds):", ""]
        lines += [f"- {k}: {v}" for k, v in res["failures"].items()] + [""]
    lines += [f"Anchor: {res['anchor']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
