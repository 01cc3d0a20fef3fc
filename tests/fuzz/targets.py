"""Fuzz targets shared by the atheris harnesses and the hypothesis property tests.

Each target takes one ``bytes`` input and checks h11's invariant on it: the
code under test either accepts the input or raises a
:class:`~ppcp.core.errors.PPCPError` subclass; never any other exception.
On top of that, every target checks what "no hang, memory bounded" means
for its machine:

* errors are sticky (a failed connection raises the same error forever);
* buffered bytes never exceed one maximum frame;
* what a machine sends back is bounded by a constant factor of what it got
  (no amplification), and a handshake sends a bounded number of bytes;
* channel counts stay under the configured cap.

A violation raises ``AssertionError`` (or lets the stray exception escape),
which atheris reports as a crash and hypothesis as a failing example.

Inputs are structured by their first bytes (a mode, a chunk size), so a
coverage-guided fuzzer that mutates the :func:`seeds` reaches deep states:
a genuine CLIENT_HELLO followed by mutated bytes, authenticated records with
fuzzer-chosen contents, PINGs with a valid tag over fuzzer-chosen fields.
Everything is deterministic (fixed random sources), so a crash reproduces.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from ppcp.control.channels import ChannelMux, ChannelState, MuxConfig
from ppcp.core.config import SUPPORTED_CAPABILITIES
from ppcp.core.errors import PPCPError
from ppcp.core.events import ConnectionClosed, Event
from ppcp.core.states import Role
from ppcp.crypto.psk import derive_psk_key
from ppcp.handshake.machine import HandshakeConfig
from ppcp.transport.connection import Connection, ConnectionConfig
from ppcp.transport.frames import (
    HEADER_LEN,
    MAX_HANDSHAKE_BODY,
    MAX_RECORD_BODY,
    FrameBuffer,
    FrameType,
    encode_frame,
)
from ppcp.utils.vectors import StreamRNG as fixed_rng  # the RFC vectors' source

PSK = derive_psk_key("ppcp-psk-" + "f0" * 32)
# Everything a handshake side ever sends: one hello or proof and one alert.
MAX_HANDSHAKE_OUTPUT = 2 * (HEADER_LEN + MAX_HANDSHAKE_BODY)
# Replies to records (heartbeat answers, rejects, closes) stay within this
# factor of the input, plus a constant.
AMPLIFICATION = 4
MAX_PIECES = 4096  # bound on feed calls per input

Target = Callable[[bytes], None]


def _config(name: str) -> ConnectionConfig:
    return ConnectionConfig(HandshakeConfig(name, capabilities=SUPPORTED_CAPABILITIES))


def new_client() -> Connection:
    conn = Connection(Role.CLIENT, PSK, _config("fuzz-client"), fixed_rng(b"client"))
    conn.initiate()
    return conn


def new_server() -> Connection:
    return Connection(Role.SERVER, PSK, _config("fuzz-server"), fixed_rng(b"server"))


@functools.cache
def conversation() -> dict[str, bytes]:
    """The genuine handshake between new_client() and new_server(), frame by frame."""
    client, server = new_client(), new_server()
    ch = client.data_to_send()
    server.receive_data(ch)
    sh = server.data_to_send()
    client.receive_data(sh)
    ca = client.data_to_send()
    server.receive_data(ca)
    sa = server.data_to_send()
    client.receive_data(sa)
    assert client.is_open and server.is_open
    return {"client_hello": ch, "server_hello": sh, "client_auth": ca, "server_auth": sa}


def established() -> tuple[Connection, Connection]:
    """A fresh, deterministic, authenticated (client, server) pair."""
    conv = conversation()
    client, server = new_client(), new_server()
    client.data_to_send()
    server.receive_data(conv["client_hello"])
    server.data_to_send()
    client.receive_data(conv["server_hello"])
    client.data_to_send()
    server.receive_data(conv["client_auth"])
    server.data_to_send()
    client.receive_data(conv["server_auth"])
    return client, server


# -- the invariant ----------------------------------------------------------------------------


def _pieces(data: bytes, chunk: int) -> list[bytes]:
    if chunk == 0 or not data:
        return [data] if data else []
    size = max(chunk, len(data) // MAX_PIECES + 1)
    return [data[i : i + size] for i in range(0, len(data), size)]


def feed_checked(conn: Connection, data: bytes, chunk: int, eof: bool) -> PPCPError | None:
    """Feed ``data`` in pieces of ``chunk`` bytes (0: whole); check the invariant."""
    error: PPCPError | None = None
    pieces = _pieces(data, chunk)
    if eof:
        pieces.append(b"")
    for piece in pieces:
        try:
            events = conn.receive_data(piece)
        except PPCPError as exc:
            assert error is None or exc is error, "a later call raised a different error"
            assert conn.error is exc, "the raised error is not the connection's error"
            error = exc
            continue
        assert error is None, "receive_data succeeded after an error"
        assert all(isinstance(e, Event) for e in events)
        assert conn._frames.pending <= HEADER_LEN + MAX_RECORD_BODY + len(piece)
        # An error after events completed in the same call is delivered as a
        # final ConnectionClosed event instead of being raised.
        if conn.error is not None:
            closed = [e for e in events if isinstance(e, ConnectionClosed)]
            assert closed and closed[-1] is events[-1], "failed without a final ConnectionClosed"
            assert closed[-1].error is conn.error
            error = conn.error
    if error is not None:
        # Sticky: every later call raises the very same error.
        try:
            conn.receive_data(b"\x00")
        except PPCPError as exc:
            assert exc is error, "error not sticky"
        else:
            raise AssertionError("a failed connection accepted more data")
    return error


def _mode(data: bytes) -> tuple[int, int, bool, bytes]:
    """(mode, chunk size, eof, rest) from an input's first two bytes."""
    if len(data) < 2:
        return 0, 0, False, data
    return data[0], data[1] & 0x7F, bool(data[1] & 0x80), data[2:]


