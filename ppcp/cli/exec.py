"""``ppcp exec NAME -- CMD ARGS...``: run a command remotely, stream its output."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import click
from msgspec import Struct

from ppcp.cli.config import complete_name
from ppcp.cli.errors import EXIT_OWN_FAILURE, OwnFailureCommand, handle_errors
from ppcp.cli.options import COMMAND_SECONDS, global_options

_REMOTE = "ppcp.exec.remote"


class ExecCommand(OwnFailureCommand):
    """Everything after the first ``--`` is the remote command, untouched; the words
    before it name servers.

    Without any ``--``, option parsing stops at the first positional argument:
    ``ppcp exec NAME ls -l`` runs ``ls -l``.  A command containing ``--`` itself
    needs one after the name (``ppcp exec h -- git log -- README``): otherwise its
    words before ``--`` are taken for server names, and since every name is
    reached before anything runs, that ends in "no server named ..." with
    nothing run, never in a different command run (see ``_check_names``).
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            cut = args.index("--")
            ctx.meta[_REMOTE] = args[cut + 1 :]
            args = args[:cut]
            ctx.allow_interspersed_args = True
        else:
            ctx.meta[_REMOTE] = None
            ctx.allow_interspersed_args = False
        return super().parse_args(ctx, args)


@click.command("exec", cls=ExecCommand)
@click.argument(
    "args",
    nargs=-1,
    type=click.UNPROCESSED,
    metavar="NAME... -- CMD [ARGS]...",
    shell_complete=complete_name,
)
@click.option("--all", "all_", is_flag=True, help="Run on every server that answers discovery.")
@click.option(
    "--cwd",
    metavar="DIR",
    help="Remote working directory (relative to the server user's home; '~' is that home).",
)
@click.option("--env", "-e", "env", metavar="KEY=VALUE", multiple=True, help="Set a variable.")
@click.option("--no-stdin", "-n", is_flag=True, help="Do not forward stdin even when it is piped.")
@click.option(
    "--max-time",
    type=COMMAND_SECONDS,
    metavar="SECONDS",
    help="Kill the remote command after this long.",
)
@global_options
@handle_errors(own_failure=EXIT_OWN_FAILURE)
def command(
    args: tuple[str, ...],
    all_: bool,
    cwd: str | None,
    env: tuple[str, ...],
    no_stdin: bool,
    max_time: float | None,
) -> None:
    """Run CMD on the server NAME, streaming its output.

    Exits with the remote command's status (128+N if killed by signal N), or
    255 if ppcp itself failed. Piped stdin is forwarded. A single CMD argument
    containing spaces or shell syntax runs through the remote shell; several
    arguments run the program directly. With several NAMEs or --all the
    command runs everywhere in parallel, each output line prefixed with the
    server's name, followed by a summary; a server named twice runs it once.

    The words before the first -- are server names. Without any --, the
    first word is NAME and the rest is the command. A command that contains
    -- itself needs -- after NAME: ppcp exec h -- git log -- README.
    """
    from ppcp.cli.errors import CLIError
    from ppcp.cli.options import get_settings

    ctx = click.get_current_context()
    remote: list[str] | None = ctx.meta.get(_REMOTE)
    names = list(args)
    if remote is None:
        # No "--": the first word names the server unless --host/--all say where.
        if all_ or get_settings().host:
            names, remote = [], names
        else:
            names, remote = names[:1], names[1:]
    if not remote:
        raise CLIError(EXIT_OWN_FAILURE, "no command given: ppcp exec NAME -- CMD [ARGS]...")
    request = Request(
        command=remote_command(remote),
        cwd=cwd,
        env=parse_env(env),
        timeout=max_time,
        forward_stdin=not no_stdin,
    )
    raise click.exceptions.Exit(run(names, all_, request))


class Request(Struct, frozen=True):
    command: str | list[str]
    cwd: str | None = None
    env: dict[str, str] | None = None
    timeout: float | None = None
    forward_stdin: bool = True


