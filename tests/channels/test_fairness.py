"""Channels share a session fairly: a bulk transfer cannot starve a command,
and the channel cap refuses channels without hurting the session."""

from __future__ import annotations

import asyncio

import pytest
from channel_helpers import Connect, MiB, StartServer, until

import ppcp
import ppcp.aio
from ppcp import ChannelRejected
from ppcp.control.channels import MuxConfig

BULK = 256 * MiB


async def test_exec_completes_while_a_bulk_transfer_runs(
    serve: StartServer, connect: Connect
) -> None:
    session = await connect(await serve())
    # A sink that reads slowly: the bulk channel is always window-limited.
    sink = await session.open_channel("test-sink", b'{"delay": 0.005}')
    block = b"\x00" * MiB
    pushed = 0

    async def push() -> None:
        nonlocal pushed
        for _ in range(BULK // MiB):
            await sink.write(block)
            pushed += len(block)

    bulk = asyncio.ensure_future(push())
    try:
        await until(lambda: pushed >= 8 * MiB)  # the transfer is well under way
        for _ in range(5):
            result = await session.exec(["echo", "hi"])
            assert result.stdout == b"hi\n" and result.exit_code == 0
            # ...and it finished while the 256 MiB transfer was still running.
            assert not bulk.done()
            assert pushed < BULK
        session.raise_if_failed()
    finally:
        bulk.cancel()
        await asyncio.gather(bulk, return_exceptions=True)
        await sink.close()
    assert (await session.exec(["true"])).exit_code == 0


async def test_many_channels_progress_together(serve: StartServer, connect: Connect) -> None:
    """Eight concurrent commands streaming output all complete, each intact."""
    session = await connect(await serve())
    size = 4 * MiB
    results = await asyncio.gather(
        *(session.exec(["head", "-c", str(size), "/dev/urandom"]) for _ in range(8))
    )
    assert all(len(r.stdout) == size and r.exit_code == 0 for r in results)


async def test_channel_cap_over_loopback(serve: StartServer, connect: Connect) -> None:
    config = ppcp.SessionConfig(name="server", mux=MuxConfig(max_channels=4))
    session = await connect(await serve(config=config))
    held = [await session.open_channel("test-hold") for _ in range(4)]
    with pytest.raises(ChannelRejected, match="too many open channels"):
        await session.open_channel("test-hold")
    with pytest.raises(ChannelRejected):
        await session.exec(["true"])
    # The session is unharmed; freeing a slot lets the next channel in.
    await held[0].close()
    await asyncio.wait_for(held[0].wait_closed(), 10)
    assert (await session.exec(["true"])).exit_code == 0
    for ch in held[1:]:
        await ch.close()


async def test_unknown_service_is_rejected(session: ppcp.aio.AsyncSession) -> None:
    with pytest.raises(ChannelRejected, match="unknown service"):
        await session.open_channel("no-such-service")
    assert (await session.exec(["true"])).exit_code == 0


async def test_refusal_by_raising_leaves_no_channel_behind(
    serve: StartServer, connect: Connect
) -> None:
    server = await serve()
    session = await connect(server)
    for _ in range(3):
        with pytest.raises(ppcp.PolicyDenied, match="says no"):
            await session.open_channel("test-deny")
    served = next(iter(server.sessions))
    assert served.channels == {} and served.mux.channels == {}
    assert session.channels == {} and session.mux.channels == {}


async def test_cancelled_open_is_closed_when_answered(serve: StartServer, connect: Connect) -> None:
    server = await serve()
    session = await connect(server)
    opening = asyncio.ensure_future(session.open_channel("test-hold"))
    await asyncio.sleep(0)  # one loop step: the task sends CHANNEL_OPEN and waits
    assert session.mux.channels and not opening.done()
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    # The server accepts; the client closes at once; both sides forget the channel.
    served = next(iter(server.sessions))
    await until(lambda: not session.channels and not session.mux.channels)
    await until(lambda: not served.channels and not served.mux.channels)
    assert (await session.exec(["true"])).exit_code == 0
