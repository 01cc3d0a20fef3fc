"""Exit codes, and turning every failure into one or two human sentences.

==== ==========================================================================
code meaning
==== ==========================================================================
0    success
1    failure not covered below; ``exec`` fan-out: some remote command failed
2    bad usage (unknown option, missing argument...)
3    no server found: nothing answered discovery, unknown name, nothing
     listening at ``--host``
4    authentication failed: the peers do not share the same pre-shared key
5    connection or protocol error: connection lost, timed out, server busy
6    file transfer failed: local or remote I/O error, disk full
7    permission or policy denied: the server's policy forbids it, a path
     outside the server's root, a file the server may not read
8    pre-shared key or config problem: key missing, too open, malformed
130  interrupted (Ctrl-C)
141  stdout closed early (``ppcp exec NAME -- yes | head``)
==== ==========================================================================

``ppcp exec`` and ``ppcp shell`` exit with the remote command's own status
(``128 + N`` when it was killed by signal N) and, like ssh, with 255 for any
failure of ppcp itself (codes 2-8 above become 255; the message says which).
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from ppcp.core import errors as e

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_AUTH = 4
EXIT_CONNECTION = 5
EXIT_TRANSFER = 6
EXIT_DENIED = 7
EXIT_CONFIG = 8
EXIT_INTERRUPTED = 130
EXIT_SIGPIPE = 141  # 128 + SIGPIPE
EXIT_OWN_FAILURE = 255


class CLIError(Exception):
    """A failure the CLI explains in one or two sentences, with its exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def classify(exc: BaseException, *, io_code: int = EXIT_CONNECTION) -> tuple[int, str]:
    """(exit code, message) for any exception reaching a command's boundary."""
    if isinstance(exc, CLIError):
        return exc.code, exc.message
    if isinstance(exc, e.PPCPError):
        return _classify_ppcp(exc)
    if isinstance(exc, PermissionError):
        return EXIT_DENIED, f"permission denied: {_os_text(exc)}."
    if isinstance(exc, OSError):
        return io_code, f"{_os_text(exc)}."
    return EXIT_FAILED, f"internal error: {type(exc).__name__}: {exc}"


def _os_text(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    if exc.filename is not None:
        text = f"{exc.filename}: {text}"
    return text


def _classify_ppcp(exc: e.PPCPError) -> tuple[int, str]:
    from ppcp.crypto.psk import InvalidPSK

    msg = exc.message.rstrip(".")
    if msg.startswith("peer reported: "):
        msg = "the server says " + msg.removeprefix("peer reported: ")
    if isinstance(exc, InvalidPSK):
        return EXIT_CONFIG, f"unusable pre-shared key: {msg}."
    if isinstance(exc, e.AuthenticationError):
        return EXIT_AUTH, (
            f"authentication failed: {msg}. Do both machines use the same pre-shared key?"
        )
    if isinstance(exc, e.DiscoveryError):
        return EXIT_NOT_FOUND, f"{msg}."
    if isinstance(exc, e.PolicyDenied | e.ChannelRejected):
        return EXIT_DENIED, f"refused: {msg}."
    if isinstance(exc, e.RemotePathError):
        return EXIT_DENIED, f"{msg}."
    if isinstance(exc, e.TransferError):
        # A file the server (or this machine) may not read or write is a denial.
        denied = any(s in msg for s in ("Permission denied", "Operation not permitted"))
        return EXIT_DENIED if denied else EXIT_TRANSFER, f"transfer failed: {msg}."
    if isinstance(exc, e.ServerBusy | e.RateLimited):
        return EXIT_CONNECTION, f"the server turned us away: {msg}. Try again shortly."
    if isinstance(exc, e.HandshakeTimeout):
        return EXIT_CONNECTION, f"the handshake timed out ({msg})."
    if isinstance(exc, e.SessionClosed):
        return EXIT_CONNECTION, f"the server closed the session ({msg})."
    if isinstance(exc, e.ConnectionLost | e.HeartbeatTimeout):
        # The library's own message may already say so (map_exception's "connection lost: ...").
        lost = msg if msg.startswith("connection lost") else f"connection lost: {msg}"
        return EXIT_CONNECTION, f"{lost}."
    return EXIT_CONNECTION, f"{msg}."


def fail(code: int, message: str) -> NoReturn:
    raise CLIError(code, message)


def report(exc: BaseException, *, io_code: int = EXIT_CONNECTION, verbose: int = 0) -> int:
    """Print the one-line explanation of ``exc`` (and the traceback with -v)."""
    code, message = classify(exc, io_code=io_code)
    # Exit 1 from anything but a CLIError is a bug of ours: its traceback helps the report.
    if verbose or (code == EXIT_FAILED and not isinstance(exc, CLIError)):
        traceback.print_exception(exc, file=sys.stderr)
    click.echo(f"ppcp: {message}", err=True)
    return code


def handle_errors(
    *, own_failure: int | None = None, io_code: int = EXIT_CONNECTION
) -> Callable[[F], F]:
    """Decorate a command callback: errors become a message and an exit code.

    ``own_failure`` replaces every ppcp failure code (ssh-style 255 for exec).
    """

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from ppcp.cli.options import get_settings

            try:
                return f(*args, **kwargs)
            except (click.exceptions.Exit, click.Abort, click.ClickException):
                raise
            except KeyboardInterrupt:
                click.echo("ppcp: interrupted.", err=True)
                code = EXIT_INTERRUPTED
            except BrokenPipeError:  # `ppcp ... | head`: stop quietly, like a killed writer
                silence_stdout()
                code = EXIT_SIGPIPE
            except Exception as exc:  # the one boundary: everything becomes a sentence
                code = report(exc, io_code=io_code, verbose=get_settings().verbose)
                if own_failure is not None and code not in (EXIT_OK, EXIT_INTERRUPTED):
                    code = own_failure
            raise click.exceptions.Exit(code)

        return wrapper  # type: ignore[return-value]

    return decorate


def silence_stdout() -> None:
    """After EPIPE on stdout, stop Python from complaining again at exit."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


class OwnFailureCommand(click.Command):
    """A command whose usage errors exit 255, not 2 (``exec``/``shell``, like ssh)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise own_usage_error(exc) from None


class _OwnUsageError(click.UsageError):
    exit_code = EXIT_OWN_FAILURE


def own_usage_error(exc: click.UsageError) -> click.UsageError:
    """``exc``, exiting 255 (ppcp's own failure, for exec/shell) instead of 2."""
    return _OwnUsageError(exc.format_message(), exc.ctx)
