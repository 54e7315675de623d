#!/usr/bin/env python3
"""Assemble ``BENCHMARKS.md`` from the fragments the benchmark scripts write in ``benchmarks/``.

The fragments keep their own figures: this script only orders them, demotes their headings under
the table titles, adds the header (machine, date, commands), each table's anchor figures (what
PaddleSlim / tfmot publish) and says which tables are missing or failed (``bench_status.json``,
written by ``scripts/bench.py``). No number is typed here. It then re-renders the README's headline
rows from the same ``benchmarks/*.json`` (``scripts/_headline.py``; not for ``--quick`` or another
``--bench-dir``).

    python scripts/render_benchmarks.py                   # benchmarks/*.md -> BENCHMARKS.md (+ README rows)
    python scripts/render_benchmarks.py --bench-dir D --out D/BENCHMARKS.md --quick
"""

import argparse
import datetime
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402  (machine description; imports nothing heavy)

# (number, title, table key of scripts/bench.py, fragments as (stem, section or None), anchor, blurb)
SECTIONS = [
    ("1", "Pruning", ["prune", "peers", "nas", "prune_methods"],
     [("prune", None), ("peers_tfmot", "prune"), ("prune_methods", None)],
     "PaddleSlim model zoo (PaddlePaddle/models `PaddleSlim/docs/model_zoo.md`), MobileNetV1 on ImageNet, "
     "120 fine-tune epochs: baseline 70.91 % top-1; uniform filter pruning -50 % FLOPs 69.83 % (-1.08 pt, "
     "model -47 %), -70 % FLOPs 66.57 % (-4.34 pt); sensitivity-based one-shot -50 % FLOPs 68.68 % (-2.23 pt, "
     "model -61 %). tfmot (`g3doc/guide/pruning/index.md`): MobileNetV1 224 at 50 % unstructured sparsity "
     "71.04 % -> 70.84 % (-0.20 pt).",
     "Structured (filter) pruning by kslim, with the unstructured tfmot peer at the same weight sparsity. "
     "The simulated-annealing ('auto') pruning row is in table 5 (`auto_prune`)."),
    ("2", "Quantization", ["quant", "peers", "ptq", "lowbit"],
     [("quant", None), ("peers_tfmot", "quant"), ("ptq", None), ("lowbit", None)],
     "tfmot QAT guide (`g3doc/guide/quantization/training.md`): MobileNetV1 224 on ImageNet 71.03 % float -> "
     "71.06 % int8 QAT; PaddleSlim model zoo (`docs/en/model_zoo_en.md`): MobileNetV1 70.99 % -> quant_post "
     "70.18 % (-0.81 pt), quant_aware 70.60 % (-0.39 pt), 17 MB -> 4.4 MB.",
     "Every variant measured on its `.tflite`; the tfmot `quantize_model` peer on the same architecture "
     "rebuilt in tf_keras with the same weights and epochs. The PTQ-backends table (`scripts/bench_ptq.py`) starts "
     "from the shipped converged nets and measures on all 10,000 test images: the converter path vs LiteRT's "
     "quantizer per calibration algorithm, int16x8, int4 weights, AdaRound, CLE, bias correction, mixed precision."),
    ("3", "Distillation", ["distill"], [("distill", None)],
     "PaddleSlim model zoo: MobileNetV1 distilled from ResNet50 on ImageNet 70.91 % -> 71.97 % (+1.06 pt).",
     "Student trained from scratch vs distilled, same epochs / data order / seeds; then QAT."),
    ("4", "Combined strategies", ["combined"], [("combined", None)],
     "PaddleSlim model zoo, MobileNetV1 on ImageNet: baseline 70.91 %; distilled 71.97 %; distilled + "
     "quantization 72.08 %; pruned -50 % FLOPs 69.83 % (uniform); pruned -50 % + quantization 69.70 %.",
     "PaddleSlim's combined table redone with `kslim.compressor.Compressor` configs."),
    ("5", "Search", ["nas"], [("nas", None)],
     "No comparable published figure (PaddleSlim's SA-NAS results are on ImageNet with a latency budget); "
     "the peers here are keras-tuner's RandomSearch and BayesianOptimization under the same budget.",
     "Simulated annealing vs keras-tuner under a FLOPs cap; SA-driven pruning (`auto_prune`)."),
    ("6", "Latency predictor", ["latency"], [("latency", None)],
     "nn-Meter (MobiSys 2021) and PaddleSlim's table-based latency evaluator predict whole-model latency "
     "from per-op (kernel) measurements; nn-Meter reports the share of held-out models predicted within "
     "+-10 % error.",
     "Predicted vs measured `.tflite` latency on held-out models."),
    ("7", "Tool cost", ["cost"], [("cost", None)],
     "The issue's target: pruning ResNet50 (weights=None) at 0.5 within 10 s.",
     "Time of kslim's own machinery: dependency graph, pruning, sensitivity scan, QAT step overhead."),
    ("8", "Model zoo", ["zoo"], [("zoo", None)],
     "No peer publishes such a table; issue 13 sets the targets: prune works on >= 90 % of the zoo, QAT reaches "
     "an int8 `.tflite` with no float compute op on >= 85 %, PTQ static on >= 95 %, raw exceptions 0.",
     "Architectures kslim did not write (tiny keras-hub backbones and keras.io-style nets, random weights) "
     "through every kslim entry point, as a new user would call them (`scripts/bench_zoo.py`)."),
    ("9", "Real-resolution latency", ["latency224"], [("latency224", None)],
     "tfmot's QAT guide (`g3doc/guide/quantization/training.md`): '1.5-4x CPU latency improvements' from int8. "
     "Issue 16 asks for speed-ups at 224x224, where kernels rather than interpreter overhead dominate, with "
     "their spread and the host's load.",
     "keras.applications MobileNetV2 and ResNet50 at 224x224: pruning (-50/-70 % MACs, round_to 1/8), int8 PTQ/QAT, "
     "float16, dynamic (`scripts/bench_latency224.py`)."),
]


