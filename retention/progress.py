"""A progress bar for ``purge`` on a terminal (rich); nothing anywhere else."""

from __future__ import annotations

from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class ProgressSink(Protocol):
    def start(self, total_rows: int) -> None: ...
    def advance(self, rows: int) -> None: ...
    def stop(self) -> None: ...


class TerminalProgress:
    """Rows deleted out of rows planned, on stderr."""

    def __init__(self) -> None:
        self._bar = Progress(
            TextColumn("deleting"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._task: int | None = None

    def start(self, total_rows: int) -> None:
        self._bar.start()
        self._task = self._bar.add_task("rows", total=total_rows)

    def advance(self, rows: int) -> None:
        if self._task is not None:
            self._bar.advance(self._task, rows)  # type: ignore[arg-type]

    def stop(self) -> None:
        self._bar.stop()
