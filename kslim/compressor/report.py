"""Per-stage metrics and the run report (``report.md``, ``report.html``, plots).

Every figure is measured on the stage's own artefact: the Keras model of a Keras stage (accuracy
with ``predict``; latency on its float ``.tflite`` conversion, or int8 for a QAT model), the
``.tflite`` of a TFLite stage (accuracy and latency through ai-edge-litert). Latencies are measured
once, at the end of the run, for all stages together in interleaved rounds
(:func:`kslim.lite.measure_latencies`): stages timed minutes apart on a busy host are not comparable.

``report.md`` and ``report.html`` are rendered from one list of blocks (:func:`report_blocks`), so
they hold the same content: context, "baseline → final" summary, per-stage table, the per-layer
pruning table of each prune stage, the plots.
"""

import html

import numpy as np

from kslim._io import atomic_write_text

COLUMNS = (
    ("stage", "stage"), ("kind", "artefact"), ("params", "params"), ("macs", "MACs"),
    ("bytes", "bytes (weights)"), ("accuracy", "accuracy"), ("latency_ms", "latency (ms)"),
)


def profile_figures(lite, num_threads=1, runs=50, warmup=5):
    """The figures of :func:`kslim.lite.profile` of ``lite`` on the host (batch 1), as a JSON-ready dict
    (``median_ms``, ``mean_ms``, ``p5_ms`` ...) for the profile stage's report."""
    from kslim.lite import LocalDevice, profile

    rep = profile(lite, device=LocalDevice(), num_threads=num_threads, warmup=warmup, runs=runs)
    return {k: (float(v) if isinstance(v, (int, float, np.floating)) else v) for k, v in rep.to_dict().items()
            if isinstance(v, (int, float, str, np.floating))}


# ----------------------------------------------------------------------------- the report: one source
# A report is a list of blocks, rendered to Markdown and to HTML with the same content:
#   ("h1" | "h2" | "p", text)     text may hold `code` spans
#   ("table", headers, rows, align)  rows of strings; align one of "l"/"r" per column
#   ("img", path, alt)

def _pct(a, b):
    return f"{100 * (b - a) / a:+.1f} %" if a else "-"


def _summary(base, last):
    parts = []
    if base.get("accuracy") is not None and last.get("accuracy") is not None:
        parts.append(f"top-1 accuracy {_fmt('accuracy', base['accuracy'])} → {_fmt('accuracy', last['accuracy'])} "
                     f"({100 * (last['accuracy'] - base['accuracy']):+.2f} pt)")
    if base.get("bytes") and last.get("bytes"):
        parts.append(f"size {int(base['bytes']):,} → {int(last['bytes']):,} bytes ({_pct(base['bytes'], last['bytes'])}, "
                     f"{base['bytes'] / last['bytes']:.2f}× smaller)")
    if base.get("latency_ms") and last.get("latency_ms"):
        parts.append(f"latency {base['latency_ms']:.3f} → {last['latency_ms']:.3f} ms "
                     f"({base['latency_ms'] / last['latency_ms']:.2f}× faster)")
    for key, label in (("macs", "MACs"), ("params", "params")):
        if base.get(key) and last.get(key) is not None:
            parts.append(f"{label} {int(base[key]):,} → {int(last[key]):,} ({_pct(base[key], last[key])})")
    return "; ".join(parts) + "."


def _host():
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def _versions():
    import importlib.metadata as md

    from kslim._version import __version__

    out = [f"kslim {__version__}"]
    for dist in ("keras", "tensorflow-cpu", "tensorflow", "ai-edge-litert"):
        try:
            out.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            continue
    return ", ".join(out)


def _latency_cell(r):
    if r.get("latency_p5_ms") is None or r.get("latency_p95_ms") is None:
        return "-"
    return f"{r['latency_p5_ms']:.3f}–{r['latency_p95_ms']:.3f}"


def _layer_blocks(table, stage, rel):
    rows = []
    for r in table["layers"]:
        if r["channels_before"] == r["channels_after"] and r["macs_before"] == r["macs_after"]:
            continue
        if not r["macs_before"] and not r["macs_after"]:
            continue  # BatchNormalization, activations, pooling: they follow their input's channels
        ch = f"{_dash(r['channels_before'])} → {_dash(r['channels_after'])}"
        change = _pct(r["macs_before"], r["macs_after"]) if r["macs_before"] and r["macs_after"] is not None else ""
        rows.append([r["layer"], r["type"], ch, _int(r["macs_before"]), _int(r["macs_after"]), change])
    return [
        ("h2", f"Pruning per layer ({stage})"),
        ("p", f"`{table['before']}` → `{table['after']}`: params {table['params_before']:,} → "
              f"{table['params_after']:,} ({_pct(table['params_before'], table['params_after'])}), MACs "
              f"{table['macs_before']:,} → {table['macs_after']:,} ({_pct(table['macs_before'], table['macs_after'])}). "
              f"Output channels and MACs of the {len(rows)} conv/dense layers that changed "
              "(kslim.analysis.summary_diff; normalisation, activation and pooling layers follow them); "
              f"every layer in `{rel}`."),
        ("table", ["layer", "type", "output channels", "MACs before", "MACs after", "MACs change"], rows, "llrrrr"),
    ]


