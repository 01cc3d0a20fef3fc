"""Interrupted transfers: nothing under the real name, a part file kept, resume from it."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from files_helpers import NO_BINARY, Loopback, MiB, make_file, sha256_file, tree_snapshot

import ppcp
from ppcp.control import transfer
from ppcp.control.aio_channel import encode_json
from ppcp.core.config import SUPPORTED_CAPABILITIES
from ppcp.core.errors import CloseCode
from ppcp.transport.aio_driver import AsyncSession

PATHS = {"binary": SUPPORTED_CAPABILITIES, "base64": NO_BINARY}
SIZE = 24 * MiB
CUT = 8 * MiB


@pytest.fixture(params=sorted(PATHS))
def caps(request: pytest.FixtureRequest) -> tuple[str, ...]:
    return PATHS[request.param]


def cut_after(session: AsyncSession, limit: int) -> transfer.ProgressCallback:
    """A progress callback that kills the connection (no close) after ``limit`` bytes."""

    def progress(done: int, total: int, rate: float) -> None:
        if done >= limit:
            session.abort()

    return progress


def part_of(path: Path) -> Path:
    return path.with_name(f".{path.name}.ppcp-part")


def part_dir_of(path: Path) -> Path:
    """The one part directory of a new ``path``: its name carries its source's identifier."""
    found = list(path.parent.glob(f".{path.name}.*.ppcp-part"))
    assert len(found) == 1, found
    assert re.fullmatch(rf"\.{re.escape(path.name)}\.[0-9a-f]{{16}}\.ppcp-part", found[0].name)
    return found[0]


async def test_put_killed_mid_transfer_then_resumed(lo: Loopback, caps: tuple[str, ...]) -> None:
    src = lo.local / "big.bin"
    digest = make_file(src, SIZE)
    dest = lo.root / "big.bin"
    async with lo.client(caps) as session:
        with pytest.raises(ppcp.PPCPError):
            await session.put(src, "big.bin", progress=cut_after(session, CUT))
    await lo.server_idle()
    assert not dest.exists()
    kept = part_of(dest).stat().st_size
    assert 0 < kept < SIZE
    async with lo.client(caps) as session:
        result = await session.put(src, "big.bin", checksum=True)  # continues the prefix's hash
    assert result.sha256 == digest == sha256_file(dest)
    # The dead session's last write may still land after we looked at the
    # part file, so the resume point is at least what we saw, never less.
    assert kept <= result.resumed_from < SIZE
    assert result.bytes == SIZE - result.resumed_from < SIZE
    assert result.total == SIZE
    assert not part_of(dest).exists()


async def test_get_killed_mid_transfer_then_resumed(lo: Loopback, caps: tuple[str, ...]) -> None:
    digest = make_file(lo.root / "big.bin", SIZE)
    dest = lo.local / "big.bin"
    async with lo.client(caps) as session:
        with pytest.raises(ppcp.PPCPError):
            await session.get("big.bin", dest, progress=cut_after(session, CUT))
    assert not dest.exists()
    kept = part_of(dest).stat().st_size
    assert CUT <= kept < SIZE
    seen: list[int] = []
    async with lo.client(caps) as session:
        result = await session.get(
            "big.bin", dest, progress=lambda d, t, r: seen.append(d), checksum=True
        )
    assert result.sha256 == digest == sha256_file(dest)
    assert kept <= result.resumed_from < SIZE  # a last in-flight write may land late
    assert result.bytes == SIZE - result.resumed_from
    # progress counts the resumed prefix as done
    assert seen[0] > result.resumed_from and seen[-1] == SIZE
    assert not part_of(dest).exists()


async def test_a_part_that_differs_is_not_trusted(lo: Loopback) -> None:
    digest = make_file(lo.root / "f.bin", 4 * MiB)
    part = part_of(lo.local / "f.bin")
    part.write_bytes(b"not the same prefix" * 1000)
    async with lo.client() as session:
        result = await session.get("f.bin", lo.local / "f.bin", checksum=True)
    assert (result.resumed_from, result.bytes, result.sha256) == (0, 4 * MiB, digest)
    assert sha256_file(lo.local / "f.bin") == digest and not part.exists()


