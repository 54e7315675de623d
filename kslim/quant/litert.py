"""Post-training quantization with LiteRT's own quantizer (``ai-edge-quantizer``) on a kslim float export.

LiteRT documents converter-time post-training quantization as deprecated in favour of its quantizer,
which works on a ``.tflite`` file and has the recipes kslim's converter path lacks. This module is the
kslim entry to it: the Keras model is converted to float TFLite (:func:`kslim.lite.convert`), the
quantizer is given a recipe -- one name of :data:`RECIPES` for the whole model, or ``(pattern,
name)`` rules where later rules win for the tensors whose names match -- and, for static recipes,
calibration samples read like every kslim calibration input.

=================== ================================================== ==========================
name                what it stores / computes                          speed on x86 and ARM CPUs
=================== ================================================== ==========================
``int8``            int8 weights (per channel) and activations         fast (XNNPACK int8 kernels)
``int16x8``         int8 weights, **int16 activations**                slow: reference kernels
``int8x4``          **int4 weights** (per channel), int8 activations   see BENCHMARKS.md (PTQ backends)
``int8_weight_only`` int8 weights, float compute (DEQUANTIZE at load)  float speed, 4x smaller
``int4_weight_only`` **int4 weights** (per channel), float compute     float speed, ~8x smaller
``dynamic_int8``    int8 weights, activations quantized on the fly     fast on big GEMMs
``dynamic_int4``    int4 weights, activations quantized on the fly     depends on the kernels
``int4_blockwise``  int4 weights in blocks of 32 (Dense), dynamic      depends on the kernels
``float32``         not quantized (a rule's layers stay float)         float speed
=================== ================================================== ==========================

(The speed column is what LiteRT's kernels do, measured on both reference nets in BENCHMARKS.md's
PTQ-backends table, ``scripts/bench_ptq.py``; every recipe's ``.tflite`` runs in ai-edge-litert.)

kslim's calibration reaches this backend too: ``algo=`` replaces the quantizer's own ranges (a moving
average of per-sample min/max) with kslim's (:mod:`kslim.quant.calibration`), each tensor at its width.
Measured against the converter path (:func:`kslim.quant.quant_post_static`) on the shipped nets, the
int8 models are as accurate and as fast, so the converter path stays kslim's default for full int8 (its
``skip``, ``bias_correction`` and int8 I/O build on it) and this backend serves the recipes the converter
lacks: int16x8 with kslim's ranges, int4 weights, per-layer mixes (:func:`kslim.quant.quant_post_mixed`).

Example:
    >>> import keras, numpy as np
    >>> m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(16, 3, activation="relu"),
    ...                       keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4)])
    >>> x = np.random.default_rng(0).random((16, 8, 8, 1), dtype=np.float32)
    >>> lite = quant_post_litert(m, "int16x8", calibration_data=x)
    >>> sorted(tensor_types(lite.content) & {"INT16", "INT8"})
    ['INT16', 'INT8']
"""

import re

import numpy as np

from kslim.errors import ConversionError, KslimTypeError, KslimValueError

#: recipe name -> ai_edge_quantizer.recipe function name
RECIPES = {
    "int8": "static_wi8_ai8",
    "int16x8": "static_wi8_ai16",
    "int8x4": "static_wi4_ai8",  # no such function in the quantizer: built by _entries
    "float32": "no_quantize",  # built by _entries: the rule's ops are left float
    "int8_weight_only": "weight_only_wi8_afp32",
    "int4_weight_only": "weight_only_wi4_afp32",
    "dynamic_int8": "dynamic_wi8_afp32",
    "dynamic_int4": "dynamic_wi4_afp32",
    "int4_blockwise": "dynamic_wi4b32_afp32",
}

#: the static recipes (calibrated, integer compute) -> activation bits
STATIC_RECIPES = {"int8": 8, "int16x8": 16, "int8x4": 8}


def _quantizer():
    try:
        from ai_edge_quantizer import quantizer, recipe
    except ImportError:
        raise KslimValueError("quant_post_litert needs LiteRT's quantizer: pip install ai-edge-quantizer "
                              "(it leaves keras, tensorflow and numpy as they are).") from None
    return quantizer, recipe


