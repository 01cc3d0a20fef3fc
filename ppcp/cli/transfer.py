"""What ``put`` and ``get`` share: their options and the transfer loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])
STDIO = "-"  # as LOCAL: standard input for put, standard output for get


def transfer_options(f: F) -> F:
    f = click.option(
        "--checksum",
        is_flag=True,
        help="Also compare a SHA-256 of each file at both ends, and print it.",
    )(f)
    f = click.option(
        "-z", "--compress", is_flag=True, help="Compress data on the wire (slow links)."
    )(f)
    f = click.option(
        "--no-resume", is_flag=True, help="Start over instead of resuming a partial copy."
    )(f)
    f = click.option("-r", "--recursive", is_flag=True, help="Copy directories recursively.")(f)
    return f


def _target(spec: str) -> tuple[Any, Any, str]:
    """(context, target, remote path) for ``NAME:PATH``."""
    from ppcp.cli.errors import EXIT_USAGE, CLIError
    from ppcp.cli.target import Context, split_remote

    name, path = split_remote(spec)
    ctx = Context()
    if not name and not ctx.settings.host:
        raise CLIError(EXIT_USAGE, f"{spec!r} names no server: use NAME:PATH, or --host.")
    return ctx, ctx.resolve(name or None), path


def _check_local_source(path: str, recursive: bool) -> None:
    import os

    from ppcp.cli.errors import EXIT_TRANSFER, EXIT_USAGE, CLIError

    if not os.path.lexists(path):
        raise CLIError(EXIT_TRANSFER, f"{path}: no such file or directory.")
    if os.path.isdir(path) and not recursive:
        raise CLIError(EXIT_USAGE, f"{path} is a directory; use -r to copy directories.")


def put(
    locals_: list[str],
    remote: str,
    *,
    recursive: bool,
    resume: bool,
    compress: bool,
    checksum: bool,
) -> None:
    import os
    import posixpath

    from ppcp.cli.errors import EXIT_USAGE, CLIError
    from ppcp.cli.options import get_settings
    from ppcp.cli.progress import Bars, wanted

    if STDIO in locals_:
        # Standard input has no name, and no size until it ends: it is the only source.
        if len(locals_) > 1:
            raise CLIError(EXIT_USAGE, "- (standard input) must be the only LOCAL.")
        if recursive:
            raise CLIError(EXIT_USAGE, "-r cannot copy standard input ('-').")
    for local in locals_:
        if local != STDIO:
            _check_local_source(local, recursive)
    ctx, target, path = _target(remote)
    quiet = get_settings().quiet
    session = ctx.connect(target)
    results: list[Any] = []
    # A stream's total is unknown until it ends: a bar could show no progress.
    bars = Bars(wanted(quiet) and STDIO not in locals_)
    try:
        with session, bars.shown():
            for local in locals_:
                # As the library names it: "..", "." and "dir/" have a name of their own.
                name = os.path.basename(os.path.abspath(local)) or "root"
                dest = posixpath.join(path, name) if len(locals_) > 1 else path
                results.append(
                    _put_one(
                        session,
                        local,
                        dest,
                        recursive=recursive,
                        progress=bars.task(_label(name)),
                        resume=resume,
                        compress=compress,
                        checksum=checksum,
                    )
                )
    except BaseException:
        # What was copied before the failure is said too, so nobody redoes it blindly.
        _report("sent", results, target.label, quiet, failed=True)
        raise
    _report("sent", results, target.label, quiet)


def _put_one(session: Any, local: str, dest: str, **options: Any) -> Any:
    import posixpath
    import sys

    from ppcp import TransferError
    from ppcp.cli.errors import EXIT_USAGE, CLIError
    from ppcp.control.files import STREAM_NAME_NEEDED

    if local != STDIO:
        return session.put(local, dest, **options)
    try:
        return session.put(raw_stdio(sys.stdin, "rb"), dest, **options)
    except TransferError as exc:
        # The library's words for a stream sent to a directory (RFC 16.3.2, rule 1).
        if exc.message.endswith(STREAM_NAME_NEEDED):
            example = posixpath.join(dest.rstrip("/"), "FILE")
            raise CLIError(
                EXIT_USAGE,
                f"standard input has no name: give one in the remote path (NAME:{example}).",
            ) from None
        raise


def get(
    remote: str,
    local: str,
    *,
    recursive: bool,
    resume: bool,
    compress: bool,
    checksum: bool,
) -> None:
    import posixpath

    from ppcp import TransferError
    from ppcp.cli.errors import EXIT_USAGE, CLIError
    from ppcp.cli.options import get_settings
    from ppcp.cli.progress import Bars, wanted

    to_stdout = local == STDIO
    if to_stdout and recursive:
        raise CLIError(
            EXIT_USAGE, "-r cannot write to standard output ('-'): give a local directory."
        )
    ctx, target, path = _target(remote)
    quiet = get_settings().quiet
    session = ctx.connect(target)
    # stdout holds the file's bytes and nothing else; what is said goes to stderr.
    bars = Bars(wanted(quiet) and not to_stdout)
    with session, bars.shown():
        try:
            result = session.get(
                path,
                stdout_sink() if to_stdout else local,
                recursive=recursive,
                progress=bars.task(_label(posixpath.basename(path.rstrip("/")) or path)),
                resume=resume,
                compress=compress,
                checksum=checksum,
            )
        except TransferError as exc:
            # The server's refusal speaks the library's language (RFC 16.3.3).
            if not recursive and exc.message.endswith("is a directory (use recursive=True)"):
                raise CLIError(
                    EXIT_USAGE, f"{remote} is a directory; use -r to copy directories."
                ) from None
            raise
    if to_stdout:
        # A summary line would be noise after `... - | tool`; a digest asked for is not.
        if result.sha256 and not quiet:
            click.echo(f"sha256 {result.sha256}", err=True)
        return
    _report("received", [result], target.label, quiet)


def raw_stdio(stream: Any, mode: str) -> Any:
    """``stream``'s descriptor, unbuffered.

    The library reads or writes it from a thread that may wait for ever (a pipe
    nobody writes to, or reads from): a buffered object's lock would be held all
    that time, and the interpreter aborts at exit when a thread holds one.
    """
    import os

    return os.fdopen(stream.fileno(), mode, buffering=0, closefd=False)


BINARY_TO_TERMINAL = (
    "refusing to write a binary file to the terminal (it can garble it); "
    "redirect it (> FILE) or pipe it (| less)"
)


class _TerminalGuard:
    """Standard output that is a terminal: a binary file is refused before any
    of it is written (as curl does), text goes through."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._checked = False

    def write(self, data: bytes | memoryview) -> int:
        if not self._checked:
            self._checked = True
            if b"\0" in bytes(data[:8192]):  # what grep and git call binary
                raise OSError(BINARY_TO_TERMINAL)
        written: int = self._raw.write(data)
        return written


