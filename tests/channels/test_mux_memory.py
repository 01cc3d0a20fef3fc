"""The channel multiplexer in memory: two Connections + ChannelMux, no sockets."""

from __future__ import annotations

import pytest
from channel_helpers import MuxPair, MuxSide

from ppcp.control.channels import (
    CHANNEL_TRANSITIONS,
    MAX_PAYLOAD,
    MAX_WINDOW,
    ChannelAccepted,
    ChannelClosed,
    ChannelData,
    ChannelEOF,
    ChannelOpenRequested,
    ChannelRefused,
    ChannelRequest,
    ChannelState,
    HeartbeatReceived,
    MuxConfig,
    WindowOpened,
)
from ppcp.core.errors import (
    ChannelError,
    CloseCode,
    FlowControlError,
    PPCPError,
    ProtocolError,
)
from ppcp.core.states import Role
from ppcp.transport.frames import FLAG_REPLY, FrameType
from ppcp.utils.codec import Writer

F = FrameType
SMALL = MuxConfig(window=4096, max_packet=1024)


def data_record(cid: int, payload: bytes, stream: int = 0) -> bytes:
    return cid.to_bytes(4, "big") + bytes((stream,)) + payload


def close_record(cid: int, code: int = 0, reason: str = "") -> bytes:
    return Writer().u32(cid).u16(code).text8(reason).getvalue()


def open_record(cid: int, kind: str = "test", window: int = 4096, packet: int = 1024) -> bytes:
    return Writer().u32(cid).u32(window).u32(packet).text8(kind).getvalue()


# -- open / accept / reject / ids -----------------------------------------------------


def test_open_accept_data_eof_close_roundtrip() -> None:
    p = MuxPair()
    cid = p.client.mux.open_channel("exec", b'{"argv":["true"]}')
    p.pump()
    assert p.server.take() == [ChannelOpenRequested(cid, "exec", b'{"argv":["true"]}')]
    p.server.mux.accept(cid, b"ok")
    p.pump()
    assert p.client.take() == [ChannelAccepted(cid, b"ok")]
    assert p.client.mux.send_data(cid, b"in") == 2
    p.server.mux.send_data(cid, b"out", 0)
    p.server.mux.send_data(cid, b"err", 1)
    p.server.mux.send_request(cid, "exit-status", b"{}")
    p.server.mux.send_eof(cid)
    p.pump()
    assert p.server.take() == [ChannelData(cid, 0, b"in")]
    assert p.client.take() == [
        ChannelData(cid, 0, b"out"),
        ChannelData(cid, 1, b"err"),
        ChannelRequest(cid, "exit-status", b"{}"),
        ChannelEOF(cid),
    ]
    p.client.mux.close_channel(cid)
    p.pump()
    assert p.server.take() == [ChannelClosed(cid, CloseCode.NORMAL, "")]
    assert p.client.take() == [ChannelClosed(cid, CloseCode.NORMAL, "")]
    assert p.client.mux.channels == {} and p.server.mux.channels == {}
    assert p.client.error is None and p.server.error is None


def test_channel_id_parity() -> None:
    p = MuxPair()
    client_ids = [p.client.mux.open_channel("a") for _ in range(3)]
    server_ids = [p.server.mux.open_channel("b") for _ in range(3)]
    assert client_ids == [1, 3, 5]
    assert server_ids == [2, 4, 6]
    p.pump()
    assert p.client.error is None and p.server.error is None


@pytest.mark.parametrize("cid", [0, 2, 100])
def test_client_opened_even_id_is_protocol_error(cid: int) -> None:
    p = MuxPair()
    p.inject(p.client, F.CHANNEL_OPEN, open_record(cid))
    assert isinstance(p.server.error, ProtocolError)
    assert "parity" in str(p.server.error)


def test_server_opened_odd_id_is_protocol_error() -> None:
    p = MuxPair()
    p.inject(p.server, F.CHANNEL_OPEN, open_record(7))
    assert isinstance(p.client.error, ProtocolError)


def test_reopening_a_live_id_is_protocol_error() -> None:
    p = MuxPair()
    cid = p.open()
    p.inject(p.client, F.CHANNEL_OPEN, open_record(cid))
    assert isinstance(p.server.error, ProtocolError)