# -- targets -----------------------------------------------------------------------------------


def fuzz_frames(data: bytes) -> None:
    """The frame parser alone: frames out, or FrameTooLarge/ProtocolError."""
    mode, chunk, eof, rest = _mode(data)
    buf = FrameBuffer(MAX_HANDSHAKE_BODY) if mode & 1 else FrameBuffer()
    limit = buf.max_body if hasattr(buf, "max_body") else MAX_RECORD_BODY
    total = 0
    try:
        for piece in _pieces(rest, chunk):
            buf.feed(piece)
            for _ in range(len(piece) + 1):
                frame = buf.next_frame()
                if frame is None:
                    break
                total += HEADER_LEN + len(frame.body)
                assert len(frame.body) <= limit
                # Re-encoding a parsed frame gives back its exact bytes.
                assert frame.header + frame.body == encode_frame(
                    frame.type, frame.body, frame.flags
                )
            assert buf.pending <= HEADER_LEN + limit + len(piece)
        if eof:
            buf.feed_eof()
            buf.check_eof()
    except PPCPError:
        return
    assert total + buf.pending == len(rest)


def fuzz_handshake_server(data: bytes) -> None:
    """A server fed arbitrary bytes, optionally after a genuine CLIENT_HELLO (+ proof)."""
    mode, chunk, eof, rest = _mode(data)
    conv = conversation()
    prefix = (b"", conv["client_hello"], conv["client_hello"] + conv["client_auth"])[mode % 3]
    server = new_server()
    feed_checked(server, prefix + rest, chunk, eof)
    out = server.data_to_send()
    if not server.is_open and server.result is None:
        assert len(out) <= MAX_HANDSHAKE_OUTPUT, f"handshake output of {len(out)} bytes"
        # Offline-oracle minimisation: nothing derived from the PSK leaves an
        # unauthenticated server (no SERVER_AUTH without a valid CLIENT_AUTH).
        assert _types(out).isdisjoint({FrameType.SERVER_AUTH}), "SERVER_AUTH without proof"


def fuzz_handshake_client(data: bytes) -> None:
    """A client (after CLIENT_HELLO) fed arbitrary bytes, optionally after a genuine reply."""
    mode, chunk, eof, rest = _mode(data)
    conv = conversation()
    prefix = (b"", conv["server_hello"], conv["server_hello"] + conv["server_auth"])[mode % 3]
    client = new_client()
    client.data_to_send()
    feed_checked(client, prefix + rest, chunk, eof)
    out = client.data_to_send()
    if client.result is None:
        assert len(out) <= MAX_HANDSHAKE_OUTPUT, f"handshake output of {len(out)} bytes"


