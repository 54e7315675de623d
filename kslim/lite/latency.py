"""Latency lookup tables per op configuration, and a predictor built on them.

A :class:`LatencyTable` holds, for one device and thread count, the measured latency of every
distinct *op configuration* (TFLite op type, input/output shapes, kernel, stride, groups, padding,
fused activation, dtype and quantization) — each measured as a single-op model cut out of a real
``.tflite`` (so the kernel, options and quantization are exactly those the full model runs) with
the fixed cost of one ``invoke()`` subtracted: the op's latency with its weights hot in cache. The
table also stores a *calibration* fitted robustly on whole models measured on the same device
(:meth:`LatencyTable.calibrate`): ``latency = intercept + per_op * n_ops + sum(op latencies) +
cold_us_per_mb * cold weights``, the last term for models whose weights do not fit in cache (inside
them, each op's weights come from memory). Ops can also be timed *in context* (right after a run of
their whole model, ``build(context=...)``), an alternative to the memory term.

:class:`LatencyPredictor` sums the table's op latencies for a model (looking them up by
configuration), applies the calibration, and for configurations missing from the table uses a
fallback fitted on the table itself (per op type, non-negative least squares on MACs and bytes
moved, log-log), flagging each such op and the prediction.

Example:
    >>> import keras
    >>> from kslim.lite import convert, LocalDevice, LatencyTable, LatencyPredictor
    >>> lm = convert(keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)]), check=False)
    >>> table = LatencyTable.build(LocalDevice(), [lm], runs=20, repeats=1)
    >>> LatencyPredictor(table).predict(lm).fallback_ops
    0
"""

import csv
import datetime
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kslim._io import atomic_write_json, atomic_write_text
from kslim.errors import ConfigError, KslimFileError, KslimValueError

TABLE_FORMAT = "kslim.latency_table"
TABLE_VERSION = 1
_CSV_FIELDS = ("key", "op", "input_shape", "output_shape", "weight_shape", "kernel", "stride", "groups",
               "padding", "activation", "dtype", "quant", "macs", "bytes", "latency_us", "raw_us", "count",
               "context_us", "context")
_CSV_STR = ("key", "op", "padding", "activation", "dtype", "quant", "context")
_ACT = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}
_WEIGHTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D")


# ------------------------------------------------------------------------------- configurations
def _as_lite(model):
    """LiteModel from a LiteModel, keras.Model (float conversion), ``.tflite`` path or bytes."""
    from kslim.lite.model import LiteModel

    if isinstance(model, LiteModel):
        return model
    if isinstance(model, (bytes, bytearray)):
        return LiteModel(bytes(model))
    if isinstance(model, (str, Path)):
        return LiteModel.load(model)
    try:
        import keras
    except ImportError:  # pragma: no cover
        keras = None
    if keras is not None and isinstance(model, keras.Model):
        from kslim.lite.converter import convert

        return convert(model, check=False)
    raise KslimValueError(f"expected a LiteModel, keras.Model, .tflite path or bytes, got {type(model).__name__}.")


def _nelem(shape):
    return int(np.prod(shape)) if shape else 1


_BYTES = {"float32": 4, "float16": 2, "int8": 1, "uint8": 1, "int16": 2, "int32": 4, "int64": 8, "bool": 1}