_SHELL_CHARS = frozenset(" \t\n|&;<>()$`\\\"'*?[]#~=%{}!")


def remote_command(words: list[str]) -> str | list[str]:
    """One word with shell syntax: a shell string; otherwise an argv list."""
    if len(words) == 1 and any(c in _SHELL_CHARS for c in words[0]):
        return words[0]
    return list(words)


def parse_env(pairs: tuple[str, ...]) -> dict[str, str] | None:
    from ppcp.cli.errors import CLIError

    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CLIError(EXIT_OWN_FAILURE, f"--env expects KEY=VALUE, not {pair!r}.")
        env[key] = value
    return env or None


def exit_status(result: Any) -> int:
    """The shell-style status of a finished command: code, or 128 + signal."""
    if isinstance(result, int):
        return result
    sig = getattr(result, "signal", None)
    if sig:
        return 128 + int(sig)
    code = getattr(result, "exit_code", None)
    return int(code) if code is not None else EXIT_OWN_FAILURE


def is_stderr(stream: Any) -> bool:
    return stream in (1, "stderr")


def run(names: list[str], all_: bool, request: Request) -> int:
    from ppcp.cli.errors import CLIError
    from ppcp.cli.target import Context

    ctx = Context()
    unique = list(dict.fromkeys(names))
    if ctx.settings.host and (all_ or len(unique) > 1):
        raise CLIError(
            EXIT_OWN_FAILURE, "--host names one server: use aliases for several addresses."
        )
    if not all_ and len(unique) <= 1:
        return run_one(ctx, ctx.resolve(unique[0] if unique else None), request)
    return run_many(ctx, unique, all_, request)


# -- one server: stream straight through -----------------------------------------------


def run_one(ctx: Any, target: Any, request: Request) -> int:
    session = ctx.connect(target)
    try:
        forward = request.forward_stdin and not stdin_is_tty()
        try:
            process = start(session, request, stdin=forward)
        except CommandNotStarted as exc:
            click.echo(f"ppcp: {target.label}: {exc.reason}", err=True)
            return exc.status
        return stream_process(process, target.label, forward)
    finally:
        session.close()


def stream_process(process: Any, label: str, forward: bool) -> int:
    """Piped stdin in (if ``forward``), output out, until the command ends; its status."""
    if forward:
        feed = _StdinFeed(1)
        feed.join(process)
        threading.Thread(target=_pump_stdin, args=(feed,), name="ppcp-stdin", daemon=True).start()
    out, err = sys.stdout.buffer, sys.stderr.buffer
    with forwarded_interrupts(process):
        for stream, data in process:
            target_stream = err if is_stderr(stream) else out
            target_stream.write(data)
            target_stream.flush()
        result = process.wait()
    if getattr(result, "timed_out", False):
        click.echo(f"ppcp: {label}: the remote command timed out.", err=True)
    return exit_status(result)


@contextmanager
def forwarded_interrupts(*processes: Any, live: list[Any] | None = None) -> Iterator[None]:
    """Ctrl-C: SIGINT to the remote command; again: cancel it; a third time: give up.

    A signal handler (not KeyboardInterrupt) so that no output is lost and the
    stream is never interrupted halfway; the requests go out from a thread.
    ``live`` is a list of processes that fan-out workers fill as they start.
    """
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    count = 0

    def send(targets: list[Any], first: bool) -> None:
        for process in targets:
            with suppress(Exception):  # the command may have ended meanwhile
                if first:
                    process.signal(signal.SIGINT)
                else:
                    process.cancel()

    def handler(signum: int, frame: object) -> None:
        nonlocal count
        count += 1
        if count > 2:
            raise KeyboardInterrupt
        targets = [*processes, *(live or [])]
        threading.Thread(target=send, args=(targets, count == 1), daemon=True).start()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def start(session: Any, request: Request, *, stdin: bool) -> Any:
    """Start the command; a program that cannot be started exits 127/126 like a shell.

    Without ``stdin`` the command's stdin is empty from the start (no EOF to send).
    """
    from ppcp import ChannelError
    from ppcp.control.exec import cannot_execute_errno

    try:
        return session.start_exec(
            request.command,
            cwd=request.cwd,
            env=request.env,
            timeout=request.timeout,
            stdin=stdin,
        )
    except ChannelError as exc:
        errno_name = cannot_execute_errno(exc.message) if type(exc) is ChannelError else None
        if errno_name is not None:
            reason = exc.message.removeprefix("peer reported: ")
            raise CommandNotStarted(127 if errno_name == "ENOENT" else 126, reason) from None
        raise


