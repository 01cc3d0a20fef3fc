"""mDNS / DNS-SD: the second, unauthenticated discovery path (python-zeroconf).

A server advertises ``<name>._ppcp._tcp.local.`` with an SRV record (its TCP
port), A records, and TXT keys::

    id=<32 hex digits>  name=<server name>  v=<versions, comma-separated>
    caps=<capabilities, comma-separated>  dport=<UDP discovery port>

Anyone on the link can forge these records, so a browse result is a hint
(``verified=False``); with a PSK the scanner PINGs the advertised address and
``dport`` by unicast to turn the hint into a verified PONG.  :func:`parse_txt`
treats TXT data as untrusted input: anything malformed drops the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable
from typing import Any

from ppcp.core.errors import PPCPError
from ppcp.discovery.collect import Sighting
from ppcp.discovery.netif import list_interfaces
from ppcp.discovery.wire import SERVER_ID_LEN, ServerIdentity
from ppcp.handshake.messages import (
    MAX_CAPABILITIES,
    MAX_VERSIONS,
    check_name,
    valid_capability,
)
from ppcp.utils.codec import clip_text, decode_text

log = logging.getLogger("ppcp.discovery")

SERVICE_TYPE = "_ppcp._tcp.local."
TXT_VALUE_MAX = 200
REFRESH_INTERVAL = 5.0
RESOLVE_TIMEOUT_MS = 1500
MAX_RESOLVING = 32
MAX_SEEN_NAMES = 256
GOODBYE_TIMEOUT = 2.0


def txt_properties(identity: ServerIdentity, discovery_port: int | None) -> dict[str, str]:
    caps = ""
    for cap in identity.capabilities:
        if len(caps) + len(cap) + 1 > TXT_VALUE_MAX:
            break
        caps = f"{caps},{cap}" if caps else cap
    props = {
        "id": identity.server_id.hex(),
        "name": identity.name,
        "v": ",".join(str(v) for v in identity.versions),
        "caps": caps,
    }
    if discovery_port:
        props["dport"] = str(discovery_port)
    return props


def instance_name(name: str) -> str:
    """A DNS-SD instance label: dots would split it, so they become dashes."""
    return clip_text(name.replace(".", "-"), 63) or "ppcp"


def parse_txt(props: dict[bytes, bytes | None], address: str, port: int) -> Sighting | None:
    """The hint a resolved record gives, or None if any field is malformed."""
    try:
        text = {
            k.decode("ascii"): decode_text(v or b"", "TXT value")
            for k, v in props.items()
            if len(k) <= 16 and len(v or b"") <= 255
        }
        sid = bytes.fromhex(text["id"])
        name = check_name(text["name"])
        versions = tuple(int(v) for v in text.get("v", "").split(",") if v)
        caps = tuple(c for c in text.get("caps", "").split(",") if c)
        dport = int(text["dport"]) if "dport" in text else None
    except (KeyError, ValueError, PPCPError):
        return None
    if len(sid) != SERVER_ID_LEN or not 0 < port <= 0xFFFF:
        return None
    if len(versions) > MAX_VERSIONS or any(not 0 < v < 256 for v in versions):
        return None
    if len(caps) > MAX_CAPABILITIES or not all(valid_capability(c) for c in caps):
        return None
    if dport is not None and not 0 < dport <= 0xFFFF:
        return None
    return Sighting(sid.hex(), name, address, port, versions, caps, False, None, dport)


def advertised_addresses(bind_host: str | None) -> list[str]:
    """The IPv4 addresses to put in A records: all up, non-loopback ones, or the
    one the server is bound to."""
    if bind_host not in (None, "", "0.0.0.0", "::"):
        return [str(bind_host)]
    return sorted(str(a.ip) for i in list_interfaces() if i.up and not i.loopback for a in i.ipv4)


def _zeroconf(bind_host: str | None) -> Any:
    from zeroconf import InterfaceChoice, IPVersion
    from zeroconf.asyncio import AsyncZeroconf

    interfaces: Any = InterfaceChoice.All
    if bind_host not in (None, "", "0.0.0.0", "::"):
        interfaces = [bind_host]
    return AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)


class MdnsAdvertiser:
    """Advertises one server; re-announces when the host's addresses change."""

    def __init__(
        self, identity: ServerIdentity, discovery_port: int | None, bind_host: str | None
    ) -> None:
        self.identity = identity
        self.discovery_port = discovery_port
        self.bind_host = bind_host
        self._zc: Any = None
        self._info: Any = None
        self._addresses: list[str] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._zc = _zeroconf(self.bind_host)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _service_info(self, addresses: list[str]) -> Any:
        from zeroconf.asyncio import AsyncServiceInfo

        sid = self.identity.server_id.hex()
        return AsyncServiceInfo(
            SERVICE_TYPE,
            f"{instance_name(self.identity.name)}.{SERVICE_TYPE}",
            port=self.identity.port,
            properties=txt_properties(self.identity, self.discovery_port),
            server=f"ppcp-{sid[:12]}.local.",
            addresses=[ipaddress.ip_address(a).packed for a in addresses],
        )

    async def _run(self) -> None:
        while True:
            try:
                addresses = advertised_addresses(self.bind_host)
                if addresses != self._addresses:
                    await self._publish(addresses)
            except Exception as exc:  # zeroconf failures must not kill the server
                log.warning("mDNS advertisement failed: %s", exc)
            await asyncio.sleep(REFRESH_INTERVAL)

    async def _publish(self, addresses: list[str]) -> None:
        # A change of address re-registers: simpler than updating in place,
        # because zeroconf may have renamed the instance on a name conflict.
        if self._info is not None:
            await (await self._zc.async_unregister_service(self._info))
            self._info = None
        if addresses:
            info = self._service_info(addresses)
            await (await self._zc.async_register_service(info, allow_name_change=True))
            self._info = info
            log.info("mDNS: advertising %s on %s", info.name, ", ".join(addresses))
        self._addresses = addresses

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._zc is None:
            return
        if self._info is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    await self._zc.async_unregister_service(self._info), GOODBYE_TIMEOUT
                )
        with contextlib.suppress(Exception):
            await self._zc.async_close()
        self._zc = self._info = None


