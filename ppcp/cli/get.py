"""``ppcp get NAME:PATH [LOCAL]``: copy a file or directory from a server."""

from __future__ import annotations

import click

from ppcp.cli.config import complete_remote
from ppcp.cli.errors import EXIT_TRANSFER, handle_errors
from ppcp.cli.options import global_options
from ppcp.cli.transfer import transfer_options


@click.command("get")
@click.argument("remote", metavar="NAME:PATH", shell_complete=complete_remote)
@click.argument("local", required=False, default=".", metavar="[LOCAL]")
@transfer_options
@global_options
@handle_errors(io_code=EXIT_TRANSFER)
def command(
    remote: str, local: str, recursive: bool, no_resume: bool, compress: bool, checksum: bool
) -> None:
    """Copy PATH (a directory with -r) from the server NAME to LOCAL (default: .).

    An interrupted copy resumes when the same command is run again. LOCAL
    `-` writes the file to standard output (no progress bar or summary). With
    --host, NAME is only a label (`:PATH` works).
    """
    from ppcp.cli.transfer import get

    get(
        remote,
        local,
        recursive=recursive,
        resume=not no_resume,
        compress=compress,
        checksum=checksum,
    )
