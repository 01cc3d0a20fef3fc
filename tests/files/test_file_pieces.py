"""Record sizes of a file transfer: 2 MiB records between peers that take them, and never
more than a peer's ``max_packet``, such as the 1 MiB a peer of the earlier revision
(``MAX_RECORD_PLAINTEXT`` 1 MiB + 1 KiB) announces (RFC sections 15.4 and 16.5.1)."""

from __future__ import annotations

from pathlib import Path

import pytest
from files_helpers import PSK, MiB, config, make_file, serve_kwargs, sha256_file

import ppcp.aio
from ppcp.control.channels import DATA_HEADER, DEFAULT_MAX_PACKET, ChannelMux, MuxConfig
from ppcp.control.router import ServerPolicy
from ppcp.control.transfer import B64_CHUNK, BULK_CHUNK, CHUNK, Encoding, piece_size
from ppcp.core.config import SessionConfig
from ppcp.core.events import Event
from ppcp.transport.aio_driver import AsyncSession
from ppcp.transport.frames import MAX_RECORD_PLAINTEXT, Frame, FrameType

EARLIER_REVISION_MAX_PACKET = 1 << 20  # what the reference announced before 2 MiB records


def test_piece_size_follows_encoding_and_the_peers_max_packet() -> None:
    binary = Encoding(binary=True, zlib=False)
    assert piece_size(binary, DEFAULT_MAX_PACKET) == BULK_CHUNK == DEFAULT_MAX_PACKET
    assert piece_size(binary, BULK_CHUNK - 1) == CHUNK
    assert piece_size(binary, EARLIER_REVISION_MAX_PACKET) == CHUNK
    assert piece_size(binary, 0) == CHUNK  # the channel is gone: the write will say so
    # Compressed blocks stay at most 1 MiB raw, whatever the peer takes.
    assert piece_size(Encoding(binary=True, zlib=True), DEFAULT_MAX_PACKET) == CHUNK
    assert piece_size(Encoding(binary=False, zlib=False), DEFAULT_MAX_PACKET) == B64_CHUNK


def test_no_max_packet_above_what_a_record_can_carry_is_announced() -> None:
    largest = MAX_RECORD_PLAINTEXT - DATA_HEADER  # RFC 15.4: never announce more
    assert MuxConfig(max_packet=largest).max_packet == largest
    with pytest.raises(ValueError, match=f"max_packet must be in 1024..{largest}"):
        MuxConfig(max_packet=largest + 1)
    with pytest.raises(ValueError, match="max_packet must be in"):
        MuxConfig(max_packet=1023)


@pytest.mark.parametrize(
    "max_packet", [DEFAULT_MAX_PACKET, EARLIER_REVISION_MAX_PACKET], ids=["default", "earlier"]
)
async def test_records_fit_the_max_packet_each_end_announced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_packet: int
) -> None:
    received: list[tuple[int, int]] = []  # (announced max_packet, data bytes) per record
    handle_record = ChannelMux.handle_record

    def counting(
        self: ChannelMux, frame: Frame, plaintext: bytes | memoryview, owned: bool = False
    ) -> list[Event]:
        if frame.type == FrameType.CHANNEL_DATA:
            received.append((self.config.max_packet, len(plaintext) - DATA_HEADER))
        return handle_record(self, frame, plaintext, owned)

    monkeypatch.setattr(ChannelMux, "handle_record", counting)
    root, local = tmp_path / "root", tmp_path / "local"
    root.mkdir()
    local.mkdir()
    size = 7 * MiB + 5
    digest = make_file(local / "f.bin", size)

    def session_config(name: str) -> SessionConfig:
        base = config()
        return SessionConfig(
            name=name,
            capabilities=base.capabilities,
            heartbeat_interval=0,
            mux=MuxConfig(max_packet=max_packet),
        )

    async def serve_until_closed(session: AsyncSession) -> None:
        await session.wait_closed()

    server = await ppcp.aio.serve(
        "127.0.0.1",
        0,
        PSK,
        serve_until_closed,
        config=session_config("server"),
        policy=ServerPolicy(root=root),
        **serve_kwargs(),
    )
    try:
        async with await ppcp.aio.connect(
            "127.0.0.1", server.port, PSK, config=session_config("client")
        ) as session:
            await session.put(local / "f.bin", "up.bin")
            put_records = list(received)
            received.clear()
            await session.get("up.bin", local / "back.bin")
            get_records = list(received)
    finally:
        await server.aclose()
    assert sha256_file(root / "up.bin") == digest
    assert sha256_file(local / "back.bin") == digest
    for records in (put_records, get_records):
        assert records, "no CHANNEL_DATA seen"
        assert all(announced == max_packet for announced, _ in records)
        # Pieces of max_packet each (2 MiB or 1 MiB), one record per piece: never more.
        assert max(n for _, n in records) == max_packet
        assert sum(n for _, n in records) == size
        assert len(records) == -(-size // max_packet)
