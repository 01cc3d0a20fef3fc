"""Files service: ``put``/``get`` for clients, ``file-put``/``file-get`` for servers.

The exchange itself (entries, resume, chunks, verification) lives in
:mod:`ppcp.control.transfer` and is the same in both directions; path
confinement lives in :mod:`ppcp.control.paths`.  This module decides *what*
is sent and *where* it lands, with scp's rules: a file sent to an existing
directory goes inside it, and directories need ``recursive=True``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO

from ppcp.control.aio_channel import decode_json, encode_json
from ppcp.control.paths import (
    MAX_PATH_BYTES,
    SOURCE_ID_DIGITS,
    Tree,
    check_name,
    display,
    is_part_name,
    join,
    kind_of,
    open_regular,
    parse_wire_path,
    quote,
    source_id,
)
from ppcp.control.transfer import (
    PART_TTL,
    PROTOCOL,
    Encoding,
    Progress,
    ProgressCallback,
    Receiver,
    SendDir,
    SendFile,
    SendItem,
    SendSkip,
    Stats,
    TransferResult,
    abort,
    channel_code,
    choose_encoding,
    field_bool,
    field_str,
    field_uint,
    send_entries,
    send_stream,
    stream_name,
)
from ppcp.core.errors import (
    ChannelError,
    CloseCode,
    PPCPError,
    RemotePathError,
    TransferError,
)

if TYPE_CHECKING:
    from ppcp.control.aio_channel import AsyncChannel
    from ppcp.control.router import ServerPolicy
    from ppcp.transport.aio_driver import AsyncSession

__all__ = ["TransferResult", "get_files", "put_files", "serve_get", "serve_put"]

log = logging.getLogger("ppcp.server")

CAPABILITY = "files"
MAX_ENTRIES = 1_000_000  # entries in one recursive transfer
LocalPath = str | os.PathLike[str]
NAME_NEEDED = "the source has no usable name: give one in the path"
# The end of the error for a stream put to a directory: the CLI words it in its own terms.
STREAM_NAME_NEEDED = "has no name: give the copy one in the remote path"


# -- client ----------------------------------------------------------------------------------


async def put_files(
    session: AsyncSession,
    local: LocalPath | BinaryIO,
    remote: str,
    recursive: bool,
    progress: ProgressCallback | None,
    resume: bool,
    compress: bool,
    checksum: bool,
) -> TransferResult:
    if not isinstance(remote, str):
        raise TypeError("the remote path must be a str")
    if not isinstance(local, str | os.PathLike):
        if recursive:
            raise ValueError("recursive=True needs a local directory, not a stream")
        return await put_stream(session, local, remote, progress, compress, checksum)
    src = os.path.abspath(os.fspath(local))
    try:
        st = os.stat(src)
    except OSError as exc:
        raise TransferError(f"local path {quote(src)}: {exc.strerror}") from None
    name = os.path.basename(src) or "root"
    # The name is needed only if the destination is a directory (scp's rule): a
    # file the wire cannot name may still be sent under a name given in ``remote``.
    try:
        wire_name, unusable = check_name(name, "local name"), ""
    except RemotePathError as exc:
        wire_name, unusable = "", exc.message
    source = None
    if stat.S_ISDIR(st.st_mode):
        if not recursive:
            raise TransferError(f"{quote(src)} is a directory (use recursive=True)")
        kind = "dir"
        items, total = await asyncio.to_thread(local_items, src)
        # The same each time this directory is sent from this machine, so running an
        # interrupted copy again continues it; another source gets its own part directory.
        source = source_id(socket.gethostname(), os.fsencode(os.path.realpath(src)))
    elif stat.S_ISREG(st.st_mode):
        kind = "file"
        items, total = [SendFile((), st.st_size, local_opener(src), quote(src))], st.st_size
    else:
        raise TransferError(
            f"{quote(src)} is a {kind_of(st.st_mode)}; only regular files and directories "
            "can be sent"
        )
    require_files(session)
    encoding = choose_encoding(session.capabilities, compress, checksum)
    request = {
        "v": PROTOCOL,
        "path": remote,
        "type": kind,
        "name": wire_name,
        "resume": resume,
        "zlib": encoding.zlib,
        "checksum": encoding.checksum,
    }
    if source is not None:
        request["source"] = source
    try:
        channel = await session.open_channel("file-put", encode_json(request))
    except RemotePathError as exc:
        if unusable and exc.message.endswith(NAME_NEEDED):
            raise TransferError(f"{unusable}; give the copy a name in the remote path") from None
        raise
    tracker = Progress(progress, total)
    stats = Stats()
    try:
        answer = decode_json(channel.open_payload, "file-put answer")
        dest = field_str(answer, "path", "file-put answer")
        await send_entries(channel, encoding, items, tracker, stats)
    except BaseException as exc:
        await abort(channel, exc)
        raise
    await channel.close()
    return stats.result(tracker, dest, encoding, single=kind == "file")


async def put_stream(
    session: AsyncSession,
    source: BinaryIO,
    remote: str,
    progress: ProgressCallback | None,
    compress: bool,
    checksum: bool,
) -> TransferResult:
    """Upload what ``source`` holds until its end (stdin): a ``"type": "stream"`` transfer."""
    require_files(session)
    encoding = choose_encoding(session.capabilities, compress, checksum)
    shown = stream_name(source, "input")
    request = {
        "v": PROTOCOL,
        "path": remote,
        "type": "stream",
        "name": "",  # a stream has none: the remote path names the file
        "resume": False,
        "zlib": encoding.zlib,
        "checksum": encoding.checksum,
    }
    try:
        channel = await session.open_channel("file-put", encode_json(request))
    except RemotePathError as exc:
        if exc.message.endswith(NAME_NEEDED):
            raise TransferError(f"{shown} {STREAM_NAME_NEEDED}") from None
        raise
    except ChannelError as exc:
        # A server from before streams refuses the type it does not know, as it must.
        if type(exc) is ChannelError and exc.remote:
            raise TransferError(
                f"the server refused a copy from a stream ({exc.message}); it is probably "
                "older than this client: save the data to a file and put that"
            ) from None
        raise
    tracker = Progress(progress, 0)
    stats = Stats()
    try:
        answer = decode_json(channel.open_payload, "file-put answer")
        dest = field_str(answer, "path", "file-put answer")
        await send_stream(channel, encoding, source, tracker, stats, shown)
    except BaseException as exc:
        await abort(channel, exc)
        raise
    await channel.close()
    return stats.result(tracker, dest, encoding, single=True)


async def get_files(
    session: AsyncSession,
    remote: str,
    local: LocalPath | BinaryIO,
    recursive: bool,
    progress: ProgressCallback | None,
    resume: bool,
    compress: bool,
    checksum: bool,
) -> TransferResult:
    if not isinstance(remote, str):
        raise TypeError("the remote path must be a str")
    require_files(session)
    # What lands locally is named after what was asked for, never after what the
    # server says (as scp was made to do after CVE-2019-6111): a server that can
    # choose the name can write ./.bashrc when asked for photos/cat.jpg.  Only a
    # request for the root itself has no name of its own.
    requested = parse_wire_path(remote)
    sink = None if isinstance(local, str | os.PathLike) else local
    if sink is not None and recursive:
        raise ValueError("recursive=True needs a local directory, not a stream")
    encoding = choose_encoding(session.capabilities, compress, checksum)
    request = {
        "v": PROTOCOL,
        "path": remote,
        "recursive": recursive,
        "zlib": encoding.zlib,
        "checksum": encoding.checksum,
    }
    channel = await session.open_channel("file-get", encode_json(request))
    try:
        answer = decode_json(channel.open_payload, "file-get answer")
        kind = field_str(answer, "type", "file-get answer")
        name = check_name(field_str(answer, "name", "file-get answer"), "name sent by the server")
        if requested:
            name = requested[-1]
        total = field_uint(answer, "size", "file-get answer")
        if kind not in ("file", "dir") or (kind == "dir" and not recursive):
            raise ChannelError(f"unexpected file-get answer type {kind!r}")
        if isinstance(local, str | os.PathLike):
            tree, base, shown = local_destination(local, kind, name)
        else:
            # Nothing is stored under a name: the tree is only the Receiver's to hold.
            tree, base, shown = Tree(os.curdir), (), stream_name(local, "output")
        tracker = Progress(progress, total)
        stats = Stats()
        receiver = Receiver(
            channel,
            encoding,
            tree,
            base,
            resume and sink is None,
            tracker,
            stats,
            single=kind == "file",
            # What the tree is copied from, as for a put (RFC 16.7): this server's tree.
            source=source_id(session.server_name, join(requested)),
            sink=sink,
        )
        await receiver.run()
    except BaseException as exc:
        await abort(channel, exc)
        raise
    await channel.close()
    return stats.result(tracker, shown, encoding, single=kind == "file")


def require_files(session: AsyncSession) -> None:
    session.raise_if_failed()
    if CAPABILITY not in session.capabilities:
        raise ChannelError(f"the peer does not offer {CAPABILITY!r} (no file transfer service)")


def local_destination(local: LocalPath, kind: str, name: str) -> tuple[Tree, tuple[str, ...], str]:
    """(confining tree, base below it, display path) for what a get writes locally.

    The tree is the directory the user named (or the parent of a file they
    named): nothing the server sends can land outside it.  Symlinks in what the
    user named (``local``, and ``local/name`` when ``local`` is a directory:
    both chosen here, not by the server) are followed, as cp follows them.
    """
    given = os.fspath(local)
    dest = os.path.abspath(given)
    if os.path.isdir(dest):
        shown = os.path.join(dest, name)
        if os.path.islink(shown) and os.path.isdir(shown):
            return Tree(os.path.realpath(shown)), (), shown
        return Tree(os.path.realpath(dest)), (name,), shown
    if kind == "file" and given.endswith(os.sep):
        # "dir/" names a directory: a file is not saved under that name instead (as cp).
        raise TransferError(f"local directory {quote(dest)} does not exist")
    # A new directory is created by the receiver, under a part name until complete.
    parent, leaf = os.path.split(os.path.realpath(dest))
    if not os.path.isdir(parent):
        raise TransferError(f"local directory {quote(parent)} does not exist")
    return Tree(parent), (leaf,), dest


def local_opener(path: str) -> Callable[[], int]:
    def open_local() -> int:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise TransferError(f"cannot open {quote(path)}: {exc.strerror}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise TransferError(f"{quote(path)} is a {kind_of(st.st_mode)}, not a regular file")
        os.set_blocking(fd, True)
        return fd

    return open_local


def local_items(top: str) -> tuple[list[SendItem], int]:
    """Everything below the local directory ``top``, parents before children.

    Symlinks to files are followed; symlinks to directories, special files and
    names the wire cannot carry are skipped (and reported).  Part files are left
    out unreported: they hold another transfer's unfinished data, not the user's.
    """
    st = os.stat(top)
    items: list[SendItem] = [SendDir((), stat.S_IMODE(st.st_mode), st.st_mtime_ns)]
    total = 0
    stack: list[tuple[str, ...]] = [()]
    while stack:
        rel = stack.pop()
        path = os.path.join(top, *rel)
        try:
            with os.scandir(path) as it:
                entries = sorted((e.name, e.is_symlink()) for e in it)
        except OSError as exc:
            if not rel:
                raise TransferError(f"cannot list {quote(path)}: {exc.strerror}") from None
            # Its dir entry is sent (it is created, empty); what it holds is reported.
            items.append(SendSkip(display(join(rel)), f"cannot list: {exc.strerror}"))
            continue
        subdirs = []
        for name, is_link in entries:
            if is_part_name(name):
                continue
            child = (*rel, name)
            full = os.path.join(path, name)
            reason = skip_reason(name, child) or local_kind(full, is_link)
            if reason is not None:
                items.append(SendSkip(display(join(child)), reason))
                continue
            est = os.stat(full)
            if stat.S_ISDIR(est.st_mode):
                items.append(SendDir(child, stat.S_IMODE(est.st_mode), est.st_mtime_ns))
                subdirs.append(child)
            else:
                items.append(SendFile(child, est.st_size, local_opener(full), quote(full)))
                total += est.st_size
            if len(items) > MAX_ENTRIES:
                raise TransferError(f"{quote(top)} holds more than {MAX_ENTRIES} entries")
        stack.extend(reversed(subdirs))
    return items, total


def local_kind(path: str, is_link: bool) -> str | None:
    """Why a local entry is not sent (None for a directory or a regular file)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"cannot stat: {exc.strerror}"
    if stat.S_ISDIR(st.st_mode):
        return "symlink to a directory (not followed)" if is_link else None
    if stat.S_ISREG(st.st_mode):
        return None
    return f"{kind_of(st.st_mode)} (not transferred)"


