"""Ephemeral ECDH over P-256, with the private scalar drawn from an injected source.

Drawing the scalar from the caller's random source (instead of letting
OpenSSL pick it) is what lets the test vectors pin every byte of a handshake.
The default source, ``os.urandom``, is the one OpenSSL draws from too: then
OpenSSL picks the scalar, which costs half as much.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import ec

from ppcp.core.errors import InvalidKeyShare, ProtocolError

POINT_LEN = 65  # uncompressed SEC1: 0x04 || X(32) || Y(32)
SECRET_LEN = 32
_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_MAX_DRAWS = 64

RandomSource = Callable[[int], bytes]


def _draw_scalar(rng: RandomSource) -> int:
    # Rejection sampling keeps the scalar uniform in [1, n-1]; a draw is
    # rejected with probability ~2**-32, so the loop bound is never reached
    # by an honest source.
    for _ in range(_MAX_DRAWS):
        scalar = int.from_bytes(rng(32), "big")
        if 0 < scalar < _ORDER:
            return scalar
    raise ProtocolError("random source produced no valid P-256 scalar")


class EphemeralKey:
    """One side's fresh key pair for exactly one handshake."""

    __slots__ = ("_private", "public_bytes")

    def __init__(self, rng: RandomSource) -> None:
        if rng is os.urandom:
            # The operating system's randomness either way: let OpenSSL draw
            # the scalar from it.  Half the cost of deriving a key from a
            # given scalar (~12 us of a ~110 us handshake side, here).
            self._private = ec.generate_private_key(ec.SECP256R1())
        else:
            self._private = ec.derive_private_key(_draw_scalar(rng), ec.SECP256R1())
        # SEC1 uncompressed encoding, written out: the serialization package
        # would import cryptography's SSH key support too (~8 ms per CLI start).
        point = self._private.public_key().public_numbers()
        self.public_bytes = b"\x04" + point.x.to_bytes(32, "big") + point.y.to_bytes(32, "big")

    def exchange(self, peer_public: bytes) -> bytes:
        """The shared secret (X coordinate); the peer's point is validated first."""
        if len(peer_public) != POINT_LEN or peer_public[0] != 0x04:
            raise InvalidKeyShare("key share is not an uncompressed P-256 point")
        try:
            # from_encoded_point checks the point is on the curve and not the
            # point at infinity (OpenSSL's EC_POINT_oct2point + check_key).
            peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), peer_public)
            return self._private.exchange(ec.ECDH(), peer)
        except ValueError:
            raise InvalidKeyShare("key share is not a valid P-256 point") from None