def test_reject_frees_the_id_and_session_lives() -> None:
    p = MuxPair()
    cid = p.client.mux.open_channel("nope")
    p.pump()
    p.server.take()
    p.server.mux.reject(cid, CloseCode.POLICY_DENIED, "no")
    p.pump()
    assert p.client.take() == [ChannelRefused(cid, CloseCode.POLICY_DENIED, "no")]
    assert cid not in p.client.mux.channels
    assert p.open() == cid + 2


@pytest.mark.parametrize(
    "ftype",
    [F.CHANNEL_DATA, F.CHANNEL_EOF, F.CHANNEL_CLOSE, F.WINDOW_ADJUST, F.CHANNEL_REQUEST],
)
def test_records_for_unknown_ids_are_protocol_errors(ftype: FrameType) -> None:
    p = MuxPair()
    body = {
        F.CHANNEL_DATA: data_record(9, b"x"),
        F.CHANNEL_EOF: (9).to_bytes(4, "big"),
        F.CHANNEL_CLOSE: close_record(9),
        F.WINDOW_ADJUST: Writer().u32(9).u32(10).getvalue(),
        F.CHANNEL_REQUEST: Writer().u32(9).text8("x").getvalue(),
    }[ftype]
    p.inject(p.client, ftype, body)
    assert isinstance(p.server.error, ProtocolError)
    assert "unknown channel 9" in str(p.server.error)


def test_accept_for_unknown_id_is_protocol_error() -> None:
    p = MuxPair()
    p.inject(p.server, F.CHANNEL_ACCEPT, Writer().u32(1).u32(10).u32(1024).getvalue())
    assert isinstance(p.client.error, ProtocolError)


def test_channel_cap_rejects_and_session_lives() -> None:
    p = MuxPair(client=MuxConfig(max_channels=10), server=MuxConfig(max_channels=2))
    a, b = p.open(), p.open()
    c = p.client.mux.open_channel("third")
    p.pump()
    assert p.server.take() == []  # refused by the mux itself
    refused = p.client.take()
    assert len(refused) == 1 and isinstance(refused[0], ChannelRefused)
    assert refused[0].channel_id == c and refused[0].code == CloseCode.CHANNEL_REJECTED
    # The session and the other channels live on.
    p.client.mux.send_data(a, b"still here")
    p.pump()
    assert p.server.take() == [ChannelData(a, 0, b"still here")]
    p.client.mux.close_channel(b)
    p.pump()
    p.server.take()
    p.client.take()
    assert p.open() > c  # a slot is free again
    assert p.client.error is None and p.server.error is None


def test_local_cap_raises_channel_error() -> None:
    p = MuxPair(client=MuxConfig(max_channels=1))
    p.client.mux.open_channel("a")
    with pytest.raises(ChannelError):
        p.client.mux.open_channel("b")


# -- flow control ------------------------------------------------------------------------


def test_send_is_limited_by_the_window_and_packet_size() -> None:
    p = MuxPair(client=SMALL, server=SMALL)
    cid = p.open()
    sent = p.client.mux.send_data(cid, b"x" * 10_000)
    assert sent == 4096  # the server's window
    assert p.client.mux.sendable(cid) == 0
    p.pump()
    chunks = [e for e in p.server.take() if isinstance(e, ChannelData)]
    assert [len(e.data) for e in chunks] == [1024] * 4  # the server's max packet


def test_consuming_half_the_window_reopens_it() -> None:
    p = MuxPair(client=SMALL, server=SMALL)
    cid = p.open()
    p.client.mux.send_data(cid, b"x" * 4096)
    p.pump()
    p.server.take()
    p.server.mux.consume(cid, 1000)
    p.pump()
    assert p.client.take() == []  # below half the window: no adjust yet
    p.server.mux.consume(cid, 1048)
    p.pump()
    assert p.client.take() == [WindowOpened(cid)]
    assert p.client.mux.sendable(cid) == 2048


