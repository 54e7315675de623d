"""Plot of sensitivity curves (matplotlib, Agg backend: works without a display)."""

from pathlib import Path


def plot_sensitivity(sens, path, title=None, max_legend=20):
    """Save a figure of ``loss`` against ``ratio`` for every channel group of ``sens``.

    Args:
        sens: ``{group: {ratio: loss}}`` from :func:`kslim.prune.sensitivity`, or a checkpoint path.
        path: image file (``.png``, ``.svg``, ``.pdf`` ...), written atomically.
        title: figure title.
        max_legend: groups beyond this count are drawn without a legend entry.

    Returns:
        the path.

    Example:
        >>> plot_sensitivity({"conv1": {0.2: 0.01, 0.5: 0.1}}, "/tmp/_kslim_sens.png").name
        '_kslim_sens.png'
    """
    from kslim._plot import new_figure, save_figure
    from kslim.prune.sensitivity import _check_sens, load_sensitivity

    sens = load_sensitivity(sens) if isinstance(sens, (str, Path)) else _check_sens(sens)
    path = Path(path)
    fig = new_figure((8, 5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for i, (group, curve) in enumerate(sens.items()):
        pts = sorted(curve.items())
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", markersize=3,
                label=group if i < max_legend else None)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("pruning ratio (fraction of channels removed)")
    ax.set_ylabel("relative metric loss (%)")
    ax.set_title(title or "Filter pruning sensitivity")
    ax.grid(True, alpha=0.3)
    if sens:
        ax.legend(fontsize="x-small", ncol=2 if len(sens) > 10 else 1, loc="upper left")
    return save_figure(fig, path)
