"""The ``kslim`` command line.

Subcommands are registered by the modules of ``kslim.commands`` listed in ``COMMAND_MODULES``:
each exposes ``register(subparsers)`` which adds its parsers and sets ``func`` (called with the
parsed args; returns an exit code). Those modules import nothing heavy at module level: TensorFlow
is imported inside the command functions, so that ``kslim --help`` is instant.
"""

import argparse
import importlib
import os
import sys

from kslim.errors import KslimError

COMMAND_MODULES = (
    "kslim.commands.general",     # info, demo
    "kslim.commands.analysis",    # flops
    "kslim.commands.prune",       # prune, sensitivity
    "kslim.commands.quant",       # quantize
    "kslim.commands.lite",        # convert, profile, latency-table
    "kslim.commands.nas",         # search
    "kslim.commands.compressor",  # compress
)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="kslim",
        description="Model compression for Keras 3: pruning, quantization, distillation, search, TFLite.",
    )
    from kslim._version import __version__

    parser.add_argument("--version", action="version", version=f"kslim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # that area has no command line yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KslimError as e:
        print(f"kslim {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"kslim {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