def test_data_beyond_the_window_is_flow_control_error() -> None:
    p = MuxPair(client=SMALL, server=SMALL)
    cid = p.open()
    p.inject(p.client, F.CHANNEL_DATA, data_record(cid, b"x" * 4097))
    assert isinstance(p.server.error, FlowControlError)
    assert p.server.error.code == CloseCode.FLOW_CONTROL_ERROR


def test_cumulative_overrun_is_flow_control_error() -> None:
    p = MuxPair(client=SMALL, server=SMALL)
    cid = p.open()
    for _ in range(4):
        p.inject(p.client, F.CHANNEL_DATA, data_record(cid, b"x" * 1024))
    assert p.server.error is None
    p.inject(p.client, F.CHANNEL_DATA, data_record(cid, b"x"))
    assert isinstance(p.server.error, FlowControlError)


@pytest.mark.parametrize("increment", [0, MAX_WINDOW])
def test_bad_window_increment_is_flow_control_error(increment: int) -> None:
    p = MuxPair(client=SMALL, server=SMALL)
    cid = p.open()
    p.inject(p.client, F.WINDOW_ADJUST, Writer().u32(cid).u32(increment).getvalue())
    assert isinstance(p.server.error, FlowControlError)


def test_open_with_out_of_range_window_is_protocol_error() -> None:
    p = MuxPair()
    p.inject(p.client, F.CHANNEL_OPEN, open_record(1, window=MAX_WINDOW + 1))
    assert isinstance(p.server.error, ProtocolError)


def test_open_with_tiny_max_packet_is_protocol_error() -> None:
    p = MuxPair()
    p.inject(p.client, F.CHANNEL_OPEN, open_record(1, packet=100))
    assert isinstance(p.server.error, ProtocolError)


def test_windows_are_per_channel() -> None:
    """A full window on one channel does not stop another one."""
    p = MuxPair(client=SMALL, server=SMALL)
    bulk, other = p.open(), p.open()
    p.client.mux.send_data(bulk, b"x" * 10_000)
    assert p.client.mux.sendable(bulk) == 0
    assert p.client.mux.send_data(other, b"hi") == 2
    p.pump()
    assert ChannelData(other, 0, b"hi") in p.server.take()


# -- EOF, close, ordering ----------------------------------------------------------------


def test_data_after_eof_is_protocol_error() -> None:
    p = MuxPair()
    cid = p.open()
    p.client.mux.send_eof(cid)
    p.pump()
    p.inject(p.client, F.CHANNEL_DATA, data_record(cid, b"late"))
    assert isinstance(p.server.error, ProtocolError)
    assert "after EOF" in str(p.server.error)


def test_second_eof_is_protocol_error() -> None:
    p = MuxPair()
    cid = p.open()
    p.client.mux.send_eof(cid)
    p.pump()
    p.inject(p.client, F.CHANNEL_EOF, cid.to_bytes(4, "big"))
    assert isinstance(p.server.error, ProtocolError)


def test_local_send_after_eof_raises() -> None:
    p = MuxPair()
    cid = p.open()
    p.client.mux.send_eof(cid)
    with pytest.raises(ChannelError):
        p.client.mux.send_data(cid, b"x")


def test_data_after_close_is_protocol_error() -> None:
    """Once both CLOSEs crossed the id is free: later data names an unknown channel."""
    p = MuxPair()
    cid = p.open()
    p.client.mux.close_channel(cid)
    p.pump()
    p.inject(p.client, F.CHANNEL_DATA, data_record(cid, b"late"))
    assert isinstance(p.server.error, ProtocolError)


def test_records_in_flight_during_close_are_discarded() -> None:
    """Data the peer sent before it saw our CLOSE is not an error (CLOSING row)."""
    p = MuxPair()
    cid = p.open()
    p.client.mux.close_channel(cid)  # not pumped yet
    p.server.mux.send_data(cid, b"crossing")
    p.server.mux.send_request(cid, "x")
    p.server.mux.send_eof(cid)
    p.pump()
    events = p.client.take()
    assert events == [ChannelClosed(cid, CloseCode.NORMAL, "")]
    assert p.client.error is None and p.server.error is None
    assert p.client.mux.channels == {} and p.server.mux.channels == {}


