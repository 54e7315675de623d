"""Mixed-precision post-training quantization: a recipe per layer, chosen under a size or latency budget.

Each Conv/Dense/DepthwiseConv layer takes one of a few LiteRT recipes (:mod:`kslim.quant.litert`):
``"int8"`` (int8 weights and activations), ``"int8x4"`` (int4 weights, int8 activations) or
``"int16x8"`` (int8 weights, int16 activations), or ``"float32"`` (left float, when asked for). As in AIMET's automatic mixed precision and HAWQ:

1. **Sensitivity.** For every layer and every candidate recipe, the model is quantized with that layer
   alone moved off the base recipe, and the error of its output against the float Keras model is
   measured on the calibration samples (``mean((y_q - y)^2) / mean(y^2)`` on the first output). The
   layer's sensitivity to a recipe is that error minus the all-base error (negative: the recipe helps).
2. **Cost.** The same single-layer models give each choice's cost: the ``.tflite`` bytes it adds or
   saves (measured on the file) and, under a latency budget, the milliseconds it adds (measured by
   ``latency_fn``; by default batch-1 on this CPU with :func:`kslim.lite.measure_latency`).
3. **Choice.** A multiple-choice knapsack (dynamic programming over the budgets, discretised in
   ``resolution`` steps) minimises the summed sensitivity under every budget given, assuming errors and
   costs add up over layers.
4. **Export.** The chosen mix is quantized once more and *measured*: its size, latency and error are
   those of the final file, and :attr:`MixedPrecisionResult.met` says whether the measured figures hold
   the budgets (the additive model is a prediction; both are reported).

Only the costs that have a budget are weighed: under a size budget alone int16 activations cost
nothing (their price is latency), so the default candidates follow the budgets: ``int8x4`` with a size
budget, ``int16x8`` with a latency budget, both with both.

Example:
    >>> import keras, numpy as np
    >>> keras.utils.set_random_seed(0)
    >>> m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
    ...                       keras.layers.Flatten(), keras.layers.Dense(32, activation="relu", name="fc"),
    ...                       keras.layers.Dense(4, name="logits")])
    >>> x = np.random.default_rng(0).random((32, 8, 8, 1), dtype=np.float32)
    >>> res = quant_post_mixed(m, x, size_budget=0.85)
    >>> res.met and res.size_bytes <= res.size_budget_bytes
    True
    >>> sorted(set(res.choices.values()) | {"int8"}) <= ["int8", "int8x4"]
    True
"""

import itertools
import re
from dataclasses import dataclass

import numpy as np

from kslim.errors import KslimTypeError, KslimValueError, ModelError

#: the recipes a layer can take (names of :data:`kslim.quant.litert.RECIPES`): integer compute, or float
MIXED_RECIPES = ("int8", "int8x4", "int16x8", "float32")
_WEIGHT_LAYERS = ("Conv1D", "Conv2D", "DepthwiseConv2D", "Dense")
_OUTPUT = r"^StatefulPartitionedCall(_\d+)?:0(;|$)"  # the output of a single-output model (LiteRT adds a ";")


@dataclass(frozen=True)
class LayerOption:
    """One (layer, recipe) choice as measured alone: ``error_delta`` (output error minus the all-base
    error), ``bytes_delta`` and ``latency_delta_ms`` (None without a latency budget)."""

    layer: str
    recipe: str
    error_delta: float
    bytes_delta: int
    latency_delta_ms: float = None


@dataclass
class MixedPrecisionResult:
    """What :func:`quant_post_mixed` chose and measured.

    Attributes:
        lite: the exported :class:`kslim.lite.LiteModel`.
        choices: ``{layer: recipe}`` of the layers moved off ``base`` (the others keep it).
        base: the recipe of every other op.
        rules: the ``(pattern, recipe)`` rules exported (``quant_post_litert(model, rules, ...)`` rebuilds it).
        options: every :class:`LayerOption` measured.
        skipped: ``{layer: reason}`` of the layers that keep ``base`` whatever the budget.
        size_bytes, latency_ms, error: measured on the exported file (latency: None without a budget).
        predicted_bytes, predicted_latency_ms, predicted_error: the additive model's figures.
        base_bytes, base_latency_ms, base_error: the all-``base`` model's.
        size_budget_bytes, latency_budget_ms: the budgets in absolute units (None: not given).
        met: the measured figures hold every budget.
    """

    lite: object
    choices: dict
    base: str
    rules: list
    options: list
    skipped: dict
    size_bytes: int
    latency_ms: float
    error: float
    predicted_bytes: int
    predicted_latency_ms: float
    predicted_error: float
    base_bytes: int
    base_latency_ms: float
    base_error: float
    size_budget_bytes: int = None
    latency_budget_ms: float = None
    met: bool = False

    def summary(self):
        """One line per moved layer and the totals, for logs."""
        lines = [f"{layer}: {recipe}" for layer, recipe in self.choices.items()] or [f"every layer: {self.base}"]
        lines.append(f"size {self.size_bytes} B (budget {self.size_budget_bytes}, base {self.base_bytes}); "
                     f"error {self.error:.3g} (base {self.base_error:.3g})"
                     + (f"; latency {self.latency_ms:.3f} ms (budget {self.latency_budget_ms:.3f})"
                        if self.latency_budget_ms is not None else "") + f"; met: {self.met}")
        return "\n".join(lines)


