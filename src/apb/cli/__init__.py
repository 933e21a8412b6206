"""The ``apb`` command: ``apb train | ptq | prune-quantized | compare | plot-weights | summary |
pack | xor-encode | xor-decode | repack | eval | demo | bench gemm|model|xor``.

Every subcommand is a :class:`~apb.cli.command.Command`, registered the same way. Flags of
the commands that run a job are the fields of its dataclass (``apb train``:
:class:`apb.train.TrainConfig` and the chosen method's config). Errors a user can fix print
one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator, Sequence

from .bench import BENCH
from .command import CLIError, Command
from .commands import COMMANDS
from .flags import EXIT_USAGE, Parser

__all__ = ["CLIError", "COMMANDS", "Command", "EXIT_USAGE", "build_parser", "main"]

USER_ERRORS = (ValueError, TypeError, OSError, MemoryError, OverflowError, CLIError)
"""Failures the user can act on (bad input, damaged or hostile files, outputs that cannot be
written, too little memory): one line on stderr, exit status 2. Anything else is a bug and
keeps its traceback."""

INPUTS = ("checkpoint", "model", "packed", "encoded", "input", "hf", "data_dir")
"""The argument names of a command's input files, named in an out-of-memory message."""


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
        with _one_line_warnings(args.command):
            return args.run(args)
    except KeyboardInterrupt:
        print("apb: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as err:  # torch reports a failed allocation as a RuntimeError
        if not _is_allocation_failure(err):
            raise
        message = _out_of_memory(args)
    except USER_ERRORS as err:
        message = (_out_of_memory(args) if isinstance(err, MemoryError)
                   else error_line(err))
    print(f"apb {args.command}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def error_line(err: BaseException) -> str:
    """One line saying what went wrong: the first line of the message; for an OS error
    its reason and the file(s) it names."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        names = f"{err.filename}" + (f" -> {err.filename2}" if err.filename2 else "")
        return f"{err.strerror}: {names}"
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    if isinstance(err, OverflowError):
        line = f"a number out of range ({line})"
    return line if len(line) <= 400 else line[:397] + "..."


def _is_allocation_failure(err: RuntimeError) -> bool:
    text = str(err).lower()
    return "can't allocate memory" in text or "not enough memory" in text or (
        "out of memory" in text)


def _out_of_memory(args: argparse.Namespace) -> str:
    named = [str(v) for k in INPUTS if isinstance(v := getattr(args, k, None), str) and v]
    what = f" processing {', '.join(named)}" if named else ""
    return (f"out of memory{what}; the input may be damaged, or too large for this machine "
            "(packed and XOR files are checked against a budget: see APB_MAX_LOAD_BYTES)")


@contextlib.contextmanager
def _one_line_warnings(command: str) -> Iterator[None]:
    """Warnings printed as one line each (``apb CMD: warning: ...``) while a command runs."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message).strip().splitlines()
        print(f"apb {command}: warning: {text[0] if text else category.__name__}",
              file=sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous
