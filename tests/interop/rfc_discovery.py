"""Independent PPCP discovery client (PING/PONG), written from docs/rfc.md alone.

This is a deliberately independent implementation of section 3 of the RFC (with the PSK
derivation of section 9, the label encoding of section 8.1 and the vectors of Appendix A.2),
written without reading the reference implementation in ``ppcp/``. It is kept as an
interoperability test of the specification: every place where the RFC had to be read
generously is marked ``RFC-READING`` and listed in the findings notes. It is not meant to be
merged into the library and imports nothing from ``ppcp``.

Only the standard library and ``cryptography`` are used.
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import os
import re
import select
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

# --- Constants (section 3.2, 3.5, 3.6, 9) -------------------------------------------------

MAGIC = b"PPCP"
WIRE_VERSION = 0x01  # discovery wire version, not the protocol version
TYPE_PING = 0x01
TYPE_PONG = 0x02
# RFC-READING: "bit 0" is read as the least significant bit of the big-endian u16.
FLAG_CAPS_TRUNCATED = 0x0001

HEADER_LEN = 8
NONCE_LEN = 16
SERVER_ID_LEN = 16
TAG_LEN = 32
PING_MIN_SIZE = 192
MAX_DATAGRAM = 1200  # the size cap, and the largest PING
DEFAULT_PING_SIZE = 384  # "the reference client sends N = 384"
DEFAULT_PORT = 9000

NAME_MIN, NAME_MAX = 1, 64
VERSIONS_MIN, VERSIONS_MAX = 1, 16
CAPS_MAX = 32
TOKEN_RE = re.compile(rb"[a-z0-9][a-z0-9.\-]{0,31}")  # section 5.1, matched with fullmatch

DISCOVERY_LABEL = b"ppcp1 discovery"
GENERATED_PREFIX = b"ppcp-psk-"
PASSPHRASE_SALT = b"ppcp/v1 passphrase"
PBKDF2_ITERATIONS = 600_000
ASCII_WHITESPACE = b" \t\n\x0b\x0c\r"
HEX64_RE = re.compile(rb"[0-9a-fA-F]{64}")

# Retransmission schedule (section 3.1): gaps doubling from 100 ms, capped at 1 s.
FIRST_GAP = 0.1
MAX_GAP = 1.0


class PSKError(ValueError):
    """The PSK is invalid (section 9)."""


class DatagramError(ValueError):
    """A datagram is malformed, unauthenticated or not an answer to us (section 3.5)."""


class WeakPSKWarning(UserWarning):
    """A weak passphrase is in use (section 9: implementations MUST warn)."""


# --- Keys (sections 8.1, 9, 3.3) -----------------------------------------------------------


def derive_psk_key(psk: str | bytes) -> bytes:
    """Turn the user's PSK into the 32-byte psk_key (section 9)."""
    raw = psk.encode("utf-8") if isinstance(psk, str) else bytes(psk)
    # RFC-READING: stripping is applied to bytes PSKs too, not only to text.
    raw = raw.strip(ASCII_WHITESPACE)
    if not raw:
        raise PSKError("empty PSK")
    # Section 9: the "ppcp-psk-" prefix is matched in any letter case.
    if raw[: len(GENERATED_PREFIX)].lower() == GENERATED_PREFIX:
        rest = raw[len(GENERATED_PREFIX) :]
        if HEX64_RE.fullmatch(rest) is None:
            raise PSKError("generated key must be 'ppcp-psk-' and 64 hex digits")
        return bytes.fromhex(rest.decode("ascii"))
    if len(raw) < 20 or len(set(raw)) < 10:
        warnings.warn("weak PPCP passphrase", WeakPSKWarning, stacklevel=2)
    return hashlib.pbkdf2_hmac("sha256", raw, PASSPHRASE_SALT, PBKDF2_ITERATIONS, 32)


def hkdf_expand_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    """HKDF-Expand-Label of section 8.1 (no u16 length, unlike TLS 1.3)."""
    if len(label) > 255 or len(context) > 255:
        raise ValueError("label or context too long")
    info = bytes([len(label)]) + label + bytes([len(context)]) + context
    return HKDFExpand(algorithm=hashes.SHA256(), length=length, info=info).derive(secret)


def discovery_key(psk_key: bytes) -> bytes:
    """K_d of section 3.3."""
    if len(psk_key) != 32:
        raise ValueError("psk_key must be 32 bytes")
    return hkdf_expand_label(psk_key, DISCOVERY_LABEL, b"", 32)