def stdout_sink() -> Any:
    import sys

    raw = raw_stdio(sys.stdout, "wb")
    return _TerminalGuard(raw) if sys.stdout.isatty() else raw


def _label(name: str) -> str:
    """A file name as a progress bar's label: control characters escaped."""
    from ppcp.control.paths import display

    return display(name)


def _report(verb: str, results: list[Any], label: str, quiet: bool, failed: bool = False) -> None:
    """The summary (unless quiet), then what was skipped (always): skipped entries
    make the copy incomplete, which a script must see in the exit status (unless
    the copy ``failed``: its own error is raised then)."""
    from ppcp.cli.errors import EXIT_FAILED, CLIError

    if not quiet:
        _summary(verb, results, label)
    skipped = [name for r in results for name in r.skipped]
    for name in skipped:
        click.echo(f"ppcp: skipped {name}", err=True)
    if skipped and not failed:
        count = f"{len(skipped)} entr{'y was' if len(skipped) == 1 else 'ies were'}"
        raise CLIError(EXIT_FAILED, f"{count} skipped: the copy is incomplete.")


def _summary(verb: str, results: list[Any], label: str) -> None:
    """One line per transfer: what moved, how fast, what was resumed."""
    from ppcp.utils.units import human_size

    for r in results:
        moved = int(r.bytes)
        what = f"{r.files} file{'' if r.files == 1 else 's'}"
        if r.directories:
            what += f" in {r.directories} director{'y' if r.directories == 1 else 'ies'}"
        size = human_size(moved + int(r.resumed_from))
        extra = f", resumed from {human_size(r.resumed_from)}" if r.resumed_from else ""
        rate = f", {human_size(moved / r.seconds)}/s" if r.seconds > 0 and moved else ""
        where = "to" if verb == "sent" else "from"
        path = f" ({r.path})" if r.path else ""
        click.echo(
            f"{verb} {what}, {size}{extra}, {where} {label}{path} in {r.seconds:.1f} s{rate}",
            err=True,
        )
        if r.sha256:
            click.echo(f"sha256 {r.sha256}", err=True)
