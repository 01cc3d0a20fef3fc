"""Message channels: send/recv both ways, the server hook, the inbox, limits."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest
from channel_helpers import PSK_TEXT, Connect, StartServer

import ppcp
import ppcp.aio
from ppcp import ChannelError, MessageInbox, PolicyDenied
from ppcp.control.router import ServerPolicy

Session = ppcp.aio.AsyncSession


async def test_send_and_reply(serve: StartServer, connect: Connect) -> None:
    seen: list[tuple[str, str, bytes]] = []

    def on_message(peer: str, topic: str, data: bytes) -> bytes:
        seen.append((peer, topic, data))
        return data.upper()

    session = await connect(await serve(ServerPolicy(on_message=on_message)))
    chan = await session.open_messages("greetings")
    await chan.send(b"hello")
    await chan.send(b"")  # empty messages are messages too
    assert await chan.recv() == b"HELLO"
    assert await chan.recv() == b""
    await chan.close()
    assert seen == [("client", "greetings", b"hello"), ("client", "greetings", b"")]


async def test_async_hook_and_iteration(serve: StartServer, connect: Connect) -> None:
    async def on_message(peer: str, topic: str, data: bytes) -> bytes | None:
        await asyncio.sleep(0)
        return None if data == b"quiet" else b"re:" + data

    session = await connect(await serve(ServerPolicy(on_message=on_message)))
    async with await session.open_messages() as chan:
        for text in (b"a", b"quiet", b"b"):
            await chan.send(text)
        await chan.end()  # no more messages: the server closes when done
        replies = [m async for m in chan]
    assert replies == [b"re:a", b"re:b"]
    with pytest.raises(ChannelError):
        await chan.recv()


async def test_inbox_collects_messages(serve: StartServer, connect: Connect) -> None:
    inbox = MessageInbox()
    session = await connect(await serve(ServerPolicy(on_message=inbox)))
    async with await session.open_messages("t1") as chan:
        await chan.send(b"one")
        await chan.send(b"two")
    # close() returned: the server has handed both to the hook.
    got = [inbox.get_nowait(), inbox.get_nowait()]
    assert [(m.peer, m.topic, m.data) for m in got] == [
        ("client", "t1", b"one"),
        ("client", "t1", b"two"),
    ]


async def test_default_logs_at_info(session: Session, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ppcp.server"):
        async with await session.open_messages("news") as chan:
            await chan.send(b"the message")
    records = [r for r in caplog.records if r.name == "ppcp.server" and "news" in r.getMessage()]
    assert records and records[0].levelno == logging.INFO
    assert "client" in records[0].getMessage() and "the message" in records[0].getMessage()


async def test_large_and_concurrent_messages(serve: StartServer, connect: Connect) -> None:
    inbox = MessageInbox()
    session = await connect(await serve(ServerPolicy(on_message=inbox)))
    payloads = [os.urandom(100_000 + i) for i in range(20)] + [os.urandom(5 << 20)]
    async with await session.open_messages() as chan:
        await asyncio.gather(*(chan.send(p) for p in payloads))  # sends must not interleave
    received = sorted((inbox.get_nowait().data for _ in payloads), key=len)
    assert received == sorted(payloads, key=len)


async def test_oversized_messages(serve: StartServer, connect: Connect) -> None:
    limit = 1 << 20
    server = await serve(config=ppcp.SessionConfig(name="server", max_message_size=limit))
    small = await connect(server, config=ppcp.SessionConfig(name="c", max_message_size=limit))
    chan = await small.open_messages()
    with pytest.raises(ChannelError):
        await chan.send(b"x" * (limit + 1))  # refused locally
    # A peer that ignores the limit: the receiver closes the channel with an error.
    await chan.channel.write((limit + 1).to_bytes(4, "big"))
    with pytest.raises(ChannelError, match="too large"):
        await chan.close()
    assert (await small.exec(["true"])).exit_code == 0  # the session lives on


async def test_hook_failure_is_reported_to_the_sender(
    serve: StartServer, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    def on_message(peer: str, topic: str, data: bytes) -> None:
        raise RuntimeError("boom")

    session = await connect(await serve(ServerPolicy(on_message=on_message)))
    chan = await session.open_messages()
    await chan.send(b"x")
    with (
        caplog.at_level(logging.ERROR, logger="ppcp.server"),
        pytest.raises(ChannelError, match="handler failed"),
    ):
        await chan.close()
    assert any("on_message failed" in r.getMessage() for r in caplog.records)


async def test_messages_disabled(serve: StartServer, connect: Connect) -> None:
    session = await connect(await serve(ServerPolicy(allow_messages=False)))
    with pytest.raises(PolicyDenied):
        await session.open_messages()


@pytest.mark.parametrize("topic", ["", "x" * 65, "bad\ntopic"])
async def test_bad_topics(session: Session, topic: str) -> None:
    with pytest.raises(ChannelError):
        await session.open_messages(topic)


async def test_server_refuses_bad_topic_payload(session: Session) -> None:
    with pytest.raises(ChannelError):
        await session.open_channel("message", b'{"topic": 5}')


def test_blocking_messages(blocking_server: object) -> None:
    def on_message(peer: str, topic: str, data: bytes) -> bytes:
        return b"%s/%s/%s" % (peer.encode(), topic.encode(), data)

    server = blocking_server(ServerPolicy(on_message=on_message))  # type: ignore[operator]
    with ppcp.connect(
        "127.0.0.1", server.port, PSK_TEXT, config=ppcp.SessionConfig(name="blocker")
    ) as session:
        with session.open_messages("chat") as chan:
            chan.send(b"hi")
            assert chan.recv(timeout=10) == b"blocker/chat/hi"
            with pytest.raises(TimeoutError):
                chan.recv(timeout=0.05)  # nothing more; the channel stays usable
            chan.send(b"again")
            assert chan.recv(timeout=10) == b"blocker/chat/again"
        # Half-close, then iterate the replies until the server is done.
        with session.open_messages("it") as chan:
            chan.send(b"1")
            chan.send(b"2")
            chan.end()
            assert list(chan) == [b"blocker/it/1", b"blocker/it/2"]
        # The "ppcp send" pattern: open, send, close (close confirms delivery).
        chan = session.open_messages()
        chan.send(b"fire and confirm")
        chan.close()


async def test_a_server_without_a_session_handler_takes_no_session_messages(
    serve: StartServer, connect: Connect
) -> None:
    """Nothing would read them: their backlog would fill and stall the session's channels.

    Not offering `msg` turns that stall into an immediate, explained refusal.
    """
    server = await serve()
    assert "msg" not in server.config.capabilities
    session = await connect(server)
    with pytest.raises(ppcp.ProtocolError, match="takes no session messages"):
        await session.send(b"hello")
    assert (await session.exec(["echo", "ok"])).stdout == b"ok\n"


async def test_a_server_with_a_session_handler_takes_session_messages() -> None:
    async def echo(session: Session) -> None:
        async for message in session:
            await session.send(b"echo: " + message)

    server = await ppcp.aio.serve(
        "127.0.0.1", 0, PSK_TEXT, echo, config=ppcp.SessionConfig(name="echo"), discovery=False
    )
    try:
        assert "msg" in server.config.capabilities
        async with await ppcp.aio.connect("127.0.0.1", server.port, PSK_TEXT) as session:
            await session.send(b"hi")
            assert await asyncio.wait_for(session.recv(), 10) == b"echo: hi"
    finally:
        await server.aclose()
