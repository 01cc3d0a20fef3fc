"""Interoperability tests: the independent RFC client (rfc_peer.py) against a real server.

``rfc_peer`` was written from docs/rfc.md alone and must stay independent of the ``ppcp``
package (see its docstring). The ``ppcp`` package is used here only to start the reference
server on loopback; every byte the client sends or checks comes from ``rfc_peer``. The
client is blocking, so each test runs it in a worker thread while the server runs in the
test's event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import os
import socket
import struct
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import rfc_peer
from rfc_peer import CODE, ChannelFailure, PPCPPeerError, RFCClient

import ppcp
import ppcp.aio
from ppcp.control.router import ServerPolicy

RFC = Path(__file__).resolve().parents[2] / "docs" / "rfc.md"
PASSPHRASE = "correct horse battery staple, interop edition 2024"


def new_generated_psk() -> str:
    return "ppcp-psk-" + os.urandom(32).hex()


@dataclass
class Running:
    server: Any
    psk: str
    port: int
    root: Path

    def connect(self, **kwargs: Any) -> RFCClient:
        return rfc_peer.connect("127.0.0.1", self.port, self.psk, **kwargs)


StartServer = Callable[..., Awaitable[Running]]


async def _close_server(server: Any) -> None:
    result = server.close()
    if inspect.isawaitable(result):
        await result
    else:  # the brief said `await server.close()`; this server's close() is synchronous
        await asyncio.wait_for(server.wait_closed(), 30)


@pytest.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[StartServer]:
    servers: list[Any] = []

    async def start(
        psk: str | None = None,
        policy: dict[str, Any] | None = None,
        handler: Any = None,
        **config: Any,
    ) -> Running:
        psk = psk or ppcp.generate_psk()
        server = await ppcp.aio.serve(
            "127.0.0.1",
            0,
            psk,
            handler,
            config=ppcp.SessionConfig(name="server", **config),
            policy=ServerPolicy(root=tmp_path, **(policy or {})),
            discovery=False,
        )
        servers.append(server)
        return Running(server, psk, server.port, tmp_path)

    yield start
    for server in servers:
        await _close_server(server)


async def read_messages(session: Any) -> None:
    """A session handler: reads the client's session MESSAGEs (a server without one
    does not offer `msg`, section 14)."""
    async for _ in session:
        pass


async def run(fn: Callable[[], Any]) -> Any:
    return await asyncio.to_thread(fn)


def closed_orderly(client: RFCClient) -> None:
    """Section 10.5: our CLOSE was answered with CLOSE NORMAL and an empty reason."""
    client.close()
    assert client.state == "CLOSED"
    assert client.peer_close == (CODE["NORMAL"], "")


# ---------------------------------------------------------------------------------------
# Test vectors and PSK derivation (no server)


def test_rfc_test_vectors_recomputed() -> None:
    """Appendix A.1 (handshake, key schedule, records), A.2 and A.3, from their inputs."""
    assert rfc_peer.check_rfc_vectors(RFC) == []


def test_vectors_cover_every_printed_value() -> None:
    text = RFC.read_text(encoding="utf-8")
    printed = rfc_peer.parse_vector_block(text, "<!-- vectors:begin -->", "<!-- vectors:end -->")
    assert len(printed) >= 36
    assert set(printed) == set(rfc_peer.compute_handshake_vectors())


def test_psk_forms() -> None:
    key = "ppcp-psk-000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    assert rfc_peer.derive_psk(key) == bytes(range(32))
    # Either case, surrounding ASCII whitespace stripped (section 9, step 1 and 2).
    assert rfc_peer.derive_psk("\t " + key.upper().replace("PPCP-PSK-", "ppcp-psk-") + "\n") == (
        bytes(range(32))
    )
    for bad in (key[:-1], key + "0", key[:20] + " " + key[21:], "ppcp-psk-"):
        with pytest.raises(ValueError):
            rfc_peer.derive_psk(bad)
    with pytest.raises(ValueError):
        rfc_peer.derive_psk(" \r\n\x0b\x0c ")
    expected = hashlib.pbkdf2_hmac("sha256", PASSPHRASE.encode(), b"ppcp/v1 passphrase", 600_000)
    assert rfc_peer.derive_psk(f"  {PASSPHRASE}\n") == expected
    assert rfc_peer.is_weak_passphrase("hunter2")
    assert rfc_peer.is_weak_passphrase("aaaaaaaaaaaaaaaaaaaaaaaaa")  # < 10 distinct bytes
    assert not rfc_peer.is_weak_passphrase(PASSPHRASE)


def test_shell_status_from_reject_reason() -> None:
    """Section 15.10.2: the last ': E[A-Z0-9]+: ' in the reason decides 127 or 126."""
    assert rfc_peer.shell_status("cannot execute 'x: EACCES: y': ENOENT: No such file") == 127
    assert rfc_peer.shell_status("cannot execute 'x': EACCES: Permission denied") == 126


# ---------------------------------------------------------------------------------------
# Handshake and negotiation against the real server


async def test_handshake_and_orderly_close(start_server: StartServer) -> None:
    srv = await start_server()

    def body() -> RFCClient:
        client = srv.connect()
        assert client.version == 1
        assert client.server_name == "server"
        assert len(client.session_id) == 16
        closed_orderly(client)
        return client

    await run(body)


async def test_passphrase_psk(start_server: StartServer) -> None:
    srv = await start_server(psk=PASSPHRASE)

    def body() -> None:
        client = srv.connect()
        assert client.exec("echo pass").stdout == b"pass\n"
        closed_orderly(client)

    await run(body)


async def test_version_negotiation(start_server: StartServer) -> None:
    srv = await start_server()

    def body() -> None:
        # Unknown versions are ignored, the common one is selected (section 6).
        client = srv.connect(versions=[7, 1, 200])
        assert client.version == 1
        closed_orderly(client)
        # No common version: the server answers with an ALERT (VERSION_MISMATCH).
        with pytest.raises(PPCPPeerError) as info:
            srv.connect(versions=[2, 3])
        assert info.value.code == CODE["VERSION_MISMATCH"]
        assert info.value.remote

    await run(body)


async def test_capability_negotiation(start_server: StartServer) -> None:
    srv = await start_server(handler=read_messages)

    def body() -> None:
        offer = ["x.interop-private", "msg", "zz-future", "channels", "heartbeat", "exec"]
        client = srv.connect(capabilities=offer)
        # The reply is a subset of the offer, without the tokens the server does not know.
        assert set(client.caps) == {"msg", "channels", "heartbeat", "exec"}
        closed_orderly(client)
        client = srv.connect(capabilities=["msg"])
        assert client.caps == ["msg"]
        with pytest.raises(PPCPPeerError):  # refused locally: exec was not negotiated
            client.exec("true")
        closed_orderly(client)

    await run(body)


async def test_wrong_psk_fails_cleanly_on_both_sides(start_server: StartServer) -> None:
    srv = await start_server()

    def body() -> None:
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        spare = sock.dup()  # to observe the server's side after the client gave up
        client = RFCClient(sock, rfc_peer.derive_psk(new_generated_psk()))
        with pytest.raises(PPCPPeerError) as info:
            client.handshake()
        # Section 5.4 / diagram "failure paths": the server answers a wrong CLIENT_AUTH
        # with ALERT AUTH_FAILED and closes; the client reports it as the peer's error.
        assert info.value.code == CODE["AUTH_FAILED"]
        assert info.value.remote
        assert client.state == "FAILED"
        spare.settimeout(10)
        assert spare.recv(1) == b""  # the server closed the TCP connection
        spare.close()
        # The server is unharmed and serves the right PSK at once.
        good = srv.connect()
        assert good.exec("echo ok").stdout == b"ok\n"
        closed_orderly(good)

    await run(body)


async def test_client_rejects_impostor_server() -> None:
    """Section 8.5/11: a SERVER_AUTH that does not verify fails with AUTH_FAILED and the
    client sends a clear-text ALERT. The impostor is a minimal in-test fake built from the
    same RFC functions but holding another PSK (so its proof is wrong)."""
    client_sock, server_sock = socket.socketpair()
    client_sock.settimeout(10)
    server_sock.settimeout(10)
    seen: dict[str, Any] = {}

    def impostor() -> None:
        def read_frame() -> tuple[bytes, bytes]:
            header = server_sock.recv(6, socket.MSG_WAITALL)
            length = struct.unpack(">I", header[2:])[0]
            body = server_sock.recv(length, socket.MSG_WAITALL) if length else b""
            return header, body

        header, body = read_frame()
        ch = header + body
        client_share = body[4 + 1 + body[4] + 32 :][:65]
        priv = rfc_peer.ec.generate_private_key(rfc_peer.ec.SECP256R1())
        sh = rfc_peer.frame(
            rfc_peer.SERVER_HELLO,
            0,
            rfc_peer.encode_server_hello(
                1, os.urandom(32), rfc_peer.public_bytes(priv), "impostor", ["msg"]
            ),
        )
        server_sock.sendall(sh)
        ecdh = priv.exchange(rfc_peer.ec.ECDH(), rfc_peer.load_public_key(client_share))
        keys = rfc_peer.handshake_keys(os.urandom(32), ecdh, ch, sh)
        header, body = read_frame()
        ca = header + body
        proof = rfc_peer.server_proof(keys.server_auth_key, rfc_peer.sha256(ch + sh + ca))
        server_sock.sendall(rfc_peer.frame(rfc_peer.SERVER_AUTH, 0, proof))
        seen["alert"] = read_frame()

    thread = threading.Thread(target=impostor)
    thread.start()
    client = RFCClient(client_sock, bytes(32), capabilities=["msg"])
    with pytest.raises(PPCPPeerError) as info:
        client.handshake()
    thread.join(30)
    server_sock.close()
    assert info.value.code == CODE["AUTH_FAILED"] and not info.value.remote
    header, body = seen["alert"]
    assert header[0] == rfc_peer.ALERT and header[1] == 0
    assert rfc_peer.parse_code_reason(body, "ALERT")[0] == CODE["AUTH_FAILED"]


# ---------------------------------------------------------------------------------------
# exec (section 15.10.2)


async def test_exec_echo_hi(start_server: StartServer) -> None:
    srv = await start_server()

    def body() -> rfc_peer.ExecResult:
        client = srv.connect()
        result = client.exec("echo hi")
        closed_orderly(client)
        return result

    result = await run(body)
    assert result.stdout == b"hi\n"
    assert result.stderr == b""
    assert result.exit_code == 0 and result.signal is None and not result.timed_out
    assert isinstance(result.pid, int) and result.pid > 0
    assert result.close_code == CODE["NORMAL"]


async def test_exec_late_accept(start_server: StartServer) -> None:
    """Section 15.10.2: with "late_accept" the answer may come late, but it
    carries the pid and the result is the same; with stdin it is refused."""
    srv = await start_server()

    def body() -> tuple[rfc_peer.ExecResult, ChannelFailure | None]:
        client = srv.connect()
        result = client.exec("echo late", late_accept=True)
        refused: ChannelFailure | None = None
        try:
            client.exec("cat", stdin=b"x", late_accept=True)
        except ChannelFailure as exc:
            refused = exc
        closed_orderly(client)
        return result, refused

    result, refused = await run(body)
    assert result.stdout == b"late\n" and result.exit_code == 0
    assert isinstance(result.pid, int) and result.pid > 0
    assert refused is not None and refused.code == CODE["CHANNEL_ERROR"]
    assert "late_accept" in str(refused)


async def test_exec_nonzero_exit_and_stderr(start_server: StartServer) -> None:
    srv = await start_server()

    def body() -> tuple[rfc_peer.ExecResult, rfc_peer.ExecResult]:
        client = srv.connect()
        failing = client.exec("exit 7")
        mixed = client.exec("echo out; echo err >&2; echo out2; exit 3")
        closed_orderly(client)
        return failing, mixed

    failing, mixed = await run(body)
    assert failing.exit_code == 7 and failing.stdout == b"" and failing.stderr == b""
    assert mixed.exit_code == 3
    assert mixed.stdout == b"out\nout2\n"
    assert mixed.stderr == b"err\n"


async def test_exec_argv_form(start_server: StartServer) -> None:
    srv = await start_server()

    def body() -> rfc_peer.ExecResult:
        client = srv.connect()
        # No shell: spaces, $ and ; reach the program unchanged.
        result = client.exec(argv=["printf", "%s|", "a b", "$HOME", ";", "*"])
        closed_orderly(client)
        return result

    result = await run(body)
    assert result.stdout == b"a b|$HOME|;|*|"
    assert result.exit_code == 0


async def test_exec_missing_program(start_server: StartServer) -> None:
    srv = await start_server()

    def body() -> tuple[ChannelFailure, rfc_peer.ExecResult]:
        client = srv.connect()
        with pytest.raises(ChannelFailure) as info:
            client.exec(argv=["/nonexistent/interop-program"])
        shell_form = client.exec("/nonexistent/interop-program")
        assert client.exec("echo still-alive").stdout == b"still-alive\n"
        closed_orderly(client)
        return info.value, shell_form

    reject, shell_form = await run(body)
    assert reject.code == CODE["CHANNEL_ERROR"]
    assert reject.reason.startswith("cannot execute '/nonexistent/interop-program'")
    assert rfc_peer.shell_status(reject.reason) == 127
    assert shell_form.exit_code == 127 and shell_form.stderr


async def test_exec_stdin_to_cat(start_server: StartServer) -> None:
    srv = await start_server()
    data = os.urandom(6 * 2**20 + 12345)  # more than the server's 4 MiB window

    def body() -> tuple[rfc_peer.ExecResult, rfc_peer.Stats]:
        client = srv.connect()
        result = client.exec("cat", stdin=data)
        empty = client.exec("cat", stdin=b"")
        assert empty.stdout == b"" and empty.exit_code == 0
        closed_orderly(client)
        return result, client.stats

    result, stats = await run(body)
    assert result.exit_code == 0
    assert len(result.stdout) == len(data) and result.stdout == data
    assert stats.window_adjusts_received > 0  # the server returned its window to us
    assert stats.window_adjusts_sent > 0


async def test_exec_large_output_respects_windows(start_server: StartServer) -> None:
    srv = await start_server()
    line = b"0123456789abcde\n"

    def body() -> tuple[rfc_peer.ExecResult, rfc_peer.Stats]:
        # A small window (64 KiB) and packet (4 KiB) make the server wait for our
        # WINDOW_ADJUSTs many times during 4 MiB.
        client = srv.connect(window=64 * 1024, max_packet=4096)
        result = client.exec(f"yes {line.decode().strip()} | head -c {4 * 2**20}")
        closed_orderly(client)
        return result, client.stats

    result, stats = await run(body)
    assert result.exit_code == 0
    assert len(result.stdout) == 4 * 2**20
    assert result.stdout == line * (4 * 2**20 // len(line))
    assert stats.max_data_payload <= 4096
    assert stats.window_adjusts_sent >= (4 * 2**20) // (64 * 1024)


async def test_exec_signal_and_timeout(start_server: StartServer) -> None:
    srv = await start_server()

    def body() -> tuple[dict[str, Any], rfc_peer.ExecResult]:
        client = srv.connect()
        ch = client.open_channel("exec", b'{"argv":["sleep","60"],"stdin":false}')
        # The process runs before CHANNEL_ACCEPT, so the signal cannot arrive too early.
        client.send_request(ch, "signal", b'{"signal":15}')
        client.pump_until(lambda: ch.state == "FREED")
        status = next(json.loads(p) for n, p in ch.requests if n == "exit-status")
        timed = client.exec(argv=["sleep", "60"], timeout=0.3)
        closed_orderly(client)
        return status, timed

    status, timed = await run(body)
    assert status == {"exit_code": None, "signal": 15, "timed_out": False}
    assert timed.timed_out
    assert timed.signal is not None or timed.exit_code is not None


async def test_many_commands_one_session(start_server: StartServer) -> None:
    srv = await start_server()

    def body() -> list[int]:
        client = srv.connect()
        ids = []
        for i in range(20):
            assert client.exec(f"echo {i}").stdout == f"{i}\n".encode()
            ids.append(client.next_channel_id - 2)
        assert client.channels == {}  # every identifier freed
        closed_orderly(client)
        return ids

    assert await run(body) == list(range(1, 41, 2))  # odd identifiers (section 15.2)


async def test_client_rekeys_often(start_server: StartServer) -> None:
    """Section 10.4: the server follows our KEY_UPDATEs; it also rekeys towards us."""
    srv = await start_server(rekey_after_records=3)
    data = os.urandom(300_000)

    def body() -> tuple[rfc_peer.ExecResult, rfc_peer.Stats]:
        client = srv.connect(rekey_after_records=2, window=32 * 1024, max_packet=8192)
        result = client.exec("cat", stdin=data)
        closed_orderly(client)
        return result, client.stats

    result, stats = await run(body)
    assert result.stdout == data
    assert stats.key_updates_sent > 5
    assert stats.key_updates_received > 5


# ---------------------------------------------------------------------------------------
# Heartbeats, channels, messages, files


async def test_heartbeats_answered_and_sent(start_server: StartServer) -> None:
    srv = await start_server(heartbeat_interval=0.05)

    def body() -> tuple[bytes, rfc_peer.Stats]:
        client = srv.connect()
        ch = client.open_channel("exec", b'{"command":"cat"}')
        # The server probes every 50 ms; answer at least three of its requests.
        client.pump_until(lambda: client.stats.heartbeats_answered >= 3, limit=10_000)
        client.heartbeat()
        client.pump_until(lambda: client.stats.heartbeat_replies == 1, limit=10_000)
        client.send_data(ch, b"still here")
        client.send_eof(ch)
        client.pump_until(lambda: ch.state == "FREED", limit=10_000)
        closed_orderly(client)
        return bytes(ch.streams[0]), client.stats

    out, stats = await run(body)
    assert out == b"still here"
    assert stats.heartbeats_answered >= 3
    assert stats.heartbeat_replies == 1


async def test_unknown_kind_and_policy(start_server: StartServer) -> None:
    srv = await start_server(policy={"allow_exec": False})

    def body() -> tuple[ChannelFailure, ChannelFailure]:
        client = srv.connect()
        with pytest.raises(ChannelFailure) as unknown:
            client.open_channel("x.interop-none", b"{}")
        with pytest.raises(ChannelFailure) as denied:
            client.exec("echo no")
        closed_orderly(client)
        return unknown.value, denied.value

    unknown, denied = await run(body)
    assert unknown.code == CODE["CHANNEL_REJECTED"]
    assert denied.code == CODE["POLICY_DENIED"]


async def test_message_channel(start_server: StartServer) -> None:
    srv = await start_server()

    def body() -> rfc_peer.Channel:
        client = srv.connect()
        ch = client.message_channel([b"hello", b"", b"x" * 100_000], topic="interop")
        closed_orderly(client)
        return ch

    ch = await run(body)
    assert ch.close == (CODE["NORMAL"], "")  # every message reached the handler


async def test_session_message_fragmented(start_server: StartServer) -> None:
    """Section 10.3: a 2.5 MiB MESSAGE in three fragments (MORE, MORE, last)."""
    srv = await start_server(handler=read_messages)

    def body() -> None:
        client = srv.connect()
        client.send_message(os.urandom(2_500_000))
        client.send_message(b"")
        assert client.exec("echo after").stdout == b"after\n"
        closed_orderly(client)

    await run(body)


@pytest.mark.parametrize("binary", [True, False], ids=["binary-data", "base64"])
async def test_file_get_small_file(start_server: StartServer, binary: bool) -> None:
    srv = await start_server()
    content = b"Hello, PPCP!\n" * 300
    (srv.root / "docs").mkdir()
    (srv.root / "docs" / "hello.txt").write_bytes(content)
    caps = ["msg", "channels", "heartbeat", "files"] + (["binary-data"] if binary else [])

    def body() -> tuple[dict[str, object], bytes]:
        client = srv.connect(capabilities=caps)
        assert ("binary-data" in client.caps) == binary
        got = client.file_get("docs/hello.txt")
        with pytest.raises(ChannelFailure) as info:
            client.file_get("docs/missing.txt")
        assert info.value.code == CODE["PATH_REFUSED"]
        closed_orderly(client)
        return got

    accept, data = await run(body)
    assert data == content
    assert accept["type"] == "file" and accept["size"] == len(content)
    assert accept["name"] == "hello.txt"


async def test_a_peer_of_the_earlier_draft_with_1_mib_records(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 4.4: a peer whose records stop at 1 MiB + 1 KiB (drafts before 2026-11-23),
    announcing the largest max_packet it may (1049595), gets a multi-MiB file from this
    server without one record over its limit (it would fail with FRAME_TOO_LARGE)."""
    earlier = (1 << 20) + 1024
    monkeypatch.setattr(rfc_peer, "MAX_RECORD_PLAINTEXT", earlier)
    monkeypatch.setattr(rfc_peer, "MAX_RECORD_BODY", earlier + 16)
    srv = await start_server()
    content = os.urandom(5 * 2**20 + 3)
    (srv.root / "big.bin").write_bytes(content)
    caps = ["msg", "channels", "heartbeat", "files", "binary-data"]

    def body() -> bytes:
        client = srv.connect(capabilities=caps, max_packet=earlier - 5, window=4 * 2**20)
        _, data = client.file_get("big.bin")
        closed_orderly(client)
        return data

    assert await run(body) == content
    a, b = socket.socketpair()
    with a, b, pytest.raises(ValueError, match="max_packet"):  # nor may it announce more
        rfc_peer.RFCClient(a, bytes(32), max_packet=earlier - 4)