def _dash(v):
    return "-" if v is None else str(v)


def _int(v):
    return "-" if v is None else f"{int(v):,}"


def report_blocks(config, rows, plots, layer_tables=(), run_dir=None):
    """The report's content as blocks (see above), rendered by :func:`render_markdown` / :func:`render_html`.

    ``layer_tables``: ``[(stage name, relative path of layers.csv, layers.json content)]``.
    """
    import time

    model, data, report = config["model"], config["data"], config["report"]
    what = (f"reference model `{model['reference']}`" + (f" (width {model['width']:g})" if "width" in model else "")
            if "reference" in model else f"`{model['path']}`")
    source = {"small": "the bundled Fashion-MNIST subset", "full": "Fashion-MNIST",
              "hook": f"the data hook `{data.get('hook')}`"}.get(data.get("source", "small"), data.get("source"))
    limits = [f"first {data[k]:,} {k.split('_')[0]} images" for k in ("train_limit", "test_limit") if data.get(k)]
    chain = " → ".join(next(iter(s)) for s in config["strategies"])
    context = (f"Model: {what}. Data: {source}" + (f" ({', '.join(limits)})" if limits else "") + ". "
               + ("Quick mode (`--quick`): small data slices and 1 epoch per stage, a smoke test, not a result. "
                  if config.get("quick") else "")
               + f"Strategies: {chain}. Seed {config['seed']}. "
               + (f"Run directory: `{run_dir}`. " if run_dir else "")
               + f"{_versions()}; host: {_host()}. Written {time.strftime('%Y-%m-%d %H:%M %Z')}.")
    blocks = [("h1", f"kslim run report: {config.get('name', 'kslim-run')}"), ("p", context)]
    if len(rows) > 1:
        blocks += [("h2", "Baseline → final"), ("p", _summary(rows[0], rows[-1]))]
    runs = next((r.get("latency_runs") for r in rows if r.get("latency_runs")), None)
    blocks += [
        ("h2", "Stages"),
        ("table", [h for _, h in COLUMNS] + ["latency p5–p95 (ms)"],
         [[_fmt(k, r.get(k)) for k, _ in COLUMNS] + [_latency_cell(r)] for r in rows], "l" + "r" * len(COLUMNS)),
        ("p", "Accuracy: top-1 on the test split, measured on each stage's own artefact (the Keras model of a "
              "Keras stage, the `.tflite` of a TFLite stage). Bytes: the weights. Latency: batch-1 inference on "
              "this host through ai-edge-litert with XNNPACK, "
              f"{report['num_threads']} thread(s), on each stage's `.tflite` (a Keras stage's float conversion, int8 "
              "for a QAT model); every stage measured at the end of the run in "
              + (f"interleaved rounds ({runs} runs each), " if runs else "interleaved rounds, ")
              + "so that a change of the host's load affects all stages alike; median, and the 5th–95th "
                "percentile spread."),
    ]
    for r in rows:
        prof = r.get("profile")
        if isinstance(prof, dict) and prof.get("mean_ms") is not None:
            blocks.append(("p", f"Profile stage ({r['stage']}): {int(prof.get('runs') or 0)} runs on {int(prof.get('num_threads') or 1)} "
                                f"thread(s), mean {prof['mean_ms']:.3f} ms, median {prof.get('median_ms') or 0:.3f} ms, "
                                f"p5 {prof.get('p5_ms') or 0:.3f} ms, p95 {prof.get('p95_ms') or 0:.3f} ms; "
                                f"peak memory of the whole process {prof.get('peak_memory_mb') or 0:.0f} MB."))
    for stage, rel, table in layer_tables:
        blocks += _layer_blocks(table, stage, rel)
    if plots:
        blocks.append(("h2", "Plots"))
        blocks += [("img", p, p) for p in plots]
    return blocks


def render_markdown(blocks):
    out = []
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            out.append(f"# {b[1]}")
        elif kind == "h2":
            out.append(f"## {b[1]}")
        elif kind == "p":
            out.append(b[1])
        elif kind == "table":
            _, headers, rows, align = b
            out.append("| " + " | ".join(headers) + " |")
            out.append("|" + "".join("---:|" if a == "r" else "---|" for a in align))
            out += ["| " + " | ".join(row) + " |" for row in rows]
        elif kind == "img":
            out.append(f"![{b[2]}]({b[1]})")
        out.append("")
    return "\n".join(out)