def skip_reason(name: str, rel: tuple[str, ...]) -> str | None:
    """Why a listed name cannot be transferred, or None."""
    try:
        check_name(name)
    except RemotePathError:
        return "unsafe file name (control characters, invalid UTF-8 or too long)"
    if len(join(rel).encode("utf-8")) > MAX_PATH_BYTES:
        return f"path longer than {MAX_PATH_BYTES} bytes"
    return None


# -- server ----------------------------------------------------------------------------------------


def _open_request(channel: AsyncChannel, what: str) -> dict[str, Any]:
    request = decode_json(channel.open_payload, what)
    if request.get("v") != PROTOCOL:
        raise ChannelError(f"unsupported {what} version {request.get('v')!r}")
    return request


def _encoding(channel: AsyncChannel, request: dict[str, Any], what: str) -> Encoding:
    want_zlib = field_bool(request, "zlib", what)
    checksum = field_bool(request, "checksum", what)
    encoding = choose_encoding(channel.session.capabilities, want_zlib, checksum)
    if want_zlib and not encoding.zlib:
        raise ChannelError("zlib compression requested but not negotiated")
    return encoding


def _refuse(channel: AsyncChannel, exc: PPCPError) -> None:
    log.info("%s for %s refused: %s", channel.kind, channel.session.peer_name, exc.message)
    channel.reject(channel_code(exc), exc.message)


