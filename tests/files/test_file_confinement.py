"""Hostile peers: crafted paths and raw channels against the server, and a lying server.

Every test checks two things: the right error (class and a readable message
with no raw control characters), and that nothing outside the root (or the
client's destination) was read, created or changed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from files_helpers import Loopback, MiB, loopback, make_file

import ppcp
from ppcp.control import files
from ppcp.control.aio_channel import AsyncChannel, encode_json
from ppcp.control.router import ServerPolicy
from ppcp.control.transfer import current_umask
from ppcp.core.errors import CloseCode
from ppcp.transport.aio_driver import AsyncSession

SECRET = b"outside the root\n"


@pytest.fixture
def outside(dirs: tuple[Path, Path]) -> Path:
    """A directory next to the root (and to the client's directory) with a secret file."""
    path = dirs[0].parent / "outside"
    path.mkdir()
    (path / "secret").write_bytes(SECRET)
    return path


def put_request(path: str, name: str = "f", kind: str = "file", **extra: Any) -> bytes:
    return encode_json(
        {"v": 1, "path": path, "type": kind, "name": name, "resume": True, "zlib": False, **extra}
    )


def get_request(path: str, recursive: bool = False) -> bytes:
    return encode_json({"v": 1, "path": path, "recursive": recursive, "zlib": False})


def snapshot(top: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames:
            out[os.path.join(dirpath, name)] = None
        for name in filenames:
            p = os.path.join(dirpath, name)
            out[p] = None if os.path.islink(p) else Path(p).read_bytes()
    return out


def assert_readable(message: str) -> None:
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in message), message


async def refused(
    session: AsyncSession, kind: str, payload: bytes, error: type[ppcp.PPCPError]
) -> str:
    with pytest.raises(error) as info:
        await session.open_channel(kind, payload)
    assert info.value.remote
    assert_readable(info.value.message)
    return info.value.message


# -- the server refuses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("../x", "'..' is not allowed"),
        ("a/../../x", "'..' is not allowed"),
        ("/etc/passwd", "absolute paths are refused"),
        ("//etc/passwd", "absolute paths are refused"),
        ("evil\x1b[31mred", "control characters"),
        ("bell\x07", "control characters"),
        ("new\nline", "control characters"),
        ("c1\x9b31m", "control characters"),
        ("spoof\u202etxt.exe", "bidirectional"),
        ("x" * 256, "limited to 255 bytes"),
        ("a/" * 2048 + "b", "limited to 4096"),
    ],
)
async def test_bad_paths_are_refused(lo: Loopback, outside: Path, path: str, words: str) -> None:
    before = snapshot(lo.root.parent)
    async with lo.client() as session:
        for kind, payload in (("file-put", put_request(path)), ("file-get", get_request(path))):
            message = await refused(session, kind, payload, ppcp.RemotePathError)
            assert words in message
        # The session is still usable.
        make_file(lo.local / "ok", 5)
        await session.put(lo.local / "ok", "ok")
    after = snapshot(lo.root.parent)
    assert after.pop(str(lo.root / "ok")) is not None
    assert after.pop(str(lo.local / "ok")) is not None
    assert after == before


async def test_bad_names_in_the_open_payload(lo: Loopback) -> None:
    async with lo.client() as session:
        for name in ("..", ".", "a/b", "", "esc\x1b]0;title\x07", "x" * 256):
            await refused(session, "file-put", put_request("", name), ppcp.RemotePathError)
    assert list(lo.root.iterdir()) == []


async def test_the_public_api_gets_the_same_answers(lo: Loopback, outside: Path) -> None:
    make_file(lo.local / "f", 10)
    async with lo.client() as session:
        with pytest.raises(ppcp.RemotePathError, match="absolute"):
            await session.get("/etc/passwd", lo.local / "passwd")
        with pytest.raises(ppcp.RemotePathError, match=r"'\.\.'"):
            await session.put(lo.local / "f", "../outside/f")
    assert not (lo.local / "passwd").exists()
    assert sorted(os.listdir(outside)) == ["secret"]


