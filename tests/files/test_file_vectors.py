"""The file-transfer test vectors in the RFC are what the code produces, and decode back."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from ppcp.control import transfer
from ppcp.utils.codec import Reader
from ppcp.utils.vectors import extract_block

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCK = "file-vectors"


def rfc_block() -> str:
    """The block from docs/rfc.md (Appendix A.4)."""
    try:
        return extract_block((DOCS / "rfc.md").read_text(encoding="utf-8"), BLOCK)
    except KeyError:
        pytest.fail(f"no <!-- {BLOCK}:begin --> block in docs/rfc.md")


def test_rfc_vectors_are_current() -> None:
    assert rfc_block() == transfer.file_vectors_markdown(), (
        "the file-transfer vectors in the RFC are stale: run python -m ppcp.utils.vectors --update"
    )


def test_vectors_are_deterministic() -> None:
    assert transfer.file_vectors() == transfer.file_vectors()


def test_vectors_decode_as_the_rfc_says() -> None:
    vectors = {name: bytes.fromhex(value) for name, value in transfer.file_vectors()}
    # CHANNEL_OPEN: u32 id, u32 window, u32 max packet, text8 kind, JSON payload
    r = Reader(vectors["file_put_open"])
    assert (r.u32(), r.u32(), r.u32(), r.vec8()) == (1, 4 << 20, 2 << 20, b"file-put")
    put = json.loads(r.rest())
    assert put == {
        "v": 1,
        "path": "docs",
        "type": "file",
        "name": "hello.txt",
        "resume": True,
        "zlib": False,
        "checksum": True,
    }
    r = Reader(vectors["file_get_open"])
    assert (r.u32(), r.u32(), r.u32(), r.vec8()) == (3, 4 << 20, 2 << 20, b"file-get")
    assert json.loads(r.rest())["path"] == "docs/hello.txt"
    # CHANNEL_REQUEST: u32 id, text8 name, JSON payload
    requests = {}
    for name in ("file_entry", "chunk", "end"):
        r = Reader(vectors[name])
        assert r.u32() == 1
        key = r.vec8().decode()
        requests[key] = r.rest()
    entry = transfer.FileEntry.decode(requests["file"])
    assert (entry.path, entry.size, entry.mode) == ((), 13, 0o644)
    data, inflate_to = transfer.decode_chunk(requests["chunk"], 0, entry.size)
    assert inflate_to is None
    assert data == transfer.VECTOR_CONTENT
    assert base64.b64decode(json.loads(requests["chunk"])["data"]) == data
    assert json.loads(requests["end"])["sha256"] == hashlib.sha256(data).hexdigest()
