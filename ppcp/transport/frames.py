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

import collections
import enum
import struct
from dataclasses import dataclass

from ppcp.core.errors import FrameTooLarge, ProtocolError

HEADER = struct.Struct(">BBI")
HEADER_LEN = HEADER.size
MAX_HANDSHAKE_BODY = 1024
# The largest record plaintext.  1 MiB + 1 KiB leaves room for a channel
# header in front of a 1 MiB data chunk.
MAX_RECORD_PLAINTEXT = (1 << 20) + 1024
MAX_RECORD_BODY = MAX_RECORD_PLAINTEXT + 16
# FrameBuffer keeps received chunks at least this big by reference, and
# coalesces smaller ones.
_SMALL_CHUNK = 4096

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


@dataclass(frozen=True, slots=True)
class Frame:
    type: int
    flags: int
    header: bytes
    body: bytes


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

    Large received chunks are kept as they came (``bytes`` by reference) and a
    frame body is cut out of them with one copy when it is complete, instead
    of growing, reallocating and shifting one buffer for every frame (which,
    for 1 MiB records, cost more than decrypting them).  Small chunks are
    coalesced in ``_tail``, so a peer trickling bytes cannot make us hold one
    object per byte.
    """

    __slots__ = ("_chunks", "_eof", "_size", "_start", "_tail", "max_body")

    def __init__(self, max_body: int = MAX_RECORD_BODY) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._start = 0  # bytes of _chunks[0] already consumed
        self._tail = bytearray()  # small chunks, after _chunks in stream order
        self._size = 0  # bytes held and not consumed (chunks + tail)
        self._eof = False
        self.max_body = max_body

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if type(data) is not bytes:
            data = bytes(data)  # the caller may reuse a mutable buffer at once
        if len(data) < _SMALL_CHUNK:
            self._tail += data
        else:
            if self._tail:
                self._flush_tail()
            self._chunks.append(data)
        self._size += len(data)

    def feed_eof(self) -> None:
        self._eof = True

    @property
    def pending(self) -> int:
        return self._size

    def _flush_tail(self) -> None:
        self._chunks.append(bytes(self._tail))
        self._tail.clear()

    def _ready(self, n: int) -> bool:
        """Can ``n`` bytes be taken from ``_chunks`` (moving the tail there if needed)?"""
        if self._size < n:
            return False
        if self._size - len(self._tail) < n:
            self._flush_tail()
        return True

    def _peek(self, n: int) -> bytes:
        out = bytearray()
        start = self._start
        for chunk in self._chunks:
            out += memoryview(chunk)[start : start + n - len(out)]
            start = 0
            if len(out) >= n:
                break
        return bytes(out)

    def _take(self, n: int) -> bytes:
        """Remove and return the next ``n`` bytes (``_ready(n)`` was true)."""
        chunks = self._chunks
        first = chunks[0]
        start = self._start
        avail = len(first) - start
        if avail > n:
            out = first[start : start + n]
            self._start = start + n
        elif avail == n:
            chunks.popleft()
            self._start = 0
            out = first if start == 0 else first[start:]
        else:
            pieces: list[bytes | memoryview] = [memoryview(first)[start:]]
            chunks.popleft()
            self._start = 0
            need = n - avail
            while need:
                chunk = chunks[0]
                if len(chunk) <= need:
                    pieces.append(chunk)
                    chunks.popleft()
                    need -= len(chunk)
                else:
                    pieces.append(memoryview(chunk)[:need])
                    self._start = need
                    need = 0
            out = b"".join(pieces)
        self._size -= n
        return out

    def next_frame(self) -> Frame | None:
        if not self._ready(HEADER_LEN):
            return None
        first = self._chunks[0]
        if len(first) - self._start >= HEADER_LEN:
            frame_type, flags, length = HEADER.unpack_from(first, self._start)
        else:
            frame_type, flags, length = HEADER.unpack(self._peek(HEADER_LEN))
        limit = min(body_limit(frame_type), self.max_body)
        if length > limit:
            raise FrameTooLarge(
                f"frame of type 0x{frame_type:02x} announces {length} bytes; the limit is {limit}"
            )
        if not self._ready(HEADER_LEN + length):
            return None
        header = self._take(HEADER_LEN)
        body = self._take(length) if length else b""
        return Frame(frame_type, flags, header, body)

    def check_eof(self) -> None:
        if self._eof and self._size:
            raise ProtocolError(f"connection ended inside a frame ({self._size} bytes left)")
