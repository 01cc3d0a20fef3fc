"""Handshake message codecs: CLIENT_HELLO, SERVER_HELLO, *_AUTH and ALERT.

Byte layouts are normative in docs/rfc.md section "Handshake messages".
"""

from __future__ import annotations

import functools
import re

from msgspec import Struct

from ppcp.core.errors import ProtocolError
from ppcp.key_exchange.ecdh import POINT_LEN
from ppcp.utils.codec import Reader, Writer, clip_text, decode_text

MAGIC = b"PPCP"
RANDOM_LEN = 32
PROOF_LEN = 32
MAX_VERSIONS = 16
MAX_CAPABILITIES = 32
MAX_NAME_BYTES = 64
MAX_REASON_BYTES = 255
_CAPABILITY_RE = re.compile(r"[a-z0-9][a-z0-9.-]{0,31}")


def valid_capability(name: str) -> bool:
    return bool(_CAPABILITY_RE.fullmatch(name))


def check_name(name: str) -> str:
    """Validate a local endpoint name before it goes on the wire."""
    raw = name.encode("utf-8")
    if not raw or len(raw) > MAX_NAME_BYTES:
        raise ValueError(f"endpoint name must be 1..{MAX_NAME_BYTES} UTF-8 bytes: {name!r}")
    decode_text(raw, "endpoint name")
    return name


def _write_caps(w: Writer, caps: tuple[str, ...]) -> None:
    w.u8(len(caps))
    for cap in caps:
        w.text8(cap)


@functools.lru_cache(maxsize=64)
def _hello_tail(name: str, caps: tuple[str, ...]) -> bytes:
    """Name and capability list, the end of a hello: the same for every handshake."""
    w = Writer().text8(name)
    _write_caps(w, caps)
    return w.getvalue()


def _read_caps(r: Reader, what: str) -> tuple[str, ...]:
    """The capability list, the last field of a hello (and of a PONG): it takes the rest."""
    return _parse_caps(r.rest(), what)


# Cached: a server hears the same few lists from all its clients.  Keys are
# bounded by the handshake frame size; a malformed list raises, uncached.
@functools.lru_cache(maxsize=64)
def _parse_caps(block: bytes, what: str) -> tuple[str, ...]:
    r = Reader(block, what)
    count = r.u8()
    if count > MAX_CAPABILITIES:
        raise ProtocolError(f"{count} capabilities announced; at most {MAX_CAPABILITIES} allowed")
    caps = []
    for _ in range(count):
        raw = r.vec8()
        # Unknown capabilities are ignored, but they must still be well-formed
        # tokens: anything else is garbage, not a future extension.
        try:
            cap = raw.decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError("capability name is not ASCII") from None
        if not valid_capability(cap):
            raise ProtocolError(f"malformed capability name {cap!r}")
        caps.append(cap)
    r.end()
    if len(set(caps)) != len(caps):
        raise ProtocolError("duplicate capability in hello")
    return tuple(caps)


def _read_magic(r: Reader) -> None:
    if r.take(len(MAGIC)) != MAGIC:
        raise ProtocolError("bad protocol magic: the peer is not speaking PPCP")


def _read_name(r: Reader) -> str:
    raw = r.vec8()
    if not raw or len(raw) > MAX_NAME_BYTES:
        raise ProtocolError(f"endpoint name must be 1..{MAX_NAME_BYTES} bytes")
    return decode_text(raw, "endpoint name")


class ClientHello(Struct, frozen=True):
    versions: tuple[int, ...]
    random: bytes
    key_share: bytes
    name: str
    capabilities: tuple[str, ...]

    def encode(self) -> bytes:
        w = Writer().raw(MAGIC).vec8(bytes(self.versions)).raw(self.random).raw(self.key_share)
        return w.raw(_hello_tail(self.name, self.capabilities)).getvalue()

    @classmethod
    def decode(cls, body: bytes | memoryview) -> ClientHello:
        r = Reader(body, "CLIENT_HELLO")
        _read_magic(r)
        versions = tuple(r.vec8())
        if not versions or len(versions) > MAX_VERSIONS or 0 in versions:
            raise ProtocolError(f"CLIENT_HELLO must list 1..{MAX_VERSIONS} versions, none 0")
        random = r.take(RANDOM_LEN)
        key_share = r.take(POINT_LEN)
        name = _read_name(r)
        return cls(versions, random, key_share, name, _read_caps(r, "CLIENT_HELLO"))


class ServerHello(Struct, frozen=True):
    version: int
    random: bytes
    key_share: bytes
    name: str
    capabilities: tuple[str, ...]

    def encode(self) -> bytes:
        w = Writer().raw(MAGIC).u8(self.version).raw(self.random).raw(self.key_share)
        return w.raw(_hello_tail(self.name, self.capabilities)).getvalue()

    @classmethod
    def decode(cls, body: bytes | memoryview) -> ServerHello:
        r = Reader(body, "SERVER_HELLO")
        _read_magic(r)
        version = r.u8()
        random = r.take(RANDOM_LEN)
        key_share = r.take(POINT_LEN)
        name = _read_name(r)
        return cls(version, random, key_share, name, _read_caps(r, "SERVER_HELLO"))


def decode_proof(body: bytes | memoryview, what: str) -> bytes:
    if len(body) != PROOF_LEN:
        raise ProtocolError(f"{what} must be exactly {PROOF_LEN} bytes")
    return bytes(body)


class Alert(Struct, frozen=True):
    """A clear-text error report, only valid before both sides are authenticated."""

    code: int
    reason: str

    def encode(self) -> bytes:
        return Writer().u16(self.code).text8(clip_text(self.reason, MAX_REASON_BYTES)).getvalue()

    @classmethod
    def decode(cls, body: bytes | memoryview) -> Alert:
        r = Reader(body, "ALERT")
        code = r.u16()
        reason = r.text8("alert reason")
        r.end()
        return cls(code, reason)
