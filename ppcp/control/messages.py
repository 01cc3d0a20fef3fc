"""Messages service: application messages on a channel, both directions.

Wire schema (docs/rfc.md section 15.10.4, "message"):

* channel kind ``"message"``; open payload ``{"topic": str}`` (1..64 bytes of
  UTF-8 without control characters; default ``"default"``);
* stream 0 in both directions carries messages, each as ``u32 length || bytes``
  (at most the receiver's ``max_message_size``; a larger length is a channel error);
* the client's EOF means "no more messages"; the server answers what it has
  to answer and closes the channel.  A NORMAL close therefore confirms that
  every message was handed to the server's hook.

On the server each message is logged at INFO on ``ppcp.server`` and passed to
``ServerPolicy.on_message(peer_name, topic, data)``; a reply it returns (bytes)
goes back on the same channel.  :class:`MessageInbox` is a ready-made hook
that queues messages for the server application.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from msgspec import Struct

from ppcp.control.aio_channel import AsyncChannel, decode_json, encode_json
from ppcp.control.exec import require_capability
from ppcp.control.messages_api import DEFAULT_TOPIC
from ppcp.core.errors import ChannelError, CloseCode, error_for_code
from ppcp.utils.codec import has_control_chars

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from ppcp.control.router import ServerPolicy
    from ppcp.transport.aio_driver import AsyncSession

log = logging.getLogger("ppcp.server")

T = TypeVar("T")
KIND = "message"
MAX_TOPIC_BYTES = 64
LENGTH_BYTES = 4
CLOSE_WAIT = 30.0
LOG_PREVIEW = 200


def check_topic(topic: str) -> str:
    raw = topic.encode("utf-8")
    if not raw or len(raw) > MAX_TOPIC_BYTES or has_control_chars(topic):
        raise ChannelError(f"topic must be 1..{MAX_TOPIC_BYTES} UTF-8 bytes, no control chars")
    return topic


class MessageChannel:
    """A bidirectional stream of whole messages on one channel (asyncio API)."""

    def __init__(self, channel: AsyncChannel, topic: str, max_size: int) -> None:
        self._channel = channel
        self.topic = topic
        self.max_size = max_size
        self._buf = bytearray()
        self._send_lock = asyncio.Lock()

    @property
    def channel(self) -> AsyncChannel:
        return self._channel

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send one message (waits for flow-control window)."""
        if len(data) > self.max_size:
            raise ChannelError(f"message of {len(data)} bytes exceeds {self.max_size}")
        async with self._send_lock:  # concurrent sends must not interleave
            await self._channel.write(len(data).to_bytes(LENGTH_BYTES, "big"))
            await self._channel.write(data)

    async def _next(self) -> bytes | None:
        """The next message, or None when the peer has ended the stream in order."""
        buf = self._buf
        while True:
            if len(buf) >= LENGTH_BYTES:
                n = int.from_bytes(buf[:LENGTH_BYTES], "big")
                if n > self.max_size:
                    await self._channel.close(CloseCode.CHANNEL_ERROR, "message too large")
                    raise ChannelError(f"peer sent a message of {n} bytes (limit {self.max_size})")
                if len(buf) >= LENGTH_BYTES + n:
                    data = bytes(buf[LENGTH_BYTES : LENGTH_BYTES + n])
                    del buf[: LENGTH_BYTES + n]
                    return data
            item = await self._channel.read()
            if item is None:
                if buf:
                    raise ChannelError("the message channel ended inside a message")
                return None
            buf += item[1]

    async def recv(self) -> bytes:
        """The next message; raises ChannelError (or the session's error) at the end."""
        data = await self._next()
        if data is None:
            self._channel.session.raise_if_failed()
            raise ChannelError("the message channel was closed by the peer", remote=True)
        return data

    async def end(self) -> None:
        """Send no more messages (half-close); replies can still be received."""
        await self._channel.send_eof()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while True:
            data = await self._next()
            if data is None:
                return
            yield data

    async def close(self, timeout: float | None = CLOSE_WAIT) -> None:
        """End the stream and wait until the peer has handled every message.

        Replies not yet received are discarded.  Raises the peer's error if
        it closed the channel with one (for example its hook failed), and
        ChannelError if it did not finish within ``timeout`` seconds.
        """
        ch = self._channel
        try:
            await asyncio.wait_for(self._finish(), timeout)
        except TimeoutError:
            await ch.close(CloseCode.CHANNEL_ERROR, "timed out waiting for the peer")
            raise ChannelError(f"the peer did not finish within {timeout:g} s") from None
        except BaseException:
            await ch.close()
            raise

    async def _finish(self) -> None:
        ch = self._channel
        if not ch.closed:
            await ch.send_eof()
        with contextlib.suppress(ChannelError):
            while await ch.read() is not None:
                pass
        code, reason = await ch.wait_closed()
        ch.session.raise_if_failed()
        if code != CloseCode.NORMAL:
            raise error_for_code(code, reason)

    async def abort(self) -> None:
        """Close at once, without waiting for the peer."""
        await self._channel.close()

    async def __aenter__(self) -> MessageChannel:
        return self

    async def __aexit__(self, exc_type: object, *exc_info: object) -> None:
        if exc_type is None:
            await self.close()
        else:
            await self.abort()


