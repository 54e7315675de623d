"""Per-stage metrics and the run report (``report.md``, ``report.html``, plots).

Every figure is measured on the stage's own artefact: the Keras model of a Keras stage (accuracy
with ``predict``; latency on its float ``.tflite`` conversion, or int8 for a QAT model), the
``.tflite`` of a TFLite stage (accuracy and latency through ai-edge-litert).
"""

import html

import numpy as np

from kslim._io import atomic_write_text

COLUMNS = (
    ("stage", "stage"), ("kind", "artefact"), ("params", "params"), ("macs", "MACs"),
    ("bytes", "bytes (weights)"), ("accuracy", "accuracy"), ("latency_ms", "latency (ms)"),
)


def measure_latency(lite, threads=1, runs=50, warmup=5):
    """Latency of one inference of ``lite`` on the host (batch 1), as a dict of ``kslim.lite.profile``'s
    figures (``median_ms``, ``mean_ms``, ``p5_ms`` ...)."""
    from kslim.lite import LocalDevice, profile

    rep = profile(lite, device=LocalDevice(), num_threads=threads, warmup=warmup, runs=runs)
    return {k: (float(v) if isinstance(v, (int, float, np.floating)) else v) for k, v in rep.to_dict().items()
            if isinstance(v, (int, float, str, np.floating))}


def latency_value(d):
    """The headline latency (ms) of a :func:`measure_latency` dict: its median, else its mean."""
    for key in ("median_ms", "mean_ms"):
        if isinstance(d, dict) and d.get(key) is not None:
            return float(d[key])
    return None


def render_markdown(config, rows, plots):
    lines = [f"# kslim run report: {config.get('name', 'kslim-run')}", ""]
    model = config["model"]
    lines.append(f"Model: `{model.get('reference') or model.get('path')}`; data: `{config['data']['source']}`; "
                 f"seed {config['seed']}. Accuracy on the test split, measured on each stage's own artefact; "
                 "latency: median of single-image inferences on the host, through ai-edge-litert "
                 f"({config['report']['threads']} thread(s)).")
    lines += ["", "| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(k, r.get(k)) for k, _ in COLUMNS) + " |")
    base = rows[0] if rows else None
    if base and len(rows) > 1:
        last = rows[-1]
        lines += ["", "Baseline -> final: "
                  + ", ".join(_delta(k, base.get(k), last.get(k)) for k in ("accuracy", "bytes", "latency_ms", "macs")
                              if base.get(k) is not None and last.get(k) is not None)]
    for p in plots:
        lines += ["", f"![{p}]({p})"]
    return "\n".join(lines) + "\n"


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


def _delta(key, a, b):
    if key == "accuracy":
        return f"accuracy {100 * (b - a):+.2f} pt"
    if a:
        return f"{key} {100 * (b - a) / a:+.1f} %"
    return f"{key} -"


def render_html(config, rows, plots):
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(k, r.get(k)))}</td>" for k, _ in COLUMNS) + "</tr>" for r in rows
    )
    imgs = "".join(f'<p><img src="{html.escape(p)}" style="max-width:720px"></p>' for p in plots)
    title = html.escape(f"kslim run report: {config.get('name', 'kslim-run')}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
            "<style>body{font-family:sans-serif}td,th{padding:4px 10px;border-bottom:1px solid #ccc;"
            "text-align:right}</style></head>"
            f"<body><h1>{title}</h1><table><tr>{head}</tr>{body}</table>{imgs}</body></html>\n")


def plot_stages(rows, path):
    from kslim._plot import new_figure, save_figure

    names = [r["stage"] for r in rows]
    fig = new_figure((12, 3.5))
    axes = fig.subplots(1, 3)
    for ax, key, label in zip(axes, ("accuracy", "bytes", "latency_ms"), ("accuracy", "bytes", "latency (ms)")):
        vals = [r.get(key) if r.get(key) is not None else 0 for r in rows]
        ax.bar(range(len(vals)), vals, color="#4477aa")
        ax.set_xticks(range(len(vals)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(label)
        if key == "accuracy" and any(vals):
            lo = min(v for v in vals if v) - 0.05
            ax.set_ylim(max(0, lo), 1)
    save_figure(fig, path, dpi=90, format="png")
    return path


def write_report(run, config, rows, plots):
    """Write report.md and report.html into the run directory; returns their paths."""
    rel_plots = []
    try:
        plot_stages(rows, run.plots / "stages.png")
        rel_plots.append("plots/stages.png")
    except Exception:
        pass
    rel_plots += [p for p in plots if p not in rel_plots]
    md = run.path / "report.md"
    atomic_write_text(md, render_markdown(config, rows, rel_plots))
    h = run.path / "report.html"
    atomic_write_text(h, render_html(config, rows, rel_plots))
    return md, h
