"""The channel multiplexer: many flow-controlled channels over one session (sans-I/O).

It plugs into :class:`~ppcp.transport.connection.Connection` as its record
handler: received channel records become events, and calls such as
:meth:`ChannelMux.send_data` become encrypted records in the connection's
output.  No sockets, clocks or threads: heartbeat timing is the driver's.

Each channel has a tiny state machine (:data:`CHANNEL_TRANSITIONS`, h2-style):
a channel record not allowed in the channel's current state, or naming an
unknown channel, is a session-level protocol error.
"""

from __future__ import annotations

import struct

from msgspec import Struct

from ppcp.core.errors import (
    ChannelError,
    CloseCode,
    FlowControlError,
    ProtocolError,
)
from ppcp.core.events import Event
from ppcp.core.states import IdentityEnum, Role
from ppcp.handshake.messages import MAX_REASON_BYTES
from ppcp.transport.connection import Connection
from ppcp.transport.frames import FLAG_REPLY, MAX_RECORD_PLAINTEXT, Frame, FrameType
from ppcp.utils.buffers import ThreadScratch
from ppcp.utils.codec import clip_text, expect_length, text8_at

MAX_CHANNEL_ID = 0xFFFFFFFF
MAX_WINDOW = (1 << 31) - 1
DEFAULT_WINDOW = 4 << 20
DEFAULT_MAX_PACKET = 2 << 20
MIN_MAX_PACKET = 1024
DEFAULT_MAX_CHANNELS = 256
DEFAULT_MAX_PENDING_REQUESTS = 256
MAX_PAYLOAD = 64 * 1024
MAX_KIND_BYTES = 32
DATA_HEADER = 5  # u32 channel id + u8 stream

STREAM_STDOUT = 0
STREAM_STDERR = 1
MAX_STREAM = 1


class ChannelState(IdentityEnum):
    OPENING = "OPENING"  # we sent CHANNEL_OPEN
    ACCEPTING = "ACCEPTING"  # the peer sent CHANNEL_OPEN; we have not answered
    OPEN = "OPEN"
    CLOSING = "CLOSING"  # we sent CHANNEL_CLOSE; waiting for the peer's


F = FrameType
_OPEN_ROW = {
    F.CHANNEL_DATA: ChannelState.OPEN,
    F.CHANNEL_EOF: ChannelState.OPEN,
    F.CHANNEL_REQUEST: ChannelState.OPEN,
    F.WINDOW_ADJUST: ChannelState.OPEN,
    F.CHANNEL_CLOSE: None,  # None: the channel is gone
}

# Computed once: an enum lookup per record is a measurable share of a small one.
_RECORD_NAMES = {int(t): t.name for t in FrameType}

# Record layouts (docs/rfc.md section 15), each fixed part packed or parsed in
# one call: a warm exec is five channel records, and field-by-field codecs
# were a tenth of its protocol work.
_ID = struct.Struct(">I")  # channel id: every channel record starts with it
_OPEN = struct.Struct(">IIIB")  # id, window, max packet, kind length; kind, payload
_ACCEPT = struct.Struct(">III")  # id, window, max packet; payload
_CODE_REASON = struct.Struct(">IHB")  # id, code, reason length; reason (REJECT, CLOSE)
_REQUEST = struct.Struct(">IB")  # id, name length; name, payload
_WINDOW_ADJUST = struct.Struct(">II")  # id, increment

# CHANNEL_TRANSITIONS[state][received record type] -> next state (None = freed).
CHANNEL_TRANSITIONS: dict[ChannelState, dict[FrameType, ChannelState | None]] = {
    ChannelState.OPENING: {F.CHANNEL_ACCEPT: ChannelState.OPEN, F.CHANNEL_REJECT: None},
    # The opener may not close before our answer, so nothing may arrive here.
    ChannelState.ACCEPTING: {},
    ChannelState.OPEN: dict(_OPEN_ROW),
    # Records the peer sent before it saw our CLOSE are discarded, not errors.
    ChannelState.CLOSING: {
        F.CHANNEL_DATA: ChannelState.CLOSING,
        F.CHANNEL_EOF: ChannelState.CLOSING,
        F.CHANNEL_REQUEST: ChannelState.CLOSING,
        F.WINDOW_ADJUST: ChannelState.CLOSING,
        F.CHANNEL_CLOSE: None,
    },
}


