"""Frame layout and the incremental frame parser (sans-I/O).

Every PPCP byte on a TCP stream belongs to a frame::

    +--------+--------+-----------------------------------+
    | type   | flags  | length (u32, big-endian)          |  6-byte header
    +--------+--------+-----------------------------------+
    | body (length bytes)                                  |
    +------------------------------------------------------+

Handshake frames travel in clear; every frame after the handshake is a
record: its body is AES-256-GCM ciphertext + tag with the header as AAD.
"""

from __future__ import annotations

import enum
import struct

from msgspec import Struct

from ppcp.core.errors import FrameTooLarge, ProtocolError
from ppcp.utils.buffers import BufferPool

HEADER = struct.Struct(">BBI")
HEADER_LEN = HEADER.size
MAX_HANDSHAKE_BODY = 1024
# The largest record plaintext.  2 MiB + 1 KiB leaves room for a channel
# header in front of a 2 MiB data chunk.  Half as many bulk records as at
# 1 MiB cost both ends of a transfer ~7% less CPU per GiB (the per-record work
# is Python); 4 MiB records cost more, no longer fitting a core's L2 cache on
# their way from the socket through AES-GCM to the file (bench/floor.py).
MAX_RECORD_PLAINTEXT = (2 << 20) + 1024
MAX_RECORD_BODY = MAX_RECORD_PLAINTEXT + 16
# Receive buffers, each room for one frame of the largest size.
FRAME_POOL = BufferPool(HEADER_LEN + MAX_RECORD_BODY, keep=4)
# Bulk CHANNEL_DATA is decrypted into these; the channel's reader gives them back.
PLAINTEXT_POOL = BufferPool(MAX_RECORD_PLAINTEXT, keep=4)
# Frames at least this big are received in place in a pooled buffer.
LARGE_FRAME = 64 * 1024

FLAG_MORE = 0x01  # MESSAGE: more fragments follow
FLAG_REPLY = 0x01  # HEARTBEAT: this is the answer to a heartbeat


class FrameType(enum.IntEnum):
    CLIENT_HELLO = 0x01
    SERVER_HELLO = 0x02
    CLIENT_AUTH = 0x03
    SERVER_AUTH = 0x04
    ALERT = 0x05
    # Records (encrypted):
    MESSAGE = 0x10
    CLOSE = 0x11
    KEY_UPDATE = 0x12
    HEARTBEAT = 0x13
    # Channel layer (docs/rfc.md section "Channels").
    CHANNEL_OPEN = 0x20
    CHANNEL_ACCEPT = 0x21
    CHANNEL_REJECT = 0x22
    CHANNEL_DATA = 0x23
    CHANNEL_EOF = 0x24
    CHANNEL_CLOSE = 0x25
    WINDOW_ADJUST = 0x26
    CHANNEL_REQUEST = 0x27


HANDSHAKE_TYPES = frozenset(
    {
        FrameType.CLIENT_HELLO,
        FrameType.SERVER_HELLO,
        FrameType.CLIENT_AUTH,
        FrameType.SERVER_AUTH,
        FrameType.ALERT,
    }
)


# Record types the connection hands to the channel layer.
MUX_TYPES = frozenset(
    {
        FrameType.HEARTBEAT,
        FrameType.CHANNEL_OPEN,
        FrameType.CHANNEL_ACCEPT,
        FrameType.CHANNEL_REJECT,
        FrameType.CHANNEL_DATA,
        FrameType.CHANNEL_EOF,
        FrameType.CHANNEL_CLOSE,
        FrameType.WINDOW_ADJUST,
        FrameType.CHANNEL_REQUEST,
    }
)


class Frame(Struct, frozen=True):
    type: int
    flags: int
    header: bytes
    body: bytes | memoryview


def encode_header(frame_type: int, flags: int, length: int) -> bytes:
    return HEADER.pack(frame_type, flags, length)


def encode_frame(frame_type: int, body: bytes, flags: int = 0) -> bytes:
    return HEADER.pack(frame_type, flags, len(body)) + body


def body_limit(frame_type: int) -> int:
    if frame_type in HANDSHAKE_TYPES:
        return MAX_HANDSHAKE_BODY
    return MAX_RECORD_BODY