async def serve_put(channel: AsyncChannel, policy: ServerPolicy) -> None:
    """Receive what a client puts, below ``policy.root``."""
    if not policy.allow_files:
        channel.reject(CloseCode.POLICY_DENIED, "file transfer is disabled by the server's policy")
        return
    what = "file-put request"
    try:
        request = _open_request(channel, what)
        kind = field_str(request, "type", what)
        if kind not in ("file", "dir", "stream"):
            raise ChannelError(f"malformed {what}: 'type' must be 'file', 'dir' or 'stream'")
        tree = Tree(policy.root)
        path = field_str(request, "path", what)
        dest = await asyncio.to_thread(
            put_destination,
            tree,
            parse_wire_path(path),
            "dir" if kind == "dir" else "file",  # a stream lands where a file would
            field_str(request, "name", what),
            path.endswith("/"),
        )
        # A stream cannot be read again: it never resumes from a part file.
        resume = field_bool(request, "resume", what) and kind != "stream"
        encoding = _encoding(channel, request, what)
        source = request.get("source")
        if source is not None and (
            not isinstance(source, str)
            or len(source) != SOURCE_ID_DIGITS
            or source.strip("0123456789abcdef")
        ):
            raise ChannelError(
                f"malformed {what}: 'source' must be {SOURCE_ID_DIGITS} lowercase hex digits"
            )
    except PPCPError as exc:
        _refuse(channel, exc)
        return
    channel.accept(encode_json({"v": PROTOCOL, "path": join(dest)}))
    peer, shown = channel.session.peer_name, display(join(dest))
    log.info("put from %s: receiving %s %s", peer, kind, shown)
    progress, stats = Progress(None, 0), Stats()
    receiver = Receiver(
        channel,
        encoding,
        tree,
        dest,
        resume,
        progress,
        stats,
        single=kind != "dir",
        part_ttl=PART_TTL,
        source=source,
        stream=kind == "stream",
    )
    try:
        await receiver.run()
    except PPCPError as exc:
        log.warning("put from %s: %s failed: %s", peer, shown, exc.message)
        raise
    log.info(
        "put from %s: %s done, %d file(s), %d bytes received, %d resumed",
        peer,
        shown,
        stats.files,
        progress.moved,
        stats.resumed_from,
    )