def _config(desc):
    """Summarise one op description (from ``runner.describe_ops``) into a table configuration."""
    op, opts = desc["op"], desc["options"]
    ins = [t for t in desc["inputs"] if t is not None]
    data_in = [t for t in ins if not t["const"]] or ins[:1]
    weights = [t for t in ins if t["const"] and len(t["shape"]) >= 2]
    w = weights[0]["shape"] if weights else None
    out = desc["outputs"][0]["shape"] if desc["outputs"] else []
    x = data_in[0] if data_in else {"shape": [], "dtype": "float32", "quant": None}
    kernel, groups = None, 1
    if op in ("CONV_2D", "TRANSPOSE_CONV") and w and len(w) == 4:
        kernel = [w[1], w[2]]
        cin = x["shape"][-1] if x["shape"] else w[3]
        groups = max(int(cin // max(w[3], 1)), 1)
    elif op == "DEPTHWISE_CONV_2D" and w:
        kernel, groups = [w[1], w[2]], int(x["shape"][-1]) if x["shape"] else 1
    elif op in ("MAX_POOL_2D", "AVERAGE_POOL_2D", "L2_POOL_2D"):
        kernel = [opts.get("filterHeight"), opts.get("filterWidth")]
    stride = [opts["strideH"], opts["strideW"]] if "strideH" in opts else None
    if op == "CONV_2D" and w:
        macs = _nelem(out) * w[1] * w[2] * w[3]
    elif op == "DEPTHWISE_CONV_2D" and w:
        macs = _nelem(out) * w[1] * w[2]
    elif op == "FULLY_CONNECTED" and w:
        macs = _nelem(out) * w[-1]
    elif op == "TRANSPOSE_CONV" and w:
        macs = _nelem(x["shape"]) * w[0] * w[1] * w[2]
    elif op in ("MAX_POOL_2D", "AVERAGE_POOL_2D") and kernel and None not in kernel:
        macs = _nelem(out) * kernel[0] * kernel[1]
    elif op in ("MEAN", "SUM", "REDUCE_MAX"):
        macs = _nelem(x["shape"])
    else:
        macs = _nelem(out)
    nbytes = sum(_nelem(t["shape"]) * _BYTES.get(t["dtype"], 4) for t in ins)
    nbytes += sum(_nelem(t["shape"]) * _BYTES.get(t["dtype"], 4) for t in desc["outputs"])
    key_obj = {"op": op, "options": opts,
               "inputs": [None if t is None else [t["shape"], t["dtype"], t["const"], t["quant"]] for t in desc["inputs"]],
               "outputs": [[t["shape"], t["dtype"], t["quant"]] for t in desc["outputs"]]}
    return {
        "key": json.dumps(key_obj, sort_keys=True, separators=(",", ":")),
        "op": op,
        "input_shape": x["shape"],
        "output_shape": out,
        "weight_shape": w,
        "kernel": kernel,
        "stride": stride,
        "groups": groups,
        "padding": {0: "SAME", 1: "VALID"}.get(opts.get("padding")) if "padding" in opts else None,
        "activation": _ACT.get(opts.get("fusedActivationFunction")) if "fusedActivationFunction" in opts else None,
        "dtype": x["dtype"],
        "quant": x["quant"] or (weights[0]["quant"] if weights else None),
        "macs": int(macs),
        "bytes": int(nbytes),
        # constant inputs (weights, biases): what the op reads from memory when its model does not fit in cache
        "weight_bytes": int(sum(_nelem(t["shape"]) * _BYTES.get(t["dtype"], 4) for t in ins if t["const"])),
    }


def weight_bytes(model):
    """Bytes of constant tensors (weights, biases) read by the model's ops."""
    from kslim.lite import runner

    lite = _as_lite(model)
    _, parsed = runner.read_model(lite.content)
    sg = parsed.subgraphs[0]
    seen, total = set(), 0
    for op in sg.operators or []:
        for j in op.inputs:
            if j >= 0 and j not in seen and runner._has_data(parsed.buffers, sg.tensors[j].buffer):
                seen.add(j)
                total += len(parsed.buffers[sg.tensors[j].buffer].data)
    return total


def cold_weight_bytes(configs, total_weight_bytes, cache_bytes):
    """Weight bytes a model's ops read from memory rather than cache, beyond what their table timings include.

    A single op timed back to back finds its weights in cache when they fit (``weight_bytes < cache_bytes``);
    inside a model whose weights exceed the cache, each op's weights were evicted by the others' since its
    last run: a share ``1 - cache/total`` of them comes from memory. Ops whose own weights exceed the cache
    stream them in the table's timing already and add nothing. 0 for a model that fits in cache.
    """
    if not cache_bytes or total_weight_bytes <= cache_bytes:
        return 0.0
    share = 1.0 - cache_bytes / total_weight_bytes
    small = sum(c.get("weight_bytes", 0) for c in configs) - streamed_weight_bytes(configs, cache_bytes)
    return share * small


def streamed_weight_bytes(configs, cache_bytes):
    """Weight bytes of the ops whose own weights do not fit in cache (``weight_bytes >= cache_bytes``): their
    single-op timings stream them from memory already. 0 without a cache size."""
    if not cache_bytes:
        return 0
    return sum(c.get("weight_bytes", 0) for c in configs if c.get("weight_bytes", 0) >= cache_bytes)


def op_configs(model):
    """Op configurations of a model (execution order), each a dict with ``key``, ``op``, shapes,
    ``kernel``, ``stride``, ``groups``, ``padding``, ``activation``, ``dtype``, ``quant``, ``macs``,
    ``bytes`` and ``index`` (the op's position). ``model``: LiteModel, keras.Model, path or bytes."""
    from kslim.lite import runner

    lite = _as_lite(model)
    rows = []
    for d in runner.describe_ops(lite.content):
        c = _config(d)
        c["index"], c["name"] = d["index"], d["name"]
        rows.append(c)
    return rows


# ------------------------------------------------------------------------------------- the table
class LatencyTable:
    """Measured per-op-configuration latencies of one device at one thread count.

    Attributes:
        entries: ``{key: entry}``; an entry holds the configuration fields of :func:`op_configs`
            plus ``latency_us`` (net of the ``invoke()`` overhead), ``raw_us`` and ``count``.
        device: the device description (``device.describe()``).
        num_threads, overhead_us, settings (warmup/runs/repeats), calibration (``intercept_us``,
            ``per_op_us``, ``cold_us_per_mb``, ``scale`` and the models it was fitted on), created (UTC ISO date).
    """

    def __init__(self, entries=None, device=None, num_threads=1, overhead_us=0.0, calibration=None,
                 settings=None, created=None):
        self.entries = dict(entries or {})
        self.device = dict(device or {})
        self.num_threads = int(num_threads)
        self.overhead_us = float(overhead_us)
        self.calibration = dict(calibration or {"intercept_us": 0.0, "per_op_us": 0.0, "cold_us_per_mb": 0.0,
                                                 "scale": 1.0, "models": []})
        self.settings = dict(settings or {})
        self.created = created or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    def __len__(self):
        return len(self.entries)

    def __contains__(self, key):
        return (key["key"] if isinstance(key, dict) else key) in self.entries

    def lookup(self, config):
        """The entry for a configuration (dict with ``key``) or key string; None if absent."""
        return self.entries.get(config["key"] if isinstance(config, dict) else config)

    def __repr__(self):
        return f"LatencyTable({len(self)} configurations, device={self.device.get('kind')}, threads={self.num_threads})"

    # ---------------------------------------------------------------- building
    @classmethod
    def build(cls, device, models_or_ops, num_threads=1, warmup=10, runs=100, repeats=3, calibrate=True,
              calibration_runs=200, calibration_repeats=3, context=False, context_runs=30, context_repeats=1, aggregate="min",
              progress=False, max_seconds=None):
        """Measure every distinct op configuration of ``models_or_ops`` on ``device``.

        Args:
            device: a kslim device (:class:`LocalDevice`, :class:`AdbDevice`, :class:`SshDevice`).
            models_or_ops: models (LiteModel, keras.Model, ``.tflite`` path, bytes) — all their ops —
                or ``(model, op_index)`` pairs for single ops.
            num_threads, warmup, runs, repeats: settings of each single-op measurement: latency =
                ``aggregate`` (``"min"`` or ``"median"``) over ``repeats`` interleaved passes over all
                ops of the median of ``runs`` invokes, minus the invoke overhead. ``"min"`` (default)
                keeps the least-disturbed pass: on a shared machine load only ever adds time.
            calibrate: also time the whole models given (``calibration_runs`` invokes, median of
                ``calibration_repeats`` repeats) and fit ``intercept + scale * sum``.
            context: on devices that can (:class:`LocalDevice`), also time ops *in the context of
                their model* (entry field ``context_us``, used by ``LatencyPredictor(use_context=True)``): the
                whole model runs before every timed call of the op, so the op meets the caches as inside
                the model (its weights evicted when the model does not fit in cache). ``"auto"`` does it
                for models whose weights exceed the table's cache size (a quarter of the device's
                last-level cache, ``describe()["l3_bytes"]``, else 8 MiB); True for every model; False
                (default) never: the calibration's memory term stands for it. ``context_runs`` timed calls each; the invoke overhead is measured the same way.
                Devices without it (adb, ssh) time ops back to back only.
            progress: show a Keras progress bar.
            max_seconds: cap on one op's timing per pass: an op that takes longer than ``max_seconds /
                runs`` (a 224x224 convolution) gets ``max(5, max_seconds / its latency)`` invokes instead
                of ``runs`` (its latency probed with 3 invokes first). None: ``runs`` for every op.
        """
        from kslim.lite import runner

        if not callable(getattr(device, "measure", None)):
            raise KslimValueError(f"device must be a LocalDevice, AdbDevice or SshDevice, got {type(device).__name__}.")
        if num_threads < 1 or runs < 1:
            raise KslimValueError(f"need num_threads >= 1 and runs >= 1, got {num_threads}, {runs}.")
        _aggregator(aggregate)
        items = list(models_or_ops)
        if not items:
            raise KslimValueError("LatencyTable.build() needs at least one model or (model, op_index) pair.")
        todo, whole = {}, []
        for item in items:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], (int, np.integer)):
                lite, indices = _as_lite(item[0]), [int(item[1])]
            else:
                lite, indices = _as_lite(item), None
                whole.append(lite)
            configs = op_configs(lite)
            for c in configs if indices is None else [configs[i] for i in indices]:
                if c["key"] in todo:
                    todo[c["key"]][1] += 1
                else:
                    todo[c["key"]] = [(lite, c), 1]
        measure = device.measure
        overhead = measure(runner.noop_model(), num_threads, warmup, runs, repeats)
        bar = None
        if progress:
            import keras

            bar = keras.utils.Progbar(len(todo), unit_name="op config")
        dev_ctx = getattr(device, "measure_in_context", None)
        desc = device.describe()
        # a model is "big" when its weights exceed a quarter of the last-level cache (shared with other
        # processes): their ops no longer find their weights in cache between inferences
        cache_bytes = int((desc.get("l3_bytes") or 0) // 4 or (8 << 20))

        def in_context(lite):
            if dev_ctx is None or not context:
                return False
            return context is True or weight_bytes(lite) > cache_bytes

        # cut every distinct op configuration out once
        jobs, by_model = {}, {}
        for key, ((lite, c), count) in todo.items():
            by_model.setdefault(id(lite), (lite, []))[1].append((key, c, count))
        entries = {}
        for lite, items_ in by_model.values():
            parsed, values = runner.read_model(lite.content)[1], runner.integer_values(lite.content)
            for key, c, count in items_:
                entry = {k: c[k] for k in _CSV_FIELDS if k in c}
                entry["count"] = count
                try:
                    jobs[key] = runner.single_op_model(lite.content, c["index"], parsed, values)
                except Exception as e:  # an op that cannot be cut out is left to the fallback
                    entry.update(raw_us=None, latency_us=None, error=str(e)[:200])
                entries[key] = entry
        # models timed in context: every op of theirs, right after a run of the whole model
        ctx_jobs = []
        for lite in whole + [x[0] for x in by_model.values() if x[0] not in whole]:
            if in_context(lite):
                keys = [c["key"] for c in op_configs(lite) if c["key"] in jobs]
                ctx_jobs.append((lite, [k for k in dict.fromkeys(keys) if not entries[k].get("_ctx")]))
                for k in keys:
                    entries[k]["_ctx"] = True
        # ``repeats`` interleaved passes over all ops (a burst of load on a shared machine hits one
        # pass of many ops, not every repeat of one op); per op the median over passes
        warm = {key: [] for key in jobs}
        ctx_samples = {}
        op_runs = {key: runs for key in jobs}
        if max_seconds:
            for key, single in jobs.items():
                try:
                    probe_us = measure(single, num_threads, 1, 3, 1)
                except Exception:  # reported by the timed passes below
                    continue
                op_runs[key] = int(min(runs, max(5, max_seconds * 1e6 / max(probe_us, 1e-3))))
        for _ in range(max(int(repeats), 1)):
            for key, single in jobs.items():
                try:
                    warm[key].append(measure(single, num_threads, min(warmup, op_runs[key]), op_runs[key], 1))
                except Exception as e:
                    entries[key].update(error=str(e)[:200])
                if bar is not None:
                    bar.add(1 / max(int(repeats), 1))
        for _ in range(max(int(context_repeats), 1)):
            for lite, keys in ctx_jobs:
                ctx = device.context_interpreter(lite.content, num_threads)
                ov = dev_ctx(runner.noop_model(), ctx, num_threads, warmup, context_runs, 1)
                for key in keys:
                    try:
                        raw = dev_ctx(jobs[key], ctx, num_threads, warmup, context_runs, 1)
                        ctx_samples.setdefault(key, []).append((raw, ov, lite.source or "model"))
                    except Exception as e:
                        entries[key].update(error=str(e)[:200])
                del ctx
        agg = _aggregator(aggregate)
        for key, entry in entries.items():
            entry.pop("_ctx", None)
            if warm.get(key):
                raw = agg(warm[key])
                entry.update(raw_us=raw, latency_us=max(raw - overhead, 0.0))
            elif "latency_us" not in entry:
                entry.update(raw_us=None, latency_us=None)
            if ctx_samples.get(key):
                vals = ctx_samples[key]
                entry.update(context_us=max(agg([v[0] - v[1] for v in vals]), 0.0), context=vals[0][2])
        table = cls(entries, device.describe(), num_threads, overhead,
                    settings={"warmup": warmup, "runs": runs, "repeats": repeats, "aggregate": aggregate, "context": context,
                              "max_seconds": max_seconds,
                              "context_runs": context_runs, "cache_bytes": cache_bytes,
                              "context_models": [lite.source or "model" for lite, _ in ctx_jobs]})
        if calibrate and whole:
            table.calibrate(device, whole, runs=calibration_runs, warmup=warmup, repeats=calibration_repeats)
        return table

    def calibrate(self, device, models, runs=200, warmup=10, repeats=3, measured_us=None):
        """Fit the whole-model terms the op sum misses, on whole ``models`` timed on ``device``.

        ``measured = intercept + per_op * n_ops + sum(op latencies) + cold_us_per_mb * cold_mb``, the op
        latencies those of the table (weights hot in cache, as a single op timed back to back finds them):

        * ``intercept_us`` and ``per_op_us`` (the cost of one more op in the graph: dispatch, the delegate's
          partition boundaries) by a Theil-Sen fit of the residual on the op count over the models that fit in
          cache (the median of pairwise slopes, then the median intercept; per_op >= 0, intercept >= 0): a robust
          fit, not least squares on a handful of noisy timings; with fewer than 3 distinct op counts among such
          models only the median intercept.
        * ``cold_us_per_mb``: the time per MiB of weights that come from memory instead of cache, the median over
          the models whose weights exceed the table's cache size (``settings["cache_bytes"]``) of their
          remaining residual per cold MiB (:func:`cold_weight_bytes`), leaving out models with more than half of
          their weights in ops bigger than the cache (their op timings stream those already); 0 when none is left.

        The scale on the op sum stays 1. ``measured_us``: ``{model index: latency in us}`` when the caller timed
        the models already (interleaved with other models, as scripts/bench_latency.py does); otherwise they are
        timed here in ``repeats`` interleaved passes (``runs`` invokes each), aggregated as the table's ops.
        Returns the calibration dict (also in ``self.calibration``).
        """
        pred = LatencyPredictor(self, calibrated=False)
        lites = [_as_lite(m) for m in models]
        agg = _aggregator(self.settings.get("aggregate", "median"))
        if measured_us is None:
            times = [[] for _ in lites]
            for _ in range(max(int(repeats), 1)):  # interleaved passes
                for i, lite in enumerate(lites):
                    times[i].append(device.measure(lite.content, self.num_threads, warmup, runs, 1))
            measured_us = {i: agg(t) for i, t in enumerate(times)}
        cache = int(self.settings.get("cache_bytes") or 0)
        rows = []
        for i, lite in enumerate(lites):
            configs = op_configs(lite)
            total = weight_bytes(lite)
            big = streamed_weight_bytes(configs, cache)
            rows.append({"model": lite.source or f"model{i}", "measured_us": float(measured_us[i]),
                         "sum_us": pred.predict(lite).total_ms * 1e3, "ops": len(configs),
                         "cold_mb": cold_weight_bytes(configs, total, cache) / 2 ** 20,
                         # most weights in ops bigger than the cache (VGG16's dense layers): the op timings
                         # stream them already, the residual is not the cold weights' cost
                         "big_op_share": big / total if total else 0.0})
        warm = [r for r in rows if r["cold_mb"] == 0]
        n = np.array([r["ops"] for r in warm], float)
        res = np.array([r["measured_us"] - r["sum_us"] for r in warm], float)
        per_op, intercept = 0.0, float(np.median(res)) if len(res) else 0.0
        if len(warm) >= 3 and len(set(n.tolist())) >= 3:
            slopes = [(res[a] - res[b]) / (n[a] - n[b]) for a in range(len(n)) for b in range(a) if n[a] != n[b]]
            per_op = max(float(np.median(slopes)), 0.0)
            intercept = float(np.median(res - per_op * n))
            if intercept < 0:  # a negative fixed cost is the fit's noise: no intercept, the per-op cost alone
                intercept, per_op = 0.0, max(float(np.median(res / np.maximum(n, 1))), 0.0)
        cold = [(r["measured_us"] - intercept - per_op * r["ops"] - r["sum_us"]) / r["cold_mb"]
                for r in rows if r["cold_mb"] > 0 and r["big_op_share"] <= 0.5]
        per_mb = max(float(np.median(cold)), 0.0) if cold else 0.0
        self.calibration = {"intercept_us": intercept, "per_op_us": per_op, "cold_us_per_mb": per_mb,
                            "scale": 1.0, "method": "theil-sen", "cold_models": len(cold), "models": rows}
        return self.calibration

    def merge(self, other):
        """Add the entries of another table measured on the same device and thread count."""
        if other.num_threads != self.num_threads:
            raise KslimValueError(f"cannot merge tables for {other.num_threads} and {self.num_threads} threads.")
        for k, v in other.entries.items():
            self.entries.setdefault(k, v)
        return self

    # ---------------------------------------------------------------- files
    def to_dict(self):
        return {"format": TABLE_FORMAT, "version": TABLE_VERSION, "created": self.created, "device": self.device,
                "num_threads": self.num_threads, "overhead_us": self.overhead_us, "settings": self.settings,
                "calibration": self.calibration, "entries": list(self.entries.values())}

    def save(self, path):
        """Write the table as JSON (``.json``) or CSV (``.csv``; header lines ``# kslim...`` carry the
        device, thread count, overhead and calibration), atomically."""
        path = Path(path)
        if path.suffix.lower() == ".csv":
            meta = {k: v for k, v in self.to_dict().items() if k != "entries"}
            buf = io.StringIO()
            buf.write(f"# {TABLE_FORMAT} {json.dumps(meta, separators=(',', ':'))}\n")
            w = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            for e in self.entries.values():
                w.writerow({k: ("" if v is None else v) if k in _CSV_STR else json.dumps(v)
                            for k, v in e.items() if k in _CSV_FIELDS})
            return atomic_write_text(path, buf.getvalue())
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path):
        """Read a table written by :meth:`save` (JSON or CSV)."""
        path = Path(path)
        if not path.is_file():
            raise KslimFileError(f"latency table {path} does not exist; build one with `kslim latency-table build`.")
        text = path.read_text(errors="replace")
        try:
            if path.suffix.lower() == ".csv":
                first, _, rest = text.partition("\n")
                if not first.startswith(f"# {TABLE_FORMAT} "):
                    raise ConfigError(f"{path} is not a kslim latency table (first line must be '# {TABLE_FORMAT} ...').")
                meta = json.loads(first[len(TABLE_FORMAT) + 3:])
                entries = []
                for row in csv.DictReader(io.StringIO(rest)):
                    entries.append({k: (v or None) if k in _CSV_STR else (json.loads(v) if v else None)
                                    for k, v in row.items() if k in _CSV_FIELDS})
                meta["entries"] = entries
            else:
                meta = json.loads(text)
        except ConfigError:
            raise
        except (ValueError, IndexError) as e:
            raise KslimFileError(f"{path} is not a readable kslim latency table: {e}") from e
        if not isinstance(meta, dict) or meta.get("format") != TABLE_FORMAT:
            raise ConfigError(f"{path} is not a kslim latency table (format field must be {TABLE_FORMAT!r}).",
                              path="format")
        if meta.get("version") != TABLE_VERSION:
            raise ConfigError(f"{path} has table version {meta.get('version')!r}; this kslim reads version "
                              f"{TABLE_VERSION}: rebuild it with `kslim latency-table build`.", path="version")
        try:
            entries = {e["key"]: e for e in meta["entries"]}
        except (KeyError, TypeError) as e:
            raise ConfigError(f"{path}: every entry needs a 'key'.", path="entries") from e
        return cls(entries, meta.get("device"), meta.get("num_threads", 1), meta.get("overhead_us", 0.0),
                   meta.get("calibration"), meta.get("settings"), meta.get("created"))


