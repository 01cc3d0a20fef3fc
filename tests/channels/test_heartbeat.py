"""Heartbeats: a silent peer is declared dead within the configured bound (both
APIs), and heartbeats keep their latency while a bulk transfer runs."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable

import pytest
from channel_helpers import PSK_TEXT, Connect, FreezableProxy, MiB, StartServer, until

import ppcp
import ppcp.aio
from ppcp import HeartbeatTimeout
from ppcp.transport.blocking import run

INTERVAL = 0.1
MAX_MISSED = 3
# Dead after interval * (max_missed + 0.5) of silence, checked once per interval;
# the last answer can be up to one interval older than the freeze.
UPPER_BOUND = INTERVAL * (MAX_MISSED + 2) + 1.0  # + slack for a loaded machine
LOWER_BOUND = INTERVAL * (MAX_MISSED - 1.5)


def beating(
    name: str, interval: float = INTERVAL, max_missed: int = MAX_MISSED
) -> ppcp.SessionConfig:
    return ppcp.SessionConfig(
        name=name, heartbeat_interval=interval, heartbeat_max_missed=max_missed
    )


QUIET = ppcp.SessionConfig(name="server", heartbeat_interval=0)  # answers, never asks


async def test_silent_peer_is_declared_dead(serve: StartServer, connect: Connect) -> None:
    server = await serve(config=QUIET)
    proxy = FreezableProxy(server.port)
    try:
        session = await connect(server, config=beating("client"), port=await proxy.start())
        proc = await session.start_exec(["sleep", "30"])
        # Heartbeats are answered while the path is up.
        await until(lambda: session.heartbeat is not None and len(session.heartbeat.rtts) >= 2)
        proxy.freeze()
        frozen_at = time.monotonic()
        with pytest.raises(HeartbeatTimeout, match="heartbeat"):
            await asyncio.wait_for(session.recv(), 10)
        elapsed = time.monotonic() - frozen_at
        assert LOWER_BOUND <= elapsed <= UPPER_BOUND, elapsed
        assert session.is_closed or session._error is not None
        # Everything on the session fails with the same clear error.
        with pytest.raises(HeartbeatTimeout):
            await proc.wait()
        with pytest.raises(HeartbeatTimeout):
            await session.exec(["true"])
        await asyncio.wait_for(session.wait_closed(), 10)
    finally:
        await proxy.close()


async def test_server_declares_a_silent_client_dead(serve: StartServer, connect: Connect) -> None:
    server = await serve(config=beating("server"))
    proxy = FreezableProxy(server.port)
    try:
        quiet_client = ppcp.SessionConfig(name="client", heartbeat_interval=0)
        session = await connect(server, config=quiet_client, port=await proxy.start())
        proc = await session.start_exec(["sleep", "300"])
        await until(lambda: len(server.sessions) == 1)
        served = next(iter(server.sessions))
        proxy.freeze()
        frozen_at = time.monotonic()
        await asyncio.wait_for(served.wait_closed(), 10)
        assert time.monotonic() - frozen_at <= UPPER_BOUND
        assert isinstance(served._error, HeartbeatTimeout)
        # The dead client's command was killed with the session.
        from channel_helpers import wait_pid_gone

        assert proc.pid is not None
        await wait_pid_gone(proc.pid)
    finally:
        await proxy.close()


def test_blocking_recv_raises_heartbeat_timeout(
    blocking_server: Callable[..., ppcp.aio.Server],
) -> None:
    server = blocking_server(config=QUIET)
    proxy = FreezableProxy.__new__(FreezableProxy)

    async def make_proxy() -> int:
        FreezableProxy.__init__(proxy, server.port)
        return await proxy.start()

    port = run(make_proxy())
    try:
        session = ppcp.connect("127.0.0.1", port, PSK_TEXT, config=beating("client"))
        session.send(b"ping")  # the path works
        run(_freeze(proxy))
        frozen_at = time.monotonic()
        with pytest.raises(HeartbeatTimeout):
            session.recv(timeout=10)
        elapsed = time.monotonic() - frozen_at
        assert LOWER_BOUND <= elapsed <= UPPER_BOUND, elapsed
        assert session.closed or session.aio._error is not None
        with pytest.raises(HeartbeatTimeout):
            session.exec("true")
        session.close()
    finally:
        run(proxy.close())


async def _freeze(proxy: FreezableProxy) -> None:
    proxy.freeze()


async def test_heartbeats_flow_during_a_bulk_transfer(serve: StartServer, connect: Connect) -> None:
    """1 MiB blocks pushed to a sink until 20 heartbeats came back; their RTTs stay small."""
    server = await serve(config=QUIET)
    # Frequent heartbeats to measure; max_missed high so a slow one is measured, not fatal.
    session = await connect(server, config=beating("client", interval=0.01, max_missed=1000))
    assert session.heartbeat is not None
    chan = await session.open_channel("test-sink", b'{"report": true}')
    block = b"\x00" * MiB
    session.heartbeat.rtts.clear()
    wanted = 20
    pushed = 0
    start = time.monotonic()
    # Bounded: 4 GiB is minutes of transfer, far more than 20 heartbeats need.
    while len(session.heartbeat.rtts) < wanted and pushed < 4096 * MiB:
        await chan.write(block)
        pushed += len(block)
    duration = time.monotonic() - start
    rtts = sorted(session.heartbeat.rtts)
    await chan.send_eof()
    report = b""
    while (chunk := await asyncio.wait_for(chan.read(), 30)) is not None:
        report += chunk[1]
    assert int(report) == pushed  # the sink got every byte: the transfer was real
    assert len(rtts) >= wanted, f"only {len(rtts)} heartbeats answered in {pushed // MiB} MiB"
    median = statistics.median(rtts)
    p99 = rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))]
    print(
        f"\n{pushed // MiB} MiB in {duration:.2f} s: {len(rtts)} heartbeats, "
        f"RTT median {median * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms, max {rtts[-1] * 1e3:.2f} ms"
    )
    # Heartbeats are not queued behind the transfer: far below the death bound.
    assert rtts[-1] < 0.5