def _types(stream: bytes) -> set[int]:
    buf = FrameBuffer()
    buf.feed(stream)
    types: set[int] = set()
    try:
        for _ in range(len(stream) + 1):
            frame = buf.next_frame()
            if frame is None:
                break
            types.add(frame.type)
    except PPCPError:
        types.add(-1)
    return types


MUX_CONFIG = MuxConfig(window=4096, max_packet=1024, max_channels=4)
RAW = 0xFF  # record type marker: inject the payload as raw, unauthenticated bytes
LOCAL = 0xFE  # record type marker: the receiver performs a local action


def _local_action(mux: ChannelMux, payload: bytes) -> None:
    """Let the fuzzer drive the receiver's own side (open, accept, close, send, consume)."""
    op = payload[0] % 5 if payload else 0
    chans = sorted(mux.channels.items())
    try:
        if op == 0:
            mux.open_channel("exec", payload[1:65])
        elif op == 1:
            for cid, ch in chans:
                if ch.state is ChannelState.ACCEPTING:
                    mux.accept(cid)
                    break
        elif op == 2 and chans:
            mux.close_channel(chans[0][0])
        elif op == 3:
            for cid, ch in chans:
                if ch.state is ChannelState.OPEN and not ch.local_eof:
                    mux.send_data(cid, payload[1:])
                    break
        elif op == 4 and chans:
            mux.consume(chans[-1][0], len(payload) * 64)
    except PPCPError:
        pass


