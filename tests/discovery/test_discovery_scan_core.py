"""The scanner's sans-I/O parts: PONG acceptance, merging, retransmission,
interfaces and targets, the id and cache files, and mDNS TXT parsing."""

from __future__ import annotations

import itertools
import json
import socket
from pathlib import Path

import pytest
from discovery_helpers import make_identity

from ppcp.discovery.collect import Collector, PingTracker, Sighting, retransmit_offsets
from ppcp.discovery.mdns import instance_name, parse_txt, txt_properties
from ppcp.discovery.netif import (
    IFF_BROADCAST,
    IFF_LOOPBACK,
    IFF_MULTICAST,
    IFF_UP,
    Interface,
    broadcast_destinations,
    format_host,
    multicast6_destinations,
    parse_target,
)
from ppcp.discovery.state import AddressCache, load_server_id
from ppcp.discovery.wire import MAX_DATAGRAM, Ping, Pong, discovery_key

KEY = discovery_key(bytes(32))
SRC = ("10.0.0.5", 9000)


def answer(ping: bytes, key: bytes = KEY, name: str = "alpha", sid: bytes = bytes(16)) -> bytes:
    nonce = Ping.decode(ping, KEY).nonce
    return Pong(nonce, make_identity(name, server_id=sid)).encode(key, len(ping))


def test_tracker_accepts_an_answer_and_measures_rtt() -> None:
    t = PingTracker(KEY)
    ping = t.ping(10.0)
    s = t.receive(answer(ping), SRC, 10.004)
    assert s is not None and s.verified and s.name == "alpha"
    assert s.address == "10.0.0.5" and s.discovery_port == 9000
    assert s.rtt == pytest.approx(0.004)


def test_tracker_rejections() -> None:
    t = PingTracker(KEY)
    ping = t.ping(0.0)
    other = discovery_key(bytes([1]) * 32)
    assert t.receive(answer(ping, key=other), SRC, 0.1) is None  # spoofed: bad tag
    stale = Pong(bytes(16), make_identity()).encode(KEY)  # replay from an older scan
    assert t.receive(stale, SRC, 0.1) is None
    assert t.receive(b"\x00" * 50, SRC, 0.1) is None  # garbage
    assert t.receive(b"\x00" * (MAX_DATAGRAM + 1), SRC, 0.1) is None  # oversize
    good = answer(ping)
    assert t.receive(good, SRC, 0.1) is not None
    assert t.receive(good, ("10.6.6.6", 9000), 0.2) is None  # same PONG replayed in-scan
    assert t.dropped == {
        "bad_tag": 1,
        "unknown_nonce": 1,
        "malformed": 1,
        "oversize": 1,
        "duplicate": 1,
    }


def test_tracker_refuses_a_pong_larger_than_the_ping() -> None:
    t = PingTracker(KEY, ping_size=192)
    ping = t.ping(0.0)
    nonce = Ping.decode(ping, KEY).nonce
    big = Pong(nonce, make_identity(caps=tuple(f"cap-{i:02d}" for i in range(20)))).encode(KEY)
    assert len(big) > 192
    assert t.receive(big, SRC, 0.0) is None
    assert t.dropped["oversize"] == 1


def test_two_servers_answer_the_same_ping() -> None:
    t = PingTracker(KEY)
    ping = t.ping(0.0)
    a = t.receive(answer(ping, name="a", sid=b"a" * 16), ("10.0.0.1", 9000), 0.001)
    b = t.receive(answer(ping, name="b", sid=b"b" * 16), ("10.0.0.2", 9000), 0.002)
    assert a is not None and b is not None and a.id != b.id


def test_tracker_memory_is_bounded() -> None:
    t = PingTracker(KEY, max_outstanding=4)
    first = t.ping(0.0)
    for _ in range(4):
        t.ping(0.0)
    assert t.receive(answer(first), SRC, 0.0) is None
    assert t.dropped["unknown_nonce"] == 1


def sighting(
    address: str, verified: bool = True, rtt: float | None = 0.01, **kw: object
) -> Sighting:
    fields: dict[str, object] = {
        "id": "aa" * 16,
        "name": "alpha",
        "address": address,
        "port": 7000,
        "versions": (1,),
        "capabilities": ("msg",),
        "verified": verified,
        "rtt": rtt if verified else None,
        "discovery_port": 9000,
    }
    fields.update(kw)
    return Sighting(**fields)  # type: ignore[arg-type]


