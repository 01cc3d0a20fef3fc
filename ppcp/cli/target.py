"""From what the user typed (a name, an alias, ``--host``) to an open session.

Only the public API is used: :func:`ppcp.find_server` / :func:`ppcp.discover`
for names, a plain TCP connection for ``--host``, then :func:`ppcp.client_connect`.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

import click
from msgspec import Struct

from ppcp.cli.config import (
    DEFAULT_PORT,
    FileConfig,
    effective_discovery_port,
    effective_port,
    effective_timeout,
    load_config,
    load_psk,
)
from ppcp.cli.errors import EXIT_NOT_FOUND, EXIT_USAGE, CLIError
from ppcp.cli.options import Settings, get_settings

if TYPE_CHECKING:
    import ppcp


class Target(Struct, frozen=True):
    """One server to reach: by address (host set) or by discovery name."""

    label: str
    host: str | None = None
    port: int | None = None
    name: str | None = None
    # Other addresses of the same server (from discovery), tried in order.
    fallbacks: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.host is not None:
            return f"{_join(self.host, self.port)}"
        return repr(self.name)


def _join(host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if port is not None else shown


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 address."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise CLIError(EXIT_USAGE, f"bad address {text!r}: expected [IPv6]:PORT.")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host:
        raise CLIError(EXIT_USAGE, f"bad address {text!r}: the host is missing.")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise CLIError(EXIT_USAGE, f"bad address {text!r}: {port_text!r} is not a port number.")
    return host, int(port_text)


class Context:
    """Settings, config and PSK for one client command, loaded once."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.config: FileConfig = load_config(self.settings)
        self.port = effective_port(self.settings, self.config)
        self.timeout = effective_timeout(self.settings, self.config)
        self.discovery_port = effective_discovery_port(self.settings, self.config)
        self._psk: str | None = None

    @property
    def psk(self) -> str:
        if self._psk is None:
            self._psk = load_psk(self.settings, self.config)
        return self._psk

    def resolve(self, name: str | None) -> Target:
        """The server NAME stands for (``--host`` wins; aliases are expanded)."""
        if self.settings.host:
            host, port = parse_hostport(self.settings.host, self.port)
            return Target(label=name or self.settings.host, host=host, port=port)
        if not name:
            raise CLIError(EXIT_USAGE, "name a server (see `ppcp scan`), or use --host.")
        alias = self.config.aliases.get(name)
        if alias is None:
            return Target(label=name, name=name)
        if ":" in alias:
            host, port = parse_hostport(alias, self.port)
            return Target(label=name, host=host, port=port)
        return Target(label=name, name=alias)

    def session_config(self) -> ppcp.SessionConfig:
        from ppcp import SessionConfig

        return SessionConfig(handshake_timeout=max(self.timeout, 5.0))

    def connect(self, target: Target) -> ppcp.Session:
        """Reach ``target`` and authenticate: the blocking :class:`ppcp.Session`."""
        import time

        import ppcp

        psk = self.psk
        deadline = time.monotonic() + self.timeout
        delay = 0.05
        sock = self.open_socket(target)
        while True:
            # The address found (by discovery too), for trying again without a new search.
            host, port = sock.getpeername()[:2]
            try:
                return ppcp.client_connect(sock, psk, config=self.session_config())
            except ppcp.ServerBusy:
                # Its handshake slots are full (`xargs -P`, `make -j` running ppcp): they
                # free as the other clients authenticate, so try again within --timeout,
                # at jittered intervals so that the refused clients do not come back as one.
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                import random  # here: only a refused client pays for the import

                time.sleep(min(left, delay * (0.5 + random.random())))
                delay = min(2 * delay, 1.0)
            sock = connect_tcp(host, port, max(0.05, deadline - time.monotonic()))

    def open_socket(self, target: Target) -> socket.socket:
        if target.host is not None:
            assert target.port is not None
            for host in target.fallbacks:
                try:
                    return connect_tcp(host, target.port, self.timeout)
                except CLIError:
                    continue
            return connect_tcp(target.host, target.port, self.timeout)
        import ppcp

        assert target.name is not None
        try:
            return ppcp.find_server(
                self.udp_port,
                target.name,
                self.timeout,
                self.psk,
                config=self.discovery_config(),
            )
        except ppcp.DiscoveryError as exc:
            if self.settings.verbose:
                click.echo(str(exc), err=True)
            raise CLIError(
                EXIT_NOT_FOUND,
                f"no PPCP server named {target.name!r} answered within {self.timeout:g} s "
                f"(UDP port {self.udp_port}). `ppcp scan` lists the servers that answer; "
                "-v says what was tried.",
            ) from None

    @property
    def udp_port(self) -> int:
        """The UDP port discovery PINGs go to."""
        return self.discovery_port if self.discovery_port is not None else DEFAULT_PORT

    def discovery_config(self) -> Any:
        from ppcp.discovery.config import DiscoveryConfig

        targets = tuple(
            f"{_join(*parse_hostport(t, self.udp_port))}" for t in self.settings.unicast
        )
        if not targets:
            return DiscoveryConfig()
        # Explicit addresses replace broadcast, mDNS and the address cache.
        return DiscoveryConfig(
            targets=targets, broadcast=False, multicast6=False, mdns=False, cache_path=None
        )

    def discover(self) -> list[Any]:
        """Every server that answers (empty list if none)."""
        import ppcp

        try:
            servers: list[Any] = ppcp.discover(
                self.udp_port, self.timeout, self.psk, config=self.discovery_config()
            )
        except ppcp.DiscoveryError as exc:
            if self.settings.verbose:
                click.echo(str(exc), err=True)
            return []
        return servers


def connect_tcp(host: str, port: int, timeout: float) -> socket.socket:
    """A connected TCP socket, or a CLIError saying why nothing is there."""
    where = _join(host, port)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as exc:
        raise CLIError(EXIT_NOT_FOUND, f"unknown host {host!r}: {exc.strerror}.") from None
    except ConnectionRefusedError:
        raise CLIError(
            EXIT_NOT_FOUND, f"no PPCP server at {where}: connection refused (is it running?)."
        ) from None
    except TimeoutError:
        raise CLIError(EXIT_NOT_FOUND, f"no answer from {where} within {timeout:g} s.") from None
    except OSError as exc:
        raise CLIError(EXIT_NOT_FOUND, f"cannot reach {where}: {exc.strerror or exc}.") from None
    sock.settimeout(None)
    return sock


def split_remote(spec: str) -> tuple[str, str]:
    """``NAME:PATH`` -> (NAME, PATH); NAME may be empty (``:PATH`` with --host)."""
    name, sep, path = spec.partition(":")
    if not sep:
        raise CLIError(EXIT_USAGE, f"{spec!r} is not a remote path: expected NAME:PATH.")
    return name, path or "."
