"""The scanner's bookkeeping (sans-I/O): PINGs in flight, PONG checks, merged results.

:class:`PingTracker` mints one PING per datagram sent (a fresh nonce each
time, so retransmissions and the several broadcast paths are told apart and
each PONG gives a true round-trip time) and accepts a PONG only if

* it is at most :data:`~ppcp.discovery.wire.MAX_DATAGRAM` bytes and no larger
  than the PING it answers (a server that amplifies is broken or hostile),
* its tag verifies under our PSK (other PSK groups and forgeries fail),
* its nonce is one we sent in this scan (a PONG recorded earlier fails),
* it is the first one for this (nonce, server id) (a copy replayed from
  another address during the scan fails).

:class:`Collector` merges accepted PONGs and unauthenticated mDNS hints by
server id into :class:`ServerInfo` values, preferring verified data.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterator

from msgspec import Struct

from ppcp.core.errors import ProtocolError
from ppcp.discovery.wire import (
    DEFAULT_PING_SIZE,
    MAX_DATAGRAM,
    NONCE_LEN,
    BadTag,
    Ping,
    Pong,
)

RandomSource = Callable[[int], bytes]

MAX_SERVERS = 256
MAX_ADDRESSES = 16


class ServerInfo(Struct, frozen=True):
    """A server found by discovery.

    ``verified`` is True when the data came from a PONG whose tag proves the
    server holds our PSK; False for an mDNS hint, which anyone on the link can
    forge.  Either way the handshake is the real authentication.  ``rtt`` is
    the shortest PING/PONG round trip in seconds (None for mDNS hints).
    """

    name: str
    id: str
    addresses: tuple[str, ...]
    port: int
    rtt: float | None
    capabilities: tuple[str, ...]
    versions: tuple[int, ...]
    verified: bool


class Sighting(Struct, frozen=True):
    """One accepted answer: a PONG, or a resolved mDNS record."""

    id: str
    name: str
    address: str
    port: int
    versions: tuple[int, ...]
    capabilities: tuple[str, ...]
    verified: bool
    rtt: float | None = None
    # The UDP port that answered (PONG) or was advertised (mDNS TXT "dport").
    discovery_port: int | None = None

    @classmethod
    def from_pong(cls, pong: Pong, source: tuple[str, int], rtt: float) -> Sighting:
        s = pong.server
        return cls(
            s.server_id.hex(),
            s.name,
            source[0],
            s.port,
            s.versions,
            s.capabilities,
            True,
            rtt,
            source[1],
        )


class PingTracker:
    """PINGs sent in one scan and the checks every PONG must pass."""

    def __init__(
        self,
        key: bytes,
        *,
        ping_size: int = DEFAULT_PING_SIZE,
        rng: RandomSource = os.urandom,
        max_outstanding: int = 4096,
    ) -> None:
        self._key = key
        self.ping_size = ping_size
        self._rng = rng
        self._max_outstanding = max_outstanding
        self._sent: collections.OrderedDict[bytes, float] = collections.OrderedDict()
        self._answered: set[tuple[bytes, bytes]] = set()
        self.dropped: collections.Counter[str] = collections.Counter()

    def ping(self, now: float) -> bytes:
        """A new PING datagram, remembered as sent at ``now``."""
        nonce = self._rng(NONCE_LEN)
        self._sent[nonce] = now
        if len(self._sent) > self._max_outstanding:
            self._sent.popitem(last=False)
        return Ping(nonce, self.ping_size).encode(self._key)

    def receive(self, data: bytes, source: tuple[str, int], now: float) -> Sighting | None:
        """The sighting a datagram proves, or None (counted in :attr:`dropped`)."""
        if len(data) > min(MAX_DATAGRAM, self.ping_size):
            self.dropped["oversize"] += 1
            return None
        try:
            pong = Pong.decode(data, self._key)
        except BadTag:
            self.dropped["bad_tag"] += 1
            return None
        except ProtocolError:
            self.dropped["malformed"] += 1
            return None
        sent_at = self._sent.get(pong.nonce)
        if sent_at is None:
            self.dropped["unknown_nonce"] += 1
            return None
        answer = (pong.nonce, pong.server.server_id)
        if answer in self._answered:
            self.dropped["duplicate"] += 1
            return None
        if len(self._answered) >= MAX_SERVERS * self._max_outstanding:
            self.dropped["overflow"] += 1
            return None
        self._answered.add(answer)
        return Sighting.from_pong(pong, source, max(0.0, now - sent_at))


class Collector:
    """Merges sightings by server id; verified PONG data wins over mDNS hints.

    At most ``max_servers`` ids are kept (anyone can publish mDNS records).
    """

    def __init__(self, max_servers: int = MAX_SERVERS) -> None:
        self.max_servers = max_servers
        self._servers: dict[str, ServerInfo] = {}
        self.discovery_ports: dict[tuple[str, str], int] = {}

    def __len__(self) -> int:
        return len(self._servers)

    def get(self, server_id: str) -> ServerInfo | None:
        return self._servers.get(server_id)

    def add(self, s: Sighting) -> ServerInfo | None:
        """Merge ``s``; return the server's updated info, or None if ``s`` added nothing."""
        old = self._servers.get(s.id)
        if old is not None and old.verified and not s.verified:
            return None  # never mix unauthenticated data into a verified entry
        if old is None or old.verified != s.verified:
            if old is None and len(self._servers) >= self.max_servers:
                return None
            addresses: tuple[str, ...] = (s.address,)
            rtt = s.rtt
        else:
            if s.address in old.addresses:
                addresses = old.addresses
            elif len(old.addresses) < MAX_ADDRESSES:
                addresses = (*old.addresses, s.address)
            else:
                return None
            rtt = s.rtt if old.rtt is None else old.rtt if s.rtt is None else min(old.rtt, s.rtt)
        if s.discovery_port is not None:
            self.discovery_ports[(s.id, s.address)] = s.discovery_port
        new = ServerInfo(
            s.name, s.id, addresses, s.port, rtt, s.capabilities, s.versions, s.verified
        )
        if new == old:
            return None
        self._servers[s.id] = new
        return new

    def results(self) -> list[ServerInfo]:
        """Verified servers first, then by round-trip time, then by name."""
        return sorted(
            self._servers.values(),
            key=lambda i: (not i.verified, i.rtt if i.rtt is not None else float("inf"), i.name),
        )


def retransmit_offsets(first: float, cap: float) -> Iterator[float]:
    """Seconds after the start at which to send each PING round: 0, then the
    gaps double from ``first`` up to ``cap`` (0, .1, .3, .7, 1.5, 2.5, ...)."""
    t, gap = 0.0, first
    while True:
        yield t
        t += gap
        gap = min(gap * 2, cap)
