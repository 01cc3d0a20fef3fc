"""Progress bars for ``put``/``get`` (rich), shown only on a terminal."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

ProgressCallback = Callable[[int, int, float], None]


def wanted(quiet: bool) -> bool:
    try:
        return not quiet and sys.stderr.isatty()
    except (ValueError, OSError):
        return False


class Bars:
    """One rich progress display; :meth:`task` gives a ``progress(done, total, rate)``."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Any = None
        self._lock = threading.Lock()
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}", justify="left"),
                BarColumn(bar_width=None),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )

    @contextmanager
    def shown(self) -> Iterator[Bars]:
        if self._progress is None:
            yield self
            return
        with self._progress:
            yield self

    def task(self, description: str) -> ProgressCallback | None:
        if self._progress is None:
            return None
        from rich.markup import escape

        progress = self._progress
        # The description is a file name, not markup: "[red]x" is a name too.
        task_id = progress.add_task(escape(description), total=None)

        def update(done: int, total: int, rate: float) -> None:
            with self._lock:
                # The total is known once reported, even 0 (an empty file ends 0/0, not 0/?).
                progress.update(task_id, completed=done, total=total)

        return update