async def test_symlink_escapes(lo: Loopback, outside: Path) -> None:
    os.symlink(outside, lo.root / "out-dir")  # absolute target
    os.symlink("../outside/secret", lo.root / "out-file")  # relative target
    os.symlink("/etc/passwd", lo.root / "passwd")
    os.makedirs(lo.root / "deep" / "er")
    os.symlink("../../../outside", lo.root / "deep" / "er" / "up")
    make_file(lo.local / "f", 100)
    before = snapshot(outside)
    async with lo.client() as session:
        for path in ("out-dir/secret", "out-file", "passwd", "deep/er/up/secret"):
            message = await refused(session, "file-get", get_request(path), ppcp.RemotePathError)
            assert "outside the root" in message
        # get -r of a tree holding them: skipped, and said so
        result = await session.get("", lo.local / "all", recursive=True)
        assert sorted(os.listdir(lo.local / "all")) == ["deep"]
        assert sum("outside the root" in s for s in result.skipped) == 4
        # put through them: refused, nothing written outside
        for path in ("out-dir", "out-dir/new", "deep/er/up/new"):
            await refused(session, "file-put", put_request(path), ppcp.RemotePathError)
        # a name that is a symlink to outside: not overwritten through the link
        with pytest.raises(ppcp.RemotePathError, match="outside the root"):
            await session.put(lo.local / "f", "out-file")
        with pytest.raises(ppcp.RemotePathError, match="outside the root"):
            await session.put(lo.local / "f", "passwd")
    assert snapshot(outside) == before
    assert os.readlink(lo.root / "out-file") == "../outside/secret"


async def test_symlinks_inside_the_root_are_followed(lo: Loopback) -> None:
    (lo.root / "real").mkdir()
    os.symlink("real", lo.root / "alias")
    os.symlink("/" + str(lo.root.resolve()).lstrip("/") + "/real/target.bin", lo.root / "abs")
    digest = make_file(lo.local / "target.bin", 1000)
    async with lo.client() as session:
        up = await session.put(lo.local / "target.bin", "alias")
        assert up.path == "real/target.bin"
        down = await session.get("abs", lo.local / "via-abs", checksum=True)
        assert down.sha256 == digest
        # put to a name that is an in-root symlink to a file: the file is replaced
        await session.put(lo.local / "target.bin", "abs")
    assert os.path.islink(lo.root / "abs")


async def test_symlink_then_same_name_during_a_recursive_put(lo: Loopback, outside: Path) -> None:
    """Entries of a put cannot be steered through a symlink that appears in the tree."""
    os.makedirs(lo.root / "t")
    os.symlink(outside, lo.root / "t" / "sub")
    before = snapshot(outside)
    async with lo.client() as session:
        # The upload is named "t" and "t" exists: its entries go below root/t,
        # where "sub" is already a symlink to outside.
        channel = await session.open_channel("file-put", put_request("", "t", "dir"))
        await channel.send_json("dir", {"path": "", "mode": 0o755, "mtime_ns": 0})
        await channel.send_json("dir", {"path": "sub", "mode": 0o755, "mtime_ns": 0})
        await channel.send_json(
            "file", {"path": "sub/secret", "size": 3, "mode": 0o644, "mtime_ns": 0}
        )
        code, reason = await channel.wait_closed()
    assert code == CloseCode.PATH_REFUSED, reason
    assert "outside the root" in reason
    assert snapshot(outside) == before


