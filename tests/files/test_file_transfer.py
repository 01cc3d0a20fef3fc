"""put/get over loopback: files, directories, both data paths, compression, metadata."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest
from files_helpers import (
    NO_BINARY,
    NO_ZLIB,
    PSK,
    Loopback,
    MiB,
    config,
    loopback,
    make_file,
    sha256_file,
    text_file,
    tree_snapshot,
)

import ppcp
from ppcp.control.router import ServerPolicy
from ppcp.control.transfer import BULK_CHUNK
from ppcp.core.config import SUPPORTED_CAPABILITIES

PATHS = {"binary": SUPPORTED_CAPABILITIES, "base64": NO_BINARY}


@pytest.fixture(params=sorted(PATHS))
def caps(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """The client's capabilities: with or without binary-data (the base64 path)."""
    return PATHS[request.param]


async def test_put_then_get_a_file(lo: Loopback, caps: tuple[str, ...]) -> None:
    size = 5 * MiB + 12345
    digest = make_file(lo.local / "data.bin", size)
    encoding = "binary" if "binary-data" in caps else "base64"
    async with lo.client(caps) as session:
        up = await session.put(lo.local / "data.bin", "copy.bin")
        assert (up.files, up.bytes, up.total, up.sha256) == (1, size, size, None)
        assert up.encoding == encoding and not up.compressed and up.path == "copy.bin"
        down = await session.get("copy.bin", str(lo.local / "back.bin"), checksum=True)
        assert (down.files, down.bytes, down.sha256) == (1, size, digest)
        assert down.encoding == encoding
    assert sha256_file(lo.root / "copy.bin") == digest
    assert sha256_file(lo.local / "back.bin") == digest
    leftovers = [p.name for p in (*lo.root.iterdir(), *lo.local.iterdir()) if "part" in p.name]
    assert leftovers == []


@pytest.mark.parametrize("size", [0, 1, MiB, MiB + 1])
async def test_boundary_sizes(lo: Loopback, caps: tuple[str, ...], size: int) -> None:
    digest = make_file(lo.local / "f", size)
    async with lo.client(caps) as session:
        await session.put(lo.local / "f", "f", checksum=True)
        result = await session.get("f", lo.local / "g", checksum=True)
    assert result.sha256 == digest == sha256_file(lo.root / "f") == sha256_file(lo.local / "g")


async def test_scp_rules_for_existing_directories(lo: Loopback) -> None:
    make_file(lo.local / "one.txt", 100)
    (lo.root / "inbox").mkdir()
    (lo.local / "downloads").mkdir()
    async with lo.client() as session:
        result = await session.put(lo.local / "one.txt", "inbox")
        assert result.path == "inbox/one.txt"
        assert (lo.root / "inbox" / "one.txt").stat().st_size == 100
        result = await session.get("inbox/one.txt", lo.local / "downloads")
        assert result.path == str(lo.local / "downloads" / "one.txt")
        assert (lo.local / "downloads" / "one.txt").stat().st_size == 100
        # The root itself is "" (and "." / "./"): the file lands in it.
        result = await session.put(lo.local / "one.txt", "")
        assert result.path == "one.txt"


async def test_overwrite_replaces_atomically(lo: Loopback) -> None:
    (lo.root / "f").write_bytes(b"old contents")
    old_inode = (lo.root / "f").stat().st_ino
    make_file(lo.local / "f", 3 * MiB)
    async with lo.client() as session:
        await session.put(lo.local / "f", "f")
    assert (lo.root / "f").stat().st_size == 3 * MiB
    assert (lo.root / "f").stat().st_ino != old_inode  # renamed over, not rewritten


