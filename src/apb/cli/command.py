"""One way to declare a subcommand of ``apb``: a name, its help, a function that adds its
arguments and one that runs it (or, for a group such as ``apb bench``, its subcommands)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from .flags import Parser


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    description: str = ""
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    run: Callable[[argparse.Namespace], int | None] | None = None
    subcommands: tuple[Command, ...] = ()

    def register(self, subparsers) -> None:
        """Add this command (and its subcommands) to ``subparsers``."""
        parser = subparsers.add_parser(self.name, help=self.help,
                                       description=self.description or None)
        if self.subcommands:
            inner = parser.add_subparsers(dest=f"{self.name}_command", required=True,
                                          metavar=self.name.upper(), parser_class=Parser)
            for command in self.subcommands:
                command.register(inner)
            return
        if self.arguments is not None:
            self.arguments(parser)
        parser.set_defaults(run=self.run)
