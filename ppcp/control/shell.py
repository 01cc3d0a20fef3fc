"""Shell service: an interactive PTY session on the server, and the client's terminal.

Wire schema (docs/rfc.md section 15.10.3, "shell"):

* channel kind ``"shell"``; open payload ``{"term": str, "cols": int, "rows": int,
  "command": str | null}``: the server allocates a pseudo-terminal of that size,
  sets ``TERM`` and runs ``command`` through the user's shell, or, if null, the
  user's login shell; accept payload ``{"pid": int}``; with ``"pty": false`` the
  same shell runs on pipes instead, exactly as an exec command (input that is not
  a terminal: its end is the shell's end of file);
* data in both directions is stream 0 (keystrokes in, terminal output out);
  the client's EOF makes the server type the terminal's EOF character;
* requests to the server: ``"resize" {"cols", "rows"}`` (TIOCSWINSZ, which
  sends SIGWINCH to the foreground job) and ``"signal" {"signal"}``;
* the server ends with EOF, ``"exit-status"`` (as for exec), CHANNEL_CLOSE.

A shell can run any command, so the server refuses it when exec is disabled
or restricted to an allow-list, as well as when ``allow_shell`` is False.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import signal as _signal
import struct
import sys
import termios
import threading
import tty
from typing import TYPE_CHECKING, Any, TypeVar

from msgspec import Struct

from ppcp.control.aio_channel import AsyncChannel, decode_json, encode_json
from ppcp.control.child import Child
from ppcp.control.exec import (
    AsyncProcess,
    check_os_text,
    decode_exit_status,
    encode_exit_status,
    home_directory,
    killpg,
    require_capability,
    run_child,
    user_shell,
    valid_signal,
)
from ppcp.control.shell_api import DEFAULT_TERM
from ppcp.core.errors import ChannelError, CloseCode, PPCPError, error_for_code
from ppcp.utils.codec import has_control_chars

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from ppcp.control.router import ServerPolicy
    from ppcp.transport.aio_driver import AsyncSession
    from ppcp.transport.blocking import Session

log = logging.getLogger("ppcp.server")

T = TypeVar("T")
KIND = "shell"
CAPABILITY = "shell"
CHUNK = 64 * 1024
MAX_TERM_BYTES = 64
MAX_DIMENSION = 0xFFFF
# After the shell exits, output still in the pty is drained until the pty
# reports end of file, or until it has been quiet this long (a background job
# may keep the terminal open forever).
DRAIN_QUIET = 0.5
# How long a hung-up shell has to pass SIGHUP on to its jobs and exit before SIGKILL.
HANGUP_GRACE = 2.0


class ShellSpec(Struct, frozen=True):
    term: str = DEFAULT_TERM
    cols: int = 80
    rows: int = 24
    command: str | None = None
    # False: no terminal, stdin/stdout/stderr are pipes as for exec (``ssh host < script``).
    pty: bool = True

    def __post_init__(self) -> None:
        if not sendable_term(self.term):
            raise ChannelError(f"shell: invalid terminal type {self.term!r}")
        check_size(self.cols, self.rows)
        if self.command is not None:
            if not self.command.strip() or "\x00" in self.command:
                raise ChannelError("shell: invalid command")
            check_os_text(self.command, "shell: command")

    def encode(self) -> bytes:
        obj: dict[str, Any] = {
            "term": self.term,
            "cols": self.cols,
            "rows": self.rows,
            "command": self.command,
        }
        if not self.pty:
            obj["pty"] = False
        return encode_json(obj)

    @classmethod
    def decode(cls, payload: bytes) -> ShellSpec:
        obj = decode_json(payload, "shell request")
        term = obj.get("term", DEFAULT_TERM)
        command = obj.get("command")
        if not isinstance(term, str) or (command is not None and not isinstance(command, str)):
            raise ChannelError("shell: term and command must be strings")
        pty = obj.get("pty", True)
        if not isinstance(pty, bool):
            raise ChannelError("shell: pty must be a boolean")
        cols, rows = _size(obj)
        return cls(term, cols, rows, command, pty)


def sendable_term(term: str) -> bool:
    """1 to 64 bytes of UTF-8 without control characters (RFC, shell)."""
    try:
        raw = term.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: from a TERM that is not UTF-8
        return False
    return 0 < len(raw) <= MAX_TERM_BYTES and not has_control_chars(term)


def check_size(cols: int, rows: int) -> None:
    for value in (cols, rows):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ChannelError("terminal size must be integers")
        if not 1 <= value <= MAX_DIMENSION:
            raise ChannelError(f"terminal size out of range: {cols}x{rows}")


def _size(obj: dict[str, Any]) -> tuple[int, int]:
    cols, rows = obj.get("cols", 80), obj.get("rows", 24)
    check_size(cols, rows)
    return cols, rows


def decode_resize(payload: bytes) -> tuple[int, int]:
    return _size(decode_json(payload, "resize request"))


def set_winsize(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


# -- client -------------------------------------------------------------------------


class AsyncShell:
    """An interactive shell on the server (asyncio API).

    :meth:`read` returns terminal output as it arrives; :meth:`write` types.
    """

    def __init__(self, channel: AsyncChannel) -> None:
        self._channel = channel
        self.pid: int | None = None
        with contextlib.suppress(ChannelError):
            pid = decode_json(channel.open_payload, "shell accept").get("pid")
            self.pid = pid if isinstance(pid, int) and not isinstance(pid, bool) else None
        self.exit_code: int | None = None
        self.signal_number: int | None = None
        self._done = False

    @property
    def channel(self) -> AsyncChannel:
        return self._channel

    async def read(self) -> bytes | None:
        """The next chunk of terminal output, or None once it has ended."""
        item = await self._channel.read()
        return None if item is None else item[1]

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        await self._channel.write(data)

    async def send_eof(self) -> None:
        """The server types the terminal's EOF character (usually ^D)."""
        await self._channel.send_eof()

    async def resize(self, cols: int, rows: int) -> None:
        check_size(cols, rows)
        await self._channel.send_json("resize", {"cols": cols, "rows": rows})

    async def signal(self, signum: int) -> None:
        """Signal the shell's process group."""
        await self._channel.send_json("signal", {"signal": int(signum)})

    async def wait(self) -> int:
        """The shell's exit code (128 + n if signal n killed it); unread output is dropped."""
        if not self._done:
            while await self._channel.read() is not None:
                pass
            while True:
                request = await self._channel.next_request()
                if request is None:
                    self._channel.session.raise_if_failed()
                    code, reason = await self._channel.wait_closed()
                    if code != CloseCode.NORMAL:
                        raise error_for_code(code, reason)
                    raise ChannelError("the shell ended without an exit status", remote=True)
                if request[0] == "exit-status":
                    self.exit_code, self.signal_number, _ = decode_exit_status(request[1])
                    self._done = True
                    break
        if self.exit_code is not None:
            return self.exit_code
        return 128 + (self.signal_number or 0)

    async def close(self) -> None:
        """Close the channel (the server hangs up the shell's terminal)."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncShell:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def open_shell(
    session: AsyncSession, term: str, cols: int, rows: int, command: str | None
) -> AsyncShell:
    """:meth:`ppcp.aio.AsyncSession.open_shell`."""
    spec = ShellSpec(term, cols, rows, command)
    require_capability(session, CAPABILITY)
    return AsyncShell(await session.open_channel(KIND, spec.encode()))


async def start_shell(session: AsyncSession, command: str | None) -> AsyncProcess:
    """:meth:`ppcp.aio.AsyncSession.start_shell`."""
    spec = ShellSpec(command=command, pty=False)
    require_capability(session, CAPABILITY)
    return AsyncProcess(await session.open_channel(KIND, spec.encode()))


class Shell:
    """Blocking twin of :class:`AsyncShell`."""

    def __init__(self, inner: AsyncShell) -> None:
        self._inner = inner

    @property
    def aio(self) -> AsyncShell:
        return self._inner

    @property
    def exit_code(self) -> int | None:
        return self._inner.exit_code

    @property
    def signal_number(self) -> int | None:
        return self._inner.signal_number

    def read(self, timeout: float | None = None) -> bytes | None:
        return _run(_timed(self._inner.read(), timeout))

    def write(self, data: bytes | bytearray | memoryview) -> None:
        _run(self._inner.write(bytes(data)))

    def send_eof(self) -> None:
        _run(self._inner.send_eof())

    def resize(self, cols: int, rows: int) -> None:
        _run(self._inner.resize(cols, rows))

    def signal(self, signum: int) -> None:
        _run(self._inner.signal(signum))

    def wait(self, timeout: float | None = None) -> int:
        return _run(_timed(self._inner.wait(), timeout))

    def close(self) -> None:
        _run(self._inner.close())

    def __enter__(self) -> Shell:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _run(coro: Coroutine[Any, Any, T]) -> T:
    from ppcp.transport.blocking import run

    return run(coro)


async def _timed(aw: Coroutine[Any, Any, T], timeout: float | None) -> T:
    return await asyncio.wait_for(aw, timeout)


def attach_terminal(
    session: Session,
    command: str | None,
    term: str | None,
    stdin: int | None,
    stdout: int | None,
) -> int:
    """:meth:`ppcp.Session.shell`: the local terminal on a remote shell; its exit code."""
    in_fd = sys.stdin.fileno() if stdin is None else stdin
    out_fd = sys.stdout.fileno() if stdout is None else stdout
    if not term:
        # $TERM only picks the remote terminfo entry: one the wire cannot carry
        # (not UTF-8, too long) must not cost the user the shell, as it does not with ssh.
        local = os.environ.get("TERM")
        term = local if local and sendable_term(local) else DEFAULT_TERM
    cols, rows = _terminal_size(out_fd)
    sh = session.open_shell(term=term, cols=cols, rows=rows, command=command)
    return _attach(sh, in_fd, out_fd, (cols, rows))


def _terminal_size(fd: int) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return 80, 24
    if not size.columns or not size.lines:
        # A terminal that does not know its size (0x0, as a new pty): 1x1 made
        # every prompt wrap; programs assume 80x24 then.
        return 80, 24
    return size.columns, size.lines


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def _attach(sh: Shell, in_fd: int, out_fd: int, size_sent: tuple[int, int]) -> int:
    loop = _run(_running_loop())  # the blocking API's loop thread
    saved = termios.tcgetattr(in_fd) if os.isatty(in_fd) else None
    previous_handler: Any = None
    watching_winch = threading.current_thread() is threading.main_thread()
    forwarder: Any = None
    try:
        if saved is not None:
            tty.setraw(in_fd, termios.TCSADRAIN)  # as ssh does: keep typeahead
        window = _WindowSync(sh.aio, out_fd, size_sent)
        if watching_winch:

            def on_winch(signum: int, frame: object) -> None:
                asyncio.run_coroutine_threadsafe(_quiet(window.sync()), loop)

            previous_handler = _signal.signal(_signal.SIGWINCH, on_winch)
        forwarder = asyncio.run_coroutine_threadsafe(_forward_input(sh.aio, in_fd, window), loop)
        while True:
            data = sh.read()
            if data is None:
                break
            _write_all(out_fd, data)
        return sh.wait()
    finally:
        if forwarder is not None:
            forwarder.cancel()
        if watching_winch:
            _signal.signal(_signal.SIGWINCH, previous_handler or _signal.SIG_DFL)
        if saved is not None:
            termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)
        with contextlib.suppress(PPCPError):
            sh.close()


async def _quiet(coro: Coroutine[Any, Any, None]) -> None:
    with contextlib.suppress(PPCPError):
        await coro


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _WindowSync:
    """Sends the local terminal's size when it differs from the last size sent.

    Runs only on the loop thread.  The input forwarder calls it before every
    keystroke chunk, so a resize always reaches the server ahead of what was
    typed after it; SIGWINCH alone cannot promise that, because its handler
    runs on the main thread and races the loop's read of the keystrokes.
    """

    def __init__(self, sh: AsyncShell, fd: int, size_sent: tuple[int, int]) -> None:
        self._sh = sh
        self._fd = fd
        self._sent = size_sent

    async def sync(self) -> None:
        size = _terminal_size(self._fd)
        if size != self._sent:
            self._sent = size
            await self._sh.resize(*size)


async def _forward_input(sh: AsyncShell, fd: int, window: _WindowSync) -> None:
    """Local keystrokes -> the remote terminal, until local EOF or the channel ends."""
    loop = asyncio.get_running_loop()
    try:
        while True:
            try:
                await _readable(loop, fd)
                data = os.read(fd, CHUNK)
            except PermissionError:  # not pollable (a regular file): read in a thread
                data = await loop.run_in_executor(None, os.read, fd, CHUNK)
            if not data:
                await sh.send_eof()
                return
            await window.sync()
            await sh.write(data)
    except (PPCPError, OSError):
        return


async def _readable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    future: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not future.done():
            future.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await future
    finally:
        loop.remove_reader(fd)


# -- server -------------------------------------------------------------------------


async def serve_shell(channel: AsyncChannel, policy: ServerPolicy) -> None:
    if not policy.allow_shell or not policy.allow_exec or policy.exec_allowlist is not None:
        channel.reject(
            CloseCode.POLICY_DENIED,
            "interactive shells are disabled on this server"
            if not policy.allow_shell
            else "interactive shells are disabled by the server's exec policy",
        )
        return
    try:
        spec = ShellSpec.decode(channel.open_payload)
    except ChannelError as exc:
        channel.reject(exc.code, exc.message)
        return
    shell = user_shell()
    # No command: a login shell ("-bash" as argv[0]), as sshd starts it.
    argv = ["-" + os.path.basename(shell)] if spec.command is None else [shell, "-c", spec.command]
    if not spec.pty:
        await _serve_without_terminal(channel, argv, shell)
        return
    env = dict(os.environ)
    env["TERM"] = spec.term
    master, slave = os.openpty()
    try:
        set_winsize(slave, spec.cols, spec.rows)
        proc = Child.spawn_on_terminal(argv, slave, cwd=home_directory(), env=env, executable=shell)
    except BaseException as exc:
        os.close(master)
        if not isinstance(exc, OSError):
            raise
        channel.reject(CloseCode.CHANNEL_ERROR, f"cannot start {shell}: {exc.strerror or exc}")
        return
    finally:
        os.close(slave)
    log.info("shell for %s: %s (%dx%d)", channel.session.peer_name, argv, spec.cols, spec.rows)
    # A flag, not _supervise's result: see serve_exec.
    reported = asyncio.Event()
    terminal = [master]  # emptied once closed
    try:
        os.set_blocking(master, False)
        channel.accept(encode_json({"pid": proc.pid}))
        await _supervise(channel, proc, master, reported)
    finally:
        try:
            if not reported.is_set():
                await _hang_up(proc, terminal)
            if proc.returncode is None:
                await proc.wait()
        finally:
            for fd in terminal:
                os.close(fd)
            proc.close()  # even if cancelled again while reaping


async def _hang_up(proc: Child, terminal: list[int]) -> None:
    """The connection is gone: hang up as a terminal whose line dropped does.

    SIGHUP to the shell's group, which (bash) passes it on to its jobs, each in a
    process group of its own, as under sshd: killing the group straight away left
    those jobs running, reparented to init.  The signal goes before the terminal
    closes, so that the shell does not read end of file first and exit the way
    `exit` does (without hanging up its jobs).  Then closing the terminal hangs up
    what else still uses it, and SIGKILL ends whatever is left in the group.
    """
    killpg(proc.pid, _signal.SIGHUP)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), HANGUP_GRACE)
    finally:
        os.close(terminal.pop())
        killpg(proc.pid, _signal.SIGKILL)


async def _serve_without_terminal(channel: AsyncChannel, argv: list[str], shell: str) -> None:
    """The shell on pipes, run exactly as an exec command is (stderr apart, EOF is EOF)."""
    try:
        proc = Child.spawn(argv, cwd=home_directory(), executable=shell)
    except OSError as exc:
        channel.reject(CloseCode.CHANNEL_ERROR, f"cannot start {shell}: {exc.strerror or exc}")
        return
    log.info("shell for %s: %s (no terminal)", channel.session.peer_name, argv)
    await run_child(channel, proc, None, True)


async def _supervise(
    channel: AsyncChannel, proc: Child, master: int, reported: asyncio.Event
) -> None:
    exited = asyncio.Event()
    output: asyncio.Future[Any] = asyncio.ensure_future(_pump_output(channel, master, exited))
    control: asyncio.Future[Any] = asyncio.ensure_future(_control(channel, proc, master))
    keys = asyncio.ensure_future(_pump_input(channel, master))
    waiter: asyncio.Future[Any] = asyncio.ensure_future(proc.wait())
    waiter.add_done_callback(lambda _: exited.set())
    finished: asyncio.Future[Any] = asyncio.ensure_future(asyncio.gather(output, waiter))
    try:
        await asyncio.wait({control, finished}, return_when=asyncio.FIRST_COMPLETED)
        if not finished.done() or finished.exception() is not None or channel.closed:
            return
        assert proc.returncode is not None
        await channel.finish("exit-status", encode_exit_status(proc.returncode, False))
        reported.set()
    except PPCPError:
        return
    finally:
        for task in (output, control, keys, waiter, finished):
            task.cancel()
        await asyncio.gather(output, control, keys, waiter, finished, return_exceptions=True)


async def _pump_output(channel: AsyncChannel, master: int, exited: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            data = os.read(master, CHUNK)
        except BlockingIOError:
            if exited.is_set():
                # The shell is gone: drain what is left, bounded by a quiet period.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_readable(loop, master), DRAIN_QUIET)
                    continue
                return
            await _first(_readable(loop, master), exited.wait())
            continue
        except OSError as exc:
            if exc.errno == errno.EIO:  # every slave fd closed: end of output
                return
            raise
        if not data:
            return
        await channel.write(data)


async def _first(*aws: Coroutine[Any, Any, Any]) -> None:
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _pump_input(channel: AsyncChannel, master: int) -> None:
    loop = asyncio.get_running_loop()
    try:
        while True:
            item = await channel.read()
            if item is None:
                break
            await _write_master(loop, master, item[1])
        # The client's EOF: type the terminal's EOF character (^D by default).
        with contextlib.suppress(termios.error):
            veof = termios.tcgetattr(master)[6][termios.VEOF]
            await _write_master(loop, master, veof if isinstance(veof, bytes) else b"\x04")
    except (PPCPError, OSError):
        return


async def _write_master(loop: asyncio.AbstractEventLoop, master: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(master, view) :]
        except BlockingIOError:
            await _writable(loop, master)


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    future: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not future.done():
            future.set_result(None)

    loop.add_writer(fd, ready)
    try:
        await future
    finally:
        loop.remove_writer(fd)


async def _control(channel: AsyncChannel, proc: Child, master: int) -> None:
    while True:
        request = await channel.next_request()
        if request is None:
            return
        name, payload = request
        try:
            if name == "resize":
                set_winsize(master, *decode_resize(payload))
            elif name == "signal":
                killpg(proc.pid, valid_signal(payload))
            else:
                log.debug("shell: ignoring unknown request %r", name)
        except (ChannelError, OSError) as exc:
            log.info("shell: bad %r request: %s", name, exc)


__all__ = [
    "AsyncShell",
    "Shell",
    "attach_terminal",
    "open_shell",
    "serve_shell",
]