async def test_entries_cannot_climb_out(lo: Loopback, outside: Path) -> None:
    before = snapshot(lo.root.parent)
    bad_entries = [
        ("dir", {"path": "../../outside/new", "mode": 0o755, "mtime_ns": 0}),
        ("file", {"path": "/tmp/x", "size": 1, "mode": 0o644, "mtime_ns": 0}),
        ("file", {"path": "a\x1b[0mb", "size": 1, "mode": 0o644, "mtime_ns": 0}),
        ("file", {"path": "ok", "size": -1, "mode": 0o644, "mtime_ns": 0}),
        ("file", {"path": "ok", "size": 1, "mode": "rwx", "mtime_ns": 0}),
        ("file", {"path": 7, "size": 1, "mode": 0o644, "mtime_ns": 0}),
        ("bogus", {}),
    ]
    async with lo.client() as session:
        for name, entry in bad_entries:
            channel = await session.open_channel("file-put", put_request("t", "t", "dir"))
            await channel.send_json(name, entry)
            code, reason = await channel.wait_closed()
            assert code in (CloseCode.PATH_REFUSED, CloseCode.CHANNEL_ERROR), (name, entry)
            assert_readable(reason)
    after = snapshot(lo.root.parent)
    assert {k for k in after if k not in before} <= {str(lo.root / "t")}


async def test_malformed_requests_do_not_hurt_the_session(lo: Loopback) -> None:
    payloads = [
        b"not json",
        b"[1, 2]",
        encode_json({"v": 2, "path": "x", "type": "file", "name": "x"}),
        encode_json({"v": 1, "path": 5, "type": "file", "name": "x"}),
        encode_json({"v": 1, "path": "x", "type": "symlink", "name": "x"}),
        encode_json({"v": 1, "path": "x", "type": "file", "name": "x", "resume": "yes"}),
        *(
            encode_json({"v": 1, "path": "x", "type": "dir", "name": "x", "source": bad})
            for bad in (5, "", "0" * 15, "0" * 17, "ABCDEF0123456789", "../0123456789ab")
        ),
    ]
    async with lo.client() as session:
        for payload in payloads:
            with pytest.raises(ppcp.ChannelError):
                await session.open_channel("file-put", payload)
        with pytest.raises(ppcp.ChannelError):
            await session.open_channel("file-get", b"\xff\xfe")
        assert not session.is_closed


async def test_special_files_are_refused(lo: Loopback, outside: Path) -> None:
    os.mkfifo(lo.root / "fifo")
    os.symlink("/dev/null", lo.root / "null")
    devices = ["fifo"]
    try:
        os.mknod(lo.root / "zero", stat.S_IFCHR | 0o600, os.makedev(1, 5))
        devices.append("zero")
    except PermissionError:
        pass  # not root: the FIFO and the /dev/null symlink still cover the checks
    make_file(lo.local / "f", 10)
    async with lo.client() as session:
        message = await refused(session, "file-get", get_request("null"), ppcp.RemotePathError)
        assert "outside the root" in message
        for name in devices:
            message = await refused(session, "file-get", get_request(name), ppcp.RemotePathError)
            assert "FIFO" in message or "character device" in message
            message = await refused(session, "file-put", put_request(name), ppcp.RemotePathError)
            assert "refusing" in message
        with pytest.raises(ppcp.TransferError, match="FIFO"):
            await session.put(lo.root / "fifo", "x")  # the client checks its side too
    assert stat.S_ISFIFO(os.lstat(lo.root / "fifo").st_mode)


async def test_part_file_tricks(lo: Loopback, outside: Path) -> None:
    """A pre-planted part file cannot redirect or alias the write."""
    digest = make_file(lo.local / "f", MiB)
    os.symlink(outside / "secret", lo.root / ".link.ppcp-part")
    os.link(outside / "secret", lo.root / ".hard.ppcp-part")
    async with lo.client() as session:
        with pytest.raises(ppcp.RemotePathError, match="part file is a symlink"):
            await session.put(lo.local / "f", "link")
        result = await session.put(
            lo.local / "f", "hard", checksum=True
        )  # hard link: replaced, not written
    assert result.sha256 == digest and result.resumed_from == 0
    assert (outside / "secret").read_bytes() == SECRET
    assert hashlib.sha256((lo.root / "hard").read_bytes()).hexdigest() == digest


