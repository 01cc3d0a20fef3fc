"""Per-source failed-authentication rate limiting: the sans-I/O limiter and the Server.

The limiter is tested with the time passed in; the loopback tests check the
Server refuses a blocked source with RATE_LIMITED before reading a byte,
that other sources are unaffected, and that the block expires.
"""

from __future__ import annotations

import asyncio

import pytest
from hardening_util import (
    HOST,
    OTHER_HOST,
    OTHER_PSK_TEXT,
    PSK_TEXT,
    alert_code,
    connect_from,
    frames_of,
    open_from,
    read_all,
    running_server,
    settle,
)

import ppcp.aio
from ppcp.core.errors import AuthenticationError, CloseCode, RateLimited
from ppcp.core.limits import ServerLimits
from ppcp.utils.ratelimit import AuthFailureLimiter, SourceCounter, source_key

# -- the limiter --------------------------------------------------------------------------------


def test_blocks_after_max_failures_within_window() -> None:
    lim = AuthFailureLimiter(max_failures=3, window=10.0, backoff=5.0, max_backoff=40.0)
    assert lim.failure("a", 0.0) == 0.0
    assert lim.failure("a", 1.0) == 0.0
    assert lim.blocked_for("a", 1.0) == 0.0
    assert lim.failure("a", 2.0) == 5.0
    assert lim.blocked_for("a", 2.0) == 5.0
    assert lim.blocked_for("a", 6.5) == pytest.approx(0.5)
    assert lim.blocked_for("a", 7.0) == 0.0
    assert lim.blocked_for("b", 2.0) == 0.0  # other sources are unaffected


def test_failures_outside_the_window_do_not_count() -> None:
    lim = AuthFailureLimiter(max_failures=3, window=10.0, backoff=5.0)
    for t in (0.0, 6.0, 12.0, 18.0, 24.0):  # never 3 within 10 s
        assert lim.failure("a", t) == 0.0
    assert lim.blocked_for("a", 24.0) == 0.0


def test_backoff_doubles_up_to_the_maximum_then_resets_after_quiet() -> None:
    lim = AuthFailureLimiter(max_failures=2, window=10.0, backoff=5.0, max_backoff=18.0)
    delays = []
    now = 0.0
    for _ in range(4):
        lim.failure("a", now)
        delays.append(lim.failure("a", now + 1))
        now += 1 + delays[-1]
    assert delays == [5.0, 10.0, 18.0, 18.0]
    # Quiet for longer than max_backoff: strikes are forgotten.
    now += 100.0
    lim.failure("a", now)
    assert lim.failure("a", now + 1) == 5.0


def test_success_clears_recent_failures() -> None:
    lim = AuthFailureLimiter(max_failures=3, window=10.0, backoff=5.0)
    lim.failure("a", 0.0)
    lim.failure("a", 1.0)
    lim.success("a")
    assert lim.failure("a", 2.0) == 0.0
    assert len(lim) == 1


def test_memory_is_bounded_by_max_sources() -> None:
    lim = AuthFailureLimiter(max_failures=2, window=10.0, backoff=5.0, max_sources=100)
    for i in range(10_000):
        lim.failure(f"10.0.{i // 256}.{i % 256}", float(i) / 1000)
    assert len(lim) == 100


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_failures": 0},
        {"window": 0.0},
        {"backoff": -1.0},
        {"backoff": 10.0, "max_backoff": 5.0},
        {"max_sources": 0},
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        AuthFailureLimiter(**kwargs)  # type: ignore[arg-type]


