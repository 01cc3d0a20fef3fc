"""Heartbeat round trips while a bulk transfer runs, and warm exec latency.

The server runs in a separate process (as it would on another machine); the
client opens a session with frequent heartbeats, measures heartbeat RTTs idle,
then pushes ``--size`` bytes (default 1 GiB) on one channel to a server-side
sink and records every heartbeat RTT answered meanwhile.  It also times a
warm ``exec("true")`` (median of ``--execs`` runs on the open session), idle
and while the transfer runs.

    .venv/bin/python -m bench.heartbeat_under_load            # 1 GiB
    .venv/bin/python -m bench.heartbeat_under_load --size 256  # MiB

Prints a summary and, last, one JSON line.  Every loop is bounded by a count
and by ``--deadline`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PSK = "ppcp-psk-" + "42" * 32
MiB = 1 << 20


# -- server process ---------------------------------------------------------------------


async def serve_sink(channel: Any, policy: Any) -> None:
    """Read and discard everything (bench-only service)."""
    channel.accept()
    while await channel.read() is not None:
        pass


async def _serve(window: int) -> None:
    import ppcp.aio
    from ppcp.control import router
    from ppcp.control.channels import MuxConfig

    router.SERVICES["bench-sink"] = "bench.heartbeat_under_load:serve_sink"
    config = ppcp.SessionConfig(
        name="bench-server", heartbeat_interval=0, mux=MuxConfig(window=window)
    )
    server = await ppcp.aio.serve("127.0.0.1", 0, PSK, config=config, discovery=False)
    print(server.port, flush=True)
    # Runs until the client closes our stdin.
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await server.aclose()


# -- client ------------------------------------------------------------------------------


def _stats(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {"n": 0}
    s = sorted(samples)
    return {
        "n": len(s),
        "median_ms": round(statistics.median(s) * 1e3, 3),
        "p99_ms": round(s[min(len(s) - 1, int(len(s) * 0.99))] * 1e3, 3),
        "max_ms": round(s[-1] * 1e3, 3),
    }


async def _execs(session: Any, runs: int, deadline: float) -> list[float]:
    samples = []
    for _ in range(runs):
        if time.monotonic() > deadline:
            break
        started = time.perf_counter()
        result = await session.exec(["true"])
        samples.append(time.perf_counter() - started)
        if result.exit_code != 0:
            raise RuntimeError(f"exec true failed: {result!r}")
    return samples


async def _client(
    port: int, size: int, interval: float, execs: int, budget: float
) -> dict[str, Any]:
    import ppcp.aio

    deadline = time.monotonic() + budget
    config = ppcp.SessionConfig(
        name="bench-client", heartbeat_interval=interval, heartbeat_max_missed=1000
    )
    session = await ppcp.aio.connect("127.0.0.1", port, PSK, config=config)
    monitor = session.heartbeat
    assert monitor is not None, "the server did not negotiate heartbeats"
    try:
        await session.exec(["true"])  # warm up
        idle_exec = await _execs(session, execs, deadline)
        monitor.rtts.clear()
        await asyncio.sleep(min(1.0, 40 * interval))
        idle_rtts = list(monitor.rtts)

        sink = await session.open_channel("bench-sink")
        block = b"\x00" * MiB
        monitor.rtts.clear()
        loaded_exec: list[float] = []
        started = time.perf_counter()

        async def push() -> None:
            for _ in range(size // MiB):
                if time.monotonic() > deadline:
                    raise TimeoutError("the transfer did not finish within the deadline")
                await sink.write(block)
            await sink.send_eof()
            await sink.wait_closed()

        pushing = asyncio.ensure_future(push())
        while not pushing.done() and len(loaded_exec) < execs:
            loaded_exec += await _execs(session, 1, deadline)
        await pushing
        seconds = time.perf_counter() - started
        loaded_rtts = list(monitor.rtts)
    finally:
        await session.close()
    return {
        "size_mib": size // MiB,
        "seconds": round(seconds, 3),
        "throughput_mib_s": round(size / MiB / seconds, 1),
        "heartbeat_interval_s": interval,
        "heartbeat_idle": _stats(idle_rtts),
        "heartbeat_under_load": _stats(loaded_rtts),
        "exec_true_idle": _stats(idle_exec),
        "exec_true_under_load": _stats(loaded_exec),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=1024, help="MiB to push (default 1024)")
    parser.add_argument("--interval", type=float, default=0.05, help="heartbeat interval (s)")
    parser.add_argument("--execs", type=int, default=200, help="exec samples (default 200)")
    parser.add_argument("--deadline", type=float, default=600.0, help="overall budget (s)")
    parser.add_argument(
        "--window", type=int, default=4096, help="per-channel window, KiB (default 4096)"
    )
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(_serve(args.window * 1024))
        return 0
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.heartbeat_under_load",
            "--serve",
            "--window",
            str(args.window),
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        result = asyncio.run(
            _client(port, args.size * MiB, args.interval, args.execs, args.deadline)
        )
    finally:
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    result["window_kib"] = args.window
    hb, load = result["heartbeat_idle"], result["heartbeat_under_load"]
    print(
        f"transfer: {result['size_mib']} MiB in {result['seconds']} s "
        f"({result['throughput_mib_s']} MiB/s)\n"
        f"heartbeat RTT idle:       median {hb.get('median_ms')} ms, p99 {hb.get('p99_ms')} ms "
        f"(n={hb['n']})\n"
        f"heartbeat RTT under load: median {load.get('median_ms')} ms, "
        f"p99 {load.get('p99_ms')} ms, max {load.get('max_ms')} ms (n={load['n']})\n"
        f"exec true idle:           median {result['exec_true_idle'].get('median_ms')} ms "
        f"(n={result['exec_true_idle']['n']})\n"
        f"exec true under load:     median {result['exec_true_under_load'].get('median_ms')} ms "
        f"(n={result['exec_true_under_load']['n']})"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
