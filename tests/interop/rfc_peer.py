"""An independent PPCP client, written from docs/rfc.md and docs/diagram.md alone.

This module is deliberately NOT built on the ``ppcp`` package: it was written from the
specification only (no code under ``ppcp/`` was read and nothing from it is imported), so
that the interoperability tests in ``test_rfc_peer.py`` check the RFC and the reference
server against each other. Do not "deduplicate" it into the library or replace its pieces
with library helpers: its whole value is that it is a second, independent implementation.
Where the RFC was unclear, the reading chosen is marked ``RFC-READING`` in a comment and
recorded in the interop findings.

Scope: the client role of sections 4 to 11 and 13 (frames, handshake, key schedule, PSK,
record layer, orderly close), heartbeats (15.8), the channel layer (15.2 to 15.6) with the
``exec`` and ``message`` services (15.10.2, 15.10.4), a single-file ``file-get`` (16), and
recomputation of the published test vectors (Appendix A.1 to A.3). Blocking sockets only;
standard library plus ``cryptography``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import select
import socket
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

# ---------------------------------------------------------------------------------------
# Constants (sections 4, 8.4, 13)

PROTOCOL_VERSION = 1
MAGIC = b"PPCP"

CLIENT_HELLO = 0x01
SERVER_HELLO = 0x02
CLIENT_AUTH = 0x03
SERVER_AUTH = 0x04
ALERT = 0x05
MESSAGE = 0x10
CLOSE = 0x11
KEY_UPDATE = 0x12
HEARTBEAT = 0x13
CHANNEL_OPEN = 0x20
CHANNEL_ACCEPT = 0x21
CHANNEL_REJECT = 0x22
CHANNEL_DATA = 0x23
CHANNEL_EOF = 0x24
CHANNEL_CLOSE = 0x25
WINDOW_ADJUST = 0x26
CHANNEL_REQUEST = 0x27

HANDSHAKE_TYPES = {CLIENT_HELLO, SERVER_HELLO, CLIENT_AUTH, SERVER_AUTH, ALERT}
RECORD_TYPES = {MESSAGE, CLOSE, KEY_UPDATE, HEARTBEAT} | set(range(0x20, 0x28))
CHANNEL_TYPES = set(range(0x20, 0x28))

FLAG_MORE = 0x01
FLAG_REPLY = 0x01

MAX_HANDSHAKE_BODY = 1024
MAX_RECORD_PLAINTEXT = 2098176
MAX_RECORD_BODY = MAX_RECORD_PLAINTEXT + 16
TAG_LEN = 16
MAX_WINDOW = 2**31 - 1
MAX_PAYLOAD = 65536
MAX_MESSAGE_SIZE = 16 * 2**20

CODES = {
    0x0000: "NORMAL",
    0x0001: "PROTOCOL_ERROR",
    0x0002: "VERSION_MISMATCH",
    0x0003: "AUTH_FAILED",
    0x0004: "BAD_KEY_SHARE",
    0x0005: "FRAME_TOO_LARGE",
    0x0006: "DECRYPT_ERROR",
    0x0007: "HANDSHAKE_TIMEOUT",
    0x0008: "SERVER_BUSY",
    0x0009: "INTERNAL_ERROR",
    0x000A: "MESSAGE_TOO_LARGE",
    0x000B: "HEARTBEAT_TIMEOUT",
    0x000C: "GOING_AWAY",
    0x000D: "RATE_LIMITED",
    0x000E: "FLOW_CONTROL_ERROR",
    0x0100: "CHANNEL_ERROR",
    0x0101: "CHANNEL_REJECTED",
    0x0102: "POLICY_DENIED",
    0x0103: "PATH_REFUSED",
    0x0104: "TRANSFER_FAILED",
    0xFFFF: "CONNECTION_LOST",
}
CODE = {name: value for value, name in CODES.items()}

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
P256_PRIME = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF

TOKEN_RE = re.compile(r"[a-z0-9][a-z0-9.-]{0,31}")  # used with fullmatch (section 5.1)
ENAME_RE = re.compile(r": (E[A-Z0-9]+): ")
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class PPCPPeerError(Exception):
    """A session-level failure, with the close code of section 13."""

    def __init__(self, code: int, message: str = "", *, remote: bool = False) -> None:
        self.code = code
        self.remote = remote
        self.reason = message
        who = "peer reported" if remote else "local"
        super().__init__(f"{CODES.get(code, hex(code))} ({who}): {message}")


class ChannelFailure(Exception):
    """A channel was rejected or closed with a non-NORMAL code; the session lives on."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{CODES.get(code, hex(code))}: {reason}")


# ---------------------------------------------------------------------------------------
# Section 9: pre-shared key

PSK_PREFIX = b"ppcp-psk-"
PASSPHRASE_SALT = b"ppcp/v1 passphrase"
PBKDF2_ITERATIONS = 600_000
_ASCII_WS = b" \t\n\x0b\x0c\r"
_HEX64 = re.compile(rb"[0-9a-fA-F]{64}")


def derive_psk(psk: str | bytes) -> bytes:
    """Turn a PSK (generated key or passphrase) into the 32-byte psk_key of section 9."""
    raw = psk.encode("utf-8") if isinstance(psk, str) else bytes(psk)
    raw = raw.strip(_ASCII_WS)
    if not raw:
        raise ValueError("empty PSK")
    if raw[: len(PSK_PREFIX)].lower() == PSK_PREFIX:  # the prefix in any letter case
        rest = raw[len(PSK_PREFIX) :]
        # bytes.fromhex() alone would accept embedded spaces: check the syntax first.
        if not _HEX64.fullmatch(rest):
            raise ValueError("a 'ppcp-psk-' key must be followed by exactly 64 hex digits")
        return bytes.fromhex(rest.decode("ascii"))
    kdf = PBKDF2HMAC(
        algorithm=hashes.SHA256(), length=32, salt=PASSPHRASE_SALT, iterations=PBKDF2_ITERATIONS
    )
    return kdf.derive(raw)


def is_weak_passphrase(psk: str | bytes) -> bool:
    """Section 9: shorter than 20 bytes or fewer than 10 distinct byte values."""
    raw = psk.encode("utf-8") if isinstance(psk, str) else bytes(psk)
    raw = raw.strip(_ASCII_WS)
    if raw[: len(PSK_PREFIX)].lower() == PSK_PREFIX:
        return False
    return len(raw) < 20 or len(set(raw)) < 10


# ---------------------------------------------------------------------------------------
# Section 8: key schedule


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_expand_label(secret: bytes, label: str, context: bytes, length: int) -> bytes:
    lab = label.encode("ascii")
    info = bytes([len(lab)]) + lab + bytes([len(context)]) + context
    return HKDFExpand(algorithm=hashes.SHA256(), length=length, info=info).derive(secret)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass
class HandshakeKeys:
    handshake_secret: bytes
    hello_hash: bytes
    client_auth_key: bytes
    server_auth_key: bytes
    client_proof: bytes


