"""Progress of a long run on stderr: a rich progress bar with ETA on a terminal,
plain lines with rate and ETA otherwise (logs, CI, worker processes)."""

from __future__ import annotations

import math
import sys
import time
from types import TracebackType
from typing import Any, Self, TextIO


class Progress:
    """``with Progress(total, "jsonschemabench") as bar: bar.advance("Glaiveai2K/x")``."""

    def __init__(self, total: int, description: str, *, enabled: bool = True, stream: TextIO | None = None,
                 every_s: float = 10.0) -> None:
        self.total, self.description, self.enabled = total, description, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = every_s
        self.done = 0
        self._start = time.monotonic()
        self._last_line = 0.0
        self._rich: Any = None
        self._task: Any = None

    def __enter__(self) -> Self:
        self._start = time.monotonic()
        if self.enabled and self.stream.isatty():
            try:
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    TextColumn,
                    TimeElapsedColumn,
                    TimeRemainingColumn,
                )
                from rich.progress import Progress as RichProgress
            except ImportError:
                pass
            else:
                from rich.console import Console

                self._rich = RichProgress(
                    TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[item]}"),
                    console=Console(file=self.stream), transient=False,
                )
                self._rich.start()
                self._task = self._rich.add_task(self.description, total=self.total, item="")
        return self

    def advance(self, item: str = "") -> None:
        self.done += 1
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.update(self._task, advance=1, item=item[-40:])
            return
        now = time.monotonic()
        if now - self._last_line >= self.every_s or self.done == self.total:
            self._last_line = now
            print(f"  .. {self.description}: {self.line()} {item}", file=self.stream, flush=True)

    def line(self) -> str:
        """``done/total, elapsed, ETA`` as text."""
        elapsed = time.monotonic() - self._start
        eta = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
        return f"{self.done}/{self.total} ({_clock(elapsed)} elapsed, ETA {_clock(eta)})"

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self._rich is not None:
            self._rich.stop()


def _clock(seconds: float) -> str:
    if math.isnan(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"
