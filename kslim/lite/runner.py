#!/usr/bin/env python3
"""kslim's on-device latency runner: a standalone script that needs only ``ai-edge-litert`` and numpy.

Copy this one file to a board (Raspberry Pi, Jetson, any Linux with Python 3.9+) and run::

    python3 runner.py model.tflite --num-threads 1 --warmup 10 --runs 50            # JSON on stdout
    python3 runner.py model.tflite --num-threads 4 --op-profile                     # + per-op table
    python3 runner.py model.tflite --format benchmark_model                     # benchmark_model text

It loads the model with the LiteRT interpreter (``ai_edge_litert``; falls back to the older
``tflite_runtime`` package), times ``invoke()`` one call at a time and prints: init time, first
inference, warmup average, every steady-state timing (microseconds) and the process's peak RSS.

``--op-profile`` measures each operator *as a single-op model* cut out of the flatbuffer (same op
code, options, shapes, constant weights and quantization), because the Python interpreter exposes
no per-op profiler. The fixed cost of one ``invoke()`` (measured on a one-element ADD model) is
subtracted from each op. This needs the flatbuffer schema shipped in ``ai_edge_litert``.

Nothing here imports kslim, TensorFlow or Keras: kslim imports *this* module for the host
(``kslim.lite.runner``), and ships the same file to remote devices (:class:`kslim.lite.SshDevice`).
"""

import argparse
import json
import sys
import time
import warnings

import numpy as np

RUNNER_VERSION = 1


# ---------------------------------------------------------------------------------------- runtime
def _interpreter_module():
    try:
        from ai_edge_litert import interpreter as mod
    except ImportError:  # pragma: no cover - boards with the older wheel
        try:
            import tflite_runtime.interpreter as mod
        except ImportError as e:
            raise SystemExit(
                "runner.py needs the LiteRT runtime: `pip install ai-edge-litert` on this device."
            ) from e
    return mod


def make_interpreter(content, num_threads=1, use_xnnpack=True, preserve_all_tensors=False):
    """An allocated interpreter for the flatbuffer ``content`` (bytes).

    ``preserve_all_tensors`` keeps every intermediate tensor readable after ``invoke()``
    (``experimental_preserve_all_tensors``; its "for debugging" warning is silenced).
    """
    mod = _interpreter_module()
    kwargs = {"model_content": bytes(content), "num_threads": int(num_threads)}
    if not use_xnnpack:
        kwargs["experimental_op_resolver_type"] = mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if preserve_all_tensors:
        kwargs["experimental_preserve_all_tensors"] = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "preserve_all_tensors is for debugging": it is
            interp = mod.Interpreter(**kwargs)
    else:
        interp = mod.Interpreter(**kwargs)
    interp.allocate_tensors()
    return interp


def random_inputs(interp, seed=0):
    """Seeded inputs for every input tensor: uniform [0, 1) floats, full-range int8/uint8, zeros else."""
    rng = np.random.default_rng(seed)
    feeds = []
    for d in interp.get_input_details():
        shape, dtype = tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"])
        if dtype.kind == "f":
            x = rng.uniform(0, 1, size=shape).astype(dtype)
        elif dtype in (np.int8, np.uint8, np.int16):
            info = np.iinfo(dtype)
            x = rng.integers(info.min, info.max + 1, size=shape).astype(dtype)
        else:  # indices, shapes, booleans: zeros are always valid
            x = np.zeros(shape, dtype)
        feeds.append((d["index"], x))
    return feeds


def _peak_rss_mb():
    try:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb / 1024.0 if sys.platform != "darwin" else kb / (1024.0 * 1024.0)
    except Exception:  # pragma: no cover - no resource module (Windows)
        return None


