"""Shared pieces of the benchmark harness: statistics, results, processes, memory.

Every loop in the harness is bounded twice: by an iteration count and by a
deadline (:class:`Deadline`).  Every process the harness starts is put in a
process group of its own (``start_new_session=True``) and that group, and
only that group, is signalled when the harness is done with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
PYTHON = sys.executable
BIN = Path(PYTHON).parent
LOOPBACK = "127.0.0.1"
MiB = 1 << 20
GiB = 1 << 30


class Skip(Exception):
    """A measurement cannot run here (a peer or an API is missing); not a failure."""


class Deadline:
    """A wall-clock budget shared by the loops of one measurement."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    @property
    def expired(self) -> bool:
        return self.left() <= 0


def summarize(samples: Sequence[float]) -> dict[str, Any]:
    """Median and min-max of the samples (the raw samples are kept too)."""
    if not samples:
        return {"n": 0, "median": None, "min": None, "max": None, "samples": []}
    return {
        "n": len(samples),
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "samples": [round(s, 6) for s in samples],
    }


@dataclass
class Row:
    """One comparison: a PPCP figure, optionally a peer figure, a ratio, a target.

    ``ratio`` is always PPCP / peer on the same unit.  For times (and memory)
    lower is better, so a target "PPCP at least 4x faster" is ``ratio <= 0.25``.
    A row without a peer can still carry an absolute target (``limit``).
    """

    section: str
    key: str
    what: str
    unit: str
    ppcp: dict[str, Any] | None
    peer_name: str = ""
    peer: dict[str, Any] | None = None
    max_ratio: float | None = None  # target: ratio <= max_ratio
    limit: float | None = None  # target: PPCP median <= limit (in unit)
    target_text: str = ""
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if not self.ppcp or not self.peer:
            return None
        a, b = self.ppcp.get("median"), self.peer.get("median")
        if a is None or not b:
            return None
        return float(a) / float(b)

    @property
    def status(self) -> str:
        if self.max_ratio is not None:
            r = self.ratio
            if r is None:
                return "n/a"
            return "met" if r <= self.max_ratio else "missed"
        if self.limit is not None:
            if not self.ppcp or self.ppcp.get("median") is None:
                return "n/a"
            worst = self.ppcp.get("max", self.ppcp["median"])
            return "met" if worst < self.limit else "missed"
        return ""

    def to_json(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "key": self.key,
            "what": self.what,
            "unit": self.unit,
            "ppcp": self.ppcp,
            "peer_name": self.peer_name,
            "peer": self.peer,
            "ratio": self.ratio,
            "target": self.target_text,
            "max_ratio": self.max_ratio,
            "limit": self.limit,
            "status": self.status,
            "note": self.note,
            "extra": self.extra,
        }


@dataclass
class Report:
    """Everything one run measured; sections append rows and notes."""

    rows: list[Row] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def note(self, section: str, text: str) -> None:
        self.notes.setdefault(section, []).append(text)

    def skip(self, section: str, text: str) -> None:
        self.skipped.setdefault(section, []).append(text)


# -- processes ------------------------------------------------------------------------


class Procs:
    """Processes this harness started; each in its own group, all stopped on exit."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc: subprocess.Popen[bytes] = subprocess.Popen(
            list(cmd), start_new_session=True, **kwargs
        )
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
        stop_group(proc, timeout)
        with contextlib.suppress(ValueError):
            self._procs.remove(proc)

    def close(self) -> None:
        for proc in reversed(self._procs):
            stop_group(proc)
        self._procs.clear()

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Killed children that had not exited yet when we stopped waiting (a machine
# short of memory can take a while); reap_leftovers() collects them.
_UNREAPED: list[subprocess.Popen[bytes]] = []


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM the process group we created for ``proc``, then SIGKILL it if needed."""
    pgid = proc.pid  # start_new_session=True: the child leads its own group
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            # The leader is gone; members of its group may not be.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
    if proc.poll() is None:
        _UNREAPED.append(proc)


def reap_leftovers(timeout: float = 10.0) -> int:
    """Wait (bounded) for SIGKILLed children that were slow to die; return how many remain."""
    deadline = Deadline(timeout)
    for proc in list(_UNREAPED):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(deadline.left(), 0.01))
        if proc.returncode is not None:
            _UNREAPED.remove(proc)
    return len(_UNREAPED)


@dataclass
class ChildRun:
    returncode: int
    seconds: float
    maxrss_kib: int
    stdout: bytes
    stderr: bytes


