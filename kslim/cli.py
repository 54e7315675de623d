"""The ``kslim`` command line.

Subcommands are registered by the modules of ``kslim.commands`` listed in ``COMMAND_MODULES``:
each exposes ``register(subparsers)`` which adds its parsers and sets ``func`` (called with the
parsed args; returns an exit code). Those modules import nothing heavy at module level: TensorFlow
is imported inside the command functions, so that ``kslim --help`` is instant.

Every option has a help text and shows its default (:class:`HelpFormatter`). Errors kslim raises
on bad input print one line ``kslim CMD: error: ...`` and exit with 1; Ctrl-C exits with 130 and,
for commands that write a resumable run, says how to resume it (:mod:`kslim._interrupt`).
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


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help unless the help already states its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (action.option_strings and action.nargs != 0 and default not in (None, False, argparse.SUPPRESS)
                and "default" not in text):
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with kslim's :class:`HelpFormatter` (subcommand parsers included)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser():
    parser = Parser(
        prog="kslim",
        description="Model compression for Keras 3: pruning, quantization, distillation, search, TFLite.",
    )
    from kslim._version import __version__

    parser.add_argument("--version", action="version", version=f"kslim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
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
    from kslim import _interrupt
    from kslim._litert_log import quiet_litert_info

    _interrupt.reset()
    _interrupt.resume_hint = None
    if args.command != "info":
        quiet_litert_info()  # no "INFO: Created TensorFlow Lite XNNPACK delegate" line on every command
    try:
        return int(args.func(args) or 0)
    except KslimError as e:
        print(f"kslim {args.command}: error: {e}", file=sys.stderr)
        return 1
    except BaseException as e:
        if not (isinstance(e, KeyboardInterrupt) or _interrupt.requested()):
            raise
        # after a Ctrl-C, whatever TensorFlow turned the interrupt into (a SystemError from its
        # bindings, ...) is the interrupt
        hint = f"; {_interrupt.resume_hint}" if _interrupt.resume_hint else ""
        print(f"\nkslim {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