async def test_a_part_longer_than_the_file_is_discarded(lo: Loopback) -> None:
    digest = make_file(lo.local / "f.bin", MiB)
    make_file(part_of(lo.root / "f.bin"), 2 * MiB)
    async with lo.client() as session:
        result = await session.put(lo.local / "f.bin", "f.bin", checksum=True)
    assert (result.resumed_from, result.sha256) == (0, digest)
    assert sha256_file(lo.root / "f.bin") == digest


async def test_resume_false_starts_over(lo: Loopback) -> None:
    digest = make_file(lo.root / "f.bin", 3 * MiB)
    with open(lo.root / "f.bin", "rb") as f:
        part_of(lo.local / "f.bin").write_bytes(f.read(2 * MiB))  # a valid prefix
    async with lo.client() as session:
        result = await session.get("f.bin", lo.local / "f.bin", resume=False, checksum=True)
    assert (result.resumed_from, result.bytes, result.sha256) == (0, 3 * MiB, digest)


async def test_a_complete_part_is_just_verified_and_renamed(lo: Loopback) -> None:
    digest = make_file(lo.local / "f.bin", 2 * MiB)
    make_file(part_of(lo.root / "f.bin"), 2 * MiB)  # same content: same generator
    async with lo.client() as session:
        result = await session.put(lo.local / "f.bin", "f.bin", checksum=True)
    assert (result.resumed_from, result.bytes, result.sha256) == (2 * MiB, 0, digest)
    assert sha256_file(lo.root / "f.bin") == digest


def fill_disk_at(monkeypatch: pytest.MonkeyPatch, limit: int) -> Callable[..., None]:
    """Make writes past ``limit`` bytes fail with ENOSPC (after writing what fits); return
    the real writer (to put back once room is made)."""
    real_write_at = transfer.write_at

    def full_disk(fd: int, data: bytes | memoryview, pos: int) -> None:
        # As a file system does: what fits is written, then the write fails.
        room = max(0, limit - pos)
        real_write_at(fd, memoryview(data)[:room], pos)
        if len(data) > room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(transfer, "write_at", full_disk)
    return real_write_at


