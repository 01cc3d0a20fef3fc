"""Events the sans-I/O connection hands to its driver."""

from __future__ import annotations

from msgspec import Struct

from ppcp.core.errors import PPCPError


class Event(Struct, frozen=True):
    pass


class HandshakeComplete(Event, frozen=True):
    """Both sides are authenticated; records may flow."""

    version: int
    capabilities: tuple[str, ...]
    peer_name: str
    session_id: bytes


class MessageReceived(Event, frozen=True):
    data: bytes


class ConnectionClosed(Event, frozen=True):
    """The session ended: the peer closed it (orderly or with an error code),
    or this side detected an error after delivering earlier events
    (``error.remote`` tells which)."""

    code: int
    reason: str
    error: PPCPError