def test_crossing_closes() -> None:
    p = MuxPair()
    cid = p.open()
    p.client.mux.close_channel(cid, CloseCode.CHANNEL_ERROR, "client")
    p.server.mux.close_channel(cid, CloseCode.NORMAL, "server")
    p.pump()
    assert p.client.take() == [ChannelClosed(cid, CloseCode.NORMAL, "server")]
    assert p.server.take() == [ChannelClosed(cid, CloseCode.CHANNEL_ERROR, "client")]
    assert p.client.mux.channels == {} and p.server.mux.channels == {}


def test_close_before_accept_waits_for_the_answer() -> None:
    p = MuxPair()
    cid = p.client.mux.open_channel("x")
    p.client.mux.close_channel(cid)  # remembered, not sent: it may not cross the ACCEPT
    p.pump()
    p.server.take()
    p.server.mux.accept(cid)
    p.pump()
    assert p.server.take() == [ChannelClosed(cid, CloseCode.NORMAL, "")]
    assert p.client.mux.channels == {} and p.server.mux.channels == {}


def test_close_before_reject() -> None:
    p = MuxPair()
    cid = p.client.mux.open_channel("x")
    p.client.mux.close_channel(cid)
    p.pump()
    p.server.take()
    p.server.mux.reject(cid, CloseCode.CHANNEL_REJECTED, "no")
    p.pump()
    assert p.client.mux.channels == {} and p.server.mux.channels == {}
    assert p.client.error is None and p.server.error is None


def test_close_while_accepting_rejects() -> None:
    p = MuxPair()
    cid = p.client.mux.open_channel("x")
    p.pump()
    p.server.take()
    p.server.mux.close_channel(cid, CloseCode.POLICY_DENIED, "denied")
    p.pump()
    assert p.client.take() == [ChannelRefused(cid, CloseCode.POLICY_DENIED, "denied")]


def test_request_payload_limit() -> None:
    p = MuxPair()
    cid = p.open()
    # Refused locally as a ChannelError (a clear message, the session usable),
    # also for an open: the payload may come from a user's command line.
    with pytest.raises(ChannelError, match=f"'big' request's payload is too long.*{MAX_PAYLOAD}"):
        p.client.mux.send_request(cid, "big", b"x" * (MAX_PAYLOAD + 1))
    with pytest.raises(ChannelError, match="'shell' channel's open payload is too long"):
        p.client.mux.open_channel("shell", b"x" * (MAX_PAYLOAD + 1))
    p.inject(
        p.client,
        F.CHANNEL_REQUEST,
        Writer().u32(cid).text8("big").raw(b"x" * (MAX_PAYLOAD + 1)).getvalue(),
    )
    assert isinstance(p.server.error, ProtocolError)


def test_unknown_stream_is_protocol_error() -> None:
    p = MuxPair()
    cid = p.open()
    p.inject(p.client, F.CHANNEL_DATA, data_record(cid, b"x", stream=2))
    assert isinstance(p.server.error, ProtocolError)


def test_flags_on_channel_records_are_protocol_errors() -> None:
    p = MuxPair()
    cid = p.open()
    p.inject(p.client, F.CHANNEL_DATA, data_record(cid, b"x"), flags=1)
    assert isinstance(p.server.error, ProtocolError)


# -- heartbeats ------------------------------------------------------------------------


def test_heartbeat_is_answered_by_the_mux() -> None:
    p = MuxPair()
    p.client.mux.send_heartbeat(0x0102030405060708)
    p.pump()
    assert p.server.take() == []
    assert p.client.take() == [HeartbeatReceived(0x0102030405060708)]


@pytest.mark.parametrize(
    ("body", "flags"), [(b"\x00" * 7, 0), (b"\x00" * 9, 0), (b"\x00" * 8, 0x02)]
)
def test_malformed_heartbeat_is_protocol_error(body: bytes, flags: int) -> None:
    p = MuxPair()
    p.inject(p.client, F.HEARTBEAT, body, flags)
    assert isinstance(p.server.error, ProtocolError)


def test_heartbeat_reply_flag_is_an_answer_not_a_request() -> None:
    p = MuxPair()
    p.inject(p.client, F.HEARTBEAT, (5).to_bytes(8, "big"), FLAG_REPLY)
    assert p.server.take() == [HeartbeatReceived(5)]
    assert p.client.take() == []  # an answer is never answered


