"""CPU instructions per operation, counted by valgrind: a figure host noise does not move.

Wall-clock ratios on this (shared, virtual) machine move by +-0.03 between runs
of the same code, more than most single optimisations gain.  Instructions
retired in user space do not: two runs agree within ~1%.  So this is how to
tell whether a change made PPCP do less work, before a full ``make bench``
says whether that shows in time:

    python -m bench.instructions                 # every operation
    python -m bench.instructions warm handshake  # some

Each operation runs ``count`` times in a child under
``valgrind --tool=callgrind``, twice with different counts; the difference
divided by the difference in counts is the cost of one operation, with
start-up and imports cancelled out.  Client and server run in one process, so
a figure is both ends together.  Kernel time (syscalls, the scheduler) is not
counted, nor is the command the server runs (a child process).

* ``warm``: ``exec("true")`` on an open session;
* ``connection``: connect + handshake + ``exec("true")`` + close, ten at a time;
* ``handshake``: the sans-I/O handshake alone, both sides, in memory;
* ``floor``: ``bench/exec_floor.py``'s connection (its crypto, the same
  command start, no protocol), ten at a time: the ``connection`` row's floor.

Needs valgrind (``apt-get install valgrind``); takes 1-2 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

OPERATIONS = ("warm", "connection", "handshake", "floor")
PSK = "ppcp-psk-" + "42" * 32
WARMUP = 20
COUNTS = (20, 120)  # the two runs; their difference is what is divided


async def _session_operations(operation: str, count: int) -> None:
    import ppcp.aio
    from bench.peers import ppcp_client_config, server_port, start_ppcp

    server = await start_ppcp(Path(tempfile.mkdtemp()), PSK, max_unauthenticated=300)
    port = server_port(server)

    async def connection() -> None:
        session = await ppcp.aio.connect(
            "127.0.0.1", port, PSK, config=ppcp_client_config(heartbeat=0)
        )
        try:
            await session.exec("true")
        finally:
            await session.close()

    try:
        if operation == "warm":
            session = await ppcp.aio.connect("127.0.0.1", port, PSK, config=ppcp_client_config())
            for _ in range(WARMUP + count):
                await session.exec("true")
            await session.close()
        else:
            for _ in range(WARMUP // 10 + count // 10):
                await asyncio.gather(*(connection() for _ in range(10)))
    finally:
        await server.aclose()


async def _floor(count: int) -> None:
    from bench.exec_floor import client_key, floor_exec, start_floor_server

    server = await start_floor_server()
    port = server.sockets[0].getsockname()[1]
    key = client_key()
    for _ in range(WARMUP // 10 + count // 10):
        await asyncio.gather(*(floor_exec(port, key) for _ in range(10)))
    server.close()


def _handshakes(count: int) -> None:
    from ppcp.core.states import Role
    from ppcp.crypto.psk import derive_psk_key
    from ppcp.handshake.machine import HandshakeConfig
    from ppcp.transport.connection import Connection, ConnectionConfig

    caps = ("msg", "channels", "heartbeat", "exec", "shell", "files", "message")
    key = derive_psk_key(PSK)
    client_config = ConnectionConfig(HandshakeConfig("bench-client", capabilities=caps))
    server_config = ConnectionConfig(HandshakeConfig("bench-server", capabilities=caps))
    for _ in range(WARMUP + count):
        client = Connection(Role.CLIENT, key, client_config)
        server = Connection(Role.SERVER, key, server_config)
        client.initiate()
        for receiver, sender in ((server, client), (client, server)) * 2:
            receiver.receive_data(bytes(sender.data_to_send()))
        if not client.is_open or not server.is_open:
            raise RuntimeError("in-memory handshake failed")


def run_operation(operation: str, count: int) -> None:
    if operation == "handshake":
        _handshakes(count)
    elif operation == "floor":
        asyncio.run(_floor(count))
    else:
        asyncio.run(_session_operations(operation, count))


def _instructions(valgrind: str, operation: str, count: int) -> int:
    command = [
        valgrind,
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "bench.instructions",
        "--run",
        operation,
        "--count",
        str(count),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    found = re.search(r"Collected\s*:\s*(\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{operation}: valgrind run failed:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def measure(operation: str, valgrind: str) -> int:
    """Instructions per operation (both ends together)."""
    low, high = (_instructions(valgrind, operation, n) for n in COUNTS)
    return (high - low) // (COUNTS[1] - COUNTS[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("operations", nargs="*", metavar="OPERATION", help=", ".join(OPERATIONS))
    parser.add_argument("--run", choices=OPERATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=COUNTS[0], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:  # inside valgrind
        run_operation(args.run, args.count)
        return 0
    unknown = set(args.operations) - set(OPERATIONS)
    if unknown:
        parser.error(f"unknown operation(s) {sorted(unknown)}; choose from {', '.join(OPERATIONS)}")
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    os.environ.setdefault("PYTHONHASHSEED", "0")  # one less source of variation
    for operation in args.operations or OPERATIONS:
        count = measure(operation, valgrind)
        print(f"{operation:<11} {count / 1e6:7.3f} M instructions", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
