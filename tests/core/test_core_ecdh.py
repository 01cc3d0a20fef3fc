"""Ephemeral P-256 keys: both ways of drawing the scalar agree on the protocol's terms."""

from __future__ import annotations

import hashlib
import os

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ppcp.core.errors import InvalidKeyShare, ProtocolError
from ppcp.key_exchange.ecdh import POINT_LEN, EphemeralKey, RandomSource

P256_PRIME = 2**256 - 2**224 + 2**192 + 2**96 - 1


def counter_rng(seed: bytes) -> RandomSource:
    state = {"n": 0}

    def rng(n: int) -> bytes:
        state["n"] += 1
        return hashlib.sha256(seed + state["n"].to_bytes(4, "big")).digest()[:n]

    return rng


def on_curve(point: bytes) -> bool:
    x, y = int.from_bytes(point[1:33], "big"), int.from_bytes(point[33:], "big")
    b = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
    return (y * y - (x**3 - 3 * x + b)) % P256_PRIME == 0


@pytest.mark.parametrize("source", ["os.urandom", "injected"])
def test_keys_are_fresh_valid_points_and_agree(source: str) -> None:
    def make() -> EphemeralKey:
        return EphemeralKey(os.urandom if source == "os.urandom" else counter_rng(os.urandom(8)))

    a, b = make(), make()
    for key in (a, b):
        assert len(key.public_bytes) == POINT_LEN and key.public_bytes[0] == 0x04
        assert on_curve(key.public_bytes)
    assert a.public_bytes != b.public_bytes
    assert a.exchange(b.public_bytes) == b.exchange(a.public_bytes)
    assert len(a.exchange(b.public_bytes)) == 32


def test_an_injected_source_pins_the_key() -> None:
    first = EphemeralKey(counter_rng(b"seed"))
    again = EphemeralKey(counter_rng(b"seed"))
    assert first.public_bytes == again.public_bytes
    scalar = int.from_bytes(counter_rng(b"seed")(32), "big")
    expected = ec.derive_private_key(scalar, ec.SECP256R1()).public_key().public_numbers()
    assert first.public_bytes[1:] == expected.x.to_bytes(32, "big") + expected.y.to_bytes(32, "big")


def test_a_source_that_never_gives_a_valid_scalar_is_refused() -> None:
    with pytest.raises(ProtocolError, match="no valid P-256 scalar"):
        EphemeralKey(lambda n: b"\xff" * n)


def test_a_point_off_the_curve_is_refused() -> None:
    key = EphemeralKey(os.urandom)
    bad = bytearray(key.public_bytes)
    bad[-1] ^= 1
    with pytest.raises(InvalidKeyShare):
        key.exchange(bytes(bad))