def time_invokes(interp, runs, feeds=None):
    """Call ``invoke()`` ``runs`` times; returns the per-call wall times in microseconds."""
    for index, x in feeds or ():
        interp.set_tensor(index, x)
    out = np.empty(int(runs), np.float64)
    invoke, clock = interp.invoke, time.perf_counter_ns
    for i in range(int(runs)):
        t0 = clock()
        invoke()
        out[i] = (clock() - t0) / 1e3
    return out


def benchmark(content, num_threads=1, warmup=10, runs=50, use_xnnpack=True, seed=0):
    """Time a whole model: ``{"init_us", "first_us", "warmup_avg_us", "timings_us", "peak_rss_mb", ...}``."""
    t0 = time.perf_counter_ns()
    interp = make_interpreter(content, num_threads, use_xnnpack)
    init_us = (time.perf_counter_ns() - t0) / 1e3
    feeds = random_inputs(interp, seed)
    first = time_invokes(interp, 1, feeds)[0]
    warm = time_invokes(interp, max(int(warmup), 0))
    timings = time_invokes(interp, max(int(runs), 1))
    return {
        "runner_version": RUNNER_VERSION,
        "num_threads": int(num_threads),
        "use_xnnpack": bool(use_xnnpack),
        "init_us": init_us,
        "first_us": float(first),
        "warmup_avg_us": float(warm.mean()) if len(warm) else float(first),
        "warmup_runs": int(len(warm)),
        "timings_us": [round(float(t), 3) for t in timings],
        "peak_rss_mb": _peak_rss_mb(),
    }


# ---------------------------------------------------------------------------------- model surgery
def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError as e:  # pragma: no cover
        raise SystemExit("per-op profiling needs ai_edge_litert (its flatbuffer schema).") from e
    return schema


def _enum_names(enum_cls):
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def _pack(schema, model):
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _has_data(buffers, index):
    return 0 < index < len(buffers) and buffers[index].data is not None and len(buffers[index].data) > 0


def builtin_code(code):
    """The builtin operator number of an ``OperatorCodeT`` (codes > 127 live in ``builtinCode`` only)."""
    return max(int(code.builtinCode or 0), int(code.deprecatedBuiltinCode or 0))


def op_name(schema, model, opcode_index):
    """The builtin (or custom) name of an operator code, e.g. ``CONV_2D``."""
    code = model.operatorCodes[opcode_index]
    builtin = builtin_code(code)
    name = _enum_names(schema.BuiltinOperator).get(builtin, str(builtin))
    if name == "CUSTOM" and code.customCode:
        cc = code.customCode
        name = cc.decode() if isinstance(cc, bytes) else str(cc)
    return name


def _options_dict(op):
    opts = op.builtinOptions
    if opts is None:
        return {}
    out = {}
    for k, v in sorted(vars(opts).items()):
        if isinstance(v, (bool, int, float, str)):
            out[k] = v
        elif isinstance(v, (list, tuple, np.ndarray)) and len(v) <= 8:
            out[k] = [int(x) if isinstance(x, (int, np.integer)) else float(x) for x in v]
    return out


def _tensor_desc(schema, t, buffers):
    types = _enum_names(schema.TensorType)
    q = t.quantization
    scale = None if q is None or q.scale is None else np.asarray(q.scale)
    return {
        "shape": [int(s) for s in (t.shape if t.shape is not None else [])],
        "dtype": types.get(t.type, str(t.type)).lower(),
        "const": _has_data(buffers, t.buffer),
        "quant": None if scale is None or scale.size == 0 else ("per_channel" if scale.size > 1 else "per_tensor"),
    }


def read_model(content):
    """Parse a flatbuffer into the schema's object API (``ModelT``)."""
    schema = _schema()
    return schema, schema.ModelT.InitFromPackedBuf(bytearray(content), 0)


