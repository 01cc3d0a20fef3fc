"""Known-answer vectors: the bytes in the RFC draft are regenerated from the code.

The block between the ``discovery-vectors`` markers is looked for in
docs/rfc.md (Appendix A.2).
``python tests/discovery/test_discovery_vectors.py`` prints the block.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from ppcp.crypto.psk import derive_psk_key
from ppcp.discovery.wire import (
    MIN_PING_SIZE,
    TAG_LEN,
    Ping,
    Pong,
    ServerIdentity,
    discovery_key,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"
BEGIN = "<!-- discovery-vectors:begin -->"
END = "<!-- discovery-vectors:end -->"

PSK = "ppcp-psk-" + bytes(range(32)).hex()
NONCE = bytes(range(0xF0, 0x100))
IDENTITY = ServerIdentity(bytes(range(0xA0, 0xB0)), "demo-server", 9000, (1,), ("msg", "exec"))
# A 64-byte name of two-byte characters and every default capability: the 192-byte
# PING cannot hold them, so the PONG drops capabilities from the end (CAPS_TRUNCATED).
CROWDED = ServerIdentity(
    bytes(range(0xB0, 0xC0)),
    "\u00e9" * 32,
    9000,
    (1,),
    ("msg", "channels", "heartbeat", "exec", "shell", "files", "binary-data", "zlib"),
)


def _hex(data: bytes) -> str:
    return "\n".join(textwrap.wrap(data.hex(), 64))


def render() -> str:
    psk_key = derive_psk_key(PSK)
    key = discovery_key(psk_key)
    ping = Ping(NONCE, MIN_PING_SIZE).encode(key)
    pong = Pong(NONCE, IDENTITY).encode(key, len(ping))
    cut = Pong(NONCE, CROWDED).encode(key, len(ping))
    kept = Pong.decode(cut, key).server.capabilities
    return "\n".join(
        [
            "```text",
            f"PSK      {PSK}",
            f"psk_key  {psk_key.hex()}",
            f"K_d      {key.hex()}",
            "",
            f"PING: nonce {NONCE.hex()}, size {len(ping)} bytes",
            _hex(ping),
            f"PING tag {ping[-TAG_LEN:].hex()}",
            "",
            f"PONG: server id {IDENTITY.server_id.hex()}, name {IDENTITY.name!r}, "
            f"TCP port {IDENTITY.port},",
            f"      versions {list(IDENTITY.versions)}, capabilities "
            f"{list(IDENTITY.capabilities)}, {len(pong)} bytes",
            _hex(pong),
            f"PONG tag {pong[-TAG_LEN:].hex()}",
            "",
            f"Truncated PONG: server id {CROWDED.server_id.hex()}, name 'é' x 32 "
            f"({len(CROWDED.name.encode())} bytes),",
            f"      TCP port {CROWDED.port}, versions {list(CROWDED.versions)}, capabilities",
            *textwrap.wrap(
                str(list(CROWDED.capabilities)),
                80,
                initial_indent=" " * 6,
                subsequent_indent=" " * 6,
            ),
            f"      answering the PING above: the first {len(kept)} capabilities kept, "
            f"flags 0x{int.from_bytes(cut[6:8], 'big'):04x}, {len(cut)} bytes",
            _hex(cut),
            f"Truncated PONG tag {cut[-TAG_LEN:].hex()}",
            "```",
        ]
    )


def documented() -> str:
    for name in ("rfc.md",):
        path = DOCS / name
        if path.exists() and BEGIN in (text := path.read_text()):
            m = re.search(re.escape(BEGIN) + r"\n(.*?)\n" + re.escape(END), text, re.S)
            assert m, f"{path}: unterminated {BEGIN} block"
            return m.group(1).strip()
    raise AssertionError(f"no {BEGIN} block in docs/rfc.md")


def test_vectors_match_the_spec() -> None:
    assert documented() == render().strip()


def test_vectors_decode() -> None:
    key = discovery_key(derive_psk_key(PSK))
    ping = Ping(NONCE, MIN_PING_SIZE).encode(key)
    assert Ping.decode(ping, key).nonce == NONCE
    assert Pong.decode(Pong(NONCE, IDENTITY).encode(key, len(ping)), key).server == IDENTITY
    cut = Pong.decode(Pong(NONCE, CROWDED).encode(key, len(ping)), key)
    assert cut.capabilities_truncated and cut.flags == 0x0001
    kept = cut.server.capabilities
    assert 0 < len(kept) < len(CROWDED.capabilities)
    assert kept == CROWDED.capabilities[: len(kept)]


if __name__ == "__main__":
    print(BEGIN)
    print(render())
    print(END)
