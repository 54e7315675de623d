"""Activation-range calibration algorithms (pure numpy), as in PaddleSlim's post-training quantization.

Every algorithm turns the statistics of one tensor, seen over calibration batches, into a clipping
threshold ``T`` on ``|x|``:

* ``"abs_max"``: ``max |x|`` over all batches (no clipping at all);
* ``"avg"``: the mean over batches of each batch's ``max |x|``;
* ``"hist"``: the ``hist_percent`` percentile of the histogram of ``|x|``;
* ``"KL"``: TensorRT's entropy calibration: the threshold whose quantized distribution (``levels``
  buckets) has the smallest KL divergence from the clipped reference distribution (never clipping
  more than 0.1 % of the values, see :func:`kl_threshold`);
* ``"mse"``: the threshold that minimises the expected quantization error
  ``E[(x - Q_T(x))^2]`` (clipping error above ``T`` + uniform rounding error ``step^2 / 12`` below).

The threshold is then mapped onto TFLite's asymmetric int8 grid by :meth:`TensorObserver.range`:
``lo = max(min(x), -T)``, ``hi = min(max(x), T)``, widened to contain 0 (TFLite requires 0 to be
exactly representable), so the tensor's scale is ``(hi - lo) / 255``.

The algorithms are a registry (:func:`register_calibrator`): a user's own algorithm is a function of a
:class:`TensorObserver` returning ``T``, registered once by name and then accepted wherever ``algo`` is
(:func:`kslim.quant.quant_post_static`, :func:`calibrate_range`). ``ALGOS`` lists the built-in ones, the
choices of the CLI's ``--algo`` and of the YAML schema (read before TensorFlow is imported).

Exact zeros (ReLU outputs are mostly zeros) are exactly representable whatever the range, so they
are left out of the histograms: they would otherwise dominate ``hist``/``KL``/``mse`` without
telling anything about where to clip.

Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(8, 1000)).astype("float32")
    >>> obs = TensorObserver()
    >>> for b in x: obs.update_range(b)
    >>> for b in x: obs.update_hist(b)
    >>> obs.threshold("abs_max") == float(np.abs(x).max())
    True
    >>> obs.threshold("KL") < obs.threshold("abs_max")
    True

A user's algorithm (here: 90 % of the largest value), registered by name:

    >>> _ = register_calibrator("abs_max_90", lambda obs, **kw: 0.9 * obs.abs_max)
    >>> calibrate_range([np.array([-1.0, 0.5, 2.0])], algo="abs_max_90")
    (-1.0, 1.8)
    >>> unregister_calibrator("abs_max_90")
"""

from dataclasses import dataclass
from typing import Callable

import numpy as np

from kslim.errors import KslimValueError

#: the built-in algorithms (a literal: the CLI and the YAML schema read it from the source)
ALGOS = ("abs_max", "avg", "hist", "KL", "mse")
#: activation widths a calibrated tensor can have in a TFLite model (int8, or int16 in int16x8 models)
ACTIVATION_BITS = (8, 16)


@dataclass(frozen=True)
class Calibrator:
    """A registered calibration algorithm: ``threshold(observer, hist_percent=...) -> T`` on ``|x|``;
    ``histogram``: it reads ``observer.hist``/``observer.edges`` (the second calibration pass runs)."""

    name: str
    threshold: Callable
    histogram: bool = False


_CALIBRATORS = {}


def register_calibrator(name, threshold, histogram=False):
    """Register ``threshold(observer, **options) -> T`` (a :class:`TensorObserver`; options: ``hist_percent``)
    as calibration algorithm ``name``; ``histogram=True`` when it reads the histogram. Returns the
    :class:`Calibrator`. A built-in name cannot be replaced."""
    if not isinstance(name, str) or not name:
        raise KslimValueError(f"register_calibrator: name must be a non-empty string, got {name!r}.")
    if name in ALGOS and name in _CALIBRATORS:
        raise KslimValueError(f"register_calibrator: {name!r} is a built-in calibration algorithm; pick another name.")
    if not callable(threshold):
        raise KslimValueError(f"register_calibrator: threshold for {name!r} must be callable, got {threshold!r}.")
    _CALIBRATORS[name] = Calibrator(name, threshold, bool(histogram))
    return _CALIBRATORS[name]


