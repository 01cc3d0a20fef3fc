"""``ppcp serve``: a foreground PPCP server with readable logs."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
from msgspec import Struct

from ppcp.cli.errors import EXIT_CONFIG, handle_errors
from ppcp.cli.options import Settings, get_settings, server_options

if TYPE_CHECKING:
    import asyncio

    from ppcp.aio import Server
    from ppcp.control.router import ServerPolicy
    from ppcp.transport.aio_server import ListenError


@click.command("serve")
@click.option("--name", metavar="NAME", help="Name to answer discovery with (default: hostname).")
@click.option(
    "--bind",
    metavar="HOST",
    default="0.0.0.0",
    show_default=True,
    help="Address to listen on (127.0.0.1 for this machine only, :: for IPv6).",
)
@click.option(
    "--root",
    metavar="DIR",
    type=click.Path(exists=True, file_okay=False),
    help="Directory file transfers are confined to (default: current directory).",
)
@click.option("--no-exec", is_flag=True, help="Refuse remote commands and shells.")
@click.option(
    "--allow",
    "allow",
    metavar="CMD",
    multiple=True,
    help="Only allow these programs (repeatable); implies no interactive shell.",
)
@click.option("--no-shell", is_flag=True, help="Refuse interactive shells.")
@click.option("--no-files", is_flag=True, help="Refuse file transfers.")
@click.option("--no-discovery", is_flag=True, help="Do not answer discovery requests.")
@click.option("--no-mdns", is_flag=True, help="Answer UDP discovery but do not announce on mDNS.")
@click.option("--systemd-unit", is_flag=True, help="Print a systemd unit for this server and exit.")
@server_options
@handle_errors()
def command(
    name: str | None,
    bind: str,
    root: str | None,
    no_exec: bool,
    allow: tuple[str, ...],
    no_shell: bool,
    no_files: bool,
    no_discovery: bool,
    no_mdns: bool,
    systemd_unit: bool,
) -> None:
    """Run a PPCP server in the foreground until SIGINT or SIGTERM.

    Logs connections, authentication failures (with the source address),
    commands run and file transfers to stderr. The first line names the
    bound address: `listening on HOST:PORT`.
    """
    if no_exec and allow:
        raise click.UsageError("--no-exec and --allow exclude each other.")
    options = ServeOptions(
        name=name,
        bind=bind,
        root=root,
        no_exec=no_exec,
        allow=allow,
        no_shell=no_shell,
        no_files=no_files,
        no_discovery=no_discovery,
        no_mdns=no_mdns,
    )
    if systemd_unit:
        click.echo(unit_file(options), nl=False)
        return
    run(options)


class ServeOptions(Struct, frozen=True):
    name: str | None
    bind: str
    root: str | None
    no_exec: bool
    allow: tuple[str, ...]
    no_shell: bool
    no_files: bool
    no_discovery: bool
    no_mdns: bool


def setup_logging(settings: Settings) -> None:
    """Readable server logs on stderr: time, level, message."""
    import logging

    level = logging.DEBUG if settings.verbose else logging.INFO
    if settings.quiet:
        level = logging.WARNING
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%d %H:%M:%S")
    )
    root = logging.getLogger("ppcp")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    if settings.verbose < 2:
        logging.getLogger("asyncio").setLevel(logging.WARNING)


def make_policy(options: ServeOptions) -> ServerPolicy:
    from pathlib import Path

    from ppcp.aio import ServerPolicy

    allow_exec = not options.no_exec
    return ServerPolicy(
        allow_exec=allow_exec,
        exec_allowlist=options.allow or None,
        # A shell would bypass the allow-list.
        allow_shell=allow_exec and not options.no_shell and not options.allow,
        allow_files=not options.no_files,
        root=Path(options.root or ".").resolve(),
    )


def describe_policy(policy: ServerPolicy) -> str:
    if not policy.allow_exec:
        commands = "commands disabled"
    elif policy.exec_allowlist is not None:
        commands = "commands limited to " + ", ".join(policy.exec_allowlist)
    else:
        commands = "commands allowed"
    shell = "shell allowed" if policy.allow_shell else "shell disabled"
    files = f"files under {policy.root}" if policy.allow_files else "files disabled"
    return f"{commands}; {shell}; {files}"


def run(options: ServeOptions) -> None:
    from ppcp.cli.target import Context

    ctx = Context()
    psk = ctx.psk
    setup_logging(ctx.settings)
    run_server(ctx, psk, make_policy(options), options, describe_policy)


def run_server(
    ctx: Any,
    psk: str,
    policy: ServerPolicy,
    options: ServeOptions,
    describe: Callable[[ServerPolicy], str],
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM/SIGHUP (or ``stop`` is set), then close every
    session (Server.aclose)."""
    import asyncio

    loop_factory, loop_name = event_loop_choice()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(ctx, psk, policy, options, describe, stop, loop_name))


