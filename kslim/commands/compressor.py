"""``kslim compress CONFIG [--out DIR | --resume DIR] [--quick]``, ``kslim compress --list-strategies``."""


def strategy_lines():
    """One line per registered strategy (:mod:`kslim.compressor.strategies`): name, what it does, its fields."""
    from kslim.compressor import registered_strategies

    lines = []
    for s in registered_strategies():
        fields = ", ".join(sorted(s.schema.get("properties", {}))) or "none"
        lines.append(f"{s.name}: {s.doc or '(no description)'}\n    fields: {fields}")
    return lines


def run_resumable(comp, resume, command):
    """``comp.run(resume)``; after a Ctrl-C the command line says how to resume the run directory."""
    from kslim import _interrupt

    def hint():
        return (f"the run directory {comp.run_dir.path} is resumable: {command} --resume {comp.run_dir.path}"
                if comp.run_dir.state_file.is_file() else None)

    try:
        return comp.run(resume=resume)
    except BaseException:
        _interrupt.resume_hint = hint()
        raise


def cmd_compress(args):
    from kslim.compressor import Compressor
    from kslim.compressor.run_dir import RunDir
    from kslim.errors import ConfigError

    if args.list_strategies:
        print("\n".join(strategy_lines()))
        return 0
    if args.resume and args.out:
        raise ConfigError("give either --out (new run) or --resume (continue a run), not both", path="--resume")
    config = args.config
    if args.resume and config is None:
        config = RunDir(args.resume).stored_config()
    if config is None:
        raise ConfigError("give a CONFIG file (or --resume RUN_DIR to continue a run)", path="CONFIG")
    comp = Compressor(config, out=args.resume or args.out, verbose=args.verbose, quick=args.quick,
                      progress=True, unsafe=args.unsafe)
    result = run_resumable(comp, bool(args.resume), "kslim compress")
    print(result.report.read_text())
    print(f"run directory: {result.run_dir}\nfinal model:   {result.final_tflite}")
    return 0


def register(sub):
    from kslim.commands._common import add_unsafe_option

    p = sub.add_parser(
        "compress",
        help="run a compression config (prune -> distill -> quantize -> export -> profile)",
        description="Run the strategies of a YAML config in order, checkpointing into a run directory. "
                    "The config, the output folder, model files and data hook are checked before any work. "
                    "An interrupted run (Ctrl-C, even kill -9) continues with --resume RUN_DIR.",
    )
    p.add_argument("config", nargs="?", help="YAML config (optional with --resume: the run's own copy is used)")
    p.add_argument("--out", help="run directory of a new run (default: kslim_runs/<name>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the interrupted run in RUN_DIR")
    p.add_argument("--quick", action="store_true",
                   help="smoke version: at most 512 training / 256 test images (data.train_limit / test_limit), "
                        "1 epoch per stage, 10 latency runs; the run is named <name>-quick")
    p.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2),
                   help="Keras training verbosity (0 silent, 1 progress bar, 2 one line per epoch); kslim's "
                        "stage headers are always shown")
    p.add_argument("--list-strategies", action="store_true",
                   help="list the strategies a config can name (the registry), with their fields, and exit")
    add_unsafe_option(p)
    p.set_defaults(func=cmd_compress)
