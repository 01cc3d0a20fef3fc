"""Known-answer test vectors and generated tables for docs/rfc.md.

:func:`generate` runs one complete in-memory session between a client and a
server :class:`~ppcp.transport.connection.Connection` with every input fixed
(random sources, PSK, names, capabilities) and returns each intermediate value
as ``(name, hex)``.  Intermediate secrets are recomputed with the public
functions of :mod:`ppcp.crypto.schedule` and cross-checked against what the
two connections actually put on the wire, so a vector can only be printed if
the code and the documented derivation agree.

Script mode::

    python -m ppcp.utils.vectors                  # Appendix A (markdown)
    python -m ppcp.utils.vectors --state-table    # the RFC state table
    python -m ppcp.utils.vectors --state-diagram  # the Mermaid state diagrams
    python -m ppcp.utils.vectors --update         # rewrite every generated block in docs/

The generated blocks sit between ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->`` marker lines; tests/test_rfc_vectors.py and
tests/test_rfc_consistency.py check that they are current.

The deterministic random source here exists only to pin bytes for tests.
Never use it (or any fixed seed) for a real session.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Iterable
from pathlib import Path

from ppcp.core.events import ConnectionClosed, Event, HandshakeComplete, MessageReceived
from ppcp.core.states import INITIAL_STATE, TRANSITIONS, Role, State
from ppcp.crypto.psk import KEY_PREFIX, derive_psk_key
from ppcp.crypto.schedule import HandshakeSecrets, TrafficKeys, transcript_hash
from ppcp.handshake.machine import HandshakeConfig
from ppcp.handshake.messages import ClientHello, ServerHello
from ppcp.key_exchange.ecdh import EphemeralKey, RandomSource
from ppcp.transport.connection import Connection, ConnectionConfig
from ppcp.transport.frames import HEADER, HEADER_LEN, FrameType

Vector = tuple[str, str]

CLIENT_SEED = b"ppcp test vector client"
SERVER_SEED = b"ppcp test vector server"
PSK = KEY_PREFIX + bytes(range(32)).hex()
PASSPHRASE = "ppcp test vector passphrase"  # noqa: S105 (a published test input)
CLIENT_NAME = "client"
SERVER_NAME = "server"
CAPABILITIES: tuple[str, ...] = ("msg",)
# The client's sender rotates its key after this many records, so the vectors
# include a KEY_UPDATE record and a record under the updated key.
CLIENT_REKEY_AFTER_RECORDS = 2
CLIENT_MESSAGES = (b"hello", b"world")
SERVER_MESSAGE = b"hello, client"
REKEYED_MESSAGE = b"after key update"

HEX_WIDTH = 64
DOCS = Path(__file__).resolve().parents[2] / "docs"


class VectorError(RuntimeError):
    """The connections disagreed with the documented derivation."""


class StreamRNG:
    """Counter-mode SHA-256 stream: ``SHA-256(seed || u64be(i))`` for i = 0, 1, ...

    Bytes are handed out in order; every draw is recorded in :attr:`draws`.
    """

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._counter = 0
        self._buf = bytearray()
        self.draws: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        while len(self._buf) < n:
            block = self._seed + self._counter.to_bytes(8, "big")
            self._buf += hashlib.sha256(block).digest()
            self._counter += 1
        out = bytes(self._buf[:n])
        del self._buf[:n]
        self.draws.append(out)
        return out


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise VectorError(what)


def _frames(data: bytes | bytearray | memoryview) -> list[bytes]:
    """Split a byte string into whole frames (header included)."""
    data = bytes(data)
    out = []
    while data:
        _, _, length = HEADER.unpack_from(data)
        end = HEADER_LEN + length
        _check(len(data) >= end, "truncated frame in output")
        out.append(data[:end])
        data = data[end:]
    return out


def _one_frame(data: bytes | bytearray | memoryview, frame_type: FrameType) -> bytes:
    frames = _frames(data)
    _check(len(frames) == 1, f"expected one {frame_type.name} frame, got {len(frames)}")
    _check(frames[0][0] == frame_type, f"expected a {frame_type.name} frame")
    return frames[0]


def _messages(events: Iterable[Event]) -> list[bytes]:
    return [e.data for e in events if isinstance(e, MessageReceived)]


def _replay(value: bytes) -> RandomSource:
    """A random source that yields ``value`` once (to rebuild a recorded key pair)."""

    def rng(n: int) -> bytes:
        _check(n == len(value), "unexpected draw while rebuilding a key pair")
        return value

    return rng


def _keys(prefix: str, keys: TrafficKeys) -> list[Vector]:
    return [
        (f"{prefix}_secret", keys.secret.hex()),
        (f"{prefix}_key", keys.key.hex()),
        (f"{prefix}_iv", keys.iv.hex()),
    ]


def generate() -> list[Vector]:
    """Run the fixed session and return every documented value as ``(name, hex)``."""
    psk_key = derive_psk_key(PSK)
    crng, srng = StreamRNG(CLIENT_SEED), StreamRNG(SERVER_SEED)
    client = Connection(
        Role.CLIENT,
        psk_key,
        ConnectionConfig(
            HandshakeConfig(CLIENT_NAME, (1,), CAPABILITIES),
            rekey_after_records=CLIENT_REKEY_AFTER_RECORDS,
        ),
        crng,
    )
    server = Connection(
        Role.SERVER,
        psk_key,
        ConnectionConfig(HandshakeConfig(SERVER_NAME, (1,), CAPABILITIES)),
        srng,
    )

    # -- handshake --------------------------------------------------------------
    client.initiate()
    ch = _one_frame(client.data_to_send(), FrameType.CLIENT_HELLO)
    _check(server.receive_data(ch) == [], "server produced events on CLIENT_HELLO")
    sh = _one_frame(server.data_to_send(), FrameType.SERVER_HELLO)
    _check(client.receive_data(sh) == [], "client produced events on SERVER_HELLO")
    ca = _one_frame(client.data_to_send(), FrameType.CLIENT_AUTH)
    server_events = server.receive_data(ca)
    sa = _one_frame(server.data_to_send(), FrameType.SERVER_AUTH)
    client_events = client.receive_data(sa)
    _check(
        all(
            len(ev) == 1 and isinstance(ev[0], HandshakeComplete)
            for ev in (server_events, client_events)
        ),
        "handshake did not complete on both sides",
    )
    _check(len(crng.draws) == 2 and len(srng.draws) == 2, "unexpected number of random draws")
    client_random, client_scalar = crng.draws
    server_random, server_scalar = srng.draws

    chello = ClientHello.decode(ch[HEADER_LEN:])
    shello = ServerHello.decode(sh[HEADER_LEN:])
    _check(chello.random == client_random and shello.random == server_random, "hello randoms")
    client_eph = EphemeralKey(_replay(client_scalar))
    server_eph = EphemeralKey(_replay(server_scalar))
    _check(client_eph.public_bytes == chello.key_share, "client key share")
    _check(server_eph.public_bytes == shello.key_share, "server key share")
    ecdh_secret = client_eph.exchange(shello.key_share)
    _check(ecdh_secret == server_eph.exchange(chello.key_share), "ECDH secrets differ")

    hello_hash = transcript_hash(ch, sh)
    client_auth_hash = transcript_hash(ch, sh, ca)
    full_hash = transcript_hash(ch, sh, ca, sa)
    secrets = HandshakeSecrets.derive(psk_key, ecdh_secret, hello_hash)
    _check(ca[HEADER_LEN:] == secrets.client_proof(hello_hash), "client proof")
    _check(sa[HEADER_LEN:] == secrets.server_proof(client_auth_hash), "server proof")
    c2s, s2c = secrets.traffic(full_hash)
    cres, sres = client.result, server.result
    _check(cres is not None and sres is not None, "no handshake result")
    assert cres is not None and sres is not None
    _check(cres.send_keys == c2s == sres.recv_keys, "client-to-server keys")
    _check(cres.recv_keys == s2c == sres.send_keys, "server-to-client keys")
    _check(cres.session_id == full_hash[:16] == sres.session_id, "session id")

    # -- records ------------------------------------------------------------------
    c_records = []
    for msg in CLIENT_MESSAGES:
        client.send_message(msg)
        c_records.append(_one_frame(client.data_to_send(), FrameType.MESSAGE))
    _check(
        _messages(server.receive_data(b"".join(c_records))) == list(CLIENT_MESSAGES),
        "server did not decrypt the client's records",
    )
    server.send_message(SERVER_MESSAGE)
    s_record = _one_frame(server.data_to_send(), FrameType.MESSAGE)
    _check(_messages(client.receive_data(s_record)) == [SERVER_MESSAGE], "server record")

    client.send_message(REKEYED_MESSAGE)
    key_update, rekeyed = _frames(client.data_to_send())
    _check(key_update[0] == FrameType.KEY_UPDATE and rekeyed[0] == FrameType.MESSAGE, "rekey")
    c2s_next = c2s.updated()
    _check(_messages(server.receive_data(key_update + rekeyed)) == [REKEYED_MESSAGE], "rekeyed")

    # -- orderly close -------------------------------------------------------------
    client.close()
    c_close = _one_frame(client.data_to_send(), FrameType.CLOSE)
    closed = server.receive_data(c_close)
    _check(len(closed) == 1 and isinstance(closed[0], ConnectionClosed), "server saw no CLOSE")
    s_close = _one_frame(server.data_to_send(), FrameType.CLOSE)
    closed = client.receive_data(s_close)
    _check(len(closed) == 1 and isinstance(closed[0], ConnectionClosed), "client saw no CLOSE")
    _check(client.state is State.CLOSED and server.state is State.CLOSED, "not closed")

    passphrase_key = derive_psk_key(PASSPHRASE)

    return [
        ("psk_key", psk_key.hex()),
        ("passphrase_key", passphrase_key.hex()),
        ("client_random", client_random.hex()),
        ("client_private_scalar", client_scalar.hex()),
        ("client_public_key", chello.key_share.hex()),
        ("server_random", server_random.hex()),
        ("server_private_scalar", server_scalar.hex()),
        ("server_public_key", shello.key_share.hex()),
        ("client_hello_frame", ch.hex()),
        ("server_hello_frame", sh.hex()),
        ("ecdh_secret", ecdh_secret.hex()),
        ("hello_hash", hello_hash.hex()),
        ("handshake_secret", secrets.handshake_secret.hex()),
        ("client_auth_key", secrets.client_auth_key.hex()),
        ("server_auth_key", secrets.server_auth_key.hex()),
        ("client_auth_frame", ca.hex()),
        ("client_auth_hash", client_auth_hash.hex()),
        ("server_auth_frame", sa.hex()),
        ("full_hash", full_hash.hex()),
        ("session_id", full_hash[:16].hex()),
        *_keys("c2s", c2s),
        *_keys("s2c", s2c),
        ("c2s_record_0", c_records[0].hex()),
        ("c2s_record_1", c_records[1].hex()),
        ("s2c_record_0", s_record.hex()),
        ("c2s_key_update_record", key_update.hex()),
        *_keys("c2s_updated", c2s_next),
        ("c2s_updated_record_0", rekeyed.hex()),
        ("c2s_close_record", c_close.hex()),
        ("s2c_close_record", s_close.hex()),
    ]


# -- markdown ------------------------------------------------------------------------


def _wrap(hex_value: str, indent: str = "    ") -> list[str]:
    return [indent + hex_value[i : i + HEX_WIDTH] for i in range(0, len(hex_value), HEX_WIDTH)]


def vectors_markdown(vectors: list[Vector] | None = None) -> str:
    """The body of RFC Appendix A (between the ``vectors`` markers)."""
    vectors = generate() if vectors is None else vectors
    lines = [
        "Inputs:",
        "",
        f'* PSK: the generated-key string `"{PSK}"`',
        f'  (psk_key = bytes 0x00..0x1f); passphrase vector: `"{PASSPHRASE}"`.',
        f'* Names: client `"{CLIENT_NAME}"`, server `"{SERVER_NAME}"`; versions offered: `[1]`;',
        "  capabilities on both sides: `[" + ", ".join(f'"{c}"' for c in CAPABILITIES) + "]`.",
        "* Random sources: counter-mode SHA-256 streams, byte i of the stream being byte",
        "  i of `SHA-256(seed || u64be(0)) || SHA-256(seed || u64be(1)) || ...`, with",
        f'  seed `"{CLIENT_SEED.decode()}"` (client) and `"{SERVER_SEED.decode()}"` (server).',
        "  Each side draws its 32-byte hello random first, then its 32-byte private scalar.",
        "* Records: the client sends the messages "
        + ", ".join(f'`"{m.decode()}"`' for m in CLIENT_MESSAGES)
        + f'; the server sends `"{SERVER_MESSAGE.decode()}"`.',
        f"  The client's sender threshold is {CLIENT_REKEY_AFTER_RECORDS} records, so its next "
        f'message `"{REKEYED_MESSAGE.decode()}"`',
        "  is preceded by a KEY_UPDATE record (sealed with sequence number 2 under the old key;",
        "  the message is then sequence number 0 under the new one, and the CLOSE 1).",
        "  Then the client closes (NORMAL, empty reason)",
        "  and the server answers with its own CLOSE.",
        "",
        "All values are hexadecimal; `*_frame` and `*_record` values are whole frames,",
        "6-byte header included.",
        "",
        "```text",
    ]
    for name, value in vectors:
        lines.append(f"{name} ({len(value) // 2} bytes)")
        lines.extend(_wrap(value))
    lines.append("```")
    return "\n".join(lines)


def _transition_rows() -> list[tuple[Role, State, FrameType, State]]:
    return [
        (role, state, frame, nxt)
        for role, table in TRANSITIONS.items()
        for state, row in table.items()
        for frame, nxt in row.items()
    ]


def state_table() -> str:
    """The RFC state table (between the ``state-table`` markers), one row per transition."""
    lines = ["| Role | State | Frame | Next state |", "| --- | --- | --- | --- |"]
    for role, state, frame, nxt in _transition_rows():
        lines.append(f"| {role.name} | {state.name} | {frame.name} | {nxt.name} |")
    return "\n".join(lines)


# Local actions drawn on the diagrams (they are not in TRANSITIONS: nothing is received).
_LOCAL: dict[Role, list[tuple[str, str, str]]] = {
    Role.CLIENT: [
        ("START", "WAIT_SERVER_HELLO", "send CLIENT_HELLO"),
        ("OPEN", "CLOSING", "send CLOSE"),
    ],
    Role.SERVER: [("OPEN", "CLOSING", "send CLOSE")],
}


def state_diagram(role: Role) -> str:
    """Mermaid stateDiagram-v2 for ``role``: frames from TRANSITIONS plus local steps."""
    lines = ["```mermaid", "stateDiagram-v2", f"    [*] --> {INITIAL_STATE[role].name}"]
    for src, dst, what in _LOCAL[role]:
        lines.append(f"    {src} --> {dst}: {what} (local)")
    grouped: dict[tuple[State, State], list[str]] = {}
    for r, state, frame, nxt in _transition_rows():
        if r is role:
            grouped.setdefault((state, nxt), []).append(frame.name)
    for (state, nxt), frames in grouped.items():
        lines.append(f"    {state.name} --> {nxt.name}: {', '.join(frames)}")
    lines.append("    note left of FAILED: any local error also leads here")
    lines.extend(["    CLOSED --> [*]", "    FAILED --> [*]", "```"])
    return "\n".join(lines)


# -- marker blocks -----------------------------------------------------------------------


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def extract_block(text: str, name: str) -> str:
    """The lines strictly between the ``name`` begin and end marker lines."""
    begin, end = _markers(name)
    lines = text.splitlines()
    try:
        start = lines.index(begin)
        stop = lines.index(end, start)
    except ValueError:
        raise KeyError(f"markers for {name!r} not found") from None
    return "\n".join(lines[start + 1 : stop])


def replace_block(text: str, name: str, content: str) -> str:
    begin, end = _markers(name)
    lines = text.splitlines()
    start = lines.index(begin)
    stop = lines.index(end, start)
    new = [*lines[: start + 1], *content.splitlines(), *lines[stop:]]
    return "\n".join(new) + ("\n" if text.endswith("\n") else "")


def generated_blocks() -> dict[str, dict[str, str]]:
    """{file name in docs/: {block name: content}} for every generated block."""
    from ppcp.control.transfer import file_vectors_markdown

    return {
        "rfc.md": {
            "vectors": vectors_markdown(),
            "state-table": state_table(),
            "file-vectors": file_vectors_markdown(),
        },
        "diagram.md": {
            "state-diagram-client": state_diagram(Role.CLIENT),
            "state-diagram-server": state_diagram(Role.SERVER),
        },
    }


def update(docs: Path = DOCS) -> list[str]:
    """Rewrite every generated block in ``docs``; return the names of files that changed."""
    changed = []
    for filename, blocks in generated_blocks().items():
        path = docs / filename
        text = path.read_text(encoding="utf-8")
        new = text
        for name, content in blocks.items():
            new = replace_block(new, name, content)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(filename)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ppcp.utils.vectors", description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--state-table", action="store_true", help="print the RFC state table")
    group.add_argument(
        "--state-diagram", action="store_true", help="print the Mermaid state diagrams"
    )
    group.add_argument(
        "--update", action="store_true", help="rewrite the generated blocks in docs/"
    )
    args = parser.parse_args(argv)
    if args.state_table:
        print(state_table())
    elif args.state_diagram:
        print(state_diagram(Role.CLIENT))
        print()
        print(state_diagram(Role.SERVER))
    elif args.update:
        for filename in update():
            print(f"updated docs/{filename}")
    else:
        print(vectors_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
