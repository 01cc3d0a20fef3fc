"""Options shared by every command, as one decorator bundle.

The bundle is applied to the group *and* to each command, so users may type
``ppcp --host h exec ...`` or ``ppcp exec --host h ...``.  Each option stores
its value into one :class:`Settings` object on the root context; a value given
after the command name is parsed later and therefore wins.

This module is imported for ``ppcp --help``: it must stay light (click only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
from msgspec import Struct

F = TypeVar("F", bound=Callable[..., Any])


class Settings(Struct):
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


class _Number(click.ParamType):  # type: ignore[type-arg]  # generic since click 8.2
    """An int or float in a range, without click's ``[0<=x<=65535]`` help suffix."""

    def __init__(self, name: str, kind: type[int] | type[float], low: float, high: float):
        self.name, self.kind, self.low, self.high = name, kind, low, high

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            number = self.kind(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a {self.name}", param, ctx)
        if not self.low <= number <= self.high:
            self.fail(f"{value!r} is not a {self.name} ({self.low:g}-{self.high:g})", param, ctx)
        return number


PORT = _Number("port number", int, 0, 65535)
SECONDS = _Number("number of seconds", float, 0.05, 3600)
# A command's time limit: positive and finite (inf and nan are floats too, and the wire
# refuses them), up to about 31 years.
COMMAND_SECONDS = _Number("number of seconds", float, 0.001, 1e9)

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
        type=PORT,
        metavar="PORT",
        help="Server TCP port (default 9000; 0 for an ephemeral one with serve).",
    ),
    _option(
        "--discovery-port",
        type=PORT,
        metavar="PORT",
        help="UDP port for discovery (default 9000).",
    ),
    _option(
        "--unicast",
        metavar="HOST[:PORT]",
        multiple=True,
        default=None,
        help="Send discovery PINGs to this address instead of broadcasting (repeatable).",
    ),
    _option(
        "--timeout",
        type=SECONDS,
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


_CLIENT_ONLY = ("--host", "--unicast", "--timeout")


def global_options(f: F) -> F:
    """Decorate a command (or the group) with every global option."""
    for option in reversed(_GLOBAL_OPTIONS):
        f = option(f)
    return f


def server_options(f: F) -> F:
    """The global options that mean something to a server (no --host...)."""
    for option in reversed(_GLOBAL_OPTIONS):
        f = option(f)
    params = getattr(f, "__click_params__", [])
    params[:] = [p for p in params if not set(p.opts) & set(_CLIENT_ONLY)]
    return f


def get_settings() -> Settings:
    return click.get_current_context().find_root().ensure_object(Settings)
