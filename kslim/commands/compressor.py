"""``kslim compress CONFIG [--out DIR | --resume DIR]``."""


def cmd_compress(args):
    from pathlib import Path

    from kslim.compressor import Compressor
    from kslim.compressor.run_dir import RunDir
    from kslim.errors import ConfigError

    if args.resume and args.out:
        raise ConfigError("give either --out (new run) or --resume (continue a run), not both", path="--resume")
    config = args.config
    if args.resume and config is None:
        config = RunDir(args.resume).stored_config()
    if config is None:
        raise ConfigError("give a CONFIG file (or --resume RUN_DIR to continue a run)", path="CONFIG")
    comp = Compressor(config, out=args.resume or args.out, verbose=args.verbose)
    result = comp.run(resume=bool(args.resume))
    print(result.report.read_text())
    print(f"run directory: {result.run_dir}\nfinal model:   {result.final_tflite}")
    return 0


def register(sub):
    p = sub.add_parser(
        "compress",
        help="run a compression config (prune -> distill -> quantize -> export -> profile)",
        description="Run the strategies of a YAML config in order, checkpointing into a run directory. "
                    "An interrupted run (even kill -9) continues with --resume RUN_DIR.",
    )
    p.add_argument("config", nargs="?", help="YAML config (optional with --resume: the run's own copy is used)")
    p.add_argument("--out", help="run directory of a new run (default kslim_runs/<name>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the interrupted run in RUN_DIR")
    p.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2), help="Keras training verbosity")
    p.set_defaults(func=cmd_compress)
