"""The asyncio driver: moves bytes between a socket and a :class:`Connection`.

It holds no protocol logic.  It feeds received bytes to the connection,
writes what the connection wants written, turns events into futures and
queues, and applies backpressure in both directions.  The blocking API runs
this same driver on a background event loop (see :mod:`ppcp.transport.blocking`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

from ppcp.control import channels as mux_events
from ppcp.control.aio_channel import AsyncChannel
from ppcp.control.channels import ChannelMux
from ppcp.control.exec import ExecMixin
from ppcp.control.files_api import FilesMixin
from ppcp.control.heartbeat import HeartbeatMonitor
from ppcp.control.messages_api import MessagesMixin
from ppcp.control.shell_api import ShellMixin
from ppcp.core.config import SessionConfig
from ppcp.core.errors import (
    CloseCode,
    ConnectionLost,
    FlowControlError,
    HandshakeTimeout,
    HeartbeatTimeout,
    PPCPError,
    SessionClosed,
    map_exception,
)
from ppcp.core.events import ConnectionClosed, Event, HandshakeComplete, MessageReceived
from ppcp.core.states import Role
from ppcp.crypto.psk import derive_psk_key
from ppcp.transport.connection import Connection

log = logging.getLogger("ppcp.session")

CLOSE_TIMEOUT = 5.0
WRITE_HIGH_WATER = 64 * 1024  # asyncio's default


async def wait_done(fut: asyncio.Future[Any], timeout: float | None) -> Any:
    """``fut``'s result, waiting at most ``timeout`` s (TimeoutError) without cancelling it.

    One waiter and one timer.  ``wait_for(shield(fut))`` adds a task on Python
    3.11, and ``asyncio.timeout`` + ``shield`` a context object, an outer
    future and the cancellation dance: a handshake and a close wait like this
    several times per session.  Cancelling the caller cancels only the waiter.
    """
    if not fut.done():
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()

        def wake(_: object = None) -> None:
            if not waiter.done():
                waiter.set_result(None)

        fut.add_done_callback(wake)
        timer = loop.call_later(timeout, wake) if timeout is not None else None
        try:
            await waiter
        finally:
            fut.remove_done_callback(wake)
            if timer is not None:
                timer.cancel()
        if not fut.done():
            raise TimeoutError
    return fut.result()


def set_nodelay(sock: Any) -> None:
    """Disable Nagle before the first handshake byte (saves ~40 ms per connect)."""
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _SessionProtocol(asyncio.BufferedProtocol):
    # Buffered: the socket is read straight into the connection's frame
    # buffer (no bytes object per read, no copy to assemble a record).
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.proto != socket.IPPROTO_TCP:
            # asyncio's transports (and uvloop's) set TCP_NODELAY themselves,
            # but only on a socket made with proto IPPROTO_TCP (as theirs are).
            set_nodelay(sock)
        # A cast, not an isinstance check: uvloop's transports are not subclasses.
        self.session._attach(cast(asyncio.Transport, transport))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.session._conn.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self.session._on_received(nbytes)

    def eof_received(self) -> bool | None:
        self.session._on_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.session._on_lost(exc)

    def pause_writing(self) -> None:
        self.session._writable.clear()

    def resume_writing(self) -> None:
        self.session._writable.set()
        self.session._reply_backlog = 0
        self.session._release_if_sent()


class AsyncSession(ExecMixin, ShellMixin, FilesMixin, MessagesMixin):
    """An authenticated, encrypted PPCP session (asyncio API).

    ``await send(data)`` / ``await recv()`` exchange whole messages; the
    session is an async context manager and an async iterator of messages.
    """

    def __init__(self, role: Role, psk_key: bytes, config: SessionConfig) -> None:
        self.role = role
        self.config = config
        self._loop = asyncio.get_running_loop()
        self._conn = Connection(role, psk_key, config.connection_config(), config.rng)
        self._transport: asyncio.Transport | None = None
        self._established: asyncio.Future[HandshakeComplete] = self._loop.create_future()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._failed: asyncio.Future[None] = self._loop.create_future()  # _error is set
        self._writable = asyncio.Event()
        self._writable.set()
        self._inbox: collections.deque[bytes] = collections.deque()
        self._inbox_bytes = 0
        self._inbox_ready = asyncio.Event()
        self._error: PPCPError | None = None
        self._reading_paused = False
        # Bytes written in answer to the peer while our write side was paused
        # (the peer is not reading): bounded by config.max_reply_backlog.
        self._reply_backlog = 0
        self._flush_scheduled = False
        self.peer_address: Any = None
        self.mux = ChannelMux(self._conn, config.mux)
        self.channels: dict[int, AsyncChannel] = {}
        # Called (as a task) for every channel the peer opens; None = refuse all.
        self.channel_handler: Callable[[AsyncChannel], Awaitable[None]] | None = None
        self.heartbeat: HeartbeatMonitor | None = None
        self._heartbeat_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- identity ------------------------------------------------------------

    @property
    def _info(self) -> HandshakeComplete:
        if not self._established.done() or self._established.exception() is not None:
            raise PPCPError("the session is not established")
        return self._established.result()

    @property
    def peer_name(self) -> str:
        """The name the peer announced in its (authenticated) hello."""
        return self._info.peer_name

    @property
    def client_id(self) -> str:
        """The client's announced name (the seed API's ``session.client_id``)."""
        return self.peer_name if self.role is Role.SERVER else self.config.name

    @property
    def server_name(self) -> str:
        return self.peer_name if self.role is Role.CLIENT else self.config.name

    @property
    def version(self) -> int:
        return self._info.version

    @property
    def capabilities(self) -> tuple[str, ...]:
        return self._info.capabilities

    @property
    def session_id(self) -> str:
        return self._info.session_id.hex()

    @property
    def connection(self) -> Connection:
        return self._conn

    @property
    def is_closed(self) -> bool:
        return self._closed.done()

    # -- transport callbacks ---------------------------------------------------

    def _attach(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        # Resume a paused writer only once everything is sent, so the record
        # buffers it wrote can be reused for the next ones (release_sent).
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=0)
        self.peer_address = transport.get_extra_info("peername")
        self._conn.initiate()
        self.flush()

    def flush(self) -> None:
        data = self._conn.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)
            self._release_if_sent()

    def _release_if_sent(self) -> None:
        """Let the connection reuse its record buffers once the transport holds none.

        Only an empty write buffer proves that: a transport may keep a
        reference to what it could not send yet (asyncio does since 3.12).
        """
        if self._transport is not None and not self._transport.get_write_buffer_size():
            self._conn.release_sent()

    def _on_received(self, nbytes: int) -> None:
        try:
            events = self._conn.buffer_updated(nbytes)
        except PPCPError as exc:
            self._terminate(exc)
            return
        self._deliver(events)

    def _on_eof(self) -> None:
        try:
            events = self._conn.receive_data(b"")
        except PPCPError as exc:
            self._terminate(exc)
            return
        self._deliver(events)

    def _deliver(self, events: list[Event]) -> None:
        if not self._writable.is_set() and self._check_reply_backlog():
            return
        if not events or not self._established.done():
            # Nothing is woken that could write beside the replies (a
            # heartbeat answer), or they are the handshake's: send them now.
            self.flush()
        for event in events:
            self._dispatch(event)
        if not self._flush_scheduled and self._conn.pending_output():
            # Replies to input that woke tasks (the CLOSE answering a CLOSE)
            # go out once those tasks have run: what they write joins the same
            # segment, one send and one wake-up of the peer instead of two.
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_replies)

    def _flush_replies(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def _check_reply_backlog(self) -> bool:
        """Fail the session if the peer keeps asking for answers it does not read.

        Heartbeat requests, channel opens over the cap, closes... each make us
        queue a reply.  While the transport's write buffer is over its high-water
        mark, such replies accumulate; past ``max_reply_backlog`` bytes the peer
        is cut off (FLOW_CONTROL_ERROR) and the connection aborted, since a
        graceful close would wait for the peer to read.  Returns True if so.
        """
        self._reply_backlog += self._conn.pending_output()
        if self._reply_backlog <= self.config.max_reply_backlog:
            return False
        self._conn.data_to_send()  # drop the unread replies
        self._terminate(
            FlowControlError(
                f"the peer does not read our replies ({self._reply_backlog} bytes queued "
                f"while its receive window was full)"
            )
        )
        if self._transport is not None:
            self._transport.abort()
        return True

    def _dispatch(self, event: Event) -> None:
        # One table lookup per event: a chain of isinstance tests was a tenth
        # of the driver's share of a warm exec (five records, five events).
        handler = _EVENT_HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def _on_message(self, event: MessageReceived) -> None:
        self._inbox.append(event.data)
        self._inbox_bytes += len(event.data)
        self._inbox_ready.set()
        if self._inbox_bytes > self.config.receive_buffer and self._transport is not None:
            self._transport.pause_reading()
            self._reading_paused = True

    def _on_established(self, event: HandshakeComplete) -> None:
        if not self._established.done():
            self._established.set_result(event)
            self._start_heartbeats(event)

    def _on_connection_closed(self, event: ConnectionClosed) -> None:
        self._terminate(event.error)

    def _on_heartbeat(self, event: mux_events.HeartbeatReceived) -> None:
        if self.heartbeat is not None:
            self.heartbeat.answered(event.heartbeat_id, self._loop.time())

    def _on_channel_open(self, event: mux_events.ChannelOpenRequested) -> None:
        handler = self.channel_handler
        if handler is None:
            self.mux.reject(
                event.channel_id,
                CloseCode.POLICY_DENIED,
                f"this endpoint accepts no {event.kind!r} channels",
            )
            return
        channel = AsyncChannel(self, event.channel_id, event.kind)
        channel.open_payload = event.payload
        self.channels[event.channel_id] = channel
        self.spawn(self._run_channel_handler(handler, channel))

    def _on_channel_accepted(self, event: mux_events.ChannelAccepted) -> None:
        ch = self.channels.get(event.channel_id)
        if ch is not None:
            ch._on_accepted(event.payload)

    def _on_channel_data(self, event: mux_events.ChannelData) -> None:
        ch = self.channels.get(event.channel_id)
        if ch is not None:
            ch._on_data(event.stream, event.data)

    def _on_channel_eof(self, event: mux_events.ChannelEOF) -> None:
        ch = self.channels.get(event.channel_id)
        if ch is not None:
            ch._on_eof()

    def _on_channel_request(self, event: mux_events.ChannelRequest) -> None:
        ch = self.channels.get(event.channel_id)
        if ch is None:
            return
        # Requests are not flow-controlled: bound those the service has not
        # read yet, or a peer could queue them without limit.
        limit = self.mux.config.max_pending_requests
        if len(ch._requests) >= limit:
            self._terminate(
                FlowControlError(
                    f"channel {ch.channel_id}: the peer sent more than {limit} requests "
                    "the service has not read"
                )
            )
            return
        ch._on_request(event.name, event.payload)

    def _on_channel_refused(self, event: mux_events.ChannelRefused) -> None:
        ch = self.channels.pop(event.channel_id, None)
        if ch is not None:
            ch._on_closed(event.code, event.reason, refused=True)

    def _on_channel_closed(self, event: mux_events.ChannelClosed) -> None:
        ch = self.channels.pop(event.channel_id, None)
        if ch is not None:
            ch._on_closed(event.code, event.reason)

    def _on_window_opened(self, event: mux_events.WindowOpened) -> None:
        ch = self.channels.get(event.channel_id)
        if ch is not None:
            ch._wake()

    async def _run_channel_handler(
        self, handler: Callable[[AsyncChannel], Awaitable[None]], channel: AsyncChannel
    ) -> None:
        try:
            await handler(channel)
        except PPCPError as exc:
            await channel.close(int(exc.code) if exc.code else CloseCode.CHANNEL_ERROR, exc.message)
        except Exception as exc:
            # Logged here, with the channel it broke: re-raised, it surfaced only
            # when the task was collected, as "Task exception was never retrieved".
            log.exception(
                "internal error in the %r channel %d of %s",
                channel.kind,
                channel.channel_id,
                self.peer_name,
            )
            await channel.close(CloseCode.CHANNEL_ERROR, f"internal error: {type(exc).__name__}")
        else:
            await channel.close()

    def spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        """Run a task that dies with the session."""
        task: asyncio.Task[None] = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _start_heartbeats(self, info: HandshakeComplete) -> None:
        interval = self.config.heartbeat_interval
        if interval and "heartbeat" in info.capabilities:
            self.heartbeat = HeartbeatMonitor(
                interval, self.config.heartbeat_max_missed_for(self.role)
            )
            self.heartbeat.start(self._loop.time())
            # The handshake has just shown the peer alive: the first heartbeat
            # is due one interval later (a short session sends none at all).
            # A timer, not a task, so an idle session costs no coroutine.
            self._heartbeat_timer = self._loop.call_later(interval, self._heartbeat_tick)

    def _heartbeat_tick(self) -> None:
        monitor = self.heartbeat
        if monitor is None or self._error is not None:
            return
        now = self._loop.time()
        if monitor.dead(now):
            self._terminate(
                HeartbeatTimeout(
                    f"the peer answered no heartbeat for {now - monitor.last_answer:.1f} s "
                    f"({monitor.max_missed} missed at {monitor.interval:g} s intervals)"
                )
            )
            return
        try:
            self.mux.send_heartbeat(monitor.due(now))
        except PPCPError:
            return
        self.flush()
        self._heartbeat_timer = self._loop.call_later(monitor.interval, self._heartbeat_tick)

    async def open_channel(self, kind: str, payload: bytes = b"") -> AsyncChannel:
        """Open a channel and wait until the peer accepts it (or raise why not)."""
        self.raise_if_failed()
        channel_id = self.mux.open_channel(kind, payload)
        channel = AsyncChannel(self, channel_id, kind)
        self.channels[channel_id] = channel
        self.flush()
        try:
            channel.open_payload = await channel.wait_accepted()
        except asyncio.CancelledError:
            # Nobody will use the channel: close it as soon as the peer answers.
            with contextlib.suppress(PPCPError):
                self.mux.close_channel(channel_id)
                self.flush()
            raise
        return channel

    def _on_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            error = map_exception(exc)
        else:
            error = self._conn.error or ConnectionLost("the connection closed")
        self._terminate(error, transport_gone=True)

    def _terminate(self, error: PPCPError, *, transport_gone: bool = False) -> None:
        """Single exit path: remember why, tell the peer, release every waiter."""
        if self._error is None:
            self._error = error
            self._conn.fail(error)
            self.flush()
        if self._heartbeat_timer is not None:
            self._heartbeat_timer.cancel()
        if self._transport is not None and not transport_gone:
            self._transport.close()
        if not self._failed.done():
            # After the transport's close, whose connection_lost is then
            # scheduled ahead of this wake-up: a close() waiting on _failed
            # finds the session closed instead of waiting one more loop turn.
            self._failed.set_result(None)
        if not self._established.done():
            self._established.set_exception(self._error)
            # The caller may already have given up (timeout); avoid "never retrieved".
            self._established.exception()
        self._inbox_ready.set()
        self._writable.set()
        if transport_gone and not self._closed.done():
            self._closed.set_result(None)
        for channel in list(self.channels.values()):
            channel._on_session_failed(self._error)
        self.channels.clear()
        # Cancelled from the ready queue, not here: a handler already woken by
        # something the peer sent before its CLOSE (in the same read) takes
        # that step first, so the last request of a transfer is still acted
        # on and logged.  Anything that waits for more input is cancelled then.
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is current:
                continue
            if self._loop.is_closed():
                task.cancel()
            else:
                self._loop.call_soon(task.cancel)

    # -- API ---------------------------------------------------------------------

    async def wait_established(self, timeout: float | None) -> None:
        try:
            await wait_done(self._established, timeout)
        except TimeoutError:
            self._handshake_timed_out(timeout)
            await self._wait_transport_closed()
            raise self._error from None  # type: ignore[misc]
        except PPCPError:
            await self._wait_transport_closed()
            raise

    def watch_handshake(
        self, timeout: float | None, done: Callable[[PPCPError | None], None]
    ) -> None:
        """The callback form of :meth:`wait_established`, for a server's connections.

        ``done(None)`` once established, ``done(error)`` if not (HandshakeTimeout
        after ``timeout`` s; the connection is closed by then).  No task per
        connection: its creation and three steps cost ~70 k instructions of a
        short session's 6.1 M (``python -m bench.instructions connection``).
        """
        timer = (
            self._loop.call_later(timeout, self._handshake_timed_out, timeout)
            if timeout is not None
            else None
        )

        def finished(established: asyncio.Future[HandshakeComplete]) -> None:
            if timer is not None:
                timer.cancel()
            done(self._error if established.exception() is not None else None)

        self._established.add_done_callback(finished)

    def _handshake_timed_out(self, timeout: float | None) -> None:
        if not self._established.done():
            within = f" within {timeout:g} s" if timeout is not None else ""
            self._terminate(HandshakeTimeout(f"handshake did not complete{within}"))

    def on_closed(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once the session has ended, for whatever reason."""
        self._closed.add_done_callback(lambda _: callback())

    def raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    async def drain(self) -> None:
        self.flush()
        await self._writable.wait()
        self.raise_if_failed()

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send one message (any size up to ``max_message_size``)."""
        self.raise_if_failed()
        self._conn.send_message(data)
        await self.drain()

    async def recv(self) -> bytes:
        """The next message; raises :class:`SessionClosed` (or the error) at the end."""
        while not self._inbox:
            self.raise_if_failed()
            self._inbox_ready.clear()
            await self._inbox_ready.wait()
        data = self._inbox.popleft()
        self._inbox_bytes -= len(data)
        if (
            self._reading_paused
            and self._inbox_bytes <= self.config.receive_buffer // 2
            and self._transport is not None
        ):
            self._reading_paused = False
            self._transport.resume_reading()
        return data

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close in order: send CLOSE, wait (bounded) for the peer's, drop the socket."""
        if self._transport is None or self._closed.done():
            return
        if self._error is None and not self._established.done():
            # Mid-handshake there is no CLOSE exchange to wait for: the peer
            # gets an ALERT with the code and reason, and the connection ends.
            self._conn.close(code, reason)
            self._terminate(SessionClosed("the session was closed during its handshake"))
        elif self._error is None:
            self._conn.close(code, reason)
            self.flush()
            with contextlib.suppress(TimeoutError):
                await wait_done(self._failed, CLOSE_TIMEOUT)
            if self._error is None:
                self._error = SessionClosed("the session was closed locally")
                self._failed.set_result(None)
        self._transport.close()
        await self._wait_transport_closed()

    async def wait_closed(self) -> None:
        """Wait until the session has ended, for whatever reason."""
        await asyncio.shield(self._closed)

    async def _wait_transport_closed(self) -> None:
        if self._transport is not None:
            self._transport.close()
        with contextlib.suppress(TimeoutError):
            await wait_done(self._closed, CLOSE_TIMEOUT)

    def abort(self) -> None:
        """Drop the connection at once, without a close exchange."""
        if self._transport is not None:
            self._transport.abort()

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while True:
            try:
                yield await self.recv()
            except SessionClosed:
                return