# -- events ---------------------------------------------------------------------


class ChannelOpenRequested(Event, frozen=True):
    channel_id: int
    kind: str
    payload: bytes


class ChannelAccepted(Event, frozen=True):
    channel_id: int
    payload: bytes


class ChannelRefused(Event, frozen=True):
    channel_id: int
    code: int
    reason: str


class ChannelData(Event, frozen=True):
    channel_id: int
    stream: int
    # Bulk data is a view of a pooled buffer (see AsyncChannel.read_buffer).
    data: bytes | memoryview


class ChannelEOF(Event, frozen=True):
    channel_id: int


class ChannelRequest(Event, frozen=True):
    channel_id: int
    name: str
    payload: bytes


class ChannelClosed(Event, frozen=True):
    channel_id: int
    code: int
    reason: str


class WindowOpened(Event, frozen=True):
    """The peer granted more send window on this channel."""

    channel_id: int


class HeartbeatReceived(Event, frozen=True):
    """A heartbeat answer arrived (requests are answered by the mux itself)."""

    heartbeat_id: int


# -- channel bookkeeping -----------------------------------------------------------


class Channel(Struct):
    channel_id: int
    kind: str
    state: ChannelState
    local_window_size: int
    recv_window: int  # bytes the peer may still send us
    send_window: int = 0  # bytes we may still send
    send_max_packet: int = MIN_MAX_PACKET
    local_eof: bool = False
    remote_eof: bool = False
    unacked: int = 0  # consumed bytes not yet returned as WINDOW_ADJUST
    close_pending: tuple[int, str] | None = None


class MuxConfig(Struct, frozen=True):
    window: int = DEFAULT_WINDOW
    max_packet: int = DEFAULT_MAX_PACKET
    max_channels: int = DEFAULT_MAX_CHANNELS
    # CHANNEL_REQUESTs received on one channel and not yet read by its
    # service (enforced by the driver): requests are not flow-controlled.
    max_pending_requests: int = DEFAULT_MAX_PENDING_REQUESTS

    def __post_init__(self) -> None:
        if not 0 < self.window <= MAX_WINDOW:
            raise ValueError(f"window must be in 1..{MAX_WINDOW}")
        if not MIN_MAX_PACKET <= self.max_packet <= MAX_RECORD_PLAINTEXT - DATA_HEADER:
            # Above, a peer would send records larger than we accept (RFC 15.4).
            raise ValueError(
                f"max_packet must be in {MIN_MAX_PACKET}..{MAX_RECORD_PLAINTEXT - DATA_HEADER}"
            )
        if self.max_channels <= 0:
            raise ValueError("max_channels must be positive")
        if self.max_pending_requests <= 0:
            raise ValueError("max_pending_requests must be positive")


# CHANNEL_DATA plaintexts are assembled here and sealed before send_data returns.
_SEND_SCRATCH = ThreadScratch()


