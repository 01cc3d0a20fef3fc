"""Bounded big-endian readers and writers shared by every PPCP codec.

A :class:`Reader` never reads past its buffer: any short or malformed field
raises :class:`~ppcp.core.errors.ProtocolError`, so codecs built on it obey the
fuzzing invariant (parse, or raise a PPCPError) by construction.
"""

from __future__ import annotations

import re
import struct

from ppcp.core.errors import ProtocolError

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class Reader:
    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes | bytearray | memoryview, what: str = "message") -> None:
        # A view is not copied whole: each field read from it is (so a reader
        # of a borrowed buffer hands out nothing that changes under it).
        self._data = data if type(data) is bytes else memoryview(data)
        self._pos = 0
        self._what = what

    def _take(self, n: int) -> bytes:
        end = self._pos + n
        if n < 0 or end > len(self._data):
            raise ProtocolError(f"truncated {self._what}")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk if type(chunk) is bytes else bytes(chunk)

    def take(self, n: int) -> bytes:
        return self._take(n)

    # Integers are read in place (no slice copied first): every record is
    # parsed with these.
    def _fixed(self, size: int) -> int:
        """The position of the next ``size`` bytes, consumed."""
        pos = self._pos
        if pos + size > len(self._data):
            raise ProtocolError(f"truncated {self._what}")
        self._pos = pos + size
        return pos

    def u8(self) -> int:
        return self._data[self._fixed(1)]

    def u16(self) -> int:
        return int(_U16.unpack_from(self._data, self._fixed(2))[0])

    def u32(self) -> int:
        return int(_U32.unpack_from(self._data, self._fixed(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack_from(self._data, self._fixed(8))[0])

    def vec8(self) -> bytes:
        return self._take(self._data[self._fixed(1)])

    def vec16(self) -> bytes:
        return self._take(self.u16())

    def vec32(self, limit: int) -> bytes:
        n = self.u32()
        if n > limit:
            raise ProtocolError(f"{self._what}: field of {n} bytes exceeds the limit of {limit}")
        return self._take(n)

    def text8(self, field: str) -> str:
        text, self._pos = text8_at(self._data, self._pos, self._what, field)
        return text

    def text16(self, field: str) -> str:
        return decode_text(self.vec16(), field)

    def rest(self) -> bytes:
        return self._take(len(self._data) - self._pos)

    def rest_view(self) -> memoryview:
        """The rest, not copied (a view of the buffer this reader was given)."""
        view = memoryview(self._data)[self._pos :]
        self._pos = len(self._data)
        return view

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def end(self) -> None:
        expect_length(self._data, self._pos, self._what)


# The two checks below are also used without a Reader, on the hot channel
# records (ppcp/control/channels.py), which parse their fixed parts with one
# struct call each.


def text8_at(
    data: bytes | bytearray | memoryview, offset: int, what: str, field: str
) -> tuple[str, int]:
    """The u8-length-prefixed text at ``offset`` of a ``what``, and where it ends."""
    end = offset + 1 + data[offset] if offset < len(data) else -1
    if end < 0 or end > len(data):
        raise ProtocolError(f"truncated {what}")
    return decode_text(bytes(data[offset + 1 : end]), field), end


def expect_length(data: bytes | bytearray | memoryview, size: int, what: str) -> None:
    """A ``what`` that must be exactly ``size`` bytes long."""
    if len(data) < size:
        raise ProtocolError(f"truncated {what}")
    if len(data) > size:
        raise ProtocolError(f"{what}: {len(data) - size} trailing bytes")


class Writer:
    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def raw(self, data: bytes) -> Writer:
        self._parts.append(bytes(data))
        return self

    def u8(self, v: int) -> Writer:
        self._parts.append(bytes((v,)))
        return self

    def u16(self, v: int) -> Writer:
        self._parts.append(_U16.pack(v))
        return self

    def u32(self, v: int) -> Writer:
        self._parts.append(_U32.pack(v))
        return self

    def u64(self, v: int) -> Writer:
        self._parts.append(_U64.pack(v))
        return self

    def vec8(self, data: bytes) -> Writer:
        if len(data) > 0xFF:
            raise ValueError(f"field of {len(data)} bytes does not fit a u8 length")
        return self.u8(len(data)).raw(data)

    def vec16(self, data: bytes) -> Writer:
        if len(data) > 0xFFFF:
            raise ValueError(f"field of {len(data)} bytes does not fit a u16 length")
        return self.u16(len(data)).raw(data)

    def vec32(self, data: bytes) -> Writer:
        return self.u32(len(data)).raw(data)

    def text8(self, text: str) -> Writer:
        return self.vec8(text.encode("utf-8"))

    def text16(self, text: str) -> Writer:
        return self.vec16(text.encode("utf-8"))

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


def decode_text(raw: bytes, field: str) -> str:
    """UTF-8 text from the network, refusing control characters.

    Names and reasons end up in logs and terminals; control characters there
    would let a peer forge log lines or drive the terminal (ANSI escapes).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"{field} is not valid UTF-8") from None
    if has_control_chars(text):
        raise ProtocolError(f"{field} contains control characters")
    return text


_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f]")


def has_control_chars(text: str) -> bool:
    return _CONTROL_CHARS.search(text) is not None


def clip_text(text: str, max_bytes: int) -> str:
    """Make local text safe for a length-limited wire field the peer will validate."""
    clean = _CONTROL_CHARS.sub("?", text)
    return clean.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")
