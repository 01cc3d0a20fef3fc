"""The asyncio API: the same protocol core as the blocking API, driven by asyncio.

::

    server = await ppcp.aio.serve("0.0.0.0", 9000, psk, handler)
    async with await ppcp.aio.connect("127.0.0.1", 9000, psk) as session:
        await session.send(b"hello")
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import Awaitable, Callable

from ppcp.control.router import ServerPolicy, route
from ppcp.core.config import DEFAULT_MAX_UNAUTHENTICATED, DEFAULT_PORT, SessionConfig
from ppcp.core.errors import CloseCode, PPCPError, ServerBusy, map_exception
from ppcp.core.states import Role
from ppcp.crypto.psk import derive_psk_key
from ppcp.handshake.messages import Alert
from ppcp.transport.aio_driver import AsyncSession, open_session, session_protocol
from ppcp.transport.frames import FrameType, encode_frame

log = logging.getLogger("ppcp.server")

Session = AsyncSession
Handler = Callable[[AsyncSession], Awaitable[None]]


async def connect(
    host: str,
    port: int = DEFAULT_PORT,
    psk: bytes | str = b"",
    *,
    config: SessionConfig | None = None,
) -> AsyncSession:
    """Open a TCP connection and run the client handshake."""
    cfg = config or SessionConfig()
    loop = asyncio.get_running_loop()
    try:
        sock = await asyncio.wait_for(_open_socket(host, port), cfg.handshake_timeout)
    except (OSError, TimeoutError) as exc:
        raise map_exception(exc) from exc
    return await open_session(
        Role.CLIENT, psk, cfg, lambda factory: loop.create_connection(factory, sock=sock)
    )


async def _open_socket(host: str, port: int) -> socket.socket:
    # Opening the socket ourselves lets TCP_NODELAY be set before SYN.
    _, writer = await asyncio.open_connection(host, port)
    sock: socket.socket = writer.get_extra_info("socket").dup()
    writer.transport.abort()
    sock.setblocking(False)
    return sock


async def client_connect(
    sock: socket.socket, psk: bytes | str, *, config: SessionConfig | None = None
) -> AsyncSession:
    """Client handshake over an already connected socket (asyncio twin of the seed call)."""
    cfg = config or SessionConfig()
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    return await open_session(
        Role.CLIENT, psk, cfg, lambda factory: loop.create_connection(factory, sock=sock)
    )


async def server_accept(
    sock: socket.socket, psk: bytes | str, *, config: SessionConfig | None = None
) -> AsyncSession:
    """Server handshake over an accepted socket (asyncio twin of the seed call)."""
    cfg = config or SessionConfig()
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    return await open_session(
        Role.SERVER, psk, cfg, lambda factory: loop.connect_accepted_socket(factory, sock)
    )


class Server:
    """A listening PPCP server: one asyncio task per connection.

    At most ``max_unauthenticated`` handshakes run at once; a connection past
    that is told SERVER_BUSY and dropped, so a flood of idle connections cannot
    exhaust memory or keep legitimate clients out for longer than the
    handshake timeout.
    """

    def __init__(
        self,
        psk: bytes | str,
        handler: Handler | None,
        config: SessionConfig,
        max_unauthenticated: int,
        policy: ServerPolicy | None = None,
    ) -> None:
        self._psk_key = derive_psk_key(psk)
        self._handler = handler or _serve_channels_only
        self.config = config
        self.policy = policy or ServerPolicy()
        self.max_unauthenticated = max_unauthenticated
        self.handshaking = 0
        self.sessions: set[AsyncSession] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.base_events.Server | None = None

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._server.sockets) if self._server else ()

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    async def start(self, host: str | None, port: int, sock: socket.socket | None) -> None:
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(self._new_protocol, sock=sock)
        else:
            self._server = await loop.create_server(
                self._new_protocol, host, port, reuse_address=True
            )

    def _new_protocol(self) -> asyncio.Protocol:
        if self.handshaking >= self.max_unauthenticated:
            return _RefuseProtocol(self.handshaking)
        session = AsyncSession(Role.SERVER, self._psk_key, self.config)
        # Set before any byte arrives: a client may open channels in the same
        # segment as its proof.  The mux only delivers them once authenticated.
        session.channel_handler = functools.partial(route, policy=self.policy)
        self.handshaking += 1
        task = asyncio.get_running_loop().create_task(self._serve_one(session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return session_protocol(session)

    async def _serve_one(self, session: AsyncSession) -> None:
        try:
            await session.wait_established(self.config.handshake_timeout)
        except PPCPError as exc:
            log.warning("handshake with %s failed: %s", _peer(session), exc)
            return
        finally:
            self.handshaking -= 1
        log.info("session with %s (%s) established", session.peer_name, _peer(session))
        self.sessions.add(session)
        try:
            await self._handler(session)
        except PPCPError as exc:
            log.info("session with %s ended: %s", session.peer_name, exc)
        except Exception:
            log.exception("handler failed for %s", session.peer_name)
            await session.close(CloseCode.INTERNAL_ERROR, "internal server error")
        finally:
            self.sessions.discard(session)
            await session.close()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()

    async def aclose(self, reason: str = "server shutting down") -> None:
        """Stop listening and close every session with GOING_AWAY."""
        self.close()
        await asyncio.gather(
            *(s.close(CloseCode.GOING_AWAY, reason) for s in list(self.sessions)),
            return_exceptions=True,
        )
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.wait_closed()

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _RefuseProtocol(asyncio.Protocol):
    """Tells a connection over the handshake cap that the server is busy, then drops it."""

    def __init__(self, in_progress: int) -> None:
        self._in_progress = in_progress

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        log.warning(
            "refusing %s: %d handshakes already in progress",
            transport.get_extra_info("peername"),
            self._in_progress,
        )
        error = ServerBusy("too many handshakes in progress; try again shortly")
        transport.write(encode_frame(FrameType.ALERT, Alert(error.code, error.message).encode()))
        transport.close()


async def _serve_channels_only(session: AsyncSession) -> None:
    await session.wait_closed()


def _peer(session: AsyncSession) -> str:
    addr = session.peer_address
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)


async def serve(
    host: str | None,
    port: int,
    psk: bytes | str,
    handler: Handler | None = None,
    *,
    config: SessionConfig | None = None,
    policy: ServerPolicy | None = None,
    sock: socket.socket | None = None,
    max_unauthenticated: int = DEFAULT_MAX_UNAUTHENTICATED,
) -> Server:
    """Start a PPCP server.

    Each authenticated client gets the services ``policy`` allows (exec,
    shell, files, messages), and ``await handler(session)`` runs for it if
    given; the session is closed when the handler returns.
    """
    server = Server(psk, handler, config or SessionConfig(), max_unauthenticated, policy)
    await server.start(host, port, sock)
    return server


__all__ = [
    "AsyncSession",
    "Server",
    "ServerPolicy",
    "Session",
    "client_connect",
    "connect",
    "serve",
    "server_accept",
]
