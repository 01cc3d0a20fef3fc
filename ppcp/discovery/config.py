"""Client-side discovery settings.  Every field has a safe default."""

from __future__ import annotations

import os
from pathlib import Path

from msgspec import Struct, field

from ppcp.discovery.collect import RandomSource
from ppcp.discovery.state import default_cache_path
from ppcp.discovery.wire import DEFAULT_PING_SIZE, MAX_DATAGRAM, MIN_PING_SIZE


class DiscoveryConfig(Struct, frozen=True):
    """How a scan looks for servers.

    ``targets`` are ``host[:port]`` strings PINGed by unicast (for networks
    without broadcast); ``cache_path`` is the JSON file of last-known
    addresses (None disables the cache); ``interfaces`` restricts broadcast
    and multicast to the named interfaces.
    """

    broadcast: bool = True
    multicast6: bool = True
    mdns: bool = True
    targets: tuple[str, ...] = ()
    cache_path: Path | None = field(default_factory=default_cache_path)
    interfaces: tuple[str, ...] | None = None
    ping_size: int = DEFAULT_PING_SIZE
    # PING rounds at 0, first_retransmit, then gaps doubling up to max_retransmit_gap.
    first_retransmit: float = 0.1
    max_retransmit_gap: float = 1.0
    # Per TCP connection attempt in find_server().
    connect_timeout: float = 1.0
    # How long find_server() waits for a verified PONG before it tries an
    # unauthenticated mDNS hint (when it has a PSK; without one it never waits).
    mdns_grace: float = 0.5
    rng: RandomSource = os.urandom

    def __post_init__(self) -> None:
        if not MIN_PING_SIZE <= self.ping_size <= MAX_DATAGRAM:
            raise ValueError(f"ping_size must be {MIN_PING_SIZE}..{MAX_DATAGRAM}")
        if self.first_retransmit <= 0 or self.max_retransmit_gap < self.first_retransmit:
            raise ValueError("retransmission gaps must be positive and first <= max")
        if self.connect_timeout <= 0 or self.mdns_grace < 0:
            raise ValueError("connect_timeout must be positive, mdns_grace not negative")
        if isinstance(self.targets, str):
            raise TypeError("targets must be a sequence of 'host[:port]' strings, not a string")
