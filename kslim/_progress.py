"""Progress a person can follow: one-line notes, stage headers, duration estimates, progress bars.

For every kslim module with a long loop (sensitivity, calibration, search, latency tables, the
pipeline). Everything goes to ``sys.stdout`` (where Keras prints its epochs), flushed at once, so
the lines interleave correctly with Keras' own output. On a terminal, :func:`progress` draws a
`rich <https://rich.readthedocs.io>`_ bar; when stdout is a file or a pipe (CI logs, ``| tee``,
``> log.txt``) it prints plain lines instead: no colour codes, no carriage returns, at most one line
per 10 % and 5 s (and at least one per minute), so a log file stays readable.

Use it like this::

    from kslim import _progress

    _progress.note("training reference model vgg for 3 epochs, " + _progress.about(seconds))
    with _progress.progress(len(todo), "sensitivity", unit="evaluation") as bar:
        for group, ratio in todo:
            loss = ...
            bar.advance(info=f"{group} at {ratio:g}: relative accuracy loss {loss:.3f}")

``info`` is free text shown next to the bar (say what the value is: "relative accuracy loss", not
"loss"). ``progress(..., enabled=False)`` gives a bar that prints nothing (for ``verbose=0``).
"""

import sys
import time
from contextlib import contextmanager

__all__ = ["about", "estimate_fit_seconds", "is_terminal", "note", "progress", "stage_header"]


def is_terminal(stream=None):
    """Whether ``stream`` (default ``sys.stdout``) is an interactive terminal."""
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced by an object without isatty
        return False


def note(message, stream=None):
    """Print one line of progress (flushed at once, so it is not held back behind Keras' output)."""
    stream = sys.stdout if stream is None else stream
    print(message, file=stream, flush=True)


def stage_header(index, total, name, text=""):
    """``"[2/5] distill: fine-tuning ... about 2 min"`` (``index`` counts from 1)."""
    return f"[{index}/{total}] {name}" + (f": {text}" if text else "")


def about(seconds):
    """A rough duration for a person: ``"about 40 s"``, ``"about 3 min"``, ``"about 1.5 h"``.

    >>> about(4), about(42), about(170), about(5400)
    ('a few seconds', 'about 40 s', 'about 3 min', 'about 1.5 h')
    """
    s = float(seconds)
    if s < 10:
        return "a few seconds"
    if s < 60:
        return f"about {int(round(s, -1))} s"
    if s < 3600:
        return f"about {max(1, round(s / 60))} min"
    return f"about {s / 3600:.1f} h"


def estimate_fit_seconds(model, x, steps_per_epoch, epochs, backward_factor=3.0, overhead=3.0):
    """Rough wall time of ``epochs`` x ``steps_per_epoch`` training steps of ``model`` on this host.

    Times eager forward passes on one sample and on the batch ``x`` (best of two, after one untimed
    call each) to split the fixed per-call cost from the per-sample cost; a training step counts
    ``backward_factor`` times the batch's compute (forward + backward + update) plus half the fixed
    cost (``fit`` runs a compiled graph, cheaper per call than eager), and ``overhead`` seconds go
    to tracing the training function. Within about 30 % of the real step time on the reference
    models. The passes run with ``training=False``: no weight, BatchNormalization statistic or
    random state changes. Returns ``None`` if the model cannot be called on ``x``.
    """
    def best_of(xb):
        model(xb, training=False)
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            model(xb, training=False)
            best = min(best, time.perf_counter() - t0)
        return best

    try:
        n = len(x)
        t_batch = best_of(x)
        t_one = best_of(x[:1]) if n > 1 else t_batch
    except Exception:  # an estimate is informative only; never fail training for it
        return None
    per_sample = max(t_batch - t_one, 0.0) / (n - 1) if n > 1 else t_batch
    step = backward_factor * per_sample * n + 0.5 * t_one
    return overhead + step * int(steps_per_epoch) * int(epochs)


class _Bar:
    """What :func:`progress` yields: call :meth:`advance` once per finished item."""

    def __init__(self, total, description, unit, stream, enabled):
        self.total, self.description, self.unit = total, description, unit
        self.stream = sys.stdout if stream is None else stream
        self.enabled = enabled
        self.done = 0
        self.info = ""
        self._t0 = time.monotonic()
        self._last_line = self._t0
        self._last_decile = -1
        self._rich = None
        self._task = None

    # --------------------------------------------------------------- plain text
    def _line(self):
        n = f"{self.done}/{self.total}" if self.total else str(self.done)
        pct = f" ({100 * self.done / self.total:.0f} %)" if self.total else ""
        elapsed = time.monotonic() - self._t0
        left = ""
        if self.total and 0 < self.done < self.total:
            left = f", {about(elapsed / self.done * (self.total - self.done))} left"
        info = f" - {self.info}" if self.info else ""
        return f"{self.description}: {n} {self.unit}s{pct}, {elapsed:.0f} s elapsed{left}{info}"

    def _plain(self, final=False):
        now = time.monotonic()
        decile = int(10 * self.done / self.total) if self.total else -1
        if final or (decile > self._last_decile and now - self._last_line >= 5) or now - self._last_line >= 60:
            self._last_decile, self._last_line = decile, now
            note(self._line(), self.stream)

    # --------------------------------------------------------------- API
    def start(self):
        if not self.enabled:
            return self
        if is_terminal(self.stream):
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._rich = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn(f"{self.unit}s"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                console=Console(file=self.stream), transient=False)
            self._rich.start()
            self._task = self._rich.add_task(self.description, total=self.total, info="")
        else:
            note(f"{self.description}: {self.total or '?'} {self.unit}s", self.stream)
        return self

    def advance(self, n=1, info=None):
        """Count ``n`` more finished items; ``info`` (text) replaces the note shown next to the bar."""
        self.done += n
        if info is not None:
            self.info = str(info)
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.update(self._task, advance=n, info=self.info)
        elif self.total is None or self.done < self.total:
            self._plain()

    def close(self):
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.stop()
        else:
            self._plain(final=True)


@contextmanager
def progress(total, description, unit="step", stream=None, enabled=True):
    """A progress bar for a loop of ``total`` items (``None``: unknown); yields a bar with ``advance()``.

    A rich bar on a terminal, plain lines otherwise (see the module docstring).

    >>> import io
    >>> out = io.StringIO()
    >>> with progress(2, "demo", unit="item", stream=out) as bar:
    ...     bar.advance(info="first")
    ...     bar.advance(info="second")
    >>> print(out.getvalue().splitlines()[-1].split(",")[0])
    demo: 2/2 items (100 %)
    """
    bar = _Bar(total, description, unit, stream, enabled).start()
    try:
        yield bar
    finally:
        bar.close()
