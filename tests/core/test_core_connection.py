"""The sans-I/O connection, driven in memory: handshake, records, close, attacks.

Every test runs without sockets.  Most are parametrised over the feed mode
(``whole`` writes, or ``bytewise``: one byte per receive_data() call) through
the ``size`` fixture, so the incremental parser is exercised on every path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import pytest
from core_helpers import (
    OTHER_PSK,
    PSK,
    WHOLE,
    Pair,
    conn_config,
    feed,
    fixed_rng,
    parse_frames,
)
from hypothesis import given
from hypothesis import strategies as st

from ppcp.core.config import SessionConfig
from ppcp.core.errors import (
    AuthenticationError,
    CloseCode,
    ConnectionLost,
    DecryptionError,
    FrameTooLarge,
    InvalidKeyShare,
    MessageTooLarge,
    ProtocolError,
    SessionClosed,
    VersionMismatch,
)
from ppcp.core.events import ConnectionClosed, Event, HandshakeComplete, MessageReceived
from ppcp.core.states import Role, State
from ppcp.crypto.aead import RecordCipher
from ppcp.handshake.machine import HandshakeConfig
from ppcp.handshake.messages import Alert, ClientHello, ServerHello
from ppcp.transport.connection import MESSAGE_CHUNK, Connection
from ppcp.transport.frames import (
    FLAG_MORE,
    HEADER_LEN,
    MAX_HANDSHAKE_BODY,
    MAX_RECORD_BODY,
    FrameType,
    encode_frame,
    encode_header,
)
from ppcp.utils.codec import clip_text, has_control_chars

P256_P = 2**256 - 2**224 + 2**192 + 2**96 - 1
P256_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B


def messages(events: Sequence[Event]) -> list[bytes]:
    return [e.data for e in events if isinstance(e, MessageReceived)]


def closed_events(events: Sequence[Event]) -> list[ConnectionClosed]:
    return [e for e in events if isinstance(e, ConnectionClosed)]


def client_hello_frame(**changes: Any) -> bytes:
    """A genuine CLIENT_HELLO frame, with fields optionally replaced."""
    client = Connection(Role.CLIENT, PSK, conn_config("client", capabilities=("msg",)))
    client.initiate()
    (frame,) = parse_frames(client.data_to_send())
    hello = msgspec.structs.replace(ClientHello.decode(frame.body), **changes)
    return encode_frame(FrameType.CLIENT_HELLO, hello.encode())


def record_of(conn: Connection, frame_type: int, plaintext: bytes, flags: int = 0) -> bytes:
    """Seal one record with ``conn``'s send keys and return its bytes."""
    assert conn._send is not None
    conn._seal(conn._send, frame_type, flags, plaintext)
    return conn.data_to_send()


def server_conn() -> Connection:
    return Connection(Role.SERVER, PSK, conn_config("server"))


def fresh_client() -> Connection:
    client = Connection(Role.CLIENT, PSK, conn_config("client"))
    client.initiate()
    client.data_to_send()
    return client


# -- successful sessions --------------------------------------------------------------------


def test_handshake_completes(size: int | None) -> None:
    p = Pair(conn_config("alice"), conn_config("bob"), size=size)
    p.handshake()
    assert p.client.error is None and p.server.error is None
    (c_done,) = [e for e in p.client.events if isinstance(e, HandshakeComplete)]
    (s_done,) = [e for e in p.server.events if isinstance(e, HandshakeComplete)]
    assert c_done.peer_name == "bob" and s_done.peer_name == "alice"
    assert c_done.version == s_done.version == 1
    assert c_done.session_id == s_done.session_id and len(c_done.session_id) == 16
    assert p.client.conn.state is State.OPEN and p.server.conn.state is State.OPEN
    # The two directions use different keys.
    c_send, c_recv, s_recv = p.client.conn._send, p.client.conn._recv, p.server.conn._recv
    assert c_send is not None and c_recv is not None and s_recv is not None
    assert c_send.keys == s_recv.keys
    assert c_send.keys.key != c_recv.keys.key
    # Exactly four handshake frames crossed the wire.
    types = [f.type for f in parse_frames(bytes(p.client.sent))]
    assert types == [FrameType.CLIENT_HELLO, FrameType.CLIENT_AUTH]
    types = [f.type for f in parse_frames(bytes(p.server.sent))]
    assert types == [FrameType.SERVER_HELLO, FrameType.SERVER_AUTH]


def test_messages_both_ways(pair: Pair) -> None:
    sent = [b"ping", b"", b"\x00" * 300, bytes(range(256))]
    for msg in sent:
        pair.client.conn.send_message(msg)
    pair.pump()
    assert messages(pair.server.events) == sent
    for msg in reversed(sent):
        pair.server.conn.send_message(msg)
    pair.pump()
    assert messages(pair.client.events) == list(reversed(sent))
    assert pair.client.error is None and pair.server.error is None


