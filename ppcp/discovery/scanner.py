"""The client side of discovery: one scan, driven by asyncio.

A :class:`Scan` sends PING rounds (at 0, 0.1, 0.3, 0.7, 1.5 s, ...) to, in
this order: the cached addresses of known servers, the static targets, the
limited broadcast, each interface's directed broadcast and ``ff02::1`` on
each IPv6 interface; it browses mDNS alongside.  Every accepted answer is
merged by the :class:`~ppcp.discovery.collect.Collector` and queued on
:attr:`Scan.updates`.  Protocol decisions live in
:class:`~ppcp.discovery.collect.PingTracker`; this module only moves bytes
and keeps the notes that make :meth:`Scan.failure` a useful error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from typing import cast

from ppcp.core.errors import DiscoveryError
from ppcp.discovery.collect import (
    Collector,
    PingTracker,
    ServerInfo,
    Sighting,
    retransmit_offsets,
)
from ppcp.discovery.config import DiscoveryConfig
from ppcp.discovery.mdns import SERVICE_TYPE, MdnsBrowser
from ppcp.discovery.netif import (
    Destination,
    SockAddr,
    broadcast_destinations,
    format_host,
    list_interfaces,
    multicast6_destinations,
    numeric_sockaddr,
    parse_target,
)
from ppcp.discovery.state import AddressCache

log = logging.getLogger("ppcp.discovery")

RESOLVE_TIMEOUT = 1.0
MAX_RESOLVED_PER_TARGET = 4
MAX_PROBLEMS = 16
MAX_DESTINATIONS = 256


class _ScanProtocol(asyncio.DatagramProtocol):
    def __init__(self, scan: Scan) -> None:
        self.scan = scan

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.scan._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.scan._note(exc)


class Scan:
    """One discovery run.  ``key`` is K_d, or None to use mDNS only."""

    def __init__(
        self,
        key: bytes | None,
        config: DiscoveryConfig,
        port: int,
        targets: tuple[str, ...] = (),
    ) -> None:
        self.config = config
        self.port = port
        self.targets = (*config.targets, *targets)
        self.tracker = PingTracker(key, ping_size=config.ping_size, rng=config.rng) if key else None
        self.collector = Collector()
        self.updates: asyncio.Queue[Sighting] = asyncio.Queue()
        self.cache = AddressCache(config.cache_path)
        self.destinations: list[Destination] = []
        self.problems: list[str] = []
        self.interfaces: list[str] = []
        self._transports: dict[int, asyncio.DatagramTransport] = {}
        self._sending: Destination | None = None
        self._rounds: asyncio.Task[None] | None = None
        self._browser: MdnsBrowser | None = None
        self._loop = asyncio.get_running_loop()
        self.started = self._loop.time()

    # -- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        self.started = self._loop.time()
        if self.tracker is not None:
            for dest in await self._plan():
                self._add_destination(dest)
            await self._open_sockets()
            self._rounds = self._loop.create_task(self._run_rounds())
        if self.config.mdns:
            browser = MdnsBrowser(self._on_hint)
            try:
                await browser.start()
                self._browser = browser
            except Exception as exc:
                self._note(exc, "mDNS browse")

    async def aclose(self) -> None:
        if self._rounds is not None:
            self._rounds.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rounds
        for transport in self._transports.values():
            transport.close()
        self._transports.clear()
        if self._browser is not None:
            await self._browser.aclose()
            self._browser = None

    def save_cache(self) -> None:
        self.cache.update(self.collector.results(), self.collector.discovery_ports, time.time())
        self.cache.save()

    # -- where PINGs go ----------------------------------------------------

    async def _plan(self) -> list[Destination]:
        plan = [
            Destination(f"cached {name!r} {host}", *target)
            for name, host, port in self.cache.targets()
            if (target := numeric_sockaddr(host, port)) is not None
        ]
        resolved = await asyncio.gather(*(self._resolve(t) for t in self.targets))
        plan.extend(d for dests in resolved for d in dests)
        if self.config.broadcast or self.config.multicast6:
            ifaces = list_interfaces()
            self.interfaces = [
                i.name
                for i in ifaces
                if i.up
                and not i.loopback
                and (self.config.interfaces is None or i.name in self.config.interfaces)
            ]
            if self.config.broadcast:
                plan += broadcast_destinations(ifaces, self.port, self.config.interfaces)
            if self.config.multicast6:
                plan += multicast6_destinations(ifaces, self.port, self.config.interfaces)
        return plan

    async def _resolve(self, text: str) -> list[Destination]:
        try:
            host, port = parse_target(text, self.port)
        except ValueError as exc:
            self._note(exc, "target")
            return []
        numeric = numeric_sockaddr(host, port)
        if numeric is not None:
            return [Destination(f"target {host}", *numeric)]
        try:
            infos = await asyncio.wait_for(
                self._loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM), RESOLVE_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            self._note(exc, f"target {text}: cannot resolve")
            return []
        return [
            Destination(f"target {host}", int(family), cast(SockAddr, sockaddr))
            for family, _, _, _, sockaddr in infos[:MAX_RESOLVED_PER_TARGET]
            if family in (socket.AF_INET, socket.AF_INET6)
        ]

    def _add_destination(self, dest: Destination) -> bool:
        if len(self.destinations) >= MAX_DESTINATIONS or any(
            d.sockaddr == dest.sockaddr for d in self.destinations
        ):
            return False
        self.destinations.append(dest)
        return True

    async def _open_sockets(self) -> None:
        # IPv4 always: mDNS hints found later are PINGed over it.
        for family in sorted({socket.AF_INET, *(d.family for d in self.destinations)}):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                if family == socket.AF_INET:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                    sock.bind(("0.0.0.0", 0))
                else:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    sock.bind(("::", 0))
                sock.setblocking(False)
                transport, _ = await self._loop.create_datagram_endpoint(
                    lambda: _ScanProtocol(self), sock=sock
                )
            except OSError as exc:
                sock.close()
                self._note(exc, "IPv4 socket" if family == socket.AF_INET else "IPv6 socket")
                continue
            self._transports[family] = transport

    # -- sending and receiving ---------------------------------------------

    async def _run_rounds(self) -> None:
        cfg = self.config
        for offset in retransmit_offsets(cfg.first_retransmit, cfg.max_retransmit_gap):
            delay = self.started + offset - self._loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            for dest in list(self.destinations):
                self._send(dest)

    def _send(self, dest: Destination) -> None:
        transport = self._transports.get(dest.family)
        if transport is None or self.tracker is None:
            return
        # asyncio reports a failed sendto() through error_received() at once,
        # which then knows which destination failed.
        self._sending = dest
        try:
            transport.sendto(self.tracker.ping(self._loop.time()), dest.sockaddr)
        finally:
            self._sending = None

    def _on_datagram(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if self.tracker is None:
            return
        source = (format_host(addr), int(str(addr[1])))
        sighting = self.tracker.receive(data, source, self._loop.time())
        if sighting is not None:
            self._add(sighting)

    def _on_hint(self, hint: Sighting) -> None:
        self._add(hint)
        # With the PSK, ask the advertised address directly: a PONG turns the
        # unauthenticated hint into a verified sighting.
        if self.tracker is not None and hint.discovery_port:
            target = numeric_sockaddr(hint.address, hint.discovery_port)
            if target is not None:
                dest = Destination(f"mDNS {hint.name!r} {hint.address}", *target)
                if self._add_destination(dest):
                    self._send(dest)

    def _add(self, sighting: Sighting) -> None:
        if self.collector.add(sighting) is not None:
            self.updates.put_nowait(sighting)

    def _note(self, exc: BaseException, what: str | None = None) -> None:
        if what is None:
            what = self._sending.label if self._sending else "reply"
        text = f"{what}: {getattr(exc, 'strerror', None) or exc}"
        log.debug("discovery: %s", text)
        if text not in self.problems and len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)

    # -- reporting ---------------------------------------------------------

    def failure(
        self, timeout: float, name: str | None, extra: tuple[str, ...] = ()
    ) -> DiscoveryError:
        """The error for "nothing (matching) answered", with what was tried and why it may fail."""
        wanted = f"named {name!r} " if name else ""
        lines = [f"no PPCP server {wanted}answered within {timeout:g} s."]
        tried = [f"{d.label} UDP {d.sockaddr[1]}" for d in self.destinations]
        if self._browser is not None:
            tried.append(f"mDNS {SERVICE_TYPE}")
        lines.append("Tried: " + (", ".join(tried) or "nothing"))
        if self.config.broadcast or self.config.multicast6:
            lines.append(
                "Interfaces: " + (", ".join(self.interfaces) or "none up besides loopback")
            )
        if self.tracker is None:
            lines.append("No PSK given: only mDNS was used (PINGs need the PSK).")
        seen = self.collector.results()
        if seen:
            lines.append(
                "Servers that answered: "
                + ", ".join(f"{i.name!r} at {', '.join(i.addresses)}" for i in seen)
            )
        if self.tracker is not None and self.tracker.dropped:
            counts = ", ".join(f"{n} {why}" for why, n in sorted(self.tracker.dropped.items()))
            lines.append(f"Ignored answers: {counts}.")
        problems = [*self.problems, *extra]
        if problems:
            lines.append("Problems: " + "; ".join(problems))
        lines.append(
            f"Likely causes: a firewall dropping UDP port {self.port} on the server or here; "
            "Wi-Fi access-point (client) isolation blocking broadcast between stations "
            "(pass targets=['host:port']); the server uses a different PSK (servers ignore "
            "PINGs from other PSK groups); the server is not running or has discovery disabled."
        )
        return DiscoveryError("\n".join(lines))

    def results(self) -> list[ServerInfo]:
        return self.collector.results()
