"""Discovery: find PPCP servers on the LAN (docs/rfc.md section 3).

Two paths, merged by server id:

* PING/PONG over UDP (broadcast, directed broadcast, ``ff02::1``, static
  targets, cached addresses).  PONGs carry an HMAC tag keyed by the PSK and
  bound to the PING's nonce: ``verified=True``.
* mDNS / DNS-SD (``_ppcp._tcp.local.``): unauthenticated hints,
  ``verified=False``.

Either way discovery is only a hint; the handshake is the authentication.

Layout: :mod:`.wire` (codec), :mod:`.abuse` (responder decisions and limits)
and :mod:`.collect` (scanner bookkeeping) are sans-I/O; :mod:`.responder`,
:mod:`.scanner` and :mod:`.mdns` are the asyncio drivers; :mod:`.api` holds
the public calls; :mod:`.netif` and :mod:`.state` the interfaces and files.
"""

from typing import TYPE_CHECKING

from ppcp.utils.lazy import lazy_exports

if TYPE_CHECKING:
    from ppcp.discovery.abuse import ResponderLimits
    from ppcp.discovery.api import aio_discover, aio_find_server, discover, find_server
    from ppcp.discovery.collect import ServerInfo
    from ppcp.discovery.config import DiscoveryConfig
    from ppcp.discovery.mdns import SERVICE_TYPE
    from ppcp.discovery.responder import (
        Advertisement,
        DiscoveryService,
        advertise,
        start_server_discovery,
    )

# Imported on first use: a client finding a server by name never loads the responder.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "ResponderLimits": "ppcp.discovery.abuse",
        "aio_discover": "ppcp.discovery.api",
        "aio_find_server": "ppcp.discovery.api",
        "discover": "ppcp.discovery.api",
        "find_server": "ppcp.discovery.api",
        "ServerInfo": "ppcp.discovery.collect",
        "DiscoveryConfig": "ppcp.discovery.config",
        "SERVICE_TYPE": "ppcp.discovery.mdns",
        "Advertisement": "ppcp.discovery.responder",
        "DiscoveryService": "ppcp.discovery.responder",
        "advertise": "ppcp.discovery.responder",
        "start_server_discovery": "ppcp.discovery.responder",
    },
)

__all__ = [
    "SERVICE_TYPE",
    "Advertisement",
    "DiscoveryConfig",
    "DiscoveryService",
    "ResponderLimits",
    "ServerInfo",
    "advertise",
    "aio_discover",
    "aio_find_server",
    "discover",
    "find_server",
    "start_server_discovery",
]