def put_destination(
    tree: Tree, parts: tuple[str, ...], kind: str, name: str, slash: bool = False
) -> tuple[str, ...]:
    """Where a put of ``kind`` named ``name`` to ``parts`` lands (scp's rules).

    ``slash``: the path ended in ``/``, which names a directory: a file is not
    stored under that name instead (as cp and scp refuse ``a.txt newdir/``).
    """
    with tree.resolve(parts) as t:
        if slash and not t.is_dir and (kind == "file" or t.st is not None):
            state = "does not exist" if t.st is None else "is not a directory"
            raise RemotePathError(f"directory {quote(t.path + '/')} {state}")
        if t.is_dir:
            if not name:  # the client's own name for it cannot travel (RFC 16.3.2)
                raise RemotePathError(f"{quote(t.path)} is a directory; {NAME_NEEDED}")
            dest = (*t.parts, check_name(name))
        elif t.st is None or (kind == "file" and t.is_file):
            dest = t.parts
        elif kind == "dir":
            raise RemotePathError(f"{quote(t.path)} exists and is not a directory")
        else:
            assert t.st is not None
            raise RemotePathError(f"{quote(t.path)} is a {kind_of(t.st.st_mode)}; refusing it")
    with tree.resolve(dest) as d:
        if d.st is None:
            return d.parts
        if kind == "file" and d.is_dir:
            raise TransferError(f"cannot overwrite directory {quote(d.path)} with a file")
        if kind == "dir" and not d.is_dir:
            raise RemotePathError(f"{quote(d.path)} exists and is not a directory")
        if not (d.is_dir or d.is_file):
            raise RemotePathError(f"{quote(d.path)} is a {kind_of(d.st.st_mode)}; refusing it")
        return d.parts


