"""Section 4: many sessions.

concurrent: one asyncio client (this process) starts N connect + auth +
``exec("true")`` at once against a server in a separate process; the figure is
the wall time until all N exit statuses are in.  PPCP vs asyncssh (client and
server).  The PPCP server's handshake cap (``max_unauthenticated``) is raised
to N so that no connection is refused as SERVER_BUSY by design.

idle: a worker process opens N sessions to a separate PPCP server with
heartbeats every ``idle_heartbeat`` s and keeps them idle for ``idle_hold`` s;
we report the server's RSS (absolute and per session), both processes' CPU
during the idle period, and check that every session is still alive.  The
same with asyncssh (keepalives at the same interval) for scale.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
from typing import Any

from bench.common import (
    PYTHON,
    UVLOOP_ENV,
    Deadline,
    PeakRSS,
    Row,
    machine_cpu,
    proc_cpu_seconds,
    proc_status_kib,
    raise_nofile,
    stop_group,
    summarize,
    uvloop_factory,
)
from bench.context import Context, have_session_api
from bench.worker import exit_status


async def _ppcp_one(port: int, psk: str) -> None:
    import ppcp.aio
    from bench.peers import ppcp_client_config

    session = await ppcp.aio.connect("127.0.0.1", port, psk, config=ppcp_client_config(heartbeat=0))
    try:
        result = await session.exec("true")
        if exit_status(result) != 0:
            raise RuntimeError(f"exec true failed: {result!r}")
    finally:
        await session.close()


async def _asyncssh_one(port: int, keys: Any) -> None:
    from bench.peers import asyncssh_connect

    conn = await asyncssh_connect(port, keys)
    try:
        await conn.run("true", check=True)
    finally:
        conn.close()
        await conn.wait_closed()


async def _floor_one(port: int, public: bytes) -> None:
    from bench.exec_floor import floor_exec

    status = await floor_exec(port, public)
    if status != 0:
        raise RuntimeError(f"floor exec true exited {status}")


async def _burst(n: int, make: Any, timeout: float) -> tuple[float, int]:
    """Start n at once; (seconds until all done, failures)."""
    started = time.perf_counter()
    results = await asyncio.wait_for(
        asyncio.gather(*(make() for _ in range(n)), return_exceptions=True), timeout
    )
    elapsed = time.perf_counter() - started
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} failed, first: {errors[0]!r}")
    return elapsed, 0


def run_concurrent(ctx: Context) -> None:
    s = ctx.settings
    section = "concurrent"
    n = s.concurrent
    raise_nofile(4 * n + 256)
    root = ctx.work / "exec-root"
    root.mkdir(exist_ok=True)
    times: dict[str, list[float]] = {}
    # CPU seconds summed over the timed rounds: client, server, the server's commands.
    cpu: dict[str, list[float]] = {}
    procs: list[subprocess.Popen[bytes]] = []
    server_pids: dict[str, int] = {}
    from bench.exec_floor import client_key

    floor_key = client_key()
    try:
        targets: dict[str, Any] = {}
        if have_session_api("exec"):
            proc, port = ctx.start_server("ppcp", root, max_unauthenticated=n + 16)
            procs.append(proc)
            server_pids["ppcp"] = proc.pid
            targets["ppcp"] = lambda port=port: _ppcp_one(port, ctx.psk)
        else:
            ctx.report.skip(section, "session.exec not implemented yet")
        if ctx.have.get("asyncssh"):
            proc, port = ctx.start_server("asyncssh", root)
            procs.append(proc)
            server_pids["asyncssh"] = proc.pid
            targets["asyncssh"] = lambda port=port: _asyncssh_one(port, ctx.ssh_keys)
        else:
            ctx.report.skip(section, "asyncssh peer: not installed")
        proc, port = ctx.start_server("floor", root)
        procs.append(proc)
        server_pids["floor"] = proc.pid
        targets["floor"] = lambda port=port: _floor_one(port, floor_key)
        # Each burst runs in a loop of its own: asyncio's, or uvloop's for the
        # PPCP ends on uvloop (as `ppcp serve` runs where uvloop is installed).
        loops: dict[str, Any] = dict.fromkeys(targets)
        uvloop_loop = uvloop_factory()
        if "ppcp" in targets and uvloop_loop is not None and not os.environ.get(UVLOOP_ENV):
            proc, port = ctx.start_server(
                "ppcp", root, max_unauthenticated=n + 16, extra_env={UVLOOP_ENV: "1"}
            )
            procs.append(proc)
            server_pids["ppcp-uvloop"] = proc.pid
            targets["ppcp-uvloop"] = lambda port=port: _ppcp_one(port, ctx.psk)
            loops["ppcp-uvloop"] = uvloop_loop

        def burst(name: str, count: int, timeout: float) -> float:
            with asyncio.Runner(loop_factory=loops[name]) as runner:
                return runner.run(_burst(count, targets[name], timeout))[0]

        deadline = Deadline(s.section_budget)
        for name in targets:
            burst(name, min(n, 10), 60)  # warm-up
        for _ in range(s.concurrent_rounds):
            for name in targets:
                if deadline.expired:
                    break
                before = _cpu_now(server_pids[name])
                times.setdefault(name, []).append(burst(name, n, max(deadline.left(), 5)))
                used = cpu.setdefault(name, [0.0, 0.0, 0.0, 0.0, 0.0])
                for i, (start, end) in enumerate(
                    zip(before, _cpu_now(server_pids[name]), strict=True)
                ):
                    used[i] += end - start
    finally:
        for proc in procs:
            ctx.procs.stop(proc)
    ppcp_t = times.get("ppcp")
    peer_t = times.get("asyncssh")
    floor_t = times.get("floor")
    if cpu:
        # Both cores are busy during a burst: the time follows the CPU that
        # client, server and commands need together, not one connection's latency.
        per_connection = {
            name: {
                key: used[k] / (n * len(times[name])) * 1e3
                for k, key in enumerate(("client_ms", "server_ms", "commands_ms"))
            }
            for name, used in cpu.items()
        }
        ctx.report.raw.setdefault(section, {})["cpu_per_connection"] = per_connection
        ctx.report.note(
            section,
            "CPU per connection in ms, client + server (+ the command the server ran): "
            + ", ".join(
                f"{name} {v['client_ms']:.2f} + {v['server_ms']:.2f} (+ {v['commands_ms']:.2f})"
                for name, v in per_connection.items()
            ),
        )
        packing = _cpu_packing(cpu, times)
        ctx.report.raw[section]["cpu_packing"] = packing
        ctx.report.note(
            section,
            f"CPU-bound: a burst's client + server + commands CPU spread over all "
            f"{os.cpu_count()} cores, vs the burst's time (and how busy the cores were): "
            + ", ".join(
                f"{name} {v['packed_ms']:.0f} vs {v['burst_ms']:.0f} ms ({v['busy']:.0%})"
                for name, v in packing.items()
            ),
        )
    ctx.report.add(
        Row(
            section,
            "concurrent",
            f"{n} concurrent connect+auth+exec true (one asyncio client)",
            "s",
            summarize(ppcp_t) if ppcp_t else None,
            "asyncssh",
            summarize(peer_t) if peer_t else None,
            max_ratio=0.3,
            target_text="ratio <= 0.3",
        )
    )
    uvloop_t = times.get("ppcp-uvloop")
    if uvloop_t:
        ctx.report.add(
            Row(
                section,
                "concurrent-uvloop",
                "the same, both PPCP ends on uvloop (`ppcp serve` runs on it when installed)",
                "s",
                summarize(uvloop_t),
                "asyncssh",
                summarize(peer_t) if peer_t else None,
                note="asyncssh on asyncio, its faster loop here (see --uvloop)",
            )
        )
    ctx.report.add(
        Row(
            section,
            "concurrent-floor",
            "floor: the same with no protocol (bench/exec_floor.py)",
            "s",
            summarize(floor_t) if floor_t else None,
            "asyncssh",
            summarize(peer_t) if peer_t else None,
            note="2 round trips + handshake crypto per side + $SHELL -c true; "
            "no implementation can go below this ratio",
        )
    )


# -- idle -----------------------------------------------------------------------------------


def _idle_run(ctx: Context, kind: str) -> dict[str, Any]:
    """One server (separate process) + one worker holding N idle sessions."""
    s = ctx.settings
    root = ctx.work / "exec-root"
    root.mkdir(exist_ok=True)
    raise_nofile(2 * s.idle_sessions + 256)
    server, port = ctx.start_server(
        kind, root, heartbeat=s.idle_heartbeat, max_unauthenticated=s.idle_sessions + 16
    )
    try:
        time.sleep(0.2)
        base_kib = proc_status_kib(server.pid, "VmRSS") or 0
        cmd = [PYTHON, "-m", "bench.worker", f"{kind}-idle", "--port", str(port)]
        cmd += ["--sessions", str(s.idle_sessions), "--hold", str(s.idle_hold)]
        cmd += ["--heartbeat", str(s.idle_heartbeat), "--timeout", str(s.section_budget)]
        if kind == "asyncssh":
            cmd += ["--keys", str(ctx.ssh_keys.dir)]
        worker = ctx.procs.start(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ctx.env())
        out: list[bytes] = []
        err: list[bytes] = []
        readers = [
            threading.Thread(target=lambda: out.append(worker.stdout.read()), daemon=True),  # type: ignore[union-attr]
            threading.Thread(target=lambda: err.append(worker.stderr.read()), daemon=True),  # type: ignore[union-attr]
        ]
        for t in readers:
            t.start()
        with PeakRSS(server.pid, interval=0.05) as peak:
            try:
                worker.wait(s.section_budget + 30)
            except subprocess.TimeoutExpired:
                stop_group(worker)
                raise RuntimeError(f"{kind} idle worker timed out") from None
        for t in readers:
            t.join(5)
        ctx.procs.stop(worker)
        if worker.returncode != 0:
            raise RuntimeError(
                f"{kind} idle worker failed: {b''.join(err).decode(errors='replace')[-800:]}"
            )
        result: dict[str, Any] = json.loads(b"".join(out).decode().strip().splitlines()[-1])
        result["server_base_mib"] = base_kib / 1024
        result["server_peak_mib"] = peak.peak_mib
        result["server_cpu_s"] = proc_cpu_seconds(server.pid)
        return result
    finally:
        ctx.procs.stop(server)


def run_idle(ctx: Context) -> None:
    s = ctx.settings
    section = "idle"
    n = s.idle_sessions
    ppcp_r = _idle_run(ctx, "ppcp")
    peer_r = _idle_run(ctx, "asyncssh") if ctx.have.get("asyncssh") else None
    if peer_r is None:
        ctx.report.skip(section, "asyncssh comparison: not installed")
    ctx.report.raw[section] = {"ppcp": ppcp_r, "asyncssh": peer_r}
    if ppcp_r["alive"] != n:
        raise RuntimeError(
            f"only {ppcp_r['alive']} of {n} PPCP sessions survived the idle period "
            f"(failures: {ppcp_r['failures']})"
        )
    if ppcp_r["heartbeats_answered_min"] < 1 and s.idle_hold > 2 * s.idle_heartbeat:
        ctx.report.note(section, "some sessions saw no heartbeat answer during the hold")

    def one(value: float) -> dict[str, Any]:
        return summarize([value])

    ctx.report.add(
        Row(
            section,
            "idle-server-rss",
            f"server RSS with {n} idle sessions (heartbeat {s.idle_heartbeat:g} s)",
            "MiB",
            one(ppcp_r["server_peak_mib"]),
            "asyncssh server",
            one(peer_r["server_peak_mib"]) if peer_r else None,
            limit=200.0,
            target_text="< 200 MiB",
            note=f"baseline {ppcp_r['server_base_mib']:.0f} MiB; "
            f"{(ppcp_r['server_peak_mib'] - ppcp_r['server_base_mib']) * 1024 / n:.0f} KiB/session",
        )
    )
    client = ppcp_r["client"]["hwm_kib"] / 1024
    ctx.report.add(
        Row(
            section,
            "idle-client-rss",
            f"client RSS holding {n} sessions (one process)",
            "MiB",
            one(client),
            "asyncssh client",
            one(peer_r["client"]["hwm_kib"] / 1024) if peer_r else None,
        )
    )
    ctx.report.add(
        Row(
            section,
            "idle-open",
            f"time to open {n} sessions (50 at a time)",
            "s",
            one(ppcp_r["open_seconds"]),
            "asyncssh",
            one(peer_r["open_seconds"]) if peer_r else None,
        )
    )


def _cpu_now(server_pid: int) -> tuple[float, float, float, float, float]:
    """CPU seconds so far: this client, the server, the commands the server reaped;
    then the whole machine's busy and total CPU time (all cores)."""
    return (
        time.process_time(),
        proc_cpu_seconds(server_pid) or 0.0,
        proc_cpu_seconds(server_pid, children=True) or 0.0,
        *machine_cpu(),
    )


def _cpu_packing(
    cpu: dict[str, list[float]], times: dict[str, list[float]]
) -> dict[str, dict[str, float]]:
    """Per target: its three processes' CPU per burst spread over every core
    (the shortest a burst could be if nothing ever waited), its mean burst,
    and the share of the machine's CPU busy during its bursts."""
    cores = os.cpu_count() or 1
    packing = {}
    for name, used in cpu.items():
        bursts = times[name]
        busy, total = used[3], used[4]
        packing[name] = {
            "packed_ms": sum(used[:3]) / len(bursts) / cores * 1e3,
            "burst_ms": sum(bursts) / len(bursts) * 1e3,
            "busy": busy / total if total else 0.0,
        }
    return packing
