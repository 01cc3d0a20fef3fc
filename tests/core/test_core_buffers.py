"""Reused buffers for bulk records, in both directions.

Receiving, the asyncio driver lets the socket write straight into the frame
buffer (``get_buffer`` / ``buffer_updated``) and channel records are
decrypted into a per-thread scratch area.  These tests hold that path to the
same results as ``feed`` / ``receive_data``, whatever the read sizes, and
check what it must not do: hand out data that a later read overwrites, read
past the end of a large frame, or keep a pooled buffer for an idle
connection.

Sending, a bulk record is sealed in a pooled buffer that is reused only
after the driver says its transport holds nothing (``release_sent``).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppcp.control.aio_channel import release
from ppcp.control.channels import ChannelData, ChannelMux, MuxConfig
from ppcp.core.config import SessionConfig
from ppcp.core.errors import FrameTooLarge, PPCPError
from ppcp.core.events import ConnectionClosed, Event, HandshakeComplete
from ppcp.core.states import Role
from ppcp.crypto.psk import derive_psk_key
from ppcp.handshake.machine import HandshakeConfig
from ppcp.transport.aio_driver import AsyncSession, _SessionProtocol
from ppcp.transport.connection import Connection, ConnectionConfig
from ppcp.transport.frames import (
    FRAME_POOL,
    HEADER_LEN,
    LARGE_FRAME,
    FrameBuffer,
    FrameType,
    encode_frame,
)

PSK = derive_psk_key("ppcp-psk-" + "5a" * 32)
MiB = 1 << 20
PROPERTY = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def read_into(buf: FrameBuffer, data: memoryview, limit: int) -> int:
    """One socket read: at most ``limit`` bytes of ``data`` into the room lent."""
    room = buf.get_buffer()
    assert len(room) > 0, "an empty buffer makes asyncio fail the connection"
    n = min(len(room), len(data), limit)
    room[:n] = data[:n]
    buf.buffer_updated(n)
    return n


body_sizes = st.lists(
    st.one_of(st.integers(0, 300), st.integers(LARGE_FRAME - 10, LARGE_FRAME + 10)),
    max_size=6,
)


@PROPERTY
@given(sizes=body_sizes, reads=st.lists(st.integers(1, 200_000), min_size=1, max_size=40))
def test_reads_of_any_size_give_the_frames_feed_gives(sizes: list[int], reads: list[int]) -> None:
    frames = [encode_frame(FrameType.MESSAGE, os.urandom(n), n % 2) for n in sizes]
    stream = memoryview(b"".join(frames))
    buf = FrameBuffer()
    got: list[bytes] = []
    pos = 0
    for i in range(len(stream) + 1):
        if pos == len(stream):
            break
        pos += read_into(buf, stream[pos:], reads[i % len(reads)])
        while (frame := buf.next_frame(borrow=True)) is not None:
            got.append(frame.header + bytes(frame.body))
        buf.release()
        if not buf.pending:
            assert len(buf._buf) == 0, "an idle buffer keeps no memory"
        elif buf.pending < LARGE_FRAME and not buf._pooled:
            assert len(buf._buf) == buf.pending, "a partial small frame keeps only its bytes"
    assert pos == len(stream)
    assert got == frames
    assert buf.pending == 0


def test_a_large_frame_is_read_up_to_its_end_and_no_further() -> None:
    body = os.urandom(MiB)
    stream = encode_frame(FrameType.CHANNEL_DATA, body) + encode_frame(FrameType.HEARTBEAT, b"x")
    buf = FrameBuffer()
    room = buf.get_buffer()
    room[:1000] = stream[:1000]
    buf.buffer_updated(1000)
    assert buf.next_frame() is None
    buf.release()
    room = buf.get_buffer()
    # The next read may only complete the large frame, which then lies whole
    # in the pooled buffer: it is decrypted there, nothing is moved.
    assert len(room) == HEADER_LEN + MiB - 1000
    room[:] = stream[1000 : HEADER_LEN + MiB]
    buf.buffer_updated(len(room))
    frame = buf.next_frame(borrow=True)
    assert frame is not None and isinstance(frame.body, memoryview)
    assert frame.body.obj is buf._buf and frame.body == body
    del frame
    buf.release()
    assert buf.pending == 0 and len(buf._buf) == 0


def test_handshake_frames_are_never_borrowed() -> None:
    buf = FrameBuffer()
    buf.feed(encode_frame(FrameType.CLIENT_HELLO, b"hello"))
    frame = buf.next_frame(borrow=True)
    assert frame is not None and type(frame.body) is bytes


def test_an_oversized_length_is_refused_before_any_room_is_lent_for_it() -> None:
    buf = FrameBuffer(max_body=1024)
    room = buf.get_buffer()
    header = encode_frame(FrameType.CLIENT_HELLO, b"")[:2] + (10 * MiB).to_bytes(4, "big")
    room[: len(header)] = header
    buf.buffer_updated(len(header))
    try:
        buf.next_frame()
    except FrameTooLarge:
        pass
    else:
        raise AssertionError("a 10 MiB handshake frame was not refused")


def test_the_pool_keeps_at_most_a_few_buffers() -> None:
    buffers = [FrameBuffer() for _ in range(10)]
    for b in buffers:
        b.get_buffer()
    for b in buffers:
        b.release()
    assert len(FRAME_POOL._spares()) <= FRAME_POOL.keep


# -- a whole connection ------------------------------------------------------------------


class Side:
    def __init__(self, role: Role) -> None:
        caps = ("msg", "channels", "heartbeat")
        self.conn = Connection(role, PSK, ConnectionConfig(HandshakeConfig(role.value, (1,), caps)))
        self.mux = ChannelMux(self.conn, MuxConfig(window=16 * MiB))


def buffered_deliver(conn: Connection, data: bytes, rng: random.Random) -> list[Event]:
    """Deliver ``data`` through get_buffer/buffer_updated in reads of random sizes."""
    events: list[Event] = []
    view = memoryview(data)
    for _ in range(len(data) + 1):
        if not view:
            break
        room = conn.get_buffer()
        n = min(len(room), len(view), rng.choice([1, 7, 4096, 65536, 300_000, 2 * MiB]))
        room[:n] = view[:n]
        view = view[n:]
        events.extend(conn.buffer_updated(n))
    return events


def established() -> tuple[Side, Side]:
    client, server = Side(Role.CLIENT), Side(Role.SERVER)
    client.conn.initiate()
    done: list[Event] = []
    for _ in range(4):
        if to_server := client.conn.data_to_send():
            done += server.conn.receive_data(to_server)
        if to_client := server.conn.data_to_send():
            done += client.conn.receive_data(to_client)
    assert sum(isinstance(e, HandshakeComplete) for e in done) == 2
    return client, server


def test_channel_data_survives_the_reads_that_follow_it() -> None:
    """Events keep their bytes although the next records reuse the same buffers."""
    rng = random.Random(7)
    client, server = established()
    cid = client.mux.open_channel("test")
    server.conn.receive_data(client.conn.data_to_send())
    server.mux.accept(cid)
    client.conn.receive_data(server.conn.data_to_send())
    payload = os.urandom(10 * MiB + 12345)
    view = memoryview(payload)
    sent = 0
    for _ in range(100):
        if sent == len(payload):
            break
        sent += client.mux.send_data(cid, view[sent : sent + rng.choice([100, MiB, 3 * MiB])])
        client.mux.send_heartbeat(sent)
    client.conn.send_message(b"after")
    events = buffered_deliver(server.conn, client.conn.data_to_send(), rng)
    data = [e.data for e in events if isinstance(e, ChannelData)]
    # Small records are copied out of scratch; bulk ones are views of a
    # pooled buffer each, which nothing reuses until its reader gives it back.
    views = [d for d in data if isinstance(d, memoryview)]
    assert all(type(d) is bytes for d in data if not isinstance(d, memoryview))
    assert len(views) >= 5 and len({id(v.obj) for v in views}) == len(views)
    assert b"".join(data) == payload
    assert server.conn.data_to_send()  # the heartbeats were answered


def outcome(deliver: Callable[[Any], list[Event]], arg: object) -> list[object]:
    """Messages received, then the error (returned as an event, or raised)."""
    try:
        events = deliver(arg)
    except PPCPError as exc:
        return [type(exc).__name__]
    return [
        e.error.__class__.__name__ if isinstance(e, ConnectionClosed) else getattr(e, "data", e)
        for e in events
    ]


def test_records_and_errors_match_receive_data() -> None:
    """A tampered record fails the same way on both paths, after the same messages."""
    big = os.urandom(2 * MiB)
    outcomes = []
    for buffered in (False, True):
        client, server = established()
        client.conn.send_message(b"one")
        client.conn.send_message(big)
        stream = bytearray(client.conn.data_to_send())
        stream[-20] ^= 1
        if buffered:
            rng = random.Random(1)
            got: list[object] = []
            view = memoryview(stream)
            for _ in range(len(stream)):
                if not view:
                    break
                room = server.conn.get_buffer()
                n = min(len(room), len(view), rng.choice([7, 65536, 300_000]))
                room[:n] = view[:n]
                view = view[n:]
                got += outcome(server.conn.buffer_updated, n)
                if server.conn.error is not None:
                    break
        else:
            got = outcome(server.conn.receive_data, bytes(stream))
        outcomes.append(got)
        # Every later call raises the same error.
        assert outcome(server.conn.buffer_updated, 0) == [type(server.conn.error).__name__]
    assert outcomes[0] == outcomes[1] == [b"one", "DecryptionError"]


def test_a_failed_connection_still_lends_room_and_raises_its_error() -> None:
    client, server = established()
    client.conn.close()
    server.conn.receive_data(client.conn.data_to_send())
    room = server.conn.get_buffer()
    assert len(room) > 0
    room[:4] = b"junk"
    try:
        server.conn.buffer_updated(4)
    except PPCPError as exc:
        assert exc is server.conn.error
    else:
        raise AssertionError("input after the peer's CLOSE was accepted")


# -- sending ---------------------------------------------------------------------------------


def test_a_bulk_record_buffer_is_reused_only_after_release_sent() -> None:
    client, _ = established()
    client.conn.send_message(b"a" * MiB)
    first = client.conn.data_to_send()
    assert isinstance(first, memoryview)
    kept = bytes(first)
    # Not released: the transport may still hold it, so the next record must
    # not be sealed over it.
    client.conn.send_message(b"b" * MiB)
    second = client.conn.data_to_send()
    assert isinstance(second, memoryview) and second.obj is not first.obj
    assert first == kept
    client.conn.release_sent()
    client.conn.send_message(b"c" * MiB)
    third = client.conn.data_to_send()
    assert isinstance(third, memoryview) and third.obj in (first.obj, second.obj)


def test_joined_records_free_their_buffers_at_once() -> None:
    client, server = established()
    client.conn.send_message(b"a" * MiB)
    client.conn.send_message(b"b" * MiB)
    both = client.conn.data_to_send()
    assert type(both) is bytes and not client.conn._lent
    events = server.conn.receive_data(both)
    assert [getattr(e, "data", None) for e in events] == [b"a" * MiB, b"b" * MiB]


def test_small_records_use_no_pooled_buffer() -> None:
    client, _ = established()
    client.conn.send_message(b"small")
    assert not isinstance(client.conn.data_to_send(), memoryview)
    assert not client.conn._lent


def test_a_buffer_given_back_is_reused_for_the_next_bulk_record() -> None:
    client, server = established()
    cid = client.mux.open_channel("test")
    server.conn.receive_data(client.conn.data_to_send())
    server.mux.accept(cid)
    client.conn.receive_data(server.conn.data_to_send())
    chunks = [os.urandom(MiB) for _ in range(3)]
    seen = []
    for chunk in chunks:
        client.mux.send_data(cid, chunk)
        (event,) = server.conn.receive_data(client.conn.data_to_send())
        assert isinstance(event, ChannelData) and isinstance(event.data, memoryview)
        assert event.data == chunk
        seen.append(event.data.obj)
        release(event.data)
    assert seen[0] is seen[1] is seen[2]


class HoldingTransport:
    """A transport that keeps what it could not send yet (asyncio does since 3.12)."""

    def __init__(self) -> None:
        self.held: list[memoryview] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.held.append(memoryview(data))

    def get_write_buffer_size(self) -> int:
        return sum(map(len, self.held))

    def is_closing(self) -> bool:
        return False


async def test_the_driver_releases_record_buffers_only_once_nothing_is_held() -> None:
    client, _ = established()
    session = AsyncSession(Role.CLIENT, PSK, SessionConfig())
    session._conn = client.conn
    transport = HoldingTransport()
    session._transport = transport  # type: ignore[assignment]
    client.conn.send_message(b"a" * MiB)
    session.flush()
    (held,) = transport.held
    kept = bytes(held)
    client.conn.send_message(b"b" * MiB)  # must not be sealed over the held record
    session.flush()
    assert held == kept and client.conn._lent
    transport.held.clear()  # the socket took everything: asyncio now resumes the writer
    _SessionProtocol(session).resume_writing()
    assert not client.conn._lent


@PROPERTY
@given(
    data=st.binary(max_size=3000),
    reads=st.lists(st.integers(1, 5000), min_size=1, max_size=20),
    role=st.sampled_from([Role.CLIENT, Role.SERVER]),
)
def test_any_bytes_through_the_lent_buffer_parse_or_raise(
    data: bytes, reads: list[int], role: Role
) -> None:
    """h11's invariant on the in-place path: events or a PPCPError, and room is never empty."""
    conn = Side(role).conn
    conn.initiate()
    conn.data_to_send()
    view = memoryview(data)
    error: PPCPError | None = None
    for i in range(len(data) + 1):
        if not view:
            break
        room = conn.get_buffer()
        assert len(room) > 0
        n = min(len(room), len(view), reads[i % len(reads)])
        room[:n] = view[:n]
        view = view[n:]
        try:
            conn.buffer_updated(n)
        except PPCPError as exc:
            assert error is None or exc is error, "a later call raised another error"
            error = exc
    assert conn._frames.pending <= 6 + 1024, "an unauthenticated peer made us hold more"
