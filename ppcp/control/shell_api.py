"""The session's shell methods, apart from their implementation (ppcp/control/shell.py).

A session's class needs these methods, not the PTY and terminal machinery
behind them: kept here, a client that never opens a shell does not import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from ppcp.control.exec import AsyncProcess, Process
    from ppcp.control.shell import AsyncShell, Shell
    from ppcp.transport.aio_driver import AsyncSession
    from ppcp.transport.blocking import Session

DEFAULT_TERM = "xterm-256color"


class ShellMixin:
    """asyncio client methods mixed into :class:`ppcp.aio.AsyncSession`."""

    async def open_shell(
        self,
        *,
        term: str = DEFAULT_TERM,
        cols: int = 80,
        rows: int = 24,
        command: str | None = None,
    ) -> AsyncShell:
        """Start a shell on a server-side PTY of ``cols`` x ``rows``.

        ``command`` (run by the user's shell) replaces the login shell.
        """
        from ppcp.control.shell import open_shell

        return await open_shell(cast("AsyncSession", self), term, cols, rows, command)

    async def start_shell(self, command: str | None = None) -> AsyncProcess:
        """The user's login shell (or ``command``) without a terminal, as
        ``ssh host < script`` runs it: stdin, stdout and stderr are pipes, so the
        shell reads the script to its real end of file.  Used like
        :meth:`~ppcp.aio.AsyncSession.start_exec`; the server's shell policy applies.
        """
        from ppcp.control.shell import start_shell

        return await start_shell(cast("AsyncSession", self), command)


class SyncShellMixin:
    """Blocking client methods mixed into :class:`ppcp.Session`."""

    def open_shell(
        self,
        *,
        term: str = DEFAULT_TERM,
        cols: int = 80,
        rows: int = 24,
        command: str | None = None,
    ) -> Shell:
        """A shell for programs and tests; see :meth:`ShellMixin.open_shell`."""
        from ppcp.control.shell import Shell
        from ppcp.transport.blocking import run

        session = cast("Session", self)
        return Shell(run(session.aio.open_shell(term=term, cols=cols, rows=rows, command=command)))

    def start_shell(self, command: str | None = None) -> Process:
        """A shell without a terminal; see :meth:`ShellMixin.start_shell`."""
        from ppcp.control.exec import Process
        from ppcp.transport.blocking import run

        session = cast("Session", self)
        return Process(run(session.aio.start_shell(command)))

    def shell(
        self,
        command: str | None = None,
        *,
        term: str | None = None,
        stdin: int | None = None,
        stdout: int | None = None,
    ) -> int:
        """Attach the local terminal to a remote shell; return the remote exit code.

        The local terminal is put in raw mode for the session and always
        restored, whatever ends it.  Window size changes (SIGWINCH, when
        called from the main thread) are forwarded.  ``stdin``/``stdout``
        are file descriptors (default: those of ``sys.stdin``/``sys.stdout``).
        ``term`` defaults to ``$TERM``, or ``xterm-256color`` when that is unset
        or cannot be sent (not UTF-8, control characters, over 64 bytes).
        """
        from ppcp.control.shell import attach_terminal

        return attach_terminal(cast("Session", self), command, term, stdin, stdout)


__all__ = ["DEFAULT_TERM", "ShellMixin", "SyncShellMixin"]
