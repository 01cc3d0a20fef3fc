"""Responder and scanner over real UDP sockets on loopback (static targets only)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest
from discovery_helpers import LOOPBACK, UdpPeer, make_identity, target

import ppcp
import ppcp.aio
from ppcp.crypto.psk import derive_psk_key
from ppcp.discovery import (
    DiscoveryService,
    ResponderLimits,
    advertise,
    aio_discover,
    aio_find_server,
)
from ppcp.discovery.abuse import Verdict
from ppcp.discovery.wire import MAX_DATAGRAM, Ping, Pong, compute_tag, discovery_key


async def echo(session: ppcp.aio.AsyncSession) -> None:
    async for message in session:
        await session.send(b"echo:" + message)


@pytest.fixture
async def server(psk: str) -> AsyncIterator[ppcp.aio.Server]:
    srv = await ppcp.aio.serve(
        "127.0.0.1", 0, psk, echo, config=ppcp.SessionConfig(name="alpha"), discovery_port=0
    )
    yield srv
    await srv.aclose()


async def test_discover_via_static_target(responder: DiscoveryService, psk: str) -> None:
    found = await aio_discover(
        responder.port, 1.0, psk, targets=target(responder.port), config=LOOPBACK, limit=1
    )
    [info] = found
    assert info.verified
    assert (info.name, info.id, info.port) == ("alpha", responder.server_id, 4242)
    assert info.addresses == ("127.0.0.1",)
    assert info.capabilities == ("msg",) and info.versions == (1,)
    assert info.rtt is not None and 0 < info.rtt < 0.5


async def test_wrong_psk_finds_nothing_and_says_why(responder: DiscoveryService) -> None:
    with pytest.raises(ppcp.DiscoveryError) as err:
        await aio_discover(
            responder.port,
            0.3,
            ppcp.generate_psk(),
            targets=target(responder.port),
            config=LOOPBACK,
        )
    text = str(err.value)
    assert f"target 127.0.0.1 UDP {responder.port}" in text
    for cause in ("firewall", f"UDP port {responder.port}", "isolation", "different PSK"):
        assert cause in text
    # The responder saw the PINGs, could not verify them, and stayed silent.
    assert responder.responder.stats[Verdict.BAD_TAG] >= 1
    assert Verdict.ANSWERED not in responder.responder.stats


async def test_find_server_then_handshake(server: ppcp.aio.Server, psk: str) -> None:
    assert server.discovery is not None
    udp = server.discovery.port
    sock = await aio_find_server(udp, "alpha", 2.0, psk, targets=target(udp), config=LOOPBACK)
    assert sock.getpeername() == ("127.0.0.1", server.port)
    session = await ppcp.aio.client_connect(sock, psk)
    try:
        await session.send(b"hi")
        assert await asyncio.wait_for(session.recv(), 5) == b"echo:hi"
        assert session.server_name == "alpha"
    finally:
        await session.close()


async def test_find_server_by_name_and_returns_at_once(psk: str) -> None:
    key = derive_psk_key(psk)
    listener = socket.create_server(("127.0.0.1", 0))
    services = [
        await DiscoveryService.start(
            key, make_identity(name, port), host="127.0.0.1", port=0, mdns=False
        )
        for name, port in (("alpha", 1111), ("beta", listener.getsockname()[1]))
    ]
    try:
        targets = [t for s in services for t in target(s.port)]
        started = time.perf_counter()
        sock = await aio_find_server(9, "BETA", 10.0, psk, targets=targets, config=LOOPBACK)
        elapsed = time.perf_counter() - started
        sock.close()
        assert sock.family == socket.AF_INET
        assert elapsed < 1.0, "find_server must return at the first matching PONG"
        # Unknown name: the error lists who did answer.
        with pytest.raises(ppcp.DiscoveryError, match=r"'alpha' at 127\.0\.0\.1"):
            await aio_find_server(9, "gamma", 0.3, psk, targets=targets, config=LOOPBACK)
    finally:
        listener.close()
        for s in services:
            await s.aclose()


async def test_unreachable_tcp_port_is_reported(psk: str) -> None:
    """The PONG names a TCP port where nothing listens: the error says so."""
    probe = socket.create_server(("127.0.0.1", 0))
    closed = probe.getsockname()[1]
    probe.close()
    service = await DiscoveryService.start(
        derive_psk_key(psk), make_identity("alpha", closed), host="127.0.0.1", port=0, mdns=False
    )
    try:
        with pytest.raises(ppcp.DiscoveryError, match=f"connect 127.0.0.1 TCP {closed}"):
            await aio_find_server(
                service.port, None, 0.5, psk, targets=target(service.port), config=LOOPBACK
            )
    finally:
        await service.aclose()


def test_blocking_api(psk: str, tmp_path: Path) -> None:
    listener = ppcp.create_tcp_server("127.0.0.1", 0)
    tcp_port = listener.getsockname()[1]
    results: list[bytes] = []

    def serve_one() -> None:
        conn, _ = listener.accept()
        with ppcp.server_accept(conn, psk) as session:
            results.append(session.recv(5))
            session.send(b"pong")

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    with advertise(
        psk,
        tcp_port,
        config=ppcp.SessionConfig(name="blocky"),
        discovery_port=0,
        host="127.0.0.1",
        server_id_path=tmp_path / "id",
    ) as ad:
        assert ad.server_id == (tmp_path / "id").read_text().strip()
        [info] = ppcp.discover(ad.port, 1.0, psk, targets=target(ad.port), config=LOOPBACK, limit=1)
        assert info.name == "blocky" and info.port == tcp_port
        sock = ppcp.find_server(
            ad.port, "blocky", 2.0, psk, targets=target(ad.port), config=LOOPBACK
        )
        assert sock.getblocking()
        with ppcp.client_connect(sock, psk) as session:
            session.send(b"ping")
            assert session.recv(5) == b"pong"
    thread.join(5)
    listener.close()
    assert results == [b"ping"]


class FakeServer(asyncio.DatagramProtocol):
    """Answers each PING with whatever ``respond(ping) -> [datagrams]`` returns."""

    def __init__(self, respond: Callable[[bytes], list[bytes]]) -> None:
        self.respond = respond
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        for reply in self.respond(data):
            self.transport.sendto(reply, addr)

    @classmethod
    async def start(cls, respond: Callable[[bytes], list[bytes]]) -> tuple[FakeServer, int]:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(
            lambda: cls(respond), local_addr=("127.0.0.1", 0)
        )
        return proto, transport.get_extra_info("sockname")[1]


async def test_spoofed_replayed_and_malformed_pongs_are_ignored(psk: str) -> None:
    key = discovery_key(derive_psk_key(psk))
    wrong = discovery_key(derive_psk_key(ppcp.generate_psk()))
    ident = make_identity("mallory")
    old_nonce = os.urandom(16)
    recorded = Pong(old_nonce, ident).encode(key)  # a genuine PONG to an older PING

    def respond(ping: bytes) -> list[bytes]:
        nonce = ping[8:24]
        return [
            Pong(nonce, ident).encode(wrong),  # spoofed: no key
            recorded,  # replayed from an earlier scan
            b"PPCP\x01\x02 too short",  # malformed
            b"\x00" * (MAX_DATAGRAM + 100),  # oversize
        ]

    fake, port = await FakeServer.start(respond)
    try:
        with pytest.raises(ppcp.DiscoveryError) as err:
            await aio_discover(port, 0.25, psk, targets=target(port), config=LOOPBACK)
        text = str(err.value)
        for reason in ("bad_tag", "unknown_nonce", "malformed", "oversize"):
            assert reason in text
    finally:
        assert fake.transport is not None
        fake.transport.close()


async def test_a_pong_replayed_during_the_scan_counts_once(psk: str) -> None:
    key = discovery_key(derive_psk_key(psk))
    ident = make_identity("alpha")
    seen: list[bytes] = []

    def respond(ping: bytes) -> list[bytes]:
        pong = Pong(ping[8:24], ident).encode(key, len(ping))
        seen.append(pong)
        return [pong, pong]  # the copy stands for an attacker replaying it at once

    fake, port = await FakeServer.start(respond)
    try:
        [info] = await aio_discover(port, 0.15, psk, targets=target(port), config=LOOPBACK)
        assert info.verified and info.name == "alpha"
    finally:
        assert fake.transport is not None
        fake.transport.close()


async def barrier(peer: UdpPeer, port: int, key: bytes) -> list[bytes]:
    """What ``peer`` received once the responder has handled everything sent so far.

    A valid PING from another address (127.0.0.2: its own rate-limit bucket)
    is answered only after every datagram queued before it; it is resent
    every 50 ms, like the scanner does, in case a full socket buffer dropped it.
    """
    other = await UdpPeer.open("127.0.0.2")
    try:
        for _ in range(40):
            if await other.exchange([Ping(os.urandom(16)).encode(key)], port, expect=1, wait=0.05):
                break
        else:
            raise AssertionError("the responder stopped answering valid PINGs")
    finally:
        other.close()
    return [data for data, _ in peer.received]


async def test_rate_limit_per_source(psk: str) -> None:
    key = discovery_key(derive_psk_key(psk))
    service = await DiscoveryService.start(
        derive_psk_key(psk),
        make_identity(),
        host="127.0.0.1",
        port=0,
        mdns=False,
        limits=ResponderLimits(per_source_rate=0.01, per_source_burst=3),
    )
    peer = await UdpPeer.open()
    try:
        for _ in range(10):
            peer.send(Ping(os.urandom(16)).encode(key), service.port)
        replies = await barrier(peer, service.port, key)
        assert len(replies) == 3
        assert service.responder.stats[Verdict.RATE_LIMITED] == 7
    finally:
        peer.close()
        await service.aclose()


async def test_oversize_garbage_and_replays_get_no_reply(
    responder: DiscoveryService, psk: str
) -> None:
    key = discovery_key(derive_psk_key(psk))
    body = b"PPCP\x01\x01\x00\x00" + os.urandom(16) + bytes(MAX_DATAGRAM)
    oversize = body + compute_tag(key, body)  # authentic, but too large
    valid = Ping(os.urandom(16)).encode(key)
    peer = await UdpPeer.open()
    try:
        # (asyncio does not send empty datagrams, so b"" is not among them)
        for data in (oversize, b"PPCP", os.urandom(500), valid, valid):
            peer.send(data, responder.port)
        replies = await barrier(peer, responder.port, key)
        assert [Pong.decode(r, key).nonce for r in replies] == [valid[8:24]]
        stats = responder.responder.stats
        assert stats[Verdict.OVERSIZE] == 1 and stats[Verdict.REPLAY] == 1
        assert stats[Verdict.MALFORMED] == 2
    finally:
        peer.close()


async def test_garbage_flood_then_valid_ping(responder: DiscoveryService, psk: str) -> None:
    key = discovery_key(derive_psk_key(psk))
    peer = await UdpPeer.open()
    try:
        for i in range(2000):
            peer.send(os.urandom(i % 1400), responder.port)
        started = time.perf_counter()
        await barrier(peer, responder.port, key)
        assert time.perf_counter() - started < 1.0
        assert peer.received == []
    finally:
        peer.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pre-filter is Linux-only")
async def test_kernel_prefilter_drops_garbage_before_python(psk: str) -> None:
    key = discovery_key(derive_psk_key(psk))
    service = await DiscoveryService.start(
        derive_psk_key(psk), make_identity(), host="127.0.0.1", port=0, mdns=False
    )
    peer = await UdpPeer.open()
    try:
        ping = Ping(os.urandom(16)).encode(key)
        garbage = [os.urandom(300), ping[:191], ping + bytes(900), b"XPCP" + ping[4:]]
        forged = Ping(os.urandom(16)).encode(discovery_key(bytes(32)))  # PING-shaped: passes
        for data in [*garbage, forged, ping]:
            peer.send(data, service.port)
        replies = await barrier(peer, service.port, key)
        assert [Pong.decode(r, key).nonce for r in replies] == [ping[8:24]]
        stats = service.responder.stats
        assert stats == {Verdict.BAD_TAG: 1, Verdict.ANSWERED: 2}, "garbage reached Python"
    finally:
        peer.close()
        await service.aclose()


async def test_ipv6_loopback_target(psk: str) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    service = await DiscoveryService.start(
        derive_psk_key(psk), make_identity("six"), host="0.0.0.0", port=0, mdns=False
    )
    try:
        if len(service.responder._socks) < 2:
            pytest.skip("IPv6 is not available on this host")
        [info] = await aio_discover(
            service.port, 1.0, psk, targets=[f"[::1]:{service.port}"], config=LOOPBACK, limit=1
        )
        assert info.addresses == ("::1",)
    finally:
        await service.aclose()


async def test_serve_starts_and_stops_discovery(psk: str, tmp_path: Path) -> None:
    id_path = tmp_path / "server.id"
    srv = await ppcp.aio.serve("127.0.0.1", 0, psk, echo, discovery_port=0, server_id_path=id_path)
    assert srv.discovery is not None and srv.discovery.advertiser is None  # loopback: no mDNS
    first_id, udp = srv.discovery.server_id, srv.discovery.port
    assert id_path.read_text().strip() == first_id
    [info] = await aio_discover(udp, 1.0, psk, targets=target(udp), config=LOOPBACK, limit=1)
    assert info.port == srv.port
    await srv.aclose()
    assert srv.discovery is None
    with pytest.raises(ppcp.DiscoveryError):
        await aio_discover(udp, 0.2, psk, targets=target(udp), config=LOOPBACK)
    # Same id after a restart.
    again = await ppcp.aio.serve(
        "127.0.0.1", 0, psk, echo, discovery_port=0, server_id_path=id_path
    )
    assert again.discovery is not None and again.discovery.server_id == first_id
    await again.aclose()
    off = await ppcp.aio.serve("127.0.0.1", 0, psk, echo, discovery=False)
    assert off.discovery is None
    await off.aclose()


async def test_serve_fails_cleanly_when_the_udp_port_is_taken(psk: str) -> None:
    import errno

    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("0.0.0.0", 0))
    port = taken.getsockname()[1]
    try:
        with pytest.raises(ppcp.aio.ListenError) as info:
            await ppcp.aio.serve("127.0.0.1", 0, psk, echo, discovery_port=port)
    finally:
        taken.close()
    # Still the OSError it was, and it says which of the server's two ports failed.
    assert isinstance(info.value, OSError) and info.value.errno == errno.EADDRINUSE
    assert (info.value.what, info.value.port) == ("UDP", port)
    assert str(info.value) == f"cannot listen on UDP 0.0.0.0:{port}: Address already in use"


async def test_serve_names_the_tcp_port_it_cannot_listen_on(psk: str) -> None:
    import errno

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ppcp.aio.ListenError) as info:
            await ppcp.aio.serve("127.0.0.1", port, psk, echo, discovery=False)
    assert info.value.errno == errno.EADDRINUSE
    assert (info.value.what, info.value.host, info.value.port) == ("TCP", "127.0.0.1", port)
    assert info.value.strerror == "Address already in use"  # the reason alone, once


async def test_ephemeral_servers_write_no_state(psk: str, tmp_path: Path) -> None:
    srv = await ppcp.aio.serve("127.0.0.1", 0, psk, echo, discovery_port=0)
    await srv.aclose()
    assert not (tmp_path / "xdg-state").exists()


async def test_cached_addresses_are_tried_without_targets(
    responder: DiscoveryService, psk: str, tmp_path: Path
) -> None:
    cfg = msgspec.structs.replace(LOOPBACK, cache_path=tmp_path / "cache.json")
    await aio_discover(
        responder.port, 1.0, psk, targets=target(responder.port), config=cfg, limit=1
    )
    assert responder.server_id in (tmp_path / "cache.json").read_text()
    [info] = await aio_discover(9, 1.0, psk, config=cfg, limit=1)  # no target, wrong port
    assert info.id == responder.server_id


async def test_no_psk_and_no_mdns_is_a_usage_error() -> None:
    with pytest.raises(ValueError, match="PSK"):
        await aio_discover(9000, 0.1, None, config=LOOPBACK)
    with pytest.raises(TypeError):
        await aio_discover(9000, 0.1, "k" * 30, targets="127.0.0.1", config=LOOPBACK)


async def test_aio_reexports() -> None:
    assert ppcp.aio.find_server is aio_find_server
    assert ppcp.aio.discover is aio_discover
    assert {"find_server", "discover"} <= set(ppcp.__all__) & set(ppcp.aio.__all__)


def test_a_client_scanning_by_address_loads_neither_the_responder_nor_ifaddr() -> None:
    # A unicast scan lists no interfaces; ifaddr (ctypes...) and the responder
    # are only loaded by broadcast scans and servers.  A tenth of `ppcp exec NAME`.
    code = (
        "import sys\n"
        "from ppcp.discovery import find_server, DiscoveryConfig\n"
        "import ppcp.discovery.scanner\n"
        "loaded = [m for m in ('ifaddr', 'ppcp.discovery.responder', 'ppcp.discovery.abuse')"
        " if m in sys.modules]\n"
        "from ppcp.discovery.netif import list_interfaces\n"
        "assert list_interfaces(), 'no interface at all'\n"
        "print('LOADED', loaded, 'ifaddr' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("LOADED", 1)[1].split() == ["[]", "True"]
