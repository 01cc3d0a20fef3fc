"""PING/PONG codec: round trips, exact layout, tags, and the fuzzing invariant."""

from __future__ import annotations

import contextlib
import os

import pytest
from discovery_helpers import make_identity
from hypothesis import given, settings
from hypothesis import strategies as st

from ppcp.core.errors import PPCPError, ProtocolError
from ppcp.discovery.wire import (
    DEFAULT_PING_SIZE,
    MAX_DATAGRAM,
    MIN_PING_SIZE,
    TAG_LEN,
    BadTag,
    Ping,
    Pong,
    ServerIdentity,
    compute_tag,
    discovery_key,
)

KEY = discovery_key(bytes(32))
OTHER_KEY = discovery_key(bytes([1]) * 32)
NONCE = bytes(range(16))


def test_ping_round_trip_and_layout() -> None:
    data = Ping(NONCE).encode(KEY)
    assert len(data) == DEFAULT_PING_SIZE
    assert data[:8] == b"PPCP\x01\x01\x00\x00"
    assert data[8:24] == NONCE
    assert data[24:-TAG_LEN] == bytes(DEFAULT_PING_SIZE - 24 - TAG_LEN)
    assert data[-TAG_LEN:] == compute_tag(KEY, data[:-TAG_LEN])
    assert Ping.decode(data, KEY) == Ping(NONCE)


def test_pong_round_trip_and_layout() -> None:
    ident = make_identity("alpha", 9000, ("msg", "exec"), bytes(range(16, 32)))
    data = Pong(NONCE, ident).encode(KEY)
    assert data[:8] == b"PPCP\x01\x02\x00\x00"
    assert data[8:24] == NONCE
    assert data[24:40] == ident.server_id
    assert data[40:42] == (9000).to_bytes(2, "big")
    assert data[42:48] == b"\x05alpha"
    decoded = Pong.decode(data, KEY)
    assert decoded == Pong(NONCE, ident)
    assert not decoded.capabilities_truncated


def test_wrong_key_is_bad_tag() -> None:
    with pytest.raises(BadTag):
        Ping.decode(Ping(NONCE).encode(OTHER_KEY), KEY)
    with pytest.raises(BadTag):
        Pong.decode(Pong(NONCE, make_identity()).encode(OTHER_KEY), KEY)


def test_ping_tag_never_verifies_as_pong() -> None:
    """Domain separation: the type byte is inside the MACed bytes."""
    ping = Ping(NONCE).encode(KEY)
    forged = ping[:5] + b"\x02" + ping[6:]
    with pytest.raises(BadTag):
        Pong.decode(forged, KEY)
    with pytest.raises(ProtocolError):
        Pong.decode(ping, KEY)


def test_every_bit_flip_is_rejected() -> None:
    data = Pong(NONCE, make_identity()).encode(KEY)
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 0x01
        with pytest.raises(ProtocolError):
            Pong.decode(bytes(flipped), KEY)


def test_ping_size_bounds() -> None:
    assert len(Ping(NONCE, MIN_PING_SIZE).encode(KEY)) == MIN_PING_SIZE
    assert len(Ping(NONCE, MAX_DATAGRAM).encode(KEY)) == MAX_DATAGRAM
    for size in (MIN_PING_SIZE - 1, MAX_DATAGRAM + 1):
        with pytest.raises(ValueError):
            Ping(NONCE, size)
    # A PING below the minimum is refused even with a valid tag.
    short = Ping(NONCE, MIN_PING_SIZE).encode(KEY)[: -TAG_LEN - 1]
    with pytest.raises(ProtocolError):
        Ping.decode(short + compute_tag(KEY, short), KEY)


def test_pong_never_exceeds_its_limit_and_flags_truncation() -> None:
    caps = tuple(f"cap{i:02d}-{'x' * 24}" for i in range(32))
    ident = ServerIdentity(bytes(16), "n" * 64, 1, tuple(range(1, 17)), caps)
    full = Pong(NONCE, ident).encode(KEY)
    assert len(full) > MIN_PING_SIZE
    small = Pong(NONCE, ident).encode(KEY, MIN_PING_SIZE)
    assert len(small) <= MIN_PING_SIZE
    decoded = Pong.decode(small, KEY)
    assert decoded.capabilities_truncated
    assert decoded.server.capabilities == caps[: len(decoded.server.capabilities)]
    assert decoded.server.name == "n" * 64


@pytest.mark.parametrize(
    "kwargs",
    [
        {"server_id": b"short"},
        {"name": ""},
        {"name": "x" * 65},
        {"name": "bad\x1bname"},
        {"port": 0},
        {"versions": ()},
        {"versions": (0,)},
        {"capabilities": ("Not A Token",)},
        {"capabilities": ("msg", "msg")},
    ],
)
def test_identity_is_validated(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {
        "server_id": bytes(16),
        "name": "alpha",
        "port": 1,
        "versions": (1,),
        "capabilities": (),
    }
    with pytest.raises(ValueError):
        ServerIdentity(**{**base, **kwargs})  # type: ignore[arg-type]


def test_authentic_but_malformed_pong_is_protocol_error() -> None:
    """A sender holding the key still cannot make us accept bad fields."""
    body = bytearray(Pong(NONCE, make_identity("alpha")).encode(KEY)[:-TAG_LEN])
    body[42:48] = b"\x05al\x00ha"  # control character in the name
    with pytest.raises(ProtocolError):
        Pong.decode(bytes(body) + compute_tag(KEY, bytes(body)), KEY)
    body = bytearray(Pong(NONCE, make_identity("alpha")).encode(KEY)[:-TAG_LEN]) + b"junk"
    with pytest.raises(ProtocolError):
        Pong.decode(bytes(body) + compute_tag(KEY, bytes(body)), KEY)


# -- fuzzing invariant: decode or raise a PPCPError, nothing else -----------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1400))
def test_random_bytes_never_escape(data: bytes) -> None:
    for codec in (Ping, Pong):
        with contextlib.suppress(PPCPError):
            codec.decode(data, KEY)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(min_size=0, max_size=300),
    st.sampled_from([b"PPCP\x01\x01\x00\x00", b"PPCP\x01\x02\x00\x00"]),
)
def test_authentic_garbage_never_escapes(body: bytes, header: bytes) -> None:
    """Validly tagged datagrams with random fields: the parser behind the tag."""
    signed = header + body
    data = signed + compute_tag(KEY, signed)
    for codec in (Ping, Pong):
        with contextlib.suppress(PPCPError):
            codec.decode(data, KEY)


@settings(max_examples=200, deadline=None)
@given(
    st.text(min_size=1, max_size=20).filter(lambda s: s.isprintable()),
    st.integers(1, 65535),
    st.lists(st.integers(1, 255), min_size=1, max_size=16),
    st.lists(st.from_regex(r"[a-z0-9][a-z0-9.-]{0,31}", fullmatch=True), max_size=32, unique=True),
    st.integers(MIN_PING_SIZE, MAX_DATAGRAM),
)
def test_pong_round_trips_within_any_ping_size(
    name: str, port: int, versions: list[int], caps: list[str], limit: int
) -> None:
    ident = ServerIdentity(os.urandom(16), name, port, tuple(versions), tuple(caps))
    data = Pong(NONCE, ident).encode(KEY, limit)
    assert len(data) <= limit
    got = Pong.decode(data, KEY).server
    assert (got.name, got.port, got.versions) == (name, port, tuple(versions))
    assert got.capabilities == tuple(caps)[: len(got.capabilities)]