async def serve_get(channel: AsyncChannel, policy: ServerPolicy) -> None:
    """Send what a client gets, from below ``policy.root``."""
    if not policy.allow_files:
        channel.reject(CloseCode.POLICY_DENIED, "file transfer is disabled by the server's policy")
        return
    what = "file-get request"
    try:
        request = _open_request(channel, what)
        recursive = field_bool(request, "recursive", what)
        encoding = _encoding(channel, request, what)
        tree = Tree(policy.root)
        path = field_str(request, "path", what)
        kind, name, items, total = await asyncio.to_thread(
            get_source, tree, parse_wire_path(path), recursive, path.endswith("/")
        )
    except PPCPError as exc:
        _refuse(channel, exc)
        return
    files = sum(isinstance(item, SendFile) for item in items)
    channel.accept(
        encode_json({"v": PROTOCOL, "type": kind, "name": name, "size": total, "files": files})
    )
    peer, shown = channel.session.peer_name, display(join(parse_wire_path(path)))
    log.info("get by %s: sending %s %s (%d file(s), %d bytes)", peer, kind, shown, files, total)
    progress = Progress(None, total)
    try:
        await send_entries(channel, encoding, items, progress, Stats())
    except PPCPError as exc:
        log.warning("get by %s: %s failed: %s", peer, shown, exc.message)
        raise
    log.info("get by %s: %s done, %d bytes sent", peer, shown, progress.moved)


