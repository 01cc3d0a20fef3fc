"""Helpers for the file-transfer tests: a loopback server and deterministic files.

Everything runs on 127.0.0.1 with port 0; discovery is off.  Files that are
large live on tmpfs (/dev/shm) when there is one.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ppcp.aio
from ppcp.control.router import ServerPolicy
from ppcp.core.config import SUPPORTED_CAPABILITIES, SessionConfig
from ppcp.transport.aio_driver import AsyncSession

PSK = "ppcp-psk-" + "5a" * 32
MiB = 1 << 20
NO_BINARY = tuple(c for c in SUPPORTED_CAPABILITIES if c != "binary-data")
NO_ZLIB = tuple(c for c in SUPPORTED_CAPABILITIES if c != "zlib")


def config(capabilities: tuple[str, ...] = SUPPORTED_CAPABILITIES) -> SessionConfig:
    return SessionConfig(name="files-test", capabilities=capabilities, heartbeat_interval=0)


def serve_kwargs() -> dict[str, Any]:
    """discovery=False where serve() has that parameter (no UDP port clashes)."""
    if "discovery" in inspect.signature(ppcp.aio.serve).parameters:
        return {"discovery": False}
    return {}


def make_file(path: Path, size: int, seed: bytes = b"ppcp") -> str:
    """Write ``size`` deterministic, non-repeating bytes; return their SHA-256 (hex).

    One random-looking MiB is reused with a block counter in its first bytes,
    so generating a GiB costs a GiB of memcpy, not of hashing.
    """
    block = bytearray(hashlib.sha256(seed).digest() * (MiB // 32))
    h = hashlib.sha256()
    with open(path, "wb") as f:
        done = 0
        counter = 0
        while done < size:
            block[:8] = counter.to_bytes(8, "big")
            piece = memoryview(block)[: min(MiB, size - done)]
            f.write(piece)
            h.update(piece)
            done += len(piece)
            counter += 1
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def text_file(path: Path, size: int) -> str:
    """Compressible content (for the zlib path)."""
    line = b"the quick brown fox jumps over the lazy dog 0123456789\n"
    data = (line * (size // len(line) + 1))[:size]
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def tree_snapshot(top: Path) -> dict[str, Any]:
    """{relative path: ("dir", mode) | ("file", mode, sha256)} for a directory tree."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for d in dirnames:
            p = Path(dirpath, d)
            out[str(p.relative_to(top))] = ("dir", p.stat().st_mode & 0o777)
        for f in filenames:
            p = Path(dirpath, f)
            out[str(p.relative_to(top))] = ("file", p.stat().st_mode & 0o777, sha256_file(p))
    return out


@dataclass
class Loopback:
    """A file server on 127.0.0.1 whose root is ``root``; ``local`` is the client's side."""

    server: ppcp.aio.Server
    root: Path
    local: Path
    server_sessions: list[AsyncSession]

    @property
    def port(self) -> int:
        return self.server.port

    @contextlib.asynccontextmanager
    async def client(
        self, capabilities: tuple[str, ...] = SUPPORTED_CAPABILITIES
    ) -> AsyncIterator[AsyncSession]:
        session = await ppcp.aio.connect("127.0.0.1", self.port, PSK, config=config(capabilities))
        try:
            yield session
        finally:
            await session.close()

    async def server_idle(self) -> None:
        """Wait until every server-side session so far has ended (and its tasks too)."""
        for session in list(self.server_sessions):
            await session.wait_closed()


@contextlib.asynccontextmanager
async def loopback(
    root: Path,
    local: Path,
    capabilities: tuple[str, ...] = SUPPORTED_CAPABILITIES,
    policy: ServerPolicy | None = None,
) -> AsyncIterator[Loopback]:
    sessions: list[AsyncSession] = []

    async def track(session: AsyncSession) -> None:
        sessions.append(session)
        await session.wait_closed()

    server = await ppcp.aio.serve(
        "127.0.0.1",
        0,
        PSK,
        track,
        config=config(capabilities),
        policy=policy or ServerPolicy(root=root),
        **serve_kwargs(),
    )
    try:
        yield Loopback(server, root, local, sessions)
    finally:
        await server.aclose()