class FrameBuffer:
    """Accumulates stream bytes and yields whole frames.

    A length prefix is checked as soon as the header is complete, against the
    limit for its frame type and against ``max_body`` (the owner lowers it to
    the handshake limit until the peer is authenticated), so a peer cannot
    make us hold more than one maximum-size frame, and an unauthenticated one
    no more than one handshake frame.

    Two ways in.  :meth:`feed` copies bytes the caller already has.
    :meth:`get_buffer` / :meth:`buffer_updated` (asyncio's BufferedProtocol
    shape) let the socket write straight into a buffer borrowed from a
    per-thread pool: a large frame is received in place, with reads sized to
    end exactly where it ends, and a record body is then decrypted from there
    with no copy.  After the caller has taken the frames it can,
    :meth:`release` gives the pooled buffer back unless a large frame is still
    arriving, so an idle connection holds only the few bytes it must.
    """

    __slots__ = ("_buf", "_end", "_eof", "_pooled", "_start", "max_body")

    def __init__(self, max_body: int = MAX_RECORD_BODY) -> None:
        self._buf = bytearray()  # unconsumed bytes are _buf[_start:_end]
        self._start = 0
        self._end = 0
        self._pooled = False  # _buf was borrowed from FRAME_POOL
        self._eof = False
        self.max_body = max_body

    @property
    def pending(self) -> int:
        return self._end - self._start

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        if not n:
            return
        if self._end + n > len(self._buf):
            held = self.pending
            if held + n <= len(self._buf):
                self._compact()
            else:
                self._replace(bytearray(max(held + n, 2 * len(self._buf))), pooled=False)
        self._buf[self._end : self._end + n] = data
        self._end += n

    def feed_eof(self) -> None:
        self._eof = True

    def get_buffer(self) -> memoryview:
        """Writable room for the next received bytes; then call :meth:`buffer_updated`."""
        if not self._pooled:
            self._replace(FRAME_POOL.take(), pooled=True)
        total = self._frame_total()
        frame_overflows = total is not None and self._start + total > len(self._buf)
        if frame_overflows or len(self._buf) - self._end < HEADER_LEN:
            self._compact()
        if total is not None and total >= LARGE_FRAME:
            # End the read where the frame ends: it completes in place, and
            # the buffer is empty again (nothing to move) once it is taken.
            return memoryview(self._buf)[self._end : self._start + total]
        return memoryview(self._buf)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        if not 0 <= nbytes <= len(self._buf) - self._end:
            raise ValueError(f"buffer_updated({nbytes}) beyond the room lent")
        self._end += nbytes

    def release(self) -> None:
        """Give the pooled buffer back unless a large frame is still arriving."""
        held = self.pending
        if not held:
            if self._pooled:
                FRAME_POOL.give(self._buf)
            self._buf = bytearray()
            self._start = self._end = 0
            self._pooled = False
            return
        total = self._frame_total()
        if self._pooled and (total is None or total < LARGE_FRAME):
            self._replace(bytearray(held), pooled=False)

    def _frame_total(self) -> int | None:
        """Header plus body size of the frame at the front, once its header is in."""
        if self._end - self._start < HEADER_LEN:
            return None
        length: int = HEADER.unpack_from(self._buf, self._start)[2]
        total = HEADER_LEN + length
        return total if total <= FRAME_POOL.size else None  # next_frame refuses it

    def _compact(self) -> None:
        held = self.pending
        if self._start:
            self._buf[:held] = self._buf[self._start : self._end]
            self._start, self._end = 0, held

    def _replace(self, buf: bytearray, *, pooled: bool) -> None:
        held = self.pending
        buf[:held] = memoryview(self._buf)[self._start : self._end]
        if self._pooled:
            FRAME_POOL.give(self._buf)
        self._buf, self._start, self._end, self._pooled = buf, 0, held, pooled

    def _parse(self) -> tuple[int, int, int, int] | None:
        """(type, flags, offset, body length) of the next whole frame, consumed."""
        start = self._start
        if self._end - start < HEADER_LEN:
            return None
        frame_type, flags, length = HEADER.unpack_from(self._buf, start)
        limit = min(body_limit(frame_type), self.max_body)
        if length > limit:
            raise FrameTooLarge(
                f"frame of type 0x{frame_type:02x} announces {length} bytes; the limit is {limit}"
            )
        if self._end - start < HEADER_LEN + length:
            return None
        self._start = start + HEADER_LEN + length
        if self._start == self._end:
            self._start = self._end = 0
        return frame_type, flags, start, length

    def next_frame(self, *, borrow: bool = False) -> Frame | None:
        """The next whole frame, or None.

        With ``borrow``, a record's body is a view of this buffer, valid only
        until the next call to any method here (handshake frames are always
        copied: the handshake keeps them).
        """
        parsed = self._parse()
        if parsed is None:
            return None
        frame_type, flags, start, length = parsed
        view = memoryview(self._buf)
        header = bytes(view[start : start + HEADER_LEN])
        body_view = view[start + HEADER_LEN : start + HEADER_LEN + length]
        if borrow and frame_type not in HANDSHAKE_TYPES:
            return Frame(frame_type, flags, header, body_view)
        return Frame(frame_type, flags, header, bytes(body_view))

    def check_eof(self) -> None:
        if self._eof and self.pending:
            raise ProtocolError(f"connection ended inside a frame ({self.pending} bytes left)")
