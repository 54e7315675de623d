"""``profile(lite_model, device=...)`` -> :class:`ProfileReport` (latency statistics, per-op table, plot)."""

from dataclasses import asdict, dataclass, field

import numpy as np

from kslim._io import atomic_write_json, read_json
from kslim.errors import KslimValueError


@dataclass
class ProfileReport:
    """Latency of one model on one device. Times in milliseconds; None where the device gives none.

    ``median_ms``/``p5_ms``/``p95_ms`` need every timing (LocalDevice, SshDevice runner);
    ``benchmark_model`` (AdbDevice, SshDevice benchmark_model mode) reports mean/std/min/max only.
    ``ops`` lists per-op rows ``{"index", "op", "name", "avg_ms"}`` in execution order when
    op profiling was asked for; ``by_op_type()`` sums them per op type.
    """

    device: dict
    num_threads: int
    warmup: int
    runs: int
    mean_ms: float
    std_ms: float = None
    median_ms: float = None
    p5_ms: float = None
    p95_ms: float = None
    min_ms: float = None
    max_ms: float = None
    init_ms: float = None
    first_ms: float = None
    peak_memory_mb: float = None
    model_size: int = None
    use_xnnpack: bool = True
    use_gpu: bool = False
    tool: str = None
    ops: list = None
    timings_ms: list = field(default=None, repr=False)

    def by_op_type(self):
        """``{op type: (count, total ms)}`` from the per-op rows, most expensive first."""
        agg = {}
        for r in self.ops or ():
            c, t = agg.get(r["op"], (0, 0.0))
            agg[r["op"]] = (c + 1, t + float(r["avg_ms"]))
        return dict(sorted(agg.items(), key=lambda kv: -kv[1][1]))

    def to_dict(self):
        return asdict(self)

    def save(self, path):
        """Write the report as JSON (atomically)."""
        return atomic_write_json(path, self.to_dict())

    def __str__(self):
        def f(v):
            return "-" if v is None else f"{v:.4f}"

        dev = self.device.get("kind", "?")
        lines = [f"device {dev} ({self.device.get('model') or self.device.get('cpu') or self.device.get('host') or ''}), "
                 f"threads={self.num_threads}, xnnpack={self.use_xnnpack}, runs={self.runs}, tool={self.tool}",
                 f"  mean {f(self.mean_ms)} ms  median {f(self.median_ms)}  p5 {f(self.p5_ms)}  p95 {f(self.p95_ms)}  "
                 f"std {f(self.std_ms)}",
                 f"  init {f(self.init_ms)} ms  first {f(self.first_ms)} ms  peak memory "
                 f"{'-' if self.peak_memory_mb is None else f'{self.peak_memory_mb:.1f} MB'}"]
        if self.ops:
            lines.append("  per op type (ms): " + ", ".join(f"{k} x{c} {t:.4f}" for k, (c, t) in self.by_op_type().items()))
        return "\n".join(lines)

    def plot_by_op_type(self, path, title=None):
        """Bar chart of latency per op type (needs per-op rows) saved to ``path`` (png/pdf/svg)."""
        if not self.ops:
            raise KslimValueError("this report has no per-op latencies: profile with op_profiling=True.")
        return plot_by_op_type(self.by_op_type(), path, title or f"latency by op type ({self.device.get('kind')})")