class CommandNotStarted(Exception):
    """The remote program does not exist (127) or cannot be executed (126)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def stdin_is_tty() -> bool:
    try:
        return sys.stdin is None or sys.stdin.isatty()
    except (ValueError, OSError):
        return True


def _pump_stdin(feed: _StdinFeed) -> None:
    """Forward piped stdin to every command that still takes it, then EOF."""
    import os

    # os.read, not sys.stdin.buffer: when the commands end, the client exits while this
    # daemon thread may still wait for input, and a daemon thread blocked inside a
    # buffered read holds that buffer's lock, which aborts the interpreter at exit.
    targets = feed.started()
    with suppress(OSError, ValueError):  # stdin unreadable: the commands get EOF
        fd = sys.stdin.fileno()
        while targets:
            data = os.read(fd, 65536)
            if not data:
                break
            targets = feed.write(targets, data)
    feed.close(targets)


class _StdinFeed:
    """Piped stdin, chunk by chunk, to one or several commands.

    A chunk goes to every command before the next is read, so memory stays at one
    chunk plus each channel's window whatever the input's size; the slowest
    reader sets the pace, as with tee.  A command that ended (or whose
    connection failed) is dropped, and the others go on getting the input.
    """

    def __init__(self, expected: int) -> None:
        self._expected = expected
        self._joined: list[Any] = []
        self._cond = threading.Condition()

    def join(self, process: Any | None) -> None:
        """One command started (None: it did not); each one calls this exactly once."""
        with self._cond:
            if process is not None:
                self._joined.append(process)
            self._expected -= 1
            self._cond.notify_all()

    def started(self) -> list[Any]:
        """The commands to feed, once every one has started or failed: no command
        may miss the first chunks."""
        with self._cond:
            self._cond.wait_for(lambda: self._expected <= 0)
            return list(self._joined)

    def write(self, targets: list[Any], data: bytes) -> list[Any]:
        """Write ``data`` to every target at once; those still taking input."""
        from ppcp.transport.blocking import run

        if len(targets) == 1:
            try:
                targets[0].write_stdin(data)
            except Exception:
                return []
            return targets
        results = run(_write_each([p.aio for p in targets], data))
        return [p for p, failed in zip(targets, results, strict=True) if not failed]

    def close(self, targets: list[Any]) -> None:
        for process in targets:
            with suppress(Exception):  # the command may have ended meanwhile
                process.close_stdin()


async def _write_each(processes: list[Any], data: bytes) -> list[bool]:
    """Concurrently: a command whose window is full delays the next chunk, not
    the others' copy of this one; True where the write failed."""
    import asyncio

    results = await asyncio.gather(
        *(p.write_stdin(data) for p in processes), return_exceptions=True
    )
    return [isinstance(r, BaseException) for r in results]


# -- several servers: in parallel, output prefixed ----------------------------------------


# A line longer than this is written in pieces, each a prefixed line of its own:
# output without newlines (binary data, progress bars) is neither held whole nor
# copied again with every chunk.
PARTIAL_LINE_LIMIT = 64 * 1024


