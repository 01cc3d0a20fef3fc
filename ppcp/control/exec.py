"""Exec service: run a command on the server, stream its I/O, report how it ended.

Wire schema (docs/rfc.md section 15.10.2, "exec"):

* channel kind ``"exec"``; open payload, a JSON object: ``{"command": str}`` (run
  by the server user's shell, ``$SHELL -c``) or ``{"argv": [str, ...]}`` (run
  directly, as execvp does: a text file without ``#!`` runs as ``/bin/sh FILE
  ARGS...``), plus optional ``"cwd"``, ``"env"`` (merged into the server's
  environment) and ``"timeout"`` (seconds);
* accept payload ``{"pid": int}``: the channel is accepted once the process runs;
  a program that cannot be started (argv form) is a CHANNEL_REJECT with
  CHANNEL_ERROR and the reason ``cannot execute 'PROGRAM': ENAME: text``;
* client -> server data is stdin (stream 0); the client's EOF closes stdin;
* server -> client data is stdout (stream 0) and stderr (stream 1), as produced;
* requests to the server: ``"signal" {"signal": n}`` (to the process group) and
  ``"cancel" {}`` (SIGTERM to the group, SIGKILL after :data:`KILL_GRACE` s);
* the server ends with EOF, then ``"exit-status" {"exit_code", "signal",
  "timed_out"}``, then CHANNEL_CLOSE.

The process runs in a new session (its own process group).  Whatever ends the
channel early (the client closes it, the session dies, the handler task is
cancelled) kills the whole group with SIGKILL.  Output is read in chunks of at
most :data:`CHUNK` bytes and written with flow control, so a fast producer
blocks on its pipe instead of filling the server's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import os
import pwd
import re
import signal as _signal
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from msgspec import Struct

from ppcp.control import child
from ppcp.control.aio_channel import AsyncChannel, decode_json, encode_json
from ppcp.control.channels import MAX_PAYLOAD, STREAM_STDERR, STREAM_STDOUT
from ppcp.control.child import Child
from ppcp.core.errors import (
    ChannelError,
    CloseCode,
    PolicyDenied,
    PPCPError,
    error_for_code,
)

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from ppcp.control.router import ServerPolicy
    from ppcp.transport.aio_driver import AsyncSession
    from ppcp.transport.blocking import Session

log = logging.getLogger("ppcp.server")

T = TypeVar("T")
KIND = "exec"
CAPABILITY = "exec"
CHUNK = 64 * 1024
KILL_GRACE = 2.0
# The longest a server holds a late accept (RFC 15.10.2): also how much
# later than otherwise a client that gives up can stop the command.
LATE_ACCEPT_HOLD = 0.5
MAX_ARGS = 4096
# With an allow-list, a command string is accepted only if it is plain words
# (no quoting, expansion, redirection, pipes, globs...): it is then split on
# whitespace and run without a shell.
_PLAIN_COMMAND = re.compile(r"^[A-Za-z0-9_./:=,+@%-]+( +[A-Za-z0-9_./:=,+@%-]+)*$")


# -- results ----------------------------------------------------------------------


class ExecResult(Struct, frozen=True):
    """How a remote command ended (and, from :meth:`exec`, what it printed).

    Exactly one of ``exit_code`` and ``signal`` is set.  ``timed_out`` is
    True when the server stopped the command because its timeout passed.
    """

    stdout: bytes
    stderr: bytes
    exit_code: int | None
    signal: int | None
    timed_out: bool = False

    @property
    def returncode(self) -> int:
        """subprocess-style code: the exit code, or ``-signal``."""
        if self.exit_code is not None:
            return self.exit_code
        return -(self.signal or 0)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class ExecSpec(Struct, frozen=True):
    """A validated exec request (the open payload)."""

    argv: tuple[str, ...] | None = None
    command: str | None = None
    cwd: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    timeout: float | None = None
    # False: the command's stdin is at end of file from the start (ssh -n), and
    # the client sends neither stdin data nor EOF: one message fewer each way.
    stdin: bool = True
    # True: the server may hold its CHANNEL_ACCEPT (up to LATE_ACCEPT_HOLD) and
    # send it with the command's first output or its exit status.
    late_accept: bool = False

    def __post_init__(self) -> None:
        if (self.argv is None) == (self.command is None):
            raise ChannelError("exec: exactly one of argv and command is required")
        if self.late_accept and self.stdin:
            # Input waits for the accept (the opener sends nothing before it),
            # and a command may wait for its input before it writes anything.
            raise ChannelError('exec: "late_accept" needs "stdin": false')
        if self.argv is not None:
            if not self.argv or len(self.argv) > MAX_ARGS:
                raise ChannelError(
                    f"exec: argv must hold 1..{MAX_ARGS} strings, not {len(self.argv)}"
                )
            if not self.argv[0]:
                raise ChannelError("exec: empty program name")
            for arg in self.argv:
                _check_text(arg, "argument")
        if self.command is not None:
            if not self.command.strip():
                raise ChannelError("exec: empty command")
            _check_text(self.command, "command")
        if self.cwd is not None:
            _check_text(self.cwd, "cwd")
        for key, value in self.env:
            if not key or "=" in key:
                raise ChannelError(f"exec: invalid environment variable name {key!r}")
            _check_text(key, "environment name")
            _check_text(value, "environment value")
        if self.timeout is not None and not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise ChannelError("exec: timeout must be a positive number of seconds")

    @classmethod
    def build(
        cls,
        command: str | Sequence[str],
        cwd: str | None,
        env: Mapping[str, str] | None,
        timeout: float | None,
        stdin: bool = True,
        late_accept: bool = False,
    ) -> ExecSpec:
        env_items = tuple(sorted((env or {}).items()))
        if isinstance(command, str):
            return cls(None, command, cwd, env_items, timeout, stdin, late_accept)
        return cls(tuple(command), None, cwd, env_items, timeout, stdin, late_accept)

    def encode(self) -> bytes:
        obj: dict[str, Any] = {}
        if self.argv is not None:
            obj["argv"] = list(self.argv)
        else:
            obj["command"] = self.command
        if self.cwd is not None:
            obj["cwd"] = self.cwd
        if self.env:
            obj["env"] = dict(self.env)
        if self.timeout is not None:
            obj["timeout"] = self.timeout
        if not self.stdin:
            obj["stdin"] = False
        if self.late_accept:
            obj["late_accept"] = True
        return encode_json(obj)

    @classmethod
    def decode(cls, payload: bytes) -> ExecSpec:
        obj = decode_json(payload, "exec request")
        unknown = set(obj) - {"argv", "command", "cwd", "env", "timeout", "stdin", "late_accept"}
        if unknown:
            raise ChannelError(f"exec: unknown fields {sorted(unknown)}")
        argv = obj.get("argv")
        if argv is not None and not (
            isinstance(argv, list) and all(isinstance(a, str) for a in argv)
        ):
            raise ChannelError("exec: argv must be a list of strings")
        command = obj.get("command")
        if command is not None and not isinstance(command, str):
            raise ChannelError("exec: command must be a string")
        cwd = obj.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise ChannelError("exec: cwd must be a string")
        env = obj.get("env", {})
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise ChannelError("exec: env must map strings to strings")
        timeout = obj.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float)
        ):
            raise ChannelError("exec: timeout must be a number")
        stdin = obj.get("stdin", True)
        if not isinstance(stdin, bool):
            raise ChannelError("exec: stdin must be a boolean")
        late_accept = obj.get("late_accept", False)
        if not isinstance(late_accept, bool):
            raise ChannelError("exec: late_accept must be a boolean")
        return cls(
            tuple(argv) if argv is not None else None,
            command,
            cwd,
            tuple(sorted(env.items())),
            float(timeout) if timeout is not None else None,
            stdin,
            late_accept,
        )


def _check_text(value: str, what: str) -> None:
    if "\x00" in value:
        raise ChannelError(f"exec: {what} contains a NUL byte")
    if not value.isascii():
        check_os_text(value, f"exec: {what}")


def check_os_text(value: str, what: str) -> None:
    """ChannelError unless ``value`` is bytes the OS can take (RFC, exec): UTF-8, where a
    lone surrogate U+DC80..U+DCFF stands for one byte that is not (surrogateescape).
    Any other lone surrogate stands for nothing, and would fail the spawn."""
    try:
        value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        bad = ord(value[exc.start])
        raise ChannelError(
            f"{what} contains U+{bad:04X}, a lone surrogate that stands for no byte"
        ) from None


def decode_exit_status(payload: bytes) -> tuple[int | None, int | None, bool]:
    """``(exit_code, signal, timed_out)`` from an exit-status request."""
    obj = decode_json(payload, "exit-status")
    code, sig, timed_out = obj.get("exit_code"), obj.get("signal"), obj.get("timed_out", False)
    for value in (code, sig):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ChannelError("malformed exit-status: codes must be integers")
    if (code is None) == (sig is None) or not isinstance(timed_out, bool):
        raise ChannelError("malformed exit-status")
    return code, sig, timed_out


def encode_exit_status(returncode: int, timed_out: bool) -> bytes:
    if returncode < 0:
        return encode_json({"exit_code": None, "signal": -returncode, "timed_out": timed_out})
    return encode_json({"exit_code": returncode, "signal": None, "timed_out": timed_out})


def require_capability(session: AsyncSession, capability: str) -> None:
    """Refuse locally a service the session did not negotiate (it needs channels too)."""
    session.raise_if_failed()
    for needed in ("channels", capability):
        if needed not in session.capabilities:
            raise ChannelError(f"the peer does not offer {needed!r} (capability not negotiated)")


# -- client -------------------------------------------------------------------------


class AsyncProcess:
    """A remote command started with :meth:`ExecMixin.start_exec` (asyncio).

    ``async for stream, data in proc`` yields output as it is produced
    (stream 0 is stdout, 1 stderr) until the command's output ends.  Use it
    as an async context manager: leaving the block early closes the channel,
    and the server kills the command's process group.
    """

    def __init__(self, channel: AsyncChannel) -> None:
        self._channel = channel
        self.pid: int | None = None
        try:
            accepted = decode_json(channel.open_payload, "exec accept")
            pid = accepted.get("pid")
            self.pid = pid if isinstance(pid, int) and not isinstance(pid, bool) else None
        except ChannelError:
            pass
        self._result: ExecResult | None = None

    @property
    def channel(self) -> AsyncChannel:
        return self._channel

    @property
    def exit_code(self) -> int | None:
        return self._result.exit_code if self._result else None

    @property
    def signal_number(self) -> int | None:
        return self._result.signal if self._result else None

    @property
    def timed_out(self) -> bool:
        return self._result.timed_out if self._result else False

    @property
    def finished(self) -> bool:
        return self._result is not None

    def __aiter__(self) -> AsyncProcess:
        return self

    async def __anext__(self) -> tuple[int, bytes]:
        item = await self.read()
        if item is None:
            raise StopAsyncIteration
        return item

    async def read(self) -> tuple[int, bytes] | None:
        """The next ``(stream, data)`` chunk, or None once the output has ended."""
        return await self._channel.read()

    async def write_stdin(self, data: bytes | bytearray | memoryview) -> None:
        """Send bytes to the command's stdin (waits for flow-control window)."""
        await self._channel.write(data)

    async def close_stdin(self) -> None:
        """End the command's stdin (it reads EOF)."""
        await self._channel.send_eof()

    async def signal(self, signum: int) -> None:
        """Send a signal to the command's process group."""
        await self._channel.send_json("signal", {"signal": int(signum)})

    async def cancel(self) -> None:
        """Stop the command: SIGTERM to its group, SIGKILL if it is still alive later."""
        await self._channel.send_json("cancel", {})

    async def wait(self) -> ExecResult:
        """Wait for the exit status; unread output is discarded."""
        if self._result is not None:
            return self._result
        while await self._channel.read() is not None:
            pass
        while True:
            request = await self._channel.next_request()
            if request is None:
                break
            name, payload = request
            if name == "exit-status":
                code, sig, timed_out = decode_exit_status(payload)
                self._result = ExecResult(b"", b"", code, sig, timed_out)
                return self._result
        self._channel.session.raise_if_failed()
        code_, reason = await self._channel.wait_closed()
        if code_ != CloseCode.NORMAL:
            raise error_for_code(code_, reason)
        raise ChannelError("the remote command ended without an exit status", remote=True)

    async def close(self) -> None:
        """Close the channel; a command still running is killed by the server."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncProcess:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


# exec() calls of this process waiting for their command (on any event loop).
_execs_in_flight = 0


class ExecMixin:
    """asyncio client methods mixed into :class:`ppcp.aio.AsyncSession`."""

    async def start_exec(
        self,
        command: str | Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stdin: bool = True,
        late_accept: bool = False,
    ) -> AsyncProcess:
        """Start ``command`` on the server and return it for streaming I/O.

        A string runs through the server user's shell (as ``ssh host 'cmd'``
        does); a sequence is an argv run directly.  With ``stdin=False`` the
        command's stdin is empty from the start (``ssh -n``) and nothing may
        be written to it.  Raises :class:`~ppcp.PolicyDenied` if the server's
        policy refuses it and :class:`~ppcp.ChannelError` if the program
        cannot be started.

        ``late_accept=True`` (with ``stdin=False``) lets the server answer
        with the command's first output or its exit status, up to half a
        second late: one message and one wake-up fewer per command, for a
        caller that needs nothing before then (as :meth:`exec`).  Until the
        answer, the command cannot be stopped from here.
        """
        session = cast("AsyncSession", self)
        spec = ExecSpec.build(command, cwd, env, timeout, stdin, late_accept)
        require_capability(session, CAPABILITY)
        payload = spec.encode()
        if len(payload) > MAX_PAYLOAD:
            # Said here, in the user's terms: the channel layer knows only payloads.
            raise ChannelError(
                f"the command is too long ({len(payload)} bytes encoded; the limit is "
                f"{MAX_PAYLOAD} bytes for command, env and cwd together)"
            )
        channel = await session.open_channel(KIND, payload)
        return AsyncProcess(channel)

    async def exec(
        self,
        command: str | Sequence[str],
        *,
        stdin: bytes | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        """Run ``command`` on the server and collect its output and exit status."""
        global _execs_in_flight
        session = cast("AsyncSession", self)
        # A late accept saves this client a wake-up per command, but its
        # handling then follows the command's end instead of overlapping the
        # command's run: CPU well spent while other commands are in flight
        # (bench `concurrent`: ~0.1 ms less client CPU each), latency lost
        # when this one is all there is (bench `warm`: ~0.05 ms more).
        late_accept = not stdin and _execs_in_flight > 0
        _execs_in_flight += 1
        try:
            proc = await self.start_exec(
                command,
                cwd=cwd,
                env=env,
                timeout=timeout,
                stdin=bool(stdin),
                late_accept=late_accept,
            )
            async with proc:
                # Input is fed beside the output, which may fill the window first.
                # No input needs no message at all: the command's stdin starts at EOF.
                feeder = session.spawn(_feed_stdin(proc, stdin)) if stdin else None
                stdout, stderr = bytearray(), bytearray()
                try:
                    async for stream, data in proc:
                        (stderr if stream == STREAM_STDERR else stdout).extend(data)
                    result = await proc.wait()
                finally:
                    if feeder is not None:
                        feeder.cancel()
        finally:
            _execs_in_flight -= 1
        return ExecResult(
            bytes(stdout), bytes(stderr), result.exit_code, result.signal, result.timed_out
        )


async def _feed_stdin(proc: AsyncProcess, data: bytes) -> None:
    # The command may exit before it read everything: that is not an error.
    with contextlib.suppress(ChannelError):
        await proc.write_stdin(data)
        await proc.close_stdin()


class Process:
    """Blocking twin of :class:`AsyncProcess` (from :meth:`SyncExecMixin.start_exec`)."""

    def __init__(self, inner: AsyncProcess) -> None:
        self._inner = inner

    @property
    def aio(self) -> AsyncProcess:
        return self._inner

    @property
    def pid(self) -> int | None:
        return self._inner.pid

    @property
    def exit_code(self) -> int | None:
        return self._inner.exit_code

    @property
    def signal_number(self) -> int | None:
        return self._inner.signal_number

    @property
    def timed_out(self) -> bool:
        return self._inner.timed_out

    def __iter__(self) -> Process:
        return self

    def __next__(self) -> tuple[int, bytes]:
        item = self.read()
        if item is None:
            raise StopIteration
        return item

    def read(self, timeout: float | None = None) -> tuple[int, bytes] | None:
        from ppcp.transport.blocking import run

        return run(_with_timeout(self._inner.read(), timeout))

    def write_stdin(self, data: bytes | bytearray | memoryview) -> None:
        from ppcp.transport.blocking import run

        run(self._inner.write_stdin(bytes(data)))

    def close_stdin(self) -> None:
        from ppcp.transport.blocking import run

        run(self._inner.close_stdin())

    def signal(self, signum: int) -> None:
        from ppcp.transport.blocking import run

        run(self._inner.signal(signum))

    def cancel(self) -> None:
        from ppcp.transport.blocking import run

        run(self._inner.cancel())

    def wait(self, timeout: float | None = None) -> ExecResult:
        from ppcp.transport.blocking import run

        return run(_with_timeout(self._inner.wait(), timeout))

    def close(self) -> None:
        from ppcp.transport.blocking import run

        run(self._inner.close())

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


async def _with_timeout(aw: Coroutine[Any, Any, T], timeout: float | None) -> T:
    return await asyncio.wait_for(aw, timeout)


class SyncExecMixin:
    """Blocking client methods mixed into :class:`ppcp.Session`."""

    def exec(
        self,
        command: str | Sequence[str],
        *,
        stdin: bytes | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        """Run ``command`` on the server; see :meth:`ExecMixin.exec`."""
        from ppcp.transport.blocking import run

        session = cast("Session", self)
        return run(session.aio.exec(command, stdin=stdin, cwd=cwd, env=env, timeout=timeout))

    def start_exec(
        self,
        command: str | Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stdin: bool = True,
        late_accept: bool = False,
    ) -> Process:
        """Start ``command`` for streaming I/O; see :meth:`ExecMixin.start_exec`."""
        from ppcp.transport.blocking import run

        session = cast("Session", self)
        aw = session.aio.start_exec(
            command, cwd=cwd, env=env, timeout=timeout, stdin=stdin, late_accept=late_accept
        )
        return Process(run(aw))


# -- server -------------------------------------------------------------------------


def user_shell() -> str:
    """The server user's shell: ``$SHELL``, else the passwd entry, else /bin/sh."""
    shell = os.environ.get("SHELL")
    if not shell:
        with contextlib.suppress(KeyError):
            shell = pwd.getpwuid(os.getuid()).pw_shell
    return shell or "/bin/sh"


