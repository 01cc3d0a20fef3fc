"""Property tests with h11's invariant: any input parses or raises a PPCPError.

Whatever bytes arrive (in one piece or cut at arbitrary points), the
connection either returns events or raises a subclass of PPCPError, never
anything else (no IndexError, struct.error, UnicodeDecodeError, ValueError,
InvalidTag...), and once it has raised it keeps raising the same error.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
from core_helpers import PSK, Pair, conn_config, parse_frames
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ppcp.core.errors import PPCPError
from ppcp.core.states import Role
from ppcp.handshake.messages import Alert, ClientHello, ServerHello, decode_proof
from ppcp.transport.connection import Connection
from ppcp.transport.frames import FrameBuffer, FrameType, encode_frame, encode_header

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

FRAME_TYPES = [int(t) for t in FrameType] + [0x00, 0x06, 0x14, 0x7F, 0xFF]


def _client() -> Connection:
    conn = Connection(Role.CLIENT, PSK, conn_config("client", capabilities=("msg", "x")))
    conn.initiate()
    conn.data_to_send()
    return conn


def _server() -> Connection:
    return Connection(Role.SERVER, PSK, conn_config("server", capabilities=("msg", "x")))


def _genuine_client_hello() -> bytes:
    client = Connection(Role.CLIENT, PSK, conn_config("client", capabilities=("msg", "x")))
    client.initiate()
    return client.data_to_send()


def _genuine_server_hello() -> bytes:
    server = _server()
    server.receive_data(_genuine_client_hello())
    return server.data_to_send()


CLIENT_HELLO = _genuine_client_hello()
SERVER_HELLO = _genuine_server_hello()


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in [*points, len(data)]:
        out.append(data[last:p])
        last = p
    return [piece for piece in out if piece] or [data]


def _check_invariant(conn: Connection, pieces: list[bytes], eof: bool) -> None:
    error: PPCPError | None = None
    for piece in [*pieces, b""] if eof else pieces:
        try:
            events = conn.receive_data(piece)
        except PPCPError as exc:
            if error is not None:
                assert exc is error, "a later call raised a different error"
            error = exc
            assert conn.error is exc
        else:
            assert error is None, "a call succeeded after an error"
            assert isinstance(events, list)
    event(f"outcome: {type(error).__name__ if error else 'ok'}")
    # Whatever the connection queued for the peer is well-formed frames.
    parse_frames(conn.data_to_send())


# Raw bytes, or a sequence of frames with arbitrary type/flags/body, or a
# genuine hello with bytes flipped, inserted or removed.
raw_bytes = st.binary(max_size=1500)
frames = st.lists(
    st.tuples(st.sampled_from(FRAME_TYPES), st.integers(0, 255), st.binary(max_size=200)).map(
        lambda t: encode_header(t[0], t[1], len(t[2])) + t[2]
    ),
    max_size=5,
).map(b"".join)


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete" and data:
            del data[pos]
        elif kind == "truncate":
            del data[pos:]
    # Keep the outer frame length consistent half of the time, so the
    # mutation reaches the message decoder instead of only the framer.
    if draw(st.booleans()) and len(data) >= 6:
        data[2:6] = (len(data) - 6).to_bytes(4, "big")
    return bytes(data)


handshake_input = st.one_of(raw_bytes, frames, mutated(CLIENT_HELLO), mutated(SERVER_HELLO))
cuts = st.lists(st.integers(0, 4096), max_size=6)


@FUZZ
@given(role=st.sampled_from([Role.CLIENT, Role.SERVER]), data=handshake_input, cuts=cuts)
def test_handshake_any_bytes(role: Role, data: bytes, cuts: list[int]) -> None:
    conn = _client() if role is Role.CLIENT else _server()
    _check_invariant(conn, _pieces(data, cuts), eof=True)


@FUZZ
@given(
    role=st.sampled_from([Role.CLIENT, Role.SERVER]),
    data=st.one_of(raw_bytes, frames),
    cuts=cuts,
    eof=st.booleans(),
)
def test_after_a_valid_hello_any_bytes(role: Role, data: bytes, cuts: list[int], eof: bool) -> None:
    """The second handshake step: a genuine hello was accepted, then anything."""
    client = _client()
    server = _server()
    client_hello = CLIENT_HELLO
    if role is Role.CLIENT:
        client = Connection(Role.CLIENT, PSK, conn_config("client", capabilities=("msg", "x")))
        client.initiate()
        client_hello = client.data_to_send()
    server.receive_data(client_hello)
    conn = server
    if role is Role.CLIENT:
        client.receive_data(server.data_to_send())
        conn = client
    conn.data_to_send()
    _check_invariant(conn, _pieces(data, cuts), eof)


# Records sealed with the peer's real keys: they decrypt, so the fuzzing
# reaches the record payload parsers (CLOSE, KEY_UPDATE, MESSAGE flags...).
sealed = st.lists(
    st.tuples(st.sampled_from(FRAME_TYPES), st.integers(0, 255), st.binary(max_size=300)),
    min_size=1,
    max_size=6,
)


@FUZZ
@given(
    side=st.sampled_from(["client", "server"]),
    data=st.one_of(raw_bytes, frames),
    records=sealed,
    cuts=cuts,
    eof=st.booleans(),
)
def test_open_connection_any_bytes(
    side: str,
    data: bytes,
    records: list[tuple[int, int, bytes]],
    cuts: list[int],
    eof: bool,
) -> None:
    pair = Pair().established()
    target = getattr(pair, side).conn
    peer = (pair.server if side == "client" else pair.client).conn
    assert peer._send is not None
    good = b""
    for ftype, flags, plaintext in records:
        peer._seal(peer._send, ftype, flags, plaintext)
        good += peer.data_to_send()
    # Authentic records first (possibly followed by garbage), or garbage alone.
    stream = good + data if cuts and cuts[0] % 2 else data
    _check_invariant(target, _pieces(stream, cuts), eof)


@FUZZ
@given(data=st.binary(max_size=2000), cuts=cuts)
def test_frame_buffer(data: bytes, cuts: list[int]) -> None:
    buf = FrameBuffer()
    total = 0
    try:
        for piece in _pieces(data, cuts):
            buf.feed(piece)
            for _ in range(len(data) + 1):
                frame = buf.next_frame()
                if frame is None:
                    break
                total += len(frame.header) + len(frame.body)
        buf.feed_eof()
        buf.check_eof()
    except PPCPError:
        return
    assert total + buf.pending == len(data)


Decoder = Callable[[bytes], object]
DECODERS: list[tuple[str, Decoder, bytes]] = [
    ("ClientHello", ClientHello.decode, parse_frames(CLIENT_HELLO)[0].body),
    ("ServerHello", ServerHello.decode, parse_frames(SERVER_HELLO)[0].body),
    ("Alert", Alert.decode, Alert(3, "authentication failed").encode()),
]


def _decoder_input(base: bytes) -> st.SearchStrategy[bytes]:
    framed = encode_frame(FrameType.MESSAGE, base)
    return st.one_of(
        st.binary(max_size=400),
        mutated(framed).map(lambda b: b[6:]),
    )


@st.composite
def decoder_case(draw: st.DrawFn) -> tuple[str, Decoder, bytes]:
    name, decode, base = draw(st.sampled_from(DECODERS))
    return name, decode, draw(_decoder_input(base))


@FUZZ
@given(case=decoder_case())
def test_decoders_parse_or_raise(case: tuple[str, Decoder, bytes]) -> None:
    _name, decode, body = case
    try:
        message = decode(body)
    except PPCPError:
        return
    # Whatever parses re-encodes to the very same bytes: the encoding is
    # canonical, so the transcript hash cannot be fooled by an alias.
    assert message.encode() == body  # type: ignore[attr-defined]


@FUZZ
@given(body=st.binary(max_size=64))
def test_proof_decoder(body: bytes) -> None:
    try:
        assert decode_proof(body, "CLIENT_AUTH") == body
    except PPCPError:
        assert len(body) != 32


@FUZZ
@given(
    versions=st.lists(st.integers(1, 255), min_size=1, max_size=16),
    name=st.text(min_size=1, max_size=20).filter(
        lambda s: (
            not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in s) and len(s.encode()) <= 64
        )
    ),
    caps=st.lists(
        st.from_regex(r"[a-z0-9][a-z0-9.-]{0,31}", fullmatch=True), max_size=32, unique=True
    ),
)
def test_client_hello_round_trip(versions: list[int], name: str, caps: list[str]) -> None:
    genuine = ClientHello.decode(parse_frames(CLIENT_HELLO)[0].body)
    hello = msgspec.structs.replace(
        genuine, versions=tuple(versions), name=name, capabilities=tuple(caps)
    )
    assert ClientHello.decode(hello.encode()) == hello
