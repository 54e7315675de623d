"""``kslim quantize`` (post-training static / dynamic / float16) and ``kslim quant-debug``."""

from pathlib import Path

MODES = ("static", "dynamic", "float16")
ALGOS = ("abs_max", "avg", "hist", "KL", "mse")


def _calibration_data(spec, model, samples):
    """``small`` -> the bundled Fashion-MNIST training images; else a ``.npy`` array (batch first)."""
    import numpy as np

    from kslim.errors import KslimFileError, KslimValueError

    shape = tuple(model.inputs[0].shape[1:])
    if spec == "small":
        if shape != (28, 28, 1):
            raise KslimValueError(
                f"--calib small gives 28x28x1 Fashion-MNIST images but model {model.name!r} takes {shape}: "
                "pass --calib X.npy (float32, batch first, preprocessed like the training data)."
            )
        from kslim.datasets import fashion_mnist_small, preprocess

        (x, _), _ = fashion_mnist_small()
        return preprocess(x[:samples])
    path = Path(spec)
    if not path.is_file():
        raise KslimFileError(f"--calib {spec}: no such file (give 'small' or a .npy array).")
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise KslimFileError(f"--calib {spec}: cannot read it as a .npy array: {e}") from e
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "fiu":
        raise KslimFileError(f"--calib {spec}: expected a numeric array, got {getattr(x, 'dtype', type(x))}.")
    return x[:samples]


def _skip(value):
    return [s.strip() for s in value.split(",") if s.strip()] if value else None


def cmd_quantize(args):
    from kslim._model_io import load_keras_model
    from kslim.quant import quant_post_dynamic, quant_post_static

    model = load_keras_model(args.model)
    skip = _skip(args.skip)
    if args.mode == "static":
        x = _calibration_data(args.calib, model, args.batches * args.batch_size)
        io = "int8" if args.int8_io else "float32"
        lite = quant_post_static(
            model, x, algo=args.algo, batch_nums=args.batches, batch_size=args.batch_size,
            weight_quantize_type="abs_max" if args.per_tensor else "channel_wise_abs_max",
            inference_input_type=io, inference_output_type=io, bias_correction=args.bias_correction,
            skip=skip, verbose=args.verbose)
    else:
        lite = quant_post_dynamic(model, dtype="int8" if args.mode == "dynamic" else "float16", skip=skip,
                                  verbose=args.verbose)
    suffix = {"static": "_int8", "dynamic": "_dynamic", "float16": "_fp16"}[args.mode]
    out = Path(args.output) if args.output else Path(args.model).with_name(Path(args.model).stem + suffix + ".tflite")
    lite.save(out)
    detail = f", algo={args.algo}, {lite.calibration['samples']} calibration samples" if args.mode == "static" else ""
    print(f"wrote {out} ({lite.size / 1024:.1f} KB, mode={args.mode}{detail})")
    if lite.parity.get("argmax_agreement") is not None:
        print(f"argmax agreement with the Keras model: {lite.parity['argmax_agreement']:.3f} "
              f"on {lite.parity.get('samples')} samples")
    if args.eval:
        from kslim.datasets import fashion_mnist_small

        if tuple(model.inputs[0].shape[1:]) != (28, 28, 1):
            print("--eval skipped: the model does not take 28x28x1 Fashion-MNIST images")
        else:
            _, (xt, yt) = fashion_mnist_small()
            print(f"top-1 accuracy on the {len(yt)} bundled test images: {lite.evaluate((xt, yt)):.4f}")
    return 0


def cmd_quant_debug(args):
    from kslim._io import atomic_write_json
    from kslim._model_io import load_keras_model
    from kslim.quant import quant_debug

    model = load_keras_model(args.model)
    x = _calibration_data(args.calib, model, args.calib_batches * args.batch_size)
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
    p.add_argument("--algo", choices=ALGOS, default="KL", help="activation calibration algorithm (default KL)")
    p.add_argument("--calib", default="small",
                   help="calibration images: 'small' (bundled Fashion-MNIST) or a .npy array (default small)")
    p.add_argument("--batch-size", type=_positive, default=32, help="calibration batch size (default 32)")
    p.add_argument("--skip", default=None, help="comma-separated Conv/Dense layer names to keep in float")
    p.add_argument("--verbose", action="store_true", help="show the TFLite converter's output")


def register(sub):
    p = sub.add_parser(
        "quantize", help="post-training quantization to .tflite (static int8 / dynamic / float16)",
        description="Quantize a Keras model without training. static: full int8 with activation ranges "
                    "calibrated by kslim (--algo); dynamic: int8 weights, no data; float16: fp16 weights.")
    p.add_argument("model", help="Keras model (.keras)")
    p.add_argument("-o", "--output", help="output .tflite (default MODEL_<mode>.tflite)")
    p.add_argument("--mode", choices=MODES, default="static", help="quantization mode (default static)")
    _common(p)
    p.add_argument("--batches", type=_positive, default=8, help="calibration batches (default 8)")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor (default per channel)")
    p.add_argument("--int8-io", action="store_true", help="int8 input/output tensors (static mode)")
    p.add_argument("--bias-correction", action="store_true", help="empirical bias correction (static mode)")
    p.add_argument("--eval", action="store_true", help="report accuracy on the bundled Fashion-MNIST test images")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser(
        "quant-debug", help="per-layer int8 quantization error report (which layer to keep in float)",
        description="Quantize like 'kslim quantize --mode static' and print the error (SNR, MSE) of every "
                    "quantized tensor against the float model, in graph order.")
    p.add_argument("model", help="Keras model (.keras)")
    _common(p)
    p.add_argument("--calib-batches", type=_positive, default=8, help="calibration batches (default 8)")
    p.add_argument("--batches", type=_positive, default=2, help="batches on which errors are measured (default 2)")
    p.add_argument("--plot", help="save an SNR bar chart (png/pdf/svg)")
    p.add_argument("--json", help="save the report as JSON")
    p.set_defaults(func=cmd_quant_debug)
