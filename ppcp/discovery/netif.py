"""Local interfaces and the addresses a scan sends PINGs to.

Interfaces come from ``ifaddr``; whether one is up, loopback or
broadcast-capable comes from ``/sys/class/net/<name>/flags`` on Linux (other
systems: assumed up and broadcast-capable).  Everything here except
:func:`list_interfaces` is pure.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

from msgspec import Struct

IFF_UP = 0x1
IFF_BROADCAST = 0x2
IFF_LOOPBACK = 0x8
IFF_MULTICAST = 0x1000

LIMITED_BROADCAST = "255.255.255.255"
ALL_NODES = "ff02::1"

SockAddr = tuple[str, int] | tuple[str, int, int, int]


class Interface(Struct, frozen=True):
    name: str
    index: int
    flags: int
    ipv4: tuple[ipaddress.IPv4Interface, ...]
    ipv6_link_local: bool

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)

    @property
    def loopback(self) -> bool:
        return bool(self.flags & IFF_LOOPBACK)


class Destination(Struct, frozen=True):
    """Where one PING goes; ``label`` names it in error messages."""

    label: str
    family: int
    sockaddr: SockAddr


def _sys_flags(name: str) -> int | None:
    try:
        return int(Path("/sys/class/net", name, "flags").read_text().strip(), 16)
    except (OSError, ValueError):
        return None


def list_interfaces() -> list[Interface]:
    # Imported here: ifaddr loads ctypes (and shutil, tempfile...), a tenth of
    # a `ppcp exec NAME --unicast ADDR` start that never lists interfaces.
    import ifaddr

    found = []
    for adapter in ifaddr.get_adapters():
        name = str(adapter.name)
        flags = _sys_flags(name)
        v4, v6_ll = [], False
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                v4.append(ipaddress.IPv4Interface(f"{ip.ip}/{ip.network_prefix}"))
            elif ipaddress.IPv6Address(ip.ip[0]).is_link_local:
                v6_ll = True
        if flags is None:
            loopback = any(i.ip.is_loopback for i in v4)
            flags = IFF_UP | (IFF_LOOPBACK if loopback else IFF_BROADCAST | IFF_MULTICAST)
        index = getattr(adapter, "index", None) or _index(name)
        found.append(Interface(name, index, flags, tuple(v4), v6_ll))
    return found


def _index(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return 0


def _usable(iface: Interface, only: tuple[str, ...] | None) -> bool:
    return iface.up and not iface.loopback and (only is None or iface.name in only)


def broadcast_destinations(
    ifaces: list[Interface], port: int, only: tuple[str, ...] | None = None
) -> list[Destination]:
    """The limited broadcast, then the directed broadcast of every up IPv4 interface.

    The limited broadcast leaves through one interface only (the route to
    255.255.255.255), which is why the directed ones are needed as well.  It
    is skipped when ``only`` restricts the interfaces.
    """
    out: list[Destination] = []
    usable = [i for i in ifaces if _usable(i, only) and i.flags & IFF_BROADCAST and i.ipv4]
    if usable and only is None:
        out.append(
            Destination(
                f"limited broadcast {LIMITED_BROADCAST}", socket.AF_INET, (LIMITED_BROADCAST, port)
            )
        )
    seen = {LIMITED_BROADCAST}
    for iface in usable:
        for addr in iface.ipv4:
            net = addr.network
            if net.prefixlen >= 31:
                continue
            bcast = str(net.broadcast_address)
            if bcast not in seen:
                seen.add(bcast)
                out.append(Destination(f"{iface.name} {bcast}", socket.AF_INET, (bcast, port)))
    return out


def multicast6_destinations(
    ifaces: list[Interface], port: int, only: tuple[str, ...] | None = None
) -> list[Destination]:
    """ff02::1 (all nodes) on every up interface with an IPv6 link-local address."""
    return [
        Destination(f"{i.name} {ALL_NODES}", socket.AF_INET6, (ALL_NODES, port, 0, i.index))
        for i in ifaces
        if _usable(i, only) and i.ipv6_link_local and i.flags & IFF_MULTICAST and i.index
    ]


def parse_target(text: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` -> (host, port)."""
    text = text.strip()
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (len(text) > end + 1 and text[end + 1] != ":"):
            raise ValueError(f"malformed target {text!r}")
        host, port_text = text[1:end], text[end + 2 :]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if not host:
        raise ValueError(f"target {text!r} has no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) <= 0xFFFF:
        raise ValueError(f"target {text!r} has a bad port")
    return host, int(port_text)


def format_host(sockaddr: tuple[object, ...]) -> str:
    """A received address as text; IPv6 link-local keeps its ``%interface`` scope."""
    host = str(sockaddr[0])
    if len(sockaddr) == 4 and sockaddr[3] and "%" not in host:
        scope = int(str(sockaddr[3]))
        try:
            host = f"{host}%{socket.if_indextoname(scope)}"
        except OSError:
            host = f"{host}%{scope}"
    return host


def numeric_sockaddr(host: str, port: int) -> tuple[int, SockAddr] | None:
    """(family, sockaddr) for a numeric address (scoped IPv6 too), else None."""
    try:
        # As bytes: a str host makes getaddrinfo load the IDNA codec (1 ms of a
        # CLI command's start), and a numeric address is ASCII anyway.
        info = socket.getaddrinfo(
            host.encode("ascii"), port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST
        )
    except (OSError, UnicodeError):
        return None
    family, _, _, _, sockaddr = info[0]
    return int(family), sockaddr  # type: ignore[return-value]
