"""The asyncio server: admission limits, the handshakes, the services.

Apart from :mod:`ppcp.aio` so that a client (``ppcp exec``, scripts that
connect) never imports what only a server needs: the service router, the
limits, the rate limiters.  ``ppcp.aio.Server`` and ``ppcp.aio.serve`` are
these, imported on first use.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, cast

import msgspec

from ppcp.control.router import ServerPolicy, route
from ppcp.core.config import DEFAULT_PORT, SessionConfig, default_session_config
from ppcp.core.errors import (
    AuthenticationError,
    CloseCode,
    PPCPError,
    RateLimited,
    ServerBusy,
)
from ppcp.core.limits import ServerLimits
from ppcp.core.states import Role
from ppcp.crypto.psk import derive_psk_key
from ppcp.transport.aio_driver import AsyncSession, session_protocol
from ppcp.transport.connection import alert_frame
from ppcp.utils.buffers import DISCARD
from ppcp.utils.ratelimit import AuthFailureLimiter, SourceCounter, source_key

if TYPE_CHECKING:
    from ppcp.discovery.responder import DiscoveryService, StrPath

log = logging.getLogger("ppcp.server")

Handler = Callable[[AsyncSession], Awaitable[None]]


class ListenError(OSError):
    """:func:`serve` could not open one of its sockets.

    The OSError it was (same ``errno``; ``strerror`` the system's text alone),
    plus which socket: ``what`` is ``"TCP"`` (the server's port) or ``"UDP"``
    (discovery), ``host`` and ``port`` where it was to listen.  Whoever reports
    it can then say which of the two ports is taken or refused, and how to fix it.
    """

    def __init__(self, exc: OSError, what: str, host: str | None, port: int) -> None:
        text = exc.strerror if isinstance(exc, socket.gaierror) or not exc.errno else None
        super().__init__(exc.errno, text or os.strerror(exc.errno or 0))
        self.what = what
        self.host = host
        self.port = port

    def __str__(self) -> str:
        where = f"[{self.host}]" if self.host and ":" in self.host else self.host or "*"
        return f"cannot listen on {self.what} {where}:{self.port}: {self.strerror}"


class Server:
    """A listening PPCP server.

    At most ``max_unauthenticated`` handshakes run at once; a connection past
    that is told SERVER_BUSY and dropped, so a flood of idle connections cannot
    exhaust memory or keep legitimate clients out for longer than the
    handshake timeout.  ``limits`` (:class:`~ppcp.core.limits.ServerLimits`)
    adds a per-source cap on handshakes (one host cannot take every slot) and
    per-source rate limiting of failed authentications (RATE_LIMITED).
    """

    def __init__(
        self,
        psk: bytes | str,
        handler: Handler | None,
        config: SessionConfig,
        max_unauthenticated: int,
        policy: ServerPolicy | None = None,
        limits: ServerLimits | None = None,
    ) -> None:
        self._psk_key = derive_psk_key(psk)
        self._handler = handler
        if handler is None and "msg" in config.capabilities:
            # Nothing would read a client's session MESSAGEs: once their backlog
            # filled, the session would stop reading and its channels stall.  Not
            # offered, a client's send fails at once and says why.
            caps = tuple(c for c in config.capabilities if c != "msg")
            config = msgspec.structs.replace(config, capabilities=caps)
        self.config = config
        self.policy = policy or ServerPolicy()
        self.max_unauthenticated = max_unauthenticated
        # Admission limits (hardening): per-source handshake slots and the
        # failed-authentication limiter, both keyed by source_key(peername).
        self.limits = limits or ServerLimits(max_unauthenticated=max_unauthenticated)
        self.auth_limiter = AuthFailureLimiter(
            self.limits.auth_failures,
            self.limits.auth_failure_window,
            self.limits.auth_backoff,
            self.limits.auth_backoff_max,
            self.limits.max_tracked_sources,
        )
        self.per_source = SourceCounter(self.limits.max_unauthenticated_per_source)
        self.refused = 0
        self._refusals_logged_at = -1.0
        self.sessions: set[AsyncSession] = set()  # authenticated
        self._handshakes: set[AsyncSession] = set()  # admitted, not authenticated yet
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.base_events.Server | None = None
        # Discovery (ppcp.discovery): the PING responder and mDNS records,
        # started by serve() and stopped by aclose().
        self.discovery: DiscoveryService | None = None

    @property
    def handshaking(self) -> int:
        """Connections admitted whose handshake has not ended yet."""
        return len(self._handshakes)

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

    def _new_protocol(self) -> asyncio.BaseProtocol:
        # The peer's address is only known in connection_made: admission
        # (rate limit, caps) is decided there, before a byte is read.
        return _AdmissionProtocol(self)

    def _admit(self, transport: asyncio.Transport) -> asyncio.BufferedProtocol | None:
        """The session protocol for a new connection, or None after refusing it."""
        peer = transport.get_extra_info("peername")
        source = source_key(peer)
        now = asyncio.get_running_loop().time()
        wait = self.auth_limiter.blocked_for(source, now)
        error: PPCPError | None = None
        if wait > 0:
            error = RateLimited(
                f"too many failed authentications from this address; retry in {wait:.0f} s"
            )
        elif self.handshaking >= self.max_unauthenticated:
            error = ServerBusy("too many handshakes in progress; try again shortly")
        elif not self.per_source.acquire(source):
            error = ServerBusy("too many handshakes in progress from this address")
        if error is not None:
            self._refuse(transport, peer, error, now)
            return None
        session = AsyncSession(Role.SERVER, self._psk_key, self.config)
        # Set before any byte arrives: a client may open channels in the same
        # segment as its proof.  The mux only delivers them once authenticated.
        session.channel_handler = functools.partial(route, policy=self.policy)
        self._handshakes.add(session)
        session.watch_handshake(
            self.config.handshake_timeout,
            functools.partial(self._handshake_done, session, source),
        )
        return session_protocol(session)

    def _refuse(
        self, transport: asyncio.Transport, peer: object, error: PPCPError, now: float
    ) -> None:
        """Send the refusal alert and drop the connection; log at most once a second."""
        self.refused += 1
        if now - self._refusals_logged_at >= 1.0:
            self._refusals_logged_at = now
            log.warning(
                "refusing %s: %s (%d connections refused so far)", peer, error, self.refused
            )
        transport.write(alert_frame(error.code, error.message))
        transport.close()

    def _handshake_done(self, session: AsyncSession, source: str, error: PPCPError | None) -> None:
        self._handshakes.discard(session)
        self.per_source.release(source)
        if error is not None:
            log.warning("handshake with %s failed: %s", _peer(session), error)
            if isinstance(error, AuthenticationError) and not error.remote:
                now = asyncio.get_running_loop().time()
                delay = self.auth_limiter.failure(source, now)
                if delay:
                    log.warning(
                        "blocking %s for %.0f s after repeated failed authentications",
                        source,
                        delay,
                    )
            return
        self.auth_limiter.success(source)
        log.info("session with %s (%s) established", session.peer_name, _peer(session))
        self.sessions.add(session)
        if self._handler is None:
            # Only the services: the session lives until either side ends it.
            session.on_closed(functools.partial(self.sessions.discard, session))
            return
        task = asyncio.get_running_loop().create_task(self._run_handler(self._handler, session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_handler(self, handler: Handler, session: AsyncSession) -> None:
        try:
            await handler(session)
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
        if self.discovery is not None:  # discovery: stop answering PINGs first
            await self.discovery.aclose()
            self.discovery = None
        self.close()
        await asyncio.gather(
            *(s.close(CloseCode.GOING_AWAY, reason) for s in [*self._handshakes, *self.sessions]),
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


class _AdmissionProtocol(asyncio.BufferedProtocol):
    """Asks the server whether to take a new connection; then drives its session.

    A refused connection gets one ALERT (SERVER_BUSY or RATE_LIMITED) and is
    closed; nothing it sends is read.
    """

    def __init__(self, server: Server) -> None:
        self._server = server
        self._inner: asyncio.BufferedProtocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports are not subclasses.
        self._inner = self._server._admit(cast(asyncio.Transport, transport))
        if self._inner is not None:
            self._inner.connection_made(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._inner is None:
            return DISCARD  # a refused connection is closing; what it sends is dropped
        return memoryview(self._inner.get_buffer(sizehint))

    def buffer_updated(self, nbytes: int) -> None:
        if self._inner is not None:
            self._inner.buffer_updated(nbytes)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


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
    max_unauthenticated: int | None = None,
    limits: ServerLimits | None = None,
    discovery: bool = True,
    discovery_port: int = DEFAULT_PORT,
    server_id_path: StrPath | None = None,
    mdns: bool | None = None,
) -> Server:
    """Start a PPCP server.

    Each authenticated client gets the services ``policy`` allows (exec,
    shell, files, messages), and ``await handler(session)`` runs for it if
    given; the session is closed when the handler returns.

    ``limits`` bounds what unauthenticated peers can make the server spend
    (:class:`~ppcp.core.limits.ServerLimits`; ``max_unauthenticated``, if
    given, overrides its field of that name).

    With ``discovery`` the server also answers PINGs on UDP
    ``discovery_port`` (0: ephemeral, as tests should use) and, if ``mdns``
    (default: unless bound to loopback or discovery_port is 0), advertises
    itself over mDNS; see :func:`ppcp.discovery.start_server_discovery`.

    Raises :class:`ListenError` (an OSError) naming the TCP or UDP port that
    could not be opened; nothing is left listening then.
    """
    limits = limits or ServerLimits()
    if max_unauthenticated is not None:
        limits = msgspec.structs.replace(limits, max_unauthenticated=max_unauthenticated)
    server = Server(
        psk, handler, config or default_session_config(), limits.max_unauthenticated, policy, limits
    )
    try:
        await server.start(host, port, sock)
    except OSError as exc:
        raise ListenError(exc, "TCP", host, port) from exc
    # --- discovery (owned by ppcp.discovery) ---
    if discovery:
        from ppcp.discovery.responder import start_server_discovery

        try:
            server.discovery = await start_server_discovery(
                server._psk_key,
                server.config,
                host=host,
                tcp_port=server.port,
                fixed_port=sock is not None or port != 0,
                discovery_port=discovery_port,
                server_id_path=server_id_path,
                mdns=mdns,
            )
        except OSError as exc:
            await server.aclose()
            # Responder binds the wildcard address, whatever host the TCP port is on.
            raise ListenError(exc, "UDP", "0.0.0.0", discovery_port) from exc
        except BaseException:
            await server.aclose()
            raise
    # --- end discovery ---
    return server


__all__ = ["Handler", "ListenError", "Server", "serve"]
