"""Resource constraints checked on a candidate model *before* it is trained.

A :class:`Constraint` measures one number on a built (untrained) Keras model and compares it with
a limit. :class:`SimulatedAnnealingOracle` builds each candidate, measures it, and rejects the
candidates over a limit without spending a trial on them (the reason is recorded).

Example:
    >>> import keras
    >>> from kslim.nas import MaxParams
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> MaxParams(100).check(model)
    (True, 10.0)
"""

import math

from kslim.errors import KslimTypeError, KslimValueError
from kslim.lite.profiling import measure_latency  # the default latency_fn; its one home is kslim.lite


class InfeasibleConstraintError(KslimValueError):
    """No candidate of the search space can meet a constraint (e.g. ``max_flops`` below the smallest model)."""


class Constraint:
    """``measure(model) <= limit``.

    Args:
        name: the quantity's name, used as the key in the trial history (``"flops"``, ``"latency_ms"``).
        limit: the largest acceptable value.
        measure: callable ``model -> float``; subclasses may override :meth:`measure` instead.
        unit: shown in messages.
    """

    def __init__(self, name, limit, measure=None, unit=""):
        if limit is None or isinstance(limit, bool) or not isinstance(limit, (int, float)):
            raise KslimTypeError(f"constraint {name!r}: limit must be a number, got {limit!r}.")
        if not math.isfinite(float(limit)) or float(limit) <= 0:
            raise KslimValueError(f"constraint {name!r}: limit must be a positive finite number, got {limit!r}.")
        if measure is not None and not callable(measure):
            raise KslimTypeError(f"constraint {name!r}: measure must be callable (model -> float), got {measure!r}.")
        self.name = str(name)
        self.limit = float(limit)
        self.unit = unit
        self._measure = measure

    def measure(self, model):
        """The constrained quantity of ``model`` (a float)."""
        if self._measure is None:
            raise NotImplementedError(f"{type(self).__name__} needs a measure function.")
        return float(self._measure(model))

    def check(self, model):
        """``(ok, value)``: whether ``model`` meets the limit, and the measured value."""
        value = float(self.measure(model))
        return value <= self.limit, value

    def describe(self, value):
        """A one-line reason for a rejection: ``"flops 1.2e+07 > max 5e+06"``."""
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.name} {value:.4g}{unit} > max {self.limit:.4g}{unit}"

    def __repr__(self):
        return f"{type(self).__name__}({self.name}<={self.limit:g}{self.unit})"


class MaxFlops(Constraint):
    """FLOPs (``kslim.analysis.flops(model).flops``, i.e. 2 x multiply-accumulates) at most ``limit``.

    Args:
        limit: the largest FLOPs count accepted.
        input_shape: passed to :func:`kslim.analysis.flops` for models without a static input shape.
    """

    def __init__(self, limit, input_shape=None):
        super().__init__("flops", limit)
        self.input_shape = input_shape

    def measure(self, model):
        from kslim.analysis import flops

        return float(flops(model, input_shape=self.input_shape).flops)


class MaxParams(Constraint):
    """Parameter count (``model.count_params()``) at most ``limit``."""

    def __init__(self, limit):
        super().__init__("params", limit)

    def measure(self, model):
        return float(model.count_params())


class MaxLatency(Constraint):
    """Latency in milliseconds at most ``limit``.

    Args:
        limit: milliseconds.
        latency_fn: any callable ``model -> ms``: a latency predictor's ``.predict``
            (``kslim.lite.LatencyPredictor(table).predict``), a measurement on a device, ...
            A :class:`kslim.lite.LatencyPredictor` itself is accepted too (its ``predict`` is used).
            Defaults to :func:`measure_latency` (TFLite float32 on this machine, 1 thread).
    """

    def __init__(self, limit, latency_fn=None):
        if latency_fn is not None and not callable(latency_fn) and callable(getattr(latency_fn, "predict", None)):
            latency_fn = latency_fn.predict  # a LatencyPredictor given directly
        if latency_fn is not None and not callable(latency_fn):
            raise KslimTypeError(f"latency_fn must be callable (model -> milliseconds), got {latency_fn!r}.")
        super().__init__("latency_ms", limit, measure=latency_fn or measure_latency, unit="ms")

    def measure(self, model):
        return latency_ms(self._measure(model))


def latency_ms(value):
    """Milliseconds of what a ``latency_fn`` returned: a number, or a report object (a predictor's
    ``total_ms`` / ``latency_ms`` / ``ms``; a :class:`kslim.lite.ProfileReport`'s median, as
    kslim.compressor's reports take, else its mean)."""
    for attr in ("total_ms", "latency_ms", "ms", "median_ms", "mean_ms"):
        if getattr(value, attr, None) is not None:
            return float(getattr(value, attr))
    return float(value)




def make_constraints(max_flops=None, max_latency=None, latency_fn=None, max_params=None, constraints=(),
                     input_shape=None):
    """The list of :class:`Constraint` for the keyword shortcuts used by :func:`kslim.nas.search`."""
    out = []
    if max_flops is not None:
        out.append(MaxFlops(max_flops, input_shape=input_shape))
    if max_latency is not None:
        out.append(MaxLatency(max_latency, latency_fn))
    elif latency_fn is not None:
        raise KslimValueError("latency_fn was given without max_latency; pass max_latency=<milliseconds>.")
    if max_params is not None:
        out.append(MaxParams(max_params))
    for c in constraints or ():
        if not isinstance(c, Constraint):
            raise KslimTypeError(f"constraints must be kslim.nas.Constraint objects, got {c!r}.")
        out.append(c)
    names = [c.name for c in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise KslimValueError(f"constraint {sorted(dup)[0]!r} given twice.")
    return out