def handshake_keys(psk_key: bytes, ecdh_secret: bytes, ch: bytes, sh: bytes) -> HandshakeKeys:
    """Section 8.3, up to the client proof. ``ch`` and ``sh`` are whole frames."""
    hello_hash = sha256(ch + sh)
    hs = hkdf_extract(psk_key, ecdh_secret)
    cak = hkdf_expand_label(hs, "ppcp1 c auth", hello_hash, 32)
    sak = hkdf_expand_label(hs, "ppcp1 s auth", hello_hash, 32)
    proof = hmac.new(cak, b"ppcp1 client proof" + hello_hash, hashlib.sha256).digest()
    return HandshakeKeys(hs, hello_hash, cak, sak, proof)


def server_proof(server_auth_key: bytes, client_auth_hash: bytes) -> bytes:
    return hmac.new(
        server_auth_key, b"ppcp1 server proof" + client_auth_hash, hashlib.sha256
    ).digest()


def traffic_secrets(handshake_secret: bytes, full_hash: bytes) -> tuple[bytes, bytes]:
    c2s = hkdf_expand_label(handshake_secret, "ppcp1 c2s traffic", full_hash, 32)
    s2c = hkdf_expand_label(handshake_secret, "ppcp1 s2c traffic", full_hash, 32)
    return c2s, s2c


def traffic_key_iv(secret: bytes) -> tuple[bytes, bytes]:
    return (
        hkdf_expand_label(secret, "ppcp1 key", b"", 32),
        hkdf_expand_label(secret, "ppcp1 iv", b"", 12),
    )


def next_secret(secret: bytes) -> bytes:
    return hkdf_expand_label(secret, "ppcp1 key update", b"", 32)


# ---------------------------------------------------------------------------------------
# Sections 4 and 5: frames and handshake encodings


def frame(ftype: int, flags: int, body: bytes) -> bytes:
    return struct.pack(">BBI", ftype, flags, len(body)) + body


def _check_text(raw: bytes, what: str) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PPCPPeerError(CODE["PROTOCOL_ERROR"], f"{what} is not UTF-8") from exc
    for ch in text:
        o = ord(ch)
        if o <= 0x1F or 0x7F <= o <= 0x9F:
            raise PPCPPeerError(CODE["PROTOCOL_ERROR"], f"{what} contains a control character")
    return text


def clean_reason(reason: str) -> bytes:
    """Section 5.6: replace control characters, cut to 255 bytes at a character boundary."""
    text = "".join("?" if (ord(c) <= 0x1F or 0x7F <= ord(c) <= 0x9F) else c for c in reason)
    raw = text.encode("utf-8")
    if len(raw) > 255:
        raw = raw[:255].decode("utf-8", errors="ignore").encode("utf-8")
    return raw


def text8(raw: bytes) -> bytes:
    if len(raw) > 255:
        raise ValueError("text8 longer than 255 bytes")
    return bytes([len(raw)]) + raw


def encode_caps(caps: Sequence[str]) -> bytes:
    out = bytearray([len(caps)])
    for tok in caps:
        if not TOKEN_RE.fullmatch(tok):
            raise ValueError(f"bad capability token {tok!r}")
        out += text8(tok.encode("ascii"))
    return bytes(out)