def describe_ops(content, model=None, subgraph=0):
    """Per operator of a subgraph (default the main one; execution order):
    ``{"index", "op", "name", "options", "inputs", "outputs"}``.

    ``inputs``/``outputs`` are tensor descriptions (shape, dtype, const, quant); optional (absent)
    inputs are ``None``. ``subgraph="all"`` returns one list per subgraph (WHILE bodies, IF branches).
    """
    schema, model = read_model(content) if model is None else (_schema(), model)
    if subgraph == "all":
        return [describe_ops(content, model, i) for i in range(len(model.subgraphs))]
    sg = model.subgraphs[subgraph]
    rows = []
    for i, op in enumerate(sg.operators or []):
        ins = [None if j < 0 else _tensor_desc(schema, sg.tensors[j], model.buffers) for j in op.inputs]
        outs = [_tensor_desc(schema, sg.tensors[j], model.buffers) for j in op.outputs]
        name = sg.tensors[op.outputs[0]].name if len(op.outputs) else b""
        rows.append({
            "index": i,
            "op": op_name(schema, model, op.opcodeIndex),
            "name": name.decode() if isinstance(name, bytes) else str(name),
            "options": _options_dict(op),
            "inputs": ins,
            "outputs": outs,
        })
    return rows


def integer_values(content, seed=0):
    """Values of the small integer tensors (shapes, axes, indices: <= 16 elements) computed in one
    run of the full model on seeded inputs; ``{tensor index: array}`` for :func:`single_op_model`."""
    interp = make_interpreter(content, use_xnnpack=False, preserve_all_tensors=True)
    for index, x in random_inputs(interp, seed):
        interp.set_tensor(index, x)
    interp.invoke()
    out = {}
    for d in interp.get_tensor_details():
        if np.dtype(d["dtype"]).kind in "iu" and np.dtype(d["dtype"]).itemsize >= 4 and 0 < np.prod(d["shape"]) <= 16:
            try:
                out[d["index"]] = np.array(interp.get_tensor(d["index"]))
            except ValueError:
                pass
    return out


def single_op_model(content, op_index, model=None, values=None):
    """Cut operator ``op_index`` out of the model into its own flatbuffer.

    Its non-constant inputs become the graph inputs, its outputs the graph outputs; constant
    inputs (weights, bias, shapes) keep their data; op code, builtin options and quantization are
    copied unchanged. ``values`` (from :func:`integer_values`) turns computed integer inputs (the
    shape fed to a RESHAPE, ...) into constants holding the value they have in the full model, so
    the op runs as it does there. Ops that call other subgraphs (WHILE, IF, CALL_ONCE) cannot be
    cut out.
    """
    import copy

    values = values or {}
    schema, full = read_model(content) if model is None else (_schema(), model)
    sg = full.subgraphs[0]
    op = copy.deepcopy(sg.operators[op_index])
    if len(full.subgraphs) > 1 and op_name(schema, full, op.opcodeIndex) in ("WHILE", "IF", "CALL_ONCE"):
        raise ValueError(f"op {op_index} ({op_name(schema, full, op.opcodeIndex)}) calls subgraphs")
    new = schema.ModelT()
    new.version = full.version
    new.description = b"kslim single-op model"
    new.operatorCodes = [copy.deepcopy(full.operatorCodes[op.opcodeIndex])]
    new.buffers = [schema.BufferT()]
    tensors, remap, graph_inputs = [], {}, []
    for old in [j for j in op.inputs if j >= 0] + list(op.outputs):
        if old in remap:
            continue
        t = copy.deepcopy(sg.tensors[old])
        if _has_data(full.buffers, t.buffer):
            new.buffers.append(copy.deepcopy(full.buffers[t.buffer]))
            t.buffer = len(new.buffers) - 1
        elif old in values and old not in op.outputs:
            buf = schema.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(values[old]).tobytes(), np.uint8)
            new.buffers.append(buf)
            t.buffer = len(new.buffers) - 1
            t.shape = list(np.shape(values[old]))
        else:
            new.buffers.append(schema.BufferT())
            t.buffer = len(new.buffers) - 1
            if old not in op.outputs and not t.isVariable:
                graph_inputs.append(len(tensors))
        t.shapeSignature = None
        remap[old] = len(tensors)
        tensors.append(t)
    op.inputs = [remap[j] if j >= 0 else -1 for j in op.inputs]
    op.outputs = [remap[j] for j in op.outputs]
    op.opcodeIndex = 0
    sub = schema.SubGraphT()
    sub.tensors = tensors
    sub.inputs = graph_inputs
    sub.outputs = list(op.outputs)
    sub.operators = [op]
    sub.name = b"main"
    new.subgraphs = [sub]
    return _pack(schema, new)