# -- the client refuses a lying server -------------------------------------------------------


EvilServer = Callable[[AsyncChannel], Awaitable[None]]


async def run_against(
    dirs: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    evil: EvilServer,
    local: Path,
    recursive: bool = True,
) -> tuple[BaseException, tuple[int, str]]:
    closed: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()

    async def serve_get(channel: AsyncChannel, policy: ServerPolicy) -> None:
        await evil(channel)
        closed.set_result(await channel.wait_closed())

    monkeypatch.setattr(files, "serve_get", serve_get)
    async with loopback(*dirs) as lo, lo.client() as session:
        with pytest.raises(ppcp.PPCPError) as info:
            # "d", the name answer() gives by default: the client names what it writes
            # after its request, so a test of where entries land must ask for that name.
            await session.get("d", local, recursive=recursive)
        assert not info.value.remote
        assert_readable(info.value.message)
        code_reason = await asyncio.wait_for(closed, 10)
    return info.value, code_reason


def answer(kind: str = "dir", name: str = "d", size: int = 1) -> bytes:
    return encode_json({"v": 1, "type": kind, "name": name, "size": size, "files": 1})


def entry(name: str, path: str, size: int = 1, mode: int = 0o644) -> tuple[str, bytes]:
    obj: dict[str, Any] = {"path": path, "mode": mode, "mtime_ns": 0}
    if name == "file":
        obj["size"] = size
    return name, encode_json(obj)


def sends(*requests: tuple[str, bytes], accept: bytes | None = None) -> EvilServer:
    async def evil(channel: AsyncChannel) -> None:
        channel.accept(accept or answer())
        for name, payload in requests:
            await channel.send_request(name, payload)

    return evil


@pytest.mark.parametrize(
    "evil",
    [
        sends(entry("dir", "../escape")),
        sends(entry("dir", "sub/../../escape")),
        sends(entry("file", "../escape")),
        sends(entry("file", "/tmp/escape")),
        sends(entry("file", "ok\x1b[2Jescape")),
        sends(accept=answer("dir", "../escape")),
        sends(accept=answer("file", "..")),
        sends(accept=answer("file", "a/b")),
        sends(accept=answer("file", "esc\x1b]2;pwned\x07")),
        sends(entry("file", "escape"), accept=answer("file", "f")),  # single file at a sub-path
        sends(entry("dir", ""), accept=answer("file", "f")),  # dir entry in a single-file get
    ],
    ids=[
        "dir-dotdot",
        "dir-nested-dotdot",
        "file-dotdot",
        "file-absolute",
        "file-ansi",
        "name-dotdot-dir",
        "name-dotdot-file",
        "name-slash",
        "name-osc",
        "single-file-subpath",
        "single-file-dir-entry",
    ],
)
async def test_client_refuses_a_malicious_server(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, evil: EvilServer
) -> None:
    root, local = dirs
    dest = local / "dest"
    dest.mkdir()
    before = snapshot(root.parent)
    error, (code, _) = await run_against(dirs, monkeypatch, evil, dest)
    assert isinstance(error, ppcp.ChannelError)
    assert code in (CloseCode.PATH_REFUSED, CloseCode.CHANNEL_ERROR)
    after = snapshot(root.parent)
    new = {k for k in after if k not in before}
    assert all(k.startswith(str(dest)) for k in new), new
    assert not any("escape" in k for k in after)


async def test_client_refuses_a_symlink_in_its_destination(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, outside: Path
) -> None:
    _, local = dirs
    (local / "d").mkdir()
    os.symlink(outside, local / "d" / "sub")
    before = snapshot(outside)
    evil = sends(
        entry("dir", ""), entry("dir", "sub"), entry("file", "sub/secret", size=len(SECRET))
    )
    error, (code, reason) = await run_against(dirs, monkeypatch, evil, local)
    assert isinstance(error, ppcp.RemotePathError) and "outside the root" in error.message
    assert code == CloseCode.PATH_REFUSED and "outside the root" in reason
    assert snapshot(outside) == before


