"""The data codecs without a network: compressed blocks, base64 chunks, messages."""

from __future__ import annotations

import base64
import json
import os
import zlib

import pytest

from ppcp.control import transfer as t
from ppcp.control.aio_channel import encode_json
from ppcp.core.errors import ChannelError, RemotePathError


def block(method: int, size: int, body: bytes) -> bytes:
    return t.BLOCK.pack(method, size, len(body)) + body


def test_blocks_round_trip_in_pieces() -> None:
    text = b"compressible " * 10000
    stream = t.encode_block(memoryview(text), t.Compressor())
    stream += t.encode_block(memoryview(os.urandom(5000)), t.Compressor())
    pending = bytearray()
    out: list[tuple[bytes, int | None]] = []
    for i in range(0, len(stream), 777):  # arbitrary record boundaries
        pending += stream[i : i + 777]
        out += t.take_blocks(pending, 10**9)
    assert not pending
    (packed, size), (stored, none) = out
    assert t.inflate(packed, size) == text and size == len(text)
    assert none is None and len(stored) == 5000


@pytest.mark.parametrize(
    ("data", "room"),
    [
        (block(2, 1, b"x"), 10),  # unknown method
        (block(0, 2, b"x"), 10),  # stored with a length mismatch
        (block(1, 0, b""), 10),  # empty block
        (block(1, t.CHUNK + 1, b"x"), 10**9),  # larger than a piece
        (block(1, 5, zlib.compress(b"12345") * 2), 10),  # stored longer than raw
        (block(0, 5, b"12345"), 4),  # past the end of the file
    ],
)
def test_malformed_blocks(data: bytes, room: int) -> None:
    with pytest.raises(ChannelError):
        t.take_blocks(bytearray(data), room)


def test_inflate_is_bounded_by_the_announced_size() -> None:
    bomb = zlib.compress(b"\0" * (64 << 20))  # 64 MiB in ~64 KiB
    with pytest.raises(ChannelError, match="announced size"):
        t.inflate(bomb, 1000)
    with pytest.raises(ChannelError, match="announced size"):
        t.inflate(zlib.compress(b"abc"), 4)  # shorter than announced
    with pytest.raises(ChannelError, match="announced size"):
        t.inflate(zlib.compress(b"abc") + b"trailing", 3)
    with pytest.raises(ChannelError, match="corrupt"):
        t.inflate(b"not zlib at all", 3)


def test_compressor_backs_off_on_incompressible_data() -> None:
    c = t.Compressor()
    text = b"abc" * 1000
    assert c.pack(text) is not None
    assert c.pack(os.urandom(3000)) is None
    assert all(c.pack(text) is None for _ in range(t.COMPRESS_BACKOFF))
    assert c.pack(text) is not None


def chunk(**obj: object) -> bytes:
    return encode_json(obj)


def test_chunks() -> None:
    data, size = t.decode_chunk(t.chunk_payload(7, b"hello"), 7, 100)
    assert (data, size) == (b"hello", None)
    text = b"z" * 40000
    data, size = t.decode_chunk(t.chunk_payload(0, text, t.Compressor()), 0, 10**6)
    assert size == len(text) and t.inflate(data, size) == text


@pytest.mark.parametrize(
    "payload",
    [
        chunk(offset=1, data="aGk="),  # wrong offset
        chunk(offset=0, data="aGk"),  # bad padding
        chunk(offset=0, data="a G k="),  # whitespace
        chunk(offset=0, data="!!!!"),  # outside the alphabet
        chunk(offset=0, data=""),  # empty
        chunk(offset=0, data=base64.b64encode(b"x" * 101).decode()),  # past the end
        chunk(offset=0, data=base64.b64encode(b"x" * 50000).decode()),  # too big
        chunk(offset=0, data="aGk=", zlib=True),  # no size
        chunk(offset=0, data="aGk=", zlib=True, size=10**6),  # size out of range
        chunk(offset=0, data="aGk=", zlib="yes", size=2),
        chunk(offset=True, data="aGk="),  # a bool is not an offset
        chunk(offset=0.0, data="aGk="),
        b"[]",
    ],
)
def test_malformed_chunks(payload: bytes) -> None:
    with pytest.raises(ChannelError):
        t.decode_chunk(payload, 0, 100)


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b'{"path": "a", "size": 1, "mode": 420}', ChannelError),  # no mtime_ns
        (b'{"path": "a", "size": 1, "mode": 65536, "mtime_ns": 0}', ChannelError),
        (b'{"path": "a", "size": -1, "mode": 420, "mtime_ns": 0}', ChannelError),
        (b'{"path": "a", "size": 1e3, "mode": 420, "mtime_ns": 0}', ChannelError),
        (b'{"path": "../a", "size": 1, "mode": 420, "mtime_ns": 0}', RemotePathError),
        (b'{"path": null, "size": 1, "mode": 420, "mtime_ns": 0}', ChannelError),
    ],
)
def test_malformed_file_entries(payload: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        t.FileEntry.decode(payload)


def test_entries_round_trip() -> None:
    entry = t.FileEntry(("a", "b"), 5, 0o644, 123)
    assert t.FileEntry.decode(entry.encode()) == entry
    assert json.loads(entry.encode())["path"] == "a/b"
    d = t.DirEntry((), 0o755, 0)
    assert t.DirEntry.decode(d.encode()) == d


def test_sha256_fields_are_strict() -> None:
    good = "ab" * 32
    assert t.field_sha256({"h": good}, "h", "x") == good
    for bad in ("AB" * 32, "ab" * 31, "zz" * 32, 5, None):
        with pytest.raises(ChannelError):
            t.field_sha256({"h": bad}, "h", "x")