# ---------------------------------------------------------------------------------------
# Error paths the RFC specifies, checked against the server


def _raw_exchange(port: int, data: bytes, *, half_close: bool = False) -> list[tuple[int, bytes]]:
    """Send raw bytes before authentication; return the frames the server sends until EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        for _ in range(1000):
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    frames = []
    while len(received) >= 6:
        ftype, _flags, length = struct.unpack(">BBI", received[:6])
        frames.append((ftype, bytes(received[6 : 6 + length])))
        del received[: 6 + length]
    return frames


def _hello(
    *,
    versions: bytes = b"\x01",
    share: bytes | None = None,
    name: bytes = b"probe",
    caps: bytes = b"\x01\x03msg",
    flags: int = 0,
) -> bytes:
    if share is None:
        key = rfc_peer.ec.generate_private_key(rfc_peer.ec.SECP256R1())
        share = rfc_peer.public_bytes(key)
    body = b"PPCP" + bytes([len(versions)]) + versions + os.urandom(32) + share
    body += bytes([len(name)]) + name + caps
    return struct.pack(">BBI", rfc_peer.CLIENT_HELLO, flags, len(body)) + body


PRE_AUTH_CASES = {
    "hello-with-flags": (lambda: _hello(flags=1), "PROTOCOL_ERROR"),
    "version-0": (lambda: _hello(versions=b"\x00\x01"), "PROTOCOL_ERROR"),
    "17-versions": (lambda: _hello(versions=bytes(range(1, 18))), "PROTOCOL_ERROR"),
    "duplicate-capability": (lambda: _hello(caps=b"\x02\x03msg\x03msg"), "PROTOCOL_ERROR"),
    "token-with-newline": (lambda: _hello(caps=b"\x01\x04msg\n"), "PROTOCOL_ERROR"),
    "empty-name": (lambda: _hello(name=b""), "PROTOCOL_ERROR"),
    "name-with-escape": (lambda: _hello(name=b"a\x1bb"), "PROTOCOL_ERROR"),
    "trailing-byte": (lambda: _hello(caps=b"\x00\x00"), "PROTOCOL_ERROR"),
    "compressed-share": (lambda: _hello(share=b"\x02" + bytes(64)), "BAD_KEY_SHARE"),
    "share-off-curve": (lambda: _hello(share=b"\x04" + bytes(63) + b"\x01"), "BAD_KEY_SHARE"),
    # Section 5.2 order: VERSION_MISMATCH is reported before BAD_KEY_SHARE.
    "mismatch-before-share": (
        lambda: _hello(versions=b"\x09", share=b"\x02" + bytes(64)),
        "VERSION_MISMATCH",
    ),
    # Section 4.4: checked on the header, before any body byte is sent.
    "record-size-before-auth": (lambda: struct.pack(">BBI", 0x10, 0, 1025), "FRAME_TOO_LARGE"),
    "record-before-auth": (lambda: struct.pack(">BBI", 0x10, 0, 16) + bytes(16), "PROTOCOL_ERROR"),
    "unassigned-type": (lambda: struct.pack(">BBI", 0x30, 0, 0), "PROTOCOL_ERROR"),
    "bad-magic": (lambda: struct.pack(">BBI", 1, 0, 5) + b"XXXX\x01", "PROTOCOL_ERROR"),
}


@pytest.mark.parametrize("case", list(PRE_AUTH_CASES))
async def test_server_alerts_on_bad_handshake_input(start_server: StartServer, case: str) -> None:
    srv = await start_server()
    make, code = PRE_AUTH_CASES[case]
    frames = await run(lambda: _raw_exchange(srv.port, make()))
    assert len(frames) == 1, frames  # one ALERT, then the server closes (section 5.6)
    ftype, body = frames[0]
    assert ftype == rfc_peer.ALERT
    assert rfc_peer.parse_code_reason(body, "ALERT")[0] == CODE[code]


async def test_server_alerts_on_eof_inside_frame(start_server: StartServer) -> None:
    """Section 4.5: EOF with an incomplete frame buffered is a PROTOCOL_ERROR."""
    srv = await start_server()
    frames = await run(lambda: _raw_exchange(srv.port, _hello()[:50], half_close=True))
    assert [(t, rfc_peer.parse_code_reason(b, "ALERT")[0]) for t, b in frames] == [
        (rfc_peer.ALERT, CODE["PROTOCOL_ERROR"])
    ]


async def test_server_silent_on_alert(start_server: StartServer) -> None:
    """Section 5.6: the receiver of an ALERT MUST NOT answer it."""
    srv = await start_server()
    frames = await run(
        lambda: _raw_exchange(srv.port, rfc_peer.frame(rfc_peer.ALERT, 0, b"\0\0\0"))
    )
    assert frames == []


async def test_handshake_timeout(start_server: StartServer) -> None:
    """Section 17.1: an idle connection gets ALERT HANDSHAKE_TIMEOUT at the deadline."""
    srv = await start_server(handshake_timeout=0.3)
    frames = await run(lambda: _raw_exchange(srv.port, b""))
    assert [(t, rfc_peer.parse_code_reason(b, "ALERT")[0]) for t, b in frames] == [
        (rfc_peer.ALERT, CODE["HANDSHAKE_TIMEOUT"])
    ]


def _seal(client: RFCClient, ftype: int, flags: int, plaintext: bytes) -> bytes:
    assert client.send_dir is not None
    return client.send_dir.seal(ftype, flags, plaintext)


def _tampered(client: RFCClient) -> bytes:
    record = bytearray(_seal(client, rfc_peer.MESSAGE, 0, b"x"))
    record[-1] ^= 1
    return bytes(record)


def _cat(client: RFCClient) -> rfc_peer.Channel:
    return client.open_channel("exec", b'{"command":"cat"}')


def _cat_then(ftype: int, tail: Callable[[rfc_peer.Channel], bytes]) -> Callable[..., bytes]:
    def make(client: RFCClient) -> bytes:
        ch = _cat(client)
        return _seal(client, ftype, 0, struct.pack(">I", ch.id) + tail(ch))

    return make


def _open(cid: int, window: int, max_packet: int) -> Callable[..., bytes]:
    def make(client: RFCClient) -> bytes:
        body = struct.pack(">III", cid, window, max_packet) + b"\x04exec{}"
        return _seal(client, rfc_peer.CHANNEL_OPEN, 0, body)

    return make


def _eof_then(ftype: int, tail: bytes) -> Callable[..., bytes]:
    def make(client: RFCClient) -> bytes:
        ch = _cat(client)
        eof = _seal(client, rfc_peer.CHANNEL_EOF, 0, struct.pack(">I", ch.id))
        return eof + _seal(client, ftype, 0, struct.pack(">I", ch.id) + tail)

    return make


POST_AUTH_CASES: dict[str, tuple[Callable[..., bytes], str]] = {
    "tampered-record": (_tampered, "DECRYPT_ERROR"),
    "body-shorter-than-tag": (
        lambda c: struct.pack(">BBI", 0x10, 0, 5) + bytes(5),
        "PROTOCOL_ERROR",
    ),
    "record-too-large": (lambda c: struct.pack(">BBI", 0x10, 0, 2098193), "FRAME_TOO_LARGE"),
    "alert-after-open": (lambda c: rfc_peer.frame(rfc_peer.ALERT, 0, b"\0\3\0"), "PROTOCOL_ERROR"),
    "close-with-flags": (lambda c: _seal(c, rfc_peer.CLOSE, 1, b"\0\0\0"), "PROTOCOL_ERROR"),
    "key-update-not-empty": (lambda c: _seal(c, rfc_peer.KEY_UPDATE, 0, b"x"), "PROTOCOL_ERROR"),
    "message-reserved-flag": (lambda c: _seal(c, rfc_peer.MESSAGE, 2, b"x"), "PROTOCOL_ERROR"),
    "close-inside-message": (
        lambda c: _seal(c, rfc_peer.MESSAGE, 1, b"x") + _seal(c, rfc_peer.CLOSE, 0, b"\0\0\0"),
        "PROTOCOL_ERROR",
    ),
    "heartbeat-7-bytes": (lambda c: _seal(c, rfc_peer.HEARTBEAT, 0, bytes(7)), "PROTOCOL_ERROR"),
    "open-even-id": (_open(2, 65536, 4096), "PROTOCOL_ERROR"),
    "open-window-too-big": (_open(1, 2**31, 4096), "PROTOCOL_ERROR"),
    "open-max-packet-1023": (_open(1, 65536, 1023), "PROTOCOL_ERROR"),
    "data-unknown-channel": (
        lambda c: _seal(c, rfc_peer.CHANNEL_DATA, 0, struct.pack(">IB", 7, 0) + b"x"),
        "PROTOCOL_ERROR",
    ),
    "data-stream-2": (_cat_then(rfc_peer.CHANNEL_DATA, lambda ch: b"\x02x"), "PROTOCOL_ERROR"),
    "window-adjust-0": (
        _cat_then(rfc_peer.WINDOW_ADJUST, lambda ch: struct.pack(">I", 0)),
        "FLOW_CONTROL_ERROR",
    ),
    "window-adjust-overflow": (
        _cat_then(rfc_peer.WINDOW_ADJUST, lambda ch: struct.pack(">I", 2**31 - 1)),
        "FLOW_CONTROL_ERROR",
    ),
    "data-after-eof": (_eof_then(rfc_peer.CHANNEL_DATA, b"\x00x"), "PROTOCOL_ERROR"),
    "second-eof": (_eof_then(rfc_peer.CHANNEL_EOF, b""), "PROTOCOL_ERROR"),
}


@pytest.mark.parametrize("case", list(POST_AUTH_CASES))
async def test_server_closes_on_bad_records(start_server: StartServer, case: str) -> None:
    """Sections 4, 10, 11 and 15: the server fails the session with the RFC's code, in an
    encrypted CLOSE that this client decrypts and reports as the peer's error."""
    srv = await start_server()
    make, code = POST_AUTH_CASES[case]

    def body() -> PPCPPeerError:
        client = srv.connect()
        client.sock.sendall(make(client))
        with pytest.raises(PPCPPeerError) as info:
            client.pump_until(lambda: False, limit=100)
        return info.value

    err = await run(body)
    assert err.remote, err
    assert err.code == CODE[code], err