def user_home() -> str:
    """What ``~`` expands to ($HOME, else the passwd entry), not checked to exist."""
    home = os.environ.get("HOME")
    return os.path.expanduser("~") if home is None else home.rstrip("/") or "/"


def home_directory() -> str:
    """Where commands run by default: the user's home, or the server's own
    working directory if there is none (a system account)."""
    home = user_home()
    return home if os.path.isdir(home) else os.getcwd()


def in_home(requested: str | None) -> bool:
    """The command asks for no working directory but the home directory's default."""
    return not requested or requested == "~"


def working_directory(requested: str | None) -> str:
    """Where a command runs: the home directory, or ``requested`` relative to it.

    A leading ``~`` or ``~name`` is expanded as a shell expands it: a quoted
    ``--cwd '~/src'`` reaches the server as typed and means the server's home.
    The default is :func:`user_home`, unchecked: expanding ``~`` and checking it
    took 13 of the ~75 us a warm ``exec`` spends in the server before the spawn
    (1.7 us now).  A home that is missing makes the spawn fail, and
    :func:`serve_exec` retries where :func:`home_directory` would have sent it.
    """
    if in_home(requested):
        return user_home()
    assert requested is not None
    home = home_directory()
    if requested.startswith("~/"):
        return os.path.join(home, requested[2:])
    if requested.startswith("~"):
        expanded = os.path.expanduser(requested)
        if expanded == requested:
            name = requested[1:].partition("/")[0]
            raise ChannelError(f"cannot use working directory {requested!r}: no user {name!r}")
        return expanded
    return os.path.join(home, requested)