def _tag(k_d: bytes, data: bytes) -> bytes:
    return hmac.new(k_d, data, hashlib.sha256).digest()


def _header(kind: int, flags: int) -> bytes:
    return MAGIC + bytes([WIRE_VERSION, kind]) + flags.to_bytes(2, "big")


# --- PING (section 3.2) ---------------------------------------------------------------------


def build_ping(
    k_d: bytes,
    nonce: bytes | None = None,
    size: int = DEFAULT_PING_SIZE,
    *,
    flags: int = 0,
    padding: bytes | None = None,
) -> bytes:
    """Build a PING of ``size`` bytes: header, nonce, zero padding, tag.

    ``flags`` and ``padding`` exist only so that tests can build PINGs that the RFC says a
    receiver must tolerate (unknown flag bits, non-zero padding).
    """
    if not PING_MIN_SIZE <= size <= MAX_DATAGRAM:
        raise ValueError(f"PING size must be {PING_MIN_SIZE}..{MAX_DATAGRAM}")
    nonce = os.urandom(NONCE_LEN) if nonce is None else nonce
    if len(nonce) != NONCE_LEN:
        raise ValueError("nonce must be 16 bytes")
    pad_len = size - 56
    padding = bytes(pad_len) if padding is None else padding
    if len(padding) != pad_len:
        raise ValueError(f"padding must be {pad_len} bytes")
    body = _header(TYPE_PING, flags) + nonce + padding
    return body + _tag(k_d, body)


def parse_ping(k_d: bytes, datagram: bytes) -> bytes:
    """Verify a PING as a server would (section 3.5 steps 1-3); return its nonce."""
    if len(datagram) > MAX_DATAGRAM or len(datagram) < PING_MIN_SIZE:
        raise DatagramError("PING size out of range")
    if datagram[:4] != MAGIC or datagram[4] != WIRE_VERSION or datagram[5] != TYPE_PING:
        raise DatagramError("bad PING header")
    if not hmac.compare_digest(_tag(k_d, datagram[:-TAG_LEN]), datagram[-TAG_LEN:]):
        raise DatagramError("bad PING tag")
    return datagram[HEADER_LEN : HEADER_LEN + NONCE_LEN]


# --- PONG (section 3.2) ---------------------------------------------------------------------


@dataclass(frozen=True)
class Pong:
    """A verified PONG."""

    nonce: bytes
    server_id: bytes
    port: int
    name: str
    versions: tuple[int, ...]
    capabilities: tuple[str, ...]
    flags: int
    size: int

    @property
    def caps_truncated(self) -> bool:
        return bool(self.flags & FLAG_CAPS_TRUNCATED)


def _check_text(raw: bytes, what: str) -> str:
    """Section 5.1 text rules: valid UTF-8, no C0, DEL or C1 code points."""
    try:
        text = raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise DatagramError(f"{what} is not UTF-8") from exc
    for ch in text:
        cp = ord(ch)
        if cp <= 0x1F or 0x7F <= cp <= 0x9F:
            raise DatagramError(f"{what} contains a control character")
    return text


def _check_token(raw: bytes) -> str:
    if TOKEN_RE.fullmatch(raw) is None:
        raise DatagramError("malformed capability token")
    return raw.decode("ascii")


def encode_pong(
    k_d: bytes,
    nonce: bytes,
    server_id: bytes,
    port: int,
    name: str,
    versions: list[int] | tuple[int, ...],
    capabilities: list[str] | tuple[str, ...],
    *,
    flags: int = 0,
) -> bytes:
    """Build a PONG (used for the vectors and to exercise the client's checks)."""
    name_b = name.encode("utf-8")
    body = bytearray(_header(TYPE_PONG, flags))
    body += nonce + server_id + port.to_bytes(2, "big")
    body += bytes([len(name_b)]) + name_b
    body += bytes([len(versions)]) + bytes(versions)
    body += bytes([len(capabilities)])
    for cap in capabilities:
        tok = cap.encode("ascii")
        body += bytes([len(tok)]) + tok
    return bytes(body) + _tag(k_d, bytes(body))


