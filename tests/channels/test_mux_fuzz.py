"""Fuzzing the multiplexer (h11's invariant): every input either works or raises a
PPCPError subclass, and after an error the session stays failed."""

from __future__ import annotations

from typing import Any

from channel_helpers import MuxPair
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppcp.control.channels import CHANNEL_TRANSITIONS, ChannelMux
from ppcp.core.errors import PPCPError
from ppcp.core.states import Role
from ppcp.transport.frames import MUX_TYPES, Frame, FrameType, encode_header
from ppcp.utils.codec import Writer

MUX = sorted(MUX_TYPES)
ids = st.integers(0, 12) | st.integers(0, 0xFFFFFFFF)
windows = st.sampled_from([0, 1, 1024, 4096, (1 << 31) - 1, 1 << 31, 0xFFFFFFFF])
small_bytes = st.binary(max_size=64)


@st.composite
def channel_records(draw: st.DrawFn) -> tuple[int, int, bytes]:
    """A (type, flags, plaintext) triple: mostly well-formed, sometimes garbage."""
    ftype = draw(st.sampled_from(MUX))
    flags = draw(st.sampled_from([0, 0, 0, 1, 2, 0xFF]))
    if draw(st.integers(0, 9)) == 0:
        return ftype, flags, draw(st.binary(max_size=80))
    cid = draw(ids)
    w = Writer()
    if ftype == FrameType.HEARTBEAT:
        return ftype, flags, draw(st.binary(min_size=8, max_size=8))
    w.u32(cid)
    if ftype == FrameType.CHANNEL_OPEN:
        w.u32(draw(windows)).u32(draw(windows)).vec8(draw(st.binary(max_size=40)))
        w.raw(draw(small_bytes))
    elif ftype == FrameType.CHANNEL_ACCEPT:
        w.u32(draw(windows)).u32(draw(windows)).raw(draw(small_bytes))
    elif ftype in (FrameType.CHANNEL_REJECT, FrameType.CHANNEL_CLOSE):
        w.u16(draw(st.integers(0, 0xFFFF))).vec8(draw(st.binary(max_size=20)))
    elif ftype == FrameType.CHANNEL_DATA:
        w.u8(draw(st.integers(0, 3))).raw(draw(st.binary(max_size=300)))
    elif ftype == FrameType.WINDOW_ADJUST:
        w.u32(draw(windows))
    elif ftype == FrameType.CHANNEL_REQUEST:
        w.vec8(draw(st.binary(max_size=40))).raw(draw(small_bytes))
    if draw(st.booleans()):
        w.raw(draw(st.binary(max_size=4)))  # trailing garbage
    return ftype, flags, w.getvalue()


local_actions = st.tuples(
    st.sampled_from(["open", "data", "eof", "close", "request", "consume"]),
    st.integers(0, 12),
)


class _FakeConn:
    def __init__(self, role: Role) -> None:
        self.role = role
        self.is_open = True
        self.record_handler: Any = None
        self.sent: list[tuple[int, bytes, int]] = []

    def send_record(self, ftype: int, plaintext: bytes, flags: int = 0) -> None:
        self.sent.append((ftype, bytes(plaintext), flags))


def _apply_local(mux: ChannelMux, action: str, cid: int) -> None:
    try:
        if action == "open":
            mux.open_channel("fuzz", b"")
        elif action == "data":
            mux.send_data(cid, b"payload")
        elif action == "eof":
            mux.send_eof(cid)
        elif action == "close":
            mux.close_channel(cid)
        elif action == "request":
            mux.send_request(cid, "r", b"{}")
        else:
            mux.consume(cid, 4096)
    except PPCPError:
        pass  # e.g. "channel 3 is not open": a local misuse, reported as ChannelError


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    role=st.sampled_from([Role.CLIENT, Role.SERVER]),
    steps=st.lists(st.one_of(channel_records(), local_actions), max_size=40),
)
def test_mux_records_work_or_raise_ppcp_errors(role: Role, steps: list[Any]) -> None:
    """Records fed straight to ChannelMux.handle_record (OPEN connection)."""
    mux = ChannelMux(_FakeConn(role))  # type: ignore[arg-type]
    for step in steps:
        if isinstance(step[0], str):
            _apply_local(mux, step[0], step[1])
            continue
        ftype, flags, plaintext = step
        frame = Frame(ftype, flags, encode_header(ftype, flags, len(plaintext) + 16), b"")
        try:
            mux.handle_record(frame, plaintext)
        except PPCPError:
            return
        for ch in mux.channels.values():  # invariants that hold after any accepted input
            assert ch.state in CHANNEL_TRANSITIONS
            assert 0 <= ch.send_window <= (1 << 31) - 1
            assert ch.recv_window >= 0
        assert len(mux.channels) <= mux.config.max_channels


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(st.one_of(channel_records(), local_actions), max_size=30),
    bytewise=st.booleans(),
)
def test_records_through_the_connection(steps: list[Any], bytewise: bool) -> None:
    """The same, end to end: encrypted records from a peer, fed whole or byte by byte."""
    p = MuxPair()
    server = p.server.conn
    for step in steps:
        if isinstance(step[0], str):
            _apply_local(p.server.mux, step[0], step[1])
            server.data_to_send()
            continue
        ftype, flags, plaintext = step
        p.client.conn.send_record(ftype, plaintext, flags)
        data = p.client.conn.data_to_send()
        pieces = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
        try:
            for piece in pieces:
                server.receive_data(piece)
        except PPCPError as exc:
            first = exc
            try:
                server.receive_data(b"more")
            except PPCPError as again:
                assert again is first  # failed for good, with the same error
            else:
                raise AssertionError("a failed connection accepted more input") from None
            return
        server.data_to_send()
