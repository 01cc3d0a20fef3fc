"""Server admission limits: what an unauthenticated peer can make a server spend.

Per-session limits (frame, message, window, channel counts) live with the
code that enforces them and are gathered in :class:`~ppcp.core.config.SessionConfig`;
docs/security.md's "Limits" table lists every limit, its default and where
it is enforced.  These are the ones that span connections, so they belong to
the :class:`~ppcp.aio.Server`::

    server = await ppcp.aio.serve(host, port, psk, limits=ServerLimits(auth_failures=3))
"""

from __future__ import annotations

from msgspec import Struct

from ppcp.core.config import DEFAULT_MAX_UNAUTHENTICATED

DEFAULT_MAX_UNAUTHENTICATED_PER_SOURCE = 8
DEFAULT_AUTH_FAILURES = 5
DEFAULT_AUTH_FAILURE_WINDOW = 60.0
DEFAULT_AUTH_BACKOFF = 30.0
DEFAULT_AUTH_BACKOFF_MAX = 900.0
DEFAULT_MAX_TRACKED_SOURCES = 4096


class ServerLimits(Struct, frozen=True):
    """Connection admission limits of one server.  Every default is safe for a LAN.

    * ``max_unauthenticated``: handshakes in progress at once; past it a new
      connection gets SERVER_BUSY.
    * ``max_unauthenticated_per_source``: the same, per source address (IPv6:
      per /64), so a single host cannot take every slot.
    * ``auth_failures`` failed authentications from one source within
      ``auth_failure_window`` seconds block it for ``auth_backoff`` seconds
      (doubling per repeated lockout, at most ``auth_backoff_max``): its
      connections get RATE_LIMITED until then.
    * ``max_tracked_sources``: how many sources the failure counter remembers
      (least recently seen forgotten first): its memory bound.
    """

    max_unauthenticated: int = DEFAULT_MAX_UNAUTHENTICATED
    max_unauthenticated_per_source: int = DEFAULT_MAX_UNAUTHENTICATED_PER_SOURCE
    auth_failures: int = DEFAULT_AUTH_FAILURES
    auth_failure_window: float = DEFAULT_AUTH_FAILURE_WINDOW
    auth_backoff: float = DEFAULT_AUTH_BACKOFF
    auth_backoff_max: float = DEFAULT_AUTH_BACKOFF_MAX
    max_tracked_sources: int = DEFAULT_MAX_TRACKED_SOURCES

    def __post_init__(self) -> None:
        if self.max_unauthenticated < 1 or self.max_unauthenticated_per_source < 1:
            raise ValueError("handshake caps must be positive")
        if self.auth_failures < 1 or self.auth_failure_window <= 0:
            raise ValueError("auth_failures and auth_failure_window must be positive")
        if not 0 <= self.auth_backoff <= self.auth_backoff_max:
            raise ValueError("need 0 <= auth_backoff <= auth_backoff_max")
        if self.max_tracked_sources < 1:
            raise ValueError("max_tracked_sources must be positive")