def parse_pong(
    k_d: bytes,
    datagram: bytes,
    *,
    max_size: int = MAX_DATAGRAM,
    expected_nonce: bytes | None = None,
) -> Pong:
    """Verify and decode a PONG (section 3.5, client rules 1 and 2; 3 if a nonce is given).

    Raises DatagramError on any failure. The tag is checked (in constant time) before any
    field is decoded; a PONG with a valid tag and a malformed field is still rejected.
    """
    size = len(datagram)
    if size > MAX_DATAGRAM or size > max_size:
        raise DatagramError("PONG larger than the cap or than our PING")
    if size < HEADER_LEN + NONCE_LEN + TAG_LEN:
        raise DatagramError("PONG too short")
    if datagram[:4] != MAGIC:
        raise DatagramError("bad magic")
    if datagram[4] != WIRE_VERSION or datagram[5] != TYPE_PONG:
        raise DatagramError("unknown version or type")
    body, tag = datagram[:-TAG_LEN], datagram[-TAG_LEN:]
    if not hmac.compare_digest(_tag(k_d, body), tag):
        raise DatagramError("bad PONG tag")
    flags = int.from_bytes(body[6:8], "big")  # undefined bits ignored
    nonce = body[8:24]
    if expected_nonce is not None and not hmac.compare_digest(nonce, expected_nonce):
        raise DatagramError("PONG answers another PING")

    pos = 24

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(body):
            raise DatagramError("PONG ends inside a field")
        out = body[pos : pos + n]
        pos += n
        return out

    server_id = take(SERVER_ID_LEN)
    port = int.from_bytes(take(2), "big")
    if not 1 <= port <= 65535:
        raise DatagramError("TCP port out of range")
    name_len = take(1)[0]
    if not NAME_MIN <= name_len <= NAME_MAX:
        raise DatagramError("name length out of range")
    name = _check_text(take(name_len), "name")
    n_versions = take(1)[0]
    if not VERSIONS_MIN <= n_versions <= VERSIONS_MAX:
        raise DatagramError("version count out of range")
    versions = tuple(take(n_versions))
    if 0 in versions:
        raise DatagramError("version 0")
    # RFC-READING: duplicate versions are not forbidden by section 3.2, so they are accepted.
    n_caps = take(1)[0]
    if n_caps > CAPS_MAX:
        raise DatagramError("too many capabilities")
    caps: list[str] = []
    for _ in range(n_caps):
        tok_len = take(1)[0]
        caps.append(_check_token(take(tok_len)))
    if len(set(caps)) != len(caps):
        raise DatagramError("duplicate capability")
    # RFC-READING: the capabilities must end exactly where the tag begins (no trailing bytes).
    if pos != len(body):
        raise DatagramError("trailing bytes before the tag")
    return Pong(
        nonce=nonce,
        server_id=server_id,
        port=port,
        name=name,
        versions=versions,
        capabilities=tuple(caps),
        flags=flags,
        size=size,
    )


# --- A scan (section 3.5, client rules 3 and 4) -----------------------------------------------


@dataclass(frozen=True)
class Answer:
    """A verified PONG with where and when it came from."""

    pong: Pong
    address: str  # the PONG's source address: an address of the server (section 3.1)
    source_port: int
    rtt: float


@dataclass
class Scan:
    """Bookkeeping of one scan: the nonces we sent and the PONGs already accepted."""

    k_d: bytes
    sent: dict[bytes, tuple[float, int]] = field(default_factory=dict)  # nonce -> (t, size)
    seen: set[tuple[bytes, bytes]] = field(default_factory=set)  # (nonce, server_id)

    def new_ping(self, size: int = DEFAULT_PING_SIZE, now: float | None = None) -> bytes:
        ping = build_ping(self.k_d, size=size)
        nonce = ping[HEADER_LEN : HEADER_LEN + NONCE_LEN]
        self.sent[nonce] = (time.monotonic() if now is None else now, size)
        return ping

    def accept(self, datagram: bytes, source: tuple[str, int], now: float | None = None) -> Answer:
        """Return the Answer for a datagram, or raise DatagramError if it must be ignored."""
        if len(datagram) < HEADER_LEN + NONCE_LEN:
            raise DatagramError("too short")
        entry = self.sent.get(datagram[HEADER_LEN : HEADER_LEN + NONCE_LEN])
        if entry is None:
            raise DatagramError("nonce not sent during this scan")
        sent_at, ping_size = entry
        pong = parse_pong(self.k_d, datagram, max_size=ping_size)
        key = (pong.nonce, pong.server_id)
        if key in self.seen:
            raise DatagramError("duplicate PONG for this (nonce, server id)")
        self.seen.add(key)
        now = time.monotonic() if now is None else now
        return Answer(pong, source[0], source[1], now - sent_at)


