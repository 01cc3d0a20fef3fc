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
from dataclasses import dataclass

from ppcp.core.errors import FrameTooLarge, ProtocolError

HEADER = struct.Struct(">BBI")
HEADER_LEN = HEADER.size
MAX_HANDSHAKE_BODY = 1024
# The largest record plaintext.  1 MiB + 1 KiB leaves room for a channel
# header in front of a 1 MiB data chunk.
MAX_RECORD_PLAINTEXT = (1 << 20) + 1024
MAX_RECORD_BODY = MAX_RECORD_PLAINTEXT + 16

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
    """

    __slots__ = ("_buf", "_eof", "max_body")

    def __init__(self, max_body: int = MAX_RECORD_BODY) -> None:
        self._buf = bytearray()
        self._eof = False
        self.max_body = max_body

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            self._buf += data

    def feed_eof(self) -> None:
        self._eof = True

    @property
    def pending(self) -> int:
        return len(self._buf)

    def next_frame(self) -> Frame | None:
        buf = self._buf
        if len(buf) < HEADER_LEN:
            return None
        frame_type, flags, length = HEADER.unpack_from(buf)
        limit = min(body_limit(frame_type), self.max_body)
        if length > limit:
            raise FrameTooLarge(
                f"frame of type 0x{frame_type:02x} announces {length} bytes; the limit is {limit}"
            )
        end = HEADER_LEN + length
        if len(buf) < end:
            return None
        header = bytes(buf[:HEADER_LEN])
        body = bytes(buf[HEADER_LEN:end])
        del buf[:end]
        return Frame(frame_type, flags, header, body)

    def check_eof(self) -> None:
        if self._eof and self._buf:
            raise ProtocolError(f"connection ended inside a frame ({len(self._buf)} bytes left)")
