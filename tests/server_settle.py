"""Waiting until a test server has finished with the connections it took so far."""

from __future__ import annotations

import asyncio
from typing import Any

import ppcp.aio


async def settle(server: ppcp.aio.Server, timeout: float) -> None:
    """Wait (bounded) until every handshake and handler the server started so far has ended."""
    loop = asyncio.get_running_loop()
    waits: set[asyncio.Future[Any]] = set(server._tasks)
    for session in set(server._handshakes):
        # Registered after the server's own callback, so it runs after it.
        ended: asyncio.Future[None] = loop.create_future()
        session.watch_handshake(None, lambda _, ended=ended: ended.set_result(None))
        waits.add(ended)
    if waits:
        _, pending = await asyncio.wait(waits, timeout=timeout)
        assert not pending, f"{len(pending)} handshakes or handlers still running"
