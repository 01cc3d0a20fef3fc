"""Real sockets on 127.0.0.1 (port 0): the blocking API, the asyncio API, a wiretap.

Nothing here sleeps to wait for readiness: every wait is on a future, a
queue, a thread join or a socket read, and every one has a bound.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import queue
import socket
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from core_helpers import OTHER_PSK_TEXT, PSK_TEXT, parse_frames

import ppcp
import ppcp.aio
from ppcp.core.config import SessionConfig
from ppcp.core.errors import (
    AuthenticationError,
    CloseCode,
    ConnectionLost,
    HandshakeTimeout,
    ProtocolError,
    ServerBusy,
    SessionClosed,
)
from ppcp.core.states import Role
from ppcp.crypto.psk import derive_psk_key
from ppcp.handshake.machine import HandshakeConfig
from ppcp.handshake.messages import Alert
from ppcp.transport.aio_driver import AsyncSession, set_nodelay
from ppcp.transport.connection import Connection, ConnectionConfig
from ppcp.transport.frames import FrameType
from tests.server_settle import settle

HOST = "127.0.0.1"
WAIT = 10.0  # upper bound for any single wait; the happy paths take milliseconds

MESSAGES = [b"ping", b"", b"\x00\xff" * 1000, os.urandom(3 * (1 << 20) + 5)]


def cfg(name: str, **kwargs: Any) -> SessionConfig:
    return SessionConfig(name=name, **kwargs)


def nodelay(session: AsyncSession) -> int:
    transport = session._transport
    assert transport is not None
    sock = transport.get_extra_info("socket")
    return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def alert_of(data: bytes) -> Alert:
    """The single ALERT frame a refused raw connection received."""
    (frame,) = parse_frames(data)
    assert frame.type == FrameType.ALERT
    return Alert.decode(frame.body)


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), WAIT)


# -- asyncio API ----------------------------------------------------------------------------


async def serve(
    handler: Callable[[AsyncSession], Any], config: SessionConfig, **kwargs: Any
) -> ppcp.aio.Server:
    """ppcp.aio.serve on an ephemeral loopback port, without LAN discovery
    (its UDP port is fixed by default and would collide between test runs)."""
    kwargs.setdefault("discovery", False)
    return await ppcp.aio.serve(HOST, 0, PSK_TEXT, handler, config=config, **kwargs)


class EchoServer:
    """ppcp.aio.serve with an echo handler that records the sessions it served."""

    def __init__(self) -> None:
        self.sessions: asyncio.Queue[AsyncSession] = asyncio.Queue()
        self.server: ppcp.aio.Server | None = None

    async def handler(self, session: AsyncSession) -> None:
        self.sessions.put_nowait(session)
        async for message in session:
            await session.send(message)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    async def next_session(self) -> AsyncSession:
        return await asyncio.wait_for(self.sessions.get(), WAIT)

    async def settle(self) -> None:
        assert self.server is not None
        await settle(self.server, WAIT)


@contextlib.asynccontextmanager
async def echo_server(
    config: SessionConfig | None = None, **kwargs: Any
) -> AsyncIterator[EchoServer]:
    echo = EchoServer()
    echo.server = await serve(echo.handler, config or cfg("echo-server"), **kwargs)
    try:
        yield echo
    finally:
        await echo.server.aclose()


async def check_echo(session: AsyncSession, messages: list[bytes] = MESSAGES) -> None:
    for message in messages:
        await session.send(message)
        assert await asyncio.wait_for(session.recv(), WAIT) == message


async def test_aio_echo_identity_and_nodelay() -> None:
    async with echo_server(cfg("echo-server")) as echo:
        client_cfg = cfg("alice-laptop")
        async with await ppcp.aio.connect(HOST, echo.port, PSK_TEXT, config=client_cfg) as client:
            await check_echo(client)
            served = await echo.next_session()
            assert served.client_id == "alice-laptop" == client.client_id
            assert client.server_name == "echo-server" == served.server_name
            assert client.session_id == served.session_id
            assert client.capabilities == served.capabilities
            assert "msg" in client.capabilities
            assert nodelay(client) == 1 and nodelay(served) == 1
        # The orderly close reached the server: its handler ended and the session is gone.
        await echo.settle()
        assert echo.server is not None and not echo.server.sessions


def test_set_nodelay_sets_the_option() -> None:
    with (
        socket.create_server((HOST, 0)) as listener,
        socket.create_connection(listener.getsockname()) as sock,
    ):
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        set_nodelay(sock)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        listener.accept()[0].close()
    set_nodelay(None)  # no socket (a pipe transport): nothing to do, no error


async def test_aio_wrong_psk_then_good_client(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ppcp.server")
    async with echo_server() as echo:
        with pytest.raises(AuthenticationError) as info:
            await ppcp.aio.connect(HOST, echo.port, OTHER_PSK_TEXT, config=cfg("mallory"))
        assert info.value.remote
        await echo.settle()
        assert any("handshake" in r.getMessage() for r in caplog.records)
        assert echo.sessions.empty()  # the handler never saw the impostor
        async with await ppcp.aio.connect(HOST, echo.port, PSK_TEXT, config=cfg("bob")) as client:
            await check_echo(client, [b"after the impostor"])
            assert (await echo.next_session()).client_id == "bob"


async def test_aio_handshake_timeout_server_accept() -> None:
    loop = asyncio.get_running_loop()
    with socket.create_server((HOST, 0)) as listener:
        listener.setblocking(False)
        reader, writer = await asyncio.open_connection(*listener.getsockname())
        conn, _ = await asyncio.wait_for(loop.sock_accept(listener), WAIT)
        start = loop.time()
        with pytest.raises(HandshakeTimeout) as info:
            await asyncio.wait_for(
                ppcp.aio.server_accept(conn, PSK_TEXT, config=cfg("srv", handshake_timeout=0.3)),
                WAIT,
            )
        elapsed = loop.time() - start
        assert 0.25 <= elapsed < 0.3 + WAIT / 2
        assert not info.value.remote
        # The silent peer was told why before being dropped.
        assert alert_of(await read_to_eof(reader)).code == CloseCode.HANDSHAKE_TIMEOUT
        writer.close()
        await writer.wait_closed()


async def test_aio_client_handshake_timeout() -> None:
    loop = asyncio.get_running_loop()
    with socket.create_server((HOST, 0)) as listener:
        listener.setblocking(False)
        accepted = asyncio.ensure_future(loop.sock_accept(listener))
        start = loop.time()
        with pytest.raises(HandshakeTimeout):
            await asyncio.wait_for(
                ppcp.aio.connect(
                    HOST,
                    listener.getsockname()[1],
                    PSK_TEXT,
                    config=cfg("c", handshake_timeout=0.3),
                ),
                WAIT,
            )
        assert loop.time() - start < WAIT / 2
        conn, _ = await asyncio.wait_for(accepted, WAIT)
        with conn:
            conn.setblocking(True)
            conn.settimeout(WAIT)
            received = b""
            for _ in range(100):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                received += chunk
        # The silent server got the CLIENT_HELLO, then an alert saying why.
        frames = parse_frames(received)
        assert [f.type for f in frames] == [FrameType.CLIENT_HELLO, FrameType.ALERT]
        assert Alert.decode(frames[1].body).code == CloseCode.HANDSHAKE_TIMEOUT


async def test_aio_serve_handshake_timeout() -> None:
    async with echo_server(cfg("srv", handshake_timeout=0.3)) as echo:
        reader, writer = await asyncio.open_connection(HOST, echo.port)
        assert alert_of(await read_to_eof(reader)).code == CloseCode.HANDSHAKE_TIMEOUT
        writer.close()
        await echo.settle()
        assert echo.server is not None and echo.server.handshaking == 0
        async with await ppcp.aio.connect(HOST, echo.port, PSK_TEXT, config=cfg("c")) as client:
            await check_echo(client, [b"still serving"])


async def test_aio_unauthenticated_cap() -> None:
    server_cfg = cfg("srv", handshake_timeout=WAIT)
    async with echo_server(server_cfg, max_unauthenticated=2) as echo:
        idle = [await asyncio.open_connection(HOST, echo.port) for _ in range(2)]
        reader, writer = await asyncio.open_connection(HOST, echo.port)
        assert alert_of(await read_to_eof(reader)).code == CloseCode.SERVER_BUSY
        writer.close()
        with pytest.raises(ServerBusy) as info:
            await ppcp.aio.connect(HOST, echo.port, PSK_TEXT, config=cfg("late"))
        assert info.value.remote
        assert echo.server is not None and echo.server.handshaking == 2
        # Once the idle connections go away, the server takes clients again.
        for _, w in idle:
            w.close()
        await echo.settle()
        assert echo.server.handshaking == 0
        async with await ppcp.aio.connect(HOST, echo.port, PSK_TEXT, config=cfg("c")) as client:
            await check_echo(client, [b"served"])


async def test_aio_server_close_ends_handshakes_in_progress() -> None:
    # Closing the server ends a half-done handshake at once with GOING_AWAY:
    # it must not wait out the handshake timeout, nor become a session later.
    server = await serve(None, cfg("srv", handshake_timeout=60))
    reader, writer = await asyncio.open_connection(HOST, server.port)
    client = Connection(
        Role.CLIENT, derive_psk_key(PSK_TEXT), ConnectionConfig(HandshakeConfig("c"))
    )
    client.initiate()
    writer.write(bytes(client.data_to_send()))  # the client's hello, then silence
    hello = await asyncio.wait_for(reader.readexactly(5), WAIT)  # the server's answer began
    await server.aclose()
    rest = await read_to_eof(reader)
    with pytest.raises(SessionClosed, match="server shutting down") as info:
        client.receive_data(hello + rest)
    assert info.value.remote
    assert server.handshaking == 0 and not server.sessions
    writer.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"\x01\x00\x00\x00\x00\x08PPCPjunk",
        b"\x05\x00\x00\x00\x00\x02\x00\x03",  # a forged ALERT aimed at the server
        b"\x10\x00\x00\x00\x00\x20" + b"\x00" * 32,  # a record before any handshake
    ],
)
async def test_aio_bad_client_does_not_take_server_down(garbage: bytes) -> None:
    async with echo_server() as echo:
        reader, writer = await asyncio.open_connection(HOST, echo.port)
        writer.write(garbage)
        await writer.drain()
        reply = await read_to_eof(reader)
        assert alert_of(reply).code != CloseCode.NORMAL
        writer.close()
        # A client that resets the connection mid-handshake is harmless too.
        rst = socket.create_connection((HOST, echo.port))
        rst.sendall(garbage[:3])
        rst.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        rst.close()
        await echo.settle()
        async with await ppcp.aio.connect(HOST, echo.port, PSK_TEXT, config=cfg("c")) as client:
            await check_echo(client, [b"fine"])
        assert echo.sessions.qsize() == 1


async def test_aio_abort_is_connection_lost_not_closed() -> None:
    received: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def handler(session: AsyncSession) -> None:
        try:
            while True:
                await session.recv()
        except BaseException as exc:
            received.set_result(exc)
            raise

    server = await serve(handler, cfg("srv"))
    try:
        client = await ppcp.aio.connect(HOST, server.port, PSK_TEXT, config=cfg("c"))
        await client.send(b"about to vanish")
        client.abort()
        error = await asyncio.wait_for(received, WAIT)
        assert isinstance(error, ConnectionLost)
        await client._wait_transport_closed()
    finally:
        await server.aclose()


async def test_aio_client_connect_over_own_socket() -> None:
    loop = asyncio.get_running_loop()
    with socket.create_server((HOST, 0)) as listener:
        listener.setblocking(False)
        client_sock = socket.socket()
        client_sock.setblocking(False)
        accepted = loop.sock_accept(listener)
        await loop.sock_connect(client_sock, listener.getsockname())
        server_sock, _ = await asyncio.wait_for(accepted, WAIT)
        server_task = asyncio.create_task(
            ppcp.aio.server_accept(server_sock, PSK_TEXT, config=cfg("srv"))
        )
        client = await ppcp.aio.client_connect(client_sock, PSK_TEXT, config=cfg("cli"))
        server = await asyncio.wait_for(server_task, WAIT)
        async with client, server:
            await client.send(b"over a socket I opened myself")
            assert await asyncio.wait_for(server.recv(), WAIT) == b"over a socket I opened myself"
            assert server.client_id == "cli"
            assert nodelay(client) == 1 and nodelay(server) == 1


# -- blocking API ---------------------------------------------------------------------------


def run_in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, queue.Queue[Any]]:
    """Run ``target`` in a thread; its result (or exception) lands in the queue."""
    results: queue.Queue[Any] = queue.Queue()

    def main() -> None:
        try:
            results.put(target())
        except BaseException as exc:
            results.put(exc)

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    return thread, results


def test_blocking_echo() -> None:
    with ppcp.create_tcp_server(HOST, 0) as listener:
        listener.settimeout(WAIT)
        port = listener.getsockname()[1]
        identity: queue.Queue[Any] = queue.Queue()

        def serve_one() -> str:
            conn, _ = listener.accept()
            with ppcp.server_accept(conn, PSK_TEXT, config=cfg("blocking-server")) as session:
                identity.put((session.client_id, nodelay(session.aio)))
                for message in session:
                    session.send(message)
            return "done"

        thread, result = run_in_thread(serve_one)
        with ppcp.connect(HOST, port, PSK_TEXT, config=cfg("carol")) as client:
            assert client.server_name == "blocking-server"
            for message in MESSAGES:
                client.send(message)
                assert client.recv(timeout=WAIT) == message
            assert identity.get(timeout=WAIT) == ("carol", 1)
            assert nodelay(client.aio) == 1
        thread.join(WAIT)
        assert not thread.is_alive()
        assert result.get_nowait() == "done"
        assert client.closed


def test_blocking_recv_timeout_keeps_session() -> None:
    with ppcp.create_tcp_server(HOST, 0) as listener:
        listener.settimeout(WAIT)
        go = threading.Event()

        def serve_one() -> bytes:
            conn, _ = listener.accept()
            with ppcp.server_accept(conn, PSK_TEXT, config=cfg("srv")) as session:
                go.wait(WAIT)
                session.send(b"late")
                return session.recv(timeout=WAIT)

        thread, result = run_in_thread(serve_one)
        sock = socket.create_connection(listener.getsockname(), timeout=WAIT)
        with ppcp.client_connect(sock, PSK_TEXT, config=cfg("cli")) as client:
            with pytest.raises(TimeoutError):
                client.recv(timeout=0.05)
            go.set()
            assert client.recv(timeout=WAIT) == b"late"
            client.send(b"ack")
            thread.join(WAIT)
        assert result.get_nowait() == b"ack"


def test_blocking_wrong_psk() -> None:
    with ppcp.create_tcp_server(HOST, 0) as listener:
        listener.settimeout(WAIT)

        def serve_one() -> object:
            conn, _ = listener.accept()
            return ppcp.server_accept(conn, PSK_TEXT, config=cfg("srv"))

        thread, result = run_in_thread(serve_one)
        sock = socket.create_connection(listener.getsockname(), timeout=WAIT)
        with pytest.raises(AuthenticationError) as info:
            ppcp.client_connect(sock, OTHER_PSK_TEXT, config=cfg("mallory"))
        assert info.value.remote
        thread.join(WAIT)
        server_error = result.get_nowait()
        assert isinstance(server_error, AuthenticationError) and not server_error.remote


def test_blocking_handshake_timeout() -> None:
    with ppcp.create_tcp_server(HOST, 0) as listener:
        listener.settimeout(WAIT)
        with socket.create_connection(listener.getsockname(), timeout=WAIT) as raw:
            conn, _ = listener.accept()
            with pytest.raises(HandshakeTimeout):
                ppcp.server_accept(conn, PSK_TEXT, config=cfg("srv", handshake_timeout=0.3))
            received = b""
            for _ in range(100):
                chunk = raw.recv(4096)
                if not chunk:
                    break
                received += chunk
            assert alert_of(received).code == CloseCode.HANDSHAKE_TIMEOUT


def test_blocking_garbage_from_server() -> None:
    with ppcp.create_tcp_server(HOST, 0) as listener:
        listener.settimeout(WAIT)

        def fake_server() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
                conn.recv(4096)

        thread, _ = run_in_thread(fake_server)
        with pytest.raises(ProtocolError):
            ppcp.connect(HOST, listener.getsockname()[1], PSK_TEXT, config=cfg("cli"))
        thread.join(WAIT)


# -- wiretap --------------------------------------------------------------------------------


class RecordingProxy:
    """A TCP relay that keeps a copy of every byte in each direction."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.c2s = bytearray()
        self.s2c = bytearray()
        self.server: asyncio.Server | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, HOST, 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _relay(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        s_reader, s_writer = await asyncio.open_connection(HOST, self.target_port)
        try:
            await asyncio.gather(
                self._pipe(c_reader, s_writer, self.c2s), self._pipe(s_reader, c_writer, self.s2c)
            )
        finally:
            c_writer.close()
            s_writer.close()
            if not self.done.done():
                self.done.set_result(None)

    @staticmethod
    async def _pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bytearray
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(1 << 16):
                record += data
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

    async def aclose(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def _encodings(secret: bytes) -> list[bytes]:
    """The secret as it would appear on the wire in clear, hex or base64 (any alignment)."""
    forms = [secret, secret.hex().encode(), secret.hex().upper().encode()]
    for shift in range(3):
        encoded = base64.b64encode(bytes(shift) + secret)
        # Drop the characters that also depend on the neighbouring bytes.
        forms.append(encoded[4 if shift else 0 : -4])
        forms.append(base64.urlsafe_b64encode(bytes(shift) + secret)[4 if shift else 0 : -4])
    return forms


async def test_wiretap_sees_no_plaintext() -> None:
    marker = b"MARKER-" + os.urandom(12).hex().encode() + b"-END"
    reply_marker = b"REPLY-" + os.urandom(12).hex().encode()
    to_server = b"user data: " + marker + b" trailing"

    async def handler(session: AsyncSession) -> None:
        assert await session.recv() == to_server
        await session.send(reply_marker)
        await session.send(await session.recv())

    server = await serve(handler, cfg("tapped-server"))
    proxy = RecordingProxy(server.port)
    try:
        proxy_port = await proxy.start()
        async with await ppcp.aio.connect(HOST, proxy_port, PSK_TEXT, config=cfg("c")) as client:
            await client.send(to_server)
            assert await asyncio.wait_for(client.recv(), WAIT) == reply_marker
            await client.send(marker * 1000)
            assert await asyncio.wait_for(client.recv(), WAIT) == marker * 1000
        await asyncio.wait_for(asyncio.shield(proxy.done), WAIT)
    finally:
        await proxy.aclose()
        await server.aclose()

    c2s, s2c = bytes(proxy.c2s), bytes(proxy.s2c)
    # The tap did see the session (the hellos travel in clear) ...
    assert c2s.startswith(b"\x01\x00") and b"PPCP" in c2s[:12]
    assert s2c.startswith(b"\x02\x00") and b"PPCP" in s2c[:12]
    assert len(c2s) > 1000 * len(marker) and len(s2c) > len(reply_marker)
    # ... but neither the messages nor the key in any common encoding.
    secrets = [marker, reply_marker, PSK_TEXT.encode(), PSK_TEXT[9:].encode()]
    secrets.append(bytes.fromhex(PSK_TEXT[9:]))
    for secret in secrets:
        for form in _encodings(secret):
            assert form not in c2s, (secret, form)
            assert form not in s2c, (secret, form)