class Reader:
    """Exact-consumption parser: every shortfall or leftover is a PROTOCOL_ERROR."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise PPCPPeerError(CODE["PROTOCOL_ERROR"], f"{self.what}: truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack(">Q", self.take(8))[0])

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out

    def caps(self) -> list[str]:
        count = self.u8()
        if count > 32:
            raise PPCPPeerError(CODE["PROTOCOL_ERROR"], f"{self.what}: too many capabilities")
        out: list[str] = []
        for _ in range(count):
            n = self.u8()
            raw = self.take(n)
            try:
                tok = raw.decode("ascii")
            except UnicodeDecodeError as exc:
                raise PPCPPeerError(CODE["PROTOCOL_ERROR"], "capability not ASCII") from exc
            if not TOKEN_RE.fullmatch(tok):
                raise PPCPPeerError(CODE["PROTOCOL_ERROR"], f"bad capability token {raw!r}")
            if tok in out:
                raise PPCPPeerError(CODE["PROTOCOL_ERROR"], f"duplicate capability {tok}")
            out.append(tok)
        return out

    def done(self) -> None:
        if self.pos != len(self.data):
            raise PPCPPeerError(CODE["PROTOCOL_ERROR"], f"{self.what}: trailing bytes")


def encode_client_hello(
    versions: Sequence[int], random: bytes, key_share: bytes, name: str, caps: Sequence[str]
) -> bytes:
    raw_name = name.encode("utf-8")
    if not 1 <= len(versions) <= 16 or not all(1 <= v <= 255 for v in versions):
        raise ValueError("bad version list")
    if not 1 <= len(raw_name) <= 64:
        raise ValueError("name must be 1 to 64 bytes")
    if len(random) != 32 or len(key_share) != 65:
        raise ValueError("bad random or key share length")
    body = (
        MAGIC
        + bytes([len(versions)])
        + bytes(versions)
        + random
        + key_share
        + text8(raw_name)
        + encode_caps(caps)
    )
    if len(body) > MAX_HANDSHAKE_BODY:
        raise ValueError("hello body exceeds 1024 bytes")
    return body


def encode_server_hello(
    version: int, random: bytes, key_share: bytes, name: str, caps: Sequence[str]
) -> bytes:
    """Only used to recompute the test vectors (this peer is a client)."""
    return (
        MAGIC
        + bytes([version])
        + random
        + key_share
        + text8(name.encode("utf-8"))
        + encode_caps(caps)
    )


@dataclass
class ServerHello:
    version: int
    random: bytes
    key_share: bytes
    name: str
    caps: list[str]


def parse_server_hello(body: bytes) -> ServerHello:
    r = Reader(body, "SERVER_HELLO")
    if r.take(4) != MAGIC:
        raise PPCPPeerError(CODE["PROTOCOL_ERROR"], "bad magic")
    version = r.u8()
    random = r.take(32)
    key_share = r.take(65)
    n = r.u8()
    if not 1 <= n <= 64:
        raise PPCPPeerError(CODE["PROTOCOL_ERROR"], "server name length out of range")
    name = _check_text(r.take(n), "server name")
    caps = r.caps()
    r.done()
    return ServerHello(version, random, key_share, name, caps)


def parse_code_reason(body: bytes, what: str) -> tuple[int, str]:
    """ALERT body (5.6) and CLOSE plaintext (10.5) share this layout."""
    r = Reader(body, what)
    code = r.u16()
    n = r.u8()
    reason = _check_text(r.take(n), f"{what} reason")
    r.done()
    return code, reason


def load_public_key(share: bytes) -> ec.EllipticCurvePublicKey:
    """Section 7 checks; anything wrong is BAD_KEY_SHARE."""
    bad = CODE["BAD_KEY_SHARE"]
    if len(share) != 65 or share[0] != 0x04:
        raise PPCPPeerError(bad, "key share is not an uncompressed point")
    x = int.from_bytes(share[1:33], "big")
    y = int.from_bytes(share[33:65], "big")
    if x >= P256_PRIME or y >= P256_PRIME:
        raise PPCPPeerError(bad, "coordinate not below the field prime")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), share)
    except ValueError as exc:
        raise PPCPPeerError(bad, "point not on the curve") from exc


def public_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


# ---------------------------------------------------------------------------------------
# Section 10: record protection


class Direction:
    """One direction of the record layer: key, IV, secret and sequence number."""

    def __init__(self, secret: bytes) -> None:
        self.install(secret)

    def install(self, secret: bytes) -> None:
        self.secret = secret
        key, self.iv = traffic_key_iv(secret)
        self.key = key
        self.aead = AESGCM(key)
        self.seq = 0
        self.records = 0
        self.bytes = 0

    def nonce(self) -> bytes:
        if self.seq >= 2**32:
            raise PPCPPeerError(CODE["PROTOCOL_ERROR"], "2^32 records under one key")
        pad = b"\x00\x00\x00\x00" + self.seq.to_bytes(8, "big")
        return bytes(a ^ b for a, b in zip(self.iv, pad, strict=True))

    def seal(self, ftype: int, flags: int, plaintext: bytes) -> bytes:
        if len(plaintext) > MAX_RECORD_PLAINTEXT:
            raise ValueError("record plaintext too large")
        header = struct.pack(">BBI", ftype, flags, len(plaintext) + TAG_LEN)
        body = self.aead.encrypt(self.nonce(), plaintext, header)
        self.seq += 1
        self.records += 1
        self.bytes += len(plaintext)
        return header + body

    def open(self, header: bytes, body: bytes) -> bytes:
        if len(body) < TAG_LEN:
            raise PPCPPeerError(CODE["PROTOCOL_ERROR"], "record body shorter than its tag")
        try:
            plaintext = self.aead.decrypt(self.nonce(), body, header)
        except Exception as exc:  # cryptography raises InvalidTag
            raise PPCPPeerError(CODE["DECRYPT_ERROR"], "record failed authentication") from exc
        self.seq += 1
        return plaintext

    def update(self) -> None:
        self.install(next_secret(self.secret))


# ---------------------------------------------------------------------------------------
# Section 15: channels


@dataclass
class Channel:
    id: int
    kind: str
    state: str = "OPENING"  # OPENING, OPEN, CLOSING, FREED
    recv_window: int = 0  # what we still accept (our receive window)
    recv_initial: int = 0
    recv_consumed: int = 0  # consumed since our last WINDOW_ADJUST
    recv_max_packet: int = 0
    send_window: int = 0  # what the peer still accepts
    send_max_packet: int = 0
    accept_payload: bytes = b""
    reject: tuple[int, str] | None = None
    close: tuple[int, str] | None = None  # the peer's CHANNEL_CLOSE
    streams: dict[int, bytearray] = field(default_factory=lambda: {0: bytearray(), 1: bytearray()})
    requests: list[tuple[str, bytes]] = field(default_factory=list)
    peer_eof: bool = False
    sent_eof: bool = False
    sent_close: bool = False


@dataclass
class ExecResult:
    stdout: bytes
    stderr: bytes
    exit_code: int | None
    signal: int | None
    timed_out: bool
    pid: int | None
    close_code: int


@dataclass
class Stats:
    heartbeats_answered: int = 0
    heartbeat_replies: int = 0
    window_adjusts_sent: int = 0
    window_adjusts_received: int = 0
    key_updates_sent: int = 0
    key_updates_received: int = 0
    records_received: int = 0
    max_data_payload: int = 0
    messages: list[bytes] = field(default_factory=list)


DEFAULT_CAPS = ("msg", "channels", "heartbeat", "exec", "files", "binary-data")


class RFCClient:
    """A blocking PPCP client (sections 5 to 16), one connection, one session."""

    def __init__(
        self,
        sock: socket.socket,
        psk_key: bytes,
        *,
        name: str = "rfc-peer",
        versions: Sequence[int] = (PROTOCOL_VERSION,),
        capabilities: Sequence[str] = DEFAULT_CAPS,
        window: int = 256 * 1024,
        max_packet: int = 32 * 1024,
        rekey_after_records: int = 2**24,
        rekey_after_bytes: int = 2**32,
        timeout: float = 30.0,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        # Section 15.4: never announce a max_packet larger than our records can carry.
        if window > MAX_WINDOW or not 1024 <= max_packet <= MAX_RECORD_PLAINTEXT - 5:
            raise ValueError("bad channel window or max_packet")
        self.sock = sock
        self.sock.settimeout(timeout)
        # Section 12: disable Nagle before the first byte of the handshake.
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.psk_key = psk_key
        self.name = name
        self.versions = list(versions)
        self.offered_caps = list(capabilities)
        self.window = window
        self.max_packet = max_packet
        self.rekey_after_records = rekey_after_records
        self.rekey_after_bytes = rekey_after_bytes
        self.random = random
        self.state = "START"
        self.buf = bytearray()
        self.send_dir: Direction | None = None
        self.recv_dir: Direction | None = None
        self.version: int | None = None
        self.caps: list[str] = []
        self.server_name = ""
        self.session_id = b""
        self.channels: dict[int, Channel] = {}
        self.next_channel_id = 1
        self.next_heartbeat_id = 1
        self.pending_heartbeats: set[int] = set()
        self.message_parts: bytearray | None = None
        self.peer_close: tuple[int, str] | None = None
        self.error: PPCPPeerError | None = None
        self.stats = Stats()

    # -- transport ------------------------------------------------------------------

    def _recv_exact(self, n: int, *, mid_frame: bool) -> bytes:
        while len(self.buf) < n:
            try:
                chunk = self.sock.recv(max(65536, n - len(self.buf)))
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                if self.buf or mid_frame:
                    # Section 4.5: EOF inside a frame.
                    raise PPCPPeerError(CODE["PROTOCOL_ERROR"], "EOF inside a frame")
                raise PPCPPeerError(CODE["CONNECTION_LOST"], "TCP stream ended without CLOSE")
            self.buf += chunk
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _read_frame(self) -> tuple[bytes, int, int, bytes]:
        header = self._recv_exact(6, mid_frame=False)
        ftype, flags, length = struct.unpack(">BBI", header)
        # Section 4.4: check the length on the header, before reading the body.
        if self.state in ("OPEN", "CLOSING"):
            limit = MAX_HANDSHAKE_BODY if ftype in HANDSHAKE_TYPES else MAX_RECORD_BODY
        else:
            limit = MAX_HANDSHAKE_BODY
        if length > limit:
            raise PPCPPeerError(CODE["FRAME_TOO_LARGE"], f"frame type {ftype:#x}: {length}")
        body = self._recv_exact(length, mid_frame=True)
        return header, ftype, flags, body

    def readable(self, timeout: float = 0.0) -> bool:
        if self.buf:
            return True
        r, _, _ = select.select([self.sock], [], [], timeout)
        return bool(r)

    # -- failing and closing ----------------------------------------------------------

    def _fail(self, err: PPCPPeerError) -> PPCPPeerError:
        """Section 1.2, "fail the connection"; returns the error for raising."""
        if self.state in ("FAILED", "CLOSED"):
            return err
        send_nothing = err.remote or err.code == CODE["CONNECTION_LOST"]
        try:
            if not send_nothing:
                if self.state in ("WAIT_SERVER_HELLO", "WAIT_SERVER_AUTH"):
                    body = struct.pack(">H", err.code) + text8(clean_reason(err.reason))
                    self.sock.sendall(frame(ALERT, 0, body))
                elif self.state == "OPEN" and self.send_dir is not None:
                    pt = struct.pack(">H", err.code) + text8(clean_reason(err.reason))
                    self.sock.sendall(self.send_dir.seal(CLOSE, 0, pt))
        except OSError:
            pass
        self.state = "FAILED"
        self.error = err
        self._shutdown()
        return err

    def _shutdown(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    # -- handshake (sections 5 to 8) ----------------------------------------------------

    def handshake(self, private_key: ec.EllipticCurvePrivateKey | None = None) -> None:
        try:
            self._handshake(private_key)
        except PPCPPeerError as err:
            raise self._fail(err) from None

    def _handshake(self, private_key: ec.EllipticCurvePrivateKey | None) -> None:
        assert self.state == "START"
        client_random = self.random(32)
        priv = private_key or ec.generate_private_key(ec.SECP256R1())
        body = encode_client_hello(
            self.versions, client_random, public_bytes(priv), self.name, self.offered_caps
        )
        ch = frame(CLIENT_HELLO, 0, body)
        self.sock.sendall(ch)  # one write per handshake frame (section 12)
        self.state = "WAIT_SERVER_HELLO"

        sh, ftype, flags, body = self._read_frame()
        self._expect_handshake(ftype, flags, body, SERVER_HELLO)
        hello = parse_server_hello(body)
        if hello.version not in self.versions:
            raise PPCPPeerError(CODE["PROTOCOL_ERROR"], f"version {hello.version} not offered")
        for tok in hello.caps:
            if tok not in self.offered_caps:
                raise PPCPPeerError(CODE["PROTOCOL_ERROR"], f"capability {tok} not offered")
        server_pub = load_public_key(hello.key_share)
        self.version, self.caps, self.server_name = hello.version, hello.caps, hello.name
        sh = sh + body
        ecdh_secret = priv.exchange(ec.ECDH(), server_pub)
        keys = handshake_keys(self.psk_key, ecdh_secret, ch, sh)
        ca = frame(CLIENT_AUTH, 0, keys.client_proof)
        self.sock.sendall(ca)
        self.state = "WAIT_SERVER_AUTH"

        sa_header, ftype, flags, body = self._read_frame()
        self._expect_handshake(ftype, flags, body, SERVER_AUTH)
        if len(body) != 32:
            raise PPCPPeerError(CODE["PROTOCOL_ERROR"], "SERVER_AUTH body is not 32 bytes")
        expected = server_proof(keys.server_auth_key, sha256(ch + sh + ca))
        if not hmac.compare_digest(expected, body):
            raise PPCPPeerError(CODE["AUTH_FAILED"], "server proof did not verify")
        full_hash = sha256(ch + sh + ca + sa_header + body)
        c2s, s2c = traffic_secrets(keys.handshake_secret, full_hash)
        self.send_dir, self.recv_dir = Direction(c2s), Direction(s2c)
        self.session_id = full_hash[:16]
        del keys, ecdh_secret, priv  # section 8.3: erase (as far as Python allows)
        self.state = "OPEN"

    def _expect_handshake(self, ftype: int, flags: int, body: bytes, wanted: int) -> None:
        if ftype == ALERT:
            if flags != 0:  # section 4.3: flags are checked before the ALERT body is parsed
                raise PPCPPeerError(CODE["PROTOCOL_ERROR"], "ALERT with flags")
            code, reason = parse_code_reason(body, "ALERT")
            raise PPCPPeerError(code, reason, remote=True)
        if ftype != wanted:
            raise PPCPPeerError(CODE["PROTOCOL_ERROR"], f"unexpected frame {ftype:#x}")
        if flags != 0:
            raise PPCPPeerError(CODE["PROTOCOL_ERROR"], "handshake frame with flags")

    # -- records (section 10) -----------------------------------------------------------

    def has(self, cap: str) -> bool:
        return cap in self.caps

    def send_record(self, ftype: int, flags: int, plaintext: bytes) -> None:
        if self.state != "OPEN" or self.send_dir is None:
            raise PPCPPeerError(CODE["PROTOCOL_ERROR"], f"cannot send in state {self.state}")
        d = self.send_dir
        # Section 10.4: rekey before any record other than CLOSE once a threshold is met.
        if ftype != CLOSE and (
            d.records >= self.rekey_after_records or d.bytes >= self.rekey_after_bytes
        ):
            self.sock.sendall(d.seal(KEY_UPDATE, 0, b""))
            d.update()
            self.stats.key_updates_sent += 1
        self.sock.sendall(d.seal(ftype, flags, plaintext))

    def send_message(self, message: bytes, fragment: int = 1 << 20) -> None:
        """Section 10.3: MORE on every fragment but the last."""
        if not self.has("msg"):
            raise PPCPPeerError(CODE["PROTOCOL_ERROR"], "msg not negotiated")
        pieces = [message[i : i + fragment] for i in range(0, len(message), fragment)] or [b""]
        for i, piece in enumerate(pieces):
            self.send_record(MESSAGE, FLAG_MORE if i < len(pieces) - 1 else 0, piece)

    def pump(self) -> None:
        """Read and process exactly one frame. Raises PPCPPeerError on session failure."""
        if self.state in ("CLOSED", "FAILED"):
            raise self.error or PPCPPeerError(CODE["NORMAL"], "session is closed")
        try:
            self._pump()
        except PPCPPeerError as err:
            raise self._fail(err) from None

    def _pump(self) -> None:
        header, ftype, flags, body = self._read_frame()
        # Section 11: a handshake frame (ALERT included) after OPEN is a PROTOCOL_ERROR.
        if ftype not in RECORD_TYPES:
            raise PPCPPeerError(CODE["PROTOCOL_ERROR"], f"frame {ftype:#x} not valid in OPEN")
        assert self.recv_dir is not None
        plaintext = self.recv_dir.open(header, body)
        self.stats.records_received += 1
        self._check_capability(ftype)
        if ftype == KEY_UPDATE:
            if flags or plaintext:
                raise PPCPPeerError(CODE["PROTOCOL_ERROR"], "bad KEY_UPDATE")
            self.recv_dir.update()
            self.stats.key_updates_received += 1
        elif ftype == CLOSE:
            self._on_close(flags, plaintext)
        elif ftype == MESSAGE:
            self._on_message(flags, plaintext)
        elif ftype == HEARTBEAT:
            self._on_heartbeat(flags, plaintext)
        else:
            if flags:
                raise PPCPPeerError(CODE["PROTOCOL_ERROR"], "flags on a channel record")
            self._on_channel_record(ftype, plaintext)

    def _check_capability(self, ftype: int) -> None:
        need = {MESSAGE: "msg", HEARTBEAT: "heartbeat"}.get(ftype)
        if ftype in CHANNEL_TYPES:
            need = "channels"
        if need and not self.has(need):
            raise PPCPPeerError(CODE["PROTOCOL_ERROR"], f"record {ftype:#x} needs {need}")

    def _on_close(self, flags: int, plaintext: bytes) -> None:
        if flags:
            raise PPCPPeerError(CODE["PROTOCOL_ERROR"], "CLOSE with flags")
        if self.message_parts is not None:
            raise PPCPPeerError(CODE["PROTOCOL_ERROR"], "CLOSE inside a fragmented message")
        code, reason = parse_code_reason(plaintext, "CLOSE")
        self.peer_close = (code, reason)
        if self.state == "OPEN":
            # Section 10.5 step 3: answer with CLOSE NORMAL and an empty reason. A peer that
            # failed the connection does not wait for it, so a failed write is not an error.
            with contextlib.suppress(OSError):
                self.send_record(CLOSE, 0, struct.pack(">HB", CODE["NORMAL"], 0))
        self.state = "CLOSED"
        self._shutdown()
        self.channels.clear()  # section 15.5 rule 5
        if code not in (CODE["NORMAL"], CODE["GOING_AWAY"]):
            err = PPCPPeerError(code, reason, remote=True)
            self.error = err
            raise err

    def _on_message(self, flags: int, plaintext: bytes) -> None:
        if flags & ~FLAG_MORE:
            raise PPCPPeerError(CODE["PROTOCOL_ERROR"], "MESSAGE with reserved flags")
        parts = self.message_parts if self.message_parts is not None else bytearray()
        if len(parts) + len(plaintext) > MAX_MESSAGE_SIZE:
            raise PPCPPeerError(CODE["MESSAGE_TOO_LARGE"], "message over 16 MiB")
        parts += plaintext
        if flags & FLAG_MORE:
            self.message_parts = parts
        else:
            self.message_parts = None
            self.stats.messages.append(bytes(parts))

    def _on_heartbeat(self, flags: int, plaintext: bytes) -> None:
        if flags & ~FLAG_REPLY or len(plaintext) != 8:
            raise PPCPPeerError(CODE["PROTOCOL_ERROR"], "bad HEARTBEAT")
        if flags & FLAG_REPLY:
            (hb_id,) = struct.unpack(">Q", plaintext)
            if hb_id in self.pending_heartbeats:
                self.pending_heartbeats.discard(hb_id)
                self.stats.heartbeat_replies += 1
            return
        # Section 15.8: MUST answer every request. RFC-READING: not in CLOSING, where
        # section 10.5 forbids sending further records.
        if self.state == "OPEN":
            self.send_record(HEARTBEAT, FLAG_REPLY, plaintext)
            self.stats.heartbeats_answered += 1

    def heartbeat(self) -> int:
        """Send a HEARTBEAT request; the reply is counted when pump() sees it."""
        if not self.has("heartbeat"):
            raise PPCPPeerError(CODE["PROTOCOL_ERROR"], "heartbeat not negotiated")
        hb_id = self.next_heartbeat_id
        self.next_heartbeat_id += 1
        self.pending_heartbeats.add(hb_id)
        self.send_record(HEARTBEAT, 0, struct.pack(">Q", hb_id))
        return hb_id

    # -- channel layer (section 15) -----------------------------------------------------

    def _on_channel_record(self, ftype: int, pt: bytes) -> None:
        perr = CODE["PROTOCOL_ERROR"]
        if ftype == CHANNEL_OPEN:
            r = Reader(pt, "CHANNEL_OPEN")
            cid = r.u32()
            # The server opens even ids. This client offers no service: reject politely.
            if cid == 0 or cid % 2 == 1 or cid in self.channels:
                raise PPCPPeerError(perr, f"bad CHANNEL_OPEN id {cid}")
            reason = text8(b"this client offers no services")
            self.send_record(CHANNEL_REJECT, 0, struct.pack(">IH", cid, 0x0101) + reason)
            return
        r = Reader(pt, f"channel record {ftype:#x}")
        cid = r.u32()
        ch = self.channels.get(cid)
        if ch is None:
            raise PPCPPeerError(perr, f"record {ftype:#x} for channel {cid} not in use")
        allowed = {
            "OPENING": {CHANNEL_ACCEPT, CHANNEL_REJECT},
            "OPEN": {CHANNEL_DATA, CHANNEL_EOF, CHANNEL_REQUEST, WINDOW_ADJUST, CHANNEL_CLOSE},
            "CLOSING": {CHANNEL_DATA, CHANNEL_EOF, CHANNEL_REQUEST, WINDOW_ADJUST, CHANNEL_CLOSE},
        }[ch.state]
        if ftype not in allowed:
            raise PPCPPeerError(perr, f"record {ftype:#x} on channel {cid} in {ch.state}")
        if ftype == CHANNEL_ACCEPT:
            window, max_packet = r.u32(), r.u32()
            payload = r.rest()
            if window > MAX_WINDOW or max_packet < 1024 or len(payload) > MAX_PAYLOAD:
                raise PPCPPeerError(perr, "bad CHANNEL_ACCEPT")
            ch.send_window = window
            ch.send_max_packet = min(max_packet, MAX_RECORD_PLAINTEXT - 5)
            ch.accept_payload = payload
            ch.state = "OPEN"
        elif ftype in (CHANNEL_REJECT, CHANNEL_CLOSE):
            code = r.u16()
            reason = _check_text(r.take(r.u8()), "channel reason")
            r.done()
            if ftype == CHANNEL_REJECT:
                ch.reject = (code, reason)
                ch.state = "FREED"
                del self.channels[cid]
            else:
                ch.close = (code, reason)
                if ch.state == "OPEN":
                    # Rule 3: answer with CHANNEL_CLOSE NORMAL, empty reason.
                    self.send_record(CHANNEL_CLOSE, 0, struct.pack(">IHB", cid, 0, 0))
                ch.state = "FREED"
                del self.channels[cid]
        elif ftype == CHANNEL_DATA:
            stream = r.u8()
            data = r.rest()
            if stream > 1:
                raise PPCPPeerError(perr, "CHANNEL_DATA stream must be 0 or 1")
            if ch.peer_eof:
                raise PPCPPeerError(perr, "CHANNEL_DATA after EOF")
            if len(data) > ch.recv_window:
                raise PPCPPeerError(CODE["FLOW_CONTROL_ERROR"], "data beyond the window")
            if len(data) > ch.recv_max_packet:
                # RFC-READING: 15.4 says a sender MUST NOT exceed max_packet but names no
                # receiver error; PROTOCOL_ERROR is our choice.
                raise PPCPPeerError(perr, "CHANNEL_DATA larger than our max_packet")
            ch.recv_window -= len(data)
            self.stats.max_data_payload = max(self.stats.max_data_payload, len(data))
            if ch.state == "OPEN":
                ch.streams[stream] += data
                self._consume(ch, len(data))
        elif ftype == CHANNEL_EOF:
            r.done()
            if ch.peer_eof:
                raise PPCPPeerError(perr, "second CHANNEL_EOF")
            ch.peer_eof = True
        elif ftype == WINDOW_ADJUST:
            inc = r.u32()
            r.done()
            if inc == 0 or ch.send_window + inc > MAX_WINDOW:
                raise PPCPPeerError(CODE["FLOW_CONTROL_ERROR"], "bad WINDOW_ADJUST")
            ch.send_window += inc
            self.stats.window_adjusts_received += 1
        elif ftype == CHANNEL_REQUEST:
            n = r.u8()
            name = _check_text(r.take(n), "request name")
            payload = r.rest()
            if len(payload) > MAX_PAYLOAD:
                raise PPCPPeerError(perr, "request payload too large")
            if ch.state == "OPEN":
                ch.requests.append((name, payload))

    def _consume(self, ch: Channel, n: int) -> None:
        """The application consumed n bytes; return window once half of it is used."""
        ch.recv_consumed += n
        if ch.recv_consumed >= ch.recv_initial // 2 and not ch.peer_eof:
            inc = ch.recv_consumed
            ch.recv_consumed = 0
            ch.recv_window += inc
            self.send_record(WINDOW_ADJUST, 0, struct.pack(">II", ch.id, inc))
            self.stats.window_adjusts_sent += 1

    def pump_until(self, done: Callable[[], bool], limit: int = 1_000_000) -> None:
        """Process frames until ``done()``; bounded by ``limit`` frames and socket timeouts."""
        for _ in range(limit):
            if done():
                return
            self.pump()
        raise RuntimeError("pump_until: frame limit reached")

    def open_channel(self, kind: str, payload: bytes) -> Channel:
        if not self.has("channels"):
            raise PPCPPeerError(CODE["PROTOCOL_ERROR"], "channels not negotiated")
        if len(payload) > MAX_PAYLOAD:
            raise ValueError("open payload too large")
        cid = self.next_channel_id
        self.next_channel_id += 2
        ch = Channel(
            id=cid,
            kind=kind,
            recv_window=self.window,
            recv_initial=self.window,
            recv_max_packet=self.max_packet,
        )
        self.channels[cid] = ch
        body = struct.pack(">III", cid, self.window, self.max_packet)
        self.send_record(CHANNEL_OPEN, 0, body + text8(kind.encode("utf-8")) + payload)
        self.pump_until(lambda: ch.state != "OPENING")
        if ch.reject is not None:
            raise ChannelFailure(*ch.reject)
        return ch

    def send_data(self, ch: Channel, data: bytes, stream: int = 0) -> None:
        """Send within the peer's window and max_packet, pumping input while blocked."""
        view = memoryview(data)
        limit = 10_000_000
        while view and limit:
            limit -= 1
            if ch.state != "OPEN":
                raise ChannelFailure(*(ch.close or (CODE["CHANNEL_ERROR"], "channel closed")))
            # Process what the server already sent so neither side blocks on a full pipe.
            while self.readable() and ch.state == "OPEN":
                self.pump()
            if ch.send_window == 0:
                self.pump()
                continue
            n = min(len(view), ch.send_window, ch.send_max_packet)
            self.send_record(CHANNEL_DATA, 0, struct.pack(">IB", ch.id, stream) + view[:n])
            ch.send_window -= n
            view = view[n:]

    def send_eof(self, ch: Channel) -> None:
        if ch.state == "OPEN" and not ch.sent_eof:
            ch.sent_eof = True
            self.send_record(CHANNEL_EOF, 0, struct.pack(">I", ch.id))

    def send_request(self, ch: Channel, name: str, payload: bytes) -> None:
        raw = name.encode("utf-8")
        self.send_record(CHANNEL_REQUEST, 0, struct.pack(">I", ch.id) + text8(raw) + payload)

    def close_channel(self, ch: Channel) -> None:
        """Close from our side and wait for the peer's CHANNEL_CLOSE (rule 3)."""
        if ch.state == "OPEN":
            ch.state = "CLOSING"
            ch.sent_close = True
            self.send_record(CHANNEL_CLOSE, 0, struct.pack(">IHB", ch.id, 0, 0))
        self.pump_until(lambda: ch.state == "FREED")

    # -- services ----------------------------------------------------------------------

    def exec(
        self,
        command: str | None = None,
        argv: Sequence[str] | None = None,
        *,
        stdin: bytes | None = None,
        **options: object,
    ) -> ExecResult:
        """Section 15.10.2. ``stdin=None`` sends ``"stdin": false``."""
        if not self.has("exec"):
            raise PPCPPeerError(CODE["PROTOCOL_ERROR"], "exec not negotiated")
        req: dict[str, object] = dict(options)
        if (command is None) == (argv is None):
            raise ValueError("give exactly one of command and argv")
        if command is not None:
            req["command"] = command
        else:
            req["argv"] = list(argv or ())
        if stdin is None:
            req["stdin"] = False
        ch = self.open_channel("exec", json.dumps(req, separators=(",", ":")).encode())
        pid = json.loads(ch.accept_payload or b"{}").get("pid")
        if stdin is not None:
            self.send_data(ch, stdin)
            self.send_eof(ch)
        status: dict[str, object] = {}

        def finished() -> bool:
            for name, payload in ch.requests:
                if name == "exit-status" and not status:
                    status.update(json.loads(payload))
            return ch.state == "FREED"

        self.pump_until(finished)
        close_code = ch.close[0] if ch.close else CODE["NORMAL"]
        exit_code = status.get("exit_code")
        sig = status.get("signal")
        return ExecResult(
            stdout=bytes(ch.streams[0]),
            stderr=bytes(ch.streams[1]),
            exit_code=exit_code if isinstance(exit_code, int) else None,
            signal=sig if isinstance(sig, int) else None,
            timed_out=bool(status.get("timed_out", False)),
            pid=pid if isinstance(pid, int) else None,
            close_code=close_code,
        )

    def message_channel(self, messages: Iterable[bytes], topic: str = "default") -> Channel:
        """Section 15.10.4: send messages, EOF, and wait for the server's close."""
        payload = json.dumps({"topic": topic}, separators=(",", ":")).encode()
        ch = self.open_channel("message", payload)
        for msg in messages:
            self.send_data(ch, struct.pack(">I", len(msg)) + msg)
        self.send_eof(ch)
        self.pump_until(lambda: ch.state == "FREED")
        return ch

    def file_get(self, path: str, *, limit: int = 64 * 2**20) -> tuple[dict[str, object], bytes]:
        """Section 16: fetch one regular file into memory (no resume, no checksum)."""
        if not self.has("files"):
            raise PPCPPeerError(CODE["PROTOCOL_ERROR"], "files not negotiated")
        binary = self.has("binary-data")
        req = {"v": 1, "path": path, "recursive": False, "zlib": False, "checksum": False}
        ch = self.open_channel("file-get", json.dumps(req, separators=(",", ":")).encode())
        accept = json.loads(ch.accept_payload)
        if accept.get("type") != "file":
            self.close_channel(ch)
            raise ChannelFailure(CODE["CHANNEL_ERROR"], "only single files are supported")
        seen = 0  # requests already handled

        def next_request() -> tuple[str, dict[str, object]]:
            nonlocal seen
            self.pump_until(lambda: len(ch.requests) > seen or ch.state == "FREED")
            if len(ch.requests) <= seen:
                raise ChannelFailure(*(ch.close or (CODE["CHANNEL_ERROR"], "closed")))
            name, payload = ch.requests[seen]
            seen += 1
            return name, json.loads(payload)

        name, entry = next_request()
        if name != "file" or entry.get("path") != "":
            raise ChannelFailure(CODE["CHANNEL_ERROR"], f"unexpected {name} {entry}")
        size = entry["size"]
        assert isinstance(size, int) and 0 <= size <= limit
        self._send_json_request(ch, "ready", {"offset": 0, "sha256": EMPTY_SHA256})
        name, data_req = next_request()
        if name != "data" or data_req.get("offset") != 0:
            raise ChannelFailure(CODE["CHANNEL_ERROR"], f"unexpected {name} {data_req}")
        content = bytearray()
        acked = 0
        while True:
            if binary:
                self.pump_until(
                    lambda: (
                        len(ch.requests) > seen or len(ch.streams[0]) >= size or ch.state == "FREED"
                    )
                )
                if len(ch.requests) <= seen and len(ch.streams[0]) < size:
                    continue  # pragma: no cover - pump_until only returns when done
                name, req_payload = next_request()
            else:
                name, req_payload = next_request()
                if name == "chunk":
                    if req_payload.get("zlib") or req_payload.get("offset") != len(content):
                        raise ChannelFailure(CODE["CHANNEL_ERROR"], "bad chunk")
                    content += base64.b64decode(str(req_payload["data"]), validate=True)
                    if len(content) - acked >= 1 << 20:
                        acked = len(content)
                        self._send_json_request(ch, "ack", {"offset": acked})
                    continue
            if name == "end":
                break
            raise ChannelFailure(CODE["CHANNEL_ERROR"], f"unexpected request {name}")
        if binary:
            content = ch.streams[0]
        if len(content) != size:
            raise ChannelFailure(CODE["TRANSFER_FAILED"], f"got {len(content)} of {size}")
        self._send_json_request(ch, "done", {})
        name, _ = next_request()
        if name != "finish":
            raise ChannelFailure(CODE["CHANNEL_ERROR"], f"expected finish, got {name}")
        self._send_json_request(ch, "finished", {"files": 1, "bytes": size})
        # Section 16.4.3: "both sides then close the channel with NORMAL".
        self.close_channel(ch)
        return accept, bytes(content)

    def _send_json_request(self, ch: Channel, name: str, obj: dict[str, object]) -> None:
        payload = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
        self.send_request(ch, name, payload)

    # -- orderly close (section 10.5) ---------------------------------------------------

    def close(self, code: int = 0, reason: str = "", max_frames: int = 100_000) -> None:
        """Send CLOSE, keep processing records until the peer's CLOSE, close TCP."""
        if self.state == "OPEN":
            pt = struct.pack(">H", code) + text8(clean_reason(reason))
            self.send_record(CLOSE, 0, pt)
            self.state = "CLOSING"
        elif self.state in ("WAIT_SERVER_HELLO", "WAIT_SERVER_AUTH"):
            self.sock.sendall(frame(ALERT, 0, struct.pack(">HB", 0, 0)))
            self.state = "CLOSED"
        elif self.state == "START":
            self.state = "CLOSED"
        for _ in range(max_frames):
            if self.state != "CLOSING":
                break
            self.pump()
        self._shutdown()


