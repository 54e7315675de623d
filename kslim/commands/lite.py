"""``kslim convert``, ``kslim profile`` and ``kslim latency-table build|predict``."""

import sys
from pathlib import Path


def _load_any(path, args):
    """A LiteModel for a ``.tflite`` path, a Keras model for anything else."""
    from kslim.commands._common import load_model
    from kslim.lite import LiteModel

    if str(path).lower().endswith(".tflite"):
        return LiteModel.load(path)
    return load_model(path, args)


def cmd_convert(args):
    from kslim.commands._common import calibration_data, load_model
    from kslim.validation import check_output_path

    out = check_output_path(args.output or Path(args.model).with_suffix(".tflite"), "-o")
    from kslim.lite import convert

    model = load_model(args.model, args)
    q = None if args.quantize == "none" else args.quantize
    rep = what = None
    if q == "int8" and not args.qat:
        rep, what = calibration_data(args, model, args.calibration_samples, option="--calibration-data")
    io = "int8" if args.io_int8 else "float32"
    lm = convert(model, quantize=q, representative_data=rep, num_calibration_samples=args.calibration_samples,
                 inference_input_type=io, inference_output_type=io, check=not args.no_check,
                 check_data=rep, verbose=args.verbose)
    lm.save(out)
    print(f"wrote {out} ({lm.size / 1024:.1f} KB, quantize={args.quantize}"
          + (f", calibrated on {what}" if what else "") + ")")
    print("ops: " + ", ".join(f"{k} x{v}" for k, v in sorted(lm.ops().items())))
    if lm.parity:
        p = lm.parity
        extra = "" if p.get("argmax_agreement") is None else f", argmax agreement {p['argmax_agreement']:.3f}"
        print(f"parity vs Keras ({p['samples']} samples): max abs diff {p['max_abs_diff']:.3g}{extra}")
    return 0


def _device(args):
    from kslim.lite import AdbDevice, LocalDevice, SshDevice

    if args.device == "local":
        return LocalDevice(use_xnnpack=not args.no_xnnpack)
    if args.device == "adb":
        return AdbDevice(serial=args.serial, benchmark_binary=args.benchmark_binary, adb=args.adb,
                         timeout=args.timeout)
    from kslim.errors import KslimValueError

    if not args.host:
        raise KslimValueError("--device ssh needs --host HOST (and --user, --port as for ssh).")
    mode = "benchmark_model" if args.benchmark_binary else "runner"
    return SshDevice(args.host, user=args.user, port=args.port, identity_file=args.identity_file, mode=mode,
                     benchmark_binary=args.benchmark_binary, python=args.python, timeout=args.timeout)


def _device_args(p):
    from kslim.commands._common import add_renamed_option

    g = p.add_argument_group("device")
    g.add_argument("--device", choices=("local", "adb", "ssh"), default="local",
                   help="where to run: this host, an Android phone over adb, a board over ssh")
    g.add_argument("--num-threads", type=int, default=1, help="interpreter threads")
    add_renamed_option(g, "--threads", "--num-threads", type=int)
    g.add_argument("--no-xnnpack", action="store_true", help="builtin kernels only")
    g.add_argument("--serial", help="adb: device serial (adb devices)")
    g.add_argument("--adb", default="adb", help="adb: executable")
    g.add_argument("--benchmark-binary", help="adb/ssh: local path of TFLite's benchmark_model for the device")
    g.add_argument("--host", help="ssh: host name")
    g.add_argument("--user", help="ssh: user (default: ssh's)")
    g.add_argument("--port", type=int, help="ssh: port (default: ssh's)")
    g.add_argument("--identity-file", help="ssh: private key (default: ssh's)")
    g.add_argument("--python", default="python3", help="ssh: Python with ai-edge-litert on the board")
    g.add_argument("--timeout", type=float, default=300, help="seconds allowed per benchmark command")


def cmd_profile(args):
    from kslim.commands._common import check_outputs

    check_outputs(args, "json", "plot")
    from kslim.lite import LiteModel, profile

    lm = LiteModel.load(args.model)
    dev = _device(args)
    rep = profile(lm, device=dev, num_threads=args.num_threads, warmup=args.warmup, runs=args.runs,
                  use_xnnpack=not args.no_xnnpack, use_gpu=args.gpu, op_profiling=args.op_profile or bool(args.plot))
    # ProfileReport's peak memory is the peak RSS of the whole measuring process (Python, TensorFlow
    # and the interpreter), not of the model alone: say so
    print(str(rep).replace("peak memory", "peak memory of the process"))
    if rep.ops and args.op_profile:
        print(f"{'#':>3}  {'op':<22} {'ms':>9}  name")
        for r in rep.ops:
            print(f"{r['index']:>3}  {r['op']:<22} {r['avg_ms']:9.4f}  {r.get('name', '')[:60]}")
    if args.json:
        rep.save(args.json)
        print(f"wrote {args.json}")
    if args.plot:
        rep.plot_by_op_type(args.plot)
        print(f"wrote {args.plot}")
    return 0