def unregister_calibrator(name):
    """Remove a user's calibration algorithm (the built-in ones stay)."""
    if name in ALGOS:
        raise KslimValueError(f"unregister_calibrator: {name!r} is built in.")
    _CALIBRATORS.pop(name, None)


def calibrator_names():
    """Registered algorithm names: the built-in ones (:data:`ALGOS`) first, then the user's."""
    return tuple(_CALIBRATORS)


def calibrator(algo):
    """The :class:`Calibrator` registered as ``algo``, else raise listing the allowed ones."""
    if algo not in _CALIBRATORS:
        raise KslimValueError(f"Unknown calibration algo {algo!r}; allowed: {', '.join(_CALIBRATORS)} "
                              f"(or register your own with kslim.quant.calibration.register_calibrator).")
    return _CALIBRATORS[algo]


def check_algo(algo):
    """Return ``algo`` if it is a registered calibration algorithm, else raise listing the allowed ones."""
    return calibrator(algo).name


def needs_histogram(algo):
    """Whether ``algo`` reads the histogram of ``|x|`` (a second pass over the calibration data)."""
    return calibrator(algo).histogram


def hist_threshold(hist, edges, percent=0.9999):
    """The ``percent`` percentile of the distribution described by ``hist`` over bins ``edges``."""
    if not 0.0 < percent <= 1.0:
        raise KslimValueError(f"hist_percent must be in (0, 1], got {percent!r}.")
    hist = np.asarray(hist, np.float64)
    total = hist.sum()
    if total <= 0:
        return float(edges[-1])
    cdf = np.cumsum(hist) / total
    idx = int(np.searchsorted(cdf, percent, side="left"))
    idx = min(idx, len(hist) - 1)
    return float(edges[idx + 1])


def kl_threshold(hist, edges, levels=128, min_coverage=0.999):
    """TensorRT entropy calibration on a histogram of ``|x|``; returns the threshold.

    For every candidate cut ``i >= levels`` bins, the reference distribution ``P`` is ``hist[:i]``
    with the outliers ``hist[i:]`` added to its last bin, and the candidate ``Q`` is ``hist[:i]``
    merged into ``levels`` equal quantization cells then spread back uniformly over each cell.
    The cut with the smallest ``KL(P || Q)`` wins.

    kslim departs from TensorRT in two ways. Cuts below the ``min_coverage`` quantile of the
    histogram are not considered (at most 0.1 % of the values are clipped by default;
    ``min_coverage=0`` is TensorRT's search): activations of images with a constant background put
    large spikes in the histogram (every background patch gives the same value), and a cut that lands
    on a spike makes the clipped mass look free (``P`` and ``Q`` both have a large last bin), so the
    plain search may clip 10 % of the values of a ReLU6 layer and wreck the accuracy. And unlike
    TensorRT's integer bucketing (``i // levels`` bins per bucket), a bin straddling two cells is split
    between them by overlap: with integer bucketing, cuts just above ``levels`` bins give buckets of 1 or 2 bins in an irregular pattern,
    and the KL curve shows narrow false minima there (seen on ReLU6 activations).
    """
    hist = np.asarray(hist, np.float64)
    nbins = len(hist)
    levels = int(levels)
    if nbins <= levels or hist.sum() <= 0:
        return float(edges[-1])
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # tail[i] = sum(hist[i:])
    cum = np.concatenate([[0.0], np.cumsum(hist)])  # CDF at bin edges (bin units)

    def kl_at(i):
        p = hist[:i].copy()
        p[-1] += tail[i]
        cells = np.linspace(0.0, i, levels + 1)  # quantization cells, in bin units
        at_cells = np.interp(cells, np.arange(i + 1), cum[: i + 1])  # mass below each cell edge
        q = np.diff(np.interp(np.arange(i + 1), cells, at_cells))  # cell mass spread back uniformly
        if q.sum() <= 0:
            return np.inf
        p, q = p / p.sum(), q / q.sum()
        mask = p > 0
        return float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))

    floor = int(np.searchsorted(np.cumsum(hist) / hist.sum(), min_coverage)) + 1 if min_coverage > 0 else 0
    cands = np.arange(max(levels, min(floor, nbins)), nbins + 1)
    cands = cands[(cands == nbins) | (hist[np.minimum(cands, nbins) - 1] > 0)]
    if len(cands) > 1024:  # fine histograms: 1024 cuts spread evenly over the valid ones
        cands = cands[np.unique(np.linspace(0, len(cands) - 1, 1024).astype(int))]
    best_kl, best_i = np.inf, nbins
    for i in cands:
        v = kl_at(int(i))
        if v < best_kl:
            best_kl, best_i = v, int(i)
    return float(edges[best_i])