def noop_model():
    """A one-element float ADD model: its latency is the fixed cost of one ``invoke()``."""
    schema = _schema()
    m = schema.ModelT()
    m.version = 3
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.ADD
    code.version = 1
    m.operatorCodes = [code]
    m.buffers = [schema.BufferT() for _ in range(4)]
    tensors = []
    for i, name in enumerate((b"a", b"b", b"out")):
        t = schema.TensorT()
        t.shape, t.type, t.buffer, t.name = [1], schema.TensorType.FLOAT32, i + 1, name
        tensors.append(t)
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1], [2]
    op.builtinOptionsType = schema.BuiltinOptions.AddOptions
    op.builtinOptions = schema.AddOptionsT()
    sub = schema.SubGraphT()
    sub.tensors, sub.inputs, sub.outputs, sub.operators, sub.name = tensors, [0, 1], [2], [op], b"main"
    m.subgraphs = [sub]
    return _pack(schema, m)


def measure_content(content, num_threads=1, warmup=10, runs=100, use_xnnpack=True, repeats=1, seed=0):
    """Median ``invoke()`` time (us) of a flatbuffer; with ``repeats`` > 1 the median of per-repeat medians."""
    interp = make_interpreter(content, num_threads, use_xnnpack)
    feeds = random_inputs(interp, seed)
    time_invokes(interp, max(int(warmup), 1), feeds)
    meds = [float(np.median(time_invokes(interp, runs))) for _ in range(max(int(repeats), 1))]
    return float(np.median(meds))


def measure_in_context(content, context, num_threads=1, warmup=3, runs=30, use_xnnpack=True, seed=0):
    """Median ``invoke()`` time (us) of ``content`` (a single-op model) *in the context* of a whole model.

    ``context`` is the whole model's flatbuffer (or an interpreter made by :func:`make_interpreter`):
    before every timed call of the op, the whole model runs once, so the op meets the caches as the
    rest of the model leaves them (its weights evicted when the model's working set exceeds the
    cache, kept when it fits), as it would inside the model.
    """
    ctx = context if hasattr(context, "invoke") else make_interpreter(context, num_threads, use_xnnpack)
    if not hasattr(context, "invoke"):
        for index, x in random_inputs(ctx, seed):
            ctx.set_tensor(index, x)
    op = make_interpreter(content, num_threads, use_xnnpack)
    for index, x in random_inputs(op, seed):
        op.set_tensor(index, x)
    ctx_invoke, op_invoke, clock = ctx.invoke, op.invoke, time.perf_counter_ns
    for _ in range(max(int(warmup), 1)):
        ctx_invoke()
        op_invoke()
    out = np.empty(max(int(runs), 1))
    for i in range(len(out)):
        ctx_invoke()
        t0 = clock()
        op_invoke()
        out[i] = (clock() - t0) / 1e3
    return float(np.median(out))