EVENT_LOOP_ENV = "PPCP_EVENT_LOOP"


def event_loop_choice() -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """The server's event loop: uvloop when installed (``pip install 'ppcp[uvloop]'``),
    else asyncio's; ``PPCP_EVENT_LOOP=asyncio`` or ``=uvloop`` chooses.

    uvloop is for the server only: a short session costs it 4-12 % less CPU
    (100 concurrent connect + exec, ``make bench``'s concurrent section), while
    importing it would add to every client command's start.
    """
    from ppcp.cli.errors import CLIError

    wanted = os.environ.get(EVENT_LOOP_ENV, "auto").strip().lower() or "auto"
    if wanted not in ("auto", "asyncio", "uvloop"):
        raise CLIError(
            EXIT_CONFIG,
            f"{EVENT_LOOP_ENV}={os.environ[EVENT_LOOP_ENV]!r}: expected auto, asyncio or uvloop.",
        )
    if wanted == "asyncio":
        return None, "asyncio"
    try:
        import uvloop
    except ImportError:
        if wanted == "uvloop":
            raise CLIError(
                EXIT_CONFIG,
                f"{EVENT_LOOP_ENV}=uvloop, but uvloop is not installed "
                "(pip install 'ppcp[uvloop]').",
            ) from None
        return None, "asyncio"
    return uvloop.new_event_loop, f"uvloop {getattr(uvloop, '__version__', '')}".strip()


async def _serve(
    ctx: Any,
    psk: str,
    policy: ServerPolicy,
    options: ServeOptions,
    describe: Callable[[ServerPolicy], str],
    stop: asyncio.Event | None = None,
    loop_name: str = "asyncio",
) -> None:
    import asyncio
    import logging
    import signal

    from ppcp import SessionConfig
    from ppcp.aio import serve
    from ppcp.transport.aio_server import ListenError

    log = logging.getLogger("ppcp.server")
    name = options.name or ctx.config.name
    config = SessionConfig(name=name) if name else SessionConfig()
    kwargs: dict[str, Any] = {"config": config, "policy": policy}
    kwargs.update(discovery_kwargs(options, ctx))
    try:
        server: Server = await serve(options.bind, ctx.port, psk, **kwargs)
    except ListenError as exc:
        from ppcp.cli.errors import EXIT_CONNECTION, CLIError

        raise CLIError(EXIT_CONNECTION, listen_failure(exc)) from None
    if stop is None:
        stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    received: list[str] = []

    def on_signal(signame: str) -> None:
        received.append(signame)
        stop.set()

    # SIGHUP too: a server started from a terminal or an ssh login gets it when that
    # ends, and must not die without killing the commands it started.
    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for sig in stop_signals:
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        for sock in server.sockets:
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            log.info("listening on %s:%d", shown, port)
        if server.discovery is not None:
            log.info("discovery on UDP port %d", server.discovery.port)
        else:
            log.info("discovery disabled: clients need --host")
        log.info("server name %r; %s; event loop %s", config.name, describe(policy), loop_name)
        await stop.wait()
        log.info(
            "%s received: closing %d session(s)",
            received[0] if received else "stop request",
            len(server.sessions),
        )
    finally:
        await server.aclose()
        for sig in stop_signals:
            loop.remove_signal_handler(sig)
    log.info("server stopped")


