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
        assert session.exec("true").exit_code == 0  # the path works
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


def test_time_the_monitor_did_not_run_is_not_the_peers_silence() -> None:
    from ppcp.control.heartbeat import HeartbeatMonitor

    monitor = HeartbeatMonitor(interval=1.0, max_missed=3)
    monitor.start(0.0)
    for now in (1.0, 2.0, 3.0):
        assert not monitor.dead(now)
        monitor.due(now)
    # Checked on time, a silence of max_missed + 0.5 intervals is death...
    assert monitor.dead(4.0)
    # ...but a check 30 intervals late means this end was stopped: the count restarts.
    late = HeartbeatMonitor(interval=1.0, max_missed=3)
    late.start(0.0)
    assert not late.dead(1.0)
    late.due(1.0)
    assert not late.dead(31.0)
    assert late.outstanding == {}
    for now in (32.0, 33.0, 34.0):
        assert not late.dead(now)
    assert late.dead(35.0)


def test_role_defaults_give_a_server_more_patience() -> None:
    from ppcp.core.states import Role

    config = ppcp.SessionConfig()
    assert config.heartbeat_max_missed_for(Role.CLIENT) == 3
    assert config.heartbeat_max_missed_for(Role.SERVER) == 24
    explicit = ppcp.SessionConfig(heartbeat_max_missed=5)
    assert explicit.heartbeat_max_missed_for(Role.SERVER) == 5


_STOPPABLE_CLIENT = """
import asyncio, sys
import ppcp, ppcp.aio

async def main(port: int) -> None:
    config = ppcp.SessionConfig(name="client", heartbeat_interval={interval})
    session = await ppcp.aio.connect("127.0.0.1", port, {psk!r}, config=config)
    proc = await session.start_exec("read line; echo got $line")
    print("started", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await proc.write_stdin(line.encode())
    await proc.close_stdin()
    out = b"".join([data async for _, data in proc])
    sys.stdout.write(out.decode())
    print("status", (await proc.wait()).exit_code, flush=True)
    await session.close()

asyncio.run(main(int(sys.argv[1])))
"""


async def test_a_client_stopped_for_a_while_keeps_its_command(serve: StartServer) -> None:
    """Ctrl-Z on `ppcp exec` for longer than a client's dead-peer time: on SIGCONT
    both ends carry on (the server is more patient; the client does not count
    the time it was stopped against the server)."""
    import signal
    import subprocess
    import sys

    from channel_helpers import PSK_TEXT

    # Default max_missed on both ends: the client's 3 (0.35 s), the server's 24 (2.45 s).
    server = await serve(config=ppcp.SessionConfig(name="server", heartbeat_interval=INTERVAL))
    code = _STOPPABLE_CLIENT.format(interval=INTERVAL, psk=PSK_TEXT)
    client = subprocess.Popen(
        [sys.executable, "-c", code, str(server.port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    loop = asyncio.get_running_loop()
    try:
        assert client.stdout is not None and client.stdin is not None
        first = await asyncio.wait_for(loop.run_in_executor(None, client.stdout.readline), 30)
        assert first == b"started\n", first + client.stderr.read() if client.stderr else first
        client.send_signal(signal.SIGSTOP)
        # Three times the client's own dead-peer time, under the server's.
        await asyncio.sleep(INTERVAL * (MAX_MISSED + 0.5) * 3)
        client.send_signal(signal.SIGCONT)
        out, err = await asyncio.wait_for(
            loop.run_in_executor(None, client.communicate, b"back\n"), 30
        )
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 0, err.decode()
    assert out.decode().splitlines() == ["got back", "status 0"], (out, err)


def test_a_heartbeat_crossing_our_close_is_not_answered_and_ends_nothing() -> None:
    """RFC 10.5 / 15.8: once an endpoint sent CLOSE it sends no record, heartbeat answers
    included. A request that crossed our CLOSE used to be answered anyway, which raised
    "cannot send records in state closing" and turned an orderly close into a failure."""
    from channel_helpers import MuxPair

    from ppcp.core.events import ConnectionClosed
    from ppcp.core.states import State

    pair = MuxPair()
    pair.client.conn.close()  # queued, not yet delivered
    pair.server.mux.send_heartbeat(7)  # in flight the other way
    server_bytes = pair.server.conn.data_to_send()
    assert pair.client.conn.receive_data(server_bytes) == []  # the request: no answer, no error
    pair.pump()
    assert pair.client.error is None and pair.server.error is None
    closed = [e for e in pair.server.take() if isinstance(e, ConnectionClosed)]
    assert closed and closed[0].code == 0
    assert pair.client.conn.state is State.CLOSED