@pytest.mark.parametrize(
    ("length", "size"),
    [
        (MESSAGE_CHUNK + 100, 1),  # two records, fed one byte at a time
        (2 * MESSAGE_CHUNK + MESSAGE_CHUNK // 2, WHOLE),  # three records
        (MESSAGE_CHUNK, WHOLE),  # exactly one full record
        (3 * MESSAGE_CHUNK + 17, 4093),  # cut at odd boundaries
    ],
)
def test_large_fragmented_messages(length: int, size: int | None) -> None:
    pair = Pair(size=size).established()
    data = bytes(i * 7 & 0xFF for i in range(256)) * (length // 256) + b"x" * (length % 256)
    start = len(pair.client.sent)
    pair.client.conn.send_message(data)
    pair.server.conn.send_message(data[::-1])
    pair.pump()
    assert messages(pair.server.events) == [data]
    assert messages(pair.client.events) == [data[::-1]]
    frames = parse_frames(bytes(pair.client.sent[start:]))
    expected_records = -(-length // MESSAGE_CHUNK)
    assert [f.type for f in frames] == [FrameType.MESSAGE] * expected_records
    assert [f.flags for f in frames] == [FLAG_MORE] * (expected_records - 1) + [0]


def test_deterministic_rng_gives_identical_bytes() -> None:
    def run(client_seed: bytes, server_seed: bytes) -> tuple[bytes, bytes]:
        p = Pair(client_rng=fixed_rng(client_seed), server_rng=fixed_rng(server_seed))
        p.established()
        p.client.conn.send_message(b"hello")
        p.server.conn.send_message(b"world")
        p.client.conn.close()
        p.pump()
        return bytes(p.client.sent), bytes(p.server.sent)

    first = run(b"client", b"server")
    assert first == run(b"client", b"server")
    other = run(b"client", b"server2")
    assert other[0][:100] == first[0][:100]  # same CLIENT_HELLO ...
    assert other[1] != first[1]  # ... but a different server, so a different session


# -- malformed input during the handshake ---------------------------------------------------


@pytest.mark.parametrize("role", [Role.CLIENT, Role.SERVER])
@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x00" * 64,
        bytes(range(255, 0, -1)),
        b"\x01\x00\x00\x00\x00\x03abc",  # a CLIENT_HELLO too short for its fields
        b"\x05\x00\x00\x00\x00\x01\x00",  # a truncated ALERT body
    ],
)
def test_garbage_raises_protocol_error_and_alerts(
    role: Role, garbage: bytes, size: int | None
) -> None:
    conn = fresh_client() if role is Role.CLIENT else server_conn()
    with pytest.raises(ProtocolError) as info:
        feed(conn, garbage, size)
    assert conn.state is State.FAILED and conn.error is info.value
    (frame,) = parse_frames(conn.data_to_send())
    assert frame.type == FrameType.ALERT
    assert Alert.decode(frame.body).code == info.value.code


def test_truncated_hello_then_eof(size: int | None) -> None:
    hello = client_hello_frame()
    for cut in (3, HEADER_LEN, len(hello) // 2, len(hello) - 1):
        server = server_conn()
        assert feed(server, hello[:cut], size) == []
        with pytest.raises(ProtocolError, match="inside a frame"):
            server.receive_data(b"")
        assert server.state is State.FAILED


def test_eof_before_anything_is_connection_lost() -> None:
    server = server_conn()
    with pytest.raises(ConnectionLost):
        server.receive_data(b"")
    # Nothing is sent to a peer that is gone.
    assert server.data_to_send() == b""


def test_wrong_magic(size: int | None) -> None:
    hello = client_hello_frame()
    bad = hello[:HEADER_LEN] + b"PPCQ" + hello[HEADER_LEN + 4 :]
    with pytest.raises(ProtocolError, match="magic"):
        feed(server_conn(), bad, size)


def test_no_common_version_fails_both_sides(size: int | None) -> None:
    p = Pair(conn_config("c", versions=(2, 3)), conn_config("s", versions=(1,)), size=size)
    p.handshake()
    assert isinstance(p.server.error, VersionMismatch) and not p.server.error.remote
    assert isinstance(p.client.error, VersionMismatch) and p.client.error.remote
    assert [f.type for f in parse_frames(bytes(p.server.sent))] == [FrameType.ALERT]


def _point(x: int, y: int, prefix: int = 4) -> bytes:
    return bytes([prefix]) + x.to_bytes(32, "big") + y.to_bytes(32, "big")


def _small_valid_point() -> tuple[int, int]:
    for x in range(1, 100):
        rhs = (x**3 - 3 * x + P256_B) % P256_P
        y = pow(rhs, (P256_P + 1) // 4, P256_P)
        if y * y % P256_P == rhs:
            return x, y
    raise AssertionError("no small point found")


def _bad_points() -> dict[str, bytes]:
    genuine = ClientHello.decode(parse_frames(client_hello_frame())[0].body).key_share
    x = int.from_bytes(genuine[1:33], "big")
    y = int.from_bytes(genuine[33:], "big")
    sx, sy = _small_valid_point()
    return {
        "not-on-curve": _point(x, (y + 1) % P256_P),
        "compressed-02": _point(x, y, 0x02),
        "compressed-03": _point(x, y, 0x03),
        "hybrid-06": _point(x, y, 0x06),
        "prefix-05": _point(x, y, 0x05),
        "infinity-zero-bytes": bytes(65),
        "infinity-04-zeros": _point(0, 0),
        "x-not-reduced": _point(sx + P256_P, sy),  # a valid point, non-canonical x
        "all-ones": b"\x04" + b"\xff" * 64,
    }


@pytest.mark.parametrize("name", sorted(_bad_points()))
def test_invalid_client_key_share(name: str) -> None:
    server = server_conn()
    with pytest.raises(InvalidKeyShare):
        server.receive_data(client_hello_frame(key_share=_bad_points()[name]))
    # The server answered with an alert, never with a SERVER_HELLO.
    (frame,) = parse_frames(server.data_to_send())
    assert frame.type == FrameType.ALERT
    assert Alert.decode(frame.body).code == CloseCode.BAD_KEY_SHARE


@pytest.mark.parametrize("name", sorted(_bad_points()))
def test_invalid_server_key_share(name: str) -> None:
    def tamper(sender: Role, data: bytes) -> bytes:
        frames = parse_frames(data)
        if sender is Role.SERVER and frames[0].type == FrameType.SERVER_HELLO:
            hello = ServerHello.decode(frames[0].body)
            hello = msgspec.structs.replace(hello, key_share=_bad_points()[name])
            return encode_frame(FrameType.SERVER_HELLO, hello.encode())
        return data

    p = Pair(tamper=tamper)
    p.handshake()
    assert isinstance(p.client.error, InvalidKeyShare) and not p.client.error.remote
    assert isinstance(p.server.error, InvalidKeyShare) and p.server.error.remote


def test_wrong_psk_fails_both_sides_and_server_reveals_nothing(size: int | None) -> None:
    p = Pair(client_psk=OTHER_PSK, server_psk=PSK, size=size)
    p.handshake()
    assert isinstance(p.server.error, AuthenticationError) and not p.server.error.remote
    assert isinstance(p.client.error, AuthenticationError) and p.client.error.remote
    # The server never sent anything derived from the PSK to the failing client:
    # no SERVER_AUTH proof (an offline-guessing oracle), only its hello and an alert.
    frames = parse_frames(bytes(p.server.sent))
    assert [f.type for f in frames] == [FrameType.SERVER_HELLO, FrameType.ALERT]
    assert Alert.decode(frames[1].body).code == CloseCode.AUTH_FAILED
    assert p.server.conn._send is None and p.client.conn._send is None


def test_reflected_client_proof_is_rejected() -> None:
    client = Connection(Role.CLIENT, PSK, conn_config("client"))
    server = server_conn()
    client.initiate()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    (auth,) = parse_frames(client.data_to_send())
    assert auth.type == FrameType.CLIENT_AUTH
    # An impostor without the PSK echoes the client's own proof back.
    with pytest.raises(AuthenticationError):
        client.receive_data(encode_frame(FrameType.SERVER_AUTH, auth.body))
    assert client.state is State.FAILED and client._send is None


def test_tampered_server_auth() -> None:
    def tamper(sender: Role, data: bytes) -> bytes:
        if sender is Role.SERVER and data[0] == FrameType.SERVER_AUTH:
            return data[:-1] + bytes([data[-1] ^ 0x01])
        return data

    p = Pair(tamper=tamper)
    p.handshake()
    assert isinstance(p.client.error, AuthenticationError) and not p.client.error.remote
    assert p.client.conn._send is None
    # The server already trusts the client; the clear-text alert that follows is
    # not accepted as an authenticated statement, only as a protocol violation.
    assert isinstance(p.server.error, ProtocolError) and not p.server.error.remote


def test_records_coalesced_with_server_auth() -> None:
    client = Connection(Role.CLIENT, PSK, conn_config("client"))
    server = server_conn()
    client.initiate()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    assert server.is_open
    server.send_message(b"first words")
    events = client.receive_data(server.data_to_send())
    assert [type(e) for e in events] == [HandshakeComplete, MessageReceived]
    assert messages(events) == [b"first words"]


def test_proof_of_wrong_length_is_rejected() -> None:
    client = Connection(Role.CLIENT, PSK, conn_config("client"))
    server = server_conn()
    client.initiate()
    server.receive_data(client.data_to_send())
    with pytest.raises(ProtocolError, match="exactly 32"):
        server.receive_data(encode_frame(FrameType.CLIENT_AUTH, b"\x00" * 31))


@pytest.mark.parametrize("role", [Role.CLIENT, Role.SERVER])
def test_records_before_auth_are_protocol_errors(role: Role, size: int | None) -> None:
    conn = fresh_client() if role is Role.CLIENT else server_conn()
    record = encode_frame(FrameType.MESSAGE, b"\x00" * 40)
    with pytest.raises(ProtocolError, match="unexpected frame type") as info:
        feed(conn, record, size)
    assert not isinstance(info.value, DecryptionError)


def test_record_while_waiting_for_client_auth() -> None:
    client = Connection(Role.CLIENT, PSK, conn_config("client"))
    server = server_conn()
    client.initiate()
    server.receive_data(client.data_to_send())
    for ftype in (FrameType.MESSAGE, FrameType.CLOSE, FrameType.KEY_UPDATE):
        probe = Connection(Role.SERVER, PSK, conn_config("server"))
        probe.receive_data(client_hello_frame())
        with pytest.raises(ProtocolError, match="unexpected frame type"):
            probe.receive_data(encode_frame(ftype, b"\x00" * 40))


def test_cannot_send_before_auth() -> None:
    client = fresh_client()
    with pytest.raises(ProtocolError):
        client.send_message(b"too early")
    assert client.data_to_send() == b""


@pytest.mark.parametrize("ftype", [0x00, 0x06, 0x7F, 0xEE, 0xFF])
def test_unknown_frame_type(ftype: int, size: int | None) -> None:
    with pytest.raises(ProtocolError, match="unexpected frame type"):
        feed(server_conn(), encode_frame(ftype, b"abc"), size)
    pair = Pair().established()
    with pytest.raises(ProtocolError, match="unexpected frame type"):
        feed(pair.server.conn, encode_frame(ftype, b"\x00" * 20), size)


@pytest.mark.parametrize("flags", [0x01, 0x80])
def test_flags_on_handshake_frames(flags: int) -> None:
    hello = bytearray(client_hello_frame())
    hello[1] = flags
    with pytest.raises(ProtocolError, match="flags"):
        server_conn().receive_data(bytes(hello))

    def tamper(sender: Role, data: bytes) -> bytes:
        if sender is Role.SERVER and data[0] == FrameType.SERVER_HELLO:
            return data[:1] + bytes([flags]) + data[2:]
        return data

    p = Pair(tamper=tamper)
    p.handshake()
    assert isinstance(p.client.error, ProtocolError) and "flags" in str(p.client.error)


def test_handshake_frames_after_auth_are_rejected(pair: Pair) -> None:
    with pytest.raises(ProtocolError, match="unexpected frame type"):
        feed(pair.server.conn, client_hello_frame(), pair.size)


def test_clear_text_alert_cannot_kill_an_open_session_silently(pair: Pair) -> None:
    # After authentication an ALERT is not a valid frame: it is a protocol
    # error, not a remote "AUTH_FAILED" that an on-path attacker could forge.
    alert = encode_frame(FrameType.ALERT, Alert(CloseCode.AUTH_FAILED, "forged").encode())
    with pytest.raises(ProtocolError) as info:
        feed(pair.client.conn, alert, pair.size)
    assert not isinstance(info.value, AuthenticationError) and not info.value.remote


# -- oversize frames ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ftype", "length", "error"),
    [
        (FrameType.CLIENT_HELLO, MAX_HANDSHAKE_BODY + 1, FrameTooLarge),
        (FrameType.ALERT, 0xFFFFFFFF, FrameTooLarge),
        # Unknown type or too large: either verdict, as long as it comes at the header.
        (0x7F, MAX_RECORD_BODY + 1, ProtocolError),
        # A record-sized body from an unauthenticated peer is refused at its header.
        (FrameType.MESSAGE, MAX_HANDSHAKE_BODY + 1, ProtocolError),
        (FrameType.MESSAGE, MAX_RECORD_BODY, ProtocolError),
    ],
)
def test_oversize_length_prefix_before_auth(
    ftype: int, length: int, error: type[ProtocolError]
) -> None:
    server = server_conn()
    # Only the header arrives: the error must come before any body is buffered.
    with pytest.raises(error):
        server.receive_data(encode_header(ftype, 0, length))
    assert server._frames.pending == HEADER_LEN


@pytest.mark.parametrize("length", [MAX_RECORD_BODY + 1, 0xFFFFFFFF])
def test_oversize_record_length_prefix(pair: Pair, length: int) -> None:
    with pytest.raises(FrameTooLarge):
        feed(pair.server.conn, encode_header(FrameType.MESSAGE, 0, length), pair.size)
    assert pair.server.conn._frames.pending == HEADER_LEN


def test_maximum_size_record_is_accepted(pair: Pair) -> None:
    # The limit itself is inclusive: a full-size record still goes through.
    pair.client.conn.send_message(b"\xab" * MESSAGE_CHUNK)
    pair.client.conn.send_message(b"")
    pair.pump()
    assert [len(m) for m in messages(pair.server.events)] == [MESSAGE_CHUNK, 0]


# -- record protection ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "bit"),
    [
        (HEADER_LEN, 0x01),  # first ciphertext byte
        (HEADER_LEN + 3, 0x80),  # inside the ciphertext
        (-1, 0x01),  # last byte of the tag
        (0, 0x01),  # frame type: MESSAGE -> CLOSE
        (0, 0x02),  # frame type: MESSAGE -> KEY_UPDATE
        (1, 0x01),  # flags: set MORE
        (1, 0x40),  # flags: unknown bit
    ],
)
def test_tampered_record(pair: Pair, offset: int, bit: int) -> None:
    record = bytearray(record_of(pair.client.conn, FrameType.MESSAGE, b"attack at dawn"))
    record[offset] ^= bit
    with pytest.raises(DecryptionError):
        feed(pair.server.conn, bytes(record), pair.size)


def test_tampered_length_field(pair: Pair) -> None:
    record = bytearray(record_of(pair.client.conn, FrameType.MESSAGE, b"attack at dawn"))
    record[5] -= 1  # shorter length: the tag no longer verifies
    with pytest.raises(DecryptionError):
        feed(pair.server.conn, bytes(record[:-1]), pair.size)


def test_record_shorter_than_tag(pair: Pair) -> None:
    with pytest.raises(ProtocolError, match="shorter"):
        feed(pair.server.conn, encode_frame(FrameType.MESSAGE, b"\x00" * 15), pair.size)


def test_replayed_record(pair: Pair) -> None:
    record = record_of(pair.client.conn, FrameType.MESSAGE, b"transfer 100")
    assert messages(feed(pair.server.conn, record, pair.size)) == [b"transfer 100"]
    with pytest.raises(DecryptionError):
        feed(pair.server.conn, record, pair.size)


def test_reordered_records(pair: Pair) -> None:
    first = record_of(pair.client.conn, FrameType.MESSAGE, b"one")
    second = record_of(pair.client.conn, FrameType.MESSAGE, b"two")
    with pytest.raises(DecryptionError):
        feed(pair.server.conn, second + first, pair.size)


def test_dropped_record(pair: Pair) -> None:
    record_of(pair.client.conn, FrameType.MESSAGE, b"lost")
    second = record_of(pair.client.conn, FrameType.MESSAGE, b"two")
    with pytest.raises(DecryptionError):
        feed(pair.server.conn, second, pair.size)


def test_reflected_record(pair: Pair) -> None:
    # A record bounced back to its sender must not decrypt: each direction has its own key.
    record = record_of(pair.client.conn, FrameType.MESSAGE, b"echo?")
    with pytest.raises(DecryptionError):
        feed(pair.client.conn, record, pair.size)


def test_record_from_another_session() -> None:
    a = Pair().established()
    b = Pair().established()
    record = record_of(a.client.conn, FrameType.MESSAGE, b"cross-session")
    with pytest.raises(DecryptionError):
        b.server.conn.receive_data(record)


def test_failed_decryption_does_not_advance_sequence(pair: Pair) -> None:
    for i in range(3):
        pair.client.conn.send_message(b"m%d" % i)
    pair.pump()
    recv = pair.server.conn._recv
    assert recv is not None and recv.seq == 3
    record = bytearray(record_of(pair.client.conn, FrameType.MESSAGE, b"genuine"))
    tampered = bytes(record[:-1]) + bytes([record[-1] ^ 1])
    with pytest.raises(DecryptionError):
        feed(pair.server.conn, tampered, pair.size)
    assert recv.seq == 3 and recv.bytes_under_key == len(b"m0m1m2")


def test_cipher_stays_in_sync_after_a_forgery() -> None:
    """RecordCipher level: a forged record must not burn the sequence number,
    so the genuine record that follows still opens."""
    pair = Pair().established()
    sender = RecordCipher(pair.client.conn._send.keys)  # type: ignore[union-attr]
    receiver = RecordCipher(pair.server.conn._recv.keys)  # type: ignore[union-attr]
    header = encode_header(FrameType.MESSAGE, 0, 5 + 16)
    sealed = sender.seal(header, b"hello")
    with pytest.raises(DecryptionError):
        receiver.open(header, sealed[:-1] + bytes([sealed[-1] ^ 1]))
    assert receiver.seq == 0
    assert receiver.open(header, sealed) == b"hello"
    assert receiver.seq == 1


# -- errors are sticky ----------------------------------------------------------------------


def test_error_is_sticky(pair: Pair) -> None:
    with pytest.raises(DecryptionError) as info:
        feed(pair.server.conn, encode_frame(FrameType.MESSAGE, b"\x00" * 32), pair.size)
    error = info.value
    assert pair.server.conn.error is error and pair.server.conn.state is State.FAILED
    for call in (
        lambda: pair.server.conn.receive_data(b"more"),
        lambda: pair.server.conn.receive_data(b""),
        lambda: pair.server.conn.send_message(b"x"),
        lambda: pair.server.conn.send_record(FrameType.MESSAGE, b"x"),
    ):
        with pytest.raises(DecryptionError) as again:
            call()
        assert again.value is error
    # The peer was told why, in an encrypted CLOSE, exactly once.
    pair.server.conn.fail(ProtocolError("second error"))
    pair.server.conn.close()
    pair.pump()
    (closed,) = closed_events(pair.client.events)
    assert closed.code == CloseCode.DECRYPT_ERROR
    assert isinstance(closed.error, DecryptionError) and closed.error.remote


def test_error_is_sticky_during_handshake() -> None:
    server = server_conn()
    with pytest.raises(ProtocolError) as info:
        server.receive_data(b"\x7f\x00\x00\x00\x00\x00")
    with pytest.raises(ProtocolError) as again:
        server.receive_data(client_hello_frame())
    assert again.value is info.value
    assert [f.type for f in parse_frames(server.data_to_send())] == [FrameType.ALERT]


# -- close ----------------------------------------------------------------------------------


@pytest.mark.parametrize("closer", ["client", "server"])
def test_orderly_close(pair: Pair, closer: str) -> None:
    active = getattr(pair, closer)
    passive = pair.server if closer == "client" else pair.client
    passive.conn.send_message(b"in flight")
    active.conn.close()
    assert active.conn.state is State.CLOSING
    with pytest.raises(ProtocolError):
        active.conn.send_message(b"after close")
    pair.pump()
    # The message sent before the peer saw our CLOSE is still delivered.
    assert messages(active.events) == [b"in flight"]
    for side in (active, passive):
        (closed,) = closed_events(side.events)
        assert closed.code == CloseCode.NORMAL
        assert isinstance(closed.error, SessionClosed) and closed.error.remote
        assert side.conn.state is State.CLOSED
        with pytest.raises(SessionClosed):
            side.conn.receive_data(b"")
    assert pair.client.error is None and pair.server.error is None


def test_close_with_going_away_and_error_code(pair: Pair) -> None:
    pair.server.conn.close(CloseCode.GOING_AWAY, "server shutting down")
    pair.pump()
    (closed,) = closed_events(pair.client.events)
    assert isinstance(closed.error, SessionClosed) and closed.reason == "server shutting down"
    p2 = Pair().established()
    p2.server.conn.close(CloseCode.MESSAGE_TOO_LARGE, "too big")
    p2.pump()
    (closed,) = closed_events(p2.client.events)
    assert isinstance(closed.error, MessageTooLarge) and closed.error.remote


def test_eof_without_close_is_connection_lost(pair: Pair) -> None:
    pair.client.conn.send_message(b"last words")
    pair.pump()
    pair.eof(pair.server)
    assert isinstance(pair.server.error, ConnectionLost)
    assert messages(pair.server.events) == [b"last words"]


def test_eof_while_closing_is_connection_lost(pair: Pair) -> None:
    pair.client.conn.close()
    pair.client.conn.data_to_send()  # the CLOSE never arrives
    pair.eof(pair.client)
    assert isinstance(pair.client.error, ConnectionLost)


def test_eof_inside_a_record(pair: Pair) -> None:
    record = record_of(pair.client.conn, FrameType.MESSAGE, b"truncated message")
    feed(pair.server.conn, record[:-5], pair.size)
    with pytest.raises(ProtocolError, match="inside a frame"):
        pair.server.conn.receive_data(b"")


def test_malformed_close_body(pair: Pair) -> None:
    with pytest.raises(ProtocolError):
        feed(pair.server.conn, record_of(pair.client.conn, FrameType.CLOSE, b"\x00"), pair.size)


def test_close_inside_fragmented_message(pair: Pair) -> None:
    data = record_of(pair.client.conn, FrameType.MESSAGE, b"part", FLAG_MORE)
    data += record_of(pair.client.conn, FrameType.CLOSE, b"\x00\x00\x00")
    with pytest.raises(ProtocolError, match="middle"):
        feed(pair.server.conn, data, pair.size)


# -- message size limits --------------------------------------------------------------------


def test_local_message_size_limit() -> None:
    p = Pair(conn_config("c", max_message_size=1000)).established()
    with pytest.raises(MessageTooLarge):
        p.client.conn.send_message(b"x" * 1001)
    # Nothing of the oversize message was queued.
    assert p.client.conn.data_to_send() == b""
    p.client.conn.send_message(b"x" * 1000)
    p.pump()
    assert messages(p.server.events) == [b"x" * 1000]


@pytest.mark.parametrize(
    ("limit", "length"),
    [(1000, 1001), (MESSAGE_CHUNK + MESSAGE_CHUNK // 2, 2 * MESSAGE_CHUNK)],
)
def test_remote_message_size_limit(limit: int, length: int) -> None:
    p = Pair(server_config=conn_config("s", max_message_size=limit)).established()
    p.client.conn.send_message(b"y" * length)
    p.pump()
    assert isinstance(p.server.error, MessageTooLarge) and not p.server.error.remote
    assert messages(p.server.events) == []
    (closed,) = closed_events(p.client.events)
    assert isinstance(closed.error, MessageTooLarge) and closed.error.remote
    # Fragments never pile up beyond the limit.
    assert p.server.conn._fragment_bytes <= length


def test_unknown_message_flags(pair: Pair) -> None:
    with pytest.raises(ProtocolError, match="flags"):
        feed(pair.server.conn, record_of(pair.client.conn, FrameType.MESSAGE, b"x", 0x02), None)


# -- capabilities and downgrades ------------------------------------------------------------


def _done(events: Sequence[Event]) -> HandshakeComplete:
    (done,) = [e for e in events if isinstance(e, HandshakeComplete)]
    return done


def test_capability_intersection(size: int | None) -> None:
    p = Pair(
        conn_config("c", capabilities=("msg", "zeta", "x-future.v2")),
        conn_config("s", capabilities=("alpha", "zeta", "msg")),
        size=size,
    )
    p.handshake()
    client_caps = _done(p.client.events).capabilities
    assert client_caps == _done(p.server.events).capabilities
    assert set(client_caps) == {"msg", "zeta"}


def test_no_common_capability_is_not_an_error() -> None:
    p = Pair(conn_config("c", capabilities=("a",)), conn_config("s", capabilities=("b",)))
    p.handshake()
    assert _done(p.client.events).capabilities == ()


def _rewrite(frame_type: int, sender: Role, edit: object) -> object:
    """A tamper hook rewriting the one handshake message of ``frame_type``."""
    decoder = ClientHello if frame_type == FrameType.CLIENT_HELLO else ServerHello

    def tamper(who: Role, data: bytes) -> bytes:
        frames = parse_frames(data)
        if who is sender and frames[0].type == frame_type:
            hello = msgspec.structs.replace(decoder.decode(frames[0].body), **edit)  # type: ignore[arg-type]
            rest = b"".join(f.header + f.body for f in frames[1:])
            return encode_frame(frame_type, hello.encode()) + rest
        return data

    return tamper


def test_server_selecting_unoffered_capability() -> None:
    tamper = _rewrite(FrameType.SERVER_HELLO, Role.SERVER, {"capabilities": ("msg", "root")})
    p = Pair(conn_config("c", capabilities=("msg",)), tamper=tamper)  # type: ignore[arg-type]
    p.handshake()
    assert isinstance(p.client.error, ProtocolError) and "not offered" in str(p.client.error)
    assert p.client.conn._send is None


def test_server_selecting_unoffered_version() -> None:
    tamper = _rewrite(FrameType.SERVER_HELLO, Role.SERVER, {"version": 9})
    p = Pair(tamper=tamper)  # type: ignore[arg-type]
    p.handshake()
    assert isinstance(p.client.error, ProtocolError) and "not offered" in str(p.client.error)


def test_negotiation_without_mitm_picks_the_best() -> None:
    p = Pair(
        conn_config("c", versions=(1, 2), capabilities=("msg", "fast")),
        conn_config("s", versions=(1, 2), capabilities=("msg", "fast")),
    )
    p.handshake()
    assert _done(p.client.events).version == 2
    assert set(_done(p.client.events).capabilities) == {"msg", "fast"}


@pytest.mark.parametrize(
    ("frame_type", "sender", "edit"),
    [
        (FrameType.CLIENT_HELLO, Role.CLIENT, {"versions": (1,)}),
        (FrameType.CLIENT_HELLO, Role.CLIENT, {"capabilities": ("msg",)}),
        (FrameType.CLIENT_HELLO, Role.CLIENT, {"name": "mallory"}),
        (FrameType.SERVER_HELLO, Role.SERVER, {"capabilities": ("msg",)}),
        (FrameType.SERVER_HELLO, Role.SERVER, {"version": 1}),
    ],
    ids=["client-versions", "client-caps", "client-name", "server-caps", "server-version"],
)
def test_downgrade_by_mitm_fails_authentication(
    frame_type: int, sender: Role, edit: dict[str, object], size: int | None
) -> None:
    both = {"versions": (1, 2), "capabilities": ("msg", "fast")}
    p = Pair(
        conn_config("c", **both),
        conn_config("s", **both),
        tamper=_rewrite(frame_type, sender, edit),  # type: ignore[arg-type]
        size=size,
    )
    p.handshake()
    assert isinstance(p.server.error, AuthenticationError) and not p.server.error.remote
    assert isinstance(p.client.error, AuthenticationError) and p.client.error.remote
    assert not any(isinstance(e, HandshakeComplete) for e in p.client.events + p.server.events)


# -- key update -----------------------------------------------------------------------------


def _record_types(data: bytes) -> list[int]:
    return [f.type for f in parse_frames(data)]


def test_key_update_by_record_count(size: int | None) -> None:
    p = Pair(conn_config("c", rekey_after_records=2), size=size).established()
    start = len(p.client.sent)
    initial = p.client.conn._send.keys  # type: ignore[union-attr]
    seen = [initial]
    sent = [b"msg %d" % i for i in range(7)]
    for msg in sent:
        p.client.conn.send_message(msg)
        p.pump()
        seen.append(p.client.conn._send.keys)  # type: ignore[union-attr]
        # The receiver follows every update.
        assert p.server.conn._recv.keys == p.client.conn._send.keys  # type: ignore[union-attr]
    assert messages(p.server.events) == sent
    types = _record_types(bytes(p.client.sent[start:]))
    assert types.count(FrameType.KEY_UPDATE) == 3
    assert types[:3] == [FrameType.MESSAGE, FrameType.MESSAGE, FrameType.KEY_UPDATE]
    distinct = {k.key for k in seen}
    assert len(distinct) == 4
    # The other direction did not rekey.
    assert p.server.conn._send.keys == p.client.conn._recv.keys  # type: ignore[union-attr]
    p.server.conn.send_message(b"reply")
    p.pump()
    assert messages(p.client.events) == [b"reply"]


def test_key_update_between_fragments() -> None:
    p = Pair(conn_config("c", rekey_after_records=1)).established()
    start = len(p.client.sent)
    data = bytes(range(256)) * (3 * MESSAGE_CHUNK // 256) + b"tail"
    p.client.conn.send_message(data)
    p.pump()
    assert messages(p.server.events) == [data]
    types = _record_types(bytes(p.client.sent[start:]))
    assert types == [FrameType.MESSAGE] + [FrameType.KEY_UPDATE, FrameType.MESSAGE] * 3


def test_key_update_by_byte_count() -> None:
    p = Pair(server_config=conn_config("s", rekey_after_bytes=100)).established()
    start = len(p.server.sent)
    first = p.server.conn._send.keys  # type: ignore[union-attr]
    for _ in range(5):
        p.server.conn.send_message(b"z" * 60)
    p.pump()
    assert messages(p.client.events) == [b"z" * 60] * 5
    types = _record_types(bytes(p.server.sent[start:]))
    assert types.count(FrameType.KEY_UPDATE) == 2
    assert p.server.conn._send.keys != first  # type: ignore[union-attr]


def test_old_key_does_not_open_new_records() -> None:
    p = Pair(conn_config("c", rekey_after_records=1)).established()
    stale = RecordCipher(p.server.conn._recv.keys)  # type: ignore[union-attr]
    p.client.conn.send_message(b"a")
    p.pump()
    stale.open(*_split_record(p.client.sent, -1))  # record 0 under the first key
    p.client.conn.send_message(b"b")  # KEY_UPDATE, then a record under the new key
    p.pump()
    frames = parse_frames(bytes(p.client.sent))
    assert frames[-2].type == FrameType.KEY_UPDATE
    with pytest.raises(DecryptionError):
        stale.open(frames[-1].header, frames[-1].body)


def _split_record(sent: bytearray, index: int) -> tuple[bytes, bytes]:
    frame = parse_frames(bytes(sent))[index]
    return frame.header, frame.body


def test_key_update_with_payload_is_rejected(pair: Pair) -> None:
    with pytest.raises(ProtocolError, match="KEY_UPDATE"):
        feed(pair.server.conn, record_of(pair.client.conn, FrameType.KEY_UPDATE, b"x"), None)


def test_receiver_enforces_records_per_key_limit() -> None:
    strict = conn_config("s", max_records_per_key=4, rekey_after_records=3)
    # A sender that never rekeys is cut off at the receiver's hard limit.
    p = Pair(server_config=strict).established()
    for i in range(5):
        p.client.conn.send_message(b"%d" % i)
        p.pump()
    assert messages(p.server.events) == [b"0", b"1", b"2", b"3"]
    assert isinstance(p.server.error, ProtocolError) and "limit" in str(p.server.error)
    # A sender that rekeys in time goes on forever.
    p = Pair(conn_config("c", rekey_after_records=3), strict).established()
    sent = [b"%d" % i for i in range(12)]
    for msg in sent:
        p.client.conn.send_message(msg)
    p.pump()
    assert p.server.error is None and messages(p.server.events) == sent


def test_connection_config_validates_rekey_thresholds() -> None:
    with pytest.raises(ValueError):
        conn_config("c", max_records_per_key=4, rekey_after_records=4)
    with pytest.raises(ValueError):
        conn_config("c", rekey_after_bytes=0)
    with pytest.raises(ValueError):
        conn_config("c", max_message_size=0)


def test_bad_hello_settings_raise_each_time_and_configs_are_built_once() -> None:
    # The hello checks are cached; a failed check must not be.
    for _ in range(2):
        with pytest.raises(ValueError, match="capability"):
            HandshakeConfig("c", (1,), ("Not A Token",))
        with pytest.raises(ValueError, match="endpoint name"):
            HandshakeConfig("", (1,), ("msg",))
    config = SessionConfig(name="c")
    assert config.connection_config() is config.connection_config()
    other = msgspec.structs.replace(config, max_message_size=1 << 10)
    assert other.connection_config().max_message_size == 1 << 10


def test_hello_capability_lists_are_checked_every_time_though_cached() -> None:
    good = ClientHello((1,), bytes(32), bytes(65), "c", ("msg", "channels")).encode()
    assert ClientHello.decode(good) == ClientHello.decode(good)
    caps_at = len(good) - len(b"\x02\x03msg\x08channels")
    bad_lists = {
        b"\x02\x03msg\x03msg": "duplicate capability",
        b"\x01\x03MSG": "malformed capability",
        b"\x01\x03msg\x00": "trailing bytes",
        b"\x02\x03msg": "truncated CLIENT_HELLO",
    }
    for _ in range(2):  # a malformed list raises, and is not remembered as good
        for caps, error in bad_lists.items():
            with pytest.raises(ProtocolError, match=error):
                ClientHello.decode(good[:caps_at] + caps)


@given(st.text(alphabet=st.characters(max_codepoint=0x200), max_size=60), st.integers(0, 80))
def test_clipped_text_is_safe_and_fits(text: str, limit: int) -> None:
    clipped = clip_text(text, limit)
    assert not has_control_chars(clipped) and len(clipped.encode()) <= limit
    expected = "".join("?" if has_control_chars(c) else c for c in text)
    assert expected.startswith(clipped)
    assert len(clipped.encode()) > limit - 4 or clipped == expected  # cut only to fit


@given(st.text(alphabet=st.characters(max_codepoint=0x200), max_size=40))
def test_control_character_check_matches_its_definition(text: str) -> None:
    # C0 controls, DEL and C1 controls: what would drive a terminal or forge a log line.
    expected = any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text)
    assert has_control_chars(text) is expected