async def test_disk_full_keeps_the_part_for_resume(
    lo: Loopback, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = make_file(lo.local / "f.bin", 6 * MiB)
    real_write_at = fill_disk_at(monkeypatch, 3 * MiB)
    async with lo.client() as session:
        with pytest.raises(ppcp.TransferError, match="no space left on device") as info:
            await session.put(lo.local / "f.bin", "f.bin")
        assert info.value.remote
        assert info.value.message.endswith(
            "no space left on device while writing 'f.bin': the 3.0 MiB received of 6.0 MiB "
            "are kept; make 3.0 MiB more room and copy again to resume"
        )
        assert not (lo.root / "f.bin").exists()
        assert part_of(lo.root / "f.bin").stat().st_size == 3 * MiB
        monkeypatch.setattr(transfer, "write_at", real_write_at)  # space freed
        result = await session.put(lo.local / "f.bin", "f.bin", checksum=True)
    assert (result.resumed_from, result.bytes, result.sha256) == (3 * MiB, 3 * MiB, digest)


@pytest.mark.parametrize("direction", ["put", "get"])
async def test_disk_full_while_replacing_leaves_the_old_file(
    lo: Loopback, monkeypatch: pytest.MonkeyPatch, direction: str
) -> None:
    """The old and the new file must fit side by side: no resume is promised, the old
    file is intact and the part is removed (it would only hold the disk full)."""
    src_dir, dest_dir = (lo.local, lo.root) if direction == "put" else (lo.root, lo.local)
    digest = make_file(src_dir / "f.bin", 6 * MiB, b"new")
    old = make_file(dest_dir / "f.bin", 2 * MiB, b"old")
    real_write_at = fill_disk_at(monkeypatch, 3 * MiB)
    async with lo.client() as session:

        async def copy(checksum: bool = False) -> ppcp.TransferResult:
            if direction == "put":
                return await session.put(lo.local / "f.bin", "f.bin", checksum=checksum)
            return await session.get("f.bin", lo.local / "f.bin", checksum=checksum)

        with pytest.raises(ppcp.TransferError, match="no space left on device") as info:
            await copy()
        message = info.value.message
        assert info.value.remote == (direction == "put")
        assert message.endswith(
            "no space left on device while writing 'f.bin': it was not replaced and is "
            "unchanged; the new copy needs 6.0 MiB free beside the old one. Make room or "
            "remove the old file, then copy again"
        )
        assert sha256_file(dest_dir / "f.bin") == old
        assert not part_of(dest_dir / "f.bin").exists()
        monkeypatch.setattr(transfer, "write_at", real_write_at)  # room was made
        result = await copy(checksum=True)
    assert (result.resumed_from, result.sha256) == (0, digest)


@pytest.mark.parametrize("path", ["f.bin", "d/" * 120 + "f.bin", "\u00e9" * 200])
def test_what_to_do_survives_the_reason_limit(path: str) -> None:
    """A close reason is clipped at 255 bytes: the path gives way, not the advice after it."""
    from ppcp.handshake.messages import MAX_REASON_BYTES

    text = transfer.within_reason(lambda shown: f"writing {shown}: " + "advice " * 20, path)
    assert len(text.encode("utf-8")) <= MAX_REASON_BYTES and text.endswith("advice " * 20)
    assert text.startswith(f"writing '{path[:2]}") and (len(path) < 100 or "..." in text)


async def test_a_failed_fsync_discards_the_part(
    lo: Loopback, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a failed write-back the part reads back from the cache, not from the disk:
    it is not trusted for a resume."""
    make_file(lo.local / "f.bin", MiB)

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(transfer.os, "fsync", failing)
    async with lo.client() as session:
        with pytest.raises(ppcp.TransferError, match="Input/output error") as info:
            await session.put(lo.local / "f.bin", "f.bin")
    assert "was discarded" in info.value.message and "was not created" in info.value.message
    assert not part_of(lo.root / "f.bin").exists() and not (lo.root / "f.bin").exists()


async def test_checksum_mismatch_discards_the_part(
    lo: Loopback, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sender whose bytes do not match its final hash: nothing is kept."""
    make_file(lo.local / "f.bin", MiB + 5)
    real = transfer.send_data

    async def corrupting(channel, encoding, fd, pos, size, h, progress, shown):  # type: ignore[no-untyped-def]
        await real(channel, encoding, fd, pos, size, h, progress, shown)
        h.update(b"tampered")

    monkeypatch.setattr(transfer, "send_data", corrupting)
    async with lo.client() as session:
        with pytest.raises(ppcp.TransferError, match="checksum mismatch"):
            await session.put(lo.local / "f.bin", "f.bin", checksum=True)
    assert not (lo.root / "f.bin").exists()
    assert not part_of(lo.root / "f.bin").exists()


async def test_a_file_changed_while_sent_is_not_completed(
    lo: Loopback, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A digest of the bytes as read cannot see a torn read; the file's metadata can."""
    src = lo.local / "f.bin"
    make_file(src, 2 * MiB)
    # An old mtime: the rewrite below moves it even on a clock coarser than the transfer.
    os.utime(src, ns=(10**18, 10**18))
    real = transfer.send_data

    async def then_modified(channel, encoding, fd, pos, size, h, progress, shown):  # type: ignore[no-untyped-def]
        await real(channel, encoding, fd, pos, size, h, progress, shown)
        with src.open("r+b") as f:  # same size, new bytes and a new mtime
            f.write(b"changed")

    monkeypatch.setattr(transfer, "send_data", then_modified)
    async with lo.client() as session:
        with pytest.raises(ppcp.TransferError, match="changed while it was being sent"):
            await session.put(src, "f.bin")
        monkeypatch.setattr(transfer, "send_data", real)
        result = await session.put(src, "f.bin")  # the part is kept; its prefix is re-checked
    assert sha256_file(lo.root / "f.bin") == sha256_file(src)
    assert result.resumed_from + result.bytes == 2 * MiB


async def test_a_file_that_only_grew_while_sent_is_copied_as_it_was(
    lo: Loopback, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log being appended to is copied with the size it had when the copy began (as scp)."""
    src = lo.local / "app.log"
    make_file(src, MiB + 7)
    before = src.read_bytes()
    real = transfer.send_data

    async def then_appended(channel, encoding, fd, pos, size, h, progress, shown):  # type: ignore[no-untyped-def]
        await real(channel, encoding, fd, pos, size, h, progress, shown)
        with src.open("ab") as f:
            f.write(b"one more line\n")

    monkeypatch.setattr(transfer, "send_data", then_appended)
    async with lo.client() as session:
        result = await session.put(src, "app.log")
    assert result.bytes == len(before)
    assert (lo.root / "app.log").read_bytes() == before


def photos(top: Path) -> dict[str, object]:
    """A tree whose first file is small (complete before a cut) and second is big."""
    (top / "sub").mkdir(parents=True)
    (top / "0-first.txt").write_text("first")
    make_file(top / "big.bin", SIZE)
    (top / "sub" / "z.txt").write_text("z")
    os.chmod(top, 0o750)
    return tree_snapshot(top)


@pytest.mark.parametrize("into", [False, True], ids=["as-new-name", "into-existing-dir"])
async def test_recursive_put_resumes_where_it_stopped(lo: Loopback, into: bool) -> None:
    """Running an interrupted put -r again continues it: it does not nest the tree."""
    src = lo.local / "photos"
    expected = photos(src)
    if into:
        (lo.root / "backup").mkdir()
    remote, dest = (
        ("backup", lo.root / "backup" / "photos") if into else ("backup", lo.root / "backup")
    )
    async with lo.client() as session:
        with pytest.raises(ppcp.PPCPError):
            await session.put(src, remote, recursive=True, progress=cut_after(session, CUT))
    await lo.server_idle()
    assert not dest.exists()  # nothing under the real name until the tree is complete
    staged = part_dir_of(dest)
    assert (staged / "0-first.txt").read_text() == "first"
    kept = part_of(staged / "big.bin").stat().st_size
    async with lo.client() as session:
        result = await session.put(src, remote, recursive=True)
    assert result.path == ("backup/photos" if into else "backup")
    assert tree_snapshot(dest) == expected
    assert os.stat(dest).st_mode & 0o777 == 0o750
    assert sorted(os.listdir(dest.parent)) == [dest.name]  # no part left behind
    # The finished small file and the big one's prefix were not sent again.
    assert len("first") + kept <= result.resumed_from < SIZE
    assert result.bytes + result.resumed_from == SIZE + len("first") + len("z")


@pytest.mark.parametrize("into", [False, True], ids=["as-new-name", "into-existing-dir"])
async def test_recursive_get_resumes_where_it_stopped(lo: Loopback, into: bool) -> None:
    expected = photos(lo.root / "photos")
    local = lo.local / "dl"
    if into:
        local.mkdir()
    dest = local / "photos" if into else local
    async with lo.client() as session:
        with pytest.raises(ppcp.PPCPError):
            await session.get("photos", local, recursive=True, progress=cut_after(session, CUT))
    assert not dest.exists()
    staged = part_dir_of(dest)
    assert (staged / "0-first.txt").read_text() == "first"
    kept = part_of(staged / "big.bin").stat().st_size
    async with lo.client() as session:
        result = await session.get("photos", local, recursive=True)
    assert result.path == str(dest)
    assert tree_snapshot(dest) == expected
    assert os.stat(dest).st_mode & 0o777 == 0o750
    assert sorted(os.listdir(dest.parent)) == [dest.name]
    assert len("first") + kept <= result.resumed_from < SIZE


def tree_named(top: Path, name: str) -> dict[str, object]:
    """A tree of its own: a small file named after it, then a big one of its own content."""
    top.mkdir(parents=True)
    (top / f"0-{name}.txt").write_text(name)
    make_file(top / "big.bin", SIZE, name.encode())
    return tree_snapshot(top)


@pytest.mark.parametrize("direction", ["put", "get"])
async def test_an_interrupted_copy_of_another_tree_is_not_continued(
    lo: Loopback, direction: str
) -> None:
    """Two different trees copied to the same new name, both interrupted: each resumes
    only its own part directory, so neither ends with the other's files mixed in."""
    src_dir = lo.local if direction == "put" else lo.root
    expected = {name: tree_named(src_dir / name, name) for name in ("one", "two")}
    dest = lo.root / "backup" if direction == "put" else lo.local / "backup"

    async def copy(session: AsyncSession, name: str, cut: bool) -> ppcp.TransferResult:
        progress = cut_after(session, CUT) if cut else None
        if direction == "put":
            return await session.put(lo.local / name, "backup", recursive=True, progress=progress)
        return await session.get(name, dest, recursive=True, progress=progress)

    for name in ("one", "two"):
        async with lo.client() as session:
            with pytest.raises(ppcp.PPCPError):
                await copy(session, name, cut=True)
        await lo.server_idle()
    assert not dest.exists()
    async with lo.client() as session:
        result = await copy(session, "two", cut=False)
    assert tree_snapshot(dest) == expected["two"]
    assert len("two") <= result.resumed_from < SIZE  # its own part, continued
    # The other tree's interrupted copy is untouched, still there to be resumed.
    theirs = part_dir_of(dest)
    assert sorted(os.listdir(theirs)) == [".big.bin.ppcp-part", "0-one.txt"]


@pytest.mark.parametrize("source", [None, "0123456789abcdef"])
async def test_the_part_directory_is_named_after_the_source(
    lo: Loopback, source: str | None
) -> None:
    """A client that names no source (an older one) keeps the plain part name."""
    request = {"v": 1, "path": "new", "type": "dir", "name": "new", "resume": True}
    if source is not None:
        request["source"] = source
    async with lo.client() as session:
        channel = await session.open_channel("file-put", encode_json(request))
        await channel.send_json("dir", {"path": "", "mode": 0o755, "mtime_ns": 0})
        await channel.send_json("dir", {"path": "sub", "mode": 0o755, "mtime_ns": 0})
        await channel.close(CloseCode.TRANSFER_FAILED, "interrupted")
    await lo.server_idle()
    name = ".new.ppcp-part" if source is None else f".new.{source}.ppcp-part"
    assert os.listdir(lo.root) == [name] and os.listdir(lo.root / name) == ["sub"]


async def test_a_tree_that_appeared_meanwhile_is_not_replaced(lo: Loopback) -> None:
    src = lo.local / "d"
    src.mkdir()
    (src / "f").write_text("f")

    def someone_else(done: int, total: int, rate: float) -> None:
        (lo.root / "d").mkdir(exist_ok=True)
        (lo.root / "d" / "theirs").write_text("theirs")

    async with lo.client() as session:
        with pytest.raises(ppcp.TransferError, match="appeared during the transfer"):
            await session.put(src, "d", recursive=True, progress=someone_else)
    assert os.listdir(lo.root / "d") == ["theirs"]
    assert (part_dir_of(lo.root / "d") / "f").read_text() == "f"  # kept, not lost


async def test_expired_part_files_are_removed_where_a_put_lands(lo: Loopback) -> None:
    """A server does not keep abandoned part files for ever (RFC 16.7)."""
    old = time.time() - transfer.PART_TTL - 3600

    def part(path: Path, when: float, size: int = 10) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"p" * size)
        os.utime(path, (when, when))
        return path

    digest = make_file(lo.local / "f.bin", 2 * MiB)
    with open(lo.local / "f.bin", "rb") as f:
        prefix = f.read(MiB)
    resumed = part(lo.root / ".f.bin.ppcp-part", old, 0)
    resumed.write_bytes(prefix)  # old, but the one this put resumes from: kept
    os.utime(resumed, (old, old))
    expired = part(lo.root / ".abandoned.bin.ppcp-part", old)
    fresh = part(lo.root / ".recent.bin.ppcp-part", time.time())
    busy = part(lo.root / ".busy.bin.ppcp-part", old)
    elsewhere = part(lo.root / "sub" / ".abandoned.bin.ppcp-part", old)  # not touched
    (lo.root / ".tree.ppcp-part").mkdir()  # an abandoned part directory: test_file_expiry.py
    os.utime(lo.root / ".tree.ppcp-part", (old, old))
    (lo.local / ".abandoned.ppcp-part").write_bytes(b"mine")  # the client does not sweep
    os.utime(lo.local / ".abandoned.ppcp-part", (old, old))
    with open(busy, "rb") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        async with lo.client() as session:
            result = await session.put(lo.local / "f.bin", "f.bin", checksum=True)
            await session.get("f.bin", lo.local / "back.bin")
    assert (result.sha256, result.resumed_from) == (digest, MiB)
    assert not expired.exists()
    assert fresh.exists() and busy.exists() and elsewhere.exists()
    assert not (lo.root / ".tree.ppcp-part").exists()
    assert (lo.local / ".abandoned.ppcp-part").exists()