def op_profile(content, num_threads=1, warmup=10, runs=100, use_xnnpack=True):
    """Per-op latency measured on single-op models; list of rows in execution order.

    Each row: ``{"index", "op", "name", "avg_ms", "raw_us", "measured"}`` where ``avg_ms`` is the
    single-op median minus the one-``invoke()`` overhead (``overhead_us``, same settings).
    """
    schema, model = read_model(content)
    overhead = measure_content(noop_model(), num_threads, warmup, runs, use_xnnpack)
    values = integer_values(content)
    rows = []
    for d in describe_ops(content, model):
        row = {"index": d["index"], "op": d["op"], "name": d["name"], "overhead_us": overhead}
        try:
            raw = measure_content(single_op_model(content, d["index"], model, values), num_threads, warmup, runs,
                                  use_xnnpack)
            row.update(raw_us=raw, avg_ms=max(raw - overhead, 0.0) / 1e3, measured=True)
        except Exception as e:  # an op that cannot run alone is reported, not fatal
            row.update(raw_us=None, avg_ms=0.0, measured=False, error=str(e)[:200])
        rows.append(row)
    return rows


# ------------------------------------------------------------------ benchmark_model-style output
def _stats(values):
    v = np.asarray(values, np.float64)
    return {"count": int(v.size), "first": float(v[0]), "curr": float(v[-1]), "min": float(v.min()),
            "max": float(v.max()), "avg": float(v.mean()), "std": float(v.std())}


def format_benchmark_model(result, graph="model.tflite", ops=None):
    """Print ``result`` (from :func:`benchmark`) the way TFLite's ``benchmark_model`` prints its run.

    Follows the tool's documented output: the parameter echo, the ``count=... avg=... std=...``
    lines, the ``Inference timings in us: Init: ..., First inference: ..., Warmup (avg): ...,
    Inference (avg): ...`` summary, the peak memory line and, with ``ops``, the op-profiling
    tables ("Run Order", "Top by Computation Time", "Summary by node type").
    """
    t = _stats(result["timings_us"])
    lines = [
        "INFO: STARTING!",
        f"INFO: Num threads: [{result['num_threads']}]",
        f"INFO: Graph: [{graph}]",
        f"INFO: Enable op profiling: [{1 if ops else 0}]",
        f"INFO: #threads used for CPU inference: [{result['num_threads']}]",
        f"INFO: Use xnnpack: [{1 if result.get('use_xnnpack', True) else 0}]",
        f"INFO: Loaded model {graph}",
        f"INFO: Initialized session in {result['init_us'] / 1e3:.3f}ms.",
        "INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if "
        "exceeding 150 seconds.",
        f"INFO: count={result['warmup_runs'] + 1} first={int(result['first_us'])} curr={int(result['warmup_avg_us'])} "
        f"min={int(min(result['first_us'], result['warmup_avg_us']))} max={int(result['first_us'])} "
        f"avg={result['warmup_avg_us']:.6g} std=0",
        "",
        f"INFO: Running benchmark for at least {t['count']} iterations and at least 1 seconds but terminate "
        "if exceeding 150 seconds.",
        f"INFO: count={t['count']} first={int(t['first'])} curr={int(t['curr'])} min={int(t['min'])} "
        f"max={int(t['max'])} avg={t['avg']:.6g} std={int(round(t['std']))}",
        "",
        f"INFO: Inference timings in us: Init: {int(result['init_us'])}, First inference: {int(result['first_us'])}, "
        f"Warmup (avg): {result['warmup_avg_us']:.6g}, Inference (avg): {t['avg']:.6g}",
        "INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE "
        "to the actual memory footprint of the model at runtime. Take the information at your discretion.",
        f"INFO: Memory footprint delta from the start of the tool (MB): init=0 overall={result.get('peak_rss_mb') or 0:.4f}",
    ]
    if result.get("peak_rss_mb") is not None:
        lines.append(f"INFO: Overall peak memory footprint (MB) via periodic monitoring: {result['peak_rss_mb']:.4f}")
    if ops:
        lines += ["INFO: Operator-wise Profiling Info for Regular Benchmark Runs:"] + _op_tables(ops, t["count"])
    return "\n".join(lines) + "\n"


