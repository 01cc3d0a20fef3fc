"""Expiry of abandoned part directories (RFC 16.7): stale ones go, anything in use stays."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from files_helpers import Loopback, MiB, make_file, tree_snapshot

import ppcp
from ppcp.control import transfer
from ppcp.transport.aio_driver import AsyncSession

OLD = time.time() - transfer.PART_TTL - 3600
SOURCE = "0123456789abcdef"


def age(top: Path, when: float = OLD) -> Path:
    """Give ``top`` and everything below it (symlinks themselves) the time ``when``."""
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            os.utime(Path(dirpath, name), (when, when), follow_symlinks=False)
    os.utime(top, (when, when), follow_symlinks=False)
    return top


def abandoned(parent: Path, name: str = f".photos.{SOURCE}.ppcp-part") -> Path:
    """An interrupted copy's part directory: a few levels, a partial file, all old."""
    top = parent / name
    (top / "2024" / "june").mkdir(parents=True)
    (top / "0-first.txt").write_text("first")
    (top / "2024" / "june" / "a.jpg").write_bytes(b"a" * 1000)
    (top / "2024" / "june" / ".b.jpg.ppcp-part").write_bytes(b"b" * 10)
    return age(top)


def sweep(directory: Path, keep: str = "") -> list[str]:
    """What a put landing in ``directory`` does: part files, then part directories."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        before = time.time() - transfer.PART_TTL
        dirs = transfer.remove_expired_parts(fd, keep, before)
        return transfer.remove_expired_part_dirs(fd, dirs, before)
    finally:
        os.close(fd)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


def test_an_abandoned_part_directory_is_removed(root: Path) -> None:
    gone = abandoned(root)
    legacy = abandoned(root, ".docs.ppcp-part")  # from a client that names no source
    (root / "photos-2023" / "x").mkdir(parents=True)
    age(root / "photos-2023")  # old, but not a part directory
    assert sorted(sweep(root)) == [legacy.name, gone.name]
    assert sorted(os.listdir(root)) == ["photos-2023"]


def test_a_young_part_directory_is_kept(root: Path) -> None:
    young = abandoned(root)
    os.utime(young, None)  # a transfer made or renamed something in it lately
    assert sweep(root) == []
    assert (young / "2024" / "june" / "a.jpg").exists()


@pytest.mark.parametrize("what", ["file", "dir", "symlink"])
def test_one_recent_entry_deep_inside_keeps_the_tree(root: Path, what: str) -> None:
    top = abandoned(root)
    deep = top / "2024" / "june"
    recent = {"file": deep / "a.jpg", "dir": deep, "symlink": deep / "link"}[what]
    if what == "symlink":
        recent.symlink_to("a.jpg")
        age(deep.parent)
        os.utime(recent, None, follow_symlinks=False)
    else:
        os.utime(recent, None)
    assert os.stat(top).st_mtime < time.time() - transfer.PART_TTL  # the top looks stale
    assert sweep(root) == []
    assert tree_snapshot(top)


@pytest.mark.parametrize("name", [".b.jpg.ppcp-part", "a.jpg"])
def test_a_locked_file_inside_keeps_the_tree(root: Path, name: str) -> None:
    """A transfer writing into the tree holds its part file's lock, however old the data."""
    top = abandoned(root)
    with open(top / "2024" / "june" / name, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert sweep(root) == []
    assert (top / "2024" / "june" / name).exists()


def test_a_held_part_directory_is_kept(root: Path) -> None:
    """A receiver (in this or another process) working in it holds it shared."""
    top = abandoned(root)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        assert sweep(root) == []
    finally:
        os.close(fd)
    assert sweep(root) == [top.name]


def test_the_part_directory_about_to_be_used_is_kept(root: Path) -> None:
    mine, theirs = abandoned(root), abandoned(root, ".photos.fedcba9876543210.ppcp-part")
    assert sweep(root, keep=mine.name) == [theirs.name]
    assert tree_snapshot(mine) and not theirs.exists()


def test_a_symlink_named_like_a_part_directory_is_not_followed(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("precious")
    age(outside)
    link = root / f".photos.{SOURCE}.ppcp-part"
    link.symlink_to(outside)
    os.utime(link, (OLD, OLD), follow_symlinks=False)
    assert sweep(root) == []
    assert link.is_symlink() and (outside / "precious").read_text() == "precious"


def test_a_symlink_inside_is_removed_not_followed(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("precious")
    top = abandoned(root)
    (top / "2024" / "out").symlink_to(outside)
    (top / "file-link").symlink_to(outside / "precious")
    age(top)
    assert sweep(root) == [top.name]
    assert (outside / "precious").read_text() == "precious"


@pytest.mark.parametrize(("limit", "removed"), [(6, True), (5, False)])
def test_a_tree_over_the_cap_is_left(
    root: Path, monkeypatch: pytest.MonkeyPatch, limit: int, removed: bool
) -> None:
    monkeypatch.setattr(transfer, "PART_DIR_SCAN_LIMIT", limit)
    top = abandoned(root)  # 6 entries below the top
    (top / "2024" / "june" / "c.jpg").touch()
    age(top)
    assert sweep(root) == ([top.name] if removed else [])
    assert top.exists() is not removed


def test_a_tree_too_deep_is_left(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer, "PART_DIR_DEPTH_LIMIT", 2)
    top = abandoned(root)  # 2024/june: three levels, counting the top's own
    assert sweep(root) == []
    (top / "2024" / "june" / "a.jpg").rename(top / "a.jpg")
    (top / "2024" / "june" / ".b.jpg.ppcp-part").unlink()
    (top / "2024" / "june").rmdir()
    age(top)
    assert sweep(root) == [top.name]


def test_housekeeping_errors_leave_the_tree(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    top = abandoned(root)

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    refuse.avoids_symlink_attacks = True  # type: ignore[attr-defined]
    monkeypatch.setattr(transfer.shutil, "rmtree", refuse)
    assert sweep(root) == []
    assert (top / "2024" / "june" / "a.jpg").exists()


# -- over a real session ----------------------------------------------------------------


@pytest.fixture
def caplog_server(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="ppcp.server"):
        yield caplog


@pytest.mark.parametrize("kind", ["file", "dir"])
async def test_a_put_beside_an_abandoned_part_directory_removes_it(
    lo: Loopback, kind: str, caplog_server: pytest.LogCaptureFixture
) -> None:
    gone = abandoned(lo.root)
    young = abandoned(lo.root, ".photos.fedcba9876543210.ppcp-part")
    os.utime(young, None)
    if kind == "file":
        make_file(lo.local / "new", 1000)
    else:
        (lo.local / "new" / "sub").mkdir(parents=True)
        make_file(lo.local / "new" / "sub" / "f", 1000)
    async with lo.client() as session:
        await session.put(lo.local / "new", "new", recursive=kind == "dir")
    assert not gone.exists()
    assert (young / "2024" / "june" / "a.jpg").exists()
    assert sorted(os.listdir(lo.root)) == sorted(["new", young.name])
    assert f"removed the expired part directory {gone.name}" in caplog_server.text


async def test_an_old_part_directory_being_resumed_is_kept(lo: Loopback) -> None:
    """The transfer's own part directory, however old, is resumed, never expired."""
    src = lo.local / "photos"
    src.mkdir()
    (src / "0-first.txt").write_text("first")
    make_file(src / "big.bin", 16 * MiB)
    expected = tree_snapshot(src)

    def cut(session: AsyncSession) -> transfer.ProgressCallback:
        def progress(done: int, total: int, rate: float) -> None:
            if done >= 4 * MiB:
                session.abort()

        return progress

    async with lo.client() as session:
        with pytest.raises(ppcp.PPCPError):
            await session.put(src, "photos", recursive=True, progress=cut(session))
    await lo.server_idle()
    (mine,) = lo.root.iterdir()
    age(mine)
    async with lo.client() as session:
        result = await session.put(src, "photos", recursive=True)
    assert tree_snapshot(lo.root / "photos") == expected
    assert result.resumed_from > 0
    assert os.listdir(lo.root) == ["photos"]


async def test_a_part_directory_is_held_while_it_is_received_into(lo: Loopback) -> None:
    """So a concurrent put beside it (in this server or another) cannot expire it."""
    src = lo.local / "photos"
    src.mkdir()
    make_file(src / "big.bin", 4 * MiB)
    tried: list[bool] = []

    def try_lock(done: int, total: int, rate: float) -> None:
        if tried or not done:
            return
        (part,) = lo.root.iterdir()
        fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            tried.append(False)
        except BlockingIOError:
            tried.append(True)
        finally:
            os.close(fd)

    async with lo.client() as session:
        await session.put(src, "photos", recursive=True, progress=try_lock)
    assert tried == [True]


async def test_a_failing_housekeeping_never_fails_the_put(
    lo: Loopback, monkeypatch: pytest.MonkeyPatch, caplog_server: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object) -> list[str]:
        raise RuntimeError("housekeeping bug")

    monkeypatch.setattr(transfer, "remove_expired_part_dirs", broken)
    kept = abandoned(lo.root)
    make_file(lo.local / "f", 1000)
    async with lo.client() as session:
        await session.put(lo.local / "f", "f")
    assert (lo.root / "f").exists() and kept.exists()
    assert "expiring the part files in . failed" in caplog_server.text


async def test_a_receiver_waits_for_an_expiry_then_starts_afresh(root: Path) -> None:
    """A part directory being expired (its exclusive lock held) is not resumed into."""
    top = abandoned(root)
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    sweeper = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(sweeper, fcntl.LOCK_EX | fcntl.LOCK_NB)
        task = asyncio.ensure_future(transfer.hold_part_dir(dir_fd, top.name, "'photos'"))
        for _ in range(3):
            await asyncio.sleep(0)
        assert not task.done()
        shutil.rmtree(top)
        os.close(sweeper)
        sweeper = -1
        held = await task
        try:
            # Made anew (the old one had files; its inode number may be reused).
            assert os.path.samestat(os.fstat(held), os.stat(top)) and os.listdir(held) == []
        finally:
            os.close(held)
    finally:
        os.close(dir_fd)
        if sweeper >= 0:
            os.close(sweeper)


async def test_a_receiver_gives_up_on_an_expiry_that_lasts(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer, "LOCK_WAIT", 0.2)
    top = abandoned(root)
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    sweeper = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(sweeper, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ppcp.TransferError, match="'photos' is being removed as expired"):
            await transfer.hold_part_dir(dir_fd, top.name, "'photos'")
    finally:
        os.close(sweeper)
        os.close(dir_fd)
