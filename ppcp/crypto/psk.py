"""Pre-shared keys: parsing, stretching, generation and the weak-key warning.

Two kinds of PSK exist (RFC section "Pre-shared key"):

* a *generated key*, the printable form ``ppcp-psk-`` + 64 hex digits that
  :func:`generate_psk` returns; it already holds 256 random bits and is used
  directly;
* a *passphrase*: anything else, ``bytes`` or ``str``.  It is stretched once per
  process with PBKDF2-HMAC-SHA256 (:data:`PBKDF2_ITERATIONS`), which multiplies
  the cost of every guess in an offline dictionary attack.
"""

from __future__ import annotations

import functools
import re
import warnings

from ppcp.core.errors import PPCPError

KEY_PREFIX = "ppcp-psk-"
KEY_BYTES = 32
PBKDF2_ITERATIONS = 600_000
PBKDF2_SALT = b"ppcp/v1 passphrase"
MIN_PASSPHRASE_CHARS = 20
MIN_DISTINCT_CHARS = 10
_HEX_KEY = re.compile(rb"[0-9a-fA-F]{%d}" % (2 * KEY_BYTES))


class WeakPSKWarning(UserWarning):
    """The pre-shared key is a short or low-entropy passphrase.

    PPCP still works with it, but anyone who records a discovery exchange, or
    who impersonates a server to a client, can test guesses against it offline
    (RFC section "Offline dictionary attacks").  Use ``ppcp keygen`` /
    :func:`generate_psk` instead.
    """


class InvalidPSK(PPCPError, ValueError):
    """The pre-shared key cannot be used (empty, or a malformed generated key)."""


def generate_psk() -> str:
    """A fresh random 256-bit key in printable form (``ppcp-psk-`` + 64 hex digits)."""
    import secrets  # here, not at the top: every client imports this module, few make keys

    return KEY_PREFIX + secrets.token_hex(KEY_BYTES)


def is_weak_passphrase(passphrase: bytes) -> bool:
    return len(passphrase) < MIN_PASSPHRASE_CHARS or len(set(passphrase)) < MIN_DISTINCT_CHARS


def derive_psk_key(psk: bytes | str) -> bytes:
    """The 32-byte key every other PPCP derivation starts from.

    Warns with :class:`WeakPSKWarning` for a weak passphrase (every call, so
    each caller sees it; the stretching itself is cached per process).
    """
    raw = psk.encode("utf-8") if isinstance(psk, str) else bytes(psk)
    raw = raw.strip()
    if not raw:
        raise InvalidPSK("the pre-shared key is empty")
    # The prefix in any letter case: a key retyped in capitals would otherwise be a
    # long passphrase, silently a different key (no warning: it is not weak).
    if raw[: len(KEY_PREFIX)].lower() == KEY_PREFIX.encode():
        body = raw[len(KEY_PREFIX) :]
        # Exactly 64 hex digits: bytes.fromhex alone would also accept inner whitespace.
        key = bytes.fromhex(body.decode("ascii")) if _HEX_KEY.fullmatch(body) else b""
        if len(key) != KEY_BYTES:
            raise InvalidPSK(
                f"malformed generated key: expected {KEY_PREFIX!r} followed by "
                f"{2 * KEY_BYTES} hex digits"
            )
        return key
    if is_weak_passphrase(raw):
        warnings.warn(
            f"weak pre-shared key: passphrases shorter than {MIN_PASSPHRASE_CHARS} characters "
            f"or with fewer than {MIN_DISTINCT_CHARS} distinct characters can be guessed "
            "offline; generate one with `ppcp keygen` or ppcp.generate_psk()",
            WeakPSKWarning,
            stacklevel=3,
        )
    return _stretch(raw)


@functools.lru_cache(maxsize=16)
def _stretch(passphrase: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

    kdf = PBKDF2HMAC(hashes.SHA256(), KEY_BYTES, PBKDF2_SALT, PBKDF2_ITERATIONS)
    return kdf.derive(passphrase)
