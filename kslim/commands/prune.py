"""``kslim prune`` (physically smaller model) and ``kslim sensitivity`` (per-layer pruning sensitivity)."""

import argparse
import sys


def _ratio_list(text):
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _name_list(text):
    return [t.strip() for t in text.split(",") if t.strip()]


def _ratios(text):
    """``--ratios``: one number (every prunable group) or ``LAYER=RATIO,...`` items."""
    try:
        return float(text)
    except ValueError:
        return _ratio_map(text)


def _ratio_map(text):
    out = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"expected LAYER=RATIO items separated by commas, got {item!r}")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"ratio of {name.strip()!r} is not a number: {value!r}") from None
    if not out:
        raise argparse.ArgumentTypeError("no LAYER=RATIO item given")
    return out


def _make_pruner(model, args):
    from kslim.prune import make_pruner

    return make_pruner(model, importance=args.importance, skip=args.skip, scope=args.scope,
                       keep_classifier=not args.prune_classifier, round_to=args.round_to)


def _macs(model):
    try:
        from kslim.analysis import flops
    except ImportError:
        return None
    try:
        return int(flops(model).macs)
    except Exception:  # FLOPs are informative here, never a reason to fail the command
        return None


def _accuracy_fn(x, y, batch_size=500):
    import numpy as np

    def evaluate(model):
        correct = 0
        for s in range(0, len(x), batch_size):
            out = np.asarray(model(x[s:s + batch_size], training=False))
            correct += int(np.sum(np.argmax(out, axis=-1) == y[s:s + batch_size]))
        return correct / len(x)

    return evaluate


# -------------------------------------------------------------------------------------------- prune
def _check_prune_args(args):
    """Ratios, targets and files checked before the model loads (one-line errors)."""
    from kslim.commands._common import check_outputs
    from kslim.errors import KslimValueError
    from kslim.validation import check_ratio, check_ratios

    if isinstance(args.ratios, dict):
        check_ratios(args.ratios, "--ratios")
    elif args.ratios is not None:
        check_ratio(args.ratios, "--ratios")
    if args.flops_reduction is not None:
        check_ratio(args.flops_reduction, "--flops-reduction", low_open=True)
    if args.max_loss is not None:
        if args.max_loss <= 0:
            raise KslimValueError(f"--max-loss: {args.max_loss:g} must be > 0 (a relative accuracy loss).")
        if not args.sensitivity:
            raise KslimValueError("--max-loss needs --sensitivity SENS.json (from `kslim sensitivity`).")
    if args.round_to < 1:
        raise KslimValueError(f"--round-to: {args.round_to} must be >= 1.")
    check_outputs(args, "output")


def _share(a, b):
    return f"{b / a:.1%} of the original, {b / a - 1:+.1%}"


def cmd_prune(args):
    from kslim._io import atomic_save_model
    from kslim.commands._common import load_model
    from kslim.errors import KslimValueError

    _check_prune_args(args)
    model = load_model(args.model, args)
    pruner = _make_pruner(model, args)
    info = {}
    if args.flops_reduction is not None:
        if args.sensitivity:
            from kslim.prune.sensitivity import load_sensitivity, ratios_by_flops

            found = ratios_by_flops(model, load_sensitivity(args.sensitivity), args.flops_reduction, pruner=pruner)
            pruned = pruner.prune(found.ratios)
        else:
            found = pruner.prune_to_flops(args.flops_reduction)
            pruned = found.model
        info = found.to_dict()
    elif args.max_loss is not None:
        from kslim.prune.sensitivity import load_sensitivity, ratios_by_loss

        ratios = ratios_by_loss(load_sensitivity(args.sensitivity), args.max_loss)
        if not ratios:
            raise KslimValueError(f"No group stays under --max-loss {args.max_loss}: nothing to prune.")
        pruned = pruner.prune(ratios)
    else:
        pruned = pruner.prune(args.ratios)
    atomic_save_model(pruned, args.output)

    p0, p1 = model.count_params(), pruned.count_params()
    m0, m1 = _macs(model), _macs(pruned)
    print(f"{args.model} -> {args.output}")
    print(f"  params: {p0:,} -> {p1:,} ({_share(p0, p1)})")
    if m0 and m1:
        print(f"  MACs:   {m0:,} -> {m1:,} ({_share(m0, m1)})")
    if info and "max_loss" in info:
        print(f"  sensitivity threshold: {info['max_loss']:.4f} relative loss")
    elif info and "ratio" in info:
        print(f"  uniform ratio: {info['ratio']:.4f} of the channels of every prunable group")
    return 0


