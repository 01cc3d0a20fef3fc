"""Fixtures for the channel tests (helpers live in channel_helpers.py).

Loopback servers listen on 127.0.0.1 port 0 with discovery off; every server
and session a test opens is closed at teardown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from channel_helpers import PSK_TEXT, TEST_SERVICES, Connect, StartServer, start_server

import ppcp
import ppcp.aio
from ppcp.control import router
from ppcp.control.router import ServerPolicy
from ppcp.transport.blocking import run


@pytest.fixture(autouse=True)
def test_services(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the test-only services (sink, hold) routable."""
    for kind, target in TEST_SERVICES.items():
        monkeypatch.setitem(router.SERVICES, kind, target)


@pytest.fixture
async def serve() -> AsyncIterator[StartServer]:
    """``await serve(policy=..., config=...)`` starts a loopback server."""
    servers: list[ppcp.aio.Server] = []

    async def start(
        policy: ServerPolicy | None = None, config: ppcp.SessionConfig | None = None
    ) -> ppcp.aio.Server:
        server = await start_server(policy, config)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.aclose()


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """``await connect(server, config=...)`` opens a client session."""
    sessions: list[ppcp.aio.AsyncSession] = []

    async def open_session(
        server: ppcp.aio.Server, config: ppcp.SessionConfig | None = None, port: int | None = None
    ) -> ppcp.aio.AsyncSession:
        session = await ppcp.aio.connect(
            "127.0.0.1",
            port or server.port,
            PSK_TEXT,
            config=config or ppcp.SessionConfig(name="client"),
        )
        sessions.append(session)
        return session

    yield open_session
    for session in sessions:
        await session.close()


@pytest.fixture
async def session(serve: StartServer, connect: Connect) -> ppcp.aio.AsyncSession:
    """A client session to a default-policy loopback server."""
    return await connect(await serve())


@pytest.fixture
def blocking_server() -> Iterator[Callable[..., ppcp.aio.Server]]:
    """Servers on the blocking API's loop thread (for the blocking-API tests)."""
    servers: list[ppcp.aio.Server] = []

    def start(
        policy: ServerPolicy | None = None, config: ppcp.SessionConfig | None = None
    ) -> ppcp.aio.Server:
        server = run(start_server(policy, config))
        servers.append(server)
        return server

    yield start
    for server in servers:
        run(server.aclose())


@pytest.fixture
def blocking_session(
    blocking_server: Callable[..., ppcp.aio.Server],
) -> Iterator[ppcp.Session]:
    server = blocking_server()
    session = ppcp.connect(
        "127.0.0.1", server.port, PSK_TEXT, config=ppcp.SessionConfig(name="client")
    )
    yield session
    session.close()
