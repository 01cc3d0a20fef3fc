"""Where a burst of concurrent connections spends its time, phase by phase.

The ``concurrent`` section times whole bursts (N connect + auth + ``exec true``
at once); this stamps each connection's steps on both ends and prints, for the
last burst, when the first, the 10th percentile, the median, the 90th and the
last connection reached each step (ms after the burst started):

* client: ``start`` (its coroutine began), ``established`` (handshake done),
  ``exec done`` (exit status in), ``closed`` (orderly close done);
* server (a separate process, as in the section): ``connected`` (transport
  made), ``command started`` (``Child`` created: the spawn returned),
  ``command reaped`` (its exit seen).

Run ``python -m bench.burst_timeline`` on a quiet machine.  The stamps are
``time.perf_counter()`` (CLOCK_MONOTONIC, shared by both processes); the hooks
cost each connection a few microseconds.  Also printed: the share of the
machine's CPU that was busy during the bursts (``/proc/stat``).  What it showed
on 2026-11-23 is in bench/README.md ("For `concurrent`").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import UVLOOP_ENV, child_env, machine_cpu, use_uvloop_if_asked, uvloop_factory

PSK = "ppcp-psk-" + "42" * 32
CLIENT_STEPS = ("start", "established", "exec done", "closed")
SERVER_STEPS = ("connected", "command started", "command reaped")


def _hook(cls: Any, name: str, stamps: list[float]) -> None:
    original = cls.__dict__[name]

    def stamped(self: Any, *args: Any, **kwargs: Any) -> Any:
        stamps.append(time.perf_counter())
        return original(self, *args, **kwargs)

    setattr(cls, name, stamped)


async def _serve() -> None:
    from bench.peers import server_port, start_ppcp
    from ppcp.control.child import Child
    from ppcp.transport.aio_driver import AsyncSession

    stamps: dict[str, list[float]] = {step: [] for step in SERVER_STEPS}
    _hook(AsyncSession, "_attach", stamps["connected"])
    _hook(Child, "__init__", stamps["command started"])
    _hook(Child, "_exited", stamps["command reaped"])
    server = await start_ppcp(Path(tempfile.mkdtemp()), PSK, max_unauthenticated=1000)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(server_port(server), flush=True)
    await stop.wait()
    await server.aclose()
    print(json.dumps(stamps), flush=True)


async def _connection(port: int, stamps: dict[str, list[float]]) -> None:
    import ppcp.aio
    from bench.peers import ppcp_client_config

    stamps["start"].append(time.perf_counter())
    session = await ppcp.aio.connect("127.0.0.1", port, PSK, config=ppcp_client_config(heartbeat=0))
    stamps["established"].append(time.perf_counter())
    try:
        await session.exec("true")
        stamps["exec done"].append(time.perf_counter())
    finally:
        await session.close()
    stamps["closed"].append(time.perf_counter())


def _spread(stamps: list[float], start: float) -> str:
    ms = sorted((t - start) * 1e3 for t in stamps)
    if not ms:
        return "-"
    pick = [ms[0], ms[len(ms) // 10], ms[len(ms) // 2], ms[(len(ms) * 9) // 10], ms[-1]]
    return "  ".join(f"{v:7.1f}" for v in pick)


def run(bursts: int, connections: int, uvloop: bool) -> dict[str, Any]:
    """Timeline of the last of ``bursts`` bursts of ``connections`` connections."""
    loop_factory = uvloop_factory() if uvloop else None
    if uvloop and loop_factory is None:
        raise SystemExit("--uvloop: uvloop is not installed (pip install uvloop)")
    env = child_env(**({UVLOOP_ENV: "1"} if uvloop else {}))
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.burst_timeline", "--serve"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        client: dict[str, list[float]] = {step: [] for step in CLIENT_STEPS}
        busy = total = 0.0
        times: list[float] = []
        for _ in range(bursts):
            for values in client.values():
                values.clear()

            async def burst() -> None:
                await asyncio.gather(*(_connection(port, client) for _ in range(connections)))

            before = machine_cpu()
            started = time.perf_counter()
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                runner.run(asyncio.wait_for(burst(), 60))
            times.append(time.perf_counter() - started)
            after = machine_cpu()
            busy, total = busy + after[0] - before[0], total + after[1] - before[1]
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    served: dict[str, list[float]] = json.loads(out.strip().splitlines()[-1])
    start = min(client["start"])
    last = {step: [t for t in v if t >= start] for step, v in served.items()}
    return {
        "start": start,
        "client": client,
        "server": last,
        "burst_ms": [t * 1e3 for t in times],
        "busy": busy / total if total else 0.0,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.burst_timeline", description=__doc__)
    p.add_argument("--bursts", type=int, default=5, help="bursts run; the last is shown")
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--uvloop", action="store_true", help="both ends on uvloop")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        use_uvloop_if_asked()  # run() sets the variable for --uvloop
        asyncio.run(_serve())
        return
    result = run(max(args.bursts, 1), max(args.connections, 1), args.uvloop)
    bursts = ", ".join(f"{t:.0f}" for t in result["burst_ms"])
    print(f"bursts of {args.connections}: {bursts} ms; machine busy {result['busy']:.0%}")
    print(
        f"{'ms after the last burst began':32s}  {'first':>7s}  {'p10':>7s}  "
        f"{'median':>7s}  {'p90':>7s}  {'last':>7s}"
    )
    client, server = result["client"], result["server"]
    # In the order they happen to one connection.
    rows = [("client " + s, client[s]) for s in CLIENT_STEPS[:2]]
    rows += [("server " + s, server[s]) for s in SERVER_STEPS]
    rows += [("client " + s, client[s]) for s in CLIENT_STEPS[2:]]
    for name, stamps in rows:
        print(f"{name:32s}  {_spread(stamps, result['start'])}")


if __name__ == "__main__":
    main()