async def test_mode_and_mtime_are_preserved(lo: Loopback) -> None:
    src = lo.local / "script.sh"
    src.write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(src, 0o751)
    os.utime(src, ns=(1_600_000_000_123_456_789, 1_500_000_000_987_654_321))
    async with lo.client() as session:
        await session.put(src, "script.sh")
        os.chmod(lo.root / "script.sh", 0o640)
        os.utime(lo.root / "script.sh", ns=(1_400_000_000_000_000_000,) * 2)
        await session.get("script.sh", lo.local / "back.sh")
    up = (lo.root / "script.sh").stat()
    down = (lo.local / "back.sh").stat()
    assert stat.S_IMODE(down.st_mode) == 0o640
    assert down.st_mtime_ns == 1_400_000_000_000_000_000
    assert stat.S_IMODE(up.st_mode) == 0o640  # what we set after the put
    # and the put itself preserved what the source had:
    async with lo.client() as session:
        await session.put(src, "script2.sh")
    up = (lo.root / "script2.sh").stat()
    assert stat.S_IMODE(up.st_mode) == 0o751
    assert up.st_mtime_ns == 1_500_000_000_987_654_321


async def test_the_receiver_applies_its_umask_and_spares_existing_directories(
    lo: Loopback,
) -> None:
    src = lo.local / "open"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    os.chmod(src / "f", 0o777)
    os.chmod(src, 0o777)
    mine = lo.local / "copy" / "open"  # the get below merges into it
    mine.mkdir(parents=True)
    os.chmod(mine, 0o700)
    old_umask = os.umask(0o027)  # both ends are this process
    try:
        async with lo.client() as session:
            await session.put(src, "open", recursive=True)
            await session.get("open", lo.local / "copy", recursive=True)
    finally:
        os.umask(old_umask)
    for made in (lo.root / "open", lo.root / "open" / "f", mine / "f"):
        assert stat.S_IMODE(made.stat().st_mode) == 0o750, made
    assert stat.S_IMODE(mine.stat().st_mode) == 0o700  # it was there before: left alone


async def test_a_local_name_ending_in_a_slash_must_be_a_directory(lo: Loopback) -> None:
    (lo.root / "a.txt").write_bytes(b"a")
    async with lo.client() as session:
        with pytest.raises(ppcp.TransferError, match="does not exist"):
            await session.get("a.txt", f"{lo.local / 'nodir'}/")
        assert not (lo.local / "nodir").exists()
        (lo.local / "nodir").mkdir()
        await session.get("a.txt", f"{lo.local / 'nodir'}/")
    assert (lo.local / "nodir" / "a.txt").read_bytes() == b"a"


async def test_a_remote_path_ending_in_a_slash_must_be_a_directory(lo: Loopback) -> None:
    """``put a.txt :newdir/`` does not create a file named newdir (as cp and scp)."""
    (lo.local / "a.txt").write_bytes(b"a")
    (lo.local / "tree").mkdir()
    (lo.local / "tree" / "t").write_bytes(b"t")
    (lo.root / "file").write_bytes(b"f")
    async with lo.client() as session:
        with pytest.raises(ppcp.RemotePathError, match="'newdir/' does not exist"):
            await session.put(lo.local / "a.txt", "newdir/")
        with pytest.raises(ppcp.RemotePathError, match="'file/' is not a directory"):
            await session.put(lo.local / "a.txt", "file/")
        with pytest.raises(ppcp.RemotePathError, match="'file/' is not a directory"):
            await session.put(lo.local / "tree", "file/", recursive=True)
        with pytest.raises(ppcp.RemotePathError, match="'file/': not a directory"):
            await session.get("file/", lo.local / "got")
        assert not (lo.root / "newdir").exists() and not (lo.local / "got").exists()
        # A directory may be created under a name given with a slash (as cp -r a b/).
        await session.put(lo.local / "tree", "newtree/", recursive=True)
        (lo.root / "newdir").mkdir()
        up = await session.put(lo.local / "a.txt", "newdir/")
    assert up.path == "newdir/a.txt" and (lo.root / "newdir" / "a.txt").read_bytes() == b"a"
    assert (lo.root / "newtree" / "t").read_bytes() == b"t"
    assert (lo.root / "file").read_bytes() == b"f"