def resolve_argv(spec: ExecSpec, policy: ServerPolicy) -> list[str]:
    """The argv to run for ``spec`` under ``policy`` (raise PolicyDenied if refused)."""
    allow = policy.exec_allowlist
    if allow is None:
        if spec.argv is not None:
            return list(spec.argv)
        assert spec.command is not None
        return [user_shell(), "-c", spec.command]
    if spec.env:
        raise PolicyDenied("environment overrides are not allowed with an exec allow-list")
    if spec.argv is not None:
        argv = list(spec.argv)
    else:
        assert spec.command is not None
        if not _PLAIN_COMMAND.match(spec.command.strip()):
            raise PolicyDenied(
                "shell syntax is not allowed with an exec allow-list; send plain words or an argv"
            )
        import shlex  # here: only a server with an allow-list splits commands (1 ms of import)

        argv = shlex.split(spec.command)
    if argv[0] not in allow:
        raise PolicyDenied(f"command {argv[0]!r} is not on the server's allow-list")
    return argv


# The reason of a CHANNEL_REJECT for a program that cannot be started (RFC, exec):
# "cannot execute 'PROGRAM': ENAME: text".  ENAME, the errno symbol, is what a client
# decides on (127 for ENOENT, as a shell exits, 126 otherwise); the text is for
# people and may be localised.
_CANNOT_EXECUTE = re.compile(r"cannot execute .+: (?P<errno>E[A-Z0-9]+): ")