def test_collector_merges_by_id_and_prefers_verified() -> None:
    c = Collector()
    hint = c.add(sighting("10.0.0.9", verified=False, name="mdns-name", port=1))
    assert hint is not None and not hint.verified and hint.rtt is None
    info = c.add(sighting("10.0.0.1", rtt=0.02))
    assert info is not None and info.verified
    assert info.addresses == ("10.0.0.1",)  # the unauthenticated address is dropped
    assert (info.name, info.port) == ("alpha", 7000)
    info = c.add(sighting("fe80::1%eth0", rtt=0.005))
    assert info is not None and info.addresses == ("10.0.0.1", "fe80::1%eth0")
    assert info.rtt == 0.005
    assert c.add(sighting("10.0.0.9", verified=False)) is None  # hints never override
    assert c.add(sighting("10.0.0.1", rtt=0.03)) is None  # nothing new
    assert len(c) == 1


def test_collector_orders_verified_first_then_by_rtt() -> None:
    c = Collector()
    c.add(sighting("10.0.0.3", verified=False, id="cc" * 16, name="c"))
    c.add(sighting("10.0.0.2", rtt=0.2, id="bb" * 16, name="b"))
    c.add(sighting("10.0.0.1", rtt=0.1, id="aa" * 16, name="a"))
    assert [i.name for i in c.results()] == ["a", "b", "c"]


def test_retransmit_schedule() -> None:
    offsets = list(itertools.islice(retransmit_offsets(0.1, 1.0), 7))
    assert offsets == pytest.approx([0.0, 0.1, 0.3, 0.7, 1.5, 2.5, 3.5])


# -- interfaces and targets ---------------------------------------------------------

UP = IFF_UP | IFF_BROADCAST | IFF_MULTICAST


def iface(name: str, flags: int, *cidrs: str, v6: bool = True, index: int = 2) -> Interface:
    import ipaddress

    return Interface(name, index, flags, tuple(ipaddress.IPv4Interface(c) for c in cidrs), v6)


def test_broadcast_destinations() -> None:
    ifaces = [
        iface("lo", IFF_UP | IFF_LOOPBACK, "127.0.0.1/8", index=1),
        iface("eth0", UP, "10.231.1.2/24", "10.231.7.2/16"),
        iface("eth1", UP, "192.168.5.9/24", index=3),
        iface("down0", IFF_BROADCAST, "10.9.9.9/24", index=4),
        iface("ptp0", UP, "10.8.0.1/32", index=5),
    ]
    dests = broadcast_destinations(ifaces, 9000)
    assert [d.sockaddr for d in dests] == [
        ("255.255.255.255", 9000),
        ("10.231.1.255", 9000),
        ("10.231.255.255", 9000),
        ("192.168.5.255", 9000),
    ]
    only = broadcast_destinations(ifaces, 9000, only=("eth1",))
    assert [d.sockaddr for d in only] == [("192.168.5.255", 9000)]
    v6 = multicast6_destinations(ifaces, 9000)
    assert [(d.family, d.sockaddr) for d in v6] == [
        (socket.AF_INET6, ("ff02::1", 9000, 0, 2)),
        (socket.AF_INET6, ("ff02::1", 9000, 0, 3)),
        (socket.AF_INET6, ("ff02::1", 9000, 0, 5)),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1", ("10.0.0.1", 9000)),
        ("10.0.0.1:7000", ("10.0.0.1", 7000)),
        ("host.lan", ("host.lan", 9000)),
        ("fe80::1%eth0", ("fe80::1%eth0", 9000)),
        ("[fe80::1%eth0]:7000", ("fe80::1%eth0", 7000)),
        ("[::1]", ("::1", 9000)),
    ],
)
def test_parse_target(text: str, expected: tuple[str, int]) -> None:
    assert parse_target(text, 9000) == expected


@pytest.mark.parametrize("text", ["", ":9000", "h:0", "h:99999", "h:x", "[::1", "[::1]x"])
def test_parse_target_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_target(text, 9000)


def test_format_host_keeps_the_scope() -> None:
    assert format_host(("10.0.0.1", 9000)) == "10.0.0.1"
    assert format_host(("fe80::1%lo", 9000, 0, 1)) == "fe80::1%lo"
    assert format_host(("fe80::1", 9000, 0, 1)) == f"fe80::1%{socket.if_indextoname(1)}"


# -- files --------------------------------------------------------------------------


