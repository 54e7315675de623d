"""``kslim quantize`` (post-training static / dynamic / float16) and ``kslim quant-debug``."""

from pathlib import Path

from kslim.validation import api_constant

MODES = ("static", "dynamic", "float16")
ALGOS = api_constant("kslim.quant.calibration", "ALGOS")   # the API's own list, read without TensorFlow
RECIPES = tuple(api_constant("kslim.quant.litert", "RECIPES"))
STATIC_RECIPES = tuple(api_constant("kslim.quant.litert", "STATIC_RECIPES"))


def _skip(value):
    return [s.strip() for s in value.split(",") if s.strip()] if value else None


def _default_output(args):
    suffix = {"static": "_int8", "dynamic": "_dynamic", "float16": "_fp16"}[args.mode]
    if args.recipe:
        suffix = f"_{args.recipe}"
    elif args.size_budget is not None or args.latency_budget is not None:
        suffix = "_mixed"
    return Path(args.output) if args.output else Path(args.model).with_name(Path(args.model).stem + suffix + ".tflite")


def cmd_quantize(args):
    from kslim.commands._common import calibration_data, load_data, load_model
    from kslim.validation import check_output_path

    _check_backend_options(args)
    out = check_output_path(_default_output(args), "-o")  # before TensorFlow, the model and the work
    from kslim.quant import quant_post_dynamic, quant_post_litert, quant_post_static
    from kslim.quant.mixed import quant_post_mixed

    model = load_model(args.model, args)
    skip = _skip(args.skip)
    eval_data = None
    if args.eval:
        eval_data = load_data(args.eval, model, split="test", option="--eval")  # bad data fail before the work
    mixed = None
    if args.size_budget is not None or args.latency_budget is not None:
        x, what = calibration_data(args, model, args.batches * args.batch_size)
        mixed = quant_post_mixed(model, x, size_budget=args.size_budget, latency_budget=args.latency_budget,
                                 algo=args.algo, num_calibration_samples=args.batches * args.batch_size)
        lite = mixed.lite
    elif args.recipe:
        x, what = (calibration_data(args, model, args.batches * args.batch_size) if args.recipe in STATIC_RECIPES
                   else (None, None))
        lite = quant_post_litert(model, args.recipe, x, args.batches * args.batch_size,
                                 algo=args.algo if x is not None else None, batch_size=args.batch_size)
    elif args.mode == "static":
        x, what = calibration_data(args, model, args.batches * args.batch_size)
        io = "int8" if args.int8_io else "float32"
        lite = quant_post_static(
            model, x, algo=args.algo, batch_nums=args.batches, batch_size=args.batch_size,
            weight_quantize_type="abs_max" if args.per_tensor else "channel_wise_abs_max",
            inference_input_type=io, inference_output_type=io, bias_correction=args.bias_correction,
            skip=skip, verbose=args.verbose)
    else:
        lite = quant_post_dynamic(model, dtype="int8" if args.mode == "dynamic" else "float16", skip=skip,
                                  verbose=args.verbose)
    lite.save(out)
    if mixed is not None:
        print(mixed.summary())
        print(f"wrote {out} ({lite.size / 1024:.1f} KB, mixed precision, algo={args.algo}: {what})")
    elif args.recipe:
        detail = f", algo={args.algo}: {what}" if args.recipe in STATIC_RECIPES else ""
        print(f"wrote {out} ({lite.size / 1024:.1f} KB, LiteRT quantizer recipe {args.recipe}{detail})")
    else:
        detail = ""
        if args.mode == "static":
            detail = f", algo={args.algo}, {lite.calibration['samples']} calibration samples: {what}"
        print(f"wrote {out} ({lite.size / 1024:.1f} KB, mode={args.mode}{detail})")
    if lite.parity.get("argmax_agreement") is not None:
        print(f"argmax agreement with the Keras model: {lite.parity['argmax_agreement']:.3f} "
              f"on {lite.parity.get('samples')} samples")
    if eval_data is not None:
        xt, yt, what = eval_data
        print(f"top-1 accuracy of the .tflite on {what}: {lite.evaluate((xt, yt)):.4f}")
    return 0


def cmd_quant_debug(args):
    from kslim._io import atomic_write_json
    from kslim.commands._common import calibration_data, check_outputs, load_model

    check_outputs(args, "plot", "json")
    from kslim.quant import quant_debug

    model = load_model(args.model, args)
    x, _ = calibration_data(args, model, args.calib_batches * args.batch_size)
    report = quant_debug(model, x, algo=args.algo, batches=args.batches, batch_size=args.batch_size,
                         batch_nums=args.calib_batches, skip=_skip(args.skip), verbose=args.verbose)
    print(report)
    if args.plot:
        report.plot(args.plot)
        print(f"wrote {args.plot}")
    if args.json:
        atomic_write_json(args.json, report.to_dict())
        print(f"wrote {args.json}")
    return 0


