"""The ``apb`` command: ``apb train | ptq | prune-quantized | compare | plot-weights | summary |
pack | xor-encode | xor-decode | eval | demo | bench gemm|model|xor``.

Every subcommand is a :class:`~apb.cli.command.Command`, registered the same way. Flags of
the commands that run a job are the fields of its dataclass (``apb train``:
:class:`apb.train.TrainConfig` and the chosen method's config). Errors a user can fix print
one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .bench import BENCH
from .command import CLIError, Command
from .commands import COMMANDS
from .flags import EXIT_USAGE, Parser

__all__ = ["CLIError", "COMMANDS", "Command", "EXIT_USAGE", "build_parser", "main"]

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
               PermissionError, CLIError)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="apb",
        description="Automatic Prune Binarization: train, inspect, pack, evaluate and demo "
                    "compressed models.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=Parser)
    for command in (*COMMANDS, BENCH):
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("apb: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"apb {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