def output_error(model_outputs, lite, samples):
    """``mean((y_q - y)^2) / mean(y^2)`` of ``lite``'s first output against the float outputs."""
    y = np.asarray(model_outputs, np.float64)
    yq = np.asarray(lite.predict(samples), np.float64).reshape(y.shape)
    return float(np.mean((yq - y) ** 2) / max(np.mean(y ** 2), 1e-30))


def solve_knapsack(options, budgets, resolution=200):
    """Multiple-choice knapsack: one option per group minimising the summed ``value`` with every summed
    cost within its budget.

    Args:
        options: ``{group: [(value, (cost_1, ..., cost_k)), ...]}``; costs may be negative (savings).
        budgets: ``(budget_1, ..., budget_k)``: the summed cost each dimension may reach.
        resolution: steps per cost dimension (costs are rounded up to them, so a plan found holds the
            budget exactly; a finer grid finds plans closer to it).

    Returns:
        ``{group: index of the chosen option}``, or None when no choice holds the budgets.

    Example:
        >>> solve_knapsack({"a": [(0.0, (4,)), (1.0, (1,))], "b": [(0.0, (4,)), (3.0, (1,))]}, (5,))
        {'a': 1, 'b': 0}
    """
    groups = list(options)
    k = len(budgets)
    if not groups:
        return {}
    if k == 0:
        return {g: int(np.argmin([v for v, _ in options[g]])) for g in groups}
    costs = {g: np.array([c for _, c in options[g]], np.float64).reshape(len(options[g]), k) for g in groups}
    # shift each dimension so every cost is >= 0: the budget moves by the sum of the group minima
    low = sum(costs[g].min(axis=0) for g in groups)
    room = np.asarray(budgets, np.float64) - low
    if np.any(room < 0):
        return None
    span = np.array([max(sum(costs[g].max(axis=0)[d] - costs[g].min(axis=0)[d] for g in groups), 1e-12)
                     for d in range(k)])
    step = np.maximum(np.minimum(room, span), 1e-12) / resolution
    size = tuple(int(min(resolution, np.floor(room[d] / step[d] + 1e-9))) + 1 for d in range(k))
    best = np.full(size, np.inf)
    best[(0,) * k] = 0.0
    picks = []
    for g in groups:
        shifted = costs[g] - costs[g].min(axis=0)
        units = np.ceil(shifted / step - 1e-9).astype(int)
        new = np.full(size, np.inf)
        arg = np.full(size, -1, int)
        for i, (value, _) in enumerate(options[g]):
            u = tuple(units[i])
            if any(u[d] >= size[d] for d in range(k)):
                continue
            src = best[tuple(slice(0, size[d] - u[d]) for d in range(k))] + value
            dst = tuple(slice(u[d], size[d]) for d in range(k))
            better = src < new[dst]
            new[dst] = np.where(better, src, new[dst])
            arg[dst] = np.where(better, i, arg[dst])
        best = new
        picks.append((units, arg))
    if not np.isfinite(best).any():
        return None
    cell = np.unravel_index(int(np.argmin(best)), size)
    chosen = {}
    for g, (units, arg) in zip(reversed(groups), reversed(picks)):
        i = int(arg[cell])
        chosen[g] = i
        cell = tuple(int(cell[d] - units[i][d]) for d in range(k))
    return {g: chosen[g] for g in groups}


def _weight_layers(model, layers):
    """``{name: layer}`` of the Conv/Dense/Depthwise layers to choose for (all of them by default)."""
    from kslim.graph import keras_graph as kg

    paths, _ = kg.leaf_layers(model)
    found = {path: layer for path, layer in paths.items() if type(layer).__name__ in _WEIGHT_LAYERS}
    if layers is None:
        if not found:
            raise ModelError(f"quant_post_mixed(): model {model.name!r} has no Conv1D/Conv2D/DepthwiseConv2D/Dense "
                             "layer to give a recipe to.")
        return found
    if isinstance(layers, str):
        layers = [layers]
    for name in layers:
        if name not in found:
            raise KslimValueError(f"quant_post_mixed(layers=...): {name!r} is not a Conv1D/Conv2D/DepthwiseConv2D/"
                                  f"Dense layer of {model.name!r}; these are: {', '.join(sorted(found))}.")
    return {n: found[n] for n in layers}


