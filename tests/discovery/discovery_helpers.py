"""Shared helpers for the discovery tests (loopback only)."""

from __future__ import annotations

import asyncio
import os

from ppcp.discovery import DiscoveryConfig
from ppcp.discovery.wire import ServerIdentity

# Host tests PING loopback targets only: no broadcast, multicast, mDNS or cache.
LOOPBACK = DiscoveryConfig(broadcast=False, multicast6=False, mdns=False, cache_path=None)


def make_identity(
    name: str = "alpha",
    port: int = 4242,
    caps: tuple[str, ...] = ("msg",),
    server_id: bytes | None = None,
) -> ServerIdentity:
    return ServerIdentity(server_id or os.urandom(16), name, port, (1,), caps)


def target(port: int) -> list[str]:
    return [f"127.0.0.1:{port}"]


class UdpPeer(asyncio.DatagramProtocol):
    """A bare UDP socket on 127.0.0.1 that records what it receives."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self.arrived = asyncio.Event()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append((data, addr))
        self.arrived.set()

    @classmethod
    async def open(cls, host: str = "127.0.0.1") -> UdpPeer:
        loop = asyncio.get_running_loop()
        _, peer = await loop.create_datagram_endpoint(cls, local_addr=(host, 0))
        return peer

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def send(self, data: bytes, port: int) -> None:
        assert self.transport is not None
        self.transport.sendto(data, ("127.0.0.1", port))

    async def exchange(
        self, datagrams: list[bytes], port: int, expect: int, wait: float = 0.3
    ) -> list[bytes]:
        """Send ``datagrams`` to ``port``; the replies received once ``expect`` have
        arrived, or after ``wait`` seconds of silence."""
        start = len(self.received)
        for data in datagrams:
            self.send(data, port)
        while len(self.received) - start < expect:
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), wait)
            except TimeoutError:
                break
        return [data for data, _ in self.received[start:]]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
