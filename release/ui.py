"""The only place that prints.

People get rich output on stderr-friendly consoles: checks with ✔/✘, tables, a live progress
line. Machines get `--json`: exactly one JSON document on stdout, and human lines go to stderr
so they never corrupt it.

A long step talks while it works (`UI.progress`): on a terminal, a live line redrawn every
second; without one (CI logs, `> file`), plain lines — one when the step changes, and one
whenever PLAIN_EVERY_S seconds pass without any line — each naming the step and its elapsed
seconds, so a log never goes quiet for long.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.markup import escape
from rich.status import Status
from rich.table import Table

from release.clock import Clock, SystemClock

# Without a terminal, a progress line at least this often: CI logs show one at most 10 s apart,
# with room for the ticker's lateness.
PLAIN_EVERY_S = 8.0
# How often the ticker wakes to redraw the live line or decide on a plain one (real seconds).
TICK_S = 1.0


class UI:
    """`clock` times progress steps; `tick` is the ticker's period in real seconds (None: no
    ticker thread, a test calls `Progress.tick()` itself after moving a FakeClock)."""

    def __init__(self, *, json_mode: bool = False, stdout: IO[str] | None = None,
                 stderr: IO[str] | None = None, color: bool | None = None, clock: Clock | None = None,
                 tick: float | None = TICK_S, every: float = PLAIN_EVERY_S) -> None:
        self.json_mode = json_mode
        self._stdout = stdout or sys.stdout
        human = stderr or sys.stderr if json_mode else stdout or sys.stdout
        self.console = Console(file=human, highlight=False, soft_wrap=True,
                               no_color=color is False, force_terminal=color or None)
        if not self.console.is_terminal:
            self.console.width = 200  # logs and CI: no terminal to fit, keep ids whole
        self._said_once: set[str] = set()
        self._inner = 0  # > 0 while a command runs another as one of its steps (UI.step)
        self.clock: Clock = clock or SystemClock()
        self.tick = tick
        self.every = every
        self.last_line_at = self.clock.now()  # when a line for people was last printed
        self._progress: Progress | None = None

    def _print(self, renderable: object) -> None:
        self.console.print(renderable)
        self.last_line_at = self.clock.now()

    # Lines for people
    def info(self, message: str) -> None:
        self._print(escape(message))

    def note(self, message: str) -> None:
        self._print(f"[dim]{escape(message)}[/dim]")

    def once(self, message: str) -> None:
        """Say something only the first time (e.g. "using the sandbox")."""
        if message not in self._said_once:
            self._said_once.add(message)
            self.note(message)

    def success(self, message: str) -> None:
        self._print(f"[green]✔[/green] {escape(message)}")

    def warn(self, message: str) -> None:
        self._print(f"[yellow]![/yellow] {escape(message)}")

    def failure(self, message: str) -> None:
        self._print(f"[red]✘[/red] {escape(message)}")

    def check(self, ok: bool, what: str, detail: str = "") -> None:
        """One converge line: ✔ what (detail) or ✘ what (detail)."""
        suffix = f" [dim]— {escape(detail)}[/dim]" if detail else ""
        mark = "[green]✔[/green]" if ok else "[red]✘[/red]"
        self._print(f"{mark} {escape(what)}{suffix}")

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[object]], *, title: str = "") -> None:
        table = Table(title=title or None, show_lines=False, header_style="bold")
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*(escape(_cell(v)) for v in row))
        self._print(table)

    @contextmanager
    def progress(self, title: str) -> Iterator[Progress]:
        """Say what a long step is doing while it works: `.update(step)` names the current step,
        `.stage(name)` an enclosing one with its own clock (e.g. "packer"). A live line on a
        terminal; plain lines without one (see the module's docstring). One at a time: inside
        another progress, the inner one only changes the outer one's title."""
        if self._progress is not None:
            outer = self._progress
            before = outer.title
            outer.retitle(title)
            try:
                yield outer
            finally:
                outer.retitle(before)
            return
        progress = Progress(self, title)
        stop = threading.Event()
        ticker = None
        status = self.console.status(escape(progress.text())) if self.console.is_terminal else None
        if self.tick is not None:
            ticker = threading.Thread(target=self._ticking, args=(progress, stop, self.tick),
                                      name="kiln-progress", daemon=True)
        self._progress = progress
        try:
            if status is not None:
                status.start()
                progress.status = status
            if ticker is not None:
                ticker.start()
            yield progress
        finally:
            stop.set()
            if ticker is not None:
                ticker.join()
            if status is not None:
                status.stop()
            self._progress = None

    @staticmethod
    def _ticking(progress: Progress, stop: threading.Event, period: float) -> None:
        # Wakes every `period`, or sooner when a plain line falls due, so lines keep their cadence.
        while not stop.wait(max(0.05, min(period, progress.due_in()))):
            progress.tick()

    # The one document for machines
    @contextmanager
    def step(self) -> Iterator[None]:
        """Another command run as a step of this one (sandbox.up adopting, sandbox.reset stopping):
        its lines are shown, its result is not the command's, so --json stays one document."""
        self._inner += 1
        try:
            yield
        finally:
            self._inner -= 1

    def result(self, document: Any) -> None:
        if self.json_mode and not self._inner:
            self._stdout.write(json.dumps(_plain(document), indent=2, sort_keys=True) + "\n")
            self._stdout.flush()


class Progress:
    """What a long step is doing: a title ("baking 1.1.0"), the current step and when it began,
    and optionally an enclosing stage and when it began. Reads as
    `baking 1.1.0: ansible [app : Install the wheelhouse] 42 s (packer 96 s)`."""

    def __init__(self, ui: UI, title: str) -> None:
        self.ui = ui
        self.title = title
        self.status: Status | None = None  # the live line, on a terminal
        self._lock = threading.RLock()
        self.started = ui.clock.now()
        self.step: str | None = None
        self.step_started = self.started
        self.stage_name: str | None = None
        self.stage_started = self.started

    def update(self, step: str, *, say: bool = True) -> None:
        """The current step; its clock restarts when the text changes. Without a terminal the new
        step is printed at once, unless `say=False` (the caller has just printed it its own way)."""
        with self._lock:
            if step == self.step:
                return
            self.step, self.step_started = step, self.ui.clock.now()
            self._show(plain=say)

    def stage(self, name: str, *, again: bool = True) -> None:
        """An enclosing stage with its own clock ("packer" while Packer runs), from now on.
        `again=False`: a stage of the same name already under way keeps its clock."""
        with self._lock:
            if again or name != self.stage_name:
                self.stage_name, self.stage_started = name, self.ui.clock.now()
                self._show(plain=False)

    def retitle(self, title: str) -> None:
        with self._lock:
            self.title = title
            self._show(plain=False)

    def tick(self) -> None:
        """Called every second: redraw the live line; without a terminal, print a line when none
        has been printed for `every` seconds."""
        with self._lock:
            quiet = (self.ui.clock.now() - self.ui.last_line_at).total_seconds()
            self._show(plain=quiet >= self.ui.every)

    def due_in(self) -> float:
        """Seconds until a plain line is due (a terminal's live line never is)."""
        if self.status is not None:
            return float("inf")
        return self.ui.every - (self.ui.clock.now() - self.ui.last_line_at).total_seconds()

    def text(self) -> str:
        with self._lock:
            now = self.ui.clock.now()
            if self.step is None:
                if self.stage_name:
                    return f"{self.title}: {self.stage_name} {_seconds(now - self.stage_started)}"
                return f"{self.title} {_seconds(now - self.started)}"
            text = f"{self.title}: {self.step} {_seconds(now - self.step_started)}"
            if self.stage_name:
                return f"{text} ({self.stage_name} {_seconds(now - self.stage_started)})"
            if int((now - self.started).total_seconds()) > int((now - self.step_started).total_seconds()):
                return f"{text} ({_seconds(now - self.started)} in all)"
            return text

    def _show(self, *, plain: bool) -> None:
        if self.status is not None:
            self.status.update(escape(self.text()))
        elif plain:
            self.ui.note(self.text())


def _seconds(delta: timedelta) -> str:
    return f"{int(delta.total_seconds())} s"


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
