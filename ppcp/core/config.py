"""User-facing session settings, shared by the blocking and asyncio APIs."""

from __future__ import annotations

import functools
import os
import socket

from msgspec import Struct, field

from ppcp.control.channels import MuxConfig
from ppcp.control.heartbeat import DEFAULT_INTERVAL, DEFAULT_MAX_MISSED, DEFAULT_SERVER_MAX_MISSED
from ppcp.core.states import Role
from ppcp.handshake.machine import PROTOCOL_VERSIONS, HandshakeConfig
from ppcp.key_exchange.ecdh import RandomSource
from ppcp.transport.connection import (
    DEFAULT_MAX_MESSAGE,
    DEFAULT_REKEY_BYTES,
    DEFAULT_REKEY_RECORDS,
    ConnectionConfig,
)

DEFAULT_PORT = 9000
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_MAX_UNAUTHENTICATED = 64
# Capabilities this implementation understands (RFC "Capability registry").
SUPPORTED_CAPABILITIES: tuple[str, ...] = (
    "msg",
    "channels",
    "heartbeat",
    "exec",
    "shell",
    "files",
    "binary-data",
    "zlib",
)


def default_name() -> str:
    name = socket.gethostname().strip() or "ppcp"
    return name.encode("utf-8")[:64].decode("utf-8", "ignore")


# dict=True: the cached_property below keeps its value in the instance __dict__.
class SessionConfig(Struct, frozen=True, dict=True):
    """Settings for one end of a session.  Every limit has a safe default."""

    name: str = field(default_factory=default_name)
    capabilities: tuple[str, ...] = SUPPORTED_CAPABILITIES
    versions: tuple[int, ...] = PROTOCOL_VERSIONS
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    max_message_size: int = DEFAULT_MAX_MESSAGE
    rekey_after_records: int = DEFAULT_REKEY_RECORDS
    rekey_after_bytes: int = DEFAULT_REKEY_BYTES
    # Bytes of received-but-unread messages before we stop reading the socket.
    receive_buffer: int = 4 << 20
    # Bytes of answers (heartbeat replies, channel rejects...) we may queue for
    # a peer while it is not reading; past that the session fails with
    # FLOW_CONTROL_ERROR, so a peer that never reads cannot grow our memory.
    max_reply_backlog: int = 1 << 20
    # Seconds between heartbeats (0 disables them); the peer is declared dead
    # after heartbeat_max_missed unanswered ones (None: 3 for a client, 24 for
    # a server, see control/heartbeat.py).
    heartbeat_interval: float = DEFAULT_INTERVAL
    heartbeat_max_missed: int | None = None
    mux: MuxConfig = field(default_factory=MuxConfig)
    rng: RandomSource = os.urandom

    @functools.cached_property
    def _connection_config(self) -> ConnectionConfig:
        # Built (and validated: that encodes a probe hello) once per config,
        # not once per connection: a server shares its config with every client.
        return ConnectionConfig(
            HandshakeConfig(self.name, self.versions, self.capabilities),
            max_message_size=self.max_message_size,
            rekey_after_records=self.rekey_after_records,
            rekey_after_bytes=self.rekey_after_bytes,
        )

    def connection_config(self) -> ConnectionConfig:
        return self._connection_config

    def heartbeat_max_missed_for(self, role: Role) -> int:
        if self.heartbeat_max_missed is not None:
            return self.heartbeat_max_missed
        return DEFAULT_SERVER_MAX_MISSED if role is Role.SERVER else DEFAULT_MAX_MISSED


@functools.cache
def default_session_config() -> SessionConfig:
    """The settings of a call given none.

    One instance per process (it is frozen): building one looks up the host
    name and validates the hello it would send, a few microseconds that a
    script opening many sessions would otherwise pay for each.
    """
    return SessionConfig()
