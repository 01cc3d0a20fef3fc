"""The sans-I/O PPCP connection: handshake, record layer and close.

``receive_data(bytes)`` returns events; ``data_to_send()`` returns the bytes
the driver must write.  No sockets, clocks, threads or global randomness: the
random source is a constructor argument.  Any error moves the connection to
FAILED, queues an alert (handshake) or CLOSE record (after it) telling the
peer why, and is raised; every later call raises it again.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from msgspec import Struct

from ppcp.core.errors import (
    CloseCode,
    ConnectionLost,
    MessageTooLarge,
    PPCPError,
    ProtocolError,
    SessionClosed,
    error_for_code,
)
from ppcp.core.events import ConnectionClosed, Event, HandshakeComplete, MessageReceived
from ppcp.core.states import HANDSHAKE_STATES, INITIAL_STATE, Role, State, next_state
from ppcp.crypto.aead import MAX_RECORDS_PER_KEY, SMALL_RECORD, TAG_LEN, RecordCipher
from ppcp.handshake.machine import HandshakeConfig, HandshakeMachine, HandshakeResult
from ppcp.handshake.messages import MAX_REASON_BYTES, Alert
from ppcp.key_exchange.ecdh import RandomSource
from ppcp.transport.frames import (
    FLAG_MORE,
    FRAME_POOL,
    HEADER,
    LARGE_FRAME,
    MAX_HANDSHAKE_BODY,
    MAX_RECORD_BODY,
    MAX_RECORD_PLAINTEXT,
    MUX_TYPES,
    PLAINTEXT_POOL,
    Frame,
    FrameBuffer,
    FrameType,
    encode_frame,
)
from ppcp.utils.buffers import DISCARD, ThreadScratch
from ppcp.utils.codec import Reader, Writer, clip_text

MESSAGE_CHUNK = 1 << 20
DEFAULT_MAX_MESSAGE = 16 << 20
# Sender-side key update thresholds (RFC "Key update").  Receivers enforce
# only the hard limit MAX_RECORDS_PER_KEY.
DEFAULT_REKEY_RECORDS = 1 << 24
DEFAULT_REKEY_BYTES = 1 << 32

# Called with a record and its plaintext: bytes, or a view valid only during
# the call unless the flag says the handler owns the buffer behind it.
RecordHandler = Callable[[Frame, bytes | memoryview, bool], list[Event]]
_PLAINTEXT = ThreadScratch()

_CAPABILITY_FOR: dict[int, str] = {
    FrameType.MESSAGE: "msg",
    FrameType.HEARTBEAT: "heartbeat",
    **{t: "channels" for t in MUX_TYPES if t != FrameType.HEARTBEAT},
}

# What a local send is told, in the user's terms, when the peer did not agree to a feature.
_NOT_OFFERED: dict[str, str] = {
    "msg": "the peer takes no session messages (capability 'msg' was not negotiated; "
    "a PPCP server started without a session handler offers channels only)",
}


def alert_frame(code: int, reason: str) -> bytes:
    """A clear-text ALERT frame: the only thing a server may send a connection it
    refuses before any handshake (SERVER_BUSY, RATE_LIMITED)."""
    return encode_frame(FrameType.ALERT, Alert(code, reason).encode())


class ConnectionConfig(Struct, frozen=True):
    handshake: HandshakeConfig
    max_message_size: int = DEFAULT_MAX_MESSAGE
    rekey_after_records: int = DEFAULT_REKEY_RECORDS
    rekey_after_bytes: int = DEFAULT_REKEY_BYTES
    max_records_per_key: int = MAX_RECORDS_PER_KEY

    def __post_init__(self) -> None:
        if not 0 < self.rekey_after_records < self.max_records_per_key:
            raise ValueError("rekey_after_records must be positive and below the hard limit")
        if self.max_message_size <= 0 or self.rekey_after_bytes <= 0:
            raise ValueError("limits must be positive")


class Connection:
    def __init__(
        self,
        role: Role,
        psk_key: bytes,
        config: ConnectionConfig,
        rng: RandomSource = os.urandom,
    ) -> None:
        self.role = role
        self.config = config
        self.state = INITIAL_STATE[role]
        self.result: HandshakeResult | None = None
        self._handshake = HandshakeMachine(role, psk_key, config.handshake, rng)
        self._frames = FrameBuffer(MAX_HANDSHAKE_BODY)
        self._out: list[bytes | bytearray | memoryview] = []
        self._sealing: list[bytearray] = []  # pooled buffers of records in _out
        self._lent: list[bytearray] = []  # pooled buffers data_to_send returned
        self._send: RecordCipher | None = None
        self._recv: RecordCipher | None = None
        self._fragments: list[bytes] = []
        self._fragment_bytes = 0
        self._error: PPCPError | None = None
        self._close_sent = False
        self._discarding = False  # get_buffer lent DISCARD
        # Record types of features the handshake did not agree on (set then):
        # checked per record, so a set lookup rather than the capability check.
        self._unnegotiated: frozenset[int] = frozenset()
        # The channel layer registers here; the connection only moves records.
        self.record_handler: RecordHandler | None = None

    # -- outbound -------------------------------------------------------------

    def initiate(self) -> None:
        """Client: queue CLIENT_HELLO.  Server: nothing (it waits)."""
        if self.role is Role.CLIENT and self.state is State.START:
            self._out.append(self._handshake.client_hello())
            self.state = State.WAIT_SERVER_HELLO

    def data_to_send(self) -> bytes | bytearray | memoryview:
        """Everything queued, as one buffer.

        A bulk record is sealed in a pooled buffer and returned as a view of
        it.  The caller may tell the connection, with :meth:`release_sent`,
        once its transport holds nothing it was given: the buffer is then
        reused for a later record instead of a fresh megabyte per record.
        """
        out = self._out
        if len(out) == 1:
            data = out[0]
            if self._sealing:
                self._lent.extend(self._sealing)
        else:
            data = b"".join(out)
            for buf in self._sealing:
                FRAME_POOL.give(buf)
        out.clear()
        self._sealing.clear()
        return data

    def release_sent(self) -> None:
        """Everything :meth:`data_to_send` returned has been sent: reuse its buffers."""
        for buf in self._lent:
            FRAME_POOL.give(buf)
        self._lent.clear()

    def pending_output(self) -> int:
        """How many bytes :meth:`data_to_send` would return now."""
        return sum(map(len, self._out))

    def send_message(self, data: bytes | bytearray | memoryview) -> None:
        """Queue an application message (fragmented into records if large)."""
        self._check_can_send()
        view = memoryview(data)
        if len(view) > self.config.max_message_size:
            raise MessageTooLarge(
                f"message of {len(view)} bytes exceeds max_message_size "
                f"({self.config.max_message_size})"
            )
        offset = 0
        while True:
            chunk = view[offset : offset + MESSAGE_CHUNK]
            offset += len(chunk)
            more = offset < len(view)
            self.send_record(FrameType.MESSAGE, chunk, FLAG_MORE if more else 0)
            if not more:
                return

    def send_record(
        self, frame_type: int, plaintext: bytes | bytearray | memoryview, flags: int = 0
    ) -> None:
        """Encrypt and queue one record; rotate the key first if it is due."""
        if self.state is not State.OPEN or self._error is not None:
            self._check_can_send()
        if frame_type in self._unnegotiated:
            self._check_negotiated(frame_type, sending=True)
        cipher = self._send
        assert cipher is not None
        if len(plaintext) > MAX_RECORD_PLAINTEXT:
            raise ValueError(f"record of {len(plaintext)} bytes exceeds {MAX_RECORD_PLAINTEXT}")
        if (
            cipher.seq >= self.config.rekey_after_records
            or cipher.bytes_under_key >= self.config.rekey_after_bytes
        ):
            self._seal(cipher, FrameType.KEY_UPDATE, 0, b"")
            cipher.update()
        self._seal(cipher, frame_type, flags, plaintext)

    def _seal(
        self,
        cipher: RecordCipher,
        frame_type: int,
        flags: int,
        plaintext: bytes | bytearray | memoryview,
    ) -> None:
        header = HEADER.pack(frame_type, flags, len(plaintext) + TAG_LEN)
        if len(plaintext) < LARGE_FRAME:
            self._out.append(cipher.seal_frame(header, plaintext))
            return
        buf = FRAME_POOL.take()
        self._out.append(cipher.seal_frame_into(header, plaintext, buf))
        self._sealing.append(buf)

    def _check_can_send(self) -> None:
        if self._error is not None:
            raise self._error
        if self.state is not State.OPEN:
            raise ProtocolError(f"cannot send records in state {self.state.value}")

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Queue an orderly CLOSE (or, mid-handshake, an alert)."""
        if self.state is State.OPEN:
            self._send_close(code, reason)
            self.state = State.CLOSING
        elif self.state in HANDSHAKE_STATES:
            if self.state is not State.START:  # nothing was sent yet: say nothing
                self._send_alert(code, reason or "closed during handshake")
            self.state = State.CLOSED
            self._route_no_more_records()

    def fail(self, error: PPCPError) -> PPCPError:
        """Record a local error, tell the peer if the state allows, and return it."""
        if self._error is None:
            self._error = error
            if not error.remote and error.code != CloseCode.CONNECTION_LOST:
                if self.state in HANDSHAKE_STATES:
                    self._send_alert(error.code, error.message)
                elif self.state is State.OPEN or (
                    self.state is State.CLOSING and not self._close_sent
                ):
                    self._send_close(error.code, error.message)
            self.state = State.FAILED
            self._route_no_more_records()
        return self._error

    def _send_alert(self, code: int, reason: str) -> None:
        self._out.append(alert_frame(code, reason))

    def _send_close(self, code: int, reason: str) -> None:
        if self._close_sent or self._send is None:
            return
        body = Writer().u16(code).text8(clip_text(reason, MAX_REASON_BYTES)).getvalue()
        self._seal(self._send, FrameType.CLOSE, 0, body)
        self._close_sent = True

    # -- inbound --------------------------------------------------------------

    @property
    def error(self) -> PPCPError | None:
        return self._error

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Feed received bytes (``b""`` = end of stream); return the events they complete.

        On a protocol error the connection fails and the error is raised,
        unless frames before it in the same call already completed events:
        then those events are returned, followed by a :class:`ConnectionClosed`
        carrying the error, so what is delivered never depends on how TCP
        happened to split the stream.  Every later call raises the error.
        """
        if self._error is not None:
            raise self._error
        if data:
            self._frames.feed(data)
        else:
            self._frames.feed_eof()
        return self._process(eof=not data)

    def get_buffer(self) -> memoryview:
        """Where the next received bytes should go (asyncio's ``BufferedProtocol``).

        Fill a prefix of it, then call :meth:`buffer_updated`, which works
        like :meth:`receive_data`.  Bulk records are then decrypted where the
        socket put them.  A closed connection lends a scratch area whose
        content is dropped.
        """
        if self._error is not None or self.state in (State.CLOSED, State.FAILED):
            self._discarding = True
            return DISCARD
        self._discarding = False
        return self._frames.get_buffer()

    def buffer_updated(self, nbytes: int) -> list[Event]:
        if self._error is not None:
            raise self._error
        if self._discarding:
            return []
        self._frames.buffer_updated(nbytes)
        return self._process(eof=False)

    def _process(self, *, eof: bool) -> list[Event]:
        events: list[Event] = []
        try:
            while self.state not in (State.CLOSED, State.FAILED):
                frame = self._frames.next_frame(borrow=True)
                if frame is None:
                    break
                events.extend(self._on_frame(frame))
            if eof and self.state not in (State.CLOSED, State.FAILED):
                self._frames.check_eof()
                raise ConnectionLost(
                    "the peer ended the connection without a close message "
                    f"(state {self.state.value}; the stream may have been truncated)"
                )
        except PPCPError as exc:
            error = self.fail(exc)
            if not events:
                raise error from None
            events.append(ConnectionClosed(int(error.code), error.message, error))
        finally:
            self._frames.release()
        return events

    def _on_frame(self, frame: Frame) -> list[Event]:
        target = next_state(self.role, self.state, frame.type)
        if target is None:
            raise ProtocolError(
                f"unexpected frame type 0x{frame.type:02x} in state {self.state.value}"
            )
        if self.state in HANDSHAKE_STATES:
            if frame.flags:
                raise ProtocolError("handshake frames carry no flags")
            if frame.type == FrameType.ALERT:
                alert = Alert.decode(frame.body)
                raise error_for_code(alert.code, alert.reason)
            return self._on_handshake_frame(frame, target)
        return self._on_record(frame, target)

    def _on_handshake_frame(self, frame: Frame, target: State) -> list[Event]:
        hs = self._handshake
        if frame.type == FrameType.SERVER_HELLO:
            self._out.append(hs.on_server_hello(frame))
            self.state = target
            return []
        if frame.type == FrameType.CLIENT_HELLO:
            self._out.append(hs.on_client_hello(frame))
            self.state = target
            return []
        if frame.type == FrameType.CLIENT_AUTH:
            wire, result = hs.on_client_auth(frame)
            self._out.append(wire)
        else:
            result = hs.on_server_auth(frame)
        self.result = result
        self._send = RecordCipher(result.send_keys, self.config.max_records_per_key)
        self._recv = RecordCipher(result.recv_keys, self.config.max_records_per_key)
        self._unnegotiated = frozenset(
            t for t, needed in _CAPABILITY_FOR.items() if needed not in result.capabilities
        )
        self._frames.max_body = MAX_RECORD_BODY
        self.state = target
        return [
            HandshakeComplete(
                result.version, result.capabilities, result.peer_name, result.session_id
            )
        ]

    def _on_record(self, frame: Frame, target: State) -> list[Event]:
        recv = self._recv
        assert recv is not None
        if len(frame.body) < TAG_LEN:
            raise ProtocolError("record shorter than its authentication tag")
        ftype = frame.type
        events: list[Event] = []
        if ftype in MUX_TYPES:
            # Bulk data is decrypted into a pooled buffer that its reader
            # keeps (and gives back); everything else into scratch, which the
            # channel layer copies from.  Either way, no fresh megabyte.
            size = len(frame.body) - TAG_LEN
            owned = ftype == FrameType.CHANNEL_DATA and size >= LARGE_FRAME
            view: bytes | memoryview
            if size <= SMALL_RECORD:
                view = recv.open(frame.header, frame.body)
            else:
                out = PLAINTEXT_POOL.take() if owned else _PLAINTEXT.get(size)
                view = recv.open_into(frame.header, frame.body, out)
            if ftype in self._unnegotiated:
                self._check_negotiated(ftype)
            if self.record_handler is None:
                raise ProtocolError("channel record received but no channel layer is active")
            events = self.record_handler(frame, view, owned)
            self.state = target
            return events
        plaintext = recv.open(frame.header, frame.body)
        if ftype != FrameType.MESSAGE and frame.flags:
            raise ProtocolError(f"unexpected flags 0x{frame.flags:02x} on record 0x{ftype:02x}")
        self._check_negotiated(ftype)
        if ftype == FrameType.MESSAGE:
            events = self._on_message_fragment(frame.flags, plaintext)
        elif ftype == FrameType.KEY_UPDATE:
            if plaintext:
                raise ProtocolError("KEY_UPDATE carries no payload")
            recv.update()
        elif ftype == FrameType.CLOSE:
            events = self._on_close(plaintext)
        self.state = target
        return events

    def _check_negotiated(self, ftype: int, *, sending: bool = False) -> None:
        """Records of a feature are only valid if its capability was negotiated."""
        needed = _CAPABILITY_FOR.get(ftype)
        if (
            needed is not None
            and self.result is not None
            and needed not in self.result.capabilities
        ):
            if sending and needed in _NOT_OFFERED:
                raise ProtocolError(_NOT_OFFERED[needed])
            raise ProtocolError(
                f"record 0x{ftype:02x} needs capability {needed!r}, which was not negotiated"
            )

    def _on_message_fragment(self, flags: int, plaintext: bytes) -> list[Event]:
        if flags & ~FLAG_MORE:
            raise ProtocolError(f"unknown MESSAGE flags 0x{flags:02x}")
        self._fragment_bytes += len(plaintext)
        if self._fragment_bytes > self.config.max_message_size:
            raise MessageTooLarge(
                f"incoming message exceeds max_message_size ({self.config.max_message_size})"
            )
        self._fragments.append(plaintext)
        if flags & FLAG_MORE:
            return []
        data = b"".join(self._fragments) if len(self._fragments) > 1 else self._fragments[0]
        self._fragments.clear()
        self._fragment_bytes = 0
        return [MessageReceived(data)]

    def _on_close(self, plaintext: bytes) -> list[Event]:
        r = Reader(plaintext, "CLOSE")
        code = r.u16()
        reason = r.text8("close reason")
        r.end()
        if self._fragments:
            raise ProtocolError("CLOSE arrived in the middle of a fragmented message")
        # Answer an orderly close so the peer knows nothing was truncated.
        self._send_close(CloseCode.NORMAL, "")
        if code in (CloseCode.NORMAL, CloseCode.GOING_AWAY):
            error: PPCPError = SessionClosed(reason or "the peer closed the session", remote=True)
        else:
            error = error_for_code(code, reason)
        self._error = error
        self._route_no_more_records()
        return [ConnectionClosed(code, reason, error)]

    def _route_no_more_records(self) -> None:
        """The connection has ended: let go of the channel layer.

        Its handler refers back to this connection; kept, the pair (and the
        traffic keys with it) would outlive the session until the next
        garbage collection, and each session would leave that collection
        more to do.
        """
        self.record_handler = None

    @property
    def is_open(self) -> bool:
        return self.state is State.OPEN
