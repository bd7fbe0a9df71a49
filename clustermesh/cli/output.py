"""How commands print results: a rich table for people, JSON for scripts (`-o table|json`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def add_argument(parser: argparse.ArgumentParser, *, default: str = "table") -> None:
    """Add the -o/--output flag."""
    parser.add_argument("-o", "--output", choices=("table", "json"), default=default,
                        help=f"output format (default {default})")


def print_json(obj: Any) -> None:
    """Print obj as indented JSON on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def print_json_line(obj: Any) -> None:
    """Print obj as one line of JSON (for streams such as `kv watch`)."""
    sys.stdout.write(json.dumps(obj, separators=(",", ":"), default=str) + "\n")
    sys.stdout.flush()


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None) -> None:
    """Print rows under columns as a table sized to the terminal (no wrapping when piped)."""
    table = Table(title=title, show_lines=False, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        # Cells are data, not markup: "[fd00::1]:80" must print as it is.
        table.add_row(*("" if cell is None else escape(str(cell)) for cell in row))
    console().print(table)


def console(*, stderr: bool = False) -> Console:
    """A console for stdout (or stderr); wide when not a terminal so scripts get whole lines."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(file=stream, width=None if stream.isatty() else 200, highlight=False)


def error(message: str) -> None:
    """Print one line describing an error on stderr."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
