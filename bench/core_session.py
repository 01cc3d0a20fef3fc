"""Core numbers for the session issue: handshake time and 1 MiB message throughput.

    .venv/bin/python -m bench.core_session [--handshakes N] [--messages N]

Handshake: asyncio client and server in one process on 127.0.0.1 (both sides'
CPU on one core), connect → authenticated, median over N.  In-memory: the
sans-I/O pair with no sockets, i.e. the protocol's own CPU cost.  Throughput:
1 MiB messages echoed client → server → client, MiB/s of payload each way.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import ppcp
import ppcp.aio
from ppcp.core.config import SessionConfig
from ppcp.core.states import Role
from ppcp.crypto.psk import derive_psk_key
from ppcp.transport.connection import Connection


def in_memory_handshake(psk_key: bytes, config: SessionConfig) -> float:
    started = time.perf_counter()
    client = Connection(Role.CLIENT, psk_key, config.connection_config())
    server = Connection(Role.SERVER, psk_key, config.connection_config())
    client.initiate()
    for _ in range(2):  # two round trips
        server.receive_data(client.data_to_send())
        client.receive_data(server.data_to_send())
    assert client.is_open and server.is_open
    return time.perf_counter() - started


async def loopback(handshakes: int, messages: int) -> dict[str, float]:
    psk = ppcp.generate_psk()
    config = SessionConfig(name="bench", heartbeat_interval=0)

    async def echo(session: ppcp.aio.AsyncSession) -> None:
        async for message in session:
            await session.send(message)

    server = await ppcp.aio.serve("127.0.0.1", 0, psk, echo, config=config)
    times = []
    for _ in range(handshakes):
        started = time.perf_counter()
        session = await ppcp.aio.connect("127.0.0.1", server.port, psk, config=config)
        times.append(time.perf_counter() - started)
        await session.close()
    session = await ppcp.aio.connect("127.0.0.1", server.port, psk, config=config)
    payload = b"\xa5" * (1 << 20)
    started = time.perf_counter()
    for _ in range(messages):
        await session.send(payload)
        await session.recv()
    elapsed = time.perf_counter() - started
    await session.close()
    await server.aclose()
    return {
        "handshake_median_ms": statistics.median(times) * 1000,
        "handshake_p90_ms": sorted(times)[int(len(times) * 0.9)] * 1000,
        "echo_1mib_mib_per_s": messages / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--handshakes", type=int, default=300)
    parser.add_argument("--messages", type=int, default=500)
    args = parser.parse_args()
    psk_key = derive_psk_key(ppcp.generate_psk())
    config = SessionConfig(name="bench")
    mem = [in_memory_handshake(psk_key, config) for _ in range(args.handshakes)]
    print(f"in-memory handshake (both sides): median {statistics.median(mem) * 1000:.3f} ms")
    for key, value in asyncio.run(loopback(args.handshakes, args.messages)).items():
        print(f"loopback {key}: {value:.2f}")


if __name__ == "__main__":
    main()
