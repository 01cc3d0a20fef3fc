"""Path confinement: every path that comes from the network stays inside one tree.

A wire path is a ``/``-separated, root-relative UTF-8 string.  It is refused
(:class:`~ppcp.core.errors.RemotePathError`) if it is absolute, has a ``..``
component, is too long (4096 bytes, 255 per component), or any name in it
holds a control character (C0, DEL, C1 -- which covers ANSI escapes) or a
Unicode bidirectional override that could disguise it in a terminal.

:class:`Tree` resolves such a path below its root the way ``openat2(...,
RESOLVE_BENEATH)`` would: one component at a time from a directory file
descriptor, never following a symlink implicitly (``O_NOFOLLOW``).  A symlink
met on the way is read and expanded by hand; if its target leaves the root
the path is refused.  Whoever swaps a directory for a symlink between two
steps only makes the next ``O_NOFOLLOW`` open fail: there is no window in
which a file outside the root is opened.  Device files, FIFOs and sockets are
refused too: opening one could block, or have side effects.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections import deque
from collections.abc import Iterable

from msgspec import Struct

from ppcp.core.errors import RemotePathError
from ppcp.utils.codec import has_control_chars

MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
MAX_SYMLINKS = 40  # expansions per resolution, as Linux's MAXSYMLINKS
PART_SUFFIX = ".ppcp-part"
DISPLAY_MAX = 160

# Bidirectional overrides/isolates and line separators: legal in file names,
# but they let a name display as something else.
_SPOOFING = frozenset("\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def display(text: str) -> str:
    """``text`` made safe for a terminal or a log line: escapes, bounded length.

    A byte that is not UTF-8 in a local file name (decoded by Python as a lone
    surrogate U+DC80..U+DCFF) shows as that byte, ``\\xff``, as ls and cp show it.
    """
    out = "".join(
        c
        if c.isprintable() and c not in _SPOOFING
        else f"\\x{ord(c):02x}"
        if ord(c) < 0x100
        else f"\\x{ord(c) - 0xDC00:02x}"
        if 0xDC80 <= ord(c) <= 0xDCFF
        else f"\\u{ord(c):04x}"
        for c in text
    )
    if len(out) > DISPLAY_MAX:
        half = DISPLAY_MAX // 2 - 2
        out = out[:half] + "..." + out[-half:]
    return out or "."


def quote(text: str) -> str:
    """``text`` displayed safely, in quotes, for an error message."""
    return f"'{display(text)}'"


def check_name(name: str, what: str = "name") -> str:
    """One path component as it may be created or sent: refuse anything unsafe."""
    if not isinstance(name, str) or not name:
        raise RemotePathError(f"{what}: empty file name")
    if name in (".", ".."):
        raise RemotePathError(f"{what}: {name!r} is not a file name")
    if "/" in name or "\x00" in name:
        raise RemotePathError(f"{what} {quote(name)}: a file name cannot contain '/'")
    if has_control_chars(name) or not _SPOOFING.isdisjoint(name):
        raise RemotePathError(
            f"{what} {quote(name)}: control characters (or bidirectional overrides) "
            "are not allowed in file names"
        )
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise RemotePathError(f"{what} {quote(name)}: not valid UTF-8") from None
    if len(raw) > MAX_NAME_BYTES:
        raise RemotePathError(f"{what} {quote(name)}: a name is limited to {MAX_NAME_BYTES} bytes")
    return name


def parse_wire_path(path: object, what: str = "path") -> tuple[str, ...]:
    """Split a root-relative wire path into checked components (``""`` is the root)."""
    if not isinstance(path, str):
        raise RemotePathError(f"{what} must be a string")
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        raise RemotePathError(f"{what} {quote(path)}: not valid UTF-8") from None
    if size > MAX_PATH_BYTES:
        raise RemotePathError(f"{what}: {size} bytes; paths are limited to {MAX_PATH_BYTES}")
    if path.startswith("/"):
        raise RemotePathError(
            f"{what} {quote(path)}: absolute paths are refused (paths are relative to "
            "the server's root)"
        )
    parts = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise RemotePathError(f"{what} {quote(path)}: '..' is not allowed")
        parts.append(check_name(part, what))
    return tuple(parts)


def join(parts: Iterable[str]) -> str:
    return "/".join(parts)


def part_name(name: str, source: str | None = None) -> str:
    """The hidden name a file (or a new directory) is received under until it is complete.

    ``source`` identifies what a directory is copied from (RFC 16.7): an interrupted
    copy of one tree is then never continued by a copy of another to the same name.
    """
    candidate = f".{name}{PART_SUFFIX}" if source is None else f".{name}.{source}{PART_SUFFIX}"
    if len(candidate.encode("utf-8")) <= MAX_NAME_BYTES:
        return candidate
    # "/" cannot be in a name: NAME and SOURCE are told apart in what is hashed.
    key = name if source is None else f"{name}/{source}"
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
    return f".{digest}{PART_SUFFIX}"


SOURCE_ID_DIGITS = 16


def source_id(*parts: str | bytes) -> str:
    """A part directory's source identifier: 16 hex digits of SHA-256 over ``parts``."""
    h = hashlib.sha256(b"ppcp part directory source")
    for part in parts:
        raw = part if isinstance(part, bytes) else part.encode("utf-8", "surrogateescape")
        h.update(len(raw).to_bytes(8, "big") + raw)
    return h.hexdigest()[:SOURCE_ID_DIGITS]


def is_part_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(PART_SUFFIX)