def _check_backend_options(args):
    """--recipe / --size-budget / --latency-budget against the converter-only options (before any work)."""
    from kslim.errors import KslimValueError

    mixed = args.size_budget is not None or args.latency_budget is not None
    if args.recipe and mixed:
        raise KslimValueError("--recipe and --size-budget/--latency-budget exclude each other: a budget chooses "
                              "the recipe of each layer itself.")
    if args.recipe or mixed:
        what = f"--recipe {args.recipe}" if args.recipe else "--size-budget/--latency-budget"
        for flag, on in (("--mode", args.mode != "static"), ("--per-tensor", args.per_tensor),
                         ("--int8-io", args.int8_io), ("--bias-correction", args.bias_correction),
                         ("--skip", bool(args.skip))):
            if on:
                raise KslimValueError(f"{flag} belongs to the converter path; {what} uses LiteRT's quantizer: "
                                      f"drop one of them.")
    for flag, v in (("--size-budget", args.size_budget), ("--latency-budget", args.latency_budget)):
        if v is not None and not v > 0:
            raise KslimValueError(f"{flag} must be > 0 (bytes or ms, or a fraction <= 10 of the int8 model), got {v}.")


def _positive(value):
    import argparse

    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def _common(p):
    from kslim.commands._common import DATA_HELP, add_random_calibration_option, add_unsafe_option

    p.add_argument("--algo", choices=ALGOS, default="KL", help="activation calibration algorithm")
    p.add_argument("--calib", default="auto", metavar="SOURCE", help=f"calibration data: {DATA_HELP}")
    add_random_calibration_option(p)
    p.add_argument("--batch-size", type=_positive, default=32, help="calibration batch size")
    p.add_argument("--skip", default=None, metavar="A,B", help="comma-separated Conv/Dense layer names to keep in float")
    p.add_argument("--verbose", action="store_true", help="show the TFLite converter's output")
    add_unsafe_option(p)


def register(sub):
    from kslim.commands._common import DATA_HELP

    p = sub.add_parser(
        "quantize", help="post-training quantization to .tflite (static int8 / dynamic / float16)",
        description="Quantize a Keras model without training. static: full int8 with activation ranges "
                    "calibrated by kslim (--algo) on --calib data; dynamic: int8 weights, no data; float16: "
                    "fp16 weights.")
    p.add_argument("model", help="Keras model (.keras)")
    p.add_argument("-o", "--output", help="output .tflite (default: MODEL_int8/_dynamic/_fp16.tflite next to the model)")
    p.add_argument("--mode", choices=MODES, default="static", help="quantization mode")
    _common(p)
    p.add_argument("--batches", type=_positive, default=8, help="calibration batches")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor (default: per channel)")
    p.add_argument("--int8-io", action="store_true", help="int8 input/output tensors (static mode)")
    p.add_argument("--bias-correction", action="store_true", help="empirical bias correction (static mode)")
    p.add_argument("--recipe", choices=RECIPES, default=None,
                   help="quantize with LiteRT's quantizer (ai-edge-quantizer) under this recipe instead of the "
                        f"converter; the static ones ({', '.join(STATIC_RECIPES)}) take kslim's --algo ranges")
    p.add_argument("--size-budget", type=float, default=None, metavar="B",
                   help="mixed precision: int4 weights (int8x4) on the layers where they hurt least, until the "
                        ".tflite fits B bytes (B <= 10: a fraction of the int8 model's size)")
    p.add_argument("--latency-budget", type=float, default=None, metavar="MS",
                   help="mixed precision: int16 activations (int16x8) where they help most, within MS ms of "
                        "batch-1 latency on this CPU (MS <= 10: a multiple of the int8 model's)")
    p.add_argument("--eval", nargs="?", const="auto", default=None, metavar="SOURCE",
                   help=f"also report the .tflite's top-1 accuracy on labelled data: {DATA_HELP} "
                        "(default when given without SOURCE: auto)")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser(
        "quant-debug", help="per-layer int8 quantization error report (which layer to keep in float)",
        description="Quantize like 'kslim quantize --mode static' and print the error (SNR, MSE) of every "
                    "quantized tensor against the float model, in graph order.")
    p.add_argument("model", help="Keras model (.keras)")
    _common(p)
    p.add_argument("--calib-batches", type=_positive, default=8, help="calibration batches")
    p.add_argument("--batches", type=_positive, default=2, help="batches on which errors are measured")
    p.add_argument("--plot", metavar="FILE", help="save an SNR bar chart (png/pdf/svg)")
    p.add_argument("--json", metavar="FILE", help="save the report as JSON")
    p.set_defaults(func=cmd_quant_debug)