def _entries(recipes, name):
    """The quantizer's recipe entries of kslim recipe ``name``."""
    fn = getattr(recipes, RECIPES[name], None)
    if fn is not None:
        return fn()
    if name == "float32":
        return [{"regex": ".*", "operation": recipes.TFLOperationName.ALL_SUPPORTED,
                 "algorithm_key": recipes.AlgorithmName.NO_QUANTIZE}]
    manager = recipes.recipe_manager.RecipeManager()  # int8x4: static int8 activations, int4 weights
    manager.add_static_config(regex=".*", operation_name=recipes.TFLOperationName.ALL_SUPPORTED,
                              activation_num_bits=8, weight_num_bits=4,
                              algorithm_key=recipes.AlgorithmName.MIN_MAX_UNIFORM_QUANT)
    return manager.get_quantization_recipe()


def _rules(recipe):
    """``[(pattern, name)]`` of a recipe argument, names checked."""
    rules = [(".*", recipe)] if isinstance(recipe, str) else list(recipe or ())
    if not rules:
        raise KslimValueError(f"quant_post_litert(): recipe is empty; give one of {sorted(RECIPES)}.")
    for item in rules:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(v, str) for v in item)):
            raise KslimTypeError(f"quant_post_litert(): recipe rules are (pattern, name) pairs, got {item!r}.")
        if item[1] not in RECIPES:
            raise KslimValueError(f"quant_post_litert(): unknown recipe {item[1]!r}; choose one of {sorted(RECIPES)}.")
    return rules


def tensor_types(content):
    """Names of the tensor types in a ``.tflite`` (``{"INT8", "INT4", "FLOAT32", ...}``), read from the
    flatbuffer (numpy has no int4: the interpreter reports int4 tensors as int8)."""
    from kslim.lite.flatbuffer import read_flatbuffer, tensor_type_names

    names = tensor_type_names()
    return {names.get(t.type, str(t.type)) for g in read_flatbuffer(content).subgraphs for t in g.tensors}


def _static_bits(rules, name):
    """Activation width of tensor ``name`` under ``rules`` (the last rule whose regex matches wins, as
    in the quantizer), or None when no static recipe covers it."""
    bits = None
    for pattern, recipe in rules:
        if re.search(pattern, name):
            bits = STATIC_RECIPES.get(recipe)
    return bits


def _needs_data(fn, rules):
    static = sorted({n for _, n in rules if n in STATIC_RECIPES})
    return KslimValueError(f"{fn}(): recipe {static} computes in integers: pass calibration_data= "
                           "(a few hundred training inputs).")