async def test_data_beyond_window_is_flow_control_error(start_server: StartServer) -> None:
    """Section 15.4. With "stdin": false the server reads no stream-0 data, so it never
    returns window: one byte more than its window must fail the session."""
    srv = await start_server()

    def body() -> PPCPPeerError:
        client = srv.connect()
        ch = client.open_channel("exec", b'{"argv":["sleep","30"],"stdin":false}')
        left = ch.send_window + 1
        for _ in range(100):
            n = min(left, ch.send_max_packet)
            client.sock.sendall(
                _seal(client, rfc_peer.CHANNEL_DATA, 0, struct.pack(">IB", ch.id, 0) + bytes(n))
            )
            left -= n
            if not left:
                break
        with pytest.raises(PPCPPeerError) as info:
            client.pump_until(lambda: False, limit=100)
        return info.value

    err = await run(body)
    assert err.remote and err.code == CODE["FLOW_CONTROL_ERROR"]


async def test_peer_close_is_answered_normal(start_server: StartServer) -> None:
    """Section 10.5 step 3: any received CLOSE is answered with CLOSE NORMAL, empty reason."""
    srv = await start_server()

    def body() -> None:
        client = srv.connect()
        client.close(CODE["GOING_AWAY"], "bye")
        assert client.peer_close == (CODE["NORMAL"], "")

    await run(body)