# --------------------------------------------------------------------------------- the predictor
@dataclass
class LatencyPrediction:
    """A predicted latency: ``total_ms`` (calibrated), per-op rows, and which ops used the fallback."""

    total_ms: float
    ops: list = field(repr=False)
    fallback_ops: int
    num_threads: int

    @property
    def flagged(self):
        """True if any op was not in the table (its latency comes from the fallback model)."""
        return self.fallback_ops > 0

    @property
    def fallback_fraction(self):
        """Share of the (uncalibrated) op-latency sum that comes from the fallback."""
        tot = sum(r["latency_ms"] for r in self.ops) or 1.0
        return sum(r["latency_ms"] for r in self.ops if r["source"] == "fallback") / tot

    def by_op_type(self):
        agg = {}
        for r in self.ops:
            c, t = agg.get(r["op"], (0, 0.0))
            agg[r["op"]] = (c + 1, t + r["latency_ms"])
        return dict(sorted(agg.items(), key=lambda kv: -kv[1][1]))

    def __float__(self):
        return float(self.total_ms)


class LatencyPredictor:
    """Predict a model's latency from a :class:`LatencyTable`.

    ``predict(model)`` looks every op configuration up in the table (its latency with the weights hot in
    cache); missing ones get the fallback: per kernel (op type and dtype) with at least 4 entries, else per
    op type, a least-squares fit ``log latency = c0 + c1 log MACs + c2 log bytes`` on the table's entries of
    that kernel (non-negative linear ``c0 + c1 MACs + c2 bytes`` with fewer than 4 entries of the op type; a
    fit over all entries for an op type the table has never seen). Calibrated (default), the prediction is
    ``intercept + per_op * n_ops + sum + cold_us_per_mb * cold_mb`` with the table's fitted terms
    (:meth:`LatencyTable.calibrate`; a table calibrated by an older kslim applies its ``scale``): the cold
    weights are those a model bigger than the cache reads from memory (:func:`cold_weight_bytes`).

    Args:
        table: a :class:`LatencyTable` (or a path to one).
        calibrated: apply the table's calibration (False: plain sum of op latencies).
        use_context: for a model bigger than the table's cache size, take the ops' in-context timings
            (``LatencyTable.build(context=...)``) where the table has them, instead of the memory term
            (which then counts only the other ops).
    """

    def __init__(self, table, calibrated=True, use_context=False):
        if isinstance(table, (str, Path)):
            table = LatencyTable.load(table)
        if not isinstance(table, LatencyTable):
            raise KslimValueError(f"LatencyPredictor needs a LatencyTable, got {type(table).__name__}.")
        self.table = table
        self.calibrated = calibrated
        self.use_context = use_context
        self._fits = self._fit_fallback()

    def _fit_fallback(self):
        rows = [e for e in self.table.entries.values() if e.get("latency_us") is not None]
        fits = {}
        groups = {}
        for e in rows:  # per kernel (op type and dtype: an int8 convolution is not a float one), per op type
            groups.setdefault((e["op"], e.get("dtype")), []).append(e)
            groups.setdefault(e["op"], []).append(e)
        for key, es in list(groups.items()) + [("*", rows)]:
            if not es:
                continue
            ll = _loglog_fit(es)
            if isinstance(key, tuple) and ll is None:
                continue  # too few of this kernel: its op type's fit
            fits[key] = ("loglog", ll) if ll is not None else ("linear", _nnls_fit(es))
        return fits

    def op_latency_us(self, config, in_context=False):
        """``(latency_us, source)`` of one configuration: ``"table"`` or ``"fallback"``; with
        ``in_context`` the in-context timing where the table has one."""
        e = self.table.lookup(config)
        if e is not None and in_context and e.get("context_us") is not None:
            return float(e["context_us"]), "table"
        if e is not None and e.get("latency_us") is not None:
            return float(e["latency_us"]), "table"
        fit = self._fits.get((config["op"], config.get("dtype"))) or self._fits.get(config["op"]) or self._fits.get("*")
        if fit is None:
            return 0.0, "fallback"
        kind, coef = fit
        if kind == "loglog":
            return float(np.exp(coef @ np.array([1.0, np.log1p(config["macs"]), np.log1p(config["bytes"])]))), "fallback"
        return float(max(coef @ np.array([1.0, config["macs"], config["bytes"]]), 0.0)), "fallback"

    def predict(self, model):
        """Predicted latency of ``model`` (LiteModel, keras.Model, ``.tflite`` path or bytes)."""
        lite = _as_lite(model)
        cache = self.table.settings.get("cache_bytes")
        configs = op_configs(lite)
        total_w = weight_bytes(lite) if cache is not None else 0
        in_ctx = bool(self.use_context and cache is not None and total_w > cache)
        rows, hot = [], []
        for c in configs:
            us, src = self.op_latency_us(c, in_ctx)
            e = self.table.lookup(c) if in_ctx else None
            if not (e is not None and e.get("context_us") is not None):  # an in-context timing has it already
                hot.append(c)
            rows.append({"index": c["index"], "op": c["op"], "name": c["name"], "key": c["key"],
                         "macs": c["macs"], "latency_ms": us / 1e3, "source": src})
        total_us = sum(r["latency_ms"] for r in rows) * 1e3
        if self.calibrated:
            cal = self.table.calibration
            cold_mb = cold_weight_bytes(hot, total_w, cache) / 2 ** 20
            total_us = (cal.get("intercept_us", 0.0) + cal.get("per_op_us", 0.0) * len(configs)
                        + cal.get("scale", 1.0) * total_us + cal.get("cold_us_per_mb", 0.0) * cold_mb)
        return LatencyPrediction(total_ms=max(total_us, 0.0) / 1e3, ops=rows,
                                 fallback_ops=sum(r["source"] == "fallback" for r in rows),
                                 num_threads=self.table.num_threads)


