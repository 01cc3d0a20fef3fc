"""find_server() and discover(): the public discovery calls, asyncio and blocking.

The blocking functions run the asyncio ones on the shared PPCP loop thread
(:func:`ppcp.transport.blocking.run`), exactly like the session API.  They
import it when called: ``ppcp.transport.blocking`` imports ``ppcp.aio``,
which imports this package, so a module-level import would be circular.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence

from ppcp.core.config import DEFAULT_PORT
from ppcp.crypto.psk import derive_psk_key
from ppcp.discovery.collect import ServerInfo, Sighting
from ppcp.discovery.config import DiscoveryConfig
from ppcp.discovery.netif import numeric_sockaddr
from ppcp.discovery.scanner import Scan
from ppcp.discovery.wire import discovery_key
from ppcp.handshake.machine import PROTOCOL_VERSIONS
from ppcp.transport.aio_driver import set_nodelay

DEFAULT_DISCOVER_TIMEOUT = 1.0
DEFAULT_FIND_TIMEOUT = 2.0


def _scan(
    psk: bytes | str | None, config: DiscoveryConfig | None, port: int, targets: Sequence[str]
) -> Scan:
    cfg = config or DiscoveryConfig()
    if isinstance(targets, str):
        raise TypeError("targets must be a sequence of 'host[:port]' strings, not a string")
    key = discovery_key(derive_psk_key(psk)) if psk is not None else None
    if key is None and not cfg.mdns:
        raise ValueError("discovery needs a PSK (for PINGs) or mDNS enabled")
    return Scan(key, cfg, port, tuple(targets))


def _wanted(sighting: Sighting | ServerInfo, name: str | None) -> bool:
    if name is not None and sighting.name.casefold() != name.casefold():
        return False
    # No common protocol version: the handshake would fail anyway.
    return not sighting.versions or bool(set(sighting.versions) & set(PROTOCOL_VERSIONS))


async def aio_discover(
    port: int = DEFAULT_PORT,
    timeout: float = DEFAULT_DISCOVER_TIMEOUT,
    psk: bytes | str | None = None,
    *,
    name: str | None = None,
    limit: int | None = None,
    targets: Sequence[str] = (),
    config: DiscoveryConfig | None = None,
) -> list[ServerInfo]:
    """Every server that answers within ``timeout`` seconds (or the first ``limit``).

    Verified servers (PONG tag checked with ``psk``) come first, by
    round-trip time; mDNS-only hints follow with ``verified=False``.  Without
    ``psk`` only mDNS is used.  Raises DiscoveryError if nothing answered.
    """
    scan = _scan(psk, config, port, targets)
    loop = asyncio.get_running_loop()
    try:
        await scan.start()
        deadline = scan.started + timeout
        found: set[str] = set()
        while limit is None or len(found) < limit:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                sighting = await asyncio.wait_for(scan.updates.get(), remaining)
            except TimeoutError:
                break
            # With a PSK only verified servers count towards the limit.
            if _wanted(sighting, name) and (sighting.verified or scan.tracker is None):
                found.add(sighting.id)
    finally:
        await scan.aclose()
    results = [info for info in scan.results() if _wanted(info, name)]
    if not results:
        raise scan.failure(timeout, name)
    scan.save_cache()
    return results


async def aio_find_server(
    port: int = DEFAULT_PORT,
    name: str | None = None,
    timeout: float = DEFAULT_FIND_TIMEOUT,
    psk: bytes | str | None = None,
    *,
    targets: Sequence[str] = (),
    config: DiscoveryConfig | None = None,
) -> socket.socket:
    """A TCP socket connected to the first server that answers (named ``name``, if given).

    Returns as soon as a matching verified PONG arrives and the connection is
    made; hand the socket to ``client_connect(sock, psk)``.  With ``psk``, an
    unauthenticated mDNS hint is only tried after ``config.mdns_grace``
    seconds without a verified answer.  Raises DiscoveryError if no server
    could be reached.
    """
    scan = _scan(psk, config, port, targets)
    cfg = scan.config
    loop = asyncio.get_running_loop()
    failures: list[str] = []
    try:
        await scan.start()
        deadline = scan.started + timeout
        grace_end = scan.started + (cfg.mdns_grace if scan.tracker is not None else 0.0)
        deferred: list[Sighting] = []
        tried: set[tuple[str, int]] = set()
        while (now := loop.time()) < deadline:
            if deferred and now >= grace_end:
                candidate: Sighting = deferred.pop(0)
            else:
                wake = min(deadline, grace_end) if deferred else deadline
                try:
                    candidate = await asyncio.wait_for(scan.updates.get(), wake - now)
                except TimeoutError:
                    continue
                if not _wanted(candidate, name):
                    continue
                if not candidate.verified and loop.time() < grace_end:
                    deferred.append(candidate)
                    continue
            info = scan.collector.get(candidate.id)
            if info is not None and info.verified and not candidate.verified:
                continue  # a verified PONG for this server arrived meanwhile
            if (candidate.address, candidate.port) in tried:
                continue
            tried.add((candidate.address, candidate.port))
            budget = min(cfg.connect_timeout, max(0.05, deadline - loop.time()))
            sock = await _connect(candidate.address, candidate.port, budget, failures)
            if sock is not None:
                scan.save_cache()
                return sock
    finally:
        await scan.aclose()
    raise scan.failure(timeout, name, tuple(failures))


async def _connect(
    host: str, port: int, timeout: float, failures: list[str]
) -> socket.socket | None:
    target = numeric_sockaddr(host, port)
    if target is None:
        failures.append(f"connect {host}:{port}: not a numeric address")
        return None
    family, sockaddr = target
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        set_nodelay(sock)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, sockaddr), timeout)
    except (OSError, TimeoutError) as exc:
        sock.close()
        reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        failures.append(f"connect {host} TCP {port}: {reason}")
        return None
    except BaseException:
        sock.close()
        raise
    return sock


def discover(
    port: int = DEFAULT_PORT,
    timeout: float = DEFAULT_DISCOVER_TIMEOUT,
    psk: bytes | str | None = None,
    *,
    name: str | None = None,
    limit: int | None = None,
    targets: Sequence[str] = (),
    config: DiscoveryConfig | None = None,
) -> list[ServerInfo]:
    """Blocking :func:`aio_discover`."""
    from ppcp.transport.blocking import run

    return run(
        aio_discover(port, timeout, psk, name=name, limit=limit, targets=targets, config=config)
    )


def find_server(
    port: int = DEFAULT_PORT,
    name: str | None = None,
    timeout: float = DEFAULT_FIND_TIMEOUT,
    psk: bytes | str | None = None,
    *,
    targets: Sequence[str] = (),
    config: DiscoveryConfig | None = None,
) -> socket.socket:
    """Blocking :func:`aio_find_server`: a connected (blocking-mode) TCP socket::

    sock = ppcp.find_server(name="kitchen-pi", psk=psk)
    session = ppcp.client_connect(sock, psk)
    """
    from ppcp.transport.blocking import run

    sock = run(aio_find_server(port, name, timeout, psk, targets=targets, config=config))
    sock.setblocking(True)
    return sock