def kind_of(mode: int) -> str:
    """A readable file type for error messages."""
    for test, label in (
        (stat.S_ISREG, "regular file"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISLNK, "symbolic link"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return label
    return "special file"


class Target(Struct):
    """A resolved place: ``name`` inside the open directory ``dir_fd`` (owned).

    ``st`` is its ``lstat`` (never a symlink: those were followed) or None if
    nothing exists there yet.  ``name`` is ``"."`` for the root itself.
    """

    dir_fd: int
    name: str
    parts: tuple[str, ...]
    st: os.stat_result | None

    @property
    def path(self) -> str:
        return join(self.parts)

    @property
    def is_dir(self) -> bool:
        return self.st is not None and stat.S_ISDIR(self.st.st_mode)

    @property
    def is_file(self) -> bool:
        return self.st is not None and stat.S_ISREG(self.st.st_mode)

    def close(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Tree:
    """A directory that resolved paths may not leave."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.realpath(root)

    def _open_root(self) -> int:
        try:
            return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise RemotePathError(f"the root directory is not usable: {exc.strerror}") from None

    def resolve(self, parts: Iterable[str], what: str = "path") -> Target:
        """Walk ``parts`` from the root, following symlinks only while they stay inside."""
        wanted = tuple(parts)
        shown = quote(join(wanted))
        pending: deque[str] = deque(wanted)
        fds: list[int] = []  # open directories below the root, innermost last
        names: list[str] = []
        root_fd = self._open_root()
        try:
            return self._walk(root_fd, pending, fds, names, what, shown)
        except OSError as exc:
            raise RemotePathError(f"{what} {shown}: {exc.strerror or exc}") from None
        finally:
            for fd in fds:
                os.close(fd)
            os.close(root_fd)

    def _walk(
        self,
        root_fd: int,
        pending: deque[str],
        fds: list[int],
        names: list[str],
        what: str,
        shown: str,
    ) -> Target:
        expansions = 0
        while True:
            cur = fds[-1] if fds else root_fd
            if not pending:
                # Only after "." or ".." from a symlink's target: the target
                # is the directory we are in.  Express it as (parent, name).
                st = os.fstat(cur)
                if not names:
                    return Target(os.dup(root_fd), ".", (), st)
                name = names.pop()
                os.close(fds.pop())
                parent = fds[-1] if fds else root_fd
                return Target(os.dup(parent), name, (*names, name), st)
            name = pending.popleft()
            if name in ("", "."):
                continue
            if name == "..":  # only from a symlink's target
                if not fds:
                    raise RemotePathError(f"{what} {shown}: a symlink points outside the root")
                os.close(fds.pop())
                names.pop()
                continue
            try:
                st = os.stat(name, dir_fd=cur, follow_symlinks=False)
            except FileNotFoundError:
                if pending:
                    raise RemotePathError(f"{what} {shown}: {quote(name)} does not exist") from None
                return Target(os.dup(cur), name, (*names, name), None)
            if stat.S_ISLNK(st.st_mode):
                expansions += 1
                if expansions > MAX_SYMLINKS:
                    raise RemotePathError(f"{what} {shown}: too many levels of symlinks")
                target = os.readlink(name, dir_fd=cur)
                if target.startswith("/"):
                    inside = self._inside(target)
                    if inside is None:
                        raise RemotePathError(
                            f"{what} {shown}: symlink {quote(name)} points outside the root"
                        )
                    for fd in fds:
                        os.close(fd)
                    fds.clear()
                    names.clear()
                    pending.extendleft(reversed(inside))
                else:
                    pending.extendleft(reversed(target.split("/")))
                continue
            if not pending:
                return Target(os.dup(cur), name, (*names, name), st)
            if not stat.S_ISDIR(st.st_mode):
                raise RemotePathError(f"{what} {shown}: {quote(name)} is not a directory")
            try:
                fds.append(os.open(name, _DIR_FLAGS, dir_fd=cur))
            except OSError as exc:
                # ELOOP/ENOTDIR: swapped for a symlink or a file since the stat.
                raise RemotePathError(
                    f"{what} {shown}: cannot open {quote(name)}: {exc.strerror}"
                ) from None
            names.append(name)

    def _inside(self, target: str) -> tuple[str, ...] | None:
        norm = os.path.normpath(target)
        if norm == self.root:
            return ()
        prefix = self.root.rstrip("/") + "/"
        if not norm.startswith(prefix):
            return None
        return tuple(norm[len(prefix) :].split("/"))


def open_regular(target: Target, what: str = "path") -> int:
    """Open an existing regular file for reading without following a symlink or blocking."""
    if target.st is None:
        raise RemotePathError(f"{what} {quote(target.path)}: no such file")
    if not stat.S_ISREG(target.st.st_mode):
        raise RemotePathError(
            f"{what} {quote(target.path)}: a {kind_of(target.st.st_mode)} cannot be transferred"
        )
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(target.name, flags, dir_fd=target.dir_fd)
    except OSError as exc:
        raise RemotePathError(f"{what} {quote(target.path)}: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # swapped since the lstat
        os.close(fd)
        raise RemotePathError(f"{what} {quote(target.path)}: not a regular file")
    os.set_blocking(fd, True)
    return fd


def open_part(dir_fd: int, name: str, shown: str) -> int:
    """Open (or create) the part file ``name`` in ``dir_fd`` for writing, safely.

    Never follows a symlink; a part that is not a regular file is refused, and
    one with other hard links is replaced (writing it would change another file).
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(2):
        try:
            fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise RemotePathError(f"{shown}: its part file is a symlink") from None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise RemotePathError(f"{shown}: its part file is a {kind_of(st.st_mode)}")
        if st.st_nlink <= 1:
            return fd
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
        flags |= os.O_EXCL
    raise RemotePathError(f"{shown}: cannot create its part file")