async def test_zero_window_and_minimum_packet(start_server: StartServer) -> None:
    """Section 15.4: an opener may announce window 0; nothing flows until WINDOW_ADJUST.
    The server also respects the smallest max_packet (1024)."""
    srv = await start_server()

    def body() -> tuple[bytes, int]:
        client = srv.connect(window=0, max_packet=1024)
        ch = client.open_channel("exec", b'{"command":"head -c 5000 /dev/zero","stdin":false}')
        assert not client.readable(0.3)  # nothing may arrive while the window is 0
        ch.recv_window = ch.recv_initial = 5000
        client.send_record(rfc_peer.WINDOW_ADJUST, 0, struct.pack(">II", ch.id, 5000))
        client.pump_until(lambda: ch.state == "FREED")
        closed_orderly(client)
        return bytes(ch.streams[0]), client.stats.max_data_payload

    out, biggest = await run(body)
    assert out == bytes(5000)
    assert biggest <= 1024


async def test_client_closes_running_command(start_server: StartServer) -> None:
    """Section 15.5 rule 3 and 15.10.2: our CHANNEL_CLOSE is answered, no exit-status."""
    srv = await start_server()

    def body() -> rfc_peer.Channel:
        client = srv.connect()
        ch = client.open_channel("exec", b'{"argv":["sleep","60"],"stdin":false}')
        client.close_channel(ch)
        assert client.exec("echo next").stdout == b"next\n"
        closed_orderly(client)
        return ch

    ch = await run(body)
    assert ch.close == (CODE["NORMAL"], "")
    assert ch.requests == []