def cannot_execute_reason(program: str, exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno) if exc.errno else None
    symbol = f"{name}: " if name else ""
    return f"cannot execute {program!r}: {symbol}{exc.strerror or exc}"


def cannot_execute_errno(message: str) -> str | None:
    """The errno symbol of a "cannot execute" rejection; None for any other message."""
    found = _CANNOT_EXECUTE.search(message)
    return found.group("errno") if found else None


def effective_timeout(requested: float | None, limit: float | None) -> float | None:
    if requested is None:
        return limit
    return requested if limit is None else min(requested, limit)


def killpg(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


async def terminate_group(
    proc: Child | asyncio.subprocess.Process, grace: float | None = None
) -> None:
    """SIGTERM the process group; SIGKILL it after ``grace`` (:data:`KILL_GRACE`) seconds,
    or at once if the wait is cancelled (the group never outlives the call)."""
    killpg(proc.pid, _signal.SIGTERM)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), KILL_GRACE if grace is None else grace)
    finally:
        killpg(proc.pid, _signal.SIGKILL)


def valid_signal(payload: bytes) -> int:
    obj = decode_json(payload, "signal request")
    signum = obj.get("signal")
    if (
        isinstance(signum, bool)
        or not isinstance(signum, int)
        or signum <= 0
        or signum not in {int(s) for s in _signal.valid_signals()}
    ):
        raise ChannelError(f"invalid signal {signum!r}")
    return signum


