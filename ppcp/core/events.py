"""Events the sans-I/O connection hands to its driver."""

from __future__ import annotations

from dataclasses import dataclass

from ppcp.core.errors import PPCPError


@dataclass(frozen=True, slots=True)
class Event:
    pass


@dataclass(frozen=True, slots=True)
class HandshakeComplete(Event):
    """Both sides are authenticated; records may flow."""

    version: int
    capabilities: tuple[str, ...]
    peer_name: str
    session_id: bytes


@dataclass(frozen=True, slots=True)
class MessageReceived(Event):
    data: bytes


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The session ended: the peer closed it (orderly or with an error code),
    or this side detected an error after delivering earlier events
    (``error.remote`` tells which)."""

    code: int
    reason: str
    error: PPCPError
