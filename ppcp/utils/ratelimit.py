"""Per-source admission bookkeeping for servers (sans-I/O: the caller passes the time in).

Two small machines, both bounded in memory however many addresses connect:

* :class:`AuthFailureLimiter` counts failed authentications per source address.
  After ``max_failures`` failures within ``window`` seconds the source is
  blocked for ``backoff`` seconds; each further lockout while the source is
  still remembered doubles that, up to ``max_backoff``.  A server refuses a
  blocked source's connections with a RATE_LIMITED alert before reading a
  byte, so an online guesser gets ``max_failures`` guesses per backoff period.
* :class:`SourceCounter` counts concurrent handshakes per source, so one host
  cannot hold every unauthenticated slot (slowloris).

:func:`source_key` turns a socket peer address into the key both use: the IPv4
address, or the /64 prefix of an IPv6 address (a LAN host can pick any address
in its /64 at will, so a finer key would not bind it).
"""

from __future__ import annotations

import collections
import ipaddress
from typing import Any

from msgspec import Struct, field

IPV6_PREFIX = 64


def source_key(peer: Any) -> str:
    """The rate-limiting key of a socket peer address (``peername``)."""
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return "local"
    host = peer[0]
    if ":" not in host:
        # IPv4 as the socket module formats it, already canonical (what
        # str(ip_address(host)) gives); parsing it cost each connection ~3 us.
        return host
    host = host.split("%", 1)[0]  # drop an IPv6 zone id
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, IPV6_PREFIX), strict=False))
    return str(addr)


class _Record(Struct):
    failures: collections.deque[float] = field(default_factory=collections.deque)
    blocked_until: float = 0.0
    strikes: int = 0
    last_failure: float = 0.0


class AuthFailureLimiter:
    """Failed-authentication counter with exponential backoff, per source."""

    def __init__(
        self,
        max_failures: int = 5,
        window: float = 60.0,
        backoff: float = 30.0,
        max_backoff: float = 900.0,
        max_sources: int = 4096,
    ) -> None:
        if max_failures < 1 or window <= 0 or backoff < 0 or max_backoff < backoff:
            raise ValueError("invalid rate-limit settings")
        if max_sources < 1:
            raise ValueError("max_sources must be positive")
        self.max_failures = max_failures
        self.window = window
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_sources = max_sources
        # Least recently touched first: the oldest entry is evicted when full.
        self._records: collections.OrderedDict[str, _Record] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def blocked_for(self, source: str, now: float) -> float:
        """Seconds ``source`` must still wait (0.0: it may connect)."""
        rec = self._records.get(source)
        if rec is None or rec.blocked_until <= now:
            return 0.0
        return rec.blocked_until - now

    def failure(self, source: str, now: float) -> float:
        """Record one failed authentication; return the backoff it started (0.0: none)."""
        rec = self._records.get(source)
        if rec is None:
            rec = self._records[source] = _Record()
            while len(self._records) > self.max_sources:
                self._records.popitem(last=False)
        else:
            self._records.move_to_end(source)
        # A source that stayed quiet for a whole maximum backoff starts afresh.
        if rec.strikes and now - rec.last_failure > self.max_backoff:
            rec.strikes = 0
        rec.last_failure = now
        while rec.failures and now - rec.failures[0] >= self.window:
            rec.failures.popleft()
        rec.failures.append(now)
        if len(rec.failures) < self.max_failures:
            return 0.0
        rec.failures.clear()
        delay = min(self.backoff * float(1 << min(rec.strikes, 32)), self.max_backoff)
        rec.strikes += 1
        rec.blocked_until = max(rec.blocked_until, now + delay)
        return delay

    def success(self, source: str) -> None:
        """A source authenticated: forget its recent failures (not its strikes)."""
        rec = self._records.get(source)
        if rec is not None:
            rec.failures.clear()
            if not rec.strikes:
                del self._records[source]


class SourceCounter:
    """Concurrent handshakes per source, with a per-source cap."""

    def __init__(self, per_source: int) -> None:
        if per_source < 1:
            raise ValueError("per_source must be positive")
        self.per_source = per_source
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def count(self, source: str) -> int:
        return self._counts.get(source, 0)

    def acquire(self, source: str) -> bool:
        """Take a slot for ``source``; False if it already holds ``per_source``."""
        n = self._counts.get(source, 0)
        if n >= self.per_source:
            return False
        self._counts[source] = n + 1
        return True

    def release(self, source: str) -> None:
        n = self._counts.get(source, 0) - 1
        if n > 0:
            self._counts[source] = n
        else:
            self._counts.pop(source, None)
