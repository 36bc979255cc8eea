"""The only place that prints.

People get rich output on stderr-friendly consoles: checks with ✔/✘, tables, a live progress
line. Machines get `--json`: exactly one JSON document on stdout, and human lines go to stderr
so they never corrupt it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.markup import escape
from rich.status import Status
from rich.table import Table


class UI:
    def __init__(self, *, json_mode: bool = False, stdout: IO[str] | None = None,
                 stderr: IO[str] | None = None, color: bool | None = None) -> None:
        self.json_mode = json_mode
        self._stdout = stdout or sys.stdout
        human = stderr or sys.stderr if json_mode else stdout or sys.stdout
        self.console = Console(file=human, highlight=False, soft_wrap=True,
                               no_color=color is False, force_terminal=color or None)
        if not self.console.is_terminal:
            self.console.width = 200  # logs and CI: no terminal to fit, keep ids whole
        self._said_once: set[str] = set()

    # Lines for people
    def info(self, message: str) -> None:
        self.console.print(escape(message))

    def note(self, message: str) -> None:
        self.console.print(f"[dim]{escape(message)}[/dim]")

    def once(self, message: str) -> None:
        """Say something only the first time (e.g. "using the sandbox")."""
        if message not in self._said_once:
            self._said_once.add(message)
            self.note(message)

    def success(self, message: str) -> None:
        self.console.print(f"[green]✔[/green] {escape(message)}")

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]![/yellow] {escape(message)}")

    def failure(self, message: str) -> None:
        self.console.print(f"[red]✘[/red] {escape(message)}")

    def check(self, ok: bool, what: str, detail: str = "") -> None:
        """One converge line: ✔ what (detail) or ✘ what (detail)."""
        suffix = f" [dim]— {escape(detail)}[/dim]" if detail else ""
        mark = "[green]✔[/green]" if ok else "[red]✘[/red]"
        self.console.print(f"{mark} {escape(what)}{suffix}")

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[object]], *, title: str = "") -> None:
        table = Table(title=title or None, show_lines=False, header_style="bold")
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*(escape(_cell(v)) for v in row))
        self.console.print(table)

    @contextmanager
    def progress(self, message: str) -> Iterator[Status]:
        """A live spinner line; `.update(text)` changes it. Plain lines when not a terminal."""
        with self.console.status(escape(message)) as status:
            yield status

    # The one document for machines
    def result(self, document: Any) -> None:
        if self.json_mode:
            self._stdout.write(json.dumps(_plain(document), indent=2, sort_keys=True) + "\n")
            self._stdout.flush()


def _cell(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "✔" if value else "✘"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _plain(value: Any) -> Any:
    """Dataclasses, paths, datetimes and versions as JSON-friendly values."""
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