async def test_exec_open_payload_validation(start_server: StartServer) -> None:
    """Section 15.10.2: unknown fields, both/neither of command and argv, lone surrogates
    are CHANNEL_ERROR; surrogate-escaped bytes reach the program as bytes."""
    srv = await start_server()
    bad = [
        b'{"command":"true","bogus":1}',
        b'{"command":"true","argv":["true"]}',
        b"{}",
        b'{"argv":[]}',
        b"not json",
        b'["true"]',
        b'{"argv":["printf","%s","\\ud800"]}',
        b'{"command":"tr\\u0000ue"}',
    ]

    def body() -> tuple[list[int], bytes]:
        client = srv.connect()
        codes = []
        for payload in bad:
            with pytest.raises(ChannelFailure) as info:
                client.open_channel("exec", payload)
            codes.append(info.value.code)
        raw = client.exec(argv=["printf", "%s", "\udc80\udcffok"]).stdout
        closed_orderly(client)
        return codes, raw

    codes, raw = await run(body)
    assert codes == [CODE["CHANNEL_ERROR"]] * len(bad)
    assert raw == b"\x80\xffok"


async def test_uppercase_prefix_is_the_generated_key(start_server: StartServer) -> None:
    """Section 9: the "ppcp-psk-" prefix matches in any letter case, so "PPCP-PSK-<HEX>"
    is the generated key itself (findings A9: it used to be a passphrase, silently)."""
    hexkey = os.urandom(32).hex()
    srv = await start_server(psk="PPCP-PSK-" + hexkey.upper())

    def body() -> None:
        client = rfc_peer.connect("127.0.0.1", srv.port, "", psk_key=bytes.fromhex(hexkey))
        assert client.exec("echo same key").stdout == b"same key\n"
        closed_orderly(client)

    await run(body)


