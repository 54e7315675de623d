"""``kslim flops``: MACs, FLOPs and parameters of a saved Keras model."""

from kslim.errors import KslimValueError


def parse_input_shape(text):
    """``"28,28,1"`` -> ``(28, 28, 1)``; ``"28,28,1;10"`` -> ``[(28, 28, 1), (10,)]`` (several inputs)."""
    if text is None:
        return None
    shapes = []
    for part in text.split(";"):
        try:
            dims = tuple(int(d) for d in part.replace("x", ",").split(",") if d.strip())
        except ValueError:
            dims = ()
        if not dims or any(d < 1 for d in dims):
            raise KslimValueError(
                f"--input-shape {text!r}: expected positive integers separated by commas, without the "
                "batch axis, e.g. --input-shape 28,28,1 (separate several inputs with ';')."
            )
        shapes.append(dims)
    return shapes[0] if len(shapes) == 1 else shapes


def cmd_flops(args):
    from kslim.commands._common import check_outputs, load_model
    from kslim.errors import ModelError

    input_shape = parse_input_shape(args.input_shape)  # bad shapes fail before the slow load
    check_outputs(args, "json")
    from kslim.analysis import flops

    model = load_model(args.model, args)
    try:
        report = flops(model, input_shape=input_shape, detail=args.detail)
    except ModelError as e:
        raise ModelError(f"{args.model}: {e}") from e
    print(report)
    if args.json:
        from kslim._io import atomic_write_json

        atomic_write_json(args.json, report.to_dict())
    return 0


def register(sub):
    p = sub.add_parser(
        "flops",
        help="MACs, FLOPs and parameters of a saved Keras model",
        description="Count multiply-accumulates (MACs), FLOPs (= 2 x MACs) and parameters of a .keras "
                    "model, per sample. Only conv/dense MACs count; BN, activations, pooling and adds "
                    "are shown apart as elementwise ops.",
    )
    p.add_argument("model", help="the model file (.keras)")
    p.add_argument("--input-shape", metavar="H,W,C",
                   help="input shape without the batch axis, e.g. 28,28,1; needed if the model has none")
    p.add_argument("--detail", action="store_true", help="show the per-layer table")
    p.add_argument("--json", metavar="PATH", help="also write the report (with all rows) as JSON")
    from kslim.commands._common import add_unsafe_option

    add_unsafe_option(p)
    p.set_defaults(func=cmd_flops)
