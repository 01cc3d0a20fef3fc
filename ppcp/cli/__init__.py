"""The ``ppcp`` command: a thin click front end over the public API.

One module per command, imported only when that command runs (or when help
lists it); every module imports the heavy parts (asyncio servers, rich...)
inside its command function, so ``ppcp --help`` stays fast.  Options shared
by every command live in :mod:`ppcp.cli.options`; exit codes and error
messages in :mod:`ppcp.cli.errors`.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from ppcp.cli.options import global_options

# command name -> module under ppcp.cli holding a click command named ``command``.
COMMANDS: dict[str, str] = {
    "keygen": "keygen",
    "serve": "serve",
    "scan": "scan",
    "exec": "exec",
    "shell": "shell",
    "put": "put",
    "get": "get",
    "send": "send",
    "listen": "listen",
}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module_name = COMMANDS.get(cmd_name)
        if module_name is None:
            return None
        import importlib

        module = importlib.import_module(f"ppcp.cli.{module_name}")
        command: click.Command = module.command
        return command

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """A usage error in the options before ``exec``/``shell`` exits 255 as
        theirs do (``ppcp --timeout 0 exec ...``): 2 could be the remote status."""
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            if next((a for a in args if a in COMMANDS), None) in ("exec", "shell"):
                from ppcp.cli.errors import own_usage_error

                raise own_usage_error(exc) from None
            raise


def _version() -> str:
    from ppcp import __version__

    return __version__


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Exit codes and the config file are described in the README (Using the command line). "
    'Shell completion: eval "$(_PPCP_COMPLETE=bash_source ppcp)".',
)
@click.version_option(_version(), "--version", prog_name="ppcp", message="%(prog)s %(version)s")
@global_options
def cli() -> None:
    """PPCP: zero-config, encrypted remote control for the machines on your LAN.

    Servers are found by name on the local network; every session is mutually
    authenticated with a pre-shared key (see `ppcp keygen`) and encrypted.
    Global options may be given before or after the command name.
    """


def main(argv: list[str] | None = None) -> Any:
    _reopen_closed_std_streams()
    _quiet_warnings()
    return cli.main(args=argv, prog_name="ppcp")


def _reopen_closed_std_streams() -> None:
    """Descriptors 0-2 closed by the caller (`ppcp exec ... >&-`) become /dev/null, as ssh
    does: Python leaves sys.stdout None (every write would raise), and the next file
    opened would take the free descriptor and receive the output meant for it."""
    import os

    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        setattr(sys, name, open(fd, mode, closefd=False))  # noqa: SIM115 (lives as long as the process)


def _quiet_warnings() -> None:
    """Warnings (a weak PSK...) as one line, not a source excerpt."""
    import warnings

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        print(f"ppcp: warning: {message}", file=sys.stderr)

    warnings.showwarning = show


__all__ = ["COMMANDS", "cli", "main"]
