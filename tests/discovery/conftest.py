"""Fixtures for the discovery tests.

Tests that are not marked ``netns`` run on the host and must never send a
datagram beyond loopback: the ``_no_lan_traffic`` guard fails any of them
that plans broadcast/multicast destinations or starts zeroconf, and every
test gets private XDG directories so no cache or id file of the user's is
read or written.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from discovery_helpers import LOOPBACK, make_identity
from discovery_netns import Topology, netns_unavailable, remove_stale_namespaces

import ppcp
from ppcp.crypto.psk import derive_psk_key
from ppcp.discovery import DiscoveryConfig, DiscoveryService, ResponderLimits
from ppcp.discovery import mdns as mdns_module
from ppcp.discovery import scanner as scanner_module


@pytest.fixture(autouse=True)
def _private_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))


@pytest.fixture(autouse=True)
def _no_lan_traffic(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    if request.node.get_closest_marker("netns"):
        yield
        return
    violations: list[str] = []

    def forbidden(what: str) -> object:
        def refuse(*args: object, **kwargs: object) -> object:
            violations.append(what)
            raise AssertionError(f"a host test must not use {what}")

        return refuse

    monkeypatch.setattr(scanner_module, "list_interfaces", forbidden("broadcast/multicast"))
    monkeypatch.setattr(mdns_module, "_zeroconf", forbidden("mDNS"))
    yield
    assert not violations, f"test tried to reach the LAN: {violations}"


@pytest.fixture
def psk() -> str:
    return ppcp.generate_psk()


@pytest.fixture
def loopback_config() -> DiscoveryConfig:
    return LOOPBACK


@pytest.fixture
async def responder(psk: str) -> AsyncIterator[DiscoveryService]:
    """A responder for server 'alpha' (TCP port 4242) on 127.0.0.1, ephemeral UDP port.

    Without the kernel pre-filter, so every datagram reaches the Python checks.
    """
    service = await DiscoveryService.start(
        derive_psk_key(psk),
        make_identity("alpha"),
        host="127.0.0.1",
        port=0,
        mdns=False,
        limits=ResponderLimits(kernel_filter=False),
    )
    yield service
    await service.aclose()


_topologies = itertools.count()


@pytest.fixture
def topology(request: pytest.FixtureRequest) -> Topology:
    """A fresh set of namespaces, always torn down (even when the test fails)."""
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    remove_stale_namespaces()
    topo = Topology(tag=f"t{next(_topologies)}")
    request.addfinalizer(topo.close)
    return topo