def run_child(
    cmd: Sequence[str],
    timeout: float,
    *,
    stdin: Any = subprocess.DEVNULL,
    stdout: Any = subprocess.PIPE,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
) -> ChildRun:
    """Run one process to completion; wall time includes process start.

    ``maxrss_kib`` is the child's own peak RSS: its VmHWM sampled while it
    runs (every <= 10 ms), bounded by the ``wait4`` rusage of that child alone.
    """
    started = time.perf_counter()
    proc: subprocess.Popen[bytes] = subprocess.Popen(
        list(cmd),
        stdin=stdin,
        stdout=stdout,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    out_chunks: list[bytes] = []
    err_chunks: list[bytes] = []
    readers = []
    for stream, chunks in ((proc.stdout, out_chunks), (proc.stderr, err_chunks)):
        if stream is not None:
            t = threading.Thread(target=_drain, args=(stream, chunks), daemon=True)
            t.start()
            readers.append(t)
    deadline = started + timeout
    status, rusage = 0, None
    hwm_kib: int | None = None
    try:
        delay = 0.0005
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            hwm_kib = proc_status_kib(proc.pid, "VmHWM") or hwm_kib
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{cmd[0]} did not finish within {timeout:.0f} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.01)
        elapsed = time.perf_counter() - started
    finally:
        if rusage is None:
            stop_group(proc, 2.0)
        else:
            proc.returncode = os.waitstatus_to_exitcode(status)
            # The leader is reaped; sweep anything it left in its group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for t in readers:
            t.join(5.0)
    # ru_maxrss of a child started with vfork/exec also counts the parent's
    # memory it shared before exec (Linux folds the old mm's peak in at
    # exec), so the child's own VmHWM, read last before it exited, is
    # preferred; ru_maxrss only for a child too short-lived to be sampled.
    maxrss = min(hwm_kib, rusage.ru_maxrss) if hwm_kib else rusage.ru_maxrss
    return ChildRun(proc.returncode, elapsed, maxrss, b"".join(out_chunks), b"".join(err_chunks))


def _drain(stream: Any, chunks: list[bytes]) -> None:
    with contextlib.suppress(OSError, ValueError):
        while True:
            data = stream.read(65536)
            if not data:
                break
            chunks.append(data)
    with contextlib.suppress(OSError):
        stream.close()


def last_json_line(data: bytes) -> dict[str, Any]:
    for line in reversed(data.decode(errors="replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            return result
    raise ValueError("no JSON result line in the output")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = Deadline(timeout)
    while not deadline.expired:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {LOOPBACK}:{port} after {timeout:.0f} s")


# -- memory ---------------------------------------------------------------------------


def proc_status_kib(pid: int, field_name: str) -> int | None:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (``clear_refs`` 5, Linux >= 4.0)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def proc_cpu_seconds(pid: int, *, children: bool = False) -> float | None:
    """user + system CPU seconds of a live process (/proc/PID/stat).

    ``children``: instead, the CPU of the children it has reaped (cutime + cstime).
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    first = 13 if children else 11
    return (int(fields[first]) + int(fields[first + 1])) / ticks


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of all cores since boot (/proc/stat; idle + iowait is idle)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    hz = os.sysconf("SC_CLK_TCK")
    total = sum(ticks[:8])  # guest time is already counted in user
    idle = ticks[3] + ticks[4]
    return (total - idle) / hz, total / hz


class PeakRSS:
    """Peak RSS of a live process over a window: VmHWM after a reset, else sampling."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reset = False

    def __enter__(self) -> PeakRSS:
        self._reset = reset_peak_rss(self.pid)
        self.peak_kib = proc_status_kib(self.pid, "VmRSS") or 0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            rss = proc_status_kib(self.pid, "VmRSS")
            if rss is None:
                return
            self.peak_kib = max(self.peak_kib, rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        if self._reset:
            hwm = proc_status_kib(self.pid, "VmHWM")
            if hwm is not None:
                self.peak_kib = max(self.peak_kib, hwm)

    @property
    def peak_mib(self) -> float:
        return self.peak_kib / 1024


def raise_nofile(wanted: int) -> int:
    """Raise RLIMIT_NOFILE (soft, and hard if we may) to at least ``wanted``."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    new_hard = hard if hard == resource.RLIM_INFINITY or hard >= wanted else wanted
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, new_hard))
        return wanted
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    box: list[float] = []
    started = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - started)


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


# -- event loop -----------------------------------------------------------------------

UVLOOP_ENV = "PPCP_BENCH_UVLOOP"


def use_uvloop_if_asked() -> bool:
    """``--uvloop``: run asyncio on uvloop in this process (and, via the env, in children)."""
    if not os.environ.get(UVLOOP_ENV):
        return False
    import asyncio

    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def uvloop_factory() -> Any:
    """uvloop's loop factory, or None where uvloop is not installed."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


# -- profiling ------------------------------------------------------------------------


def start_profiler(kind: str | None) -> Any:
    """``pyinstrument`` (wall-clock call tree) or ``cprofile`` (CPU time per function)."""
    if not kind:
        return None
    if kind == "cprofile":
        import cProfile

        prof = cProfile.Profile(time.thread_time)
        prof.enable()
        return prof
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005, async_mode="disabled")
    profiler.start()
    return profiler


def stop_profiler(profiler: Any, kind: str | None, path: str | Path | None) -> None:
    if profiler is None or path is None:
        return
    if kind == "cprofile":
        import io
        import pstats

        profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(25)
        Path(path).write_text(out.getvalue())
        return
    profiler.stop()
    Path(path).write_text(profiler.output_text(unicode=False, color=False))