def mse_threshold(hist, edges, levels=128):
    """Threshold minimising the expected squared quantization error of ``|x|`` (histogram model).

    ``levels`` quantization steps cover ``[0, T]`` (128 for a signed tensor on a symmetric
    int8 grid, 255 for a non-negative one); values above ``T`` are clipped to ``T``.
    """
    hist = np.asarray(hist, np.float64)
    edges = np.asarray(edges, np.float64)
    centers = 0.5 * (edges[:-1] + edges[1:])
    cand = edges[1:]  # candidate thresholds: every upper bin edge
    # suffix sums over bins j >= k+1 (values strictly above cand[k]) of h, h*c, h*c^2
    s0 = np.concatenate([np.cumsum(hist[::-1])[::-1][1:], [0.0]])
    s1 = np.concatenate([np.cumsum((hist * centers)[::-1])[::-1][1:], [0.0]])
    s2 = np.concatenate([np.cumsum((hist * centers ** 2)[::-1])[::-1][1:], [0.0]])
    inside = hist.sum() - s0
    step = cand / float(levels)
    err = inside * step ** 2 / 12.0 + (s2 - 2 * cand * s1 + cand ** 2 * s0)
    return float(cand[int(np.argmin(err))])


class TensorObserver:
    """Statistics of one tensor over calibration batches (two passes for the histogram algorithms).

    Pass 1 (:meth:`update_range`) records min, max, each batch's ``max |x|`` and 99.9th
    percentile; pass 2 (:meth:`update_hist`) fills a histogram of the non-zero ``|x|`` over
    ``[0, max |x|]``, needed by ``hist``, ``KL`` and ``mse``. It has ``bins`` bins, or more
    (up to ``64 * bins``) when a few outliers would leave the bulk of the distribution (below the
    median 99.9th percentile) fewer than 512 bins: TensorRT's KL search cannot cut below ``levels`` bins.

    Args:
        name: the tensor's name, used in error messages.
        bins: histogram bins.
        bits: the integer width the tensor is quantized to: 8 (TFLite's asymmetric int8) or 16
            (int16 activations, symmetric with zero point 0); it sets :attr:`levels`.
    """

    def __init__(self, name="tensor", bins=2048, bits=8):
        if int(bins) < 16:
            raise KslimValueError(f"bins must be >= 16, got {bins!r}.")
        if bits not in ACTIVATION_BITS:
            raise KslimValueError(f"Activation bits of tensor {name!r} must be one of {ACTIVATION_BITS}, got {bits!r}.")
        self.name = name
        self.bins = int(bins)
        self.bits = int(bits)
        self.min = np.inf
        self.max = -np.inf
        self.batch_abs_max = []
        self.batch_percentile = []
        self.hist = None
        self.edges = None

    @property
    def abs_max(self):
        return float(max(abs(self.min), abs(self.max)))

    @property
    def signed(self):
        """Whether the tensor takes both signs (selects 128 rather than 255 levels on ``[0, T]``)."""
        return self.min < 0 < self.max

    def update_range(self, x):
        x = np.asarray(x, np.float32)
        if x.size == 0:
            return
        if not np.all(np.isfinite(x)):
            raise KslimValueError(
                f"Tensor {self.name!r} has NaN/inf values during calibration: check the model "
                "and the calibration data."
            )
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        a = np.abs(x).ravel()
        self.batch_abs_max.append(float(a.max()))
        a = a[:: max(1, a.size // 200_000)]
        a = a[a > 0]
        self.batch_percentile.append(float(np.quantile(a, 0.999)) if a.size else 0.0)

    def update_hist(self, x):
        if not self.batch_abs_max:
            raise KslimValueError(f"update_hist() before update_range() for tensor {self.name!r}.")
        top = self.abs_max
        if self.edges is None:
            nbins = self.bins
            bulk = float(np.median(self.batch_percentile))
            if bulk > 0 and top / bulk * 512 > nbins:  # few huge outliers: refine so the bulk gets 512 bins
                nbins = min(int(np.ceil(top / bulk * 512)), 64 * self.bins)
            self.edges = np.linspace(0.0, top if top > 0 else 1.0, nbins + 1)
            self.hist = np.zeros(nbins, np.float64)
        a = np.abs(np.asarray(x, np.float32)).ravel()
        a = a[a > 0]
        if a.size:
            h, _ = np.histogram(np.minimum(a, self.edges[-1]), bins=self.edges)
            self.hist += h

    @property
    def levels(self):
        """Quantization steps on ``[0, T]``: at 8 bits 128 for a signed tensor, 255 for a non-negative
        one (asymmetric grid); at 16 bits 32768 whatever the sign (symmetric grid, zero point 0)."""
        if self.bits == 16:
            return 32768
        return 128 if self.signed else 255

    def threshold(self, algo="KL", hist_percent=0.9999):
        """The clipping threshold on ``|x|`` chosen by ``algo`` (a registered calibrator)."""
        cal = calibrator(algo)
        if not self.batch_abs_max:
            raise KslimValueError(f"Tensor {self.name!r} saw no calibration data.")
        if cal.histogram:
            if self.hist is None:
                raise KslimValueError(f"algo {algo!r} needs the histogram pass (update_hist) for {self.name!r}.")
            if self.hist.sum() == 0:  # all zeros
                return self.abs_max
        t = float(cal.threshold(self, hist_percent=hist_percent))
        if not np.isfinite(t) or t < 0:
            raise KslimValueError(f"Calibration algo {algo!r} returned threshold {t!r} for tensor {self.name!r}; "
                                  f"it must be a finite number >= 0.")
        return t

    def range(self, algo="KL", hist_percent=0.9999):
        """``(lo, hi)`` to enforce on TFLite's asymmetric int8 grid: ``[-T, T]`` ∩ ``[min, max]`` ∪ {0}."""
        t = self.threshold(algo, hist_percent)
        lo = min(0.0, max(self.min, -t))
        hi = max(0.0, min(self.max, t))
        if hi - lo <= 0:
            hi = lo + 1e-6
        return float(lo), float(hi)


def calibrate_range(batches, algo="KL", bins=2048, hist_percent=0.9999, name="tensor"):
    """``(lo, hi)`` chosen by ``algo`` for a tensor observed as the arrays in ``batches``.

    Example:
        >>> import numpy as np
        >>> calibrate_range([np.array([-1.0, 0.5, 2.0])], algo="abs_max")
        (-1.0, 2.0)
    """
    check_algo(algo)
    batches = [np.asarray(b, np.float32) for b in batches]
    if not batches:
        raise KslimValueError(f"No calibration batches for {name!r}.")
    obs = TensorObserver(name, bins)
    for b in batches:
        obs.update_range(b)
    if needs_histogram(algo):
        for b in batches:
            obs.update_hist(b)
    return obs.range(algo, hist_percent)


for _name, _fn, _hist in (
        ("abs_max", lambda obs, **kw: obs.abs_max, False),
        ("avg", lambda obs, **kw: float(np.mean(obs.batch_abs_max)), False),
        ("hist", lambda obs, hist_percent=0.9999, **kw: hist_threshold(obs.hist, obs.edges, hist_percent), True),
        ("KL", lambda obs, **kw: kl_threshold(obs.hist, obs.edges, obs.levels), True),
        ("mse", lambda obs, **kw: mse_threshold(obs.hist, obs.edges, obs.levels), True)):
    register_calibrator(_name, _fn, histogram=_hist)
del _name, _fn, _hist