def cmd_table_build(args):
    from kslim.commands._common import check_outputs

    check_outputs(args, "output")
    from kslim.lite import LatencyTable

    models = [_load_any(m, args) for m in args.models]
    for m, path in zip(models, args.models):
        if hasattr(m, "source"):
            m.source = Path(path).name
    table = LatencyTable.build(_device(args), models, num_threads=args.num_threads, runs=args.runs,
                               repeats=args.repeats, calibrate=not args.no_calibrate, progress=sys.stdout.isatty())
    table.save(args.output)
    cal = table.calibration
    print(f"wrote {args.output}: {len(table)} op configurations, device {table.device.get('kind')}, "
          f"threads {table.num_threads}, calibration intercept {cal['intercept_us']:.1f} us, "
          f"{cal.get('per_op_us', 0.0):.2f} us per op, {cal.get('cold_us_per_mb', 0.0):.1f} us per cold MiB of weights")
    return 0


def cmd_table_predict(args):
    from kslim.commands._common import check_outputs

    check_outputs(args, "json", "plot")
    from kslim.lite import LatencyPredictor, LatencyTable, plot_by_op_type

    pred = LatencyPredictor(LatencyTable.load(args.table))
    results = []
    for path in args.models:
        r = pred.predict(_load_any(path, args))
        flag = f"  (fallback for {r.fallback_ops} ops, {100 * r.fallback_fraction:.0f} % of the sum)" if r.flagged else ""
        print(f"{path}: {r.total_ms:.4f} ms predicted at {r.num_threads} thread(s){flag}")
        results.append({"model": str(path), "predicted_ms": r.total_ms, "fallback_ops": r.fallback_ops,
                        "ops": r.ops})
        if args.plot:
            out = Path(args.plot)
            if len(args.models) > 1:
                out = out.with_name(f"{out.stem}_{Path(path).stem}{out.suffix}")
            plot_by_op_type(r.by_op_type(), out, f"predicted latency by op type: {Path(path).name}")
            print(f"wrote {out}")
    if args.json:
        from kslim._io import atomic_write_json

        atomic_write_json(args.json, results)
    return 0


def register(sub):
    from kslim.commands._common import DATA_HELP, add_random_calibration_option, add_unsafe_option
    from kslim.lite.converter import QUANTIZE_MODES  # the API's choices (numpy only, no TensorFlow)

    p = sub.add_parser("convert", help="convert a Keras model to .tflite (float, dynamic, float16, int8)",
                       description="Convert a .keras model to TFLite, check it against Keras and save it.")
    p.add_argument("model", help="a .keras model file")
    p.add_argument("-o", "--output", help="output .tflite (default: MODEL.tflite next to the model)")
    p.add_argument("--quantize", choices=[m or "none" for m in QUANTIZE_MODES], default="none",
                   help="none: float32 (int8 for a QAT model); float32: float even for a QAT model; dynamic: int8 "
                        "weights; float16: fp16 weights; int8: full integer (as kslim.lite.convert's quantize=)")
    p.add_argument("--calibration-data", default="auto", metavar="SOURCE",
                   help=f"int8: calibration inputs, {DATA_HELP}")
    add_random_calibration_option(p)
    p.add_argument("--calibration-samples", type=int, default=200, help="int8: calibration inputs used")
    p.add_argument("--qat", action="store_true", help="int8 from a QAT model's own ranges, no calibration data")
    p.add_argument("--io-int8", action="store_true", help="int8: int8 input and output tensors")
    p.add_argument("--no-check", action="store_true", help="skip the parity check against Keras")
    p.add_argument("--verbose", action="store_true", help="show the converter's own output")
    add_unsafe_option(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("profile", help="latency of a .tflite on the host, an adb phone or an ssh board",
                       description="Time a .tflite model: mean/median/p5/p95/std, init time, peak memory of "
                                   "the measuring process, optionally per-op latencies and a plot by op type.")
    p.add_argument("model", help="a .tflite file")
    _device_args(p)
    p.add_argument("--runs", type=int, default=50, help="timed invokes")
    p.add_argument("--warmup", type=int, default=10, help="untimed invokes first")
    p.add_argument("--gpu", action="store_true", help="GPU delegate (benchmark_model devices only)")
    p.add_argument("--op-profile", action="store_true", help="per-op latencies")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON")
    p.add_argument("--plot", metavar="FILE", help="save a bar chart of latency by op type (png/pdf/svg)")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("latency-table", help="build a per-op latency table / predict latency from one")
    tsub = p.add_subparsers(dest="table_command", metavar="ACTION", required=True)
    b = tsub.add_parser("build", help="measure every op configuration of the given models on a device")
    b.add_argument("models", nargs="+", help=".tflite or .keras models")
    b.add_argument("-o", "--output", required=True, help="table file (.json or .csv)")
    _device_args(b)
    b.add_argument("--runs", type=int, default=100, help="timed invokes per op configuration")
    b.add_argument("--repeats", type=int, default=3, help="repeats (median of medians)")
    b.add_argument("--no-calibrate", action="store_true", help="skip timing the whole models for calibration")
    add_unsafe_option(b)
    b.set_defaults(func=cmd_table_build)
    q = tsub.add_parser("predict", help="predict the latency of models from a table")
    q.add_argument("models", nargs="+", help=".tflite or .keras models")
    q.add_argument("--table", required=True, help="a table written by `kslim latency-table build`")
    q.add_argument("--json", metavar="FILE", help="write the predictions (with per-op rows) as JSON")
    q.add_argument("--plot", metavar="FILE", help="save a bar chart of predicted latency by op type")
    add_unsafe_option(q)
    q.set_defaults(func=cmd_table_predict)