class _Prefixer:
    """Writes whole lines, each prefixed by its server's label."""

    def __init__(
        self, label: str, width: int, lock: threading.Lock, stdout_gone: threading.Event
    ) -> None:
        self.prefix = f"{label:<{width}} | ".encode()
        self.lock = lock
        self.stdout_gone = stdout_gone
        # The line not yet ended, as the chunks it came in, and its length.
        self.partial: dict[bool, list[bytes]] = {False: [], True: []}
        self.size: dict[bool, int] = {False: 0, True: 0}

    def write(self, data: bytes, to_err: bool) -> None:
        pending = self.partial[to_err]
        cut = data.rfind(b"\n")
        if cut < 0:
            pending.append(data)
            self.size[to_err] += len(data)
            if self.size[to_err] >= PARTIAL_LINE_LIMIT:
                self._end_line(to_err)
            return
        lines = b"".join([*pending, data[:cut]]).split(b"\n")
        pending.clear()
        self.size[to_err] = 0
        self._emit(b"".join(self.prefix + line + b"\n" for line in lines), to_err)
        if cut + 1 < len(data):
            self.write(data[cut + 1 :], to_err)

    def flush(self) -> None:
        for to_err in (False, True):
            if self.partial[to_err]:
                self._end_line(to_err)

    def _end_line(self, to_err: bool) -> None:
        line = b"".join(self.partial[to_err])
        self.partial[to_err].clear()
        self.size[to_err] = 0
        self._emit(self.prefix + line + b"\n", to_err)

    def _emit(self, data: bytes, to_err: bool) -> None:
        stream = sys.stderr.buffer if to_err else sys.stdout.buffer
        with self.lock:
            if self.stdout_gone.is_set():
                raise BrokenPipeError  # stop this command too: its output has nowhere to go
            try:
                stream.write(data)
                stream.flush()
            except BrokenPipeError:
                if not to_err:
                    self.stdout_gone.set()
                raise


class _Outcome(Struct):
    label: str
    status: int | None = None
    error: str | None = None
    timed_out: bool = False


def run_many(ctx: Any, names: list[str], all_: bool, request: Request) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from ppcp.cli.errors import CLIError

    jobs: list[tuple[str, Any]] = [(name, ctx.resolve(name)) for name in names]
    if all_:
        jobs += _discovered_targets(ctx, {t.label for _, t in jobs})
    if not jobs:
        raise CLIError(
            EXIT_OWN_FAILURE, f"no PPCP server answered within {ctx.timeout:g} s; nothing to run."
        )
    lock = threading.Lock()
    stdout_gone = threading.Event()
    live: list[Any] = []
    # One worker per server: with fewer, a server still waiting for its turn would
    # hold the stdin feed (which waits for every command to start) and the
    # running commands with it.
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        # Every server is reached before any command starts: a word that names no
        # server must not leave the command run on the others (see _check_names).
        connected = _check_names(jobs, list(pool.map(lambda job: _connect(ctx, job[1]), jobs)))
        width = max(len(label) for label, _ in connected)
        feed = _StdinFeed(len(connected)) if request.forward_stdin and not stdin_is_tty() else None
        if feed is not None:
            threading.Thread(
                target=_pump_stdin, args=(feed,), name="ppcp-stdin", daemon=True
            ).start()
        with forwarded_interrupts(live=live):
            outcomes = list(
                pool.map(
                    lambda job: _run_prefixed(
                        job[0],
                        job[1],
                        request,
                        _Prefixer(job[0], width, lock, stdout_gone),
                        live,
                        feed,
                    ),
                    connected,
                )
            )
    if stdout_gone.is_set():
        raise BrokenPipeError  # `| head`: quietly 141, as with one server (handle_errors)
    return _summarize(outcomes, width, ctx.settings.quiet)


def _connect(ctx: Any, target: Any) -> Any:
    """The open session, or the exception that prevented it."""
    try:
        return ctx.connect(target)
    except Exception as exc:
        return exc


