"""The responder's decisions (sans-I/O, time passed in): limits, replays, size caps."""

from __future__ import annotations

import os

import pytest
from discovery_helpers import make_identity
from hypothesis import given, settings
from hypothesis import strategies as st

from ppcp.discovery.abuse import (
    RateLimiter,
    ReplayCache,
    ResponderCore,
    ResponderLimits,
    TokenBucket,
    Verdict,
)
from ppcp.discovery.wire import MAX_DATAGRAM, Ping, Pong, compute_tag, discovery_key

KEY = discovery_key(bytes(32))


def ping(size: int = 384, key: bytes = KEY) -> bytes:
    return Ping(os.urandom(16), size).encode(key)


def core(**limits: float) -> ResponderCore:
    return ResponderCore(KEY, make_identity("alpha"), ResponderLimits(**limits))  # type: ignore[arg-type]


def test_valid_ping_gets_a_pong_no_larger_than_itself() -> None:
    c = ResponderCore(KEY, make_identity("alpha", caps=tuple(f"c{i}" for i in range(32))))
    for size in (192, 200, 384, MAX_DATAGRAM):
        data = ping(size)
        reply = c.handle(data, "10.0.0.1", 0.0)
        assert reply is not None and len(reply) <= size
        pong = Pong.decode(reply, KEY)
        assert pong.nonce == Ping.decode(data, KEY).nonce
        assert pong.server == c.identity or pong.capabilities_truncated
    assert c.stats[Verdict.ANSWERED] == 4


def test_drops_without_reply() -> None:
    c = core()
    assert c.handle(ping(key=discovery_key(bytes([7]) * 32)), "a", 0.0) is None
    assert c.handle(b"garbage", "a", 0.0) is None
    oversized = b"PPCP\x01\x01\x00\x00" + bytes(16) + bytes(MAX_DATAGRAM)
    assert c.handle(oversized + compute_tag(KEY, oversized), "a", 0.0) is None
    pong = Pong(bytes(16), make_identity()).encode(KEY)
    assert c.handle(pong, "a", 0.0) is None  # a PONG is not a PING
    assert c.stats == {Verdict.BAD_TAG: 1, Verdict.MALFORMED: 2, Verdict.OVERSIZE: 1}


def test_size_cap_is_checked_before_anything_else() -> None:
    c = core(max_datagram=300)
    assert c.handle(ping(384), "a", 0.0) is None
    assert c.stats == {Verdict.OVERSIZE: 1}


def test_replayed_ping_is_answered_once() -> None:
    c = core()
    data = ping()
    assert c.handle(data, "10.0.0.1", 0.0) is not None
    assert c.handle(data, "10.0.0.2", 1.0) is None
    assert c.stats[Verdict.REPLAY] == 1
    # After the replay window the nonce is forgotten (bounded memory).
    assert c.handle(data, "10.0.0.2", 61.0) is not None


def test_per_source_rate_limit() -> None:
    c = core(per_source_rate=2.0, per_source_burst=3.0)
    answered = [c.handle(ping(), "10.0.0.1", 0.0) is not None for _ in range(5)]
    assert answered == [True, True, True, False, False]
    # Another source has its own allowance.
    assert c.handle(ping(), "10.0.0.2", 0.0) is not None
    # Tokens come back at the configured rate.
    assert c.handle(ping(), "10.0.0.1", 0.49) is None
    assert c.handle(ping(), "10.0.0.1", 0.5) is not None
    assert c.stats[Verdict.RATE_LIMITED] == 3


def test_global_rate_limit() -> None:
    c = core(global_rate=10.0, global_burst=4.0)
    answered = sum(c.handle(ping(), f"10.0.0.{i}", 0.0) is not None for i in range(10))
    assert answered == 4


def test_forgeries_do_not_use_up_a_clients_allowance() -> None:
    """Bad-tag PINGs spoofing a client's address are dropped before the rate limiter."""
    c = core(per_source_rate=1.0, per_source_burst=2.0)
    for _ in range(100):
        c.handle(ping(key=discovery_key(bytes([9]) * 32)), "10.0.0.1", 0.0)
    assert c.handle(ping(), "10.0.0.1", 0.0) is not None


def test_token_bucket() -> None:
    b = TokenBucket(rate=1.0, burst=2.0, now=0.0)
    assert [b.take(0.0) for _ in range(3)] == [True, True, False]
    assert b.take(1.0)
    assert not b.take(1.0)
    assert b.take(100.0) and b.take(100.0) and not b.take(100.0)  # capped at burst
    assert not b.take(50.0)  # a clock going backwards earns nothing


def test_rate_limiter_is_bounded() -> None:
    r = RateLimiter(rate=1.0, burst=1.0, max_keys=3)
    for i in range(10):
        r.allow(f"src{i}", 0.0)
    assert len(r) == 3


def test_replay_cache_is_bounded() -> None:
    cache = ReplayCache(window=60.0, capacity=5)
    for i in range(20):
        assert not cache.seen(bytes([i]) * 16, 0.0)
    assert len(cache) == 5
    assert cache.seen(bytes([19]) * 16, 1.0)


@pytest.mark.parametrize(
    "kwargs", [{"per_source_rate": 0}, {"global_burst": 0.5}, {"max_datagram": 5000}]
)
def test_limits_are_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ResponderLimits(**kwargs)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1500), st.text(max_size=40), st.floats(-1e9, 1e9))
def test_handle_never_raises(data: bytes, source: str, now: float) -> None:
    """The invariant: malformed input is dropped, never raised out of the responder."""
    c = core()
    assert c.handle(data, source, now) is None


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=400))
def test_handle_never_raises_on_authentic_garbage(body: bytes) -> None:
    signed = b"PPCP\x01\x01\x00\x00" + body
    data = signed + compute_tag(KEY, signed)
    reply = core().handle(data, "a", 0.0)
    if reply is not None:  # only a well-formed PING of legal size is answered
        assert len(data) >= 192 and len(reply) <= len(data)
        assert Pong.decode(reply, KEY).nonce == data[8:24]