async def test_a_local_name_the_wire_cannot_carry_is_needed_only_if_used(
    lo: Loopback,
) -> None:
    """A file named with a newline or a non-UTF-8 byte can be sent under a valid name."""
    local = os.fsencode(lo.local)
    for raw, shown in ((b"new\nline", r"'new\x0aline'"), (b"bad\xffname", r"'bad\xffname'")):
        src = os.path.join(local, raw)
        with open(src, "wb") as f:
            f.write(raw)
        async with lo.client() as session:
            await session.put(os.fsdecode(src), "fine.txt")
            assert (lo.root / "fine.txt").read_bytes() == raw
            # Into a directory the name is needed: a clear refusal, nothing written.
            with pytest.raises(ppcp.TransferError) as info:
                await session.put(os.fsdecode(src), "")
        message = info.value.message
        assert shown in message and "give the copy a name in the remote path" in message
        assert "\\udc" not in message
    assert sorted(os.listdir(lo.root)) == ["fine.txt"]


async def test_symlinks_the_user_named_locally_are_followed(lo: Loopback, tmp_path: Path) -> None:
    """As cp: the destination the user names may be a symlink (to another disk, say)."""
    (lo.root / "a.txt").write_bytes(b"a")
    (lo.root / "photos").mkdir()
    (lo.root / "photos" / "p.jpg").write_bytes(b"p")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "photos").mkdir(parents=True)
    (lo.local / "link").symlink_to(elsewhere)
    (lo.local / "photos").symlink_to(elsewhere / "photos")
    async with lo.client() as session:
        await session.get("a.txt", lo.local / "link")
        await session.get("photos", lo.local, recursive=True)
    assert (elsewhere / "a.txt").read_bytes() == b"a"
    assert (elsewhere / "photos" / "p.jpg").read_bytes() == b"p"
    assert (lo.local / "photos").is_symlink()


async def test_times_before_1970_are_carried(lo: Loopback) -> None:
    old = -1_000_000_000_123_456_789  # 1938
    src = lo.local / "d"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    os.utime(src / "f", ns=(old, old))
    os.utime(src, ns=(old, old))
    async with lo.client() as session:
        await session.put(src, "d", recursive=True)
        await session.get("d/f", lo.local / "back")
    assert (lo.root / "d" / "f").stat().st_mtime_ns == old
    assert (lo.root / "d").stat().st_mtime_ns == old
    assert (lo.local / "back").stat().st_mtime_ns == old


async def test_setuid_bits_are_not_transferred(lo: Loopback) -> None:
    src = lo.local / "tool"
    src.write_bytes(b"x")
    os.chmod(src, 0o4755)
    async with lo.client() as session:
        await session.put(src, "tool")
    assert stat.S_IMODE((lo.root / "tool").stat().st_mode) == 0o755


async def test_progress_is_monotonic_with_the_right_total(
    lo: Loopback, caps: tuple[str, ...]
) -> None:
    size = 6 * MiB + 7
    make_file(lo.local / "p.bin", size)
    for direction in ("put", "get"):
        calls: list[tuple[int, int, float]] = []

        def progress(done: int, total: int, rate: float, calls: list = calls) -> None:  # type: ignore[type-arg]
            calls.append((done, total, rate))

        async with lo.client(caps) as session:
            if direction == "put":
                await session.put(lo.local / "p.bin", "p.bin", progress=progress)
            else:
                await session.get("p.bin", lo.local / "q.bin", progress=progress)
        dones = [c[0] for c in calls]
        assert len(calls) >= size // BULK_CHUNK, direction  # once per piece at least
        assert dones == sorted(dones) and len(set(dones)) == len(dones)
        assert dones[-1] == size
        assert {c[1] for c in calls} == {size}
        assert all(c[2] >= 0 for c in calls) and calls[-1][2] > 0


def build_tree(top: Path) -> None:
    (top / "a" / "b" / "c").mkdir(parents=True)
    (top / "empty").mkdir()
    (top / "a" / "empty-too").mkdir()
    make_file(top / "top.bin", 2 * MiB + 3)
    make_file(top / "a" / "one.bin", 1000, b"one")
    make_file(top / "a" / "b" / "two.bin", MiB, b"two")
    (top / "a" / "b" / "c" / "zero").write_bytes(b"")
    os.chmod(top / "a" / "one.bin", 0o600)
    os.chmod(top / "a" / "b", 0o750)


