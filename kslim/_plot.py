"""Figures for kslim's plots: drawn by Agg outside pyplot, saved atomically.

A user's pyplot backend and open figures are never touched (no ``matplotlib.use``), and there is no
pyplot state to close afterwards.
"""

from pathlib import Path

from kslim._io import atomic_path


def new_figure(figsize, dpi=None):
    """A ``matplotlib.figure.Figure`` rendered with Agg, whatever pyplot's backend is.

    >>> fig = new_figure((4, 3))
    >>> ax = fig.add_subplot(1, 1, 1)
    >>> save_figure(fig, "/tmp/_kslim_fig.png").name
    '_kslim_fig.png'
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path, dpi=None, format=None):
    """``tight_layout`` then save ``fig`` to ``path`` atomically; format from the suffix (png if none)."""
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=format or path.suffix.lstrip(".") or "png")
    return path
