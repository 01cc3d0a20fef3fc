"""The file-transfer exchange, written once for both directions.

A transfer channel carries one *sender* and one *receiver*: the client sends
on ``file-put`` and the server on ``file-get``.  After the channel is open the
sender announces entries (``dir``, ``file``, ``skip``) and ends with
``finish``; for each file the receiver answers ``ready`` with what it already
holds (resume), the sender says where it ``data`` starts, streams the bytes
and sends ``end`` with the SHA-256 of the whole file, and the receiver
answers ``done`` once the file is verified and renamed into place.  See
docs/rfc.md section 16 for the normative description.

Bytes travel as CHANNEL_DATA when both peers negotiated ``binary-data``, and
as base64 ``chunk`` requests otherwise.  Memory stays constant whatever the
file size: the sender reads into two preallocated buffers (a worker thread
fills and hashes one while the other is sent), the channel window (or, for
chunks, the ``ack`` window) bounds what is in flight, and the receiver has at
most one piece being hashed and written while it takes the next.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import concurrent.futures
import contextlib
import errno
import fcntl
import functools
import hashlib
import logging
import os
import shutil
import stat
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar, cast

from msgspec import Struct, field

from ppcp.control.aio_channel import decode_json, encode_json, release
from ppcp.control.channels import (
    DATA_HEADER,
    DEFAULT_MAX_PACKET,
    DEFAULT_WINDOW,
    STREAM_STDOUT,
    ChannelMux,
)
from ppcp.control.paths import (
    Target,
    Tree,
    display,
    is_part_name,
    join,
    kind_of,
    open_part,
    parse_wire_path,
    part_name,
    quote,
)
from ppcp.core.errors import (
    ChannelError,
    CloseCode,
    PPCPError,
    RemotePathError,
    TransferError,
    error_for_code,
)
from ppcp.core.states import Role
from ppcp.handshake.messages import MAX_REASON_BYTES
from ppcp.transport.frames import Frame, FrameType
from ppcp.utils.codec import Writer
from ppcp.utils.units import human_size

if TYPE_CHECKING:
    from ppcp.control.aio_channel import AsyncChannel
    from ppcp.transport.connection import Connection

PROTOCOL = 1  # the "v" field of the open payloads
# Binary path: the raw size of a compressed block and of a stream's piece (RFC 16.5.1).
CHUNK = 1 << 20
# Binary path, file data sent as it is: one record per piece when the peer takes
# records this big (as our default max_packet): transfers cost per record.
BULK_CHUNK = DEFAULT_MAX_PACKET
B64_CHUNK = 45 * 1024  # base64 path: fits a 64 KiB request once encoded
B64_WINDOW = 4 << 20  # base64 path: raw bytes the sender may have unacknowledged
ACK_EVERY = 1 << 20  # base64 path: the receiver acknowledges at least this often
MAX_SIZE = (1 << 63) - 1
# Signed: a file may date from before 1970 (its time is then negative).
MAX_MTIME_NS = (1 << 63) - 1
MIN_MTIME_NS = -(1 << 63)
ZLIB_LEVEL = 1
COMPRESS_WORTH = 0.95  # a piece is sent compressed only if this much smaller
COMPRESS_BACKOFF = 16  # pieces sent stored, untried, after one that did not shrink
PROGRESS_EVERY = 1 << 20
LOCK_WAIT = 5.0  # seconds a receiver waits for a part file (directory) another holds
# A server receiving into a directory removes part files there untouched this long,
# and part directories with nothing in them touched this long.
PART_TTL = 7 * 24 * 3600.0
# Bounds on the walk through a part directory that may have expired: a bigger tree is
# left as it is (the walk must not hold up the transfers; rmtree recurses per level).
PART_DIR_SCAN_LIMIT = 10_000  # entries
PART_DIR_DEPTH_LIMIT = 64  # levels, each holding a descriptor while it is walked
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
LOCK_POLL = 0.05
WORKER_THREADS = 8  # shared by all transfers of a process
# A file job that blocks the event loop longer than this moves to a thread.
SLOW_JOB = 0.01
# A compressed block on the binary path: method, raw length, stored length.
BLOCK = struct.Struct(">BII")
METHOD_STORED = 0
METHOD_ZLIB = 1
CHANNEL_CODE_MAX = 0x01FF  # channel-scoped close codes are 0x0100..0x01FF

EMPTY_SHA256 = hashlib.sha256().hexdigest()
# A stream's receiver acknowledges every this many pieces; its sender waits with twice
# as many unacknowledged.  64 pieces, 128 requests on the base64 path, stay below what a
# receiver holds unread (MuxConfig.max_pending_requests, 256).
STREAM_ACK_PIECES = 32
STREAM_PIECES_UNACKED = 2 * STREAM_ACK_PIECES
# A stream's data has no mode of its own: that of a new file, less the receiver's umask.
STREAM_MODE = 0o666

ProgressCallback = Callable[[int, int, float], None]
T = TypeVar("T")
log = logging.getLogger("ppcp.server")  # only a server expires part files


class TransferResult(Struct, frozen=True):
    """What a put or get did.

    ``bytes`` counts file bytes actually moved; bytes a resumed file already
    had are in ``resumed_from`` instead, so ``bytes + resumed_from == total``
    for a transfer that completes.
    """

    files: int
    bytes: int
    total: int = 0
    directories: int = 0
    resumed_from: int = 0
    skipped: tuple[str, ...] = ()
    sha256: str | None = None
    seconds: float = 0.0
    path: str = ""
    encoding: str = "binary"
    compressed: bool = False


class Encoding(Struct, frozen=True):
    """How file bytes travel on one channel, and whether both ends digest them
    (fixed when the channel opens)."""

    binary: bool
    zlib: bool
    checksum: bool = False

    @property
    def name(self) -> str:
        return "binary" if self.binary else "base64"


def choose_encoding(
    capabilities: Iterable[str], compress: bool, checksum: bool = False
) -> Encoding:
    caps = set(capabilities)
    return Encoding(
        binary="binary-data" in caps, zlib=compress and "zlib" in caps, checksum=checksum
    )


# -- message fields ------------------------------------------------------------------


def field_uint(obj: dict[str, Any], key: str, what: str, limit: int = MAX_SIZE) -> int:
    return field_int(obj, key, what, 0, limit)


def current_umask() -> int:
    """This process's umask, read without changing it (another thread may create files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # No /proc (or Linux < 4.7): set and restore, the only other way to read it.
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def field_int(obj: dict[str, Any], key: str, what: str, low: int, high: int) -> int:
    value = obj.get(key)
    if type(value) is not int or not low <= value <= high:
        raise ChannelError(f"malformed {what}: {key!r} must be an integer in {low}..{high}")
    return value


