"""The channel vectors and state table in the docs are what the code produces."""

from __future__ import annotations

import json
import struct

from channel_vectors import (
    TABLE_BLOCK,
    VECTOR_BLOCK,
    find_block,
    generate,
    state_table,
    vectors_markdown,
)

from ppcp.transport.frames import FLAG_REPLY, FrameType


def test_vectors_block_is_current() -> None:
    found = find_block(VECTOR_BLOCK)
    assert found is not None, "no channel-vectors block in docs/rfc.md"
    path, text = found
    assert text == vectors_markdown(), (
        f"{path} is stale: run python tests/channels/channel_vectors.py --update"
    )


def test_state_table_is_current() -> None:
    found = find_block(TABLE_BLOCK)
    assert found is not None, "no channel-state-table block in the docs"
    assert found[1] == state_table()


def test_vectors_match_the_documented_layouts() -> None:
    """Re-parse every vector with struct, following the layouts of the spec text."""
    by_name = {name: (ftype, flags, body) for name, ftype, flags, body in generate()}
    assert len(by_name) == len(generate())

    ftype, flags, body = by_name["channel_open_exec"]
    assert (ftype, flags) == (FrameType.CHANNEL_OPEN, 0)
    cid, window, packet, klen = struct.unpack_from(">IIIB", body)
    assert (cid, window, packet) == (1, 4 << 20, 2 << 20)
    assert body[13 : 13 + klen] == b"exec"
    assert json.loads(body[13 + klen :]) == {"argv": ["uname", "-a"]}

    ftype, _, body = by_name["channel_accept"]
    assert struct.unpack_from(">III", body) == (1, 4 << 20, 2 << 20)
    assert json.loads(body[12:]) == {"pid": 4242}

    _, _, body = by_name["channel_data_stderr"]
    assert struct.unpack_from(">IB", body) == (1, 1) and body[5:] == b"warning\n"

    _, _, body = by_name["window_adjust"]
    assert struct.unpack(">II", body) == (1, 2 << 20)

    _, _, body = by_name["channel_request_exit_status"]
    cid, nlen = struct.unpack_from(">IB", body)
    assert body[5 : 5 + nlen] == b"exit-status"
    assert json.loads(body[5 + nlen :]) == {"exit_code": 0, "signal": None, "timed_out": False}

    _, _, body = by_name["channel_close"]
    assert struct.unpack(">IHB", body) == (1, 0, 0)

    _, _, body = by_name["channel_reject"]
    cid, code, rlen = struct.unpack_from(">IHB", body)
    assert (cid, code) == (3, 0x0102) and len(body) == 7 + rlen

    _, _, body = by_name["channel_data_message"]
    assert struct.unpack_from(">IBI", body) == (5, 0, 5) and body[9:] == b"hello"

    assert by_name["heartbeat"] == (FrameType.HEARTBEAT, 0, (1).to_bytes(8, "big"))
    assert by_name["heartbeat_reply"] == (FrameType.HEARTBEAT, FLAG_REPLY, (1).to_bytes(8, "big"))