# Event type -> AsyncSession method that acts on it (exact types: events are final).
_EVENT_HANDLERS: dict[type[Event], Callable[[AsyncSession, Any], None]] = {
    MessageReceived: AsyncSession._on_message,
    HandshakeComplete: AsyncSession._on_established,
    ConnectionClosed: AsyncSession._on_connection_closed,
    mux_events.HeartbeatReceived: AsyncSession._on_heartbeat,
    mux_events.ChannelOpenRequested: AsyncSession._on_channel_open,
    mux_events.ChannelAccepted: AsyncSession._on_channel_accepted,
    mux_events.ChannelData: AsyncSession._on_channel_data,
    mux_events.ChannelEOF: AsyncSession._on_channel_eof,
    mux_events.ChannelRequest: AsyncSession._on_channel_request,
    mux_events.ChannelRefused: AsyncSession._on_channel_refused,
    mux_events.ChannelClosed: AsyncSession._on_channel_closed,
    mux_events.WindowOpened: AsyncSession._on_window_opened,
}


def session_protocol(session: AsyncSession) -> asyncio.BufferedProtocol:
    return _SessionProtocol(session)


async def open_session(
    role: Role,
    psk: bytes | str,
    config: SessionConfig,
    start: Callable[[Callable[[], asyncio.BaseProtocol]], Any],
) -> AsyncSession:
    """Run a handshake over the transport ``start`` creates; return the open session."""
    session = AsyncSession(role, derive_psk_key(psk), config)
    try:
        await start(lambda: _SessionProtocol(session))
    except OSError as exc:
        raise map_exception(exc) from exc
    await session.wait_established(config.handshake_timeout)
    return session