async def test_recursive_put_and_get(lo: Loopback, caps: tuple[str, ...]) -> None:
    src = lo.local / "tree"
    src.mkdir()
    build_tree(src)
    os.utime(src / "a", ns=(1_000_000_000_000_000_000,) * 2)
    expected = tree_snapshot(src)
    async with lo.client(caps) as session:
        up = await session.put(src, "", recursive=True)
        assert up.path == "tree"
        assert (up.files, up.directories) == (4, 6)
        assert up.bytes == 2 * MiB + 3 + 1000 + MiB
        assert tree_snapshot(lo.root / "tree") == expected
        assert (lo.root / "tree" / "a").stat().st_mtime_ns == 1_000_000_000_000_000_000
        # get into an existing directory: lands inside it, as "tree"
        (lo.local / "copies").mkdir()
        down = await session.get("tree", lo.local / "copies", recursive=True)
        assert (down.files, down.directories, down.path) == (
            4,
            6,
            str(lo.local / "copies" / "tree"),
        )
    assert tree_snapshot(lo.local / "copies" / "tree") == expected
    async with lo.client(caps) as session:
        fresh = lo.local / "fresh"  # does not exist: becomes the copy itself
        down = await session.get("tree", fresh, recursive=True)
        assert down.path == str(fresh) and down.files == 4
    assert tree_snapshot(fresh) == expected


async def test_directories_need_recursive(lo: Loopback) -> None:
    (lo.local / "d").mkdir()
    (lo.root / "rd").mkdir()
    async with lo.client() as session:
        with pytest.raises(ppcp.TransferError, match="recursive"):
            await session.put(lo.local / "d", "d")
        with pytest.raises(ppcp.TransferError, match="recursive"):
            await session.get("rd", lo.local / "rd")
        # The session survives channel errors.
        make_file(lo.local / "ok", 10)
        await session.put(lo.local / "ok", "ok")
    assert not (lo.local / "rd").exists()


async def test_missing_paths_are_clear_errors(lo: Loopback) -> None:
    async with lo.client() as session:
        with pytest.raises(ppcp.TransferError, match="no-such-file"):
            await session.put(lo.local / "no-such-file", "x")
        with pytest.raises(ppcp.RemotePathError, match="nope"):
            await session.get("nope", lo.local / "x")
        with pytest.raises(ppcp.RemotePathError, match="does not exist"):
            await session.put(__file__, "missing-dir/x")


async def test_recursive_transfer_skips_special_files(lo: Loopback) -> None:
    src = lo.local / "s"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_bytes(b"f")
    os.mkfifo(src / "fifo")
    os.symlink("sub/f", src / "link-to-file")
    os.symlink("sub", src / "link-to-dir")
    async with lo.client() as session:
        up = await session.put(src, "", recursive=True)
    assert sorted(os.listdir(lo.root / "s")) == ["link-to-file", "sub"]
    assert (lo.root / "s" / "link-to-file").read_bytes() == b"f"  # followed: a copy
    assert any("fifo" in s and "FIFO" in s for s in up.skipped)
    assert any("link-to-dir" in s for s in up.skipped)


def with_part_files(top: Path) -> None:
    """A tree holding another transfer's unfinished data: a part file and a part directory."""
    (top / "sub").mkdir(parents=True)
    (top / "keep.txt").write_text("keep")
    (top / "sub" / ".half.bin.ppcp-part").write_bytes(b"half")
    (top / ".new-tree.ppcp-part").mkdir()
    (top / ".new-tree.ppcp-part" / "x").write_text("x")


@pytest.mark.parametrize("direction", ["put", "get"])
async def test_part_files_are_left_out_silently(lo: Loopback, direction: str) -> None:
    """Unfinished part files are another transfer's data, not the user's: not sent, not
    reported as skipped (which would fail the copy with exit 1)."""
    async with lo.client() as session:
        if direction == "get":
            with_part_files(lo.root / "t")
            result = await session.get("t", lo.local / "t", recursive=True)
            copy = lo.local / "t"
        else:
            with_part_files(lo.local / "t")
            result = await session.put(lo.local / "t", "t", recursive=True)
            copy = lo.root / "t"
    assert result.skipped == ()
    assert (result.files, result.directories) == (1, 2)
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*")) == ["keep.txt", "sub"]


