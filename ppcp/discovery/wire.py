"""PING and PONG datagrams: byte layouts and tags (sans-I/O).

Normative text: docs/rfc.md section 3.  In short::

    PING = header(type=PING) || nonce[16] || padding || tag[32]
    PONG = header(type=PONG) || nonce[16] || server_id[16] || u16 port
           || vec8 name || vec8 versions || capabilities || tag[32]
    header = "PPCP" || u8 wire version (1) || u8 type || u16 flags
    tag = HMAC-SHA256(K_d, every byte before the tag)
    K_d = HKDF-Expand-Label(psk_key, "ppcp1 discovery", "", 32)

The type byte sits inside the MACed bytes, so a PING tag never verifies as a
PONG tag.  The PONG echoes the PING's nonce, which binds it to that PING: a
recorded PONG does not answer any other PING.

Decoders check length, header and tag before parsing any field, and raise
:class:`~ppcp.core.errors.ProtocolError` (or its subclass :class:`BadTag`) for
anything else than a well-formed, authentic datagram: the fuzzing invariant.
"""

from __future__ import annotations

import hashlib
import hmac

from msgspec import Struct

from ppcp.core.errors import ProtocolError
from ppcp.crypto.schedule import KEY_LEN, expand_label
from ppcp.handshake.messages import (
    MAX_CAPABILITIES,
    MAX_VERSIONS,
    _read_caps,
    _read_name,
    _write_caps,
    check_name,
    valid_capability,
)
from ppcp.utils.codec import Reader, Writer

MAGIC = b"PPCP"
WIRE_VERSION = 1
TYPE_PING = 0x01
TYPE_PONG = 0x02
HEADER_LEN = 8
NONCE_LEN = 16
SERVER_ID_LEN = 16
TAG_LEN = 32
# A PING must leave room for the largest PONG without capabilities (157 bytes).
MIN_PING_SIZE = 192
DEFAULT_PING_SIZE = 384
# Every datagram above this size is dropped unread (fits the IPv6 minimum MTU).
MAX_DATAGRAM = 1200

FLAG_CAPS_TRUNCATED = 0x0001

LABEL_DISCOVERY = b"ppcp1 discovery"


class BadTag(ProtocolError):
    """The datagram's tag does not verify: another PSK group, or forged."""


def discovery_key(psk_key: bytes) -> bytes:
    """K_d, the HMAC key of every discovery tag, from the stretched PSK key."""
    return expand_label(psk_key, LABEL_DISCOVERY, b"", KEY_LEN)


def compute_tag(key: bytes, signed: bytes) -> bytes:
    return hmac.new(key, signed, hashlib.sha256).digest()


def _header(kind: int, flags: int) -> Writer:
    return Writer().raw(MAGIC).u8(WIRE_VERSION).u8(kind).u16(flags)


def _open(data: bytes, kind: int, key: bytes, what: str) -> tuple[Reader, int]:
    """Check size, header and tag; return a reader over the fields after the header."""
    if len(data) > MAX_DATAGRAM:
        raise ProtocolError(f"{what} of {len(data)} bytes exceeds {MAX_DATAGRAM}")
    if len(data) < HEADER_LEN + NONCE_LEN + TAG_LEN:
        raise ProtocolError(f"truncated {what}")
    if data[:4] != MAGIC:
        raise ProtocolError(f"{what}: bad magic")
    if data[4] != WIRE_VERSION:
        raise ProtocolError(f"{what}: unknown discovery version {data[4]}")
    if data[5] != kind:
        raise ProtocolError(f"{what}: unexpected datagram type {data[5]:#04x}")
    signed, tag = data[:-TAG_LEN], data[-TAG_LEN:]
    if not hmac.compare_digest(compute_tag(key, signed), tag):
        raise BadTag(f"{what}: tag does not verify (another PSK group, or forged)")
    flags = int.from_bytes(data[6:8], "big")
    return Reader(signed[HEADER_LEN:], what), flags


