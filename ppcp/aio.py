"""The asyncio API: the same protocol core as the blocking API, driven by asyncio.

::

    server = await ppcp.aio.serve("0.0.0.0", 9000, psk, handler)
    async with await ppcp.aio.connect("127.0.0.1", 9000, psk) as session:
        await session.send(b"hello")
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from ppcp.core.config import DEFAULT_PORT, SessionConfig, default_session_config
from ppcp.core.errors import ConnectionLost
from ppcp.core.states import Role
from ppcp.transport.aio_driver import AsyncSession, open_session
from ppcp.utils.lazy import lazy_exports

if TYPE_CHECKING:
    # Imported on first use, not at import: a client never pays for the
    # server (its router, limits and rate limiters) nor, when it connects by
    # address (`ppcp exec --host`, scripts), for discovery.
    from ppcp.control.router import ServerPolicy
    from ppcp.core.limits import ServerLimits
    from ppcp.discovery import aio_discover as discover
    from ppcp.discovery import aio_find_server as find_server
    from ppcp.transport.aio_server import Handler, ListenError, Server, serve

Session = AsyncSession


async def connect(
    host: str,
    port: int = DEFAULT_PORT,
    psk: bytes | str = b"",
    *,
    config: SessionConfig | None = None,
) -> AsyncSession:
    """Open a TCP connection and run the client handshake.

    The TCP connect and the handshake each get ``config.handshake_timeout``.
    """
    cfg = config or default_session_config()
    loop = asyncio.get_running_loop()

    async def start(factory: Callable[[], asyncio.BaseProtocol]) -> object:
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 that runs the
            # connect in a task of its own, a measurable share of a connection.
            async with asyncio.timeout(cfg.handshake_timeout):
                return await loop.create_connection(factory, host, port)
        except TimeoutError:
            raise ConnectionLost(
                f"could not connect to {host}:{port} within {cfg.handshake_timeout:g} s"
            ) from None

    return await open_session(Role.CLIENT, psk, cfg, start)


async def client_connect(
    sock: socket.socket, psk: bytes | str, *, config: SessionConfig | None = None
) -> AsyncSession:
    """Client handshake over an already connected socket (asyncio twin of the seed call)."""
    cfg = config or default_session_config()
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    return await open_session(
        Role.CLIENT, psk, cfg, lambda factory: loop.create_connection(factory, sock=sock)
    )


async def server_accept(
    sock: socket.socket, psk: bytes | str, *, config: SessionConfig | None = None
) -> AsyncSession:
    """Server handshake over an accepted socket (asyncio twin of the seed call)."""
    cfg = config or default_session_config()
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    return await open_session(
        Role.SERVER, psk, cfg, lambda factory: loop.connect_accepted_socket(factory, sock)
    )


__all__ = [
    "AsyncSession",
    "Handler",
    "ListenError",
    "Server",
    "ServerLimits",
    "ServerPolicy",
    "Session",
    "client_connect",
    "connect",
    "discover",
    "find_server",
    "serve",
    "server_accept",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Handler": "ppcp.transport.aio_server",
        "ListenError": "ppcp.transport.aio_server",
        "Server": "ppcp.transport.aio_server",
        "serve": "ppcp.transport.aio_server",
        "ServerPolicy": "ppcp.control.router",
        "ServerLimits": "ppcp.core.limits",
        # discovery (owned by ppcp.discovery): asyncio twins of ppcp.find_server/discover
        "discover": "ppcp.discovery:aio_discover",
        "find_server": "ppcp.discovery:aio_find_server",
    },
)