def split_sections(text):
    """``{name: text}`` of a fragment split at ``<!-- section: name -->`` markers (None: before any)."""
    parts, name, buf = {}, None, []
    for line in text.splitlines():
        m = re.match(r"\s*<!--\s*section:\s*([\w-]+)\s*-->\s*$", line)
        if m:
            parts[name] = "\n".join(buf).strip()
            name, buf = m.group(1), []
        else:
            buf.append(line)
    parts[name] = "\n".join(buf).strip()
    return {k: v for k, v in parts.items() if v}


def demote(text, levels=1):
    """Add ``levels`` '#' to every markdown heading outside code fences."""
    out, fence = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
        if not fence and re.match(r"#{1,5} ", line):
            line = "#" * levels + line
        out.append(line)
    return "\n".join(out)


def fragment(bench_dir, stem, section):
    path = Path(bench_dir) / f"{stem}.md"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    if section is not None:
        return split_sections(text).get(section)
    parts = split_sections(text)
    return text.strip() if len(parts) <= 1 else "\n\n".join(parts.values())


def load_status(bench_dir):
    try:
        return json.loads((Path(bench_dir) / bench.STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def render(bench_dir, quick=False, date=None, machine=None):
    """The text of BENCHMARKS.md."""
    bench_dir = Path(bench_dir)
    status = load_status(bench_dir)
    tables = status.get("tables", {})
    m = machine or status.get("machine_start") or bench.machine()
    date = date or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# kslim benchmarks", ""]
    if quick:
        lines += ["> **Smoke run (`--quick`)**: tiny models and data slices; the figures only show that every "
                  "script runs. Do not quote them.", ""]
    load = m.get("load_avg_1_5_15")
    end_load = (status.get("machine_end") or {}).get("load_avg_1_5_15")
    lines += [
        "Every table is produced by a script in `scripts/` and rendered here from its `benchmarks/<table>.md` "
        "fragment (and `.json` with every figure) by `scripts/render_benchmarks.py`; nothing is typed by hand. "
        "Data: each fragment's data line says which. The tables re-run for issue 16 start from the converged "
        "reference nets kslim ships (`kslim.models.pretrained(name)`, trained on the full 60,000-image set) and "
        "measure on all 10,000 test images (±0.3 pt); the older ones still use the Fashion-MNIST subset bundled "
        "with kslim (10,000 train / 2,000 test images, ±0.8 pt) and nets trained 3-5 epochs. Where training is "
        "involved the figures are means or medians over seeds (each fragment says which and how many). Accuracy and latency are measured on the exported "
        "`.tflite` through ai-edge-litert (XNNPACK, batch 1; 1 thread, and all cores where stated).",
        "",
        "The anchors quote what PaddleSlim and tfmot publish for MobileNetV1 on ImageNet: they show the "
        "expected *direction and size* of each effect, not figures to match on a 10-class 28x28 data set.",
        "",
        "## Machine and commands",
        "",
        f"- Rendered: {date}",
        f"- CPU: {m.get('cpu')}, {m.get('cores')} cores; {m.get('platform')}",
        f"- Python {m.get('python')}, TensorFlow {m.get('tensorflow')}, Keras {m.get('keras')}, "
        f"ai-edge-litert {m.get('ai-edge-litert')}, kslim {m.get('kslim')}",
    ]
    if load:
        when = "when `scripts/bench.py` started" if status.get("machine_start") else "when rendered"
        lines.append(f"- Load average (1/5/15 min) {when}: {load}"
                     + (f"; when it ended: {end_load}" if end_load else "")
                     + (" -- **above the core count: the machine was shared, latency figures are noisy**"
                        if load and m.get("cores") and load[0] > m["cores"] else ""))
    lines += [
        f"- Reproduce every table: `nice -n 10 python scripts/bench.py` (about {sum(v for k, v in bench.EXPECTED_MIN.items() if k not in bench.ON_REQUEST)} min "
        "on 2 idle cores, the sum of `scripts/bench.py`'s per-table estimates); one table: "
        "`python scripts/bench.py --tables <name>` with name in " + ", ".join(f"`{t}`" for t in bench.TABLES)
        + "; smoke version (CI): `python scripts/bench.py --quick`.",
        "- Each fragment below repeats the exact command, date and load of its own run.",
        "",
    ]
    if tables:
        lines += ["| table | script run | status | wall time (min) | started |", "|---|---|---|---:|---|"]
        for key in bench.TABLES:
            st = tables.get(key)
            if st:
                secs = st.get("seconds")
                lines.append(f"| {key} | `{st.get('command', st.get('script'))}` | {st.get('status')} | "
                             f"{secs / 60:.1f} | {st.get('started')} |" if secs is not None else
                             f"| {key} | `{st.get('script')}` | {st.get('status')} | | {st.get('started')} |")
        lines.append("")
    lines += [
        "## Contents",
        "",
    ]
    lines += [f"{n}. [{title}](#{n}-{title.lower().replace(' ', '-')})" for n, title, *_ in SECTIONS]
    lines.append("")
    for n, title, keys, frags, anchor, blurb in SECTIONS:
        lines += [f"## {n}. {title}", "", blurb, "", f"**Anchor.** {anchor}", ""]
        for key in keys:
            st = tables.get(key)
            if st and st.get("status") in ("failed", "missing"):
                lines += [f"> **`{st.get('script')}` {st['status']}** in the last `scripts/bench.py` run "
                          f"({st.get('started')}): {st.get('error', '')}. Figures below, if any, are from an "
                          "earlier run (see their date).", ""]
        for stem, section in frags:
            text = fragment(bench_dir, stem, section)
            if text is None:
                script = next((s for s, stems, *_ in bench.TABLES.values() if stem in stems), f"bench_{stem}.py")
                lines += [f"*Not measured: `benchmarks/{stem}.md` does not exist (run "
                          f"`python scripts/{script}`).*", ""]
                continue
            lines += [demote(text, 1), ""]
    return "\n".join(lines).rstrip() + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bench-dir", default=str(ROOT / "benchmarks"))
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    p.add_argument("--quick", action="store_true", help="mark the document as a smoke run")
    p.add_argument("--readme", default=None,
                   help="README whose headline rows are re-rendered from the same JSON (default: the repo's "
                        "README.md when --bench-dir is the repo's benchmarks/ and not --quick; 'none' skips it)")
    args = p.parse_args(argv)
    if args.readme is None:
        default = Path(args.bench_dir).resolve() == (ROOT / "benchmarks").resolve() and not args.quick
        args.readme = str(ROOT / "README.md") if default else "none"
    return args


def main(argv=None):
    args = parse_args(argv)
    text = render(args.bench_dir, quick=args.quick)
    sys.path.insert(0, str(ROOT))
    from kslim._io import atomic_write_text

    atomic_write_text(args.out, text)
    print(f"wrote {args.out} ({len(text.splitlines())} lines)")
    if args.readme != "none":
        import _headline

        readme = Path(args.readme)
        try:
            new = _headline.render_readme(readme.read_text(encoding="utf-8"), args.bench_dir)
        except _headline.HeadlineError as e:
            print(f"{readme}: {e}", file=sys.stderr)
            return 2
        atomic_write_text(readme, new)
        print(f"re-rendered the headline rows of {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
