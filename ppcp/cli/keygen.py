"""``ppcp keygen``: write a new random 256-bit pre-shared key (mode 0600)."""

from __future__ import annotations

import click

from ppcp.cli.errors import EXIT_CONFIG, handle_errors
from ppcp.cli.options import server_options


@click.command("keygen")
@click.option(
    "--out",
    "-o",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Where to write the key ('-' for stdout; default: where the other commands "
    "look, i.e. --psk-file, $PPCP_PSK_FILE, the config's psk_file or ~/.config/ppcp/psk).",
)
@click.option("--force", "-f", is_flag=True, help="Overwrite an existing key file.")
@server_options
@handle_errors(io_code=EXIT_CONFIG)
def command(out: str | None, force: bool) -> None:
    """Write a new random 256-bit pre-shared key.

    Copy the file to every machine that should talk to each other (keep it
    mode 0600). The key never goes on a command line: `ps` would show it.
    """
    import os
    from pathlib import Path

    from ppcp import generate_psk
    from ppcp.cli.config import default_psk_path, load_config, psk_source
    from ppcp.cli.errors import CLIError
    from ppcp.cli.options import get_settings

    key = generate_psk()
    if out == "-":
        click.echo(key)
        return
    settings = get_settings()
    if out:
        path = Path(out).expanduser()
    else:
        _, found = psk_source(settings, load_config(settings))
        # found is None when $PPCP_PSK holds the key itself: use the default file.
        path = found or default_psk_path()
    if path.exists() and not force:
        raise CLIError(
            EXIT_CONFIG,
            f"{path} already exists; not overwriting a key other machines may use. "
            "Pass --force to replace it.",
        )
    if out is None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(key + "\n")
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if the file appeared meanwhile
            os.unlink(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if not settings.quiet:
        click.echo(f"wrote a new pre-shared key to {path} (mode 0600).", err=True)
        click.echo("Copy it to every machine that should talk to this one.", err=True)
