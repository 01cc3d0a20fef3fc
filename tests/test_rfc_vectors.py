"""docs/rfc.md Appendix A: the printed vectors are current, and they follow from the RFC text.

The second half re-derives every vector from the inputs with plain primitives
(hashlib, hmac, P-256 and AES-GCM from ``cryptography``), following the RFC's
sections rather than ppcp's own code, so a vector that only the implementation
agrees with fails here.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ppcp.utils import vectors as v

RFC = Path(__file__).resolve().parents[1] / "docs" / "rfc.md"


@pytest.fixture(scope="module")
def vecs() -> dict[str, bytes]:
    generated = v.generate()
    names = [name for name, _ in generated]
    assert len(names) == len(set(names)), "duplicate vector names"
    return {name: bytes.fromhex(value) for name, value in generated}


def test_appendix_matches_generated_vectors() -> None:
    text = RFC.read_text(encoding="utf-8")
    assert v.extract_block(text, "vectors") == v.vectors_markdown(), (
        "docs/rfc.md Appendix A is stale: run `python -m ppcp.utils.vectors --update`"
    )


def test_generation_is_deterministic() -> None:
    assert v.generate() == v.generate()


def test_script_mode_prints_the_appendix(capsys: pytest.CaptureFixture[str]) -> None:
    assert v.main([]) == 0
    assert capsys.readouterr().out == v.vectors_markdown() + "\n"
    assert v.main(["--state-table"]) == 0
    assert capsys.readouterr().out == v.state_table() + "\n"


# -- independent re-derivation (RFC sections 4 to 10) ---------------------------------


def hkdf_expand_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    info = bytes([len(label)]) + label + bytes([len(context)]) + context
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(secret, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def stream(seed: bytes, n: int) -> bytes:
    out = b"".join(hashlib.sha256(seed + i.to_bytes(8, "big")).digest() for i in range(n // 32 + 1))
    return out[:n]


def public_key(scalar: bytes) -> bytes:
    key = ec.derive_private_key(int.from_bytes(scalar, "big"), ec.SECP256R1())
    return key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def split_frame(frame: bytes) -> tuple[int, int, bytes, bytes]:
    ftype, flags, length = struct.unpack(">BBI", frame[:6])
    assert len(frame) == 6 + length
    return ftype, flags, frame[:6], frame[6:]


def parse_hello(body: bytes, client: bool) -> dict[str, object]:
    assert body[:4] == b"PPCP"
    pos = 4
    if client:
        n = body[pos]
        versions: object = list(body[pos + 1 : pos + 1 + n])
        pos += 1 + n
    else:
        versions = body[pos]
        pos += 1
    random, key_share = body[pos : pos + 32], body[pos + 32 : pos + 97]
    pos += 97
    name_len = body[pos]
    name = body[pos + 1 : pos + 1 + name_len].decode()
    pos += 1 + name_len
    caps = []
    for _ in range(body[pos]):
        pos += 1
        caps.append(body[pos + 1 : pos + 1 + body[pos]].decode("ascii"))
        pos += body[pos]
    assert pos + 1 == len(body), "trailing bytes"
    return {
        "versions": versions,
        "random": random,
        "key_share": key_share,
        "name": name,
        "caps": caps,
    }


def open_record(key: bytes, iv: bytes, seq: int, frame: bytes) -> tuple[int, int, bytes]:
    ftype, flags, header, body = split_frame(frame)
    nonce = bytes(a ^ b for a, b in zip(iv, bytes(4) + seq.to_bytes(8, "big"), strict=True))
    return ftype, flags, AESGCM(key).decrypt(nonce, body, header)


def test_psk(vecs: dict[str, bytes]) -> None:
    assert v.PSK.removeprefix("ppcp-psk-") == bytes(range(32)).hex()
    assert vecs["psk_key"] == bytes(range(32))
    stretched = hashlib.pbkdf2_hmac(
        "sha256", v.PASSPHRASE.encode(), b"ppcp/v1 passphrase", 600_000, 32
    )
    assert vecs["passphrase_key"] == stretched


def test_randoms_and_key_shares(vecs: dict[str, bytes]) -> None:
    for side, seed in (("client", v.CLIENT_SEED), ("server", v.SERVER_SEED)):
        drawn = stream(seed, 64)
        assert vecs[f"{side}_random"] == drawn[:32]
        assert vecs[f"{side}_private_scalar"] == drawn[32:]
        assert vecs[f"{side}_public_key"] == public_key(drawn[32:])


def test_hello_frames(vecs: dict[str, bytes]) -> None:
    ftype, flags, _, body = split_frame(vecs["client_hello_frame"])
    assert (ftype, flags) == (0x01, 0)
    assert parse_hello(body, client=True) == {
        "versions": [1],
        "random": vecs["client_random"],
        "key_share": vecs["client_public_key"],
        "name": v.CLIENT_NAME,
        "caps": list(v.CAPABILITIES),
    }
    ftype, flags, _, body = split_frame(vecs["server_hello_frame"])
    assert (ftype, flags) == (0x02, 0)
    assert parse_hello(body, client=False) == {
        "versions": 1,
        "random": vecs["server_random"],
        "key_share": vecs["server_public_key"],
        "name": v.SERVER_NAME,
        "caps": list(v.CAPABILITIES),
    }


def test_key_schedule_and_proofs(vecs: dict[str, bytes]) -> None:
    client = ec.derive_private_key(
        int.from_bytes(vecs["client_private_scalar"], "big"), ec.SECP256R1()
    )
    server_pub = ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP256R1(), vecs["server_public_key"]
    )
    ecdh = client.exchange(ec.ECDH(), server_pub)
    assert vecs["ecdh_secret"] == ecdh

    ch, sh = vecs["client_hello_frame"], vecs["server_hello_frame"]
    ca, sa = vecs["client_auth_frame"], vecs["server_auth_frame"]
    hello_hash = hashlib.sha256(ch + sh).digest()
    assert vecs["hello_hash"] == hello_hash
    hs = hmac.new(vecs["psk_key"], ecdh, hashlib.sha256).digest()
    assert vecs["handshake_secret"] == hs
    cak = hkdf_expand_label(hs, b"ppcp1 c auth", hello_hash, 32)
    sak = hkdf_expand_label(hs, b"ppcp1 s auth", hello_hash, 32)
    assert (vecs["client_auth_key"], vecs["server_auth_key"]) == (cak, sak)

    client_proof = hmac.new(cak, b"ppcp1 client proof" + hello_hash, hashlib.sha256).digest()
    assert ca == bytes([0x03, 0]) + (32).to_bytes(4, "big") + client_proof
    client_auth_hash = hashlib.sha256(ch + sh + ca).digest()
    assert vecs["client_auth_hash"] == client_auth_hash
    server_proof = hmac.new(sak, b"ppcp1 server proof" + client_auth_hash, hashlib.sha256).digest()
    assert sa == bytes([0x04, 0]) + (32).to_bytes(4, "big") + server_proof

    full_hash = hashlib.sha256(ch + sh + ca + sa).digest()
    assert vecs["full_hash"] == full_hash
    assert vecs["session_id"] == full_hash[:16]
    for prefix, label in (("c2s", b"ppcp1 c2s traffic"), ("s2c", b"ppcp1 s2c traffic")):
        secret = hkdf_expand_label(hs, label, full_hash, 32)
        assert vecs[f"{prefix}_secret"] == secret
        assert vecs[f"{prefix}_key"] == hkdf_expand_label(secret, b"ppcp1 key", b"", 32)
        assert vecs[f"{prefix}_iv"] == hkdf_expand_label(secret, b"ppcp1 iv", b"", 12)


def test_records(vecs: dict[str, bytes]) -> None:
    ck, civ = vecs["c2s_key"], vecs["c2s_iv"]
    sk, siv = vecs["s2c_key"], vecs["s2c_iv"]
    assert open_record(ck, civ, 0, vecs["c2s_record_0"]) == (0x10, 0, b"hello")
    assert open_record(ck, civ, 1, vecs["c2s_record_1"]) == (0x10, 0, b"world")
    assert open_record(sk, siv, 0, vecs["s2c_record_0"]) == (0x10, 0, v.SERVER_MESSAGE)
    # Length field = plaintext + 16-byte tag.
    assert vecs["c2s_record_0"][2:6] == (5 + 16).to_bytes(4, "big")

    # KEY_UPDATE: empty plaintext under the old key, next record under next(S) with seq 0.
    assert open_record(ck, civ, 2, vecs["c2s_key_update_record"]) == (0x12, 0, b"")
    nxt = hkdf_expand_label(vecs["c2s_secret"], b"ppcp1 key update", b"", 32)
    assert vecs["c2s_updated_secret"] == nxt
    nk = hkdf_expand_label(nxt, b"ppcp1 key", b"", 32)
    niv = hkdf_expand_label(nxt, b"ppcp1 iv", b"", 12)
    assert (vecs["c2s_updated_key"], vecs["c2s_updated_iv"]) == (nk, niv)
    assert open_record(nk, niv, 0, vecs["c2s_updated_record_0"]) == (
        0x10,
        0,
        v.REKEYED_MESSAGE,
    )

    # CLOSE {code NORMAL, empty reason} from the client, and the server's answer.
    close_body = (0).to_bytes(2, "big") + b"\x00"
    assert open_record(nk, niv, 1, vecs["c2s_close_record"]) == (0x11, 0, close_body)
    assert open_record(sk, siv, 1, vecs["s2c_close_record"]) == (0x11, 0, close_body)