async def serve_exec(channel: AsyncChannel, policy: ServerPolicy) -> None:
    if not policy.allow_exec:
        channel.reject(CloseCode.POLICY_DENIED, "exec is disabled on this server")
        return
    try:
        spec = ExecSpec.decode(channel.open_payload)
        argv = resolve_argv(spec, policy)
        cwd = working_directory(spec.cwd)
    except ChannelError as exc:
        channel.reject(exc.code, exc.message)
        return
    env = {**os.environ, **dict(spec.env)} if spec.env else None  # None: inherit, no copy
    peer = channel.session.peer_name
    log.info("exec for %s: %r", peer, argv)  # repr: no raw control characters in logs
    try:
        proc = _spawn_command(argv, cwd, env)
    except OSError as exc:
        failure: OSError | None = exc
        if in_home(spec.cwd) and exc.filename == cwd and not os.path.isdir(cwd):
            cwd = home_directory()
            try:
                proc, failure = _spawn_command(argv, cwd, env), None
            except OSError as again:
                failure = again
        if failure is not None:
            channel.reject(CloseCode.CHANNEL_ERROR, _spawn_failure(argv, cwd, env, failure))
            return
    await run_child(
        channel,
        proc,
        effective_timeout(spec.timeout, policy.max_exec_seconds),
        spec.stdin,
        late_accept=spec.late_accept,
    )