async def open_messages(session: AsyncSession, topic: str) -> MessageChannel:
    """:meth:`ppcp.aio.AsyncSession.open_messages`."""
    check_topic(topic)
    require_capability(session, "channels")
    channel = await session.open_channel(KIND, encode_json({"topic": topic}))
    return MessageChannel(channel, topic, session.config.max_message_size)


class SyncMessageChannel:
    """Blocking twin of :class:`MessageChannel`."""

    def __init__(self, inner: MessageChannel) -> None:
        self._inner = inner

    @property
    def aio(self) -> MessageChannel:
        return self._inner

    @property
    def topic(self) -> str:
        return self._inner.topic

    def send(self, data: bytes | bytearray | memoryview) -> None:
        _run(self._inner.send(bytes(data)))

    def recv(self, timeout: float | None = None) -> bytes:
        """The next message; TimeoutError if ``timeout`` passes (the channel stays usable)."""
        return _run(_timed(self._inner.recv(), timeout))

    def end(self) -> None:
        _run(self._inner.end())

    def __iter__(self) -> Iterator[bytes]:
        while True:
            data = _run(self._inner._next())
            if data is None:
                return
            yield data

    def close(self, timeout: float | None = CLOSE_WAIT) -> None:
        _run(self._inner.close(timeout))

    def abort(self) -> None:
        _run(self._inner.abort())

    def __enter__(self) -> SyncMessageChannel:
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _run(coro: Coroutine[Any, Any, T]) -> T:
    from ppcp.transport.blocking import run

    return run(coro)


async def _timed(aw: Coroutine[Any, Any, T], timeout: float | None) -> T:
    return await asyncio.wait_for(aw, timeout)


# -- server side --------------------------------------------------------------------


class ReceivedMessage(Struct, frozen=True):
    peer: str
    topic: str
    data: bytes


class MessageInbox:
    """A ``ServerPolicy.on_message`` hook that queues messages for the application.

    ::

        inbox = MessageInbox()
        server = await ppcp.aio.serve(host, port, psk, policy=ServerPolicy(on_message=inbox))
        async for msg in inbox:
            print(msg.peer, msg.topic, msg.data)

    With ``maxsize`` messages waiting, the next sender waits (flow control
    reaches back to it) instead of the server buffering without bound.
    """

    def __init__(self, maxsize: int = 1024) -> None:
        self._queue: asyncio.Queue[ReceivedMessage] = asyncio.Queue(maxsize)

    def __call__(self, peer: str, topic: str, data: bytes) -> Awaitable[None]:
        return self._queue.put(ReceivedMessage(peer, topic, data))

    async def get(self) -> ReceivedMessage:
        return await self._queue.get()

    def get_nowait(self) -> ReceivedMessage:
        return self._queue.get_nowait()

    def qsize(self) -> int:
        return self._queue.qsize()

    def __aiter__(self) -> AsyncIterator[ReceivedMessage]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[ReceivedMessage]:
        while True:
            yield await self._queue.get()


def _preview(data: bytes) -> str:
    text = repr(data[:LOG_PREVIEW])
    return text + ("..." if len(data) > LOG_PREVIEW else "")


async def serve_message(channel: AsyncChannel, policy: ServerPolicy) -> None:
    if not policy.allow_messages:
        channel.reject(CloseCode.POLICY_DENIED, "messages are disabled on this server")
        return
    try:
        obj = decode_json(channel.open_payload, "message request")
        topic = obj.get("topic", DEFAULT_TOPIC)
        if not isinstance(topic, str):
            raise ChannelError("topic must be a string")
        check_topic(topic)
    except ChannelError as exc:
        channel.reject(exc.code, exc.message)
        return
    channel.accept()
    session = channel.session
    peer = session.peer_name
    messages = MessageChannel(channel, topic, session.config.max_message_size)
    hook = policy.on_message
    async for data in messages:
        log.info("message from %s on topic %r: %s", peer, topic, _preview(data))
        if hook is None:
            continue
        try:
            reply = hook(peer, topic, data)
            if inspect.isawaitable(reply):
                reply = await reply
            if reply is not None and not isinstance(reply, bytes | bytearray | memoryview):
                raise TypeError(f"on_message returned {type(reply).__name__}, not bytes")
        except Exception as exc:
            # The sender learns that its message was not handled; the server lives on.
            log.exception("on_message failed for a message from %s on %r", peer, topic)
            await channel.close(
                CloseCode.CHANNEL_ERROR, f"message handler failed ({type(exc).__name__})"
            )
            return
        if reply is not None:
            await messages.send(reply)


__all__ = [
    "MessageChannel",
    "MessageInbox",
    "ReceivedMessage",
    "SyncMessageChannel",
    "open_messages",
    "serve_message",
]
