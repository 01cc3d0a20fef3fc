"""Attacks on the record layer: nonce exhaustion, counters on failure, secrets in logs.

* A sender rotates its key before ``max_records_per_key`` (KEY_UPDATE); a
  receiver whose peer does not closes the session rather than reuse a nonce.
* A record that fails authentication does not move the receive counter, so
  a forged record can neither desynchronise nor skip a genuine one.
* Neither the PSK, nor the stretched key, nor any traffic key or IV appears in
  a log record or an exception's str/repr, during a full session with every
  kind of failure, with logging at DEBUG.
"""

from __future__ import annotations

import asyncio
import base64
import logging

import pytest
from hardening_util import (
    OTHER_PSK_TEXT,
    PSK,
    PSK_TEXT,
    WAIT,
    FramePipe,
    client_conn,
    conn_config,
    raw_session,
    read_all,
    running_server,
    server_conn,
    session_config,
    settle,
)

import ppcp.aio
from ppcp.core.errors import (
    CloseCode,
    DecryptionError,
    PPCPError,
    ProtocolError,
    RateLimited,
)
from ppcp.core.events import ConnectionClosed, MessageReceived
from ppcp.core.limits import ServerLimits
from ppcp.crypto.aead import RecordCipher
from ppcp.crypto.schedule import TrafficKeys
from ppcp.transport.connection import Connection
from ppcp.transport.frames import FrameType

# -- nonce counter exhaustion -------------------------------------------------------------------


def test_sender_rekeys_before_the_per_key_record_limit() -> None:
    cfg = {"max_records_per_key": 8, "rekey_after_records": 5}
    pipe = FramePipe(
        client_conn(PSK, conn_config("c", **cfg)), server_conn(PSK, conn_config("s", **cfg))
    ).handshake()
    client = pipe.client.conn
    start = len(pipe.client.frames_sent)
    for i in range(40):
        client.send_message(b"m%d" % i)
        assert client._send is not None and client._send.seq <= 5
        pipe.pump()
    received = [e.data for e in pipe.server.events if isinstance(e, MessageReceived)]
    assert received == [b"m%d" % i for i in range(40)]
    # Under each key at most rekey_after_records records, then one KEY_UPDATE.
    run = 0
    for frame in pipe.client.frames_sent[start:]:
        if frame.type == FrameType.KEY_UPDATE:
            assert run == 5
            run = 0
        else:
            run += 1
    kinds = [f.type for f in pipe.client.frames_sent[start:]]
    assert kinds.count(FrameType.KEY_UPDATE) == 40 // 5 - 1
    assert pipe.server.error is None and pipe.client.error is None


def test_receiver_closes_when_the_peer_never_rekeys() -> None:
    """The receiver refuses the record past its hard limit and says why."""
    pipe = FramePipe(
        client_conn(PSK, conn_config("c")),
        server_conn(PSK, conn_config("s", max_records_per_key=8, rekey_after_records=4)),
    ).handshake()
    client = pipe.client.conn
    for i in range(9):
        client.send_message(b"m%d" % i)
    pipe.pump()
    received = [e for e in pipe.server.events if isinstance(e, MessageReceived)]
    assert len(received) == 8
    assert isinstance(pipe.server.error, ProtocolError)
    assert "sequence limit" in pipe.server.error.message
    closed = [e for e in pipe.client.events if isinstance(e, ConnectionClosed)]
    assert closed and closed[0].code == CloseCode.PROTOCOL_ERROR


def test_sender_refuses_to_reuse_a_nonce() -> None:
    keys = TrafficKeys.from_secret(b"\x01" * 32)
    cipher = RecordCipher(keys, max_records=3)
    for _ in range(3):
        cipher.seal(b"hdr", b"x")
    with pytest.raises(ProtocolError):
        cipher.seal(b"hdr", b"x")
    assert cipher.seq == 3


# -- failed decryption does not advance counters ------------------------------------------------


def test_failed_decryption_leaves_the_counter_alone() -> None:
    keys = TrafficKeys.from_secret(b"\x02" * 32)
    sender, receiver = RecordCipher(keys), RecordCipher(keys)
    first = sender.seal(b"h", b"first")
    second = sender.seal(b"h", b"second")
    forged = bytearray(first)
    forged[0] ^= 1
    for bad in (bytes(forged), second, b"\x00" * 32):
        with pytest.raises(DecryptionError):
            receiver.open(b"h", bad)
        assert receiver.seq == 0 and receiver.bytes_under_key == 0
    with pytest.raises(DecryptionError):
        receiver.open(b"other header", first)  # the header is authenticated too
    assert receiver.open(b"h", first) == b"first"
    assert receiver.open(b"h", second) == b"second"
    assert receiver.seq == 2


