"""Fixtures for the file-transfer tests (helpers live in files_helpers.py)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from files_helpers import Loopback, loopback

# tmpfs is memory: use it only with room to spare (other tests share the machine).
SHM_MIN_FREE = 4 << 30


@pytest.fixture
def fast_tmp(tmp_path: Path) -> Iterator[Path]:
    """A scratch directory on tmpfs (/dev/shm) if it has room, else tmp_path."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shutil.disk_usage(shm).free < SHM_MIN_FREE:
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="ppcp-files-", dir=shm))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def dirs(fast_tmp: Path) -> tuple[Path, Path]:
    """(server root, client-side directory), both existing and empty."""
    root = fast_tmp / "root"
    local = fast_tmp / "local"
    root.mkdir()
    local.mkdir()
    return root, local


@pytest.fixture
async def lo(dirs: tuple[Path, Path]) -> AsyncIterator[Loopback]:
    """A loopback file server (all capabilities) serving ``dirs[0]``."""
    async with loopback(*dirs) as lb:
        yield lb
