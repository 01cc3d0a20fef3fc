"""``ppcp put LOCAL... NAME:PATH``: copy files to a server (scp-like)."""

from __future__ import annotations

import click

from ppcp.cli.errors import EXIT_TRANSFER, handle_errors
from ppcp.cli.options import global_options
from ppcp.cli.transfer import transfer_options


@click.command("put")
@click.argument("paths", nargs=-1, required=True, metavar="LOCAL... NAME:PATH")
@transfer_options
@global_options
@handle_errors(io_code=EXIT_TRANSFER)
def command(
    paths: tuple[str, ...], recursive: bool, no_resume: bool, compress: bool, checksum: bool
) -> None:
    """Copy LOCAL files (directories with -r) to PATH on the server NAME.

    PATH is relative to the server's root. With several LOCALs, PATH is a
    directory. An interrupted copy resumes when the same command is run
    again. LOCAL `-` sends standard input (alone, to a PATH naming the file;
    never resumed). With --host, NAME is only a label (`:PATH` works).
    """
    from ppcp.cli.transfer import put

    if len(paths) < 2:
        raise click.UsageError("expected LOCAL... NAME:PATH")
    put(
        list(paths[:-1]),
        paths[-1],
        recursive=recursive,
        resume=not no_resume,
        compress=compress,
        checksum=checksum,
    )
