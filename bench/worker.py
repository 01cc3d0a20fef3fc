"""Client-side measurements that run in a process of their own.

A separate process gives each measurement its own peak RSS (VmHWM) and CPU
time, untouched by the harness (rich, matplotlib, the other peers).  Every
subcommand prints one JSON line with its figures as the last line of stdout.

    python -m bench.worker ppcp-transfer --port P --op put --local F --remote R
    python -m bench.worker asyncssh-transfer --port P --keys DIR --op get ...
    python -m bench.worker ppcp-idle --port P --sessions 1000 --hold 6 --heartbeat 1
    python -m bench.worker ppcp-handshakes --port P --count 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    LOOPBACK,
    Deadline,
    proc_status_kib,
    raise_nofile,
    start_profiler,
    stop_profiler,
    use_uvloop_if_asked,
)
from bench.peers import PSK_ENV, SshKeys, asyncssh_connect, ppcp_client_config


def _self_memory() -> dict[str, Any]:
    pid = os.getpid()
    return {
        "rss_kib": proc_status_kib(pid, "VmRSS"),
        "hwm_kib": proc_status_kib(pid, "VmHWM"),
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def exit_status(result: Any) -> int:
    """The exit status field of an ExecResult, whatever the final name."""
    for name in ("exit_status", "exit_code", "returncode", "status", "code"):
        value = getattr(result, name, None)
        if isinstance(value, int):
            return value
    raise TypeError(f"no exit status on {result!r}")


# -- PPCP -------------------------------------------------------------------------------


async def _ppcp_connect(port: int, **config: Any) -> Any:
    import ppcp.aio

    return await ppcp.aio.connect(
        LOOPBACK, port, os.environ[PSK_ENV], config=ppcp_client_config(**config)
    )


async def ppcp_transfer(args: argparse.Namespace) -> dict[str, Any]:
    profiler = start_profiler(args.profiler if args.profile else None)
    session = await _ppcp_connect(args.port, binary=args.mode == "binary")
    try:
        caps = list(session.capabilities)
        if args.mode == "binary" and "binary-data" not in caps:
            raise RuntimeError("binary-data was not negotiated")
        cpu0 = _cpu()
        started = time.perf_counter()
        if args.op == "put":
            result = await session.put(args.local, args.remote)
        else:
            result = await session.get(args.remote, args.local)
        elapsed = time.perf_counter() - started
        cpu = _cpu() - cpu0
    finally:
        await session.close()
    stop_profiler(profiler, args.profiler, args.profile)
    return {
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "capabilities": caps,
        "result": repr(result)[:300],
        **_self_memory(),
    }


async def ppcp_idle(args: argparse.Namespace) -> dict[str, Any]:
    """Open N sessions (bounded concurrency), keep them idle with heartbeats, report."""
    raise_nofile(args.sessions + 256)
    deadline = Deadline(args.timeout)
    sessions: list[Any] = []
    base = _self_memory()
    sem = asyncio.Semaphore(args.parallel)
    failures: list[str] = []

    async def one() -> None:
        async with sem:
            try:
                sessions.append(await _ppcp_connect(args.port, heartbeat=args.heartbeat))
            except Exception as exc:
                failures.append(repr(exc))

    started = time.perf_counter()
    await asyncio.wait_for(
        asyncio.gather(*(one() for _ in range(args.sessions))), max(deadline.left(), 1)
    )
    opened = time.perf_counter() - started
    await asyncio.sleep(min(args.hold, max(deadline.left() - 5, 0)))
    alive = sum(1 for s in sessions if not s.is_closed)
    rtts = [len(s.heartbeat.rtts) for s in sessions if getattr(s, "heartbeat", None) is not None]
    out = {
        "opened": len(sessions),
        "alive": alive,
        "failures": failures[:5],
        "failure_count": len(failures),
        "open_seconds": opened,
        "heartbeats_answered_min": min(rtts) if rtts else 0,
        "client_base": base,
        "client": _self_memory(),
    }
    await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
    return out


async def ppcp_handshakes(args: argparse.Namespace) -> dict[str, Any]:
    """Sequential connect + handshake + close; client CPU per handshake."""
    deadline = Deadline(args.timeout)
    for _ in range(3):  # warm-up: lazy imports, first-use caches
        session = await _ppcp_connect(args.port, heartbeat=0)
        await session.close()
    cpu0 = _cpu()
    done = 0
    for _ in range(args.count):
        if deadline.expired:
            break
        session = await _ppcp_connect(args.port, heartbeat=0)
        await session.close()
        done += 1
    return {"count": done, "cpu_seconds": _cpu() - cpu0}


# -- asyncssh ---------------------------------------------------------------------------


async def asyncssh_transfer(args: argparse.Namespace) -> dict[str, Any]:
    conn = await asyncssh_connect(args.port, SshKeys(Path(args.keys)))
    try:
        async with conn.start_sftp_client() as sftp:
            cpu0 = _cpu()
            started = time.perf_counter()
            if args.op == "put":
                await sftp.put(args.local, args.remote)
            else:
                await sftp.get(args.remote, args.local)
            elapsed = time.perf_counter() - started
            cpu = _cpu() - cpu0
    finally:
        conn.close()
        await conn.wait_closed()
    return {"seconds": elapsed, "cpu_seconds": cpu, **_self_memory()}


async def asyncssh_idle(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile(args.sessions + 256)
    deadline = Deadline(args.timeout)
    keys = SshKeys(Path(args.keys))
    conns: list[Any] = []
    failures: list[str] = []
    sem = asyncio.Semaphore(args.parallel)

    async def one() -> None:
        async with sem:
            try:
                conns.append(await asyncssh_connect(args.port, keys, keepalive=args.heartbeat))
            except Exception as exc:
                failures.append(repr(exc))

    started = time.perf_counter()
    await asyncio.wait_for(
        asyncio.gather(*(one() for _ in range(args.sessions))), max(deadline.left(), 1)
    )
    opened = time.perf_counter() - started
    await asyncio.sleep(min(args.hold, max(deadline.left() - 5, 0)))
    out = {
        "opened": len(conns),
        "alive": len(conns),
        "failures": failures[:5],
        "failure_count": len(failures),
        "open_seconds": opened,
        "client": _self_memory(),
    }
    for c in conns:
        c.close()
    await asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True)
    return out


COMMANDS = {
    "ppcp-transfer": ppcp_transfer,
    "ppcp-idle": ppcp_idle,
    "ppcp-handshakes": ppcp_handshakes,
    "asyncssh-transfer": asyncssh_transfer,
    "asyncssh-idle": asyncssh_idle,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--keys")
    parser.add_argument("--op", choices=["put", "get"])
    parser.add_argument("--local")
    parser.add_argument("--remote")
    parser.add_argument("--mode", choices=["binary", "base64"], default="binary")
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=50)
    parser.add_argument("--hold", type=float, default=5.0)
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--profile", help="write a profile of the transfer here")
    parser.add_argument("--profiler", choices=["pyinstrument", "cprofile"], default="pyinstrument")
    args = parser.parse_args(argv)
    use_uvloop_if_asked()
    result = asyncio.run(COMMANDS[args.command](args))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