class ChannelMux:
    def __init__(self, conn: Connection, config: MuxConfig | None = None) -> None:
        self.conn = conn
        self.config = config or MuxConfig()
        self.channels: dict[int, Channel] = {}
        # Client-opened channels are odd, server-opened even: no id collisions
        # without any negotiation.
        self._next_id = 1 if conn.role is Role.CLIENT else 2
        conn.record_handler = self.handle_record

    # -- local actions ----------------------------------------------------------------

    def open_channel(self, kind: str, payload: bytes = b"") -> int:
        if len(self.channels) >= self.config.max_channels:
            raise ChannelError(f"too many open channels (limit {self.config.max_channels})")
        raw_kind = _check_kind(kind)
        _check_payload(payload, f"the {kind!r} channel's open payload is")
        if self._next_id > MAX_CHANNEL_ID:
            raise ChannelError("channel ids exhausted for this session")
        channel_id = self._next_id
        self._next_id += 2
        cfg = self.config
        self.channels[channel_id] = Channel(
            channel_id, kind, ChannelState.OPENING, cfg.window, cfg.window
        )
        head = _OPEN.pack(channel_id, cfg.window, cfg.max_packet, len(raw_kind))
        self.conn.send_record(F.CHANNEL_OPEN, head + raw_kind + payload)
        return channel_id

    def accept(self, channel_id: int, payload: bytes = b"") -> None:
        ch = self._local(channel_id, ChannelState.ACCEPTING)
        _check_payload(payload, "the accept payload is")
        ch.state = ChannelState.OPEN
        cfg = self.config
        head = _ACCEPT.pack(channel_id, cfg.window, cfg.max_packet)
        self.conn.send_record(F.CHANNEL_ACCEPT, head + payload)

    def reject(self, channel_id: int, code: int, reason: str) -> None:
        self._local(channel_id, ChannelState.ACCEPTING)
        del self.channels[channel_id]
        self.conn.send_record(F.CHANNEL_REJECT, _code_reason(channel_id, code, reason))

    def sendable(self, channel_id: int) -> int:
        """Bytes that :meth:`send_data` would accept right now."""
        ch = self.channels.get(channel_id)
        if ch is None or ch.state is not ChannelState.OPEN or ch.local_eof:
            return 0
        return ch.send_window

    def send_data(
        self, channel_id: int, data: bytes | bytearray | memoryview, stream: int = STREAM_STDOUT
    ) -> int:
        """Send as much of ``data`` as the window allows; return the byte count sent."""
        view = memoryview(data)
        return self._send_data(channel_id, view, 0, len(view), stream, in_place=False)

    def send_data_in_place(
        self,
        channel_id: int,
        buffer: bytearray | memoryview,
        start: int,
        end: int,
        stream: int = STREAM_STDOUT,
    ) -> int:
        """:meth:`send_data` of ``buffer[start:end]`` without copying it.

        Each record's data header is written into the :data:`DATA_HEADER`
        bytes in front of its data, so ``buffer[start - DATA_HEADER:start]``
        must be free, and bytes already sent may be overwritten (each record
        is sealed before the next header is written).  Bulk senders save a
        copy of every byte: a share of a transfer's CPU time on the sending end.
        """
        if start < DATA_HEADER or not start <= end <= len(buffer):
            raise ValueError(f"send_data_in_place needs {DATA_HEADER} bytes before start")
        return self._send_data(channel_id, memoryview(buffer), start, end, stream, in_place=True)

    def _send_data(
        self,
        channel_id: int,
        view: memoryview,
        start: int,
        end: int,
        stream: int,
        *,
        in_place: bool,
    ) -> int:
        ch = self._local(channel_id, ChannelState.OPEN)
        if ch.local_eof:
            raise ChannelError("cannot send data after EOF")
        if not 0 <= stream <= MAX_STREAM:
            raise ValueError(f"unknown stream {stream}")
        pos = start
        while pos < end and ch.send_window > 0:
            n = min(end - pos, ch.send_window, ch.send_max_packet)
            if in_place:
                plaintext = view[pos - DATA_HEADER : pos + n]
            else:
                plaintext = memoryview(_SEND_SCRATCH.get(DATA_HEADER + n))[: DATA_HEADER + n]
                plaintext[DATA_HEADER:] = view[pos : pos + n]
            plaintext[:4] = channel_id.to_bytes(4, "big")
            plaintext[4] = stream
            self.conn.send_record(F.CHANNEL_DATA, plaintext)  # sealed now: scratch is free again
            plaintext.release()
            ch.send_window -= n
            pos += n
        return pos - start

    def send_eof(self, channel_id: int) -> None:
        ch = self._local(channel_id, ChannelState.OPEN)
        if not ch.local_eof:
            ch.local_eof = True
            self.conn.send_record(F.CHANNEL_EOF, _ID.pack(channel_id))

    def send_request(self, channel_id: int, name: str, payload: bytes = b"") -> None:
        self._local(channel_id, ChannelState.OPEN)
        raw_name = _check_kind(name)
        _check_payload(payload, f"the {name!r} request's payload is")
        head = _REQUEST.pack(channel_id, len(raw_name))
        self.conn.send_record(F.CHANNEL_REQUEST, head + raw_name + payload)

    def close_channel(
        self, channel_id: int, code: int = CloseCode.NORMAL, reason: str = ""
    ) -> None:
        """Start closing; the id is freed when the peer's CHANNEL_CLOSE arrives."""
        ch = self.channels.get(channel_id)
        if ch is None or ch.state is ChannelState.CLOSING:
            return
        if ch.state is ChannelState.OPENING:
            # A CLOSE may not cross the peer's ACCEPT/REJECT: remember it and
            # send it once the answer is in (or drop it if the answer is REJECT).
            ch.close_pending = (code, reason)
            return
        if ch.state is ChannelState.ACCEPTING:
            self.reject(channel_id, code or CloseCode.CHANNEL_REJECTED, reason)
            return
        ch.state = ChannelState.CLOSING
        if self.conn.is_open:
            self.conn.send_record(F.CHANNEL_CLOSE, _code_reason(channel_id, code, reason))

    def consume(self, channel_id: int, n: int) -> None:
        """The application has processed ``n`` received bytes: reopen the window.

        WINDOW_ADJUST goes out once half the window is consumed, so a bulk
        transfer costs one small record per half-window, not one per chunk.
        """
        ch = self.channels.get(channel_id)
        if ch is None or ch.state is not ChannelState.OPEN:
            return
        ch.unacked += n
        if ch.unacked >= ch.local_window_size // 2 and not ch.remote_eof:
            increment, ch.unacked = ch.unacked, 0
            ch.recv_window += increment
            self.conn.send_record(F.WINDOW_ADJUST, _WINDOW_ADJUST.pack(channel_id, increment))

    def send_heartbeat(self, heartbeat_id: int) -> None:
        self.conn.send_record(F.HEARTBEAT, heartbeat_id.to_bytes(8, "big"))

    def _local(self, channel_id: int, state: ChannelState) -> Channel:
        ch = self.channels.get(channel_id)
        if ch is None:
            raise ChannelError(f"channel {channel_id} is not open")
        if ch.state is not state:
            raise ChannelError(f"channel {channel_id} is {ch.state.value}, not {state.value}")
        return ch

    # -- received records ----------------------------------------------------------------

    def handle_record(
        self, frame: Frame, plaintext: bytes | memoryview, owned: bool = False
    ) -> list[Event]:
        """Act on one decrypted channel record.

        ``plaintext`` is valid only during the call unless ``owned``: then
        CHANNEL_DATA hands it on as a view instead of copying it.
        """
        ftype = frame.type
        if ftype == F.HEARTBEAT:
            return self._on_heartbeat(frame.flags, plaintext)
        if frame.flags:
            raise ProtocolError(f"unexpected flags on channel record 0x{ftype:02x}")
        if len(plaintext) < 4:
            raise ProtocolError(f"truncated {_RECORD_NAMES[ftype]}")
        channel_id: int = _ID.unpack_from(plaintext)[0]
        if ftype == F.CHANNEL_OPEN:
            return self._on_open(channel_id, plaintext)
        ch = self.channels.get(channel_id)
        if ch is None:
            raise ProtocolError(f"{_RECORD_NAMES[ftype]} for unknown channel {channel_id}")
        row = CHANNEL_TRANSITIONS[ch.state]
        if ftype not in row:
            raise ProtocolError(
                f"{_RECORD_NAMES[ftype]} not allowed on channel {channel_id} "
                f"in state {ch.state.value}"
            )
        target = row[ftype]  # type: ignore[index]
        before = ch.state
        discarding = before is ChannelState.CLOSING and target is ChannelState.CLOSING
        events = self._on_channel_record(ch, ftype, plaintext, discarding, owned)
        if target is None:
            self.channels.pop(channel_id, None)
        elif ch.state is before:  # a handler may already have moved it on
            ch.state = target
        return events

    def _on_heartbeat(self, flags: int, plaintext: bytes | memoryview) -> list[Event]:
        if flags & ~FLAG_REPLY or len(plaintext) != 8:
            raise ProtocolError("malformed HEARTBEAT")
        if flags & FLAG_REPLY:
            return [HeartbeatReceived(int.from_bytes(plaintext, "big"))]
        # A request that crossed our CLOSE goes unanswered: after CLOSE nothing is
        # sent (RFC 10.5), and the peer learns from the CLOSE that we are alive.
        if self.conn.is_open:
            self.conn.send_record(F.HEARTBEAT, plaintext, FLAG_REPLY)
        return []

    def _on_open(self, channel_id: int, body: bytes | memoryview) -> list[Event]:
        if len(body) < _ACCEPT.size:  # the kind's length byte: checked by text8_at
            raise ProtocolError("truncated CHANNEL_OPEN")
        _, window, max_packet = _ACCEPT.unpack_from(body)  # OPEN's fixed part, less that byte
        kind, end = text8_at(body, _ACCEPT.size, "CHANNEL_OPEN", "channel kind")
        payload = bytes(body[end:])
        if end - _ACCEPT.size - 1 > MAX_KIND_BYTES:
            raise ProtocolError("channel kind too long")
        if len(payload) > MAX_PAYLOAD:
            raise ProtocolError("CHANNEL_OPEN payload too large")
        expected_parity = 0 if self.conn.role is Role.CLIENT else 1
        if channel_id % 2 != expected_parity or channel_id == 0:
            raise ProtocolError(f"peer opened channel {channel_id} with the wrong parity")
        if channel_id in self.channels:
            raise ProtocolError(f"peer reopened channel {channel_id}")
        if window > MAX_WINDOW or max_packet < MIN_MAX_PACKET:
            raise ProtocolError("CHANNEL_OPEN window or packet size out of range")
        cfg = self.config
        ch = Channel(channel_id, kind, ChannelState.ACCEPTING, cfg.window, cfg.window)
        ch.send_window = window
        ch.send_max_packet = min(max_packet, MAX_RECORD_PLAINTEXT - DATA_HEADER)
        if len(self.channels) >= cfg.max_channels:
            # Over the cap the channel is refused, but the session lives on.
            self.conn.send_record(
                F.CHANNEL_REJECT,
                _code_reason(
                    channel_id,
                    CloseCode.CHANNEL_REJECTED,
                    f"too many open channels (limit {cfg.max_channels})",
                ),
            )
            return []
        self.channels[channel_id] = ch
        return [ChannelOpenRequested(channel_id, kind, payload)]

    def _on_channel_record(
        self, ch: Channel, ftype: int, body: bytes | memoryview, discarding: bool, owned: bool
    ) -> list[Event]:
        cid = ch.channel_id
        if ftype == F.CHANNEL_ACCEPT:
            if len(body) < _ACCEPT.size:
                raise ProtocolError("truncated CHANNEL_ACCEPT")
            _, window, max_packet = _ACCEPT.unpack_from(body)
            payload = bytes(body[_ACCEPT.size :])
            if window > MAX_WINDOW or max_packet < MIN_MAX_PACKET:
                raise ProtocolError("CHANNEL_ACCEPT window or packet size out of range")
            if len(payload) > MAX_PAYLOAD:
                raise ProtocolError("CHANNEL_ACCEPT payload too large")
            ch.send_window = window
            ch.send_max_packet = min(max_packet, MAX_RECORD_PLAINTEXT - DATA_HEADER)
            if ch.close_pending is not None:
                ch.state = ChannelState.OPEN
                self.close_channel(cid, *ch.close_pending)  # moves it to CLOSING
                return []
            return [ChannelAccepted(cid, payload)]
        if ftype in (F.CHANNEL_REJECT, F.CHANNEL_CLOSE):
            name = _RECORD_NAMES[ftype]
            if len(body) < _CODE_REASON.size - 1:
                raise ProtocolError(f"truncated {name}")
            code = int.from_bytes(body[4:6], "big")
            reason, end = text8_at(body, 6, name, "channel close reason")
            expect_length(body, end, name)
            if ftype == F.CHANNEL_REJECT:
                return [ChannelRefused(cid, code, reason)]
            if ch.state is not ChannelState.CLOSING and self.conn.is_open:
                self.conn.send_record(F.CHANNEL_CLOSE, _code_reason(cid, CloseCode.NORMAL, ""))
            return [ChannelClosed(cid, code, reason)]
        if ftype == F.WINDOW_ADJUST:
            expect_length(body, _WINDOW_ADJUST.size, "WINDOW_ADJUST")
            increment: int = _WINDOW_ADJUST.unpack_from(body)[1]
            if increment == 0 or ch.send_window + increment > MAX_WINDOW:
                raise FlowControlError(f"invalid window increment on channel {cid}")
            ch.send_window += increment
            return [] if discarding else [WindowOpened(cid)]
        if ftype == F.CHANNEL_DATA:
            if len(body) < DATA_HEADER:
                raise ProtocolError("truncated CHANNEL_DATA")
            stream = body[4]
            data = body[DATA_HEADER:] if owned else bytes(body[DATA_HEADER:])
            if stream > MAX_STREAM:
                raise ProtocolError(f"unknown stream {stream} on channel {cid}")
            if ch.remote_eof:
                raise ProtocolError(f"data after EOF on channel {cid}")
            if len(data) > ch.recv_window:
                raise FlowControlError(
                    f"channel {cid}: peer sent {len(data)} bytes with {ch.recv_window} of window"
                )
            ch.recv_window -= len(data)
            return [] if discarding else [ChannelData(cid, stream, data)]
        if ftype == F.CHANNEL_EOF:
            expect_length(body, _ID.size, "CHANNEL_EOF")
            if ch.remote_eof:
                raise ProtocolError(f"second EOF on channel {cid}")
            ch.remote_eof = True
            return [] if discarding else [ChannelEOF(cid)]
        # CHANNEL_REQUEST
        name, end = text8_at(body, _ID.size, "CHANNEL_REQUEST", "channel request name")
        payload = bytes(body[end:])
        if len(payload) > MAX_PAYLOAD:
            raise ProtocolError("CHANNEL_REQUEST payload too large")
        return [] if discarding else [ChannelRequest(cid, name, payload)]


def _check_kind(kind: str) -> bytes:
    """The kind's (or request name's) wire bytes, checked."""
    raw = kind.encode("utf-8")
    if not raw or len(raw) > MAX_KIND_BYTES:
        raise ValueError(f"channel kind / request name must be 1..{MAX_KIND_BYTES} bytes")
    return raw


def _check_payload(payload: bytes, what: str) -> None:
    # A ChannelError, not a ValueError: the payload is often built from user input
    # (a command line, a shell command), and the session stays usable.
    if len(payload) > MAX_PAYLOAD:
        raise ChannelError(
            f"{what} too long: {len(payload)} bytes (the limit is {MAX_PAYLOAD} bytes)"
        )


def _code_reason(channel_id: int, code: int, reason: str) -> bytes:
    raw = clip_text(reason, MAX_REASON_BYTES).encode("utf-8") if reason else b""
    return _CODE_REASON.pack(channel_id, code, len(raw)) + raw