def plot_by_op_type(by_type, path, title="latency by op type"):
    """Save a horizontal bar chart of ``{op type: (count, ms)}`` (or ``{op type: ms}``) to ``path``."""
    from kslim._plot import new_figure, save_figure

    items = [(k, v[1] if isinstance(v, (tuple, list)) else v, v[0] if isinstance(v, (tuple, list)) else None)
             for k, v in by_type.items()]
    items.sort(key=lambda kv: kv[1])
    fig = new_figure((6, 0.45 * len(items) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    ax.barh([f"{k} (x{c})" if c else k for k, _, c in items], [v for _, v, _ in items], color="#4c72b0")
    ax.set_xlabel("latency (ms)")
    ax.set_title(title)
    return save_figure(fig, path)


def profile(lite_model, device=None, num_threads=1, warmup=10, runs=50, use_xnnpack=True, use_gpu=False,
            op_profiling=False):
    """Time ``lite_model`` (a :class:`LiteModel`, ``.tflite`` path or bytes) on ``device``.

    Args:
        device: a :class:`LocalDevice` (default), :class:`AdbDevice` or :class:`SshDevice`.
        num_threads: CPU threads of the interpreter / ``benchmark_model --num_threads``.
        warmup / runs: untimed and timed ``invoke()`` calls.
        use_xnnpack / use_gpu: delegate choice (GPU only through ``benchmark_model`` on a phone).
        op_profiling: also get per-op latencies (``benchmark_model --enable_op_profiling`` tables,
            or single-op models on the host / runner).

    Returns:
        :class:`ProfileReport` with mean, median, p5/p95, std, min/max, init and first-inference time
        and peak memory where the device reports them.

    Example:
        >>> import keras
        >>> from kslim.lite import convert, profile
        >>> lm = convert(keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)]), check=False)
        >>> rep = profile(lm, runs=20)
        >>> rep.mean_ms > 0
        True
    """
    from kslim.lite.devices import Device, LocalDevice, _content

    if device is None:
        device = LocalDevice(use_xnnpack=use_xnnpack)
    if not isinstance(device, Device):
        raise KslimValueError(f"device must be a LocalDevice, AdbDevice or SshDevice, got {type(device).__name__}.")
    if int(runs) < 1 or int(warmup) < 0 or int(num_threads) < 1:
        raise KslimValueError(f"need runs >= 1, warmup >= 0 and num_threads >= 1 (got {runs}, {warmup}, {num_threads}).")
    content = _content(lite_model)
    res = device.benchmark(content, num_threads=int(num_threads), warmup=int(warmup), runs=int(runs),
                           use_xnnpack=use_xnnpack, use_gpu=use_gpu, op_profiling=op_profiling)

    def ms(v):
        return None if v is None else float(v) / 1e3

    t = np.asarray(res["timings_us"], np.float64) / 1e3 if res.get("timings_us") else None
    return ProfileReport(
        device=device.describe(), num_threads=int(num_threads), warmup=int(warmup), runs=int(runs),
        mean_ms=ms(res["avg_us"]), std_ms=ms(res.get("std_us")),
        median_ms=None if t is None else float(np.median(t)),
        p5_ms=None if t is None else float(np.percentile(t, 5)),
        p95_ms=None if t is None else float(np.percentile(t, 95)),
        min_ms=ms(res.get("min_us")), max_ms=ms(res.get("max_us")), init_ms=ms(res.get("init_us")),
        first_ms=ms(res.get("first_us")), peak_memory_mb=res.get("peak_memory_mb"), model_size=len(content),
        use_xnnpack=bool(use_xnnpack), use_gpu=bool(use_gpu), tool=res.get("tool"), ops=res.get("ops"),
        timings_ms=None if t is None else [round(float(x), 6) for x in t])


def measure_latency(model, device=None, num_threads=1, warmup=3, runs=20):
    """Median latency (ms) of one batch-1 inference of ``model`` on ``device`` (default: this CPU).

    The one latency figure of kslim: ``model`` is a Keras model (converted to float32 TFLite first,
    about a second for a small one) or anything :func:`profile` takes (a :class:`LiteModel`, a
    ``.tflite`` path or bytes). It is the default ``latency_fn`` of :func:`kslim.nas.search`; prefer
    a :class:`kslim.lite.LatencyPredictor` inside a search loop.

    >>> import keras
    >>> measure_latency(keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)]), runs=5) > 0
    True
    """
    import sys

    keras = sys.modules.get("keras")
    if keras is not None and isinstance(model, keras.Model):
        from kslim.lite.converter import convert

        model = convert(model, check=False)
    return float(profile(model, device=device, num_threads=num_threads, warmup=warmup, runs=runs).median_ms)


def measure_latencies(lites, num_threads=1, runs=50, rounds=5, warmup=5, progress=False):
    """Latency of several TFLite models measured in ``rounds`` interleaved rounds of :func:`kslim.lite.profile`.

    Round ``r`` times every model once (``ceil(runs / rounds)`` invokes each, after ``warmup``), so
    a change of the host's load during the measurement affects every model alike instead of the
    ones measured last. ``lites``: ``{key: LiteModel}`` (or anything :func:`profile` takes). Returns
    ``{key: {"median_ms", "p5_ms", "p95_ms", "runs", "round_medians_ms"}}``: the statistics over all the
    timings of a model, and its median in each round (what a paired comparison of two models uses: both
    were timed under the same load in each round).
    """
    from kslim import _interrupt, _progress
    from kslim.lite import LocalDevice, profile

    per_round = max(1, -(-int(runs) // int(rounds)))
    timings = {k: [] for k in lites}
    rounds_of = {k: [] for k in lites}
    device = LocalDevice()
    with _progress.progress(int(rounds) * len(lites), "latency", unit="measurement", enabled=progress) as bar:
        for r in range(int(rounds)):
            for k, lite in lites.items():
                rep = profile(lite, device=device, num_threads=num_threads, warmup=warmup, runs=per_round)
                timings[k].extend(rep.timings_ms or [rep.mean_ms])
                rounds_of[k].append(rep.timings_ms or [rep.mean_ms])
                bar.advance(info=f"round {r + 1}/{rounds}")
                _interrupt.check()
    out = {}
    for k, t in timings.items():
        per = [float(np.median(x)) for x in rounds_of[k]]
        t = np.asarray(t, np.float64)
        out[k] = {"median_ms": float(np.median(t)), "p5_ms": float(np.percentile(t, 5)),
                  "p95_ms": float(np.percentile(t, 95)), "runs": int(len(t)), "round_medians_ms": per}
    return out


def load_report(path):
    """Read a report written by :meth:`ProfileReport.save`; a missing or malformed file raises
    :class:`~kslim.errors.KslimFileError` naming it."""
    return ProfileReport(**read_json(path, "Profile report"))