class MdnsBrowser:
    """Browses ``_ppcp._tcp.local.`` and reports each resolved record as a hint."""

    def __init__(self, on_sighting: Callable[[Sighting], None]) -> None:
        self._on_sighting = on_sighting
        self._zc: Any = None
        self._browser: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._seen: set[str] = set()

    async def start(self) -> None:
        from zeroconf.asyncio import AsyncServiceBrowser

        self._zc = _zeroconf(None)
        self._browser = AsyncServiceBrowser(
            self._zc.zeroconf, SERVICE_TYPE, handlers=[self._on_change]
        )

    def _on_change(self, **kwargs: Any) -> None:
        from zeroconf import ServiceStateChange

        name = str(kwargs.get("name", ""))
        if kwargs.get("state_change") is ServiceStateChange.Removed:
            return
        if len(self._tasks) >= MAX_RESOLVING or (
            name not in self._seen and len(self._seen) >= MAX_SEEN_NAMES
        ):
            return
        self._seen.add(name)
        task = asyncio.get_running_loop().create_task(self._resolve(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, name: str) -> None:
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncServiceInfo

        info = AsyncServiceInfo(SERVICE_TYPE, name)
        try:
            if not await info.async_request(self._zc.zeroconf, RESOLVE_TIMEOUT_MS):
                return
        except Exception as exc:
            log.debug("mDNS: cannot resolve %s: %s", name, exc)
            return
        for address in info.parsed_addresses(IPVersion.V4Only):
            hint = parse_txt(dict(info.properties or {}), address, int(info.port or 0))
            if hint is not None:
                self._on_sighting(hint)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._browser is not None:
            with contextlib.suppress(Exception):
                await self._browser.async_cancel()
        if self._zc is not None:
            with contextlib.suppress(Exception):
                await self._zc.async_close()
        self._zc = self._browser = None