def _budget(value, base, field, unit):
    """An absolute budget: a number in ``unit``, or a float in (0, 10] read as a multiple of ``base``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
        raise KslimValueError(f"quant_post_mixed(): {field} must be a positive number ({unit}, or a float in "
                              f"(0, 10] read as a fraction of the all-base model), got {value!r}.")
    return float(value) * base if isinstance(value, float) and value <= 10 else float(value)


def quant_post_mixed(model, calibration_data, size_budget=None, latency_budget=None, recipes=None, base="int8",
                     layers=None, algo=None, num_calibration_samples=256, latency_fn=None, resolution=200,
                     options=None):
    """Choose a LiteRT recipe per layer under a size and/or latency budget, export and measure it.

    Args:
        model: a built float Keras model.
        calibration_data: calibration inputs (as for :func:`kslim.quant.quant_post_static`); the output
            error is measured on them too.
        size_budget: the ``.tflite`` bytes allowed: an int (bytes) or a float in (0, 10] (a multiple of the
            all-``base`` model's size, e.g. ``0.8``).
        latency_budget: batch-1 milliseconds allowed (a float above 10 or an int: ms; a float in (0, 10]: a
            multiple of the all-``base`` model's latency), measured by ``latency_fn``.
        recipes: the recipes a layer may take besides ``base`` (names of :data:`MIXED_RECIPES`); by default
            ``int8x4`` with a size budget, ``int16x8`` with a latency budget, both with both.
        base: the recipe of every op not moved (default ``"int8"``).
        layers: names of the Conv/Dense/Depthwise layers to choose for (default: all of them).
        algo: kslim calibration algorithm for every activation range (``None``: LiteRT's own min/max).
        num_calibration_samples: at most this many calibration samples.
        latency_fn: ``latency_fn(lite_model) -> ms`` (default :func:`kslim.lite.measure_latency` on this
            CPU; a :class:`kslim.lite.LatencyPredictor`'s ``predict`` or a device's timing works too).
        resolution: steps per budget in the knapsack.
        options: the :attr:`MixedPrecisionResult.options` of an earlier call on the same model, data and
            settings, to try another budget without measuring every layer again (they must cover the
            budgets given: latency deltas for a latency budget).

    Returns:
        :class:`MixedPrecisionResult` (``met=False`` with the closest plan when no choice holds the budget).

    Raises:
        KslimValueError: no budget, a bad budget, recipe, base or layer name.
        ModelError: the model has no layer to choose for.
    """
    from kslim.quant.litert import LiteRTSession, _rules

    if size_budget is None and latency_budget is None:
        raise KslimValueError("quant_post_mixed(): give size_budget= (bytes, or a fraction of the int8 model) "
                              "and/or latency_budget= (ms, or a fraction).")
    if base not in MIXED_RECIPES:
        raise KslimValueError(f"quant_post_mixed(): base must be one of {MIXED_RECIPES}, got {base!r}.")
    if recipes is None:
        recipes = (("int8x4",) if size_budget is not None else ()) + (("int16x8",) if latency_budget is not None else ())
        recipes = tuple(r for r in recipes if r != base) or tuple(r for r in MIXED_RECIPES if r != base)
    if isinstance(recipes, str) or not all(isinstance(r, str) for r in recipes):
        raise KslimTypeError(f"quant_post_mixed(): recipes must be a list of names of {MIXED_RECIPES}, got {recipes!r}.")
    for r in recipes:
        if r not in MIXED_RECIPES or r == base:
            raise KslimValueError(f"quant_post_mixed(): recipe {r!r} must be one of {MIXED_RECIPES} other than "
                                  f"base {base!r}.")
    targets = _weight_layers(model, layers)
    for field, value in (("size_budget", size_budget), ("latency_budget", latency_budget)):
        _budget(value, 1.0, field, "bytes" if field == "size_budget" else "ms")  # checked before any work
    if latency_budget is not None and latency_fn is None:
        from kslim.lite.profiling import measure_latency

        def latency_fn(lite):
            return measure_latency(lite, runs=50)

    session = LiteRTSession(model, calibration_data, num_calibration_samples, algo, fn="quant_post_mixed")
    samples = session.samples
    reference = model.predict(samples, verbose=0)
    if isinstance(reference, dict):
        reference = next(iter(reference.values()))
    elif isinstance(reference, (list, tuple)):
        reference = reference[0]
    patterns, skipped = _layer_regexes(model, targets, session)
    targets = {n: v for n, v in targets.items() if n in patterns}

    def build(rules):
        return session.quantize(rules, check=False)

    base_lite = build(_rules(base))
    base_error = output_error(reference, base_lite, samples)
    base_latency = latency_fn(base_lite) if latency_budget is not None else None
    size_b = _budget(size_budget, float(base_lite.size), "size_budget", "bytes")
    lat_b = _budget(latency_budget, base_latency, "latency_budget", "ms") if latency_budget is not None else None

    if options is None:
        options = []
        for name, recipe in itertools.product(targets, recipes):
            lite = build([(".*", base), (patterns[name], recipe)])
            options.append(LayerOption(
                name, recipe, output_error(reference, lite, samples) - base_error,
                int(lite.size) - int(base_lite.size), latency_fn(lite) - base_latency if lat_b is not None else None))
    else:
        options = [o for o in options if o.layer in targets and o.recipe in recipes]
        if lat_b is not None and any(o.latency_delta_ms is None for o in options):
            raise KslimValueError("quant_post_mixed(options=...): these options were measured without a latency "
                                  "budget (no latency deltas); measure them again with latency_budget= set.")

    def costs(opt):
        return tuple(c for c, b in ((opt.bytes_delta, size_b), (opt.latency_delta_ms, lat_b)) if b is not None)

    budgets = tuple(b - v for b, v in ((size_b, base_lite.size), (lat_b, base_latency)) if b is not None)
    table = {n: [(0.0, tuple(0.0 for _ in budgets))] + [(o.error_delta, costs(o)) for o in options if o.layer == n]
             for n in targets}
    pick = solve_knapsack(table, budgets, resolution)
    if pick is None:  # no plan holds the budgets: the cheapest plan in the first budgeted dimension
        pick = {n: int(np.argmin([c[0] for _, c in table[n]])) for n in targets}
    by_layer = {n: [o for o in options if o.layer == n] for n in targets}
    choices = {n: by_layer[n][i - 1].recipe for n, i in pick.items() if i > 0}
    chosen = [by_layer[n][i - 1] for n, i in pick.items() if i > 0]
    rules = [(".*", base)] + [(patterns[n], r) for n, r in choices.items()]
    lite = build(rules) if choices else base_lite
    size = int(lite.size)
    latency = latency_fn(lite) if lat_b is not None else None
    result = MixedPrecisionResult(
        lite=lite, choices=choices, base=base, rules=rules, options=options, skipped=skipped, size_bytes=size, latency_ms=latency,
        error=output_error(reference, lite, samples),
        predicted_bytes=int(base_lite.size + sum(o.bytes_delta for o in chosen)),
        predicted_latency_ms=None if lat_b is None else base_latency + sum(o.latency_delta_ms for o in chosen),
        predicted_error=base_error + sum(o.error_delta for o in chosen),
        base_bytes=int(base_lite.size), base_latency_ms=base_latency, base_error=base_error,
        size_budget_bytes=None if size_b is None else int(size_b), latency_budget_ms=lat_b,
        met=(size_b is None or size <= size_b) and (lat_b is None or latency <= lat_b))
    lite.conversion = {**lite.conversion, "mixed": {n: r for n, r in choices.items()}}
    return result


def _layer_regexes(model, targets, session):
    """``({layer: regex}, {layer: reason})``: the regex (a string, for LiteRT's recipe rules) of each
    layer's TF name scope, and the layers no rule can reach -- LiteRT matches a rule against an op's
    output tensor name, and the model's outputs are named ``StatefulPartitionedCall...``."""
    from kslim.graph import keras_graph as kg
    from kslim.lite.flatbuffer import read_flatbuffer, tensor_name
    from kslim.quant.ptq import layer_pattern

    graph = read_flatbuffer(session.float_lite.content).subgraphs[0]
    names = [tensor_name(t) for t in graph.tensors]
    outputs = [names[op.outputs[0]] for op in graph.operators if len(op.outputs)]
    # the one output of a single-output model is named StatefulPartitionedCall...:0, not by its layer
    model_outputs = model.outputs if len(model.outputs) == 1 else []
    last = kg.producer(model_outputs[0]) if model_outputs else None
    patterns, skipped = {}, {}
    for path, layer in targets.items():
        pattern = layer_pattern(model, path.rsplit("/", 1)[-1], names)
        if any(pattern.search(n) for n in outputs):
            patterns[path] = pattern.pattern
        elif layer is last and sum(bool(re.search(_OUTPUT, n)) for n in outputs) == 1:
            patterns[path] = _OUTPUT
        else:
            skipped[path] = ("no op output of the .tflite carries its name (LiteRT's recipe rules match op output "
                             "names; the outputs of a multi-output model are named StatefulPartitionedCall...): "
                             "it keeps the base recipe")
    return patterns, skipped


__all__ = ["quant_post_mixed", "MixedPrecisionResult", "LayerOption", "solve_knapsack", "MIXED_RECIPES"]
