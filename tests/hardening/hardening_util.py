"""Helpers for the hardening tests: in-memory man-in-the-middle pipes, raw sockets, proxies.

Nothing here sleeps to wait for readiness, and every loop is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import ppcp.aio
from ppcp.control.channels import ChannelMux
from ppcp.core.config import SUPPORTED_CAPABILITIES, SessionConfig
from ppcp.core.errors import PPCPError
from ppcp.core.events import Event, HandshakeComplete
from ppcp.core.limits import ServerLimits
from ppcp.core.states import Role
from ppcp.crypto.psk import derive_psk_key
from ppcp.handshake.machine import HandshakeConfig
from ppcp.handshake.messages import Alert
from ppcp.key_exchange.ecdh import RandomSource
from ppcp.transport.aio_driver import AsyncSession
from ppcp.transport.connection import Connection, ConnectionConfig
from ppcp.transport.frames import Frame, FrameBuffer, FrameType
from ppcp.utils.vectors import StreamRNG
from tests.server_settle import settle as settle_server

# Deterministic random source: the same counter-mode stream as the RFC vectors.
fixed_rng = StreamRNG

HOST = "127.0.0.1"
# A second loopback address: the "legitimate client" in per-source tests.
OTHER_HOST = "127.0.0.2"
WAIT = 15.0  # upper bound for any single wait; the happy paths take milliseconds
PSK_TEXT = "ppcp-psk-" + "3c" * 32
OTHER_PSK_TEXT = "ppcp-psk-" + "c3" * 32
PSK = derive_psk_key(PSK_TEXT)
OTHER_PSK = derive_psk_key(OTHER_PSK_TEXT)
MAX_ROUNDS = 64

Hook = Callable[[Role, int, Frame], list[bytes]]


def conn_config(
    name: str,
    versions: tuple[int, ...] = (1,),
    capabilities: tuple[str, ...] = SUPPORTED_CAPABILITIES,
    **kwargs: Any,
) -> ConnectionConfig:
    return ConnectionConfig(HandshakeConfig(name, versions, capabilities), **kwargs)


def client_conn(
    psk: bytes = PSK, config: ConnectionConfig | None = None, rng: RandomSource = os.urandom
) -> Connection:
    return Connection(Role.CLIENT, psk, config or conn_config("client"), rng)


def server_conn(
    psk: bytes = PSK, config: ConnectionConfig | None = None, rng: RandomSource = os.urandom
) -> Connection:
    return Connection(Role.SERVER, psk, config or conn_config("server"), rng)


def frames_of(stream: bytes) -> list[Frame]:
    """Every whole frame in ``stream`` (which must end on a frame boundary)."""
    buf = FrameBuffer()
    buf.feed(stream)
    out = []
    for _ in range(len(stream) + 1):
        frame = buf.next_frame()
        if frame is None:
            break
        out.append(frame)
    assert buf.pending == 0, f"{buf.pending} bytes after the last whole frame"
    return out


def feed_error(conn: Connection, data: bytes) -> PPCPError | None:
    """The error feeding ``data`` ends in, raised or delivered after earlier events."""
    try:
        conn.receive_data(data)
    except PPCPError as exc:
        return exc
    return conn.error


def wire(frame: Frame) -> bytes:
    return frame.header + frame.body


def alert_code(frame: Frame) -> int:
    assert frame.type == FrameType.ALERT
    return Alert.decode(frame.body).code


@dataclass
class End:
    conn: Connection
    events: list[Event] = field(default_factory=list)
    error: PPCPError | None = None
    frames_sent: list[Frame] = field(default_factory=list)
    bytes_sent: bytearray = field(default_factory=bytearray)

    @property
    def established(self) -> bool:
        return any(isinstance(e, HandshakeComplete) for e in self.events)


class FramePipe:
    """Client and server joined through a frame-level man in the middle.

    ``hook(sender_role, n, frame)`` sees the n-th frame each side sends (n
    counts from 0 per direction) and returns the byte strings to deliver
    instead: ``[wire(frame)]`` passes it on, ``[]`` drops it, more injects.
    """

    def __init__(self, client: Connection, server: Connection, hook: Hook | None = None) -> None:
        self.client = End(client)
        self.server = End(server)
        self.hook = hook
        self._parsers = {Role.CLIENT: FrameBuffer(), Role.SERVER: FrameBuffer()}
        self.muxes: list[ChannelMux] = []

    def end(self, role: Role) -> End:
        return self.client if role is Role.CLIENT else self.server

    def _move(self, src: End, dst: End) -> bool:
        data = src.conn.data_to_send()
        if not data:
            return False
        src.bytes_sent += data
        parser = self._parsers[src.conn.role]
        parser.feed(data)
        for _ in range(len(data) + 1):
            frame = parser.next_frame()
            if frame is None:
                break
            n = len(src.frames_sent)
            src.frames_sent.append(frame)
            out = self.hook(src.conn.role, n, frame) if self.hook else [wire(frame)]
            for chunk in out:
                self.deliver(dst, chunk)
        return True

    def deliver(self, dst: End, data: bytes) -> None:
        if dst.error is not None:
            return
        try:
            dst.events.extend(dst.conn.receive_data(data))
        except PPCPError as exc:
            dst.error = exc
        else:
            # Events completed before an error come first, then ConnectionClosed.
            dst.error = dst.conn.error

    def pump(self) -> FramePipe:
        for _ in range(MAX_ROUNDS):
            moved = self._move(self.client, self.server)
            moved = self._move(self.server, self.client) or moved
            if not moved:
                return self
        raise AssertionError("pipe did not settle")

    def handshake(self) -> FramePipe:
        self.client.conn.initiate()
        return self.pump()


# -- loopback --------------------------------------------------------------------------------


def session_config(name: str, **kwargs: Any) -> SessionConfig:
    return SessionConfig(name=name, **kwargs)


class Recorder:
    """A ppcp.aio.serve handler that counts sessions and echoes messages."""

    def __init__(self) -> None:
        self.established = 0
        self.sessions: asyncio.Queue[AsyncSession] = asyncio.Queue()

    async def handler(self, session: AsyncSession) -> None:
        self.established += 1
        self.sessions.put_nowait(session)
        async for message in session:
            await session.send(message)


@contextlib.asynccontextmanager
async def running_server(
    config: SessionConfig | None = None,
    limits: ServerLimits | None = None,
    host: str = HOST,
    **kwargs: Any,
) -> AsyncIterator[tuple[ppcp.aio.Server, Recorder]]:
    """A real ppcp.aio server on an ephemeral port, discovery off."""
    recorder = Recorder()
    server = await ppcp.aio.serve(
        host,
        0,
        PSK_TEXT,
        recorder.handler,
        config=config or session_config("hardening-server"),
        limits=limits,
        discovery=False,
        **kwargs,
    )
    try:
        yield server, recorder
    finally:
        await server.aclose()


async def settle(server: ppcp.aio.Server) -> None:
    await settle_server(server, WAIT)


async def read_all(reader: asyncio.StreamReader, timeout: float = WAIT) -> bytes:
    return await asyncio.wait_for(reader.read(), timeout)


async def open_from(
    host: str, port: int, source: str | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio.open_connection, optionally from a chosen local (loopback) address."""
    local = (source, 0) if source else None
    return await asyncio.open_connection(host, port, local_addr=local)