def connect(
    host: str, port: int, psk: str | bytes, *, psk_key: bytes | None = None, **kwargs: object
) -> RFCClient:
    """TCP connect plus handshake. ``psk_key`` skips the (slow) passphrase derivation."""
    key = psk_key if psk_key is not None else derive_psk(psk)
    sock = socket.create_connection((host, port), timeout=10)
    client = RFCClient(sock, key, **kwargs)  # type: ignore[arg-type]
    client.handshake()
    return client


def shell_status(reject_reason: str) -> int:
    """Section 15.10.2: 127 for ENOENT, 126 for any other ENAME (last match wins)."""
    names = ENAME_RE.findall(reject_reason)
    return 127 if names and names[-1] == "ENOENT" else 126


# ---------------------------------------------------------------------------------------
# Appendix A: recompute the published test vectors


def counter_stream(seed: bytes) -> Callable[[int], bytes]:
    """Appendix A.1: byte i of SHA-256(seed || u64be(0)) || SHA-256(seed || u64be(1)) ..."""
    buf = bytearray()
    blocks = iter(range(2**64))

    def read(n: int) -> bytes:
        while len(buf) < n:
            buf.extend(sha256(seed + next(blocks).to_bytes(8, "big")))
        out = bytes(buf[:n])
        del buf[:n]
        return out

    return read


