"""Helpers for the channel tests: an in-memory mux pair, a TCP proxy, test services.

Nothing in :class:`MuxPair` touches a socket: two authenticated
:class:`~ppcp.transport.connection.Connection` objects, each with a
:class:`~ppcp.control.channels.ChannelMux`, exchange bytes through lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import select
import time
from collections.abc import Awaitable, Callable
from typing import Any

import ppcp.aio
from ppcp.control.aio_channel import AsyncChannel, decode_json
from ppcp.control.channels import ChannelMux, MuxConfig
from ppcp.control.router import ServerPolicy
from ppcp.core.errors import PolicyDenied, PPCPError
from ppcp.core.events import Event, HandshakeComplete
from ppcp.core.states import Role
from ppcp.crypto.psk import derive_psk_key
from ppcp.handshake.machine import HandshakeConfig
from ppcp.transport.connection import Connection, ConnectionConfig

PSK_TEXT = "ppcp-psk-" + "5a" * 32
PSK = derive_psk_key(PSK_TEXT)
MAX_ROUNDS = 256
MiB = 1 << 20


# -- in-memory -------------------------------------------------------------------------


class MuxSide:
    def __init__(self, role: Role, mux_config: MuxConfig) -> None:
        caps = ("msg", "channels", "heartbeat")
        self.conn = Connection(role, PSK, ConnectionConfig(HandshakeConfig(role.value, (1,), caps)))
        self.mux = ChannelMux(self.conn, mux_config)
        self.events: list[Event] = []
        self.error: PPCPError | None = None

    def take(self) -> list[Event]:
        events, self.events = self.events, []
        return events


class MuxPair:
    """An authenticated client/server pair, each with a channel multiplexer."""

    def __init__(self, client: MuxConfig | None = None, server: MuxConfig | None = None) -> None:
        self.client = MuxSide(Role.CLIENT, client or MuxConfig())
        self.server = MuxSide(Role.SERVER, server or MuxConfig())
        self.client.conn.initiate()
        self.pump()
        for side in (self.client, self.server):
            assert side.error is None, side.error
            assert any(isinstance(e, HandshakeComplete) for e in side.take())

    def _move(self, src: MuxSide, dst: MuxSide) -> bool:
        data = src.conn.data_to_send()
        if not data:
            return False
        if dst.error is None:
            try:
                dst.events.extend(dst.conn.receive_data(data))
            except PPCPError as exc:
                dst.error = exc
        return True

    def pump(self) -> None:
        for _ in range(MAX_ROUNDS):
            moved = self._move(self.client, self.server)
            moved = self._move(self.server, self.client) or moved
            if not moved:
                return
        raise AssertionError("pump did not settle")

    def inject(self, src: MuxSide, ftype: int, plaintext: bytes, flags: int = 0) -> None:
        """Send a raw record from ``src``, bypassing its mux (a misbehaving peer)."""
        src.conn.send_record(ftype, plaintext, flags)
        self.pump()

    def open(self, kind: str = "test", payload: bytes = b"") -> int:
        """Open a channel client -> server and accept it; return its id."""
        cid = self.client.mux.open_channel(kind, payload)
        self.pump()
        self.server.take()
        self.server.mux.accept(cid)
        self.pump()
        self.client.take()
        return cid


# -- loopback --------------------------------------------------------------------------


def serve_kwargs() -> dict[str, Any]:
    """Always keep tests off the UDP discovery port."""
    params = inspect.signature(ppcp.aio.serve).parameters
    return {"discovery": False} if "discovery" in params else {}


async def start_server(
    policy: ServerPolicy | None = None, config: ppcp.SessionConfig | None = None
) -> ppcp.aio.Server:
    return await ppcp.aio.serve(
        "127.0.0.1",
        0,
        PSK_TEXT,
        config=config or ppcp.SessionConfig(name="server"),
        policy=policy or ServerPolicy(),
        **serve_kwargs(),
    )


async def until(predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.005) -> None:
    """Wait (bounded) for a condition that no event announces."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(step)


async def wait_pid_gone(pid: int, timeout: float = 10.0) -> None:
    """Wait until process ``pid`` has exited (pidfd readiness, no polling)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
        try:
            await asyncio.wait_for(ready, timeout)
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        return not select.select([fd], [], [], 0)[0]
    finally:
        os.close(fd)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class FreezableProxy:
    """A TCP proxy that can stop forwarding (a peer that goes silent)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.running = asyncio.Event()
        self.running.set()
        self._server: asyncio.base_events.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def freeze(self) -> None:
        self.running.clear()

    def thaw(self) -> None:
        self.running.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers += [writer, up_writer]
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while True:
                await self.running.wait()
                data = await src.read(65536)
                if not data:
                    break
                await self.running.wait()
                dst.write(data)
                await dst.drain()
        with contextlib.suppress(OSError):
            dst.close()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


# -- test services (registered in router.SERVICES by the fixtures) ------------------------


async def serve_sink(channel: AsyncChannel, policy: ServerPolicy) -> None:
    """Read and discard; ``{"delay": s}`` sleeps after every chunk (a slow reader);
    at EOF, ``{"report": true}`` writes back the byte count received, in decimal."""
    options = decode_json(channel.open_payload or b"{}", "sink")
    delay = float(options.get("delay", 0))
    channel.accept()
    received = 0
    while (chunk := await channel.read()) is not None:
        received += len(chunk[1])
        if delay:
            await asyncio.sleep(delay)
    if options.get("report"):
        await channel.write(str(received).encode())


async def serve_hold(channel: AsyncChannel, policy: ServerPolicy) -> None:
    """Accept and keep the channel open until the client closes it."""
    channel.accept()
    await channel.wait_closed()


async def serve_deny(channel: AsyncChannel, policy: ServerPolicy) -> None:
    """Raise before answering: the router turns it into a CHANNEL_REJECT."""
    raise PolicyDenied("test service says no")


LAST_WORDS: list[str] = []  # what serve_last_words received, in order


async def serve_last_words(channel: AsyncChannel, policy: ServerPolicy) -> None:
    """Accept; record the first request's name (if one arrives) in LAST_WORDS."""
    channel.accept()
    request = await channel.next_request()
    LAST_WORDS.append("<closed>" if request is None else request[0])


CALLBACKS: list[str] = []  # what serve_callbacks was told, in order


async def serve_callbacks(channel: AsyncChannel, policy: ServerPolicy) -> None:
    """Accept; once two requests are queued, take them and the rest as callbacks (and
    the peer's close); on request ``done``, close the channel itself."""
    done = asyncio.get_running_loop().create_future()

    def on_request(name: str, payload: bytes) -> None:
        CALLBACKS.append(name)
        if name == "done" and not done.done():
            done.set_result(None)

    def on_peer_close() -> None:
        CALLBACKS.append("<peer closed>")
        if not done.done():
            done.set_result(None)

    channel.accept()
    while len(channel._requests) < 2:
        await channel._wait_change()
    channel.handle_requests(on_request, on_peer_close)
    await done
    await channel.close()
    await channel.wait_closed()


TEST_SERVICES = {
    "test-callbacks": "channel_helpers:serve_callbacks",
    "test-last-words": "channel_helpers:serve_last_words",
    "test-sink": "channel_helpers:serve_sink",
    "test-hold": "channel_helpers:serve_hold",
    "test-deny": "channel_helpers:serve_deny",
}

# Fixture types (conftest.py): ``await serve(policy=, config=)``, ``await connect(server, ...)``.
StartServer = Callable[..., Awaitable["ppcp.aio.Server"]]
Connect = Callable[..., Awaitable["ppcp.aio.AsyncSession"]]