def fuzz_mux(data: bytes) -> None:
    """Authenticated records with fuzzer-chosen type, flags and plaintext.

    Input after the mode bytes: a list of ``type u8 | flags u8 | len u16 | payload``.
    The genuine peer seals each one with the session keys, so the receiver's
    record dispatch and channel multiplexer see arbitrary *authenticated*
    plaintext.  RAW injects unauthenticated bytes; LOCAL drives the receiver.
    """
    mode, chunk, _, rest = _mode(data)
    client, server = established()
    sender, receiver = (client, server) if mode & 1 else (server, client)
    sender_mux = ChannelMux(sender, MUX_CONFIG)
    mux = ChannelMux(receiver, MUX_CONFIG)
    del sender_mux  # the sender only seals; its own channel table is irrelevant
    received = 0
    pos = 0
    for _ in range(len(rest) // 4 + 1):
        if pos + 4 > len(rest):
            break
        ftype, flags = rest[pos], rest[pos + 1]
        length = int.from_bytes(rest[pos + 2 : pos + 4], "big")
        payload = rest[pos + 4 : pos + 4 + length]
        pos += 4 + length
        if ftype == LOCAL:
            _local_action(mux, payload)
            continue
        if ftype == RAW:
            wire = payload
        else:
            try:
                sender.send_record(ftype, payload, flags)
            except (PPCPError, ValueError):
                continue
            wire = sender.data_to_send()
        received += len(wire)
        if feed_checked(receiver, wire, chunk, eof=False) is not None:
            break
        assert len(mux.channels) <= MUX_CONFIG.max_channels, "channel cap exceeded"
    out = receiver.data_to_send()
    bound = AMPLIFICATION * received + 64 * len(rest) + 4096
    assert len(out) <= bound, f"{len(out)} bytes sent back for {received} received"


def fuzz_discovery(data: bytes) -> None:
    """PING/PONG codecs, the responder and the scanner's PONG check."""
    from ppcp.discovery.abuse import ResponderCore
    from ppcp.discovery.collect import PingTracker
    from ppcp.discovery.wire import (
        TAG_LEN,
        Ping,
        Pong,
        ServerIdentity,
        compute_tag,
        discovery_key,
    )

    key = discovery_key(PSK)
    mode, _, _, rest = _mode(data)
    datagram = rest
    if mode & 2 and len(rest) >= TAG_LEN:
        # A valid tag over fuzzer-chosen bytes reaches the field parsers.
        body = rest[:-TAG_LEN]
        datagram = body + compute_tag(key, body)
    try:
        if mode % 4 in (0, 2):
            ping = Ping.decode(datagram, key)
            # Header and nonce survive a decode/encode round trip.
            assert ping.encode(key)[:24] == datagram[:24]
        else:
            Pong.decode(datagram, key)
    except PPCPError:
        pass
    identity = ServerIdentity(b"\x01" * 16, "fuzz-server", 9000, (1,), SUPPORTED_CAPABILITIES)
    core = ResponderCore(key, identity)
    reply = core.handle(datagram, "192.0.2.1", 1.0)
    if reply is not None:
        assert len(reply) <= len(datagram), "PONG larger than its PING (amplification)"
        assert Pong.decode(reply, key).nonce == Ping.decode(datagram, key).nonce
    tracker = PingTracker(key, rng=fixed_rng(b"scan"))
    tracker.ping(0.0)
    tracker.receive(datagram, ("192.0.2.1", 9000), 0.5)


TARGETS: dict[str, Target] = {
    "frames": fuzz_frames,
    "handshake_server": fuzz_handshake_server,
    "handshake_client": fuzz_handshake_client,
    "mux": fuzz_mux,
    "discovery": fuzz_discovery,
}


# -- seeds -------------------------------------------------------------------------------------


def _rec(ftype: int, payload: bytes, flags: int = 0) -> bytes:
    return bytes((ftype, flags)) + len(payload).to_bytes(2, "big") + payload


def seeds(name: str) -> list[bytes]:
    """Genuine inputs for a target: what a corpus starts from."""
    conv = conversation()
    if name == "frames":
        stream = b"".join(conv.values())
        return [b"\x00\x00" + stream, b"\x01\x01" + conv["client_hello"], b"\x00\x80"]
    if name == "handshake_server":
        return [
            b"\x00\x00" + conv["client_hello"],
            b"\x00\x01" + conv["client_hello"] + conv["client_auth"],
            b"\x01\x00" + conv["client_auth"],
            b"\x02\x00" + encode_frame(FrameType.MESSAGE, bytes(32)),
            b"\x00\x00" + encode_frame(FrameType.ALERT, b"\x00\x03\x04oops"),
        ]
    if name == "handshake_client":
        return [
            b"\x00\x00" + conv["server_hello"] + conv["server_auth"],
            b"\x00\x01" + conv["server_hello"],
            b"\x01\x00" + conv["server_auth"],
            b"\x02\x80" + encode_frame(FrameType.MESSAGE, bytes(32)),
        ]
    if name == "mux":
        cid1 = (1).to_bytes(4, "big")
        opn = cid1 + (4096).to_bytes(4, "big") + (1024).to_bytes(4, "big") + b"\x04exec" + b"{}"
        flow = b"".join(
            (
                _rec(FrameType.CHANNEL_OPEN, opn),
                _rec(LOCAL, b"\x01"),
                _rec(FrameType.CHANNEL_DATA, cid1 + b"\x00hello"),
                _rec(FrameType.WINDOW_ADJUST, cid1 + (100).to_bytes(4, "big")),
                _rec(FrameType.CHANNEL_REQUEST, cid1 + b"\x06signal" + b"{}"),
                _rec(FrameType.CHANNEL_EOF, cid1),
                _rec(FrameType.CHANNEL_CLOSE, cid1 + b"\x00\x00\x00"),
            )
        )
        return [
            b"\x01\x00" + flow,
            b"\x00\x00"
            + _rec(LOCAL, b"\x00")
            + _rec(FrameType.CHANNEL_ACCEPT, (2).to_bytes(4, "big") + bytes(8)),
            b"\x01\x00" + _rec(FrameType.HEARTBEAT, bytes(8)) + _rec(FrameType.MESSAGE, b"hi"),
            b"\x01\x00" + _rec(FrameType.MESSAGE, b"part", 1) + _rec(FrameType.KEY_UPDATE, b""),
            b"\x00\x05" + _rec(FrameType.CLOSE, b"\x00\x00\x00"),
            b"\x01\x00" + _rec(RAW, bytes(40)),
        ]
    if name == "discovery":
        from ppcp.discovery.wire import Ping, Pong, ServerIdentity, discovery_key

        key = discovery_key(PSK)
        ping = Ping(b"\x07" * 16).encode(key)
        ident = ServerIdentity(b"\x02" * 16, "srv", 9000, (1,), ("msg", "channels"))
        pong = Pong(b"\x07" * 16, ident).encode(key)
        return [b"\x00\x00" + ping, b"\x02\x00" + ping, b"\x01\x00" + pong, b"\x03\x00" + pong]
    raise KeyError(name)
