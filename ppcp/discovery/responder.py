"""The server side of discovery: the UDP responder and the mDNS advertisement.

:class:`Responder` only moves datagrams: every decision is
:class:`~ppcp.discovery.abuse.ResponderCore`'s.  :class:`DiscoveryService`
bundles a responder with an optional mDNS advertiser; ``ppcp.aio.serve()``
starts one per server (see :func:`start_server_discovery`) and the blocking
:func:`advertise` makes a seed-style server (``create_tcp_server`` +
``server_accept``) discoverable too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import time
from pathlib import Path

from ppcp.core.config import DEFAULT_PORT, SessionConfig, default_session_config
from ppcp.crypto.psk import derive_psk_key
from ppcp.discovery import prefilter
from ppcp.discovery.abuse import ResponderCore, ResponderLimits, Verdict
from ppcp.discovery.mdns import MdnsAdvertiser
from ppcp.discovery.netif import format_host
from ppcp.discovery.state import default_server_id_path, load_server_id
from ppcp.discovery.wire import SERVER_ID_LEN, ServerIdentity, discovery_key

log = logging.getLogger("ppcp.discovery")

StrPath = str | os.PathLike[str]


# Datagrams handled per wakeup before the loop runs other callbacks.
READ_BATCH = 64


class Responder:
    """Answers PINGs on one UDP port, on IPv4 and (when possible) IPv6.

    It reads its sockets directly (``loop.add_reader``), draining up to
    :data:`READ_BATCH` datagrams per wakeup, rather than through an asyncio
    datagram transport, which costs an event-loop iteration per datagram:
    under a flood this handles about three times more datagrams per second,
    so valid PINGs are less often lost behind garbage.  Replies are sent
    without buffering; one that would block is dropped, as UDP may.
    """

    def __init__(self, core: ResponderCore) -> None:
        self.core = core
        self._socks: list[socket.socket] = []

    @property
    def port(self) -> int:
        return int(self._socks[0].getsockname()[1])

    @property
    def stats(self) -> dict[Verdict, int]:
        return dict(self.core.stats)

    async def start(self, host: str = "0.0.0.0", port: int = DEFAULT_PORT) -> None:
        """Bind ``host:port``; on the wildcard address also ``[::]`` on the same port."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._bind(family, host, port)
        if host == "0.0.0.0" and socket.has_ipv6:
            try:
                self._bind(socket.AF_INET6, "::", self.port)
            except OSError as exc:
                log.debug("discovery responder: no IPv6 (%s)", exc)

    def _bind(self, family: int, host: str, port: int) -> None:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.setblocking(False)
            if self.core.limits.kernel_filter:
                prefilter.attach(sock, self.core.limits.max_datagram)
            asyncio.get_running_loop().add_reader(sock.fileno(), self._readable, sock)
        except BaseException:
            sock.close()
            raise
        self._socks.append(sock)

    def _readable(self, sock: socket.socket) -> None:
        # One byte more than the cap: a longer datagram is truncated, and
        # still seen to be too long.
        size = self.core.limits.max_datagram + 1
        for _ in range(READ_BATCH):
            try:
                data, addr = sock.recvfrom(size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error queued on the socket
                log.debug("discovery responder: %s", exc)
                continue
            if not addr[1]:
                continue
            try:
                reply = self.core.handle(data, format_host(addr), time.monotonic())
                if reply is not None:
                    sock.sendto(reply, addr)
            except OSError as exc:
                log.debug("discovery responder: cannot answer %s: %s", addr[0], exc)
            except Exception:  # the invariant: nothing a datagram does escapes
                log.exception("discovery responder: unexpected error; datagram dropped")

    async def aclose(self) -> None:
        """Close the sockets; on return the port can be bound again."""
        loop = asyncio.get_running_loop()
        for sock in self._socks:
            loop.remove_reader(sock.fileno())
            sock.close()
        self._socks.clear()


class DiscoveryService:
    """A server's discovery presence: the PING responder plus mDNS records."""

    def __init__(self, responder: Responder, advertiser: MdnsAdvertiser | None) -> None:
        self.responder = responder
        self.advertiser = advertiser

    @property
    def identity(self) -> ServerIdentity:
        return self.responder.core.identity

    @property
    def server_id(self) -> str:
        return self.identity.server_id.hex()

    @property
    def port(self) -> int:
        """The UDP port the responder listens on."""
        return self.responder.port

    @classmethod
    async def start(
        cls,
        psk_key: bytes,
        identity: ServerIdentity,
        *,
        host: str = "0.0.0.0",
        port: int = DEFAULT_PORT,
        mdns: bool = True,
        mdns_host: str | None = None,
        limits: ResponderLimits | None = None,
    ) -> DiscoveryService:
        responder = Responder(ResponderCore(discovery_key(psk_key), identity, limits))
        try:
            await responder.start(host, port)
            advertiser = None
            if mdns:
                advertiser = MdnsAdvertiser(identity, responder.port, mdns_host)
                try:
                    await advertiser.start()
                except Exception as exc:  # mDNS is optional: the responder still works
                    log.warning("mDNS advertisement disabled: %s", exc)
                    advertiser = None
        except BaseException:
            await responder.aclose()
            raise
        log.info(
            "discovery: answering PINGs on UDP %d as %r (id %s)",
            responder.port,
            identity.name,
            identity.server_id.hex(),
        )
        return cls(responder, advertiser)

    async def aclose(self) -> None:
        await self.responder.aclose()
        if self.advertiser is not None:
            await self.advertiser.aclose()
            self.advertiser = None


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    return host == "localhost"


def resolve_server_id(server_id_path: StrPath | None, tcp_port: int, fixed_port: bool) -> bytes:
    """The server id: from ``server_id_path``, else from the default state file
    for a fixed TCP port, else (ephemeral port) a fresh one for this run."""
    if server_id_path is not None:
        return load_server_id(Path(server_id_path))
    if fixed_port:
        return load_server_id(default_server_id_path(tcp_port))
    return os.urandom(SERVER_ID_LEN)


async def start_server_discovery(
    psk_key: bytes,
    config: SessionConfig,
    *,
    host: str | None,
    tcp_port: int,
    fixed_port: bool,
    discovery_port: int = DEFAULT_PORT,
    server_id_path: StrPath | None = None,
    mdns: bool | None = None,
) -> DiscoveryService:
    """The discovery service for one server (what ``ppcp.aio.serve()`` runs).

    ``fixed_port`` says whether the TCP port was chosen or ephemeral; the
    server id persists in the default state file only for fixed TCP and UDP
    ports (or in ``server_id_path`` if given).  ``mdns=None``
    advertises over mDNS unless the server only listens on loopback or
    discovery uses an ephemeral UDP port: test and private setups, which
    should not multicast on the LAN.  Raises OSError if the UDP port is taken.
    """
    if mdns is None:
        mdns = not _is_loopback(host) and discovery_port != 0
    # An ephemeral port (TCP or UDP) marks a test or private setup: its id
    # need not outlive the run, so no state file is written for it.
    server_id = resolve_server_id(server_id_path, tcp_port, fixed_port and discovery_port != 0)
    identity = ServerIdentity(
        server_id, config.name, tcp_port, config.versions, config.capabilities
    )
    return await DiscoveryService.start(
        psk_key, identity, port=discovery_port, mdns=mdns, mdns_host=host
    )


class Advertisement:
    """A running discovery service for a server driven by the blocking API."""

    def __init__(self, service: DiscoveryService) -> None:
        self.service = service

    @property
    def server_id(self) -> str:
        return self.service.server_id

    @property
    def port(self) -> int:
        return self.service.port

    def close(self) -> None:
        from ppcp.transport.blocking import run  # see ppcp.discovery.api on this import

        run(self.service.aclose())

    def __enter__(self) -> Advertisement:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def advertise(
    psk: bytes | str,
    port: int = DEFAULT_PORT,
    *,
    config: SessionConfig | None = None,
    discovery_port: int = DEFAULT_PORT,
    server_id_path: StrPath | None = None,
    mdns: bool | None = None,
    host: str | None = None,
) -> Advertisement:
    """Make a server listening on TCP ``port`` discoverable (blocking API)::

        listener = ppcp.create_tcp_server("0.0.0.0", 9000)
        with ppcp.discovery.advertise(psk, 9000):
            ...accept loop...

    Raises OSError if the UDP port is taken.
    """
    from ppcp.transport.blocking import run

    service = run(
        start_server_discovery(
            derive_psk_key(psk),
            config or default_session_config(),
            host=host,
            tcp_port=port,
            fixed_port=True,
            discovery_port=discovery_port,
            server_id_path=server_id_path,
            mdns=mdns,
        )
    )
    return Advertisement(service)