def _op_tables(ops, count):
    total = sum(r["avg_ms"] for r in ops) or 1.0
    head = ("\t{:>24}\t{:>17}\t{:>9}\t{:>8}\t{:>8}\t{:>10}\t{:>14}\t{}".format(
        "[node type]", "[first]", "[avg ms]", "[%]", "[cdf%]", "[mem KB]", "[times called]", "[Name]"))

    def table(title, rows):
        out, cdf = [f"{'=' * 30} {title} {'=' * 30}", head], 0.0
        for r in rows:
            pct = 100.0 * r["avg_ms"] / total
            cdf += pct
            out.append("\t{:>24}\t{:>17.3f}\t{:>9.3f}\t{:>7.3f}%\t{:>7.3f}%\t{:>10.3f}\t{:>14d}\t[{}]:{}".format(
                r["op"], r["avg_ms"], r["avg_ms"], pct, cdf, 0.0, 1, r["name"], r["index"]))
        return out + [""]

    lines = table("Run Order", ops)
    lines += table("Top by Computation Time", sorted(ops, key=lambda r: -r["avg_ms"])[:10])
    by_type = {}
    for r in ops:
        c, ms = by_type.get(r["op"], (0, 0.0))
        by_type[r["op"]] = (c + 1, ms + r["avg_ms"])
    lines += [f"Number of nodes executed: {len(ops)}",
              f"{'=' * 30} Summary by node type {'=' * 30}",
              "\t{:>24}\t{:>9}\t{:>9}\t{:>11}\t{:>11}\t{:>10}\t{:>14}".format(
                  "[Node type]", "[count]", "[avg ms]", "[avg %]", "[cdf %]", "[mem KB]", "[times called]")]
    cdf = 0.0
    for op, (c, ms) in sorted(by_type.items(), key=lambda kv: -kv[1][1]):
        pct = 100.0 * ms / total
        cdf += pct
        lines.append("\t{:>24}\t{:>9d}\t{:>9.3f}\t{:>10.3f}%\t{:>10.3f}%\t{:>10.3f}\t{:>14d}".format(
            op, c, ms, pct, cdf, 0.0, c))
    lines += ["", f"Timings (microseconds): count={count} first={int(total * 1e3)} curr={int(total * 1e3)} "
                  f"min={int(total * 1e3)} max={int(total * 1e3)} avg={total * 1e3:.6g} std=0",
              "Memory (bytes): count=0", f"{len(ops)} nodes observed", ""]
    return lines


# ------------------------------------------------------------------------------------------- CLI
def main(argv=None):
    p = argparse.ArgumentParser(description="Time a .tflite model with LiteRT (kslim on-device runner).")
    p.add_argument("model", help="path of the .tflite file")
    p.add_argument("--num-threads", "--threads", dest="num_threads", type=int, default=1,
                   help="interpreter threads (--threads: the kslim 0.1 spelling, still read by older hosts)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--no-xnnpack", action="store_true", help="builtin kernels only (no XNNPACK delegate)")
    p.add_argument("--op-profile", action="store_true", help="also time every op as a single-op model")
    p.add_argument("--op-runs", type=int, default=50, help="timed runs per single-op model")
    p.add_argument("--format", choices=("json", "benchmark_model"), default="json")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    with open(args.model, "rb") as f:
        content = f.read()
    if len(content) < 8 or content[4:8] != b"TFL3":
        print(f"error: {args.model} is not a TFLite flatbuffer", file=sys.stderr)
        return 2
    result = benchmark(content, args.num_threads, args.warmup, args.runs, not args.no_xnnpack, args.seed)
    ops = None
    if args.op_profile:
        ops = op_profile(content, args.num_threads, max(args.warmup, 1), args.op_runs, not args.no_xnnpack)
    if args.format == "json":
        result["ops"] = ops
        print(json.dumps(result))
    else:
        sys.stdout.write(format_benchmark_model(result, args.model, ops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