def retransmit_offsets(timeout: float) -> list[float]:
    """Send times of section 3.1: 0, 0.1, 0.3, 0.7, 1.5, 2.5, 3.5 ... below ``timeout``."""
    offsets, t, gap = [], 0.0, FIRST_GAP
    while t < timeout and len(offsets) < 1000:
        offsets.append(round(t, 6))
        t += gap
        gap = min(gap * 2, MAX_GAP)
    return offsets


def discover(
    host: str,
    port: int,
    psk: str | bytes | None = None,
    *,
    psk_key: bytes | None = None,
    timeout: float = 2.0,
    ping_size: int = DEFAULT_PING_SIZE,
    stop_after_first: bool = True,
) -> list[Answer]:
    """Unicast PINGs to ``host:port`` on the section 3.1 schedule and collect verified PONGs.

    Only the "static target" path of section 3.1 is implemented (no broadcast, no mDNS).
    Returns the accepted answers (possibly empty) after ``timeout`` seconds, or as soon as
    one arrived when ``stop_after_first`` is true.
    """
    if psk_key is None:
        if psk is None:
            raise ValueError("need psk or psk_key")
        psk_key = derive_psk_key(psk)
    scan = Scan(discovery_key(psk_key))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    answers: list[Answer] = []
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        start = time.monotonic()
        deadline = start + timeout
        pending = [start + off for off in retransmit_offsets(timeout)]
        for _ in range(100_000):  # bounded: ends at the deadline long before this
            now = time.monotonic()
            if now >= deadline:
                break
            while pending and pending[0] <= now:
                pending.pop(0)
                sock.sendto(scan.new_ping(ping_size), (host, port))
            wake = min(pending[0] if pending else deadline, deadline)
            readable, _, _ = select.select([sock], [], [], max(0.0, wake - time.monotonic()))
            if not readable:
                continue
            for _ in range(64):  # drain a batch
                try:
                    data, src = sock.recvfrom(MAX_DATAGRAM + 1)
                except BlockingIOError:
                    break
                try:
                    answers.append(scan.accept(data, src))
                except DatagramError:
                    continue
            if answers and stop_after_first:
                break
    return answers


def exchange(
    datagram: bytes,
    host: str,
    port: int,
    *,
    wait: float = 0.5,
    sock: socket.socket | None = None,
) -> tuple[bytes, tuple[str, int]] | None:
    """Send one raw datagram and return the first datagram received within ``wait`` s.

    ``None`` is the RFC's silence. Used by the tests to send malformed or replayed PINGs.
    """
    own = sock is None
    if sock is None:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.sendto(datagram, (host, port))
        sock.settimeout(wait)
        try:
            return sock.recvfrom(MAX_DATAGRAM + 1)
        except TimeoutError:
            return None
    finally:
        if own:
            sock.close()


# --- Test vectors (Appendix A.2, referenced from section 3.10) -----------------------------

VECTOR_BEGIN = "<!-- discovery-vectors:begin -->"
VECTOR_END = "<!-- discovery-vectors:end -->"


def _parse_vector_block(rfc_text: str) -> dict[str, object]:
    start = rfc_text.index(VECTOR_BEGIN)
    block = rfc_text[start : rfc_text.index(VECTOR_END, start)]
    lines = [ln.rstrip() for ln in block.splitlines()]
    out: dict[str, object] = {}
    hex_line = re.compile(r"[0-9a-f]+")
    i = 0
    while i < len(lines):
        ln = lines[i]
        if ln.startswith("PSK "):
            out["psk"] = ln.split(None, 1)[1].strip()
        elif ln.startswith("psk_key "):
            out["psk_key"] = bytes.fromhex(ln.split()[1])
        elif ln.startswith("K_d "):
            out["k_d"] = bytes.fromhex(ln.split()[1])
        elif ln.startswith("PING tag "):
            out["ping_tag"] = bytes.fromhex(ln.split()[2])
        elif ln.startswith("PONG tag "):
            out["pong_tag"] = bytes.fromhex(ln.split()[2])
        elif ln.startswith("PING:"):
            m = re.fullmatch(r"PING: nonce ([0-9a-f]{32}), size (\d+) bytes", ln)
            if m is None:
                raise ValueError(f"unparsed PING line: {ln!r}")
            out["nonce"], out["ping_size"] = bytes.fromhex(m[1]), int(m[2])
            hexes, i = _collect_hex(lines, i + 1, hex_line)
            out["ping"] = hexes
            continue
        elif ln.startswith("PONG:"):
            desc = ln + " " + lines[i + 1].strip()
            m = re.fullmatch(
                r"PONG: server id ([0-9a-f]{32}), name '([^']*)', TCP port (\d+), "
                r"versions (\[[^\]]*\]), capabilities (\[[^\]]*\]), (\d+) bytes",
                desc,
            )
            if m is None:
                raise ValueError(f"unparsed PONG description: {desc!r}")
            out["server_id"] = bytes.fromhex(m[1])
            out["name"], out["port"] = m[2], int(m[3])
            out["versions"] = ast.literal_eval(m[4])
            out["capabilities"] = ast.literal_eval(m[5])
            out["pong_size"] = int(m[6])
            hexes, i = _collect_hex(lines, i + 2, hex_line)
            out["pong"] = hexes
            continue
        i += 1
    return out


