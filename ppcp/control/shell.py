"""Shell service: server handler and client API (being written)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ppcp.control.aio_channel import AsyncChannel
    from ppcp.control.router import ServerPolicy


class ShellMixin:
    """asyncio client methods mixed into :class:`ppcp.aio.AsyncSession`."""


class SyncShellMixin:
    """Blocking client methods mixed into :class:`ppcp.Session`."""


async def serve_shell(channel: AsyncChannel, policy: ServerPolicy) -> None:
    channel.reject(0x0102, "shell service not available yet")
