"""Where a warm ``exec true`` spends its time, segment by segment.

The ``warm`` section times whole commands; this splits one into four spans
by hooking two points of the PPCP server (``ppcp.control.child.Child``: the
spawn and the reaping) and runs a few instrumented commands after the timed
ones, so the hooks cost the measurements nothing:

* ``request``: ``session.exec()`` called -> the server starts the process
  (client request, one record each way through the event loop, the service's
  checks);
* ``spawn``: ``fork``/``exec`` of the shell, which blocks the server's loop;
* ``command``: the shell runs, exits and is reaped;
* ``report``: reaped -> ``exec()`` returns (EOF, exit status and CLOSE sealed,
  sent, received and acted on).

The floor (``Child`` alone, no protocol) has the same ``spawn`` and
``command``; only ``request`` and ``report`` are protocol, so they are what any
further speed-up of warm exec has to come from.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

SPANS = ("request", "spawn", "command", "report")


class _Marks:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.spawn_start = self.spawn_end = self.reaped = 0.0


def hooks_available() -> bool:
    try:
        from ppcp.control.child import Child
    except ImportError:
        return False
    return hasattr(Child, "spawn") and hasattr(Child, "_exited")


async def exec_timeline(
    run_once: Callable[[], Awaitable[Any]], runs: int
) -> dict[str, dict[str, float]]:
    """Median and min of each span (seconds) over ``runs`` instrumented calls of ``run_once``.

    ``run_once`` runs one ``exec true`` through a PPCP server in this process.
    """
    from ppcp.control.child import Child

    marks = _Marks()
    spawn, exited = Child.__dict__["spawn"], Child.__dict__["_exited"]

    def timed_spawn(cls: type[Child], *args: Any, **kwargs: Any) -> Child:
        if not marks.spawn_start:
            marks.spawn_start = time.perf_counter()
        child: Child = spawn.__func__(cls, *args, **kwargs)
        if not marks.spawn_end:
            marks.spawn_end = time.perf_counter()
        return child

    def timed_exited(self: Child, returncode: int) -> None:
        if not marks.reaped:
            marks.reaped = time.perf_counter()
        exited(self, returncode)

    spans: dict[str, list[float]] = {span: [] for span in SPANS}
    Child.spawn = classmethod(timed_spawn)  # type: ignore[assignment, method-assign]
    Child._exited = timed_exited  # type: ignore[method-assign]
    try:
        for _ in range(runs):
            marks.reset()
            started = time.perf_counter()
            await run_once()
            ended = time.perf_counter()
            if not (started < marks.spawn_start <= marks.spawn_end <= marks.reaped <= ended):
                continue  # a hook missed (another command's process): not this run's
            spans["request"].append(marks.spawn_start - started)
            spans["spawn"].append(marks.spawn_end - marks.spawn_start)
            spans["command"].append(marks.reaped - marks.spawn_end)
            spans["report"].append(ended - marks.reaped)
    finally:
        Child.spawn = spawn  # type: ignore[method-assign]
        Child._exited = exited  # type: ignore[method-assign]
    return {
        span: {"median": statistics.median(samples), "min": min(samples), "n": len(samples)}
        for span, samples in spans.items()
        if samples
    }


def describe(timeline: dict[str, dict[str, float]]) -> str:
    return ", ".join(
        f"{span} {timeline[span]['median'] * 1e3:.3f}" for span in SPANS if span in timeline
    )