def _collect_hex(lines: list[str], i: int, hex_line: re.Pattern[str]) -> tuple[bytes, int]:
    chunks = []
    while i < len(lines) and hex_line.fullmatch(lines[i]):
        chunks.append(lines[i])
        i += 1
    return bytes.fromhex("".join(chunks)), i


def check_vectors(rfc_path: str | os.PathLike[str] | None = None) -> list[str]:
    """Recompute Appendix A.2 (and A.1's passphrase key) from the printed inputs.

    Returns the list of mismatches (empty when every printed value is reproduced).
    """
    if rfc_path is None:
        rfc_path = Path(__file__).resolve().parents[2] / "docs" / "rfc.md"
    rfc_text = Path(rfc_path).read_text(encoding="utf-8")
    v = _parse_vector_block(rfc_text)
    problems: list[str] = []

    def cmp(what: str, got: object, printed: object) -> None:
        if got != printed:
            problems.append(f"{what}: computed {got!r}, printed {printed!r}")

    # Appendix A.1 also prints a passphrase vector (section 9, PBKDF2): check it too.
    phrase = re.search(r'passphrase vector: `"([^"`]*)"`', rfc_text)
    phrase_key = re.search(r"passphrase_key \(32 bytes\)\s+([0-9a-f]{64})", rfc_text)
    if phrase is None or phrase_key is None:
        problems.append("passphrase vector not found in Appendix A.1")
    else:
        cmp("passphrase_key", derive_psk_key(phrase[1]), bytes.fromhex(phrase_key[1]))

    psk_key = derive_psk_key(str(v["psk"]))
    cmp("psk_key", psk_key, v["psk_key"])
    k_d = discovery_key(psk_key)
    cmp("K_d", k_d, v["k_d"])
    ping = build_ping(k_d, v["nonce"], int(v["ping_size"]))  # type: ignore[arg-type]
    cmp("PING bytes", ping, v["ping"])
    cmp("PING size", len(ping), v["ping_size"])
    cmp("PING tag", ping[-TAG_LEN:], v["ping_tag"])
    cmp("PING tag (printed vs last 32 bytes of printed PING)", v["ping_tag"], v["ping"][-32:])  # type: ignore[index]
    try:
        cmp("PING nonce (decoded)", parse_ping(k_d, v["ping"]), v["nonce"])  # type: ignore[arg-type]
    except DatagramError as exc:
        problems.append(f"printed PING does not verify: {exc}")
    pong = encode_pong(
        k_d,
        v["nonce"],  # type: ignore[arg-type]
        v["server_id"],  # type: ignore[arg-type]
        int(v["port"]),  # type: ignore[call-overload]
        str(v["name"]),
        v["versions"],  # type: ignore[arg-type]
        v["capabilities"],  # type: ignore[arg-type]
    )
    cmp("PONG bytes", pong, v["pong"])
    cmp("PONG size", len(pong), v["pong_size"])
    cmp("PONG tag", pong[-TAG_LEN:], v["pong_tag"])
    try:
        decoded = parse_pong(k_d, v["pong"], max_size=len(ping), expected_nonce=v["nonce"])  # type: ignore[arg-type]
    except DatagramError as exc:
        problems.append(f"printed PONG does not verify: {exc}")
    else:
        cmp("PONG server id", decoded.server_id, v["server_id"])
        cmp("PONG name", decoded.name, v["name"])
        cmp("PONG port", decoded.port, v["port"])
        cmp("PONG versions", list(decoded.versions), v["versions"])
        cmp("PONG capabilities", list(decoded.capabilities), v["capabilities"])
        cmp("PONG flags", decoded.flags, 0)
    return problems