def _inline_html(text):
    import re

    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


_CSS = ("body{font-family:sans-serif;max-width:1040px;margin:1em auto;padding:0 1em;line-height:1.4}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{padding:4px 10px;border-bottom:1px solid #ccc}"
        "th{background:#f4f4f4}.l{text-align:left}.r{text-align:right}img{max-width:100%}")


def render_html(blocks):
    title = next((b[1] for b in blocks if b[0] == "h1"), "kslim run report")
    body = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{_inline_html(b[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline_html(b[1])}</p>")
        elif kind == "table":
            _, headers, rows, align = b
            head = "".join(f'<th class="{a}">{html.escape(h)}</th>' for h, a in zip(headers, align))
            trs = "".join("<tr>" + "".join(f'<td class="{a}">{_inline_html(c)}</td>' for c, a in zip(row, align))
                          + "</tr>" for row in rows)
            body.append(f"<table><tr>{head}</tr>{trs}</table>")
        elif kind == "img":
            body.append(f'<p><img src="{html.escape(b[1])}" alt="{html.escape(b[2])}"></p>')
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")


def _fmt(key, v):
    if v is None:
        return "-"
    if key == "accuracy":
        return f"{100 * v:.2f} %"
    if key in ("params", "macs", "bytes"):
        return f"{int(v):,}"
    if key == "latency_ms":
        return f"{v:.3f}"
    return str(v)


def _tick(v, _pos=None):
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def plot_stages(rows, path):
    """Accuracy, size and latency per stage as three labelled bar charts (10 pt text; 1000 px wide)."""
    from matplotlib.ticker import FuncFormatter

    from kslim._plot import new_figure, save_figure

    names = [r["stage"] for r in rows]
    fig = new_figure((10, 3.8), dpi=100)
    axes = fig.subplots(1, 3)
    panels = (("accuracy", "top-1 accuracy (%)", 100.0), ("bytes", "weights (KB)", 1 / 1024),
              ("latency_ms", "latency (ms), median", 1.0))
    for ax, (key, label, scale) in zip(axes, panels):
        vals = [r[key] * scale if r.get(key) is not None else 0 for r in rows]
        err = None
        if key == "latency_ms" and all(r.get("latency_p5_ms") is not None for r in rows):
            err = [[max(0.0, v - r["latency_p5_ms"]) for v, r in zip(vals, rows)],
                   [max(0.0, r["latency_p95_ms"] - v) for v, r in zip(vals, rows)]]
        ax.bar(range(len(vals)), vals, color="#4477aa", yerr=err, capsize=3 if err else 0)
        ax.set_xticks(range(len(vals)), names, rotation=30, ha="right", fontsize=10)
        ax.set_ylabel(label, fontsize=10)
        ax.tick_params(axis="y", labelsize=10)
        ax.yaxis.set_major_formatter(FuncFormatter(_tick))  # plain numbers: no 1e6 offset, no exponent
        if key == "accuracy" and any(vals):
            lo = min(v for v in vals if v) - 5
            ax.set_ylim(max(0, lo), 100)
    axes[2].set_title("bars: p5–p95" if any(r.get("latency_p5_ms") is not None for r in rows) else "",
                      fontsize=10)
    save_figure(fig, path, dpi=100, format="png")
    return path


def write_report(run, config, rows, plots):
    """Write report.md and report.html (same content, one source) into the run directory; returns their paths.

    Includes the per-layer pruning table of every prune stage (``stages/NN_prune/layers.json``).
    """
    from kslim._io import read_json

    rel_plots = []
    try:
        plot_stages(rows, run.plots / "stages.png")
        rel_plots.append("plots/stages.png")
    except Exception:  # a plot is a nicety; never fail a run for it
        pass
    rel_plots += [p for p in plots if p not in rel_plots]
    layer_tables = []
    for i, item in enumerate(config["strategies"], start=1):
        name = next(iter(item))
        f = run.path / "stages" / f"{i:02d}_{name}" / "layers.json"
        if name == "prune" and f.is_file():
            layer_tables.append((f"{i}. prune", f"stages/{f.parent.name}/layers.csv", read_json(f, "Layer table")))
    blocks = report_blocks(config, rows, rel_plots, layer_tables, run_dir=run.path)
    md = run.path / "report.md"
    atomic_write_text(md, render_markdown(blocks))
    h = run.path / "report.html"
    atomic_write_text(h, render_html(blocks))
    return md, h