class Ping(Struct, frozen=True):
    """A discovery request: a fresh nonce, padded to ``size`` bytes on the wire.

    The padding is what makes a PONG never larger than its PING: a responder
    answers with at most ``size`` bytes, so spoofing a PING's source address
    buys no amplification.
    """

    nonce: bytes
    size: int = DEFAULT_PING_SIZE
    flags: int = 0

    def __post_init__(self) -> None:
        if len(self.nonce) != NONCE_LEN:
            raise ValueError(f"nonce must be {NONCE_LEN} bytes")
        if not MIN_PING_SIZE <= self.size <= MAX_DATAGRAM:
            raise ValueError(f"PING size must be {MIN_PING_SIZE}..{MAX_DATAGRAM} bytes")
        if not 0 <= self.flags <= 0xFFFF:
            raise ValueError("flags must fit a u16")

    def encode(self, key: bytes) -> bytes:
        body = _header(TYPE_PING, self.flags).raw(self.nonce).getvalue()
        signed = body + bytes(self.size - len(body) - TAG_LEN)
        return signed + compute_tag(key, signed)

    @classmethod
    def decode(cls, data: bytes, key: bytes) -> Ping:
        if len(data) < MIN_PING_SIZE:
            raise ProtocolError(f"PING of {len(data)} bytes is below {MIN_PING_SIZE}")
        r, flags = _open(data, TYPE_PING, key, "PING")
        nonce = r.take(NONCE_LEN)
        # The padding's content is ignored: it is covered by the tag anyway.
        return cls(nonce, len(data), flags)


class ServerIdentity(Struct, frozen=True):
    """What a responder says about its server in every PONG."""

    server_id: bytes
    name: str
    port: int
    versions: tuple[int, ...]
    capabilities: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.server_id) != SERVER_ID_LEN:
            raise ValueError(f"server id must be {SERVER_ID_LEN} bytes")
        try:
            check_name(self.name)
        except ProtocolError as exc:  # control characters
            raise ValueError(str(exc)) from None
        if not 0 < self.port <= 0xFFFF:
            raise ValueError(f"TCP port must be 1..65535, not {self.port}")
        if not 0 < len(self.versions) <= MAX_VERSIONS or any(
            not 0 < v < 256 for v in self.versions
        ):
            raise ValueError(f"versions must list 1..{MAX_VERSIONS} integers in 1..255")
        if len(self.capabilities) > MAX_CAPABILITIES or not all(
            valid_capability(c) for c in self.capabilities
        ):
            raise ValueError(f"capabilities must be at most {MAX_CAPABILITIES} valid tokens")
        if len(set(self.capabilities)) != len(self.capabilities):
            raise ValueError("duplicate capability")


class Pong(Struct, frozen=True):
    """A responder's answer to one PING (echoes its nonce)."""

    nonce: bytes
    server: ServerIdentity
    flags: int = 0

    def __post_init__(self) -> None:
        if len(self.nonce) != NONCE_LEN:
            raise ValueError(f"nonce must be {NONCE_LEN} bytes")

    @property
    def capabilities_truncated(self) -> bool:
        return bool(self.flags & FLAG_CAPS_TRUNCATED)

    def _signed(self, caps: tuple[str, ...], flags: int) -> bytes:
        s = self.server
        w = _header(TYPE_PONG, flags).raw(self.nonce).raw(s.server_id).u16(s.port)
        w.text8(s.name).vec8(bytes(s.versions))
        _write_caps(w, caps)
        return w.getvalue()

    def encode(self, key: bytes, max_size: int = MAX_DATAGRAM) -> bytes:
        """The tagged PONG, at most ``max_size`` bytes.

        Capabilities that do not fit are dropped from the end and the
        CAPS_TRUNCATED flag is set; the client may ask again with a larger PING.
        """
        caps, flags = self.server.capabilities, self.flags
        signed = self._signed(caps, flags)
        while len(signed) + TAG_LEN > max_size:
            if not caps:
                raise ValueError(f"a PONG cannot fit in {max_size} bytes")
            caps, flags = caps[:-1], flags | FLAG_CAPS_TRUNCATED
            signed = self._signed(caps, flags)
        return signed + compute_tag(key, signed)

    @classmethod
    def decode(cls, data: bytes, key: bytes) -> Pong:
        r, flags = _open(data, TYPE_PONG, key, "PONG")
        nonce = r.take(NONCE_LEN)
        server_id = r.take(SERVER_ID_LEN)
        port = r.u16()
        name = _read_name(r)
        versions = tuple(r.vec8())
        caps = _read_caps(r, "PONG")
        try:
            server = ServerIdentity(server_id, name, port, versions, caps)
        except ValueError as exc:
            raise ProtocolError(f"PONG: {exc}") from None
        return cls(nonce, server, flags)