async def test_client_masks_dangerous_modes(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"#!/bin/sh\n"

    async def evil(channel: AsyncChannel) -> None:
        channel.accept(answer("file", "tool", len(data)))
        await channel.send_request(*entry("file", "", len(data), mode=0o6777))
        await next_request(channel, "ready")
        await channel.send_json("data", {"offset": 0})
        await channel.write(data)
        await channel.send_json("end", {"sha256": hashlib.sha256(data).hexdigest()})
        await next_request(channel, "done")
        await channel.send_json("finish", {})
        await next_request(channel, "finished")

    monkeypatch.setattr(files, "serve_get", lambda channel, policy: evil(channel))
    _, local = dirs
    async with loopback(*dirs) as lo, lo.client() as session:
        await session.get("tool", local, checksum=True)
    assert (local / "tool").read_bytes() == data
    assert stat.S_IMODE((local / "tool").stat().st_mode) == 0o777 & ~current_umask()


@pytest.mark.parametrize("kind", ["file", "dir"])
async def test_client_names_the_destination_after_its_request(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """A server answering `.bashrc` for photos/cat.jpg writes cat.jpg (scp's CVE-2019-6111)."""
    data = b"echo pwned\n"

    async def evil(channel: AsyncChannel) -> None:
        if kind == "file":
            channel.accept(answer("file", ".bashrc", len(data)))
            await channel.send_request(*entry("file", "", len(data)))
        else:
            channel.accept(answer("dir", ".ssh", len(data)))
            await channel.send_request(*entry("dir", ""))
            await channel.send_request(*entry("file", "authorized_keys", len(data)))
        await next_request(channel, "ready")
        await channel.send_json("data", {"offset": 0})
        await channel.write(data)
        await channel.send_json("end", {})
        await next_request(channel, "done")
        await channel.send_json("finish", {})
        await next_request(channel, "finished")

    monkeypatch.setattr(files, "serve_get", lambda channel, policy: evil(channel))
    _, local = dirs
    asked = "photos/cat.jpg" if kind == "file" else "photos/album/"
    async with loopback(*dirs) as lo, lo.client() as session:
        await session.get(asked, local, recursive=kind == "dir")
    landed = local / "cat.jpg" if kind == "file" else local / "album" / "authorized_keys"
    assert landed.read_bytes() == data
    assert sorted(p.name for p in local.iterdir()) == [landed.relative_to(local).parts[0]]


async def next_request(channel: AsyncChannel, name: str) -> dict[str, Any]:
    request = await channel.next_request()
    assert request is not None and request[0] == name, request
    return json.loads(request[1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("asked", [False, True])
async def test_end_must_match_the_checksum_choice(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, asked: bool
) -> None:
    """A digest the client did not ask for, or a missing one it did ask for, is an error."""
    data = b"payload"

    async def server(channel: AsyncChannel) -> None:
        channel.accept(answer("file", "f", len(data)))
        await channel.send_request(*entry("file", "", len(data)))
        await next_request(channel, "ready")
        await channel.send_json("data", {"offset": 0})
        await channel.write(data)
        # The opposite of what the client asked for.
        await channel.send_json(
            "end", {} if asked else {"sha256": hashlib.sha256(data).hexdigest()}
        )
        await channel.wait_closed()

    monkeypatch.setattr(files, "serve_get", lambda channel, policy: server(channel))
    _, local = dirs
    async with loopback(*dirs) as lo, lo.client() as session:
        with pytest.raises(ppcp.ChannelError, match=r"sha256|checksum"):
            await session.get("f", local, checksum=asked)
        assert (await session.exec(["true"])).exit_code == 0  # only the channel failed
    assert not (local / "f").exists()