def test_source_counter() -> None:
    counter = SourceCounter(2)
    assert counter.acquire("a") and counter.acquire("a")
    assert not counter.acquire("a")
    assert counter.acquire("b")
    counter.release("a")
    assert counter.acquire("a")
    for _ in range(3):
        counter.release("a")
        counter.release("b")
    assert len(counter) == 0 and counter.count("a") == 0


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        (("192.0.2.7", 1234), "192.0.2.7"),
        (("::ffff:192.0.2.7", 1234, 0, 0), "192.0.2.7"),
        (("2001:db8:1:2:3:4:5:6", 1234, 0, 0), "2001:db8:1:2::/64"),
        (("2001:db8:1:2:ffff::1", 1, 0, 0), "2001:db8:1:2::/64"),
        (("fe80::1%eth0", 1, 0, 2), "fe80::/64"),
        (None, "local"),
        ("/run/ppcp.sock", "local"),
    ],
)
def test_source_key(peer: object, key: str) -> None:
    assert source_key(peer) == key


def test_server_limits_validation() -> None:
    ServerLimits()
    for bad in (
        {"max_unauthenticated": 0},
        {"max_unauthenticated_per_source": 0},
        {"auth_failures": 0},
        {"auth_backoff": 10.0, "auth_backoff_max": 1.0},
    ):
        with pytest.raises(ValueError):
            ServerLimits(**bad)  # type: ignore[arg-type]


# -- the server ----------------------------------------------------------------------------------


async def test_server_rate_limits_a_guessing_source() -> None:
    limits = ServerLimits(auth_failures=3, auth_failure_window=60.0, auth_backoff=60.0)
    async with running_server(limits=limits) as (server, recorder):
        for _ in range(3):
            with pytest.raises(AuthenticationError):
                await ppcp.aio.connect(HOST, server.port, OTHER_PSK_TEXT)
        await settle(server)
        # Blocked: even the right key is refused now, with RATE_LIMITED and nothing else.
        with pytest.raises(RateLimited) as info:
            await ppcp.aio.connect(HOST, server.port, PSK_TEXT)
        assert info.value.remote
        reader, writer = await open_from(HOST, server.port)
        writer.write(b"\x01" * 100)  # never read
        (frame,) = frames_of(await read_all(reader))
        writer.close()
        assert alert_code(frame) == CloseCode.RATE_LIMITED
        # Another source is served normally.
        session = await connect_from(OTHER_HOST, server.port)
        await session.send(b"still serving others")
        assert await asyncio.wait_for(session.recv(), 5) == b"still serving others"
        await session.close()
        assert recorder.established == 1
        assert server.handshaking == 0


async def test_rate_limit_expires() -> None:
    limits = ServerLimits(auth_failures=2, auth_backoff=0.3, auth_backoff_max=0.3)
    async with running_server(limits=limits) as (server, _):
        for _ in range(2):
            with pytest.raises(AuthenticationError):
                await ppcp.aio.connect(HOST, server.port, OTHER_PSK_TEXT)
        await settle(server)
        with pytest.raises(RateLimited):
            await ppcp.aio.connect(HOST, server.port, PSK_TEXT)
        # Wait out the backoff by the server's own clock (this is the tested behaviour).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 0.3
        remaining = server.auth_limiter.blocked_for("127.0.0.1", loop.time())
        assert 0 < remaining <= 0.3
        await asyncio.sleep(max(0.0, deadline - loop.time()) + 0.05)
        session = await ppcp.aio.connect(HOST, server.port, PSK_TEXT)
        await session.close()


async def test_only_authentication_failures_count() -> None:
    """Timeouts, garbage and clients that give up are not guesses: no lockout."""
    limits = ServerLimits(auth_failures=2, auth_backoff=60.0)
    config = ppcp.SessionConfig(name="srv", handshake_timeout=0.3)
    async with running_server(config, limits) as (server, _):
        for payload in (b"", b"garbage!", b"\x01\x00\x00\x00\x00\x05hello"):
            reader, writer = await open_from(HOST, server.port)
            writer.write(payload)
            await read_all(reader)
            writer.close()
        await settle(server)
        assert server.auth_limiter.blocked_for("127.0.0.1", 0.0) == 0.0
        session = await ppcp.aio.connect(HOST, server.port, PSK_TEXT)
        await session.close()
