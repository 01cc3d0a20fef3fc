"""Streams: get into a writable stream (stdout), put from a readable one (stdin, RFC 16.4.4)."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import io
import os
import struct
import termios
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from files_helpers import NO_BINARY, Loopback, MiB, make_file, sha256_file, text_file

import ppcp
from ppcp.control import files, transfer
from ppcp.control.aio_channel import AsyncChannel, encode_json
from ppcp.core.config import SUPPORTED_CAPABILITIES
from ppcp.core.errors import CloseCode

PATHS = {"binary": SUPPORTED_CAPABILITIES, "base64": NO_BINARY}


@pytest.fixture(params=sorted(PATHS))
def caps(request: pytest.FixtureRequest) -> tuple[str, ...]:
    return PATHS[request.param]


def data_of(size: int) -> bytes:
    return (hashlib.sha256(b"stream").digest() * (size // 32 + 1))[:size]


@pytest.mark.parametrize("size", [0, 1, MiB, 3 * MiB + 5])
async def test_get_into_a_stream(lo: Loopback, caps: tuple[str, ...], size: int) -> None:
    digest = make_file(lo.root / "f.bin", size)
    sink = io.BytesIO()
    async with lo.client(caps) as session:
        result = await session.get("f.bin", sink, checksum=True, compress=True)
    assert hashlib.sha256(sink.getvalue()).hexdigest() == digest == result.sha256
    assert (result.files, result.bytes, result.resumed_from) == (1, size, 0)
    assert os.listdir(lo.local) == []  # no part file anywhere


async def test_get_into_a_stream_ignores_part_files_and_directories(lo: Loopback) -> None:
    make_file(lo.root / "f.bin", MiB)
    (lo.root / "d").mkdir()
    async with lo.client() as session:
        with pytest.raises(ValueError, match="recursive"):
            await session.get("d", io.BytesIO(), recursive=True)
        with pytest.raises(ppcp.TransferError, match="is a directory"):
            await session.get("d", io.BytesIO())
        assert not session.is_closed


async def test_get_into_a_full_pipe_does_not_stop_the_session(lo: Loopback) -> None:
    """Writes to a sink run in a thread: a pipe nobody reads (a pager left open) blocks
    that thread, not the event loop with the session's other channels and heartbeats."""
    digest = make_file(lo.root / "f.bin", 8 * MiB)
    (lo.root / "small").write_bytes(b"small")
    r, w = os.pipe()
    got = hashlib.sha256()
    release, reading = threading.Event(), threading.Event()

    def reader() -> None:
        release.wait(15)
        reading.set()
        with open(r, "rb") as f:
            while chunk := f.read(MiB):
                got.update(chunk)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        async with lo.client() as session:
            with open(w, "wb") as sink:
                task = asyncio.ensure_future(session.get("f.bin", sink))
                for _ in range(2000):  # bounded: until the pipe is full
                    if pipe_held(r) >= 64 << 10 or task.done():
                        break
                    await asyncio.sleep(0.005)
                assert pipe_held(r) >= 64 << 10, "the pipe never filled"
                other = io.BytesIO()
                await session.get("small", other)
                assert other.getvalue() == b"small" and not reading.is_set()
                release.set()
                result = await task
    finally:
        release.set()
        thread.join(60)
    assert result.bytes == 8 * MiB and got.hexdigest() == digest


