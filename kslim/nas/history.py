"""Trial history of a search: Pareto front and the figure (score vs cost, SA trajectory)."""

import math

from kslim._io import read_json
from kslim.errors import KslimValueError

_COST_KEYS = ("flops", "latency_ms", "params")


def load_history(path_or_summary):
    """A search summary (dict with ``"trials"``) from a dict, a JSON file, or an oracle."""
    if hasattr(path_or_summary, "summary"):
        return path_or_summary.summary()
    if isinstance(path_or_summary, dict):
        return path_or_summary
    if isinstance(path_or_summary, list):
        return {"trials": path_or_summary, "rejected": []}
    return read_json(path_or_summary, "search history")


def pareto_front(points, direction="max"):
    """Indices of the non-dominated ``(cost, score)`` points (lower cost, better score), by cost.

    >>> pareto_front([(1, 0.5), (2, 0.4), (3, 0.9), (4, 0.8)])
    [0, 2]
    """
    sign = 1.0 if direction == "max" else -1.0
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -sign * points[i][1]))
    front, best = [], -math.inf
    for i in order:
        s = sign * points[i][1]
        if s > best:
            front.append(i)
            best = s
    return front


def plot_history(history, path, cost=None, title=None):
    """Save a two-panel figure of a search to ``path`` (PNG, atomically); returns the path.

    Left: score vs cost (FLOPs, latency or params — the first the trials recorded, or ``cost``) of
    every finished trial, accepted/not accepted by the annealing, the Pareto front, the
    constraint limit, and the rejected-before-training candidates as ticks on the x axis.
    Right: the trajectory — score of each trial in order, the current (accepted) score, the best
    so far, and the temperature (log scale, right axis).
    """
    from kslim._plot import new_figure, save_figure

    summary = load_history(history)
    trials = [t for t in summary.get("trials", []) if t.get("score") is not None]
    direction = summary.get("direction", "max")
    if cost is None:
        cost = next((k for k in _COST_KEYS if any(k in t for t in trials)), None)
    elif not any(cost in t for t in trials):
        raise KslimValueError(f"plot_history: no trial recorded {cost!r}; recorded keys: "
                              f"{sorted(set().union(*[t.keys() for t in trials])) if trials else []}.")
    fig = new_figure((12, 4.5))
    ax1, ax2 = fig.subplots(1, 2)
    objective = summary.get("objective", "score")

    # ---- score vs cost
    if trials:
        xs = [t.get(cost, i) if cost else i for i, t in enumerate(trials)]
        ys = [t["score"] for t in trials]
        acc = [bool(t.get("accepted", True)) for t in trials]
        ax1.scatter([x for x, a in zip(xs, acc) if a], [y for y, a in zip(ys, acc) if a],
                    c="tab:green", label="accepted by SA", zorder=3)
        ax1.scatter([x for x, a in zip(xs, acc) if not a], [y for y, a in zip(ys, acc) if not a],
                    c="tab:gray", marker="s", label="not accepted", zorder=3)
        front = pareto_front(list(zip(xs, ys)), direction)
        ax1.step([xs[i] for i in front], [ys[i] for i in front], where="post", c="tab:red", lw=1.5,
                 label="Pareto front", zorder=2)
    rejected = [r for r in summary.get("rejected", []) if cost and cost in r.get("measures", {})]
    if rejected:
        ax1.plot([r["measures"][cost] for r in rejected], [0] * len(rejected), "|", c="tab:orange",
                 ms=12, mew=1.5, transform=ax1.get_xaxis_transform(),
                 label=f"rejected before training ({summary.get('n_rejected', len(rejected))})")
    for c in summary.get("constraints", []):
        if c["name"] == cost:
            ax1.axvline(c["limit"], ls="--", c="k", lw=1, label=f"max {cost}")
    ax1.set_xlabel(cost or "trial")
    ax1.set_ylabel(objective)
    ax1.set_title("score vs cost")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8, loc="best")

    # ---- trajectory
    if trials:
        idx = list(range(1, len(trials) + 1))
        acc = [bool(t.get("accepted", True)) for t in trials]
        ax2.scatter([i for i, a in zip(idx, acc) if a], [t["score"] for t, a in zip(trials, acc) if a],
                    c="tab:green", label="accepted", zorder=3)
        ax2.scatter([i for i, a in zip(idx, acc) if not a], [t["score"] for t, a in zip(trials, acc) if not a],
                    c="tab:gray", marker="s", label="not accepted", zorder=3)
        current, cur = [], None
        for t, a in zip(trials, acc):
            cur = t["score"] if a else cur
            current.append(cur)
        ax2.step(idx, current, where="post", c="tab:green", lw=1, alpha=0.7, label="current point")
        if all("best_score" in t for t in trials):
            ax2.plot(idx, [t["best_score"] for t in trials], c="tab:red", lw=1.5, label="best so far")
        temps = [t.get("temperature") for t in trials]
        if all(isinstance(v, (int, float)) and v > 0 for v in temps):
            ax3 = ax2.twinx()
            ax3.plot(idx, temps, c="tab:blue", ls=":", label="temperature")
            ax3.set_yscale("log")
            ax3.set_ylabel("temperature", color="tab:blue")
    ax2.set_xlabel("trial")
    ax2.set_ylabel(objective)
    ax2.set_title("simulated-annealing trajectory")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path, dpi=110, format="png")
