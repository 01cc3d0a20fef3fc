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


async def exec_timelines(
    subjects: dict[str, Callable[[], Awaitable[Any]]], runs: int
) -> dict[str, dict[str, dict[str, float]]]:
    """Per subject, median and min of each span (seconds) over ``runs`` instrumented calls.

    Each subject runs one ``exec true`` (through a PPCP server in this process,
    or the floor's bare ``Child``).  The subjects take turns, one call each, so
    that this host's drift (10-30 % within a minute) hits all of them alike: run
    one block after the other, the same ``spawn`` differed by half.
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

    spans: dict[str, dict[str, list[float]]] = {
        name: {span: [] for span in SPANS} for name in subjects
    }
    Child.spawn = classmethod(timed_spawn)  # type: ignore[assignment, method-assign]
    Child._exited = timed_exited  # type: ignore[method-assign]
    try:
        for _ in range(runs):
            for name, run_once in subjects.items():
                marks.reset()
                started = time.perf_counter()
                await run_once()
                ended = time.perf_counter()
                if not (started < marks.spawn_start <= marks.spawn_end <= marks.reaped <= ended):
                    continue  # a hook missed (another command's process): not this run's
                own = spans[name]
                own["request"].append(marks.spawn_start - started)
                own["spawn"].append(marks.spawn_end - marks.spawn_start)
                own["command"].append(marks.reaped - marks.spawn_end)
                own["report"].append(ended - marks.reaped)
    finally:
        Child.spawn = spawn  # type: ignore[method-assign]
        Child._exited = exited  # type: ignore[method-assign]
    return {
        name: {
            span: {"median": statistics.median(samples), "min": min(samples), "n": len(samples)}
            for span, samples in own_spans.items()
            if samples
        }
        for name, own_spans in spans.items()
    }


def describe(timeline: dict[str, dict[str, float]]) -> str:
    return ", ".join(
        f"{span} {timeline[span]['median'] * 1e3:.3f}" for span in SPANS if span in timeline
    )