def _check_names(jobs: list[tuple[str, Any]], sessions: list[Any]) -> list[tuple[str, Any]]:
    """(label, session or exception) per distinct server; CLIError if a name found none.

    ``ppcp exec h git log -- README`` reads as the servers h, git and log: had the
    command run on h, it would have run ``README``.  A server named twice (an
    alias and its name, two spellings) runs the command once.
    """
    from ppcp.cli.errors import EXIT_NOT_FOUND, CLIError

    missing = [
        (label, result)
        for (label, target), result in zip(jobs, sessions, strict=True)
        if isinstance(result, CLIError) and result.code == EXIT_NOT_FOUND and target.name
    ]
    if missing:
        for result in sessions:
            if not isinstance(result, Exception):
                result.close()
        label, error = missing[0]
        raise CLIError(
            EXIT_OWN_FAILURE,
            f"{error.message} Nothing was run: the words before '--' name servers. To run a "
            "command that contains '--' itself, put '--' after the server's name: "
            f"ppcp exec NAME -- CMD [ARGS]...",
        )
    seen: set[Any] = set()
    kept: list[tuple[str, Any]] = []
    for (label, _), result in zip(jobs, sessions, strict=True):
        address = getattr(result, "peer_address", None)
        key = tuple(address[:2]) if isinstance(address, tuple) else None
        if key is not None and key in seen:
            result.close()
            continue
        seen.add(key)
        kept.append((label, result))
    return kept


def _discovered_targets(ctx: Any, skip: set[str]) -> list[tuple[str, Any]]:
    from ppcp.cli.target import Target

    found: list[tuple[str, Any]] = []
    for info in ctx.discover():
        label = str(getattr(info, "name", "") or getattr(info, "id", "?"))
        addresses = list(getattr(info, "addresses", ()) or ())
        if label in skip or not addresses:
            continue
        skip.add(label)
        *first, last = (str(a) for a in addresses)
        target = Target(label=label, host=last, port=int(info.port), fallbacks=tuple(first))
        found.append((label, target))
    return found


def _run_prefixed(
    label: str,
    session: Any,
    request: Request,
    out: _Prefixer,
    live: list[Any],
    feed: _StdinFeed | None,
) -> _Outcome:
    from ppcp.cli.errors import classify

    joined = feed is None
    try:
        if isinstance(session, Exception):
            raise session
        try:
            try:
                process = start(session, request, stdin=feed is not None)
            except CommandNotStarted as exc:
                out.write(f"ppcp: {exc.reason}\n".encode(), True)
                return _Outcome(label, status=exc.status)
            live.append(process)
            if feed is not None:
                feed.join(process)
                joined = True
            for stream, data in process:
                out.write(data, is_stderr(stream))
            result = process.wait()
            timed_out = bool(getattr(result, "timed_out", False))
            return _Outcome(label, status=exit_status(result), timed_out=timed_out)
        finally:
            try:
                out.flush()
            finally:
                session.close()
    except BrokenPipeError:
        # Closing the session (above) has the server kill this command; the others
        # are closed too, since what they print has nowhere to go.
        for other in list(live):
            with suppress(Exception):
                other.close()
        return _Outcome(label, error="stdout closed")
    except Exception as exc:
        return _Outcome(label, error=classify(exc)[1])
    finally:
        if not joined:
            assert feed is not None
            feed.join(None)


def _summarize(outcomes: list[_Outcome], width: int, quiet: bool) -> int:
    """Print one line per server (with ``quiet``, only the failures); 0 if all
    succeeded, 1 if a command failed, 255 if ppcp could not run it somewhere."""
    lines = []
    for o in outcomes:
        if o.error is not None:
            lines.append(f"  {o.label:<{width}}  ppcp error: {o.error}")
        elif not quiet or o.status != 0:
            note = " (timed out)" if o.timed_out else ""
            lines.append(f"  {o.label:<{width}}  exit {o.status}{note}")
    if lines:
        click.echo("\n".join(["", "summary:", *lines]), err=True)
    if any(o.error is not None for o in outcomes):
        return EXIT_OWN_FAILURE
    return 0 if all(o.status == 0 for o in outcomes) else 1