def listen_failure(exc: ListenError) -> str:
    """Which port could not be opened, why, and what to do about it."""
    import errno

    tcp = exc.what == "TCP"
    if tcp:
        host = f"[{exc.host}]" if exc.host and ":" in exc.host else exc.host
        where = f"the server's TCP port {host}:{exc.port}"
        option = "--port (--port 0 picks a free one)"
    else:
        where = f"the discovery UDP port {exc.port}"
        option = (
            "--discovery-port (clients then need the same --discovery-port), or "
            "--no-discovery (clients then need --host)"
        )
    reason = (exc.strerror or "").rstrip(".")
    reason = reason[:1].lower() + reason[1:]
    if exc.errno == errno.EADDRINUSE:
        why = f"{reason}: another program (another ppcp serve?) uses it"
        fix = f"Stop that program, or choose another port with {option}."
    elif exc.errno in (errno.EACCES, errno.EPERM) and 0 < exc.port < 1024:
        why = f"{reason}: ports below 1024 need root (or CAP_NET_BIND_SERVICE)"
        fix = f"Choose a port of 1024 or above with {option}."
    elif tcp and (exc.errno == errno.EADDRNOTAVAIL or (exc.errno or 0) < 0):
        # (A negative number is getaddrinfo's: the name itself is unknown.)
        why = f"{reason}: {exc.host} is not an address of this machine"
        fix = "Choose one with --bind (0.0.0.0 for all, 127.0.0.1 for this machine only)."
    else:
        why = reason
        fix = f"Choose another port with {option}."
    return f"cannot listen on {where}: {why}. {fix}"


def discovery_kwargs(options: ServeOptions, ctx: Any) -> dict[str, Any]:
    """The discovery arguments of :func:`ppcp.aio.serve`."""
    kwargs: dict[str, Any] = {"discovery": not options.no_discovery}
    if not options.no_discovery:
        kwargs["discovery_port"] = ctx.udp_port
        # None: mDNS unless bound to loopback or on an ephemeral UDP port.
        kwargs["mdns"] = False if options.no_mdns else None
    return kwargs


def unit_file(options: ServeOptions) -> str:
    """A unit file running this same server as a service."""
    import getpass
    import shutil
    import sys
    from pathlib import Path

    from ppcp.cli.config import load_config, psk_source
    from ppcp.cli.errors import CLIError

    settings = get_settings()
    config = load_config(settings)
    _, psk_path = psk_source(settings, config)
    if psk_path is None:
        raise CLIError(
            EXIT_CONFIG,
            "the key comes from $PPCP_PSK, which a unit file should not contain; "
            "write it to a file (mode 0600) and use --psk-file.",
        )
    script = shutil.which("ppcp")
    argv0 = Path(sys.argv[0])
    if argv0.name == "ppcp" and argv0.exists():
        exe = [str(argv0.resolve())]
    elif script:
        exe = [str(Path(script).resolve())]
    else:
        exe = [sys.executable, "-m", "ppcp.cli"]
    args = [*exe, "serve", "--bind", options.bind]
    if options.name or config.name:
        args += ["--name", str(options.name or config.name)]
    if settings.port is not None:
        args += ["--port", str(settings.port)]
    if settings.discovery_port is not None:
        args += ["--discovery-port", str(settings.discovery_port)]
    if settings.config:
        args += ["--config", str(Path(settings.config).resolve())]
    args += ["--root", str(Path(options.root or ".").resolve())]
    for flag in ("no_exec", "no_shell", "no_files", "no_discovery", "no_mdns"):
        if getattr(options, flag):
            args.append("--" + flag.replace("_", "-"))
    for cmd in options.allow:
        args += ["--allow", cmd]
    user = getpass.getuser()
    return f"""\
# ppcp.service: install with
#   sudo cp ppcp.service /etc/systemd/system/ && sudo systemctl daemon-reload
#   sudo systemctl enable --now ppcp.service
# then follow its log with: journalctl -u ppcp -f
[Unit]
Description=PPCP server (encrypted LAN remote control)
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
User={user}
Environment=PPCP_PSK_FILE={_systemd_quote(str(psk_path.resolve()))}
Environment=PYTHONUNBUFFERED=1
ExecStart={" ".join(_systemd_quote(a) for a in args)}
KillSignal=SIGTERM
TimeoutStopSec=15
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
"""


def _systemd_quote(arg: str) -> str:
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if any(c in escaped for c in " \t\"'\\;"):
        escaped = '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return escaped