# execvp's interpreter for an executable file without a "#!" line (glibc's _PATH_BSHELL).
SCRIPT_SHELL = "/bin/sh"
# bash's test for a binary file: a NUL byte before the first newline of this much.
_BINARY_SAMPLE = 80


def _spawn_command(argv: list[str], cwd: str, env: Mapping[str, str] | None) -> Child:
    """Start ``argv`` as execvp would (see :func:`_run_as_script`); OSError if it cannot be."""
    try:
        return Child.spawn(argv, cwd=cwd, env=env)
    except OSError as exc:
        proc = _run_as_script(argv, cwd, env) if exc.errno == errno.ENOEXEC else None
        if proc is None:
            raise
        return proc


def _run_as_script(argv: list[str], cwd: str, env: Mapping[str, str] | None) -> Child | None:
    """What execvp does when execve fails with ENOEXEC: ``/bin/sh FILE ARGS...``.

    Only on that failure, so the common case pays nothing.  None where execvp's
    answer would not help: no such file found again, or a binary for another
    machine, which /bin/sh would only read as garbled commands.
    """
    path = _script_file(argv[0], cwd, env)
    if path is None:
        return None
    try:
        with open(os.path.join(cwd, path), "rb") as script:
            head = script.read(_BINARY_SAMPLE)
    except OSError:
        return None
    if b"\x00" in head.partition(b"\n")[0]:
        return None
    try:
        return Child.spawn([SCRIPT_SHELL, path, *argv[1:]], cwd=cwd, env=env)
    except OSError:
        return None  # the original ENOEXEC is the clearer report