async def test_part_files_reported_by_an_older_sender_are_not_counted(
    lo: Loopback, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server from before sends 'skip' for its part files; the copy is still complete."""
    from ppcp.control import files
    from ppcp.control.transfer import SendSkip

    with_part_files(lo.root / "t")
    real = files.remote_items

    def older(tree, base):  # type: ignore[no-untyped-def]
        items, total = real(tree, base)
        old = "unfinished transfer (part file)"
        return [SendSkip("sub/.half.bin.ppcp-part", old), *items], total

    monkeypatch.setattr(files, "remote_items", older)
    async with lo.client() as session:
        result = await session.get("t", lo.local / "t", recursive=True)
    assert result.skipped == () and (lo.local / "t" / "keep.txt").read_text() == "keep"


async def test_compression_path(dirs: tuple[Path, Path]) -> None:
    root, local = dirs
    digest = text_file(local / "text.txt", 3 * MiB + 5)
    make_file(local / "random.bin", MiB + 9)  # zlib does not help: stored blocks
    async with loopback(root, local) as lo:
        for caps in (SUPPORTED_CAPABILITIES, NO_BINARY):
            async with lo.client(caps) as session:
                up = await session.put(local / "text.txt", "text.txt", compress=True, checksum=True)
                assert up.compressed and up.sha256 == digest
                await session.put(local / "random.bin", "random.bin", compress=True)
                down = await session.get(
                    "text.txt", local / "back.txt", compress=True, checksum=True
                )
                assert down.compressed and down.sha256 == digest
            assert sha256_file(root / "random.bin") == sha256_file(local / "random.bin")
            assert sha256_file(local / "back.txt") == digest
    # compress=True without zlib negotiated: sent uncompressed, and says so.
    async with loopback(root, local, capabilities=NO_ZLIB) as lo, lo.client() as session:
        up = await session.put(local / "text.txt", "plain.txt", compress=True, checksum=True)
        assert not up.compressed and up.sha256 == digest


async def test_policy_can_disable_files(dirs: tuple[Path, Path]) -> None:
    root, local = dirs
    make_file(local / "f", 10)
    policy = ServerPolicy(root=root, allow_files=False)
    async with loopback(root, local, policy=policy) as lo, lo.client() as session:
        with pytest.raises(ppcp.PolicyDenied):
            await session.put(local / "f", "f")
        with pytest.raises(ppcp.PolicyDenied):
            await session.get("f", local / "g")


async def test_concurrent_transfers_on_one_session(lo: Loopback) -> None:
    digests = [make_file(lo.local / f"c{i}", 2 * MiB + i, bytes([i])) for i in range(4)]
    async with lo.client() as session:
        results = await asyncio.gather(
            *(session.put(lo.local / f"c{i}", f"c{i}", checksum=True) for i in range(4))
        )
    assert [r.sha256 for r in results] == digests
    assert [sha256_file(lo.root / f"c{i}") for i in range(4)] == digests


def test_blocking_api(dirs: tuple[Path, Path]) -> None:
    root, local = dirs
    digest = make_file(local / "b.bin", 2 * MiB + 1)

    async def start() -> ppcp.aio.Server:
        from files_helpers import serve_kwargs

        return await ppcp.aio.serve(
            "127.0.0.1",
            0,
            PSK,
            config=config(),
            policy=ServerPolicy(root=root),
            **serve_kwargs(),
        )

    from ppcp.transport.blocking import run

    server = run(start())
    try:
        seen: list[int] = []
        with ppcp.connect("127.0.0.1", server.port, PSK, config=config()) as session:
            up = session.put(
                local / "b.bin", "b.bin", progress=lambda d, t, r: seen.append(d), checksum=True
            )
            down = session.get("b.bin", str(local / "c.bin"), checksum=True)
        assert isinstance(up, ppcp.TransferResult)
        assert up.sha256 == down.sha256 == digest == sha256_file(local / "c.bin")
        assert seen[-1] == 2 * MiB + 1
    finally:
        run(server.aclose())
