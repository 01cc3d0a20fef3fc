"""``ppcp shell NAME``: an interactive shell on the server, in this terminal."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import click

from ppcp.cli.config import complete_name
from ppcp.cli.errors import EXIT_OWN_FAILURE, OwnFailureCommand, handle_errors
from ppcp.cli.options import global_options


@click.command("shell", cls=OwnFailureCommand)
@click.argument("name", required=False, shell_complete=complete_name)
@global_options
@handle_errors(own_failure=EXIT_OWN_FAILURE)
def command(name: str | None) -> None:
    """Open an interactive shell (a PTY) on the server NAME.

    Exits with the remote shell's status, or 255 if ppcp failed. The local
    terminal is restored however the session ends. When stdin is not a
    terminal (`ppcp shell NAME < script`), the login shell runs without a
    PTY and reads stdin to its end, as with ssh.
    """
    import sys

    from ppcp.cli.exec import stdin_is_tty, stream_process
    from ppcp.cli.options import get_settings
    from ppcp.cli.target import Context

    ctx = Context()
    target = ctx.resolve(name)
    session = ctx.connect(target)
    if not stdin_is_tty():
        # A terminal would turn the end of the input into a ^D typed at the shell,
        # which it may never read: with pipes the shell sees a real end of file.
        if not get_settings().quiet:
            click.echo("ppcp: no terminal on the server: stdin is not a terminal.", err=True)
        try:
            code = stream_process(session.start_shell(), target.label, forward=True)
        finally:
            session.close()
        raise click.exceptions.Exit(code)
    with restored_terminal(sys.stdin.fileno()), signals_raise():
        try:
            status: Any = session.shell()
        finally:
            session.close()
    raise click.exceptions.Exit(_status(status))


def _status(status: Any) -> int:
    if isinstance(status, int):
        return status
    from ppcp.cli.exec import exit_status

    return exit_status(status)


@contextmanager
def restored_terminal(fd: int) -> Iterator[None]:
    """Save the terminal's modes and put them back on any exit."""
    import os
    import termios

    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        yield
    finally:
        with suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSAFLUSH, saved)


@contextmanager
def signals_raise() -> Iterator[None]:
    """SIGTERM/SIGHUP become an exception, so the terminal is restored on the way out."""
    import signal

    def handler(signum: int, frame: object) -> None:
        from ppcp.cli.errors import CLIError

        raise CLIError(EXIT_OWN_FAILURE, f"{signal.Signals(signum).name} received.")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)