async def test_message_open_empty_payload_rejected(start_server: StartServer) -> None:
    srv = await start_server()

    def body() -> None:
        client = srv.connect()
        try:
            with pytest.raises(ChannelFailure) as info:
                client.open_channel("message", b"")
            assert info.value.code == CODE["CHANNEL_ERROR"]
        finally:
            client.close()

    await run(body)


async def test_a_server_that_reads_no_messages_does_not_offer_msg(
    start_server: StartServer,
) -> None:
    """Findings M2: a server with nothing reading session MESSAGEs used to negotiate `msg`;
    ~5 MiB of unread messages then stalled every channel. Section 14: it offers no `msg`."""
    srv = await start_server()

    def body() -> None:
        client = srv.connect()
        assert "msg" not in client.caps and "exec" in client.caps
        assert client.exec("echo ok").stdout == b"ok\n"
        closed_orderly(client)

    await run(body)


async def test_session_messages_do_not_stall_channels(start_server: StartServer) -> None:
    srv = await start_server(handler=read_messages)

    def body() -> None:
        client = srv.connect(timeout=3)
        try:
            for _ in range(8):
                client.send_message(bytes(2**20))
            assert client.exec("echo ok").stdout == b"ok\n"
            closed_orderly(client)
        finally:
            client.sock.close()

    await run(body)
