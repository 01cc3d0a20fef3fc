"""The session's message methods, apart from their implementation (ppcp/control/messages.py).

A session's class needs these methods, not the message service behind them:
kept here, a client that never opens a message channel does not import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from ppcp.control.messages import MessageChannel, SyncMessageChannel
    from ppcp.transport.aio_driver import AsyncSession
    from ppcp.transport.blocking import Session

DEFAULT_TOPIC = "default"


class MessagesMixin:
    """asyncio client methods mixed into :class:`ppcp.aio.AsyncSession`."""

    async def open_messages(self, topic: str = DEFAULT_TOPIC) -> MessageChannel:
        """Open a message channel on ``topic``; see :class:`MessageChannel`."""
        from ppcp.control.messages import open_messages

        return await open_messages(cast("AsyncSession", self), topic)


class SyncMessagesMixin:
    """Blocking client methods mixed into :class:`ppcp.Session`."""

    def open_messages(self, topic: str = DEFAULT_TOPIC) -> SyncMessageChannel:
        """Open a message channel on ``topic``; see :class:`MessageChannel`."""
        from ppcp.control.messages import SyncMessageChannel
        from ppcp.transport.blocking import run

        return SyncMessageChannel(run(cast("Session", self).aio.open_messages(topic)))


__all__ = ["DEFAULT_TOPIC", "MessagesMixin", "SyncMessagesMixin"]