def _spawn_failure(argv: list[str], cwd: str, env: Mapping[str, str] | None, exc: OSError) -> str:
    """The reason of the CHANNEL_REJECT for a command that could not be started."""
    if getattr(exc, "filename", None) == cwd:
        return f"cannot use working directory {cwd!r}: {exc.strerror or exc}"
    reason = cannot_execute_reason(argv[0], exc)
    if exc.errno == errno.ENOENT:
        # The program exists but its "#!" interpreter does not (often "/bin/sh\r",
        # a script saved with CRLF line ends): "No such file" alone would send the
        # user looking for the wrong file.
        # The name holds no blank, so it cannot look like ": ENAME: " (RFC: the last one).
        interpreter = _missing_interpreter(argv[0], cwd, env)
        if interpreter is not None:
            reason += f" (the interpreter {interpreter!r} on its #! line)"
    return reason


def _missing_interpreter(program: str, cwd: str, env: Mapping[str, str] | None) -> str | None:
    path = _script_file(program, cwd, env)
    if path is None:
        return None
    try:
        with open(os.path.join(cwd, path), "rb") as script:
            head = script.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    # As the kernel reads it: blanks, then the name up to a blank or the line's end.
    words = head[2:].partition(b"\n")[0].lstrip(b" \t").replace(b"\t", b" ").split(b" ")
    interpreter = os.fsdecode(words[0])
    if not interpreter or os.path.exists(os.path.join(cwd, interpreter)):
        return None
    return interpreter


def _script_file(program: str, cwd: str, env: Mapping[str, str] | None) -> str | None:
    """The file execve was given for ``program``: with a slash, itself; otherwise
    the first executable file on the command's PATH (the one subprocess ran,
    since no earlier candidate could be executed).  Relative to ``cwd``, where
    both the command and the shell run."""
    if "/" in program:
        return program
    for directory in os.get_exec_path(env):
        path = os.path.join(directory, program)
        full = os.path.join(cwd, path)
        if os.path.isfile(full) and os.access(full, os.X_OK):
            return path
    return None


async def run_child(
    channel: AsyncChannel,
    proc: Child,
    timeout: float | None,
    stdin: bool,
    *,
    late_accept: bool = False,
) -> None:
    """Accept the channel for the started ``proc`` and run it as an exec command:
    its pipes on the channel, then its exit status (also a shell without a terminal)."""
    # Set once the exit status is out.  A flag, not _supervise's result: the
    # session may end (and cancel this task) right after the status was sent,
    # and what the command left running must not depend on that timing.
    reported = asyncio.Event()
    hold: asyncio.TimerHandle | None = None
    try:
        # A late accept leaves with the first output or the exit status (one
        # write, and one wake-up of the client instead of two), or when the
        # hold ends, whichever comes first.
        channel.accept(encode_json({"pid": proc.pid}), hold=late_accept)
        if late_accept:
            hold = asyncio.get_running_loop().call_later(LATE_ACCEPT_HOLD, channel.session.flush)
        await _supervise(channel, proc, timeout, stdin, reported)
    finally:
        if hold is not None:
            hold.cancel()
        try:
            if not reported.is_set():
                if proc.returncode is None:
                    log.info(
                        "exec for %s: pid %d stopped, its session or channel ended",
                        channel.session.peer_name,
                        proc.pid,
                    )
                # SIGTERM first, as `cancel` does: a command may remove its temporary
                # files or locks (a trap) before SIGKILL ends the group.
                await terminate_group(proc)
            if proc.returncode is None:
                await proc.wait()
        finally:
            proc.close()  # even if cancelled again while reaping