class LiteRTSession:
    """One Keras model quantized by LiteRT's quantizer under several recipes: the float ``.tflite`` is
    converted once, calibrated once (and observed once by kslim when ``algo`` is set), then
    :meth:`quantize` applies any recipe. :func:`quant_post_litert` is one session, one recipe;
    :func:`kslim.quant.quant_post_mixed` tries a recipe per layer in one session.

    Arguments are :func:`quant_post_litert`'s; ``fn`` names the caller in error messages.
    """

    def __init__(self, model, calibration_data=None, num_calibration_samples=200, algo=None, batch_size=32,
                 hist_percent=0.9999, bins=2048, fn="quant_post_litert"):
        from kslim.lite.converter import convert
        from kslim.lite.inputs import model_inputs
        from kslim.quant.calibration import check_algo
        from kslim.quant.ptq import calibration_batches, concat_batches

        if algo is not None:
            check_algo(algo)
            if not 0.0 < float(hist_percent) <= 1.0:
                raise KslimValueError(f"{fn}(): hist_percent must be in (0, 1], got {hist_percent!r}.")
            if int(bins) < 16:
                raise KslimValueError(f"{fn}(): bins must be >= 16, got {bins!r}.")
        if isinstance(num_calibration_samples, bool) or not isinstance(num_calibration_samples, int) \
                or num_calibration_samples < 1:
            raise KslimValueError(f"{fn}(): num_calibration_samples must be an integer >= 1, "
                                  f"got {num_calibration_samples!r}.")
        self.quantizer, self.recipes = _quantizer()
        self.model, self.algo, self.fn = model, algo, fn
        self.hist_percent, self.bins = hist_percent, bins
        self.inputs = model_inputs(model, fn)
        self.flat = self.batches = None
        if calibration_data is not None:
            bs = int(batch_size)
            batches = calibration_batches(calibration_data, self.inputs, bs, -(-num_calibration_samples // bs))
            self.flat = concat_batches(batches, num_calibration_samples)
            self.batches = [[a[i:i + bs] for a in self.flat] for i in range(0, len(self.flat[0]), bs)]
        # a -inf pad before a max pool (keras-hub's ResNetV2 stem) would wreck its int8 tensor's range, as in
        # the converter's int8 path: made an edge pad first (the max pool's result is unchanged, exactly)
        from kslim.graph.keras_graph import replace_infinite_pool_pads

        self.float_lite = convert(replace_infinite_pool_pads(model)[0], check=False)
        self._qsvs = self._observers = self._outputs = None

    @property
    def samples(self):
        """The calibration inputs (one array, or a list for several inputs), None without data."""
        if self.flat is None:
            return None
        return self.flat if len(self.flat) > 1 else self.flat[0]

    def _calibration(self, rules):
        """The quantizer's calibration result for ``rules`` (kslim's ranges written in with ``algo``)
        and the ranges written (None without ``algo``)."""
        if self.flat is None:
            raise _needs_data(self.fn, rules)
        if self._qsvs is None:  # every activation tensor, calibrated once under the all-int8 recipe
            from kslim.lite.runner import make_interpreter

            q = self.quantizer.Quantizer(bytes(self.float_lite.content), _entries(self.recipes, "int8"))
            samples = [{s.name: a[i:i + 1] for s, a in zip(self.inputs, self.flat)} for i in range(len(self.flat[0]))]
            key = next(iter(make_interpreter(self.float_lite.content).get_signature_list()), "serving_default")
            self._qsvs = q.calibrate({key: samples})
        qsvs = {n: dict(v) for n, v in self._qsvs.items()}
        if self.algo is None:
            return qsvs, None
        ranges = self._kslim_ranges(rules)
        for name, (lo, hi) in ranges.items():
            qsvs[name]["min"] = np.full_like(np.asarray(qsvs[name]["min"], np.float32), lo)
            qsvs[name]["max"] = np.full_like(np.asarray(qsvs[name]["max"], np.float32), hi)
        return qsvs, ranges

    def _kslim_ranges(self, rules):
        """kslim's range of each activation tensor the quantizer calibrated, at the width ``rules`` give
        it (8 or 16 bits); the graph outputs keep ``abs_max``, as in :func:`kslim.quant.quant_post_static`."""
        import copy

        from kslim.lite.flatbuffer import read_flatbuffer, tensor_name
        from kslim.quant.ptq import collect_statistics, graph_outputs

        content = self.float_lite.content
        if self._observers is None:
            model_t = read_flatbuffer(content)
            constant = {tensor_name(t) for t in model_t.subgraphs[0].tensors
                        if t.buffer and model_t.buffers[t.buffer].data is not None
                        and len(model_t.buffers[t.buffer].data)}
            names = {n: 8 for n in self._qsvs if n not in constant}
            self._observers = collect_statistics(content, self.batches, self.algo, self.bins, bits=names)
            self._outputs = graph_outputs(content)
        ranges = {}
        for n, obs in self._observers.items():
            bits = _static_bits(rules, n)
            if bits is None:
                continue
            obs = copy.copy(obs)
            obs.bits = bits  # the statistics do not depend on the width, the grid (levels) does
            ranges[n] = obs.range("abs_max" if n in self._outputs else self.algo, self.hist_percent)
        return ranges

    def quantize(self, recipe, check=True):
        """The :class:`kslim.lite.LiteModel` of ``recipe`` (a name or ``(pattern, name)`` rules)."""
        from kslim.lite.converter import parity
        from kslim.lite.model import LiteModel

        rules = _rules(recipe)
        static = any(n in STATIC_RECIPES for _, n in rules)
        entries = [{**entry, "regex": pattern} for pattern, name in rules for entry in _entries(self.recipes, name)]
        ranges = None
        try:
            q = self.quantizer.Quantizer(bytes(self.float_lite.content), entries)
            calibration = None
            if q.need_calibration:
                calibration, ranges = self._calibration(rules)
            result = q.quantize(calibration, enable_progress_report=False)
        except (KslimValueError, KslimTypeError):
            raise
        except Exception as e:  # noqa: BLE001 -- the quantizer's own errors, named in one line
            msg = str(e).strip().splitlines()
            raise ConversionError(f"LiteRT's quantizer refused {self.model.name!r} with recipe {rules}: "
                                  f"{type(e).__name__}: {msg[0] if msg else ''}") from e
        lite = LiteModel(bytes(result.quantized_model))
        lite.conversion = {"quantize": "litert", "recipe": [list(r) for r in rules], "backend": "ai-edge-quantizer",
                           "algo": self.algo if static else None}
        if ranges is not None:
            lite.activation_ranges = ranges
        if check:
            lite.parity = parity(self.model, lite, self.samples, quantized=static)
        return lite


def quant_post_litert(model, recipe="int8", calibration_data=None, num_calibration_samples=200, algo=None,
                      batch_size=32, hist_percent=0.9999, bins=2048, check=True):
    """Quantize ``model`` with LiteRT's quantizer; returns a :class:`kslim.lite.LiteModel`.

    Args:
        model: a built Keras model.
        recipe: a name of :data:`RECIPES`, or ``[(pattern, name), ...]``: each rule applies recipe
            ``name`` to the ops whose output tensor name matches the regex ``pattern`` (it holds the
            Keras layer name, e.g. ``"sequential/conv_1/Relu"``, except for the model's outputs, which
            are named ``StatefulPartitionedCall...``); later rules win. E.g. ``[(".*", "int8"),
            (".*conv.*", "int16x8")]`` keeps the activations of the layers named ``conv...`` at 16 bits.
        calibration_data: inputs for the static recipes (``int8``, ``int16x8``, ``int8x4``), as for
            :func:`kslim.lite.convert`'s ``representative_data``.
        num_calibration_samples: at most this many calibration samples.
        algo: ``None`` keeps the quantizer's own min/max ranges (a moving average of per-sample ranges);
            a kslim calibration algorithm (``"abs_max"``, ``"avg"``, ``"hist"``, ``"KL"``, ``"mse"`` or a
            registered one, see :mod:`kslim.quant.calibration`) replaces the range of every activation
            tensor with kslim's, computed on the same samples at the tensor's width (8 or 16 bits). This
            is how kslim's calibration reaches int16x8 and mixed recipes: the converter's own int16x8
            quantizer calibrates by itself and takes no ranges.
        batch_size: samples per calibration batch (``avg`` averages per-batch maxima).
        hist_percent, bins: as in :func:`kslim.quant.quant_post_static`.
        check: run it against the Keras model on the calibration inputs (``lite.parity``).

    Returns:
        A :class:`kslim.lite.LiteModel`; ``lite.conversion`` records the recipe and ``algo``, and with
        ``algo`` set ``lite.activation_ranges`` maps each tensor to the ``(lo, hi)`` written.

    Raises:
        KslimValueError: unknown recipe or algo, a static recipe without calibration data, the quantizer
            missing.
        ConversionError: the quantizer refused the model (its message, one line).
    """
    rules = _rules(recipe)
    if calibration_data is None and any(n in STATIC_RECIPES for _, n in rules):
        raise _needs_data("quant_post_litert", rules)  # before converting anything
    session = LiteRTSession(model, calibration_data, num_calibration_samples, algo, batch_size, hist_percent, bins)
    return session.quantize(rules, check=check)


__all__ = ["quant_post_litert", "LiteRTSession", "RECIPES", "STATIC_RECIPES", "tensor_types"]
