"""Helpers for the core tests: in-memory connection pairs and a byte pump.

Nothing here touches a socket.  A :class:`Pair` holds a client and a server
:class:`~ppcp.transport.connection.Connection` and moves bytes between them,
either in whole writes or one byte at a time, optionally through a
``tamper`` hook standing in for a man in the middle.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ppcp.core.errors import PPCPError
from ppcp.core.events import Event, HandshakeComplete
from ppcp.core.states import Role
from ppcp.crypto.psk import derive_psk_key
from ppcp.handshake.machine import HandshakeConfig
from ppcp.key_exchange.ecdh import RandomSource
from ppcp.transport.connection import Connection, ConnectionConfig
from ppcp.transport.frames import Frame, FrameBuffer
from ppcp.utils.vectors import StreamRNG

# Deterministic random source: the same counter-mode stream as the RFC vectors.
fixed_rng = StreamRNG

PSK_TEXT = "ppcp-psk-" + "5a" * 32
OTHER_PSK_TEXT = "ppcp-psk-" + "a5" * 32
PSK = derive_psk_key(PSK_TEXT)
OTHER_PSK = derive_psk_key(OTHER_PSK_TEXT)

# How a byte stream is cut before it is fed to receive_data().
WHOLE: int | None = None
BYTEWISE = 1
# The pump gives up after this many rounds: every loop in the tests is bounded.
MAX_ROUNDS = 64

Tamper = Callable[[Role, bytes], bytes]


def conn_config(name: str = "node", **kwargs: object) -> ConnectionConfig:
    """A ConnectionConfig; ``versions``/``capabilities`` go to the handshake.

    Capabilities default to ``("msg",)``: MESSAGE records need it negotiated.
    """
    kwargs.setdefault("capabilities", ("msg",))
    hs_kwargs = {k: kwargs.pop(k) for k in ("versions", "capabilities") if k in kwargs}
    return ConnectionConfig(HandshakeConfig(name, **hs_kwargs), **kwargs)  # type: ignore[arg-type]


def chunks(data: bytes, size: int | None) -> Iterator[bytes]:
    if size is None:
        yield data
        return
    for i in range(0, len(data), size):
        yield data[i : i + size]


def feed(conn: Connection, data: bytes, size: int | None = WHOLE) -> list[Event]:
    """Feed ``data`` to ``conn`` in pieces of ``size`` bytes; return all events."""
    events: list[Event] = []
    for piece in chunks(data, size):
        events.extend(conn.receive_data(piece))
    return events


def parse_frames(data: bytes) -> list[Frame]:
    """Split a byte stream into frames (the stream must end on a frame boundary)."""
    buf = FrameBuffer()
    buf.feed(data)
    frames = []
    for _ in range(len(data) + 1):
        frame = buf.next_frame()
        if frame is None:
            break
        frames.append(frame)
    assert buf.pending == 0, "stream does not end on a frame boundary"
    return frames


@dataclass
class Side:
    conn: Connection
    events: list[Event] = field(default_factory=list)
    error: PPCPError | None = None
    # Every byte this side wrote, in order (what a wiretap would see).
    sent: bytearray = field(default_factory=bytearray)


class Pair:
    """A client and a server connected by an in-memory, in-order byte pipe."""

    def __init__(
        self,
        client_config: ConnectionConfig | None = None,
        server_config: ConnectionConfig | None = None,
        *,
        client_psk: bytes = PSK,
        server_psk: bytes = PSK,
        client_rng: RandomSource = os.urandom,
        server_rng: RandomSource = os.urandom,
        size: int | None = WHOLE,
        tamper: Tamper | None = None,
    ) -> None:
        self.client = Side(
            Connection(Role.CLIENT, client_psk, client_config or conn_config("client"), client_rng)
        )
        self.server = Side(
            Connection(Role.SERVER, server_psk, server_config or conn_config("server"), server_rng)
        )
        self.size = size
        self.tamper = tamper

    def _move(self, src: Side, dst: Side) -> bool:
        data = src.conn.data_to_send()
        if not data:
            return False
        src.sent += data
        if self.tamper is not None:
            data = self.tamper(src.conn.role, data)
        if dst.error is None:
            try:
                dst.events.extend(feed(dst.conn, data, self.size))
            except PPCPError as exc:
                dst.error = exc
        return True

    def pump(self) -> None:
        """Move bytes both ways until neither side has anything to say."""
        for _ in range(MAX_ROUNDS):
            moved = self._move(self.client, self.server)
            moved = self._move(self.server, self.client) or moved
            if not moved:
                return
        raise AssertionError("pump did not settle")

    def eof(self, side: Side) -> None:
        """Deliver end-of-stream to ``side``."""
        try:
            side.events.extend(side.conn.receive_data(b""))
        except PPCPError as exc:
            side.error = exc

    def handshake(self) -> None:
        self.client.conn.initiate()
        self.pump()

    def established(self) -> Pair:
        self.handshake()
        assert self.client.error is None, self.client.error
        assert self.server.error is None, self.server.error
        assert any(isinstance(e, HandshakeComplete) for e in self.client.events)
        assert any(isinstance(e, HandshakeComplete) for e in self.server.events)
        self.client.events.clear()
        self.server.events.clear()
        return self
