"""The responder's decision for each datagram, and the limits behind it (sans-I/O).

:class:`ResponderCore` turns ``(datagram, source, now)`` into a PONG or
nothing.  Checks run cheapest first, so garbage costs a length and a prefix
comparison and a well-formed forgery one HMAC::

    size cap -> header -> tag -> replay cache -> per-source and global rate

Only datagrams with a valid tag reach the replay cache and the rate limiter,
so a party without the PSK can neither fill them nor use up another client's
allowance by spoofing its address.  Every table is bounded.
"""

from __future__ import annotations

import collections
import enum

from msgspec import Struct

from ppcp.core.errors import ProtocolError
from ppcp.discovery.wire import MAX_DATAGRAM, BadTag, Ping, Pong, ServerIdentity


class ResponderLimits(Struct, frozen=True):
    """Anti-abuse limits of a responder (RFC draft section "Rate limits")."""

    max_datagram: int = MAX_DATAGRAM
    # PONGs per second to one source address, with a burst allowance.  About
    # 3 PINGs of each round of a scan reach a server (limited and directed
    # broadcast, ff02::1), so a burst of 20 covers a whole 2-second scan.
    per_source_rate: float = 10.0
    per_source_burst: float = 20.0
    # PONGs per second in total, whoever asks.
    global_rate: float = 500.0
    global_burst: float = 100.0
    max_sources: int = 1024
    # A nonce seen within this many seconds is a replay.
    replay_window: float = 60.0
    replay_capacity: int = 4096
    # Linux: drop datagrams that cannot be PINGs in the kernel already
    # (ppcp.discovery.prefilter); the checks here run regardless.
    kernel_filter: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.max_datagram <= MAX_DATAGRAM:
            raise ValueError(f"max_datagram must be 1..{MAX_DATAGRAM}")
        if min(self.per_source_rate, self.per_source_burst, self.global_rate) <= 0:
            raise ValueError("rates and bursts must be positive")
        if self.global_burst < 1 or self.per_source_burst < 1:
            raise ValueError("bursts must allow at least one PONG")
        if self.max_sources < 1 or self.replay_capacity < 1 or self.replay_window <= 0:
            raise ValueError("table sizes and the replay window must be positive")


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; starts full."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = now

    def take(self, now: float) -> bool:
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class RateLimiter:
    """One token bucket per key (source address), at most ``max_keys`` of them.

    The least recently used key is forgotten when the table is full; that key
    then starts again with a full bucket, the price of bounded memory.
    """

    def __init__(self, rate: float, burst: float, max_keys: int) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: str, now: float) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)


class ReplayCache:
    """Remembers nonces for ``window`` seconds, at most ``capacity`` of them."""

    def __init__(self, window: float, capacity: int) -> None:
        self.window = window
        self.capacity = capacity
        self._seen: collections.OrderedDict[bytes, float] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, nonce: bytes, now: float) -> bool:
        """True if ``nonce`` was seen within the window; otherwise remember it."""
        while self._seen:
            oldest, when = next(iter(self._seen.items()))
            if now - when < self.window:
                break
            del self._seen[oldest]
        if nonce in self._seen:
            return True
        self._seen[nonce] = now
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return False


class Verdict(enum.Enum):
    """What the responder did with one datagram."""

    ANSWERED = "answered"
    OVERSIZE = "oversize"
    MALFORMED = "malformed"
    BAD_TAG = "bad_tag"
    REPLAY = "replay"
    RATE_LIMITED = "rate_limited"


class ResponderCore:
    """Decides, for every received datagram, whether to answer and with what.

    ``handle`` never raises: anything that is not a valid PING is counted in
    :attr:`stats` and dropped without a reply.
    """

    def __init__(
        self, key: bytes, identity: ServerIdentity, limits: ResponderLimits | None = None
    ) -> None:
        self._key = key
        self.identity = identity
        self.limits = limits or ResponderLimits()
        lim = self.limits
        self._per_source = RateLimiter(lim.per_source_rate, lim.per_source_burst, lim.max_sources)
        self._global: TokenBucket | None = None
        self._replays = ReplayCache(lim.replay_window, lim.replay_capacity)
        self.stats: collections.Counter[Verdict] = collections.Counter()

    def handle(self, data: bytes, source: str, now: float) -> bytes | None:
        verdict, reply = self._decide(data, source, now)
        self.stats[verdict] += 1
        return reply

    def _decide(self, data: bytes, source: str, now: float) -> tuple[Verdict, bytes | None]:
        if len(data) > self.limits.max_datagram:
            return Verdict.OVERSIZE, None
        try:
            ping = Ping.decode(data, self._key)
        except BadTag:
            return Verdict.BAD_TAG, None
        except ProtocolError:
            return Verdict.MALFORMED, None
        if self._replays.seen(ping.nonce, now):
            return Verdict.REPLAY, None
        if not self._per_source.allow(source, now) or not self._global_allows(now):
            return Verdict.RATE_LIMITED, None
        # The PONG is never larger than the PING (no amplification).
        return Verdict.ANSWERED, Pong(ping.nonce, self.identity).encode(self._key, len(data))

    def _global_allows(self, now: float) -> bool:
        if self._global is None:
            self._global = TokenBucket(self.limits.global_rate, self.limits.global_burst, now)
        return self._global.take(now)
