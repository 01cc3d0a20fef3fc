"""Discovery between real (namespaced) hosts: servers and clients are separate
processes in separate network namespaces joined by veth pairs and bridges.

Skipped (with the reason) unless root with a working ``ip netns``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from discovery_netns import HERE, Topology, client_json, server_argv

import ppcp

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def find(topo: Topology, ns: str, psk: str, name: str, *extra: str) -> dict[str, Any]:
    result = client_json(topo, ns, "find", "--psk", psk, "--name", name, *extra)
    assert isinstance(result, dict)
    assert result["reply"] == "echo:hello" and result["server_name"] == name
    return result


def discover(topo: Topology, ns: str, *args: str) -> list[dict[str, Any]]:
    result = client_json(topo, ns, "discover", *args)
    assert isinstance(result, list)
    return result


def test_find_by_name_then_follow_an_address_change(topology: Topology, tmp_path: Path) -> None:
    t = topology
    br = t.bridge("br0")
    # IPv4 only: otherwise the cached, unchanged IPv6 link-local address would
    # (rightly) be used after the renumbering, and this test would prove less.
    client, server = t.node("c"), t.node("s", ipv6=False)
    t.link(client, "eth0", br, "10.231.1.2/24")
    t.link(server, "eth0", br, "10.231.1.10/24")
    # A default route lets the limited broadcast leave too, as on a real LAN.
    t.ip_route(client, "default", "dev", "eth0")
    psk = ppcp.generate_psk()
    srv = t.spawn(
        server, server_argv(psk, "alpha", "--port", "7000", "--id-path", str(tmp_path / "id"))
    )
    cache = str(tmp_path / "cache.json")

    first = find(t, client, psk, "alpha", "--cache", cache)
    assert (first["address"], first["port"]) == ("10.231.1.10", 7000)
    assert first["elapsed"] < 1.0

    t.ip_addr(server, "del", "10.231.1.10/24", "dev", "eth0")
    t.ip_addr(server, "add", "10.231.1.77/24", "dev", "eth0")
    # Same command, same cache file: the stale cached address costs nothing.
    second = find(t, client, psk, "alpha", "--cache", cache)
    assert (second["address"], second["port"]) == ("10.231.1.77", 7000)
    assert second["elapsed"] < 1.0

    [info] = discover(t, client, "--psk", psk, "--cache", cache, "--limit", "1")
    assert info["id"] == srv.info["id"] and info["verified"]
    assert "10.231.1.77" in info["addresses"]


def test_servers_on_two_subnets_of_the_client(topology: Topology) -> None:
    t = topology
    br0, br1 = t.bridge("br0"), t.bridge("br1")
    client, s1, s2 = t.node("c"), t.node("s1"), t.node("s2")
    t.link(client, "eth0", br0, "10.231.1.2/24")
    t.link(client, "eth1", br1, "10.231.2.2/24")
    t.link(s1, "eth0", br0, "10.231.1.10/24")
    t.link(s2, "eth0", br1, "10.231.2.20/24")
    psk = ppcp.generate_psk()
    t.spawn(s1, server_argv(psk, "left"))
    t.spawn(s2, server_argv(psk, "right"))
    found = discover(t, client, "--psk", psk, "--limit", "2", "--no-multicast6")
    by_name = {info["name"]: info for info in found}
    assert set(by_name) == {"left", "right"}
    assert by_name["left"]["addresses"] == ["10.231.1.10"]
    assert by_name["right"]["addresses"] == ["10.231.2.20"]
    find(t, client, psk, "right")


def test_psk_groups_do_not_see_each_other(topology: Topology) -> None:
    t = topology
    br = t.bridge("br0")
    client, s1, s2 = t.node("c"), t.node("s1"), t.node("s2")
    t.link(client, "eth0", br, "10.231.1.2/24")
    t.link(s1, "eth0", br, "10.231.1.10/24")
    t.link(s2, "eth0", br, "10.231.1.11/24")
    psk_a, psk_b = ppcp.generate_psk(), ppcp.generate_psk()
    t.spawn(s1, server_argv(psk_a, "alpha"))
    t.spawn(s2, server_argv(psk_b, "beta"))
    # Each client waits the full second: whatever the other group did, it saw nothing.
    assert [i["name"] for i in discover(t, client, "--psk", psk_a, "--timeout", "1")] == ["alpha"]
    assert [i["name"] for i in discover(t, client, "--psk", psk_b, "--timeout", "1")] == ["beta"]
    find(t, client, psk_b, "beta")


def test_ipv6_link_local_only(topology: Topology) -> None:
    """No IPv4 at all: the PING goes to ff02::1 and the session runs over fe80::."""
    t = topology
    br = t.bridge("br0")
    client, server = t.node("c"), t.node("s")
    t.link(client, "eth0", br)
    t.link(server, "eth0", br)
    psk = ppcp.generate_psk()
    t.spawn(server, server_argv(psk, "six", "--port", "7000"))
    result = find(t, client, psk, "six")
    assert result["address"].startswith("fe80:") and result["port"] == 7000


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_mdns_between_namespaces(topology: Topology, loop: str) -> None:
    t = topology
    br = t.bridge("br0")
    client, server = t.node("c"), t.node("s")
    t.link(client, "eth0", br, "10.231.1.2/24")
    t.link(server, "eth0", br, "10.231.1.10/24")
    psk = ppcp.generate_psk()
    on_uvloop = ["--uvloop"] if loop == "uvloop" else []
    srv = t.spawn(server, server_argv(psk, "kitchen.pi", "--port", "7000", "--mdns", *on_uvloop))
    mdns_only = ("--mdns", "--no-broadcast", "--no-multicast6", "--timeout", "5", "--limit", "1")
    # Without the PSK: an unauthenticated hint, straight from the mDNS records.
    [hint] = discover(t, client, *mdns_only)
    assert (hint["name"], hint["id"], hint["port"]) == ("kitchen.pi", srv.info["id"], 7000)
    assert hint["addresses"] == ["10.231.1.10"] and not hint["verified"] and hint["rtt"] is None
    # With it: the advertised address is PINGed and the hint becomes verified.
    [info] = discover(t, client, "--psk", psk, *mdns_only)
    assert info["verified"] and info["id"] == srv.info["id"] and info["rtt"] is not None


def test_avahi_browse_sees_the_advertisement(topology: Topology) -> None:
    missing = [p for p in ("avahi-browse", "avahi-daemon", "dbus-daemon") if not shutil.which(p)]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (apt-get install avahi-utils)")
    t = topology
    br = t.bridge("br0")
    client, server = t.node("c"), t.node("s")
    t.link(client, "eth0", br, "10.231.1.2/24")
    t.link(server, "eth0", br, "10.231.1.10/24")
    psk = ppcp.generate_psk()
    srv = t.spawn(server, server_argv(psk, "avahi-visible", "--port", "7000", "--mdns"))
    res = t.run(client, ["sh", str(HERE / "avahi_browse.sh"), "10"], timeout=30)
    assert res.returncode == 0, res.stderr
    resolved = [line.split(";") for line in res.stdout.splitlines() if line.startswith("=")]
    assert resolved, res.stdout + res.stderr
    fields = resolved[0]
    assert fields[3] == "avahi-visible" and fields[4] == "_ppcp._tcp"
    assert (fields[7], fields[8]) == ("10.231.1.10", "7000")
    assert f'"id={srv.info["id"]}"' in fields[9] and '"name=avahi-visible"' in fields[9]