def scalar_from(read: Callable[[int], bytes]) -> int:
    """Section 7 implementation note: rejection sampling in [1, n-1], at most 64 draws."""
    for _ in range(64):
        d = int.from_bytes(read(32), "big")
        if 1 <= d < P256_ORDER:
            return d
    raise RuntimeError("no scalar in 64 draws")


def parse_vector_block(text: str, begin: str, end: str) -> dict[str, str]:
    """Parse ``name (N bytes)`` followed by indented hex lines, as printed in Appendix A."""
    block = text.split(begin, 1)[1].split(end, 1)[0]
    values: dict[str, str] = {}
    current: str | None = None
    for line in block.splitlines():
        m = re.match(r"^(\w+) \(", line)
        if m:
            current = m.group(1)
            values[current] = ""
        elif current and re.fullmatch(r"\s+[0-9a-f]+|[0-9a-f]+", line):
            values[current] += line.strip()
        else:
            current = None
    return values


def compute_handshake_vectors() -> dict[str, str]:
    """Everything Appendix A.1 prints, recomputed from its stated inputs with this module."""
    out: dict[str, bytes] = {}
    psk_key = derive_psk(
        "ppcp-psk-000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    )
    out["psk_key"] = psk_key
    out["passphrase_key"] = derive_psk("ppcp test vector passphrase")
    c_read = counter_stream(b"ppcp test vector client")
    s_read = counter_stream(b"ppcp test vector server")
    out["client_random"] = c_read(32)
    c_d = scalar_from(c_read)
    out["server_random"] = s_read(32)
    s_d = scalar_from(s_read)
    c_priv = ec.derive_private_key(c_d, ec.SECP256R1())
    s_priv = ec.derive_private_key(s_d, ec.SECP256R1())
    out["client_private_scalar"] = c_d.to_bytes(32, "big")
    out["server_private_scalar"] = s_d.to_bytes(32, "big")
    out["client_public_key"] = public_bytes(c_priv)
    out["server_public_key"] = public_bytes(s_priv)
    ch = frame(
        CLIENT_HELLO,
        0,
        encode_client_hello([1], out["client_random"], out["client_public_key"], "client", ["msg"]),
    )
    sh = frame(
        SERVER_HELLO,
        0,
        encode_server_hello(1, out["server_random"], out["server_public_key"], "server", ["msg"]),
    )
    out["client_hello_frame"], out["server_hello_frame"] = ch, sh
    ecdh_c = c_priv.exchange(ec.ECDH(), load_public_key(out["server_public_key"]))
    ecdh_s = s_priv.exchange(ec.ECDH(), load_public_key(out["client_public_key"]))
    assert ecdh_c == ecdh_s
    out["ecdh_secret"] = ecdh_c
    keys = handshake_keys(psk_key, ecdh_c, ch, sh)
    out["hello_hash"] = keys.hello_hash
    out["handshake_secret"] = keys.handshake_secret
    out["client_auth_key"] = keys.client_auth_key
    out["server_auth_key"] = keys.server_auth_key
    ca = frame(CLIENT_AUTH, 0, keys.client_proof)
    out["client_auth_frame"] = ca
    out["client_auth_hash"] = sha256(ch + sh + ca)
    sa = frame(SERVER_AUTH, 0, server_proof(keys.server_auth_key, out["client_auth_hash"]))
    out["server_auth_frame"] = sa
    full_hash = sha256(ch + sh + ca + sa)
    out["full_hash"] = full_hash
    out["session_id"] = full_hash[:16]
    c2s, s2c = traffic_secrets(keys.handshake_secret, full_hash)
    out["c2s_secret"], out["s2c_secret"] = c2s, s2c
    out["c2s_key"], out["c2s_iv"] = traffic_key_iv(c2s)
    out["s2c_key"], out["s2c_iv"] = traffic_key_iv(s2c)
    # Records, through the same Direction class the live client uses.
    cdir, sdir = Direction(c2s), Direction(s2c)
    out["c2s_record_0"] = cdir.seal(MESSAGE, 0, b"hello")
    out["c2s_record_1"] = cdir.seal(MESSAGE, 0, b"world")
    out["s2c_record_0"] = sdir.seal(MESSAGE, 0, b"hello, client")
    assert cdir.records >= 2  # the client's sender threshold is 2 records
    out["c2s_key_update_record"] = cdir.seal(KEY_UPDATE, 0, b"")
    cdir.update()
    out["c2s_updated_secret"] = cdir.secret
    out["c2s_updated_key"], out["c2s_updated_iv"] = cdir.key, cdir.iv
    out["c2s_updated_record_0"] = cdir.seal(MESSAGE, 0, b"after key update")
    out["c2s_close_record"] = cdir.seal(CLOSE, 0, struct.pack(">HB", 0, 0))
    out["s2c_close_record"] = sdir.seal(CLOSE, 0, struct.pack(">HB", 0, 0))
    # Cross-check the other direction: the server side opens what the client sealed.
    rdir = Direction(c2s)
    for name in ("c2s_record_0", "c2s_record_1", "c2s_key_update_record"):
        rec = out[name]
        rdir.open(rec[:6], rec[6:])
    return {k: v.hex() for k, v in out.items()}


def compute_discovery_vectors() -> dict[str, str]:
    """Appendix A.2 (section 3.2/3.3): K_d, the 192-byte PING and its PONG."""
    psk_key = derive_psk(
        "ppcp-psk-000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    )
    k_d = hkdf_expand_label(psk_key, "ppcp1 discovery", b"", 32)
    nonce = bytes(range(0xF0, 0x100))
    body = MAGIC + bytes([1, 1]) + b"\x00\x00" + nonce + bytes(192 - 56)
    ping = body + hmac.new(k_d, body, hashlib.sha256).digest()
    pong = (
        MAGIC
        + bytes([1, 2])
        + b"\x00\x00"
        + nonce
        + bytes(range(0xA0, 0xB0))
        + struct.pack(">H", 9000)
        + text8(b"demo-server")
        + bytes([1, 1])
        + encode_caps(["msg", "exec"])
    )
    pong += hmac.new(k_d, pong, hashlib.sha256).digest()
    return {"K_d": k_d.hex(), "PING": ping.hex(), "PONG": pong.hex()}


def compute_channel_vectors() -> dict[str, bytes]:
    """Appendix A.3: the channel-record plaintexts, built with this module's layouts."""

    def js(obj: object) -> bytes:
        return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()

    def open_(cid: int, kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">III", cid, 0x400000, 0x200000) + text8(kind) + payload

    def req(cid: int, name: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", cid) + text8(name) + payload

    shell = {"cols": 80, "command": None, "rows": 24, "term": "xterm-256color"}
    return {
        "channel_open_exec": open_(1, b"exec", js({"argv": ["uname", "-a"]})),
        "channel_accept": struct.pack(">III", 1, 0x400000, 0x200000) + js({"pid": 4242}),
        "channel_eof": struct.pack(">I", 1),
        "channel_data_stdout": struct.pack(">IB", 1, 0) + b"Linux\n",
        "channel_data_stderr": struct.pack(">IB", 1, 1) + b"warning\n",
        "channel_request_signal": req(1, b"signal", js({"signal": 15})),
        "window_adjust": struct.pack(">II", 1, 2 * 2**20),
        "channel_request_exit_status": req(
            1, b"exit-status", js({"exit_code": 0, "signal": None, "timed_out": False})
        ),
        "channel_close": struct.pack(">IHB", 1, 0, 0),
        "channel_open_shell": open_(3, b"shell", js(shell)),
        "channel_reject": struct.pack(">IH", 3, 0x0102) + text8(b"interactive shells are disabled"),
        "channel_open_message": open_(5, b"message", js({"topic": "default"})),
        "channel_data_message": struct.pack(">IB", 5, 0) + struct.pack(">I", 5) + b"hello",
        "heartbeat": struct.pack(">Q", 1),
        "heartbeat_reply": struct.pack(">Q", 1),
    }


def check_rfc_vectors(rfc_path: str | Path) -> list[str]:
    """Compare recomputed vectors with those printed in the RFC; return the mismatches."""
    text = Path(rfc_path).read_text(encoding="utf-8")
    problems: list[str] = []
    printed = parse_vector_block(text, "<!-- vectors:begin -->", "<!-- vectors:end -->")
    ours = compute_handshake_vectors()
    for name, value in printed.items():
        if name not in ours:
            problems.append(f"A.1 {name}: printed but not recomputed")
        elif ours[name] != value:
            problems.append(f"A.1 {name}: RFC {value} != recomputed {ours[name]}")
    for name in ours:
        if name not in printed:
            problems.append(f"A.1 {name}: recomputed but not printed")
    # A.2: values are laid out differently (hex lines after a title line).
    disc = text.split("<!-- discovery-vectors:begin -->", 1)[1].split("<!--", 1)[0]
    dvals = compute_discovery_vectors()
    k_d = re.search(r"^K_d\s+([0-9a-f]{64})$", disc, re.M)
    if not k_d or k_d.group(1) != dvals["K_d"]:
        problems.append("A.2 K_d differs")
    hex_runs = re.findall(r"((?:^[0-9a-f]{2,64}\n)+)", disc, re.M)
    runs = ["".join(run.split()) for run in hex_runs]
    for name in ("PING", "PONG"):
        if dvals[name] not in runs:
            problems.append(f"A.2 {name} differs")
    cvals = compute_channel_vectors()
    printed_c = parse_vector_block(
        text, "<!-- channel-vectors:begin -->", "<!-- channel-vectors:end -->"
    )
    for name, value in cvals.items():
        got = value.hex()
        if printed_c.get(name) != got:
            problems.append(f"A.3 {name}: RFC {printed_c.get(name)} != built {got}")
    return problems