def pipe_held(fd: int) -> int:
    """Bytes waiting in a pipe."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


@pytest.mark.parametrize("size", [0, 1, MiB, 3 * MiB + 5])
async def test_put_from_a_stream(lo: Loopback, caps: tuple[str, ...], size: int) -> None:
    data = data_of(size)
    async with lo.client(caps) as session:
        result = await session.put(io.BytesIO(data), "f.bin", checksum=True)
    assert (lo.root / "f.bin").read_bytes() == data
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert (result.files, result.bytes, result.total, result.path) == (1, size, size, "f.bin")
    assert os.listdir(lo.root) == ["f.bin"]
    # A stream has no mode: the file gets a new file's, less the server's umask.
    assert (lo.root / "f.bin").stat().st_mode & 0o777 == 0o666 & ~transfer.current_umask()


async def test_put_from_a_stream_compressed(lo: Loopback, caps: tuple[str, ...]) -> None:
    digest = text_file(lo.local / "text", 3 * MiB + 7)
    with open(lo.local / "text", "rb") as source:
        async with lo.client(caps) as session:
            result = await session.put(source, "t", compress=True, checksum=True)
    assert result.compressed and result.sha256 == digest == sha256_file(lo.root / "t")


async def test_put_from_a_pipe_sends_what_arrives(lo: Loopback) -> None:
    """Data written to a pipe in small pieces, slowly, arrives whole."""
    r, w = os.pipe()
    pieces = [data_of(n) for n in (1, 4096, 100_000, 3 * MiB, 17)]

    def writer() -> None:
        with open(w, "wb", buffering=0) as f:
            for piece in pieces:
                f.write(piece)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        with open(r, "rb") as source:
            async with lo.client() as session:
                await session.put(source, "piped")
    finally:
        thread.join(30)
    assert (lo.root / "piped").read_bytes() == b"".join(pieces)


async def test_a_stream_replaces_a_file_and_never_resumes(lo: Loopback) -> None:
    data = data_of(2 * MiB)
    (lo.root / "f").write_bytes(b"old")
    (lo.root / ".f.ppcp-part").write_bytes(data[:MiB])  # a valid prefix: still not used
    async with lo.client() as session:
        result = await session.put(io.BytesIO(data), "f")
    assert (result.resumed_from, result.bytes) == (0, 2 * MiB)
    assert (lo.root / "f").read_bytes() == data and os.listdir(lo.root) == ["f"]


async def test_a_stream_needs_a_name(lo: Loopback) -> None:
    (lo.root / "dir").mkdir()
    async with lo.client() as session:
        with pytest.raises(ppcp.TransferError, match="has no name: give the copy one"):
            await session.put(io.BytesIO(b"x"), "dir")
        with pytest.raises(ValueError, match="recursive"):
            await session.put(io.BytesIO(b"x"), "x", recursive=True)
        await session.put(io.BytesIO(b"x"), "dir/x")
    assert (lo.root / "dir" / "x").read_bytes() == b"x"


class Failing(io.RawIOBase):
    """A source that gives ``good`` bytes, then fails."""

    def __init__(self, good: bytes) -> None:
        self.left = good

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self.left:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        n = min(len(buffer), len(self.left))
        buffer[:n] = self.left[:n]
        self.left = self.left[n:]
        return n


@pytest.mark.parametrize("existing", [False, True])
async def test_a_failed_stream_leaves_nothing(lo: Loopback, existing: bool) -> None:
    """A stream cannot be read again: its part is removed, the old file kept."""
    if existing:
        (lo.root / "f").write_bytes(b"old")
    async with lo.client() as session:
        with pytest.raises(ppcp.TransferError, match="Input/output error"):
            await session.put(Failing(data_of(2 * MiB)), "f")
    await lo.server_idle()
    assert os.listdir(lo.root) == (["f"] if existing else [])
    if existing:
        assert (lo.root / "f").read_bytes() == b"old"


@pytest.mark.parametrize("existing", [False, True])
async def test_disk_full_during_a_stream(
    lo: Loopback, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    if existing:
        (lo.root / "f").write_bytes(b"old")
    real_write_at = transfer.write_at

    def full_disk(fd: int, data: bytes | memoryview, pos: int) -> None:
        if pos + len(data) > MiB:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write_at(fd, data, pos)

    monkeypatch.setattr(transfer, "write_at", full_disk)
    async with lo.client() as session:
        with pytest.raises(ppcp.TransferError, match="no space left on device") as info:
            await session.put(io.BytesIO(data_of(3 * MiB)), "f")
    fate = "it was not replaced and is unchanged" if existing else "it was not created"
    assert f"'f' after 1.0 MiB: {fate}; a copy from a stream cannot resume" in info.value.message
    assert os.listdir(lo.root) == (["f"] if existing else [])


async def test_a_server_from_before_streams_refuses_clearly(
    lo: Loopback, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older server checks 'type' and knows only file and dir: it rejects the channel
    before any data is sent, and the client says what to do instead."""
    real = files.serve_put

    async def older(channel: AsyncChannel, policy: Any) -> None:
        request = files.decode_json(channel.open_payload, "file-put request")
        if request.get("type") not in ("file", "dir"):
            channel.reject(
                CloseCode.CHANNEL_ERROR,
                "malformed file-put request: 'type' must be 'file' or 'dir'",
            )
            return
        await real(channel, policy)

    monkeypatch.setattr(files, "serve_put", older)
    async with lo.client() as session:
        with pytest.raises(ppcp.TransferError) as info:
            await session.put(io.BytesIO(b"data"), "f")
        assert "refused a copy from a stream" in info.value.message
        assert "save the data to a file and put that" in info.value.message
        make_file(lo.local / "ok", 10)
        await session.put(lo.local / "ok", "ok")  # the session is fine
    assert os.listdir(lo.root) == ["ok"]