def get_source(
    tree: Tree, parts: tuple[str, ...], recursive: bool, slash: bool = False
) -> tuple[str, str, list[SendItem], int]:
    """(kind, name, items, total bytes) for a get of ``parts`` (a directory if ``slash``)."""
    with tree.resolve(parts) as t:
        if t.st is None:
            raise RemotePathError(f"{quote(join(parts))}: no such file or directory")
        if slash and not t.is_dir:
            raise RemotePathError(f"{quote(t.path + '/')}: not a directory")
        name = t.name if t.name != "." else (os.path.basename(tree.root) or "root")
        if t.is_file:
            shown = quote(t.path)
            return (
                "file",
                name,
                [SendFile((), t.st.st_size, remote_opener(tree, t.parts), shown)],
                t.st.st_size,
            )
        if not t.is_dir:
            raise RemotePathError(
                f"{quote(t.path)} is a {kind_of(t.st.st_mode)}; only regular files and "
                "directories can be transferred"
            )
        if not recursive:
            raise TransferError(f"{quote(t.path)} is a directory (use recursive=True)")
        top = SendDir((), stat.S_IMODE(t.st.st_mode), t.st.st_mtime_ns)
        base = t.parts
    items, total = remote_items(tree, base)
    return "dir", name, [top, *items], total


def remote_opener(tree: Tree, parts: tuple[str, ...]) -> Callable[[], int]:
    def open_remote() -> int:
        with tree.resolve(parts) as t:
            return open_regular(t)

    return open_remote


def remote_items(tree: Tree, base: tuple[str, ...]) -> tuple[list[SendItem], int]:
    """Everything below ``base``, parents first; anything unsafe is skipped and reported
    (part files are left out unreported, as in :func:`local_items`)."""
    items: list[SendItem] = []
    total = 0
    stack: list[tuple[str, ...]] = [()]
    while stack:
        rel = stack.pop()
        subdirs = []
        try:
            listed = list_dir(tree, (*base, *rel))
        except PPCPError as exc:
            if not rel:
                raise
            # Its dir entry is sent (it is created, empty); what it holds is reported.
            items.append(SendSkip(display(join(rel)), exc.message))
            continue
        for name, lst in listed:
            if is_part_name(name):
                # Another transfer's unfinished data: not what the user asked for.
                log.debug("get: leaving out the part file %s", display(join((*rel, name))))
                continue
            child = (*rel, name)
            shown = display(join(child))
            reason = skip_reason(name, child)
            st = lst
            if reason is None and stat.S_ISLNK(lst.st_mode):
                try:
                    with tree.resolve((*base, *child)) as target:
                        if target.st is None:
                            reason = "dangling symlink"
                        elif target.is_dir:
                            reason = "symlink to a directory (not followed)"
                        else:
                            st = target.st
                except RemotePathError:
                    reason = "symlink pointing outside the root"
            if reason is None:
                if stat.S_ISDIR(st.st_mode):
                    items.append(SendDir(child, stat.S_IMODE(st.st_mode), st.st_mtime_ns))
                    subdirs.append(child)
                elif stat.S_ISREG(st.st_mode):
                    opener = remote_opener(tree, (*base, *child))
                    items.append(SendFile(child, st.st_size, opener, quote(join(child))))
                    total += st.st_size
                else:
                    reason = f"{kind_of(st.st_mode)} (not transferred)"
            if reason is not None:
                items.append(SendSkip(shown, reason))
            if len(items) > MAX_ENTRIES:
                raise TransferError(f"the directory holds more than {MAX_ENTRIES} entries")
        stack.extend(reversed(subdirs))
    return items, total


def list_dir(tree: Tree, parts: tuple[str, ...]) -> list[tuple[str, os.stat_result]]:
    """(name, lstat) of each entry of a directory inside ``tree``, sorted by name."""
    with tree.resolve(parts) as t:
        if not t.is_dir:
            raise TransferError(f"{quote(t.path)} is no longer a directory")
        try:
            fd = os.open(
                t.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=t.dir_fd
            )
        except OSError as exc:
            raise TransferError(f"cannot open {quote(t.path)}: {exc.strerror}") from None
    try:
        with os.scandir(fd) as it:
            entries = [(e.name, e.stat(follow_symlinks=False)) for e in it]
        return sorted(entries, key=lambda entry: entry[0])
    except OSError as exc:
        raise TransferError(f"cannot list {quote(join(parts))}: {exc.strerror}") from None
    finally:
        os.close(fd)
