"""ChannelMux.send_data_in_place: the same records as send_data, with no copy of the data."""

from __future__ import annotations

import pytest
from channel_helpers import MuxPair
from hypothesis import given, settings
from hypothesis import strategies as st

from ppcp.control.channels import DATA_HEADER, MAX_STREAM, MIN_MAX_PACKET, ChannelData, MuxConfig


def received(pair: MuxPair) -> list[tuple[int, bytes]]:
    pair.pump()
    return [(e.stream, bytes(e.data)) for e in pair.server.take() if isinstance(e, ChannelData)]


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=5000),
    window=st.integers(1, 6000),
    max_packet=st.integers(MIN_MAX_PACKET, 3000),
    stream=st.integers(0, MAX_STREAM),
)
def test_in_place_sends_what_send_data_sends(
    data: bytes, window: int, max_packet: int, stream: int
) -> None:
    config = MuxConfig(window=window, max_packet=max_packet)
    copied, in_place = MuxPair(server=config), MuxPair(server=config)
    copied_id, in_place_id = copied.open(), in_place.open()

    sent = copied.client.mux.send_data(copied_id, data, stream)
    buffer = bytearray(b"\xee" * DATA_HEADER + data)
    sent_in_place = in_place.client.mux.send_data_in_place(
        in_place_id, buffer, DATA_HEADER, len(buffer), stream
    )

    assert sent_in_place == sent == min(len(data), window)
    assert received(in_place) == received(copied)
    # What the window held back is intact, ready for the next call.
    assert buffer[DATA_HEADER + sent :] == data[sent:]


def test_in_place_continues_after_the_window_reopens() -> None:
    pair = MuxPair(server=MuxConfig(window=1000, max_packet=1024))
    cid = pair.open()
    data = bytes(range(256)) * 10
    buffer = bytearray(DATA_HEADER) + data
    got: list[tuple[int, bytes]] = []
    start = DATA_HEADER
    for _ in range(len(data)):  # bounded: each round sends at least one byte
        start += pair.client.mux.send_data_in_place(cid, buffer, start, len(buffer))
        chunks = received(pair)
        got += chunks
        if start == len(buffer):
            break
        pair.server.mux.consume(cid, sum(len(c) for _, c in chunks))  # the window reopens
        pair.pump()
        pair.client.take()
    assert b"".join(chunk for _, chunk in got) == data
    assert [len(c) for _, c in got] == [1000, 1000, 560]


@pytest.mark.parametrize("start", [0, DATA_HEADER - 1])
def test_in_place_needs_room_for_the_header(start: int) -> None:
    pair = MuxPair()
    cid = pair.open()
    with pytest.raises(ValueError, match="bytes before start"):
        pair.client.mux.send_data_in_place(cid, bytearray(100), start, 100)


def test_in_place_refuses_an_end_past_the_buffer() -> None:
    pair = MuxPair()
    cid = pair.open()
    with pytest.raises(ValueError):
        pair.client.mux.send_data_in_place(cid, bytearray(100), DATA_HEADER, 101)
