"""Options shared by every command, as one decorator bundle.

The bundle is applied to the group *and* to each command, so users may type
``ppcp --host h exec ...`` or ``ppcp exec --host h ...``.  Each option stores
its value into one :class:`Settings` object on the root context; a value given
after the command name is parsed later and therefore wins.

This module is imported for ``ppcp --help``: it must stay light (click only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Settings:
    """Global option values as typed on the command line (None: not given)."""

    psk_file: str | None = None
    host: str | None = None
    port: int | None = None
    discovery_port: int | None = None
    timeout: float | None = None
    config: str | None = None
    unicast: tuple[str, ...] = ()
    verbose: int = 0
    quiet: bool = False


def _store(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    settings = ctx.find_root().ensure_object(Settings)
    name = param.name
    assert name is not None
    if name == "verbose":
        settings.verbose += int(value or 0)
    elif name == "unicast":
        settings.unicast = (*settings.unicast, *(value or ()))
    elif name == "quiet":
        settings.quiet = settings.quiet or bool(value)
    elif value is not None:
        setattr(settings, name, value)
    return value


def _option(*decls: str, **attrs: Any) -> Callable[[F], F]:
    return click.option(*decls, expose_value=False, callback=_store, **attrs)


_GLOBAL_OPTIONS: tuple[Callable[[F], F], ...] = (
    _option(
        "--psk-file",
        metavar="FILE",
        type=click.Path(dir_okay=False),
        help="Pre-shared key file (default: $PPCP_PSK_FILE, $PPCP_PSK, the config "
        "file's psk_file, then ~/.config/ppcp/psk).",
    ),
    _option(
        "--host",
        metavar="HOST[:PORT]",
        help="Connect to this address instead of discovering servers by name.",
    ),
    _option(
        "--port",
        type=click.IntRange(0, 65535),
        metavar="PORT",
        help="Server TCP port (default 9000; 0 for an ephemeral one with serve).",
    ),
    _option(
        "--discovery-port",
        type=click.IntRange(0, 65535),
        metavar="PORT",
        help="UDP port for discovery (default 9000).",
    ),
    _option(
        "--unicast",
        metavar="HOST[:PORT]",
        multiple=True,
        default=None,
        help="Also send discovery PINGs to this address (networks that block broadcast).",
    ),
    _option(
        "--timeout",
        type=click.FloatRange(0.05, 3600, clamp=True),
        metavar="SECONDS",
        help="How long to wait for discovery answers and connections (default 2).",
    ),
    _option(
        "--config",
        metavar="FILE",
        type=click.Path(dir_okay=False),
        help="Config file (default: $PPCP_CONFIG or ~/.config/ppcp/config.toml).",
    ),
    _option("-v", "--verbose", count=True, help="More logging; tracebacks on errors."),
    _option("-q", "--quiet", is_flag=True, default=None, help="No progress bars or chatter."),
)


def global_options(f: F) -> F:
    """Decorate a command (or the group) with every global option."""
    for option in reversed(_GLOBAL_OPTIONS):
        f = option(f)
    return f


def get_settings() -> Settings:
    return click.get_current_context().find_root().ensure_object(Settings)