# -- the transition table, exhaustively --------------------------------------------------

_BODIES = {
    F.CHANNEL_ACCEPT: lambda cid: Writer().u32(cid).u32(4096).u32(1024).getvalue(),
    F.CHANNEL_REJECT: lambda cid: close_record(cid, CloseCode.CHANNEL_REJECTED),
    F.CHANNEL_DATA: lambda cid: data_record(cid, b"d"),
    F.CHANNEL_EOF: lambda cid: cid.to_bytes(4, "big"),
    F.CHANNEL_CLOSE: lambda cid: close_record(cid),
    F.WINDOW_ADJUST: lambda cid: Writer().u32(cid).u32(1).getvalue(),
    F.CHANNEL_REQUEST: lambda cid: Writer().u32(cid).text8("r").getvalue(),
}


def _pair_in_state(state: ChannelState) -> tuple[MuxPair, int]:
    """A pair whose *server* holds channel ``cid`` in ``state``."""
    p = MuxPair()
    if state is ChannelState.OPENING:
        cid = p.server.mux.open_channel("x")  # not pumped: the client never answers
        p.server.conn.data_to_send()
        return p, cid
    cid = p.client.mux.open_channel("x")
    p.pump()
    p.server.take()
    if state is ChannelState.ACCEPTING:
        return p, cid
    p.server.mux.accept(cid)
    p.pump()
    if state is ChannelState.CLOSING:
        p.server.mux.close_channel(cid)
        p.server.conn.data_to_send()  # the client never sees it
    return p, cid


@pytest.mark.parametrize("state", list(ChannelState))
@pytest.mark.parametrize("ftype", sorted(_BODIES))
def test_every_state_and_record_pair(state: ChannelState, ftype: FrameType) -> None:
    """Records in the table are accepted; every other pair is a protocol error."""
    p, cid = _pair_in_state(state)
    assert p.server.mux.channels[cid].state is state
    body = _BODIES[ftype](cid)
    # Bypass the client's mux: deliver the raw record to the server.
    p.client.conn.send_record(ftype, body)
    data = p.client.conn.data_to_send()
    allowed = ftype in CHANNEL_TRANSITIONS[state]
    if allowed:
        p.server.conn.receive_data(data)
        target = CHANNEL_TRANSITIONS[state][ftype]
        ch = p.server.mux.channels.get(cid)
        assert (ch.state if ch else None) is target
    else:
        with pytest.raises(ProtocolError):
            p.server.conn.receive_data(data)
        with pytest.raises(PPCPError):  # the session stays failed
            p.server.conn.receive_data(b"")


def _ended_sides(ending: str) -> list[MuxSide]:
    """A client and a server whose connections have ended in the given way."""
    if ending == "closed in the handshake":
        sides = [MuxSide(Role.CLIENT, MuxConfig()), MuxSide(Role.SERVER, MuxConfig())]
        sides[0].conn.initiate()
        sides[0].conn.close()
        sides[1].conn.close()
    else:
        pair = MuxPair()
        sides = [pair.client, pair.server]
        if ending == "orderly close":
            sides[0].conn.close()
            pair.pump()
        else:
            sides[0].conn.fail(ProtocolError("test failure"))
            sides[1].conn.fail(ProtocolError("test failure"))
    expected = "FAILED" if ending == "failure" else "CLOSED"
    assert [side.conn.state.value for side in sides] == [expected, expected]
    return sides


@pytest.mark.parametrize("ending", ["orderly close", "failure", "closed in the handshake"])
def test_an_ended_connection_is_freed_without_the_garbage_collector(ending: str) -> None:
    """Once a connection has ended it lets go of the channel layer, whose handler
    refers back to it: dropping the last reference frees both (and the traffic
    keys) at once, instead of at some later garbage collection."""
    import gc
    import weakref

    was_enabled = gc.isenabled()
    gc.disable()
    try:
        # The sides live only as long as this expression.
        refs = [weakref.ref(o) for side in _ended_sides(ending) for o in (side.conn, side.mux)]
        assert [ref() for ref in refs] == [None] * 4
    finally:
        if was_enabled:
            gc.enable()