async def connect_from(
    source: str, port: int, psk: str = PSK_TEXT, config: SessionConfig | None = None
) -> AsyncSession:
    """A full client handshake from a chosen loopback source address."""
    cfg = config or session_config("legit-client")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.bind((source, 0))
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.sock_connect(sock, (HOST, port)), cfg.handshake_timeout)
    except BaseException:
        sock.close()
        raise
    return await ppcp.aio.client_connect(sock, psk, config=cfg)


async def raw_session(
    port: int, rcvbuf: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Connection]:
    """An authenticated client session driven by hand (sans-I/O Connection over a socket).

    The test can then send records the public API never would.  ``rcvbuf``
    shrinks the socket's receive buffer (a peer that reads slowly).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (HOST, port)), WAIT)
    except BaseException:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(sock=sock)
    conn = client_conn(PSK)
    ChannelMux(conn)  # answers the server's heartbeats
    conn.initiate()
    for _ in range(8):
        writer.write(conn.data_to_send())
        if conn.is_open:
            return reader, writer, conn
        data = await asyncio.wait_for(reader.read(65536), WAIT)
        conn.receive_data(data)
    raise AssertionError("raw handshake did not finish")


class Proxy:
    """A TCP proxy that records (and may rewrite) each direction's bytes."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.client_bytes = bytearray()
        self.server_bytes = bytearray()
        self.client_segments: list[bytes] = []
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.done = asyncio.Event()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._handle, HOST, 0)
        return self

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        s_reader, s_writer = await asyncio.open_connection(HOST, self.target_port)

        async def copy(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, log: bytearray, seg: bool
        ) -> None:
            for _ in range(1_000_000):
                data = await src.read(65536)
                if not data:
                    break
                log += data
                if seg:
                    self.client_segments.append(data)
                dst.write(data)
                await dst.drain()
            with contextlib.suppress(OSError):
                dst.write_eof()

        try:
            await asyncio.gather(
                copy(c_reader, s_writer, self.client_bytes, True),
                copy(s_reader, c_writer, self.server_bytes, False),
                return_exceptions=True,
            )
        finally:
            c_writer.close()
            s_writer.close()
            self.done.set()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
