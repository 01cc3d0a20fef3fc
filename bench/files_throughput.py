"""File-transfer throughput: put/get of one big file over loopback, on tmpfs.

The server runs in a separate process (so the two ends use two cores, as on
two machines); the client runs here.  For each data path (binary frames, and
base64 chunks forced by a client without ``binary-data``) and each direction
it reports MiB/s, the CPU seconds each end spent per GiB, and the peak RSS of
each end during the transfer (VmHWM, reset before each run)::

    python -m bench.files_throughput                 # 1 GiB, 3 runs each
    python -m bench.files_throughput --size-mib 256 --runs 1 --paths binary
    python -m bench.files_throughput --json results.json

Not a test: numbers depend on the machine and its load.  Every loop is
bounded by its run count; the server is stopped (its process group only)
whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    PYTHON,
    Procs,
    child_env,
    proc_cpu_seconds,
    proc_status_kib,
    reset_peak_rss,
)

MiB = 1 << 20
PSK = "ppcp-psk-" + "42" * 32
STARTUP_TIMEOUT = 30.0


def make_file(path: Path, size: int) -> None:
    """Incompressible, non-repeating content: one random MiB with a block counter."""
    block = bytearray(os.urandom(MiB))
    with open(path, "wb") as f:
        for i in range((size + MiB - 1) // MiB):
            block[:8] = i.to_bytes(8, "big")
            f.write(memoryview(block)[: min(MiB, size - i * MiB)])


# -- server process ---------------------------------------------------------------------------


def serve(root: str) -> None:
    """Run a file server on 127.0.0.1:0 and print its port; serve until SIGTERM."""
    import inspect

    import ppcp.aio
    from ppcp.control.router import ServerPolicy

    async def main() -> None:
        extra: dict[str, Any] = {}
        if "discovery" in inspect.signature(ppcp.aio.serve).parameters:
            extra["discovery"] = False
        server = await ppcp.aio.serve(
            "127.0.0.1", 0, PSK, policy=ServerPolicy(root=Path(root)), **extra
        )
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print(json.dumps({"port": server.port}), flush=True)
        await stop.wait()
        await server.aclose()

    asyncio.run(main())


# -- client side --------------------------------------------------------------------------------


@dataclass
class Run:
    path: str
    op: str
    seconds: float
    mib_s: float
    client_cpu_s_per_gib: float
    server_cpu_s_per_gib: float
    client_peak_rss_mib: float
    server_peak_rss_mib: float


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def self_peak_mib() -> float:
    return (proc_status_kib(os.getpid(), "VmHWM") or 0) / 1024


async def measure(
    port: int, server_pid: int, base: Path, size: int, paths: list[str], runs: int, compress: bool
) -> list[Run]:
    import ppcp.aio
    from ppcp.core.config import SUPPORTED_CAPABILITIES, SessionConfig

    caps = {
        "binary": SUPPORTED_CAPABILITIES,
        "base64": tuple(c for c in SUPPORTED_CAPABILITIES if c != "binary-data"),
    }
    results = []
    src = base / "local" / "src.bin"
    for path in paths:
        config = SessionConfig(capabilities=caps[path])
        session = await ppcp.aio.connect("127.0.0.1", port, PSK, config=config)
        try:
            for _ in range(runs):
                for op in ("put", "get"):
                    reset_peak_rss(os.getpid())
                    reset_peak_rss(server_pid)
                    cpu0, server0 = self_cpu(), proc_cpu_seconds(server_pid) or 0.0
                    started = time.perf_counter()
                    if op == "put":
                        result = await session.put(src, "dst.bin", resume=False, compress=compress)
                    else:
                        result = await session.get(
                            "dst.bin", base / "local" / "back.bin", resume=False, compress=compress
                        )
                    seconds = time.perf_counter() - started
                    assert result.bytes == size and result.encoding == path, result
                    gib = size / (1 << 30)
                    results.append(
                        Run(
                            path,
                            op,
                            round(seconds, 3),
                            round(size / MiB / seconds, 1),
                            round((self_cpu() - cpu0) / gib, 2),
                            round(((proc_cpu_seconds(server_pid) or 0.0) - server0) / gib, 2),
                            round(self_peak_mib(), 1),
                            round((proc_status_kib(server_pid, "VmHWM") or 0) / 1024, 1),
                        )
                    )
                    print(_line(results[-1]), flush=True)
        finally:
            await session.close()
    return results


def _line(r: Run) -> str:
    return (
        f"{r.path:7} {r.op:4} {r.mib_s:8.1f} MiB/s  {r.seconds:7.2f} s  "
        f"cpu/GiB client {r.client_cpu_s_per_gib:5.2f} s server {r.server_cpu_s_per_gib:5.2f} s  "
        f"peak RSS client {r.client_peak_rss_mib:6.1f} MiB server {r.server_peak_rss_mib:6.1f} MiB"
    )


def summary(results: list[Run]) -> list[dict[str, Any]]:
    rows = []
    for path in dict.fromkeys(r.path for r in results):
        for op in ("put", "get"):
            sel = [r for r in results if r.path == path and r.op == op]
            if sel:
                rows.append(
                    {
                        "path": path,
                        "op": op,
                        "median_mib_s": round(statistics.median(r.mib_s for r in sel), 1),
                        "best_mib_s": max(r.mib_s for r in sel),
                        "client_peak_rss_mib": max(r.client_peak_rss_mib for r in sel),
                        "server_peak_rss_mib": max(r.server_peak_rss_mib for r in sel),
                    }
                )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.files_throughput", description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--paths", default="binary,base64")
    parser.add_argument("--compress", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--serve", metavar="ROOT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    size = args.size_mib * MiB
    shm: str | None = "/dev/shm"
    # source, server copy, client copy; tmpfs is memory shared with everyone else
    if not os.path.isdir("/dev/shm") or shutil.disk_usage("/dev/shm").free < 3 * size + (1 << 30):
        print("not enough room on /dev/shm: using the default temporary directory", flush=True)
        shm = None
    base = Path(tempfile.mkdtemp(prefix="ppcp-bench-files-", dir=shm))
    try:
        (base / "root").mkdir()
        (base / "local").mkdir()
        make_file(base / "local" / "src.bin", size)
        with Procs() as procs:
            server = procs.start(
                [PYTHON, "-m", "bench.files_throughput", "--serve", str(base / "root")],
                stdout=subprocess.PIPE,
                env=child_env(),
            )
            assert server.stdout is not None
            line = server.stdout.readline()  # the server prints its port once listening
            if not line:
                raise RuntimeError("the server process exited before listening")
            port = json.loads(line)["port"]
            print(
                f"{args.size_mib} MiB on {shm or 'disk'}, server pid {server.pid}, "
                f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
            paths = [p for p in args.paths.split(",") if p]
            results = asyncio.run(
                measure(port, server.pid, base, size, paths, args.runs, args.compress)
            )
        rows = summary(results)
        print("\nmedian / best MiB/s, peak RSS (client / server):")
        for row in rows:
            print(
                f"  {row['path']:7} {row['op']:4} {row['median_mib_s']:8.1f} / "
                f"{row['best_mib_s']:8.1f} MiB/s   {row['client_peak_rss_mib']:.0f} / "
                f"{row['server_peak_rss_mib']:.0f} MiB"
            )
        if args.json:
            args.json.write_text(
                json.dumps({"runs": [asdict(r) for r in results], "summary": rows}, indent=2)
            )
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