def field_str(obj: dict[str, Any], key: str, what: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise ChannelError(f"malformed {what}: {key!r} must be a string")
    return value


def field_bool(obj: dict[str, Any], key: str, what: str) -> bool:
    value = obj.get(key, False)
    if not isinstance(value, bool):
        raise ChannelError(f"malformed {what}: {key!r} must be true or false")
    return value


def field_sha256(obj: dict[str, Any], key: str, what: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or len(value) != 64 or value.strip("0123456789abcdef"):
        raise ChannelError(f"malformed {what}: {key!r} must be 64 lowercase hex digits")
    return value


class FileEntry(Struct, frozen=True):
    path: tuple[str, ...]
    size: int
    mode: int
    mtime_ns: int

    @classmethod
    def decode(cls, payload: bytes) -> FileEntry:
        obj = decode_json(payload, "file entry")
        return cls(
            parse_wire_path(field_str(obj, "path", "file entry")),
            field_uint(obj, "size", "file entry"),
            field_uint(obj, "mode", "file entry", 0o7777),
            field_int(obj, "mtime_ns", "file entry", MIN_MTIME_NS, MAX_MTIME_NS),
        )

    def encode(self) -> bytes:
        return encode_json(
            {
                "path": join(self.path),
                "size": self.size,
                "mode": self.mode,
                "mtime_ns": self.mtime_ns,
            }
        )


class StreamEntry(Struct, frozen=True):
    """The one entry of a ``"type": "stream"`` transfer: no size, no time (RFC 16.4.4)."""

    path: tuple[str, ...]
    mode: int

    @classmethod
    def decode(cls, payload: bytes) -> StreamEntry:
        obj = decode_json(payload, "stream entry")
        return cls(
            parse_wire_path(field_str(obj, "path", "stream entry")),
            field_uint(obj, "mode", "stream entry", 0o7777),
        )

    def encode(self) -> bytes:
        return encode_json({"path": join(self.path), "mode": self.mode})


class DirEntry(Struct, frozen=True):
    path: tuple[str, ...]
    mode: int
    mtime_ns: int

    @classmethod
    def decode(cls, payload: bytes) -> DirEntry:
        obj = decode_json(payload, "dir entry")
        return cls(
            parse_wire_path(field_str(obj, "path", "dir entry")),
            field_uint(obj, "mode", "dir entry", 0o7777),
            field_int(obj, "mtime_ns", "dir entry", MIN_MTIME_NS, MAX_MTIME_NS),
        )

    def encode(self) -> bytes:
        return encode_json({"path": join(self.path), "mode": self.mode, "mtime_ns": self.mtime_ns})


# -- what a sender sends ---------------------------------------------------------------


class SendDir(Struct, frozen=True):
    rel: tuple[str, ...]
    mode: int
    mtime_ns: int


class SendFile(Struct, frozen=True):
    rel: tuple[str, ...]
    size: int  # as listed; the size sent is the one fstat gives at open time
    # Returns an fd open for reading, owned by the caller; raises PPCPError if the
    # file cannot be opened (a tree then skips it).
    open: Callable[[], int]
    shown: str  # for error messages


class SendSkip(Struct, frozen=True):
    shown: str
    reason: str


SendItem = SendDir | SendFile | SendSkip


# -- accounting ------------------------------------------------------------------------


class Progress:
    """Calls ``progress(done, total, rate)`` at most once per MiB, and at each file end."""

    def __init__(self, callback: ProgressCallback | None, total: int) -> None:
        self.callback = callback
        self.total = total
        self.done = 0
        self.moved = 0
        self.started = time.monotonic()
        self._reported = -1

    def skip(self, n: int) -> None:
        self.done += n

    def advance(self, n: int) -> None:
        self.done += n
        self.moved += n
        if self.callback is not None and self.done - self._reported >= PROGRESS_EVERY:
            self.report()

    def report(self) -> None:
        if self.callback is None or self.done == self._reported:
            return
        self._reported = self.done
        elapsed = time.monotonic() - self.started
        self.callback(
            self.done, max(self.total, self.done), self.moved / elapsed if elapsed else 0.0
        )


class Stats(Struct):
    files: int = 0
    directories: int = 0
    resumed_from: int = 0
    skipped: list[str] = field(default_factory=list)
    sha256: str | None = None

    def result(
        self, progress: Progress, path: str, encoding: Encoding, single: bool
    ) -> TransferResult:
        return TransferResult(
            files=self.files,
            bytes=progress.moved,
            total=progress.done,
            directories=self.directories,
            resumed_from=self.resumed_from,
            skipped=tuple(self.skipped),
            sha256=self.sha256 if single else None,
            seconds=time.monotonic() - progress.started,
            path=path,
            encoding=encoding.name,
            compressed=encoding.zlib,
        )


# -- channel helpers ---------------------------------------------------------------------


async def peer_gone(channel: AsyncChannel) -> PPCPError:
    """The error to raise when the channel closed under us."""
    channel.session.raise_if_failed()
    code, reason = await channel.wait_closed()
    if code == CloseCode.NORMAL:
        return TransferError(
            "the peer closed the channel before the transfer finished", remote=True
        )
    return error_for_code(code, reason)


async def expect(channel: AsyncChannel, name: str) -> bytes:
    """The next request, which must be ``name`` (late ``ack`` requests are skipped)."""
    while True:
        request = await channel.next_request()
        if request is None:
            raise await peer_gone(channel)
        got, payload = request
        if got == name:
            return payload
        if got != "ack":
            raise ChannelError(f"expected a {name!r} request, got {got!r}")


def channel_code(exc: PPCPError) -> int:
    """The close code for ``exc`` on a channel: its own if channel-scoped (0x01xx)."""
    if CloseCode.CHANNEL_ERROR <= exc.code <= CHANNEL_CODE_MAX:
        return int(exc.code)
    return CloseCode.TRANSFER_FAILED


async def abort(channel: AsyncChannel, exc: BaseException) -> None:
    """Close ``channel`` telling the peer why, unless the peer closed it first."""
    if channel.closed:
        return
    if isinstance(exc, PPCPError) and not exc.remote:
        await channel.close(channel_code(exc), exc.message)
    elif isinstance(exc, asyncio.CancelledError):
        await channel.close(CloseCode.TRANSFER_FAILED, "transfer cancelled")
    else:
        await channel.close(CloseCode.TRANSFER_FAILED, "transfer aborted")


# -- file I/O --------------------------------------------------------------------------------


def read_at(fd: int, view: memoryview, pos: int) -> int:
    """Fill ``view`` from offset ``pos``; fewer bytes only at end of file."""
    total = 0
    while total < len(view):
        n = os.preadv(fd, [view[total:]], pos + total)
        if n == 0:
            break
        total += n
    return total


def write_at(fd: int, data: bytes | memoryview, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view = view[n:]
        pos += n


def hash_prefix(fd: int, length: int) -> hashlib._Hash:
    """The SHA-256 state after the first ``length`` bytes of ``fd``."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    pos = 0
    while pos < length:
        n = read_at(fd, view[: min(CHUNK, length - pos)], pos)
        if n == 0:
            raise TransferError("the file shrank while its prefix was being hashed")
        h.update(view[:n])
        pos += n
    return h


class NoSpace(TransferError):
    """The disk (or the quota) is full: a receiver then says what became of the file."""

    what = "no space left on device"


def io_error(exc: OSError, action: str, shown: str) -> TransferError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        text = exc.strerror or os.strerror(exc.errno)
        error = NoSpace(f"{text[:1].lower()}{text[1:]} while {action} {shown}")
        error.what = f"{text[:1].lower()}{text[1:]}"
        return error
    return TransferError(f"{action} {shown} failed: {exc.strerror or exc}")


class Compressor:
    """zlib for one file's pieces, each compressed on its own.

    Data that does not shrink (already compressed, encrypted, random) is sent
    stored, and the next pieces are not even tried for a while: zlib runs at
    tens of MiB/s on such data, far slower than the link.
    """

    def __init__(self) -> None:
        self._skip = 0

    def pack(self, data: memoryview | bytes) -> bytes | None:
        """The compressed piece, or None to send it stored."""
        if self._skip:
            self._skip -= 1
            return None
        packed = zlib.compress(data, ZLIB_LEVEL)
        if len(packed) <= len(data) * COMPRESS_WORTH:
            return packed
        self._skip = COMPRESS_BACKOFF
        return None


def encode_block(data: memoryview, compressor: Compressor) -> bytes:
    """One block of the compressed binary path (stored when zlib does not help)."""
    packed = compressor.pack(data)
    if packed is not None:
        return BLOCK.pack(METHOD_ZLIB, len(data), len(packed)) + packed
    return b"".join((BLOCK.pack(METHOD_STORED, len(data), len(data)), data))


def inflate(data: bytes, size: int) -> bytes:
    """Decompress one block of exactly ``size`` bytes; anything else is an error."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, size + 1)
    except zlib.error:
        raise ChannelError("corrupt compressed block") from None
    if len(out) != size or not d.eof or d.unused_data:
        raise ChannelError("compressed block does not match its announced size")
    return out


@functools.cache
def _executor(pid: int) -> concurrent.futures.ThreadPoolExecutor:
    """Threads for file I/O and hashing (one pool per process: a fork gets its own)."""
    return concurrent.futures.ThreadPoolExecutor(
        max_workers=WORKER_THREADS, thread_name_prefix="ppcp-files"
    )


class Worker:
    """Runs one blocking job at a time: file I/O, hashing, (de)compression.

    Jobs run inline first: on storage that answers at page-cache speed, a
    hand-off to a thread costs more than the job (measured on 1 GiB put/get
    over loopback: about 1,000 MiB/s threaded, 1,700 inline; the hand-offs,
    not the I/O, were half the receiver's CPU).  A job that keeps the event
    loop waiting longer than :data:`SLOW_JOB` moves the worker to a pool
    thread for the rest of its file, so a slow disk does not stall the
    server's other sessions; there the job overlaps the loop's work on the
    neighbouring piece (hashlib, zlib and file I/O release the GIL).
    Threaded jobs get a duplicate of the file descriptor, closed only when the
    last job has really finished: a cancelled transfer never leaves a thread
    using a descriptor number that was closed and reused.
    """

    def __init__(self, fd: int | None, threaded: bool = False) -> None:
        # None: the jobs write to a stream of their own (a get to stdout), no descriptor.
        self.threaded = threaded
        self.fd = os.dup(fd) if threaded and fd is not None else fd
        self._job: concurrent.futures.Future[Any] | None = None  # in a thread
        # The outcome of a job that ran inline: a plain pair, not a Future (whose
        # lock and condition cost more than a write to the page cache per piece).
        self._done: tuple[Any, Exception | None] | None = None

    @property
    def busy(self) -> bool:
        return self._job is not None or self._done is not None

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        assert not self.busy, "one job at a time"
        if self.threaded:
            self._job = _executor(os.getpid()).submit(fn, self.fd, *args)
            return
        started = time.monotonic()
        try:
            self._done = (fn(self.fd, *args), None)
        except Exception as exc:
            self._done = (None, exc)
        if time.monotonic() - started > SLOW_JOB:
            self.threaded = True
            self.fd = None if self.fd is None else os.dup(self.fd)

    async def result(self) -> Any:
        done, self._done = self._done, None
        if done is not None:
            value, error = done
            if error is not None:
                raise error
            return value
        job, self._job = self._job, None
        assert job is not None
        try:
            return await asyncio.wrap_future(job)
        except BaseException:
            self._job = job  # still running if we were cancelled: close() waits for it
            raise

    def close(self) -> None:
        job, self._job, self._done = self._job, None, None
        if not self.threaded:
            return
        fd = self.fd

        def release(done: concurrent.futures.Future[Any] | None = None) -> None:
            if done is not None and not done.cancelled():
                done.exception()  # retrieved: the error was reported another way
            if fd is not None:
                os.close(fd)

        if job is None:
            release()
        else:
            job.cancel()
            job.add_done_callback(release)


async def in_thread(fd: int | None, fn: Callable[..., T], *args: Any) -> T:
    """``fn(fd, *args)`` in a worker thread."""
    worker = Worker(fd, threaded=True)
    try:
        worker.submit(fn, *args)
        result: T = await worker.result()
        return result
    finally:
        worker.close()


# -- sender ----------------------------------------------------------------------------------------


async def send_entries(
    channel: AsyncChannel,
    encoding: Encoding,
    items: Iterable[SendItem],
    progress: Progress,
    stats: Stats,
) -> None:
    for item in items:
        if isinstance(item, SendDir):
            await channel.send_request("dir", DirEntry(item.rel, item.mode, item.mtime_ns).encode())
            stats.directories += 1
        elif isinstance(item, SendSkip):
            await send_skip(channel, item, stats)
        else:
            try:
                fd = item.open()
            except PPCPError as exc:
                if not item.rel:  # the transfer's only file: there is nothing else to send
                    raise
                # One unreadable file in a tree does not cost the others (as scp, rsync).
                progress.total -= item.size
                await send_skip(channel, SendSkip(display(join(item.rel)), exc.message), stats)
                continue
            await send_file(channel, encoding, item, fd, progress, stats)
    await channel.send_json("finish", {})
    await expect(channel, "finished")
    progress.report()


async def send_skip(channel: AsyncChannel, item: SendSkip, stats: Stats) -> None:
    stats.skipped.append(f"{item.shown}: {item.reason}")
    await channel.send_json("skip", {"path": item.shown, "reason": item.reason})


async def send_file(
    channel: AsyncChannel,
    encoding: Encoding,
    item: SendFile,
    fd: int,
    progress: Progress,
    stats: Stats,
) -> None:
    """Send the file open on ``fd`` (closed here, whatever happens)."""
    try:
        st = os.fstat(fd)
        size = st.st_size
        progress.total += size - item.size
        entry = FileEntry(item.rel, size, stat.S_IMODE(st.st_mode), st.st_mtime_ns)
        await channel.send_request("file", entry.encode())
        ready = decode_json(await expect(channel, "ready"), "ready")
        offset = field_uint(ready, "offset", "ready")
        their_prefix = field_sha256(ready, "sha256", "ready")
        h = hashlib.sha256()
        if 0 < offset <= size:
            try:
                mine = await in_thread(fd, hash_prefix, offset)
            except OSError as exc:
                raise io_error(exc, "reading", item.shown) from None
            if mine.hexdigest() == their_prefix:
                h = mine
            else:
                offset = 0
        else:
            offset = 0
        await channel.send_json("data", {"offset": offset})
        stats.resumed_from += offset
        progress.skip(offset)
        digesting = h if encoding.checksum else None
        await send_data(channel, encoding, fd, offset, size, digesting, progress, item.shown)
        check_unchanged(fd, st, item.shown)
        digest = h.hexdigest() if encoding.checksum else None
        await channel.send_json("end", {} if digest is None else {"sha256": digest})
        done = decode_json(await expect(channel, "done"), "done")
        if digest is not None and field_sha256(done, "sha256", "done") != digest:
            raise TransferError(f"the receiver stored {item.shown} with another checksum")
        stats.files += 1
        stats.sha256 = digest
        progress.report()
    finally:
        os.close(fd)


async def send_stream(
    channel: AsyncChannel,
    encoding: Encoding,
    source: BinaryIO,
    progress: Progress,
    stats: Stats,
    shown: str,
) -> None:
    """Send what ``source`` holds until its end, as the one file of a stream transfer.

    Its size is known only at the end, so each piece is announced with ``more``
    (RFC 16.4.4); nothing is resumed, as nothing could be read again.
    """
    await channel.send_request("stream", StreamEntry((), STREAM_MODE).encode())
    ready = decode_json(await expect(channel, "ready"), "ready")
    if field_uint(ready, "offset", "ready") != 0:
        raise ChannelError("the receiver offered to resume a stream")
    h = hashlib.sha256() if encoding.checksum else None
    compressor = Compressor() if encoding.zlib else None
    reader = StreamReader(source, CHUNK if encoding.binary else B64_CHUNK, shown)
    pos = acked = 0
    ends: collections.deque[int] = collections.deque()  # of the pieces not acknowledged
    try:
        while data := await reader.read(channel):
            if h is not None:
                h.update(data)
            n = len(data)
            progress.total += n
            await channel.send_json("more", {"size": n})
            if not encoding.binary:
                await channel.send_request("chunk", chunk_payload(pos, data, compressor))
            elif compressor is None:
                await channel.write(data)
            else:
                await channel.write(encode_block(memoryview(data), compressor))
            pos += n
            ends.append(pos)
            progress.advance(n)
            acked = await wait_stream_acks(channel, acked, ends, encoding.binary)
    finally:
        reader.close()
    digest = h.hexdigest() if h is not None else None
    await channel.send_json("end", {} if digest is None else {"sha256": digest})
    done = decode_json(await expect(channel, "done"), "done")
    if digest is not None and field_sha256(done, "sha256", "done") != digest:
        raise TransferError(f"the receiver stored {shown} with another checksum")
    stats.files += 1
    stats.sha256 = digest
    await channel.send_json("finish", {})
    await expect(channel, "finished")
    progress.report()


async def wait_stream_acks(
    channel: AsyncChannel, acked: int, ends: collections.deque[int], binary: bool
) -> int:
    """Wait while too many pieces of a stream are unacknowledged (``ends``: where each
    unacknowledged piece ends).

    Requests are not flow-controlled by the channel window, and a pipe written a
    byte at a time makes a piece of each byte: without this, a slow receiver would
    find more requests queued than it may hold (RFC 16.4.4).
    """
    sent = ends[-1] if ends else acked

    def may_send(acked: int) -> bool:
        while ends and ends[0] <= acked:
            ends.popleft()
        return len(ends) < STREAM_PIECES_UNACKED and (binary or sent - acked <= B64_WINDOW)

    return await wait_acks(channel, acked, sent, may_send)


def stream_name(stream: BinaryIO, role: str) -> str:
    """A stream as a message names it: its file's name, or what its descriptor is."""
    name = getattr(stream, "name", None)
    if isinstance(name, str):
        return quote(name)
    if name in (0, 1):
        return ("standard input", "standard output")[name]
    return f"the {role} stream"


class StreamReader:
    """Reads a stream one piece ahead of the sender, in a thread of its own.

    A daemon thread, not one of the pool's: a read that never returns (a
    terminal nobody types into, a pipe nobody writes to) must not keep the
    process from exiting once the transfer has failed, as the interpreter
    waits for pool threads at exit.  At most two pieces exist at a time: the
    one being sent and the one being read.
    """

    def __init__(self, source: BinaryIO, size: int, shown: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._source, self._size, self._shown = source, size, shown
        self._pieces: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
        self._wanted = threading.Semaphore(1)  # the first piece is read at once
        self._stopped = False
        threading.Thread(target=self._run, name="ppcp-stream-reader", daemon=True).start()

    def _run(self) -> None:
        read = getattr(self._source, "read1", self._source.read)  # one read: a pipe's data
        while True:
            self._wanted.acquire()
            if self._stopped:
                return
            item: bytes | BaseException
            try:
                item = bytes(read(self._size))
            except OSError as exc:
                item = TransferError(f"reading {self._shown} failed: {exc.strerror or exc}")
            except BaseException as exc:  # handed to the sender, whatever it is
                item = exc
            try:
                self._loop.call_soon_threadsafe(self._pieces.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody wants the rest
                return
            if not isinstance(item, bytes) or not item:
                return

    async def read(self, channel: AsyncChannel) -> bytes:
        """The next piece; ``b""`` at the end of the stream.

        A source can stay silent for ever (a pipe kept open): while it does, the
        receiver may fail the transfer, which must end it at once, not at the
        source's next piece.
        """
        if self._pieces.empty():
            piece = asyncio.ensure_future(self._pieces.get())
            closed = asyncio.ensure_future(channel.wait_closed())
            try:
                await asyncio.wait((piece, closed), return_when=asyncio.FIRST_COMPLETED)
            finally:
                closed.cancel()
                if not piece.done():
                    piece.cancel()
            if not piece.done() or piece.cancelled():
                raise await peer_gone(channel)
            item = piece.result()
        else:
            item = self._pieces.get_nowait()
        if isinstance(item, BaseException):
            raise item
        if item:
            self._wanted.release()  # read the next piece while this one is sent
        return item

    def close(self) -> None:
        self._stopped = True
        self._wanted.release()


def check_unchanged(fd: int, before: os.stat_result, shown: str) -> None:
    """Refuse to finish a file that was modified in place or truncated while it was sent.

    A digest of the bytes as they were read cannot see this (it matches what
    was sent, torn or not); the file's metadata can, as tar checks it.  A file
    that only grew (a log being appended to) is accepted: its first ``size``
    bytes were sent, as scp would.
    """
    try:
        after = os.fstat(fd)
    except OSError as exc:
        raise io_error(exc, "reading", shown) from None
    shrank = after.st_size < before.st_size
    rewritten = after.st_size == before.st_size and after.st_mtime_ns != before.st_mtime_ns
    if shrank or rewritten:
        raise TransferError(f"{shown} changed while it was being sent; the copy was not completed")


async def send_data(
    channel: AsyncChannel,
    encoding: Encoding,
    fd: int,
    pos: int,
    size: int,
    h: hashlib._Hash | None,
    progress: Progress,
    shown: str,
) -> None:
    """Send bytes ``[pos, size)``; a worker reads (and hashes) the next piece meanwhile."""
    chunk = piece_size(encoding, channel.peer_max_packet)
    # Each piece is read after room for the record's data header, where it is
    # sent from (write_in_place): no copy of the data on its way to the cipher.
    buffers = (bytearray(DATA_HEADER + chunk), bytearray(DATA_HEADER + chunk))
    compressor = Compressor() if encoding.zlib else None

    def prepare(wfd: int, buf: bytearray, at: int, n: int) -> tuple[int, bytes | None]:
        """Read the piece at ``at`` into ``buf``: its length and, unless it is
        sent from ``buf`` as read, the payload to send instead."""
        view = memoryview(buf)[DATA_HEADER:]
        view = view[: read_at(wfd, view[:n], at)]
        if h is not None:
            h.update(view)
        if not view:
            return 0, None
        if not encoding.binary:
            return len(view), chunk_payload(at, view, compressor)
        return len(view), None if compressor is None else encode_block(view, compressor)

    worker = Worker(fd)
    try:
        acked = pos
        turn = 0
        if pos < size:
            worker.submit(prepare, buffers[turn], pos, min(chunk, size - pos))
        while pos < size:
            try:
                n, payload = await worker.result()
            except OSError as exc:
                raise io_error(exc, "reading", shown) from None
            if n == 0:
                raise TransferError(f"{shown} shrank while it was being sent")
            read = buffers[turn]
            turn ^= 1  # the other buffer is free: this piece may still be in ``read``
            if pos + n < size:
                worker.submit(prepare, buffers[turn], pos + n, min(chunk, size - pos - n))
            if payload is None:
                await channel.write_in_place(read, DATA_HEADER, DATA_HEADER + n)
            elif encoding.binary:
                await channel.write(payload)
            else:
                await channel.send_request("chunk", payload)
                acked = await wait_acks(channel, acked, pos + n)
            pos += n
            progress.advance(n)
    finally:
        worker.close()


def piece_size(encoding: Encoding, peer_max_packet: int) -> int:
    """How many bytes of a file :func:`send_data` reads and sends at a time."""
    if not encoding.binary:
        return B64_CHUNK
    if encoding.zlib or peer_max_packet < BULK_CHUNK:
        # A block's raw size is at most CHUNK.  A peer taking smaller records would
        # get several per piece: smaller pieces then keep reading beside sending.
        return CHUNK
    return BULK_CHUNK


def chunk_payload(
    offset: int, data: memoryview | bytes, compressor: Compressor | None = None
) -> bytes:
    """A ``chunk`` request of the base64 path."""
    obj: dict[str, Any] = {"offset": offset}
    packed = compressor.pack(data) if compressor is not None else None
    if packed is not None:
        obj["zlib"] = True
        obj["size"] = len(data)
        data = packed
    obj["data"] = base64.b64encode(data).decode("ascii")
    return encode_json(obj)


async def wait_acks(
    channel: AsyncChannel, acked: int, sent: int, may_send: Callable[[int], bool] | None = None
) -> int:
    """Consume ``ack`` requests (offsets up to ``sent``); return the acknowledged
    offset once ``may_send(it)`` holds, by default once no more than the base64
    window is unacknowledged."""
    while True:
        request = channel.pending_request()
        if request is None:
            if may_send(acked) if may_send is not None else sent - acked <= B64_WINDOW:
                return acked
            request = await channel.next_request()
            if request is None:
                raise await peer_gone(channel)
        name, payload = request
        if name != "ack":
            raise ChannelError(f"expected an 'ack' request, got {name!r}")
        offset = field_uint(decode_json(payload, "ack"), "offset", "ack")
        if not acked <= offset <= sent:
            raise ChannelError("ack offset out of range")
        acked = offset


# -- receiver ------------------------------------------------------------------------------------


class Receiver(Struct):
    """Receives the entries of one channel into ``tree`` below ``base``."""

    channel: AsyncChannel
    encoding: Encoding
    tree: Tree
    base: tuple[str, ...]
    resume: bool
    progress: Progress
    stats: Stats
    single: bool  # exactly one file, at ``base`` itself
    # The directories this transfer created: only those get the sender's mode and time.
    dirs: list[tuple[tuple[str, ...], int, int]] = field(default_factory=list)
    # The sender's permission bits, less this process's umask (as cp and scp do).
    mode_mask: int = field(default_factory=lambda: 0o777 & ~current_umask())
    # The piece the worker is writing: its pooled buffer is given back once written.
    in_worker: bytes | memoryview = b""
    # Where a new top directory goes once complete, while ``base`` is its part name.
    final: tuple[str, ...] | None = None
    # Seconds after which a part file (directory) left by another transfer expires
    # (None: never).
    part_ttl: float | None = None
    # The directories (st_dev, st_ino) already swept of expired part files and directories.
    swept: set[tuple[int, int]] = field(default_factory=set)
    # The part directory this transfer works in, open with a shared lock so that no
    # server expires it meanwhile, however old what it holds (hold_part_dir).
    held: int | None = None
    # What a new top directory is copied from, in its part name (None: a sender that
    # names none, whose part directory has the plain part name).
    source: str | None = None
    # A "stream" transfer (RFC 16.4.4): one file of unknown size, never resumed.
    stream: bool = False
    # Where the one file of a get goes instead of a file (stdout): in order, no part file.
    sink: BinaryIO | None = None

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            if self.held is not None:
                os.close(self.held)
                self.held = None

    async def _run(self) -> None:
        try:
            await self._receive_entries()
        except BaseException:
            # Also after a failure: a directory is created 0700 (nothing lands in it
            # readable by others before its mode is known) and must not stay so.
            # Not in a part directory: it stays hidden, and writable for the resume.
            if self.final is None:
                with contextlib.suppress(PPCPError):
                    self.finish_dirs()
            raise
        self.finish_dirs()
        if self.final is not None:
            self.move_into_place(self.final)
        self.progress.report()
        await self.channel.send_json(
            "finished", {"files": self.stats.files, "bytes": self.progress.moved}
        )

    async def _receive_entries(self) -> None:
        while True:
            request = await self.channel.next_request()
            if request is None:
                raise await peer_gone(self.channel)
            name, payload = request
            if name == "file" and not self.stream:
                entry = FileEntry.decode(payload)
                if self.single and (entry.path or self.stats.files):
                    raise ChannelError("a single-file transfer carries one file entry, at ''")
                if self.sink is not None:
                    await self.receive_to_sink(entry)
                else:
                    await self.receive_file(entry)
            elif name == "stream" and self.stream:
                streamed = StreamEntry.decode(payload)
                if streamed.path or self.stats.files:
                    raise ChannelError("a stream transfer carries one stream entry, at ''")
                await self.receive_stream(streamed)
            elif name == "dir" and not self.single:
                d = DirEntry.decode(payload)
                if d.path or self.final is not None or not await self.open_part_dir(d):
                    self.make_dir(d)
            elif name == "skip":
                obj = decode_json(payload, "skip")
                path, reason = field_str(obj, "path", "skip"), field_str(obj, "reason", "skip")
                # Older senders reported part files, another transfer's unfinished data:
                # not the user's, so not a reason to call the copy incomplete.
                if not is_part_name(path.rpartition("/")[2]):
                    self.stats.skipped.append(f"{display(path)}: {display(reason)}")
            elif name == "finish":
                return
            else:
                raise ChannelError(f"unexpected request {name!r} in a file transfer")

    async def open_part_dir(self, entry: DirEntry) -> bool:
        """Receive a top directory that does not exist yet under its part name.

        So an interrupted transfer leaves no half tree under the real name, and
        running it again finds the part directory and continues in it, instead
        of finding a directory there and copying into it (``dest/NAME/...``).
        The part name carries the source's identifier: a copy of another tree to
        the same name gets its own, rather than finishing with both trees mixed.
        False if the destination exists (the tree is merged into it).
        """
        with self.tree.resolve(self.base) as t:
            if t.st is not None:
                return False
            part = part_name(t.name, self.source)
            await self.expire_parts(t, part)
            self.held = await hold_part_dir(t.dir_fd, part, quote(t.path))
            self.final = t.parts
            self.base = (*t.parts[:-1], part)
        self.dirs.append((self.base, entry.mode, entry.mtime_ns))
        self.stats.directories += 1
        return True

    async def expire_parts(self, t: Target, keep: str) -> None:
        """Remove the expired part files and directories beside ``t`` (RFC 16.7).

        Once per directory and transfer.  Housekeeping: whatever goes wrong leaves
        them for next time and never fails the transfer.
        """
        if self.part_ttl is None:
            return
        where = t.parts[:-1]
        try:
            st = os.fstat(t.dir_fd)
            if (st.st_dev, st.st_ino) in self.swept:
                return
            self.swept.add((st.st_dev, st.st_ino))
            before = time.time() - self.part_ttl
            dirs = remove_expired_parts(t.dir_fd, keep, before)
            if dirs:
                # Walking and removing trees may take a while: not on the event loop.
                removed = await in_thread(t.dir_fd, remove_expired_part_dirs, dirs, before)
                for name in removed:
                    log.info("removed the expired part directory %s", display(join((*where, name))))
        except Exception:
            log.warning(
                "expiring the part files in %s failed", display(join(where) or "."), exc_info=True
            )

    def move_into_place(self, final: tuple[str, ...]) -> None:
        """Rename the completed part directory to its real name (never over something)."""
        with self.tree.resolve(self.base) as t:
            shown = quote(join(final))
            if not t.is_dir:
                raise TransferError(f"the part directory of {shown} disappeared")
            if exists_at(t, final[-1]):
                raise TransferError(
                    f"{shown} appeared during the transfer; what was received is kept in "
                    f"{quote(join(t.parts))}"
                )
            try:
                os.rename(t.name, final[-1], src_dir_fd=t.dir_fd, dst_dir_fd=t.dir_fd)
            except OSError as exc:
                raise io_error(exc, "moving into place", shown) from None
        self.base, self.final = final, None

    def make_dir(self, entry: DirEntry) -> None:
        parts = (*self.base, *entry.path)
        with self.tree.resolve(parts) as t:
            if t.st is None:
                try:
                    os.mkdir(t.name, 0o700, dir_fd=t.dir_fd)
                except OSError as exc:
                    raise io_error(exc, "creating directory", quote(t.path)) from None
                self.dirs.append((t.parts, entry.mode, entry.mtime_ns))
            elif not t.is_dir:
                raise RemotePathError(f"{quote(t.path)} exists and is not a directory")
            elif self.final is not None:
                # Inside a part directory everything is this transfer's (an earlier
                # run of it created it): it still gets the sender's mode and time.
                self.dirs.append((t.parts, entry.mode, entry.mtime_ns))
        self.stats.directories += 1

    def finish_dirs(self) -> None:
        """Apply directory modes and times last, deepest first (writing changes them)."""
        dirs, self.dirs = self.dirs, []
        for parts, mode, mtime_ns in sorted(dirs, key=lambda d: len(d[0]), reverse=True):
            with self.tree.resolve(parts) as t:
                if not t.is_dir:
                    continue
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                try:
                    fd = os.open(t.name, flags, dir_fd=t.dir_fd)
                    try:
                        os.utime(fd, ns=(time.time_ns(), mtime_ns))
                        os.fchmod(fd, mode & self.mode_mask)
                    finally:
                        os.close(fd)
                except OSError as exc:
                    raise io_error(exc, "setting the mode and time of", quote(t.path)) from None

    async def receive_file(self, entry: FileEntry) -> None:
        with self.tree.resolve((*self.base, *entry.path)) as t:
            shown = file_destination(t)
            part = part_name(t.name)
            await self.expire_parts(t, part)
            if self.final is not None and t.is_file and self.resume and not exists_at(t, part):
                # Completed by an earlier run of this transfer: offered for resuming
                # (its prefix is verified like any part file's) rather than sent again.
                with contextlib.suppress(OSError):
                    os.rename(t.name, part, src_dir_fd=t.dir_fd, dst_dir_fd=t.dir_fd)
            fd = await lock_part(t.dir_fd, part, shown)
            try:
                try:
                    digest = await self.receive_into(fd, entry, shown, t.dir_fd, part)
                except NoSpace as exc:
                    raise no_space(exc, t, part, fd, entry.size) from None
                await self.store_part(fd, t, part, entry.mode, entry.mtime_ns)
            finally:
                os.close(fd)
        await self.file_done(digest)

    async def file_done(self, digest: str | None) -> None:
        self.stats.files += 1
        self.stats.sha256 = digest
        self.progress.report()
        await self.channel.send_json("done", {} if digest is None else {"sha256": digest})

    async def store_part(
        self, fd: int, t: Target, part: str, mode: int, mtime_ns: int | None
    ) -> None:
        """Give the received part its mode (and time), flush it and rename it into place."""
        shown = quote(t.path)
        try:
            os.fchmod(fd, mode & self.mode_mask)
            if mtime_ns is not None:
                os.utime(fd, ns=(time.time_ns(), mtime_ns))
        except OSError as exc:
            raise io_error(exc, "storing", shown) from None
        try:
            await in_thread(fd, os.fsync)
        except OSError as exc:
            # Linux marks pages it failed to write back clean: the part would read
            # back right from the cache while the disk holds something else, so a
            # resume would verify it and store it torn.  Only a new copy is safe.
            with contextlib.suppress(OSError):
                os.unlink(part, dir_fd=t.dir_fd)
            why = exc.strerror or str(exc)
            fate = "is unchanged" if exists_at(t, t.name) else "was not created"
            raise TransferError(
                within_reason(
                    lambda shown: (
                        f"storing {shown} failed: {why}; the copy received "
                        "was discarded (its data may not have reached the disk) and "
                        f"{shown} {fate}"
                    ),
                    t.path,
                )
            ) from None
        try:
            os.rename(part, t.name, src_dir_fd=t.dir_fd, dst_dir_fd=t.dir_fd)
        except OSError as exc:
            raise io_error(exc, "storing", shown) from None

    async def receive_to_sink(self, entry: FileEntry) -> None:
        """The one file of a get, written to a stream in order: no part file, no resume."""
        assert self.sink is not None
        shown = stream_name(self.sink, "output")
        await self.channel.send_json("ready", {"offset": 0, "sha256": EMPTY_SHA256})
        start = field_uint(
            decode_json(await expect(self.channel, "data"), "data"), "offset", "data"
        )
        if start != 0:
            raise ChannelError(f"data offset {start} is not the offered 0")
        h = hashlib.sha256() if self.encoding.checksum else None
        await self.receive_data(None, 0, entry.size, h, shown)
        flush = getattr(self.sink, "flush", None)
        if flush is not None:
            try:
                await in_thread(None, lambda _: flush())
            except BrokenPipeError:
                raise
            except OSError as exc:
                raise io_error(exc, "writing", shown) from None
        end = await expect(self.channel, "end")
        digest = check_end(end, h, shown, "what was written there is not a good copy")
        await self.file_done(digest)

    async def receive_stream(self, entry: StreamEntry) -> None:
        """The one file of a stream transfer (RFC 16.4.4): its size is known at the end."""
        with self.tree.resolve((*self.base, *entry.path)) as t:
            shown = file_destination(t)
            part = part_name(t.name)
            await self.expire_parts(t, part)
            fd = await lock_part(t.dir_fd, part, shown)
            try:
                try:
                    digest = await self.receive_stream_into(fd, shown)
                except NoSpace as exc:
                    raise no_space(exc, t, part, fd, None) from None
                except BaseException:
                    # A stream cannot be read again: nothing could resume from the part.
                    with contextlib.suppress(OSError):
                        os.unlink(part, dir_fd=t.dir_fd)
                    raise
                await self.store_part(fd, t, part, entry.mode, None)
            finally:
                os.close(fd)
        await self.file_done(digest)

    async def receive_stream_into(self, fd: int, shown: str) -> str | None:
        channel = self.channel
        try:
            os.ftruncate(fd, 0)
        except OSError as exc:
            raise io_error(exc, "receiving", shown) from None
        await channel.send_json("ready", {"offset": 0, "sha256": EMPTY_SHA256})
        h = hashlib.sha256() if self.encoding.checksum else None
        binary = self.encoding.binary
        pos = acked = pieces = 0
        worker = Worker(fd)
        try:
            while True:
                name, payload = await next_request(channel)
                if name == "end":
                    break
                if name != "more":
                    raise ChannelError(f"expected a 'more' or 'end' request, got {name!r}")
                n = field_int(
                    decode_json(payload, "more"), "size", "more", 1, CHUNK if binary else B64_CHUNK
                )
                if n > MAX_SIZE - pos:
                    raise ChannelError(f"a stream longer than {MAX_SIZE} bytes")
                if binary:
                    await self.receive_frames(worker, pos, pos + n, h, shown)
                else:
                    data, inflate_to = decode_chunk(await expect(channel, "chunk"), pos, n)
                    if (len(data) if inflate_to is None else inflate_to) != n:
                        raise ChannelError("a piece of a stream on the base64 path is one chunk")
                    await self.store(worker, data, pos, h, shown, inflate_to)
                pos += n
                pieces += 1
                # Before waiting for a source that may stay silent: a failed write must
                # end the transfer now (what follows keeps arriving in the window meanwhile).
                await self.stored(worker, shown)
                if pieces >= STREAM_ACK_PIECES or (not binary and pos - acked >= ACK_EVERY):
                    acked, pieces = pos, 0
                    await channel.send_json("ack", {"offset": pos})
        finally:
            worker.close()
        return check_end(payload, h, shown, "the copy was discarded")

    async def receive_into(
        self, fd: int, entry: FileEntry, shown: str, dir_fd: int, part: str
    ) -> str | None:
        channel = self.channel
        have = os.fstat(fd).st_size
        h = hashlib.sha256()
        if self.resume and 0 < have <= entry.size:
            try:
                h = await in_thread(fd, hash_prefix, have)
            except OSError as exc:
                raise io_error(exc, "reading", shown) from None
        else:
            have = 0
        await channel.send_json("ready", {"offset": have, "sha256": h.hexdigest()})
        start = field_uint(decode_json(await expect(channel, "data"), "data"), "offset", "data")
        if start not in (0, have):
            raise ChannelError(f"data offset {start} is neither 0 nor the offered {have}")
        if start == 0:
            h = hashlib.sha256()
        try:
            os.ftruncate(fd, start)
        except OSError as exc:
            raise io_error(exc, "receiving", shown) from None
        self.stats.resumed_from += start
        self.progress.skip(start)
        checksum = self.encoding.checksum
        await self.receive_data(fd, start, entry.size, h if checksum else None, shown)
        end = await expect(channel, "end")
        try:
            return check_end(end, h if checksum else None, shown, "the partial file was discarded")
        except Mismatch:
            with contextlib.suppress(OSError):
                os.unlink(part, dir_fd=dir_fd)
            raise

    async def receive_data(
        self, fd: int | None, pos: int, size: int, h: hashlib._Hash | None, shown: str
    ) -> None:
        """Receive bytes ``[pos, size)``; a worker hashes and writes the previous piece.

        Writes to a sink always run in a thread: a pipe whose reader pauses (a pager)
        would otherwise stop the event loop, and with it the session's heartbeats.
        """
        worker = Worker(fd, threaded=fd is None)
        try:
            if self.encoding.binary:
                await self.receive_frames(worker, pos, size, h, shown)
            else:
                await self.receive_chunks(worker, pos, size, h, shown)
            await self.stored(worker, shown)
        finally:
            worker.close()

    async def store(
        self,
        worker: Worker,
        data: bytes | memoryview,
        pos: int,
        h: hashlib._Hash | None,
        shown: str,
        inflate_to: int | None = None,
    ) -> None:
        await self.stored(worker, shown)
        if self.sink is None:
            worker.submit(store_piece, data, pos, h, inflate_to)
        else:
            worker.submit(functools.partial(sink_piece, self.sink), data, h, inflate_to)
        self.in_worker = data

    async def stored(self, worker: Worker, shown: str) -> None:
        """Wait for the piece in the worker; count it as done."""
        if worker.busy:
            try:
                n = await worker.result()
            except BrokenPipeError:
                raise  # a sink's reader went away (`| head`): its caller's to tell
            except OSError as exc:
                raise io_error(exc, "writing", shown) from None
            release(self.in_worker)
            self.in_worker = b""
            self.progress.advance(n)

    async def receive_frames(
        self, worker: Worker, pos: int, size: int, h: hashlib._Hash | None, shown: str
    ) -> None:
        pending = bytearray()
        while pos < size:
            item = await self.channel.read_buffer()
            if item is None:
                raise await peer_gone(self.channel)
            stream, data = item
            if stream != STREAM_STDOUT:
                raise ChannelError("file data arrived on an unexpected stream")
            blocks: list[tuple[bytes | memoryview, int | None]]
            if self.encoding.zlib:
                pending += data
                release(data)
                blocks = list(take_blocks(pending, size - pos))
            else:
                if len(data) > size - pos:
                    raise ChannelError(f"the sender sent more than the announced size of {shown}")
                blocks = [(data, None)]
            for body, inflate_to in blocks:
                await self.store(worker, body, pos, h, shown, inflate_to)
                pos += len(body) if inflate_to is None else inflate_to
            if pos >= size and pending:
                raise ChannelError(f"the sender sent more than the announced size of {shown}")

    async def receive_chunks(
        self, worker: Worker, pos: int, size: int, h: hashlib._Hash | None, shown: str
    ) -> None:
        channel = self.channel
        acked = pos
        while pos < size:
            payload = await expect(channel, "chunk")
            data, inflate_to = decode_chunk(payload, pos, size - pos)
            await self.store(worker, data, pos, h, shown, inflate_to)
            pos += len(data) if inflate_to is None else inflate_to
            if pos - acked >= ACK_EVERY:
                acked = pos
                await channel.send_json("ack", {"offset": pos})


def remove_expired_parts(dir_fd: int, keep: str, before: float) -> list[str]:
    """Unlink the part files in ``dir_fd`` last modified before ``before``.

    Housekeeping for a server: a transfer that was never resumed must not fill
    its disk for ever with files its clients cannot see.  Part files only
    (regular files with the part name, not ``keep``, the one about to be used),
    never one a transfer holds (its lock is tried first).  Errors only leave a
    file for next time.  Returns the part directories (not ``keep``) that may
    have expired too, their own time being that old: what is below them is for
    :func:`remove_expired_part_dirs` to examine, off the event loop.
    """
    try:
        with os.scandir(dir_fd) as it:
            names = [e.name for e in it if is_part_name(e.name) and e.name != keep]
    except OSError:
        return []
    dirs = []
    for name in names:
        try:
            # lstat first: opening a device or FIFO someone named so could have effects.
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if st.st_mtime >= before:
                continue
            if stat.S_ISDIR(st.st_mode):
                # Only where rmtree works from descriptors: elsewhere a symlink swapped
                # in while it runs could lead it out of the part directory.
                if shutil.rmtree.avoids_symlink_attacks:
                    dirs.append(name)
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = os.open(name, flags, dir_fd=dir_fd)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.path.samestat(st, os.fstat(fd)):
                os.unlink(name, dir_fd=dir_fd)
        except OSError:  # BlockingIOError: a transfer is using it
            continue
        finally:
            os.close(fd)
    return dirs


def remove_expired_part_dirs(dir_fd: int, names: list[str], before: float) -> list[str]:
    """Remove those of the part directories ``names`` in ``dir_fd`` that expired; which."""
    return [name for name in names if remove_expired_part_dir(dir_fd, name, before)]


def remove_expired_part_dir(dir_fd: int, name: str, before: float) -> bool:
    """Remove the part directory ``name`` if nothing in it changed since ``before``.

    A copy of another tree to the same name gets a part directory of its own, so
    an abandoned one is never resumed and would take space for ever.  It is
    removed only if it is not in use: no transfer holds it (hold_part_dir), no
    entry below it was modified since ``before`` (symlinks not followed), no
    regular file in it is locked (a transfer writing its part file), and it is
    small enough to examine (PART_DIR_SCAN_LIMIT, PART_DIR_DEPTH_LIMIT).  Every
    operation is relative to a directory already opened without following a
    symlink: nothing outside the part directory is ever examined or removed.
    Errors only leave it (or what remains of it) for next time.
    """
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        # Kept to the end, the exclusive lock also stops a transfer from starting to
        # resume into the directory while it is examined and removed.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_mtime >= before or not stale_tree(fd, before):
            return False
        if not still_stale(dir_fd, name, fd, before):
            return False
        empty_dir(fd)
        if not still_stale(dir_fd, name, fd, None):
            return False
        os.rmdir(name, dir_fd=dir_fd)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def still_stale(dir_fd: int, name: str, fd: int, before: float | None) -> bool:
    """Whether ``name`` still is the directory ``fd``, unchanged since ``before`` (if given)."""
    st = os.fstat(fd)
    if before is not None and st.st_mtime >= before:
        return False
    return os.path.samestat(st, os.stat(name, dir_fd=dir_fd, follow_symlinks=False))


def stale_tree(top: int, before: float) -> bool:
    """Whether nothing below the directory ``top`` changed since ``before`` or is locked.

    A tree too big to examine within the limits counts as in use: it is left
    rather than walked at any cost.
    """
    left = PART_DIR_SCAN_LIMIT

    def stale(fd: int, depth: int) -> bool:
        nonlocal left
        with os.scandir(fd) as it:
            for entry in it:
                left -= 1
                if left < 0:
                    return False
                st = entry.stat(follow_symlinks=False)
                if st.st_mtime >= before:
                    return False
                if stat.S_ISDIR(st.st_mode):
                    if depth >= PART_DIR_DEPTH_LIMIT:
                        return False
                    sub = os.open(entry.name, DIR_FLAGS, dir_fd=fd)
                    try:
                        if not os.path.samestat(st, os.fstat(sub)) or not stale(sub, depth + 1):
                            return False
                    finally:
                        os.close(sub)
                elif stat.S_ISREG(st.st_mode) and is_locked(fd, entry.name, st):
                    return False
        return True

    return stale(top, 1)


def is_locked(dir_fd: int, name: str, st: os.stat_result) -> bool:
    """Whether the regular file ``name`` (lstat ``st``) is locked, or may be.

    A transfer holds the lock of the part file it writes; any file is tried, as
    what another program holds locked is in use too.  A file that cannot be
    opened, or changed since ``st``, may be.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError:
        return True
    try:
        if not os.path.samestat(st, os.fstat(fd)):
            return True
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def empty_dir(fd: int) -> None:
    """Remove everything in the directory ``fd`` (a symlink is removed, never followed)."""
    with os.scandir(fd) as it:
        entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    for name, is_dir in entries:
        if is_dir:
            shutil.rmtree(name, dir_fd=fd)
        else:
            os.unlink(name, dir_fd=fd)


async def hold_part_dir(dir_fd: int, part: str, shown: str) -> int:
    """Open the part directory ``part`` of ``dir_fd`` (created if missing), locked shared.

    A server expiring a part directory takes its exclusive lock first and keeps
    it until the directory is gone: held, it is never expired under a transfer
    working in it, however old what it holds.  One being expired is waited for
    (briefly), then made anew.  A file system without such locks is used
    unlocked: no part directory can be expired there either.
    """
    deadline = time.monotonic() + LOCK_WAIT
    for _ in range(int(LOCK_WAIT / LOCK_POLL) + 2):
        try:
            st: os.stat_result | None = os.stat(part, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise io_error(exc, "opening the part directory for", shown) from None
        if st is None:
            try:
                os.mkdir(part, 0o700, dir_fd=dir_fd)
            except FileExistsError:
                continue  # another transfer made it meanwhile: looked at again
            except OSError as exc:
                raise io_error(exc, "creating the part directory for", shown) from None
        elif not stat.S_ISDIR(st.st_mode):
            raise RemotePathError(f"{shown}: its part directory is a {kind_of(st.st_mode)}")
        try:
            fd = os.open(part, DIR_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                continue  # removed or replaced since the lstat: looked at again
            raise io_error(exc, "opening the part directory for", shown) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline:
                raise TransferError(
                    f"the part directory of {shown} is being removed as expired; copy again"
                ) from None
            await asyncio.sleep(LOCK_POLL)
            continue
        except OSError:
            pass  # no such locks here: nothing takes the exclusive one either
        try:
            # Expired while we waited for it, the name is gone (or made anew).
            same = os.path.samestat(
                os.fstat(fd), os.stat(part, dir_fd=dir_fd, follow_symlinks=False)
            )
        except FileNotFoundError:
            same = False
        except OSError as exc:
            os.close(fd)
            raise io_error(exc, "opening the part directory for", shown) from None
        if same:
            return fd
        os.close(fd)
    raise TransferError(f"the part directory of {shown} kept changing while it was opened")


def no_space(exc: NoSpace, t: Target, part: str, fd: int, size: int | None) -> TransferError:
    """What becomes of a file whose disk filled while it was received, said (RFC 16.7).

    ``size`` is None for a stream, which is never resumed.
    """
    try:
        held = os.fstat(fd).st_size
    except OSError:
        held = 0
    replacing = exists_at(t, t.name)
    if size is None:
        with contextlib.suppress(OSError):
            os.unlink(part, dir_fd=t.dir_fd)
        fate = "it was not replaced and is unchanged" if replacing else "it was not created"
        also = ", or remove the old file," if replacing else ""
        return TransferError(
            within_reason(
                lambda shown: (
                    f"{exc.what} while writing {shown} after {human_size(held)}: {fate}; a "
                    f"copy from a stream cannot resume, so nothing was kept. Make room{also} "
                    "then copy again"
                ),
                t.path,
            )
        )
    if replacing:
        # The old file stays until the new one is complete, so both must fit at once.
        # Kept, the part would hold the disk full (unseen by a client, which cannot
        # remove it) for a resume that needs that same room: the disk is given back.
        with contextlib.suppress(OSError):
            os.unlink(part, dir_fd=t.dir_fd)
        return TransferError(
            within_reason(
                lambda shown: (
                    f"{exc.what} while writing {shown}: it was not replaced and is "
                    f"unchanged; the new copy needs {human_size(size)} free beside the old one. "
                    "Make room or remove the old file, then copy again"
                ),
                t.path,
            )
        )
    return TransferError(
        within_reason(
            lambda shown: (
                f"{exc.what} while writing {shown}: the {human_size(held)} "
                f"received of {human_size(size)} are kept; make {human_size(size - held)} more "
                "room and copy again to resume"
            ),
            t.path,
        )
    )


def within_reason(build: Callable[[str], str], path: str) -> str:
    """``build(quoted path)``, the path shortened if need be so that what is said after
    it survives the 255-byte limit of a close reason (RFC 5.6)."""
    quoted = quote(path)
    text = build(quoted)
    size = len(text.encode("utf-8"))
    if size <= MAX_REASON_BYTES:
        return text
    raw = display(path).encode("utf-8")
    half = max(MAX_REASON_BYTES - (size - len(quoted.encode("utf-8"))) - len("''..."), 0) // 2
    head = raw[:half].decode("utf-8", "ignore")
    tail = raw[len(raw) - half :].decode("utf-8", "ignore")
    return build(f"'{head}...{tail}'")


def exists_at(t: Target, name: str) -> bool:
    """Whether ``name`` exists (as anything, symlinks not followed) beside ``t``."""
    try:
        os.stat(name, dir_fd=t.dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def store_piece(
    fd: int, data: bytes | memoryview, pos: int, h: hashlib._Hash | None, inflate_to: int | None
) -> int:
    """(In a worker) decompress if needed, hash (if asked) and write one piece; return its size."""
    if inflate_to is not None:
        data = inflate(bytes(data), inflate_to)
    if h is not None:
        h.update(data)
    write_at(fd, data, pos)
    return len(data)


def sink_piece(
    sink: BinaryIO,
    _fd: None,
    data: bytes | memoryview,
    h: hashlib._Hash | None,
    inflate_to: int | None,
) -> int:
    """(In a worker) as :func:`store_piece`, writing to a stream: in order, all of it."""
    if inflate_to is not None:
        data = inflate(bytes(data), inflate_to)
    if h is not None:
        h.update(data)
    view = memoryview(data)
    while view:
        view = view[sink.write(view) :]
    return len(data)


class Mismatch(TransferError):
    """The receiver's SHA-256 of a file is not the sender's."""


def check_end(payload: bytes, h: hashlib._Hash | None, shown: str, fate: str) -> str | None:
    """The digest an ``end`` request confirms (None without ``checksum``), or why not."""
    end = decode_json(payload, "end")
    if h is None:
        if "sha256" in end:
            raise ChannelError("'end' carries a checksum the transfer did not ask for")
        return None
    digest = h.hexdigest()
    if field_sha256(end, "sha256", "end") != digest:
        raise Mismatch(
            f"checksum mismatch for {shown}: the data was corrupted in transit or the "
            f"source changed; {fate}"
        )
    return digest


def file_destination(t: Target) -> str:
    """``t`` shown, once it is known a file may be stored there (a new or a regular file)."""
    shown = quote(t.path)
    if t.is_dir:
        raise TransferError(f"cannot overwrite directory {shown} with a file")
    if t.st is not None and not t.is_file:
        raise RemotePathError(f"{shown} is a {kind_of(t.st.st_mode)}; refusing to replace it")
    return shown


async def next_request(channel: AsyncChannel) -> tuple[str, bytes]:
    request = await channel.next_request()
    if request is None:
        raise await peer_gone(channel)
    return request


def take_blocks(pending: bytearray, room: int) -> list[tuple[bytes, int | None]]:
    """Complete blocks at the front of ``pending`` (consumed from it).

    Each is (stored bytes, size to inflate them to), or (bytes, None) when stored.
    """
    out: list[tuple[bytes, int | None]] = []
    while len(pending) >= BLOCK.size:
        method, size, stored = BLOCK.unpack_from(pending)
        if method not in (METHOD_STORED, METHOD_ZLIB) or not 0 < size <= CHUNK or stored > size:
            raise ChannelError("malformed compressed block header")
        if method == METHOD_STORED and stored != size:
            raise ChannelError("malformed stored block")
        if size > room:
            raise ChannelError("a compressed block runs past the announced file size")
        end = BLOCK.size + stored
        if len(pending) < end:
            break
        body = bytes(pending[BLOCK.size : end])
        del pending[:end]
        out.append((body, size if method == METHOD_ZLIB else None))
        room -= size
    return out


def decode_chunk(payload: bytes, offset: int, room: int) -> tuple[bytes, int | None]:
    """A ``chunk`` request: (bytes, size to inflate them to or None), checked."""
    obj = decode_json(payload, "chunk")
    if field_uint(obj, "offset", "chunk") != offset:
        raise ChannelError(f"chunk offset {obj.get('offset')} where {offset} was expected")
    try:
        data = base64.b64decode(field_str(obj, "data", "chunk"), validate=True)
    except (binascii.Error, ValueError):
        raise ChannelError("malformed chunk: 'data' is not base64") from None
    limit = min(room, B64_CHUNK)
    if field_bool(obj, "zlib", "chunk"):
        size = field_uint(obj, "size", "chunk", B64_CHUNK)
        if not 0 < size <= limit or len(data) > size:
            raise ChannelError("compressed chunk size out of range")
        return data, size
    if not 0 < len(data) <= limit:
        raise ChannelError("chunk size out of range")
    return data, None


async def lock_part(dir_fd: int, part: str, shown: str) -> int:
    """Open the part file and take its lock (waiting briefly for a dying transfer)."""
    deadline = time.monotonic() + LOCK_WAIT
    for _ in range(int(LOCK_WAIT / LOCK_POLL) + 2):
        try:
            fd = open_part(dir_fd, part, shown)
        except OSError as exc:
            raise io_error(exc, "creating the part file for", shown) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(LOCK_POLL)
            continue
        # The holder may have renamed or removed the part while we waited.
        try:
            same = os.path.samestat(
                os.fstat(fd), os.stat(part, dir_fd=dir_fd, follow_symlinks=False)
            )
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
    raise TransferError(f"another transfer to {shown} is in progress")


# -- test vectors (docs/rfc.md appendix A.4) ------------------------------------------

VECTOR_CONTENT = b"Hello, PPCP!\n"
VECTOR_MTIME_NS = 1_700_000_000_000_000_000
VECTOR_MODE = 0o644


class _Capture:
    """Stands in for a client Connection: records what the mux sends, in clear."""

    role = Role.CLIENT
    is_open = True

    def __init__(self) -> None:
        self.records: list[tuple[int, bytes]] = []
        self.record_handler: Any = None

    def send_record(self, frame_type: int, plaintext: bytes | memoryview, flags: int = 0) -> None:
        self.records.append((frame_type, bytes(plaintext)))


def file_vectors() -> list[tuple[str, str]]:
    """(name, hex) of record plaintexts the code produces for fixed inputs."""
    capture = _Capture()
    mux = ChannelMux(cast("Connection", capture))
    put = {
        "v": PROTOCOL,
        "path": "docs",
        "type": "file",
        "name": "hello.txt",
        "resume": True,
        "zlib": False,
        "checksum": True,
    }
    cid = mux.open_channel("file-put", encode_json(put))
    accept = Writer().u32(cid).u32(mux.config.window).u32(mux.config.max_packet)
    accept_plain = accept.raw(encode_json({"v": PROTOCOL, "path": "docs/hello.txt"})).getvalue()
    mux.handle_record(
        Frame(FrameType.CHANNEL_ACCEPT, 0, b"", accept_plain), memoryview(accept_plain)
    )
    entry = FileEntry((), len(VECTOR_CONTENT), VECTOR_MODE, VECTOR_MTIME_NS)
    mux.send_request(cid, "file", entry.encode())
    mux.send_request(cid, "chunk", chunk_payload(0, VECTOR_CONTENT))
    digest = hashlib.sha256(VECTOR_CONTENT).hexdigest()
    mux.send_request(cid, "end", encode_json({"sha256": digest}))
    get = {
        "v": PROTOCOL,
        "path": "docs/hello.txt",
        "recursive": False,
        "zlib": False,
        "checksum": False,
    }
    mux.open_channel("file-get", encode_json(get))
    names = ["file_put_open", "file_entry", "chunk", "end", "file_get_open"]
    return [(name, plain.hex()) for name, (_, plain) in zip(names, capture.records, strict=True)]


def file_vectors_markdown() -> str:
    """The text between the ``file-vectors`` markers of the RFC."""
    lines = [
        f"Inputs: the client's first channel (id 1), window {DEFAULT_WINDOW}, "
        f"max packet {DEFAULT_MAX_PACKET};",
        f"file content `{VECTOR_CONTENT.decode().strip()}\\n` ({len(VECTOR_CONTENT)} bytes), "
        f"mode 0o{VECTOR_MODE:o}, mtime_ns {VECTOR_MTIME_NS};",
        'the server accepted the put with the payload `{"path":"docs/hello.txt","v":1}`.',
        "Values are record plaintexts (before AES-GCM), in hexadecimal: CHANNEL_OPEN for",
        "`file_put_open` and `file_get_open`, CHANNEL_REQUEST for the others.",
        "",
        "```text",
    ]
    for name, value in file_vectors():
        lines.append(f"{name} ({len(value) // 2} bytes)")
        lines.extend(value[i : i + 64] for i in range(0, len(value), 64))
    lines.append("```")
    return "\n".join(lines)
