"""The PPCP key schedule (RFC section "Key schedule").

All derivations are HKDF-SHA256 (RFC 5869) with an unambiguous label encoding::

    info = u8(len(label)) || label || u8(len(context)) || context

where every label is ASCII and starts with ``"ppcp1 "``.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from msgspec import Struct

from ppcp.utils.records import repr_hiding

HASH_LEN = 32
KEY_LEN = 32
IV_LEN = 12

LABEL_CLIENT_AUTH = b"ppcp1 c auth"
LABEL_SERVER_AUTH = b"ppcp1 s auth"
LABEL_CLIENT_PROOF = b"ppcp1 client proof"
LABEL_SERVER_PROOF = b"ppcp1 server proof"
LABEL_C2S = b"ppcp1 c2s traffic"
LABEL_S2C = b"ppcp1 s2c traffic"
LABEL_KEY = b"ppcp1 key"
LABEL_IV = b"ppcp1 iv"
LABEL_KEY_UPDATE = b"ppcp1 key update"


def transcript_hash(*messages: bytes) -> bytes:
    return hashlib.sha256(b"".join(messages)).digest()


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    # RFC 5869 section 2.2: Extract is HMAC-Hash(salt, IKM).  cryptography
    # only exposes it fused with Expand, and the schedule needs the PRK itself.
    return hmac.digest(salt, ikm, "sha256")


_SHA256 = hashes.SHA256()


def expand_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    info = bytes((len(label),)) + label + bytes((len(context),)) + context
    return HKDFExpand(_SHA256, length, info).derive(secret)


def proof(key: bytes, label: bytes, transcript: bytes) -> bytes:
    # hmac.digest: OpenSSL's one-shot HMAC, without building an HMAC object.
    return hmac.digest(key, label + transcript, "sha256")


def proofs_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


class TrafficKeys(Struct, frozen=True):
    secret: bytes
    key: bytes
    iv: bytes

    def __repr__(self) -> str:
        return repr_hiding(self)

    @classmethod
    def from_secret(cls, secret: bytes) -> TrafficKeys:
        return cls(
            secret,
            expand_label(secret, LABEL_KEY, b"", KEY_LEN),
            expand_label(secret, LABEL_IV, b"", IV_LEN),
        )

    def updated(self) -> TrafficKeys:
        return TrafficKeys.from_secret(expand_label(self.secret, LABEL_KEY_UPDATE, b"", HASH_LEN))


class HandshakeSecrets(Struct, frozen=True):
    """Everything derived from (PSK, ECDH secret, hello transcript)."""

    handshake_secret: bytes
    client_auth_key: bytes
    server_auth_key: bytes

    def __repr__(self) -> str:
        return repr_hiding(self)

    @classmethod
    def derive(cls, psk_key: bytes, ecdh_secret: bytes, hello_hash: bytes) -> HandshakeSecrets:
        hs = hkdf_extract(psk_key, ecdh_secret)
        return cls(
            hs,
            expand_label(hs, LABEL_CLIENT_AUTH, hello_hash, KEY_LEN),
            expand_label(hs, LABEL_SERVER_AUTH, hello_hash, KEY_LEN),
        )

    def client_proof(self, hello_hash: bytes) -> bytes:
        return proof(self.client_auth_key, LABEL_CLIENT_PROOF, hello_hash)

    def server_proof(self, client_auth_hash: bytes) -> bytes:
        return proof(self.server_auth_key, LABEL_SERVER_PROOF, client_auth_hash)

    def traffic(self, full_hash: bytes) -> tuple[TrafficKeys, TrafficKeys]:
        """(client-to-server, server-to-client) keys."""
        c2s = expand_label(self.handshake_secret, LABEL_C2S, full_hash, HASH_LEN)
        s2c = expand_label(self.handshake_secret, LABEL_S2C, full_hash, HASH_LEN)
        return TrafficKeys.from_secret(c2s), TrafficKeys.from_secret(s2c)
