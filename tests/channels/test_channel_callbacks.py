"""A service may take a channel's requests, and the peer's close, as callbacks."""

from __future__ import annotations

import channel_helpers
from channel_helpers import Connect, StartServer, until

import ppcp.aio
from ppcp.control.aio_channel import AsyncChannel


async def open_callbacks_channel(
    serve: StartServer, connect: Connect
) -> tuple[ppcp.aio.Server, AsyncChannel]:
    channel_helpers.CALLBACKS.clear()
    server = await serve()
    session = await connect(server)
    return server, await session.open_channel("test-callbacks", b"")


async def test_requests_queued_before_and_sent_after_reach_the_callback_in_order(
    serve: StartServer, connect: Connect
) -> None:
    server, chan = await open_callbacks_channel(serve, connect)
    for name in ("a", "b"):  # queued: the service only takes callbacks after two
        await chan.send_request(name)
    await until(lambda: channel_helpers.CALLBACKS == ["a", "b"])
    await chan.send_request("c")
    await until(lambda: channel_helpers.CALLBACKS == ["a", "b", "c"])
    await chan.close()
    await until(lambda: channel_helpers.CALLBACKS == ["a", "b", "c", "<peer closed>"])
    served = next(iter(server.sessions))
    await until(lambda: not served.channels and not served._tasks)


async def test_the_answer_to_our_own_close_is_not_the_peer_closing(
    serve: StartServer, connect: Connect
) -> None:
    server, chan = await open_callbacks_channel(serve, connect)
    for name in ("a", "b", "done"):
        await chan.send_request(name)
    assert await chan.wait_closed() == (0, "")  # the service closed it
    served = next(iter(server.sessions))
    await until(lambda: not served.channels and not served._tasks)
    assert channel_helpers.CALLBACKS == ["a", "b", "done"]
