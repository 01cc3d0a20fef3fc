"""Pre-shared keys: parsing, stretching, generated keys and the weak-key warning."""

from __future__ import annotations

import hashlib
import re
import warnings

import pytest
from core_helpers import Pair

import ppcp
from ppcp.core.errors import AuthenticationError, PPCPError
from ppcp.crypto import psk as psk_mod
from ppcp.crypto.psk import (
    KEY_PREFIX,
    PBKDF2_ITERATIONS,
    PBKDF2_SALT,
    InvalidPSK,
    WeakPSKWarning,
    derive_psk_key,
    generate_psk,
)

STRONG = "correct horse battery staple 2024!"


def test_str_and_bytes_psk_are_equal() -> None:
    assert derive_psk_key(STRONG) == derive_psk_key(STRONG.encode())
    unicode = "pässwörd-ünïcödé-ßtrøng-κλειδί"
    assert derive_psk_key(unicode) == derive_psk_key(unicode.encode("utf-8"))
    key = generate_psk()
    assert derive_psk_key(key) == derive_psk_key(key.encode())


def test_generated_key_format() -> None:
    keys = {generate_psk() for _ in range(8)}
    assert len(keys) == 8
    for key in keys:
        assert re.fullmatch(r"ppcp-psk-[0-9a-f]{64}", key)
        assert key.startswith(KEY_PREFIX)


def test_generated_key_is_used_without_stretching(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_stretch(_: bytes) -> bytes:
        raise AssertionError("a generated key must not go through PBKDF2")

    monkeypatch.setattr(psk_mod, "_stretch", no_stretch)
    key = generate_psk()
    raw = bytes.fromhex(key[len(KEY_PREFIX) :])
    assert derive_psk_key(key) == raw
    # Surrounding whitespace (a key read from a file) is ignored.
    assert derive_psk_key(f"  {key}\n") == raw
    assert derive_psk_key(key.encode() + b"\r\n") == raw
    # Retyped in capitals it is still the key, not a long passphrase (a different key).
    assert derive_psk_key(key.upper()) == raw
    assert derive_psk_key("Ppcp-Psk-" + key[len(KEY_PREFIX) :]) == raw


@pytest.mark.parametrize(
    "bad",
    [
        KEY_PREFIX,
        KEY_PREFIX + "ab" * 31,  # 62 hex digits
        KEY_PREFIX + "ab" * 31 + "a",  # odd length
        KEY_PREFIX + "ab" * 33,  # 66 hex digits
        KEY_PREFIX + "zz" * 32,  # not hex
        KEY_PREFIX + "ab" * 16 + " " + "ab" * 16,  # inner space
        KEY_PREFIX + "é" * 64,  # not ASCII
    ],
)
def test_malformed_generated_key(bad: str) -> None:
    with pytest.raises(InvalidPSK, match="malformed"):
        derive_psk_key(bad)
    with pytest.raises(InvalidPSK):
        derive_psk_key(bad.encode())


@pytest.mark.parametrize("empty", ["", b"", "   ", b"\n\t "])
def test_empty_psk(empty: str | bytes) -> None:
    with pytest.raises(InvalidPSK):
        derive_psk_key(empty)


def test_invalid_psk_is_a_ppcp_error_and_a_value_error() -> None:
    assert issubclass(InvalidPSK, PPCPError)
    assert issubclass(InvalidPSK, ValueError)
    assert ppcp.InvalidPSK is InvalidPSK


@pytest.mark.parametrize("weak", [b"super-secret-key", "password", "aaaaaaaaaaaaaaaaaaaaaaaaaaaa"])
def test_weak_passphrase_warns(weak: str | bytes) -> None:
    with pytest.warns(WeakPSKWarning):
        key = derive_psk_key(weak)
    assert len(key) == 32
    # Every call warns, even though the stretching is cached.
    with pytest.warns(WeakPSKWarning):
        derive_psk_key(weak)


def test_strong_passphrase_does_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        derive_psk_key(STRONG)
        derive_psk_key(generate_psk())


def test_pbkdf2_parameters() -> None:
    assert PBKDF2_ITERATIONS >= 600_000
    expected = hashlib.pbkdf2_hmac("sha256", STRONG.encode(), PBKDF2_SALT, PBKDF2_ITERATIONS, 32)
    assert derive_psk_key(STRONG) == expected
    # Not the raw passphrase and not a single hash.
    assert expected != hashlib.sha256(STRONG.encode()).digest()


def test_passphrase_and_generated_key_do_not_collide() -> None:
    key = generate_psk()
    assert derive_psk_key(key) != derive_psk_key(key.upper().replace("PPCP-PSK-", "x-"))


def test_sessions_with_equal_psks_interoperate() -> None:
    # A str PSK on one end and the same bytes on the other make a session.
    p = Pair(client_psk=derive_psk_key(STRONG), server_psk=derive_psk_key(STRONG.encode()))
    p.established()
    with pytest.warns(WeakPSKWarning):
        weak = derive_psk_key("short")
    p = Pair(client_psk=weak, server_psk=derive_psk_key(STRONG))
    p.handshake()
    assert isinstance(p.server.error, AuthenticationError)
