"""Tables for the terminal: every report apb prints is a rich table rendered to text, so
the same string goes to a terminal, a log or a test."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table


def table_text(table: Table, width: int = 120) -> str:
    """``table`` rendered as plain text, ``width`` columns at most."""
    buf = io.StringIO()
    Console(file=buf, width=width, force_terminal=False).print(table)
    return buf.getvalue()