def stream_request(path: str = "s", **extra: Any) -> bytes:
    return encode_json({"v": 1, "path": path, "type": "stream", "name": "", **extra})


def raw_exchanges() -> Iterator[tuple[str, list[tuple[str, dict[str, Any]]], bytes]]:
    """(what, requests after the open, data) a receiver must refuse with CHANNEL_ERROR."""
    entry = ("stream", {"path": "", "mode": 0o644})
    yield "a file entry", [("file", {"path": "", "size": 1, "mode": 0o644, "mtime_ns": 0})], b""
    yield "a dir entry", [("dir", {"path": "", "mode": 0o755, "mtime_ns": 0})], b""
    yield "a stream entry below", [("stream", {"path": "x", "mode": 0o644})], b""
    yield "no mode", [("stream", {"path": ""})], b""
    yield "an empty piece", [entry, ("more", {"size": 0})], b""
    yield "a piece over 1 MiB", [entry, ("more", {"size": MiB + 1})], b""
    yield "a data request", [entry, ("data", {"offset": 0})], b""
    yield "more data than announced", [entry, ("more", {"size": 2})], b"abc"


@pytest.mark.parametrize("what", [w for w, _, _ in raw_exchanges()])
async def test_malformed_streams_are_refused(lo: Loopback, what: str) -> None:
    [(requests, data)] = [(r, d) for w, r, d in raw_exchanges() if w == what]
    async with lo.client() as session:
        channel = await session.open_channel("file-put", stream_request())
        for name, obj in requests:
            await channel.send_json(name, obj)
            if name == "more":
                await channel.write(data)
        code, reason = await channel.wait_closed()
        assert code == CloseCode.CHANNEL_ERROR, reason
        assert not session.is_closed
    await lo.server_idle()
    assert os.listdir(lo.root) == []


async def test_a_stream_entry_is_refused_in_a_file_transfer(lo: Loopback) -> None:
    async with lo.client() as session:
        request = {"v": 1, "path": "f", "type": "file", "name": "f"}
        channel = await session.open_channel("file-put", encode_json(request))
        await channel.send_json("stream", {"path": "", "mode": 0o644})
        code, reason = await channel.wait_closed()
    assert code == CloseCode.CHANNEL_ERROR, reason


async def test_a_receiver_failure_ends_a_stream_waiting_for_its_source(
    lo: Loopback, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pipe kept open and silent does not keep a failed transfer waiting for it."""

    def full_disk(fd: int, data: bytes | memoryview, pos: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(transfer, "write_at", full_disk)
    r, w = os.pipe()
    try:
        os.write(w, b"x" * 1000)  # then nothing, and the pipe stays open
        with open(r, "rb", buffering=0) as source:
            async with lo.client() as session:
                with pytest.raises(ppcp.TransferError, match="no space left on device"):
                    await asyncio.wait_for(session.put(source, "f"), 20)
    finally:
        os.close(w)


class Trickle(io.RawIOBase):
    """A source that gives its data one byte per read (a pipe written a byte at a time)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.pos >= len(self.data):
            return 0
        buffer[0] = self.data[self.pos]
        self.pos += 1
        return 1


async def test_many_tiny_pieces_do_not_flood_the_receiver(
    lo: Loopback, caps: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests are not flow-controlled by the window: a sender of many tiny pieces to a
    slow receiver must wait for its acknowledgements, not overrun its request queue."""
    real = transfer.store_piece
    calls = []

    def slow(*args: Any) -> int:
        # The first write is slow enough to move the receiver's writes to a thread
        # (transfer.SLOW_JOB), where the next ones keep it busy while the loop is free.
        calls.append(1)
        time.sleep(0.05 if len(calls) == 1 else 0.003)
        return real(*args)

    monkeypatch.setattr(transfer, "store_piece", slow)
    data = data_of(400)
    async with lo.client(caps) as session:
        result = await session.put(Trickle(data), "f", checksum=True)
    assert result.bytes == 400 and (lo.root / "f").read_bytes() == data


@pytest.mark.parametrize("size, chunk", [(10, b"01234"), (46081, b"x")])
async def test_a_base64_piece_is_one_chunk(lo: Loopback, size: int, chunk: bytes) -> None:
    """So that 64 unacknowledged pieces are at most 128 requests (RFC 16.4.4)."""
    async with lo.client(NO_BINARY) as session:
        channel = await session.open_channel("file-put", stream_request())
        await channel.send_json("stream", {"path": "", "mode": 0o644})
        await channel.send_json("more", {"size": size})
        await channel.send_request("chunk", transfer.chunk_payload(0, chunk))
        code, reason = await channel.wait_closed()
    assert code == CloseCode.CHANNEL_ERROR, reason