def _aggregator(name):
    if name not in ("min", "median"):
        raise KslimValueError(f"aggregate must be 'min' or 'median', got {name!r}.")
    return (lambda v: float(np.min(v))) if name == "min" else (lambda v: float(np.median(v)))


def _loglog_fit(entries):
    """Least squares of log(latency) on [1, log MACs, log bytes]; None with too few points."""
    es = [e for e in entries if e["latency_us"] > 0]
    if len(es) < 4:
        return None
    X = np.array([[1.0, np.log1p(e["macs"]), np.log1p(e["bytes"])] for e in es])
    y = np.log([e["latency_us"] for e in es])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    # latency grows at most about linearly with the work: exponents in [0, 1.2] together, so that a few
    # collinear points cannot extrapolate to absurd values; the constant refitted on the clipped slopes
    slopes = np.clip(coef[1:], 0.0, 1.2)
    if slopes.sum() > 1.2:
        slopes *= 1.2 / slopes.sum()
    if not np.array_equal(slopes, coef[1:]):
        coef = np.array([float(np.mean(y - X[:, 1:] @ slopes)), *slopes])
    return coef


def _nnls_fit(entries):
    """Non-negative least squares of latency on [1, MACs, bytes] (relative error weighting)."""
    X = np.array([[1.0, e["macs"], e["bytes"]] for e in entries], np.float64)
    y = np.array([e["latency_us"] for e in entries], np.float64)
    w = 1.0 / np.maximum(y, 0.05)
    active = [0, 1, 2]
    coef = np.zeros(3)
    for _ in range(3):  # drop negative coefficients and refit
        if not active:
            break
        sol, *_ = np.linalg.lstsq(X[:, active] * w[:, None], y * w, rcond=None)
        if np.all(sol >= 0):
            coef[:] = 0
            coef[active] = sol
            break
        active = [a for a, s in zip(active, sol) if s > 0]
    if not coef.any():
        coef[0] = float(np.median(y)) if len(y) else 0.0
    return coef