# -------------------------------------------------------------------------------------------- sensitivity
def cmd_sensitivity(args):
    from kslim.commands._common import check_outputs, load_data, load_model
    from kslim.validation import check_ratios

    if args.ratios:
        check_ratios(args.ratios, "--ratios")
    check_outputs(args, "checkpoint", "plot")
    from kslim.prune.sensitivity import DEFAULT_RATIOS, sensitivity

    model = load_model(args.model, args)
    x, y, what = load_data(args.data, model, split="test", limit=args.limit, option="--data")
    pruner = _make_pruner(model, args)
    if not args.quiet:
        print(f"evaluating on {what}", file=sys.stderr)
    sens = sensitivity(model, _accuracy_fn(x, y), ratios=args.ratios or DEFAULT_RATIOS, layers=args.layers,
                       checkpoint=args.checkpoint, pruner=pruner, verbose=0 if args.quiet else 1)
    if not args.quiet:
        ratios = sorted({r for c in sens.values() for r in c})
        width = max(len(g) for g in sens)
        print(f"{'group':<{width}}  " + "  ".join(f"{r:>6g}" for r in ratios))
        for g, curve in sens.items():
            print(f"{g:<{width}}  " + "  ".join(f"{curve.get(r, float('nan')):>6.3f}" for r in ratios))
        print(f"relative top-1 accuracy loss per group (rows) and pruning ratio (columns); checkpoint: "
              f"{args.checkpoint}", file=sys.stderr)
    if args.plot:
        from kslim.prune.plot import plot_sensitivity

        plot_sensitivity(sens, args.plot, title=f"Sensitivity of {model.name}")
        if not args.quiet:
            print(f"plot: {args.plot}", file=sys.stderr)
    return 0


def _add_pruner_options(p):
    from kslim.commands._common import add_renamed_option, add_unsafe_option
    from kslim.prune.importance import importance_names  # the registry (no TensorFlow)
    from kslim.prune.scope import scope_names  # the registry (no TensorFlow)

    p.add_argument("--importance", default="l1", choices=importance_names(data=False),
                   help="how channels are ranked (see kslim.prune.importance)")
    add_renamed_option(p, "--criterion", "--importance", choices=importance_names(data=False))
    p.add_argument("--round-to", type=int, default=1, metavar="N",
                   help="keep channel counts multiples of N (e.g. 8 for SIMD kernels)")
    p.add_argument("--skip", type=_name_list, default=None, metavar="A,B",
                   help="layers (or groups) never pruned")
    p.add_argument("--scope", default="all", choices=scope_names(),
                   help="which channel groups may be pruned (kslim.prune.scope; default: all)")
    p.add_argument("--prune-classifier", action="store_true",
                   help="also prune the channels feeding the last Dense layer")
    add_unsafe_option(p)


def register(sub):
    from kslim.commands._common import DATA_HELP, add_renamed_option

    p = sub.add_parser(
        "prune",
        help="filter pruning: a physically smaller .keras model",
        description="Remove whole filters (channels) from a Keras model and save the smaller model. "
                    "Choose exactly one of --ratios, --flops-reduction, --max-loss. Prints the "
                    "params and MACs before and after, and the share of the original model they are.",
    )
    p.add_argument("model", help="input .keras model")
    p.add_argument("-o", "--output", required=True, help="output .keras file")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--ratios", type=_ratios, metavar="R|L1=R,L2=R",
                     help="fraction of channels removed, in [0, 1): one for every prunable group, or per layer")
    how.add_argument("--flops-reduction", type=float, metavar="F",
                     help="fraction of the model's MACs to remove, in (0, 1) (uniform ratio, or from --sensitivity)")
    add_renamed_option(how, "--ratio", "--ratios", type=float)
    add_renamed_option(how, "--flops-target", "--flops-reduction", type=float)
    how.add_argument("--max-loss", type=float, metavar="L",
                     help="per-layer ratios whose relative accuracy loss is L in the sensitivity file (needs --sensitivity)")
    p.add_argument("--sensitivity", metavar="SENS.json",
                   help="sensitivity file from `kslim sensitivity` (with --flops-reduction or --max-loss)")
    _add_pruner_options(p)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser(
        "sensitivity",
        help="accuracy loss of each layer pruned alone at several ratios",
        description="Prune each channel group alone at each ratio and measure the relative top-1 accuracy "
                    "loss on labelled test data (--data). Results go to --checkpoint after every "
                    "measurement; rerunning the same command resumes.",
    )
    p.add_argument("model", help="input .keras model")
    p.add_argument("--data", default="auto", metavar="SOURCE", help=f"labelled evaluation data: {DATA_HELP}")
    p.add_argument("--limit", type=int, default=1000, help="test samples evaluated")
    p.add_argument("--checkpoint", default="sens.json", help="JSON results / resume file")
    p.add_argument("--ratios", type=_ratio_list, default=None, metavar="R,R",
                   help="pruning ratios in [0, 1) (default: 0.1,0.2,...,0.9)")
    p.add_argument("--layers", type=_name_list, default=None, metavar="A,B", help="only these groups (default: all)")
    p.add_argument("--plot", default=None, metavar="PNG", help="save a plot of the curves")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    _add_pruner_options(p)
    p.set_defaults(func=cmd_sensitivity)