async def _supervise(
    channel: AsyncChannel, proc: Child, timeout: float | None, stdin: bool, reported: asyncio.Event
) -> None:
    """Run the command to its end, or until the client closes the channel.

    The output is pumped here, in the channel's own task; requests and a
    deadline are callbacks.  A task per concern would cost three more task
    starts and a wait per command for what is, nearly always, nothing.
    """
    loop = asyncio.get_running_loop()
    timed_out = asyncio.Event()
    background: set[asyncio.Task[Any]] = set()

    def in_background(coro: Coroutine[Any, Any, None]) -> None:
        task = loop.create_task(coro)
        background.add(task)
        task.add_done_callback(background.discard)

    def on_request(name: str, payload: bytes) -> None:
        try:
            if name == "signal":
                killpg(proc.pid, valid_signal(payload))
            elif name == "cancel":
                in_background(terminate_group(proc))
            else:
                log.debug("exec: ignoring unknown request %r", name)
        except ChannelError as exc:
            log.info("exec: bad %r request: %s", name, exc)

    def on_deadline() -> None:
        # Also when the command itself has exited: a background job that holds its
        # output open (`sleep 60 & echo started`) keeps the status from going out,
        # and the limit is on the whole group, as the status then says.
        if not reported.is_set():
            timed_out.set()
            in_background(terminate_group(proc))

    supervisor = asyncio.current_task()
    assert supervisor is not None
    # The client closed the channel before the status went out: stop pumping;
    # serve_exec then kills the command.
    channel.handle_requests(on_request, supervisor.cancel)
    timer = loop.call_later(timeout, on_deadline) if timeout else None
    # Without stdin the client sends none: what it might send anyway is not
    # read (it only uses up its own window).
    feeder: asyncio.Task[None] | None = None
    if stdin:
        feeder = loop.create_task(_pump_stdin(channel, proc))
    else:
        proc.close_stdin()
    try:
        await _run_to_end(channel, proc, timed_out, reported)
    finally:
        channel.handle_requests(None)
        if timer is not None:
            timer.cancel()
        helpers = [*background, *([feeder] if feeder is not None else [])]
        for task in helpers:
            task.cancel()
        if helpers:
            await asyncio.gather(*helpers, return_exceptions=True)


async def _run_to_end(
    channel: AsyncChannel, proc: Child, timed_out: asyncio.Event, reported: asyncio.Event
) -> None:
    """Forward the output, then the exit status (as soon as the command is
    reaped); set ``reported`` once that is sent."""
    try:
        returncode = await _pump_outputs(channel, proc)
        if channel.closed:
            return
        await channel.finish("exit-status", encode_exit_status(returncode, timed_out.is_set()))
        reported.set()
    except PPCPError:
        return


async def _pump_outputs(channel: AsyncChannel, proc: Child) -> int:
    """Forward stdout and stderr until both end; then the exit status."""
    streams = {child.STDOUT: STREAM_STDOUT, child.STDERR: STREAM_STDERR}
    while streams:
        pipe, data = await proc.read_any(tuple(streams), CHUNK)
        if data:
            await channel.write(data, streams[pipe])
        else:
            del streams[pipe]
    return await proc.wait()


async def _pump_stdin(channel: AsyncChannel, proc: Child) -> None:
    broken = False
    try:
        while True:
            item = await channel.read()
            if item is None:
                break
            if broken:
                continue  # keep reading so the client's writes complete
            try:
                await proc.write(item[1])
            except ConnectionError:
                broken = True
    except PPCPError:
        pass
    finally:
        proc.close_stdin()
