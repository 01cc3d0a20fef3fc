"""Interoperability tests: the independent RFC discovery client against a real PPCP server.

``rfc_discovery`` is written from docs/rfc.md alone (section 3, with sections 8.1 and 9 and
Appendix A.2). The only use of ``ppcp`` here is to start a real server on loopback. All
traffic goes to 127.0.0.1; every wait is bounded by a socket timeout ("silence" in the
RFC's sense), never by an unconditional sleep.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import rfc_discovery as rd

import ppcp
import ppcp.aio

HOST = "127.0.0.1"
SILENCE = 0.5  # how long "no answer" is waited for
PSK_TEXT = ppcp.generate_psk()
OTHER_PSK = "ppcp-psk-" + os.urandom(32).hex()
PASSPHRASE = "interop discovery: a long passphrase, read from the RFC only"

# Section 14: a SessionConfig offers every defined capability, in this order, less `msg`
# for a server started without a session handler (nothing would read its MESSAGEs).
SUPPORTED = ("channels", "heartbeat", "exec", "shell", "files", "binary-data", "zlib")


class Target:
    """A running server and the key material to talk to it."""

    def __init__(self, server: object, psk: str) -> None:
        self.server = server
        self.tcp_port: int = server.port  # type: ignore[attr-defined]
        self.udp_port: int = server.discovery.port  # type: ignore[attr-defined]
        self.k_d = rd.discovery_key(rd.derive_psk_key(psk))

    async def send(
        self, datagram: bytes, *, wait: float = SILENCE, sock: socket.socket | None = None
    ) -> tuple[bytes, tuple[str, int]] | None:
        return await asyncio.to_thread(
            rd.exchange, datagram, HOST, self.udp_port, wait=wait, sock=sock
        )

    async def ping(self, size: int = rd.DEFAULT_PING_SIZE) -> rd.Pong:
        """Send a fresh PING; return the verified PONG that answers it (fails otherwise)."""
        ping = rd.build_ping(self.k_d, size=size)
        got = await self.send(ping, wait=2.0)
        assert got is not None, "no PONG to a valid PING"
        pong = rd.parse_pong(self.k_d, got[0], max_size=len(ping), expected_nonce=ping[8:24])
        assert got[1] == (HOST, self.udp_port)
        return pong


async def _close(server: object) -> None:
    # The brief's API says ``await server.close()``; the real close() returns None.
    if hasattr(server, "aclose"):
        await server.aclose()
        return
    result = server.close()  # type: ignore[attr-defined]
    if inspect.isawaitable(result):
        await result
    if hasattr(server, "wait_closed"):
        await server.wait_closed()


async def _start(name: str = "alpha", psk: str = PSK_TEXT) -> AsyncIterator[Target]:
    server = await ppcp.aio.serve(
        HOST, 0, psk, config=ppcp.SessionConfig(name=name), discovery_port=0
    )
    try:
        yield Target(server, psk)
    finally:
        await _close(server)


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    async for t in _start():
        yield t


def forge(
    k_d: bytes,
    *,
    size: int = 192,
    magic: bytes = b"PPCP",
    version: int = 1,
    kind: int = rd.TYPE_PING,
    flags: int = 0,
    nonce: bytes | None = None,
    padding: bytes | None = None,
) -> bytes:
    """A PING-shaped datagram with a *valid* tag but any header or size we like."""
    nonce = os.urandom(16) if nonce is None else nonce
    padding = bytes(size - 56) if padding is None else padding
    body = magic + bytes([version, kind]) + flags.to_bytes(2, "big") + nonce + padding
    return body + rd._tag(k_d, body)


# --- Without a server -------------------------------------------------------------------


def test_vectors_recompute() -> None:
    assert rd.check_vectors() == []


def test_vector_check_is_not_vacuous(tmp_path: Path) -> None:
    """Changing one printed byte of A.2 (or A.1's passphrase key) is reported."""
    text = (Path(rd.__file__).resolve().parents[2] / "docs" / "rfc.md").read_text("utf-8")
    tag = "05828349d0da56f6481de663cb02b692bf716878f5dd0d87e68ab2683d2f1e27"
    pkey = "6f9d7591f6730ebad682b9eab7bc6c40baf0ab950210d79626573b01f2811b11"
    assert tag in text and pkey in text
    for old in (tag, pkey, "TCP port 9000", "23280b64656d6f"):
        new = old.replace(old[-1], "0" if old[-1] != "0" else "1")
        changed = tmp_path / "rfc.md"
        changed.write_text(text.replace(old, new), "utf-8")
        assert rd.check_vectors(changed) != [], old


def test_generated_psk_has_the_rfc_format() -> None:
    assert PSK_TEXT.startswith("ppcp-psk-")
    assert len(PSK_TEXT) == 9 + 64
    assert rd.derive_psk_key(PSK_TEXT) == bytes.fromhex(PSK_TEXT[9:])


def test_psk_rules() -> None:
    key = bytes(range(32))
    text = "ppcp-psk-" + key.hex()
    assert rd.derive_psk_key(" \t" + "ppcp-psk-" + key.hex().upper() + "\r\n") == key
    for bad in ("", " \n ", "ppcp-psk-00", "ppcp-psk-" + "zz" * 32, text + "0"):
        with pytest.raises(rd.PSKError):
            rd.derive_psk_key(bad)
    with pytest.warns(rd.WeakPSKWarning):
        rd.derive_psk_key("short")


def test_retransmission_schedule() -> None:
    assert rd.retransmit_offsets(4.0) == [0.0, 0.1, 0.3, 0.7, 1.5, 2.5, 3.5]


def test_client_rejects_bad_pongs() -> None:
    """Section 3.5 client rules, exercised on PONGs built with the RFC vector key."""
    k_d = rd.discovery_key(bytes(range(32)))
    scan = rd.Scan(k_d)
    ping = scan.new_ping(192)
    nonce = ping[8:24]
    sid = bytes(16)

    def pong(**kw: object) -> bytes:
        args: dict[str, object] = {
            "nonce": nonce,
            "server_id": sid,
            "port": 9000,
            "name": "x",
            "versions": [1],
            "capabilities": ["msg"],
        }
        args.update(kw)
        return rd.encode_pong(k_d, **args)  # type: ignore[arg-type]

    good = pong()
    answer = scan.accept(good, (HOST, 9000))
    assert answer.pong.name == "x" and answer.rtt >= 0
    with pytest.raises(rd.DatagramError, match="duplicate"):
        scan.accept(good, ("10.0.0.1", 1))  # a copy from any address
    assert scan.accept(pong(server_id=b"\x01" * 16), (HOST, 9000)).pong.server_id != sid

    bad_cases = {
        "tag": good[:-1] + bytes([good[-1] ^ 1]),
        "other nonce": pong(nonce=b"\xee" * 16),
        "other key": rd.encode_pong(b"k" * 32, nonce, sid, 9000, "x", [1], ["msg"]),
        "larger than our PING": pong(name="n" * 64, capabilities=list(SUPPORTED)),
        "port 0": pong(port=0),
        "empty name": pong(name=""),
        "control char": pong(name="a\x1bb"),
        "C1 control": pong(name="a\u0085b"),
        "no versions": pong(versions=[]),
        "version 0": pong(versions=[0]),
        "17 versions": pong(versions=list(range(1, 18))),
        "duplicate cap": pong(capabilities=["msg", "msg"]),
        "bad token": pong(capabilities=["Msg"]),
        "token newline": pong(capabilities=["msg\n"]),
    }
    for what, datagram in bad_cases.items():
        fresh = rd.Scan(k_d, sent={nonce: (time.monotonic(), 192)})
        with pytest.raises(rd.DatagramError):
            fresh.accept(datagram, (HOST, 9000))
            pytest.fail(f"accepted: {what}")
    # A PING is never accepted as a PONG (type byte under the tag), trailing bytes neither.
    with pytest.raises(rd.DatagramError):
        rd.parse_pong(k_d, ping)
    body = good[:-32] + b"\x00"
    with pytest.raises(rd.DatagramError, match="trailing"):
        rd.parse_pong(k_d, body + rd._tag(k_d, body))
    # A PONG that is bigger than 1200 is refused even if our PING were that big.
    assert rd.parse_pong(k_d, good, max_size=len(good)).size == len(good)


# --- Against the real server --------------------------------------------------------------


async def test_ping_gets_verified_pong(target: Target) -> None:
    answers = await asyncio.to_thread(rd.discover, HOST, target.udp_port, PSK_TEXT, timeout=3.0)
    assert len(answers) == 1
    a = answers[0]
    assert a.pong.name == "alpha"
    assert a.pong.port == target.tcp_port
    assert a.pong.versions == (1,)
    assert a.pong.capabilities == SUPPORTED
    assert not a.pong.caps_truncated
    assert len(a.pong.server_id) == 16
    assert (a.address, a.source_port) == (HOST, target.udp_port)
    assert 0 <= a.rtt < 3.0
    # The server id is stable within a run (section 3.4).
    again = await target.ping()
    assert again.server_id == a.pong.server_id


@pytest.mark.parametrize("size", [192, 193, 255, 384, 1199, 1200])
async def test_pong_never_larger_than_ping(target: Target, size: int) -> None:
    pong = await target.ping(size)
    assert pong.size <= size


async def test_caps_truncated_to_fit_the_ping() -> None:
    """Section 3.7: capabilities are dropped from the end until the PONG fits."""
    name = "\u00e9" * 32  # 64 bytes of UTF-8, 32 characters
    async for t in _start(name=name):
        full = await t.ping(1200)
        assert full.name == name and full.capabilities == SUPPORTED
        assert not full.caps_truncated
        for size in (192, 195, full.size - 1, full.size):
            pong = await t.ping(size)
            assert pong.size <= size
            kept = len(pong.capabilities)
            assert pong.capabilities == SUPPORTED[:kept]
            assert pong.caps_truncated == (kept < len(SUPPORTED))
            if kept < len(SUPPORTED):  # the next capability really did not fit
                assert pong.size + 1 + len(SUPPORTED[kept]) > size


async def test_wrong_psk_gets_silence(target: Target) -> None:
    wrong = rd.discovery_key(rd.derive_psk_key(OTHER_PSK))
    assert await target.send(rd.build_ping(wrong)) is None
    answers = await asyncio.to_thread(
        rd.discover, HOST, target.udp_port, OTHER_PSK, timeout=1.0, stop_after_first=False
    )
    assert answers == []
    await target.ping()  # the server is alive and answers its own group


async def test_psk_whitespace_is_stripped(target: Target) -> None:
    answers = await asyncio.to_thread(
        rd.discover, HOST, target.udp_port, " \t" + PSK_TEXT + "\r\n", timeout=2.0
    )
    assert [a.pong.name for a in answers] == ["alpha"]


async def test_passphrase_psk_uses_pbkdf2() -> None:
    async for t in _start(name="phrase", psk=PASSPHRASE):
        answers = await asyncio.to_thread(rd.discover, HOST, t.udp_port, PASSPHRASE, timeout=2.0)
        assert [a.pong.name for a in answers] == ["phrase"]


async def test_generated_key_prefix_in_any_case_is_the_same_key() -> None:
    """Section 9: 'PPCP-PSK-<HEX>' is the generated key itself, not a passphrase."""
    upper = ("ppcp-psk-" + PSK_TEXT[9:]).upper()
    async for t in _start(name="upper", psk=upper):
        as_key = rd.discovery_key(bytes.fromhex(PSK_TEXT[9:]))
        assert t.k_d == as_key
        ping = rd.build_ping(as_key)
        got = await t.send(ping, wait=2.0)
        assert got is not None, "no PONG under the key written in capitals"
        pong = rd.parse_pong(as_key, got[0], max_size=len(ping), expected_nonce=ping[8:24])
        assert pong.name == "upper"


def _malformed(k_d: bytes) -> dict[str, bytes]:
    good = rd.build_ping(k_d)
    return {
        "empty": b"",
        "header only": good[:8],
        "truncated tag": good[:-1],
        "truncated to 100": good[:100],
        "flipped tag bit": good[:-1] + bytes([good[-1] ^ 0x80]),
        "flipped nonce bit": good[:8] + bytes([good[8] ^ 1]) + good[9:],
        "random 384": os.urandom(384),
        "size 191 (valid tag)": forge(k_d, size=191),
        "size 1201 (valid tag)": forge(k_d, size=1201),
        "bad magic (valid tag)": forge(k_d, magic=b"PPCQ"),
        "version 2 (valid tag)": forge(k_d, version=2),
        "version 0 (valid tag)": forge(k_d, version=0),
        "type PONG (valid tag)": forge(k_d, kind=rd.TYPE_PONG),
        "type 3 (valid tag)": forge(k_d, kind=3),
        "PONG from the vectors": rd.encode_pong(
            k_d, good[8:24], bytes(16), 9000, "x", [1], ["msg"]
        ),
    }


@pytest.mark.parametrize("case", list(_malformed(bytes(32))))
async def test_malformed_ping_gets_silence(target: Target, case: str) -> None:
    datagram = _malformed(target.k_d)[case]
    assert await target.send(datagram) is None
    await target.ping()  # and the server still answers a good PING


@pytest.mark.parametrize(
    "case", ["unknown flag bits", "non-zero padding", "minimum size", "maximum size"]
)
async def test_tolerated_ping_variants_are_answered(target: Target, case: str) -> None:
    """Section 3.2: undefined flags are ignored on receipt, padding content is ignored."""
    datagram = {
        "unknown flag bits": lambda: forge(target.k_d, flags=0xFFFF),
        "non-zero padding": lambda: forge(target.k_d, padding=os.urandom(136)),
        "minimum size": lambda: forge(target.k_d, size=192),
        "maximum size": lambda: forge(target.k_d, size=1200),
    }[case]()
    got = await target.send(datagram, wait=2.0)
    assert got is not None
    pong = rd.parse_pong(target.k_d, got[0], max_size=len(datagram), expected_nonce=datagram[8:24])
    assert pong.name == "alpha"


async def test_replayed_ping_is_dropped(target: Target) -> None:
    """Section 3.5 step 4 / 18.10: a nonce seen in the last 60 s gets no answer."""
    ping = rd.build_ping(target.k_d)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        first = await target.send(ping, wait=2.0, sock=s)
        assert first is not None
        assert await target.send(ping, sock=s) is None  # byte-identical, same source
    assert await target.send(ping) is None  # byte-identical, another source port
    # The same nonce under a new valid tag (other size, other padding) is still a replay.
    nonce = ping[8:24]
    assert await target.send(forge(target.k_d, nonce=nonce, size=200)) is None
    await target.ping()  # fresh nonces still work


def _burst(udp_port: int, pings: list[bytes]) -> tuple[list[bytes], float]:
    """Send all PINGs back to back from one socket; collect answers until silence."""
    answers: list[bytes] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        start = time.monotonic()
        for p in pings:
            s.sendto(p, (HOST, udp_port))
        s.settimeout(SILENCE)
        for _ in range(len(pings) + 1):
            try:
                data, _src = s.recvfrom(2048)
            except TimeoutError:
                break
            answers.append(data)
    return answers, time.monotonic() - start


async def test_per_source_rate_limit(target: Target) -> None:
    """Section 3.6 defaults: 10 PONGs per second per source address, burst 20."""
    pings = [rd.build_ping(target.k_d, size=192) for _ in range(30)]
    datagrams, elapsed = await asyncio.to_thread(_burst, target.udp_port, pings)
    answered = [rd.parse_pong(target.k_d, d, max_size=192).nonce for d in datagrams]
    assert len(set(answered)) == len(answered)
    assert set(answered) <= {p[8:24] for p in pings}
    # Burst 20, plus what refills at 10/s while the burst is processed.
    assert 20 <= len(answered) <= 20 + int(10 * elapsed) + 1, (len(answered), elapsed)
    assert len(answered) < len(pings)


async def test_forgeries_and_replays_spend_no_rate_allowance(target: Target) -> None:
    """Section 3.5: tag (3) and replay (4) are checked before the rate limit (5)."""
    first = rd.build_ping(target.k_d, size=192)
    assert await target.send(first, wait=2.0) is not None  # 1 token spent
    forged = [os.urandom(8) + first[8:] for _ in range(30)]
    forged += [first[:-1] + bytes([first[-1] ^ 1]) for _ in range(30)]
    wrong_key = rd.discovery_key(rd.derive_psk_key(OTHER_PSK))
    forged += [rd.build_ping(wrong_key, size=192) for _ in range(30)]
    replays = [first] * 30
    fresh = [rd.build_ping(target.k_d, size=192) for _ in range(19)]  # the rest of the burst
    datagrams, _ = await asyncio.to_thread(_burst, target.udp_port, forged + replays + fresh)
    nonces = [rd.parse_pong(target.k_d, d, max_size=192).nonce for d in datagrams]
    assert sorted(nonces) == sorted(p[8:24] for p in fresh)


async def test_rate_limited_ping_still_consumes_its_nonce(target: Target) -> None:
    """Section 3.5 read literally: step 4 records the nonce before step 5 may drop it.

    A PING dropped by the rate limit is therefore never answered later, even after the
    bucket refills; a client must retransmit with a fresh nonce (section 3.1).
    """
    pings = [rd.build_ping(target.k_d, size=192) for _ in range(30)]
    datagrams, _ = await asyncio.to_thread(_burst, target.udp_port, pings)
    answered = {d[8:24] for d in datagrams}
    dropped = [p for p in pings if p[8:24] not in answered]
    assert dropped
    await asyncio.sleep(0.5)  # let the per-source bucket refill (10/s): not a silence wait
    assert await target.send(dropped[-1]) is None
    await target.ping()