def test_server_id_persists(tmp_path: Path) -> None:
    path = tmp_path / "state" / "server.id"
    first = load_server_id(path)
    assert len(first) == 16 and path.read_text().strip() == first.hex()
    assert load_server_id(path) == first
    path.write_text("corrupt")
    fresh = load_server_id(path)
    assert fresh != first and load_server_id(path) == fresh


def test_server_id_survives_an_unwritable_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert len(load_server_id(blocker / "sub" / "server.id")) == 16


def test_address_cache_round_trip_and_bounds(tmp_path: Path) -> None:
    path = tmp_path / "cache.json"
    c = Collector()
    for i in range(40):
        c.add(sighting(f"10.0.0.{i}", id=f"{i:032x}", name=f"s{i}"))
    c.add(sighting("10.1.1.1", verified=False, id="ff" * 16))
    cache = AddressCache(path)
    cache.update(c.results(), c.discovery_ports, now=1000.0)
    cache.save()
    again = AddressCache(path)
    assert len(again.entries) == 32
    assert "ff" * 16 not in again.entries  # mDNS hints are never cached
    assert again.targets()[0][1:] in {(f"10.0.0.{i}", 9000) for i in range(40)}


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"servers": []}',
        '{"servers": {"short": {"addresses": [["10.0.0.1", 9000]]}}}',
        json.dumps({"servers": {"aa" * 16: {"addresses": [["evil.example", 9000]]}}}),
        json.dumps({"servers": {"aa" * 16: {"addresses": [["10.0.0.1", 0]]}}}),
        json.dumps({"servers": {"aa" * 16: {"addresses": "10.0.0.1"}}}),
        "x" * 70000,
        "[" * 20000 + "]" * 20000,  # too deep for json.loads: RecursionError, not ValueError
    ],
)
def test_address_cache_ignores_bad_files(tmp_path: Path, content: str) -> None:
    path = tmp_path / "cache.json"
    path.write_text(content)
    assert AddressCache(path).targets() == []


# -- mDNS TXT -----------------------------------------------------------------------


def test_txt_round_trip() -> None:
    ident = make_identity("kitchen.pi", 7000, ("msg", "exec"), bytes(range(16)))
    props = {k.encode(): v.encode() for k, v in txt_properties(ident, 9000).items()}
    hint = parse_txt(props, "10.0.0.7", 7000)
    assert hint is not None and not hint.verified
    assert (hint.id, hint.name, hint.port) == (bytes(range(16)).hex(), "kitchen.pi", 7000)
    assert (hint.capabilities, hint.versions, hint.discovery_port) == (("msg", "exec"), (1,), 9000)
    assert instance_name("kitchen.pi") == "kitchen-pi"


@pytest.mark.parametrize(
    "change",
    [
        {b"id": b"nothex"},
        {b"id": b"aa"},
        {b"name": b""},
        {b"name": b"\x1b[31mred"},
        {b"name": b"\xff"},
        {b"v": b"1,x"},
        {b"v": b"300"},
        {b"caps": b"Bad Cap"},
        {b"dport": b"70000"},
    ],
)
def test_txt_rejects_malformed_records(change: dict[bytes, bytes]) -> None:
    props = {b"id": b"aa" * 16, b"name": b"alpha", b"v": b"1", b"caps": b"msg", b"dport": b"9000"}
    props.update(change)
    assert parse_txt(props, "10.0.0.7", 7000) is None
    assert parse_txt({**props, **change}, "10.0.0.7", 0) is None


def test_collector_is_bounded() -> None:
    c = Collector(max_servers=3)
    for i in range(10):
        c.add(sighting("10.0.0.1", verified=False, id=f"{i:032x}"))
    assert len(c) == 3
    for i in range(40):
        c.add(sighting(f"10.0.1.{i}", id=f"{0:032x}"))
    info = c.get(f"{0:032x}")
    assert info is not None and len(info.addresses) == 16


def test_a_verified_pong_replaces_a_full_hint() -> None:
    c = Collector()
    for i in range(20):
        c.add(sighting(f"10.0.1.{i}", verified=False))
    info = c.add(sighting("10.0.2.1"))
    assert info is not None and info.verified and info.addresses == ("10.0.2.1",)


def test_prefilter_program_jumps_stay_inside() -> None:
    from ppcp.discovery.prefilter import ping_filter

    program = ping_filter(1200)
    for i, (code, jt, jf, _) in enumerate(program):
        if code & 0x07 == 0x05:  # a conditional jump: both targets inside the program
            assert i + 1 + jt < len(program) and i + 1 + jf < len(program)
    assert program[-1] == (0x06, 0, 0, 0) and program[-2][0] == 0x06
