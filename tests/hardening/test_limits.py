"""Resource limits: every quantity a peer controls is capped, and the caps are documented.

docs/security.md's "Limits" table is checked against the code: each row's
default must be the value the code uses (test_limits_table_matches_code).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from hardening_util import (
    HOST,
    OTHER_HOST,
    PSK,
    WAIT,
    FramePipe,
    alert_code,
    client_conn,
    conn_config,
    connect_from,
    frames_of,
    open_from,
    raw_session,
    read_all,
    running_server,
    server_conn,
)

from ppcp.control.channels import (
    DEFAULT_MAX_CHANNELS,
    DEFAULT_MAX_PACKET,
    DEFAULT_MAX_PENDING_REQUESTS,
    DEFAULT_WINDOW,
    MAX_KIND_BYTES,
    MAX_PAYLOAD,
    MAX_WINDOW,
    ChannelMux,
    ChannelOpenRequested,
    MuxConfig,
)
from ppcp.core.config import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_UNAUTHENTICATED,
    SessionConfig,
)
from ppcp.core.errors import (
    ChannelError,
    CloseCode,
    ConnectionLost,
    FlowControlError,
    FrameTooLarge,
    MessageTooLarge,
    ProtocolError,
    RemotePathError,
)
from ppcp.core.events import ConnectionClosed
from ppcp.core.limits import ServerLimits
from ppcp.core.states import Role
from ppcp.crypto.aead import MAX_RECORDS_PER_KEY
from ppcp.handshake.messages import MAX_CAPABILITIES, MAX_NAME_BYTES, MAX_REASON_BYTES, MAX_VERSIONS
from ppcp.transport.connection import (
    DEFAULT_MAX_MESSAGE,
    DEFAULT_REKEY_BYTES,
    DEFAULT_REKEY_RECORDS,
)
from ppcp.transport.frames import (
    HEADER_LEN,
    MAX_HANDSHAKE_BODY,
    MAX_RECORD_BODY,
    MAX_RECORD_PLAINTEXT,
    FrameType,
    encode_header,
)
from ppcp.utils.codec import Writer

ROOT = Path(__file__).resolve().parents[2]

# -- frames and buffered bytes ------------------------------------------------------------------


def test_unauthenticated_peer_cannot_park_a_record_sized_body() -> None:
    """Before authentication any frame above the handshake limit fails on its header."""
    for ftype in (FrameType.MESSAGE, FrameType.CHANNEL_DATA, 0x7F):
        server = server_conn()
        with pytest.raises(ProtocolError):
            server.receive_data(encode_header(ftype, 0, MAX_HANDSHAKE_BODY + 1))
        assert server._frames.pending <= HEADER_LEN


def test_record_length_is_capped_after_authentication() -> None:
    pipe = FramePipe(client_conn(), server_conn()).handshake()
    with pytest.raises(FrameTooLarge):
        pipe.server.conn.receive_data(encode_header(FrameType.MESSAGE, 0, MAX_RECORD_BODY + 1))


def test_message_size_cap_on_receive() -> None:
    cfg = conn_config("s", max_message_size=4096)
    pipe = FramePipe(client_conn(), server_conn(PSK, cfg)).handshake()
    pipe.client.conn.send_message(b"x" * 4096)
    pipe.pump()
    assert pipe.server.error is None
    pipe.client.conn.send_message(b"x" * 4097)
    pipe.pump()
    assert isinstance(pipe.server.error, MessageTooLarge)
    closed = [e for e in pipe.client.events if isinstance(e, ConnectionClosed)]
    assert closed and closed[0].code == CloseCode.MESSAGE_TOO_LARGE


def test_message_size_cap_on_send() -> None:
    pipe = FramePipe(client_conn(PSK, conn_config("c", max_message_size=10)), server_conn())
    pipe.handshake()
    with pytest.raises(MessageTooLarge):
        pipe.client.conn.send_message(b"x" * 11)


# -- channels and windows ------------------------------------------------------------------------


def _mux_pair(config: MuxConfig) -> tuple[FramePipe, ChannelMux, ChannelMux]:
    pipe = FramePipe(client_conn(), server_conn()).handshake()
    return pipe, ChannelMux(pipe.client.conn, config), ChannelMux(pipe.server.conn, config)


def test_channel_count_cap_refuses_but_keeps_the_session() -> None:
    cfg = MuxConfig(max_channels=3)
    pipe, cmux, smux = _mux_pair(MuxConfig())  # the client itself would allow more
    smux.config = cfg
    for _ in range(5):
        cmux.open_channel("exec")
    pipe.pump()
    opened = [e for e in pipe.server.events if isinstance(e, ChannelOpenRequested)]
    assert len(opened) == 3 and len(smux.channels) == 3
    assert pipe.server.error is None and pipe.client.error is None
    assert len(cmux.channels) == 3  # two refused, freed on the client too


def test_local_channel_cap() -> None:
    _, cmux, _ = _mux_pair(MuxConfig(max_channels=2))
    cmux.open_channel("exec")
    cmux.open_channel("exec")
    with pytest.raises(ChannelError):
        cmux.open_channel("exec")


def test_data_beyond_the_window_is_a_flow_control_error() -> None:
    pipe, cmux, smux = _mux_pair(MuxConfig(window=2048, max_packet=1024))
    cid = cmux.open_channel("exec")
    pipe.pump()
    smux.accept(next(iter(smux.channels)))
    pipe.pump()
    # An honest sender stops at the window...
    assert cmux.send_data(cid, b"x" * 5000) == 2048
    pipe.pump()
    assert pipe.server.error is None
    # ...a dishonest one is cut off.
    pipe.client.conn.send_record(FrameType.CHANNEL_DATA, cid.to_bytes(4, "big") + b"\x00" + b"y")
    pipe.pump()
    assert isinstance(pipe.server.error, FlowControlError)


def test_window_adjust_overflow_is_a_flow_control_error() -> None:
    pipe, cmux, smux = _mux_pair(MuxConfig())
    cid = cmux.open_channel("exec")
    pipe.pump()
    smux.accept(cid)
    pipe.pump()
    body = Writer().u32(cid).u32(MAX_WINDOW).getvalue()
    pipe.server.conn.send_record(FrameType.WINDOW_ADJUST, body)
    pipe.pump()
    assert isinstance(pipe.client.error, FlowControlError)


@pytest.mark.parametrize(
    "body",
    [
        # window above MAX_WINDOW
        Writer().u32(2).u32(MAX_WINDOW + 1).u32(1024).text8("exec").getvalue(),
        # max packet below the minimum
        Writer().u32(2).u32(1024).u32(10).text8("exec").getvalue(),
        # kind too long
        Writer().u32(2).u32(1024).u32(1024).text8("k" * (MAX_KIND_BYTES + 1)).getvalue(),
        # payload too large
        Writer().u32(2).u32(1024).u32(1024).text8("exec").raw(bytes(MAX_PAYLOAD + 1)).getvalue(),
    ],
    ids=["window", "packet", "kind", "payload"],
)
def test_channel_open_fields_are_bounded(body: bytes) -> None:
    pipe, _, _ = _mux_pair(MuxConfig())
    pipe.server.conn.send_record(FrameType.CHANNEL_OPEN, body)
    pipe.pump()
    assert isinstance(pipe.client.error, ProtocolError)


# -- path length (files service) ----------------------------------------------------------------


def test_path_and_name_length_caps() -> None:
    paths = pytest.importorskip("ppcp.control.paths")
    with pytest.raises(RemotePathError):
        paths.parse_wire_path("a/" * (paths.MAX_PATH_BYTES // 2) + "xy")
    with pytest.raises(RemotePathError):
        paths.parse_wire_path("n" * (paths.MAX_NAME_BYTES + 1))
    assert paths.parse_wire_path("a/" + "n" * paths.MAX_NAME_BYTES)[1] == "n" * 255


# -- a peer that sends requests and never reads the answers -------------------------------------


async def test_peer_that_never_reads_cannot_grow_our_write_buffer() -> None:
    """Heartbeat requests make us queue replies; a peer that never reads must be cut off.

    Without a bound, 300,000 requests (9 MB) would leave megabytes of replies
    in the server's write buffer.
    """
    async with running_server() as (server, recorder):
        _, writer, conn = await raw_session(server.port, rcvbuf=4096)
        served = await asyncio.wait_for(recorder.sessions.get(), WAIT)
        transport = served._transport
        assert transport is not None
        peak = 0
        original_write = transport.write

        def write(data: bytes | bytearray | memoryview) -> None:
            nonlocal peak
            original_write(data)
            peak = max(peak, transport.get_write_buffer_size())

        transport.write = write  # type: ignore[method-assign]
        mux = ChannelMux(conn)
        flood = []
        for i in range(300_000):
            mux.send_heartbeat(i)
            if i % 1000 == 999:
                flood.append(conn.data_to_send())
        flood.append(conn.data_to_send())
        total = sum(map(len, flood))
        writer.write(b"".join(flood))

        processed = 0
        all_in = asyncio.Event()
        original_on_received = served._on_received

        def on_received(nbytes: int) -> None:
            nonlocal processed
            processed += nbytes
            if processed >= total:
                all_in.set()
            original_on_received(nbytes)

        served._on_received = on_received  # type: ignore[method-assign]
        done, _ = await asyncio.wait(
            [asyncio.ensure_future(served.wait_closed()), asyncio.ensure_future(all_in.wait())],
            timeout=60,
            return_when=asyncio.FIRST_COMPLETED,
        )
        assert done, "neither closed nor processed in time"
        writer.transport.abort()
        limit = served.config.max_reply_backlog
        print(f"\npeak server write buffer {peak} bytes (limit {limit}) for {total} bytes sent")
        assert isinstance(served._error, FlowControlError), served._error
        assert peak <= limit + (1 << 20)


# -- unauthenticated admission -------------------------------------------------------------------


async def test_per_source_handshake_cap() -> None:
    limits = ServerLimits(max_unauthenticated_per_source=2)
    async with running_server(limits=limits) as (server, _):
        idle = [await open_from(HOST, server.port) for _ in range(2)]
        reader, writer = await open_from(HOST, server.port)
        (frame,) = frames_of(await read_all(reader))
        writer.close()
        assert alert_code(frame) == CloseCode.SERVER_BUSY
        # Another address still gets a slot.
        session = await connect_from(OTHER_HOST, server.port)
        await session.close()
        assert server.handshaking == 2
        for _, w in idle:
            w.close()


# -- the documented table -------------------------------------------------------------------------

CODE_VALUES: dict[str, object] = {
    "MAX_HANDSHAKE_BODY": MAX_HANDSHAKE_BODY,
    "MAX_RECORD_PLAINTEXT": MAX_RECORD_PLAINTEXT,
    "MAX_RECORD_BODY": MAX_RECORD_BODY,
    "MAX_NAME_BYTES": MAX_NAME_BYTES,
    "MAX_REASON_BYTES": MAX_REASON_BYTES,
    "MAX_VERSIONS": MAX_VERSIONS,
    "MAX_CAPABILITIES": MAX_CAPABILITIES,
    "max_message_size": DEFAULT_MAX_MESSAGE,
    "receive_buffer": SessionConfig().receive_buffer,
    "max_reply_backlog": SessionConfig().max_reply_backlog,
    "rekey_after_records": DEFAULT_REKEY_RECORDS,
    "rekey_after_bytes": DEFAULT_REKEY_BYTES,
    "max_records_per_key": MAX_RECORDS_PER_KEY,
    "handshake_timeout": DEFAULT_HANDSHAKE_TIMEOUT,
    "max_unauthenticated": DEFAULT_MAX_UNAUTHENTICATED,
    "max_unauthenticated_per_source": ServerLimits().max_unauthenticated_per_source,
    "auth_failures": ServerLimits().auth_failures,
    "auth_failure_window": ServerLimits().auth_failure_window,
    "auth_backoff": ServerLimits().auth_backoff,
    "auth_backoff_max": ServerLimits().auth_backoff_max,
    "max_tracked_sources": ServerLimits().max_tracked_sources,
    "max_channels": DEFAULT_MAX_CHANNELS,
    "window": DEFAULT_WINDOW,
    "max_packet": DEFAULT_MAX_PACKET,
    "MAX_WINDOW": MAX_WINDOW,
    "MAX_PAYLOAD": MAX_PAYLOAD,
    "MAX_KIND_BYTES": MAX_KIND_BYTES,
    "max_pending_requests": DEFAULT_MAX_PENDING_REQUESTS,
    "heartbeat_interval": SessionConfig().heartbeat_interval,
    "heartbeat_max_missed": SessionConfig().heartbeat_max_missed_for(Role.CLIENT),
    "server_heartbeat_max_missed": SessionConfig().heartbeat_max_missed_for(Role.SERVER),
}


def _service_values() -> dict[str, object]:
    from ppcp.control import exec as exec_service
    from ppcp.control import files, messages, paths
    from ppcp.discovery.abuse import ResponderLimits
    from ppcp.discovery.wire import MAX_DATAGRAM

    responder = ResponderLimits()
    return {
        "paths.MAX_PATH_BYTES": paths.MAX_PATH_BYTES,
        "paths.MAX_NAME_BYTES": paths.MAX_NAME_BYTES,
        "files.MAX_ENTRIES": files.MAX_ENTRIES,
        "exec.MAX_ARGS": exec_service.MAX_ARGS,
        "messages.MAX_TOPIC_BYTES": messages.MAX_TOPIC_BYTES,
        "discovery.MAX_DATAGRAM": MAX_DATAGRAM,
        "discovery.per_source_rate": responder.per_source_rate,
        "discovery.global_rate": responder.global_rate,
        "discovery.replay_window": responder.replay_window,
    }


def _doc_rows() -> dict[str, str]:
    text = (ROOT / "docs" / "security.md").read_text()
    section = text.split("## Limits", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*`([A-Za-z_.]+)`\s*\|\s*([^|]+?)\s*\|", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def _parse_default(text: str) -> float:
    """'16 MiB (16777216)' -> 16777216; '10 s' -> 10; '2**32' -> 4294967296."""
    exact = re.search(r"\(([\d_]+)\)", text)
    if exact:
        return float(exact.group(1).replace("_", ""))
    m = re.match(r"([\d.]+)\s*(KiB|MiB|GiB)?", text.replace(",", ""))
    assert m, f"cannot parse default {text!r}"
    scale = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, None: 1}[m.group(2)]
    return float(m.group(1)) * scale


def test_limits_table_matches_code() -> None:
    rows = _doc_rows()
    values = {**CODE_VALUES, **_service_values()}
    missing = sorted(set(values) - set(rows))
    assert not missing, f"limits missing from docs/security.md: {missing}"
    extra = sorted(set(rows) - set(values))
    assert not extra, f"documented limits the test does not know: {extra}"
    for name, value in values.items():
        assert _parse_default(rows[name]) == float(value), (
            f"{name}: doc {rows[name]!r}, code {value}"
        )


def test_session_config_default_is_the_documented_one() -> None:
    cfg = SessionConfig()
    assert cfg.max_message_size == DEFAULT_MAX_MESSAGE
    assert cfg.mux.max_channels == DEFAULT_MAX_CHANNELS
    assert cfg.handshake_timeout == DEFAULT_HANDSHAKE_TIMEOUT
    assert ServerLimits().max_unauthenticated == DEFAULT_MAX_UNAUTHENTICATED


async def test_unanswered_channel_requests_are_capped() -> None:
    """CHANNEL_REQUESTs are not flow-controlled: a service that does not read them must
    not let a peer queue them without bound (here: a "message" channel, whose service
    never reads requests).  Without the cap the server held all 2,000 (125 MiB)."""
    async with running_server() as (server, recorder):
        client = await connect_from(OTHER_HOST, server.port)
        served = await asyncio.wait_for(recorder.sessions.get(), WAIT)
        channel = await client.open_channel("message", b'{"topic":"t"}')
        ((_, srv_channel),) = served.channels.items()
        peak = 0
        original = srv_channel._on_request

        def on_request(name: str, payload: bytes) -> None:
            nonlocal peak
            original(name, payload)
            peak = max(peak, len(srv_channel._requests))

        srv_channel._on_request = on_request  # type: ignore[method-assign]
        payload = bytes(MAX_PAYLOAD)
        # The server's CLOSE can be overtaken by the TCP reset that closing a
        # socket with unread input causes, so the client may only see the reset.
        with pytest.raises((FlowControlError, ConnectionLost)) as info:
            for _ in range(2000):  # 125 MiB of requests if all were kept
                await channel.send_request("junk", payload)
            await client.send(b"sync")
            await asyncio.wait_for(client.recv(), WAIT)
        assert isinstance(info.value, ConnectionLost) or info.value.remote
        assert isinstance(served._error, FlowControlError)
        limit = served.config.mux.max_pending_requests
        assert peak <= limit
        print(f"\nserver held at most {peak} unanswered requests (limit {limit})")
        await client.close()