def test_connection_counter_unchanged_by_a_forged_record() -> None:
    pipe = FramePipe(client_conn(PSK), server_conn(PSK)).handshake()
    client, server = pipe.client.conn, pipe.server.conn
    client.send_message(b"genuine")
    record = bytearray(client.data_to_send())
    record[-1] ^= 0x80
    assert server._recv is not None
    before = server._recv.seq
    with pytest.raises(DecryptionError):
        server.receive_data(bytes(record))
    assert server._recv.seq == before


# -- secrets never appear in logs or exceptions -------------------------------------------------


def _forms(secret: bytes) -> list[str]:
    return [
        secret.hex(),
        secret.hex().upper(),
        repr(secret)[2:-1],
        base64.b64encode(secret).decode(),
    ]


def _key_material(conn: Connection) -> list[bytes]:
    out: list[bytes] = []
    if conn.result is not None:
        for keys in (conn.result.send_keys, conn.result.recv_keys):
            out += [keys.secret, keys.key, keys.iv]
    for cipher in (conn._send, conn._recv):
        if cipher is not None:
            out += [cipher.keys.secret, cipher.keys.key, cipher.keys.iv]
    return out


async def test_no_secret_in_logs_or_exceptions(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    secrets: list[bytes] = [PSK]
    texts = [PSK_TEXT, PSK_TEXT.removeprefix("ppcp-psk-")]
    cfg = session_config("secret-server", handshake_timeout=1.0, rekey_after_records=3)
    limits = ServerLimits(auth_failures=2, auth_backoff=60.0)
    async with running_server(cfg, limits) as (server, recorder):
        # 1. A good session with key updates on both sides.
        client_cfg = session_config("secret-client", rekey_after_records=3)
        client = await ppcp.aio.connect("127.0.0.1", server.port, PSK_TEXT, config=client_cfg)
        for i in range(10):
            await client.send(b"message %d" % i)
            assert await asyncio.wait_for(client.recv(), WAIT) == b"message %d" % i
        served = await asyncio.wait_for(recorder.sessions.get(), WAIT)
        secrets += _key_material(client.connection) + _key_material(served.connection)
        await client.close()

        # 2. A forged record in an authenticated session (DecryptionError on the server).
        reader, writer, raw = await raw_session(server.port)
        secrets += _key_material(raw)
        raw.send_message(b"to be forged")
        forged = bytearray(raw.data_to_send())
        forged[-3] ^= 0xFF
        writer.write(bytes(forged))
        tail = await read_all(reader)
        writer.close()
        try:
            raw.receive_data(tail)
            raw.receive_data(b"")
        except PPCPError as exc:
            errors.append(exc)

        # 3. A handshake that times out.
        _, idle = await asyncio.open_connection("127.0.0.1", server.port)
        await settle(server)
        idle.close()

        # 4. Wrong keys until rate limited (the wrong key is a secret too).
        from ppcp.crypto.psk import derive_psk_key

        secrets.append(derive_psk_key(OTHER_PSK_TEXT))
        texts.append(OTHER_PSK_TEXT)
        for _ in range(3):
            try:
                await ppcp.aio.connect("127.0.0.1", server.port, OTHER_PSK_TEXT)
            except PPCPError as exc:
                errors.append(exc)
        assert isinstance(errors[-1], RateLimited)
        await settle(server)

    assert len(secrets) > 20
    haystack: list[str] = []
    for record in caplog.records:
        haystack.append(record.getMessage())
        haystack.append(repr(record.args))
        if record.exc_info and record.exc_info[1] is not None:
            errors.append(record.exc_info[1])
        if record.exc_text:
            haystack.append(record.exc_text)
    for exc in errors:
        for link in _chain(exc):
            haystack += [str(link), repr(link)]
    assert any("failed" in text for text in haystack), "the failures were not logged"
    needles = texts + [form for secret in secrets for form in _forms(secret)]
    for text in haystack:
        for needle in needles:
            assert needle not in text, f"secret material in {text[:200]!r}"


def _chain(exc: BaseException) -> list[BaseException]:
    out = []
    seen: set[int] = set()
    current: BaseException | None = exc
    for _ in range(16):
        if current is None or id(current) in seen:
            break
        seen.add(id(current))
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def test_reprs_do_not_show_key_material() -> None:
    pipe = FramePipe(client_conn(PSK), server_conn(PSK)).handshake()
    conn = pipe.client.conn
    assert conn.result is not None
    texts = [repr(conn._handshake), repr(conn.result), repr(conn.result.send_keys)]
    needles = [form for s in [PSK, *_key_material(conn)] for form in _forms(s)]
    leaks = [n for t in texts for n in needles if n in t]
    assert not leaks
