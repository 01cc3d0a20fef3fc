"""asyncio channel objects: waiting on the sans-I/O channel multiplexer.

An :class:`AsyncChannel` only buffers what the mux delivered and waits for
window; every protocol decision stays in :mod:`ppcp.control.channels`.
Received data is returned to the peer's window only when the application
reads it, so a slow reader applies backpressure all the way to the sender.
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from ppcp.control.channels import DEFAULT_MAX_PACKET, STREAM_STDOUT, ChannelMux
from ppcp.core.errors import (
    ChannelError,
    CloseCode,
    PPCPError,
    error_for_code,
)
from ppcp.transport.frames import PLAINTEXT_POOL

if TYPE_CHECKING:
    from ppcp.transport.aio_driver import AsyncSession


# The most one write() queues before waiting for the transport to drain.
WRITE_SLICE = DEFAULT_MAX_PACKET  # one record per slice


class AsyncChannel:
    def __init__(self, session: AsyncSession, channel_id: int, kind: str) -> None:
        self.session = session
        self.channel_id = channel_id
        self.kind = kind
        self.open_payload = b""
        self._loop = asyncio.get_running_loop()
        self._accepted: asyncio.Future[bytes] = self._loop.create_future()
        self._data: collections.deque[tuple[int, bytes | memoryview]] = collections.deque()
        self._requests: collections.deque[tuple[str, bytes]] = collections.deque()
        self._changed = asyncio.Event()
        self._eof = False
        self._close: tuple[int, str] | None = None
        self._error: PPCPError | None = None
        # A service may take requests, and the peer's close, as callbacks from
        # the dispatcher instead of a task waiting on next_request().
        self._request_handler: Callable[[str, bytes], None] | None = None
        self._close_handler: Callable[[], object] | None = None

    @property
    def _mux(self) -> ChannelMux:
        return self.session.mux

    # -- called by the session's dispatcher ------------------------------------

    def _wake(self) -> None:
        self._changed.set()

    def _on_accepted(self, payload: bytes) -> None:
        if not self._accepted.done():
            self._accepted.set_result(payload)

    def _on_data(self, stream: int, data: bytes | memoryview) -> None:
        self._data.append((stream, data))
        self._wake()

    def _on_eof(self) -> None:
        self._eof = True
        self._wake()

    def _on_request(self, name: str, payload: bytes) -> None:
        if self._request_handler is not None:
            self._request_handler(name, payload)
            return
        self._requests.append((name, payload))
        self._wake()

    def _on_closed(self, code: int, reason: str, *, refused: bool = False) -> None:
        closing = self._close is None
        self._close = (code, reason)
        if code != CloseCode.NORMAL or refused:
            self._error = error_for_code(code, reason)
        if not self._accepted.done():
            self._accepted.set_exception(
                self._error or ChannelError(f"channel closed: {reason}", remote=True)
            )
            self._accepted.exception()
        self._wake()
        if closing and self._close_handler is not None:
            self._close_handler()

    def _on_session_failed(self, error: PPCPError) -> None:
        if self._close is None:
            self._close = (int(error.code), error.message)
            self._error = error
        if not self._accepted.done():
            self._accepted.set_exception(error)
            self._accepted.exception()
        self._wake()

    # -- API ------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._close is not None

    @property
    def peer_max_packet(self) -> int:
        """The most data the peer takes in one record (0 once the channel is gone)."""
        ch = self._mux.channels.get(self.channel_id)
        return 0 if ch is None else ch.send_max_packet

    @property
    def at_eof(self) -> bool:
        return self._eof and not self._data

    async def wait_accepted(self) -> bytes:
        return await self._accepted

    def accept(self, payload: bytes = b"", *, hold: bool = False) -> None:
        """Accept a channel the peer opened (server side of a service).

        With ``hold`` the ACCEPT stays queued: it leaves with whatever the
        session writes next (the caller bounds how long that may take).
        """
        self._mux.accept(self.channel_id, payload)
        if not hold:
            self.session.flush()
        self._on_accepted(b"")

    def reject(self, code: int, reason: str) -> None:
        if self._close is None and not self.session.is_closed:
            self._mux.reject(self.channel_id, code, reason)
            self.session.flush()
            self.session.channels.pop(self.channel_id, None)
        self._close = (code, reason)
        self._wake()

    async def _wait_change(self) -> None:
        self._changed.clear()
        await self._changed.wait()

    def _raise_if_dead(self) -> None:
        if self._error is not None:
            raise self._error
        if self._close is not None:
            raise ChannelError(f"channel {self.channel_id} is closed")

    async def read(self) -> tuple[int, bytes] | None:
        """Next (stream, bytes) chunk, or None at EOF / close."""
        item = await self.read_buffer()
        if item is None:
            return None
        stream, data = item
        if isinstance(data, memoryview):
            chunk = bytes(data)
            release(data)
            return stream, chunk
        return stream, data

    async def read_buffer(self) -> tuple[int, bytes | memoryview] | None:
        """Like :meth:`read`, but bulk data comes as a view of a pooled buffer.

        A reader that writes the data somewhere at once saves a copy per
        record; it hands the view to :func:`release` when done with it (or
        just drops it).
        """
        while not self._data:
            if self._eof or self._close is not None:
                if self._error is not None and not self._eof:
                    raise self._error
                return None
            await self._wait_change()
        stream, data = self._data.popleft()
        if self._close is None:
            self._mux.consume(self.channel_id, len(data))
            self.session.flush()
        return stream, data

    async def write(
        self, data: bytes | bytearray | memoryview, stream: int = STREAM_STDOUT
    ) -> None:
        """Send all of ``data``, waiting for window as needed.

        At most :data:`WRITE_SLICE` bytes are queued before waiting for the
        transport to drain, so a bulk writer never puts more than that in
        front of another channel's data or a heartbeat.
        """
        view = memoryview(data)
        await self._write(view, 0, len(view), stream, in_place=False)

    async def write_in_place(
        self, buffer: bytearray, start: int, end: int, stream: int = STREAM_STDOUT
    ) -> None:
        """:meth:`write` of ``buffer[start:end]`` with no copy; the bytes in front
        of ``start`` and those sent are overwritten (see
        :meth:`~ppcp.control.channels.ChannelMux.send_data_in_place`)."""
        await self._write(memoryview(buffer), start, end, stream, in_place=True)

    async def _write(
        self, view: memoryview, start: int, end: int, stream: int, *, in_place: bool
    ) -> None:
        mux, channel_id = self._mux, self.channel_id
        while start < end:
            self._raise_if_dead()
            stop = min(end, start + WRITE_SLICE)
            if in_place:
                sent = mux.send_data_in_place(channel_id, view, start, stop, stream)
            else:
                sent = mux.send_data(channel_id, view[start:stop], stream)
            start += sent
            if sent:
                await self.session.drain()
            elif start < end:
                # No window right now.  Nothing was awaited since send_data looked,
                # so a WINDOW_ADJUST cannot slip in between and be missed.
                await self._wait_change()

    async def send_eof(self) -> None:
        if self._close is None:
            self._mux.send_eof(self.channel_id)
            await self.session.drain()

    async def send_request(self, name: str, payload: bytes = b"") -> None:
        self._raise_if_dead()
        self._mux.send_request(self.channel_id, name, payload)
        await self.session.drain()

    async def send_json(self, name: str, obj: dict[str, Any]) -> None:
        await self.send_request(name, encode_json(obj))

    async def finish(self, name: str, payload: bytes = b"") -> None:
        """A last request and CLOSE, in one write: how a service reports its result.

        One write instead of two saves the peer a wake-up per command.  No
        CHANNEL_EOF goes before them: the CLOSE ends the data as well (RFC
        section 15.5), and the record it would cost both ends was 7% of the
        instructions of a warm ``exec``.
        """
        self._raise_if_dead()
        self._mux.send_request(self.channel_id, name, payload)
        await self.close()

    async def next_request(self) -> tuple[str, bytes] | None:
        """Next in-channel request, or None once the channel is closed."""
        while not self._requests:
            if self._close is not None:
                return None
            await self._wait_change()
        return self._requests.popleft()

    def pending_request(self) -> tuple[str, bytes] | None:
        return self._requests.popleft() if self._requests else None

    def handle_requests(
        self,
        on_request: Callable[[str, bytes], None] | None,
        on_peer_close: Callable[[], object] | None = None,
    ) -> None:
        """Call ``on_request(name, payload)`` for each request as it arrives, and
        ``on_peer_close()`` if the peer closes the channel first; None stops that.

        Both run inside the session's dispatcher: they must not block or raise.
        Requests already queued are handed over at once.
        """
        self._request_handler = on_request
        self._close_handler = on_peer_close
        while on_request is not None and self._requests:
            on_request(*self._requests.popleft())

    async def wait_closed(self) -> tuple[int, str]:
        while self._close is None:
            await self._wait_change()
        return self._close

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        if self._close is None and not self.session.is_closed:
            try:
                self._mux.close_channel(self.channel_id, code, reason)
                self.session.flush()
            except PPCPError:
                return
            if self.channel_id not in self._mux.channels:
                # Closing a channel we had not answered rejects it: no CLOSE
                # will come back to remove it from the session's table.
                self.session.channels.pop(self.channel_id, None)
        if self._close is None:
            self._close = (code, reason)
            self._wake()


def release(data: bytes | memoryview) -> None:
    """Give back the pooled buffer behind data from :meth:`AsyncChannel.read_buffer`.

    The caller keeps no other view of it: the next bulk record is decrypted there.
    """
    if isinstance(data, memoryview) and isinstance(data.obj, bytearray):
        PLAINTEXT_POOL.give(data.obj)


# One encoder for every message: json.dumps with options builds a new one per call.
_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), sort_keys=True)
# msgspec's codecs take a tenth of the stdlib's time; a warm exec encodes and
# decodes three payloads.  They are used only where their result is the
# stdlib's, so the wire bytes (and the RFC's vectors) do not depend on which
# one ran: flat objects of strings, integers, booleans and nulls (a float's
# exponent is written differently), and output that is ASCII (the stdlib
# escapes the rest).  Anything msgspec refuses (a lone surrogate, NaN) goes
# to the stdlib, which decides.
_FAST_ENCODER = msgspec.json.Encoder(order="sorted")
_FAST_DECODER = msgspec.json.Decoder()
_FLAT_TYPES = frozenset({str, int, bool, type(None)})


def encode_json(obj: dict[str, Any]) -> bytes:
    if all(type(value) in _FLAT_TYPES for value in obj.values()):
        try:
            data = _FAST_ENCODER.encode(obj)
        except (TypeError, ValueError):  # UnicodeEncodeError: a lone surrogate
            pass
        else:
            if data.isascii():
                return data
    return _JSON_ENCODER.encode(obj).encode("utf-8")


def decode_json(payload: bytes, what: str) -> dict[str, Any]:
    """A JSON object from the peer; anything else is a channel error."""
    try:
        obj = _FAST_DECODER.decode(payload)
    except Exception:
        obj = _decode_json_slowly(payload, what)
    if not isinstance(obj, dict):
        raise ChannelError(f"malformed {what}: not a JSON object")
    return obj


def _decode_json_slowly(payload: bytes, what: str) -> Any:
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ChannelError(f"malformed {what}: not UTF-8 JSON") from None
    except RecursionError:
        # 64 KiB of "[" is valid-looking input that no payload needs.
        raise ChannelError(f"malformed {what}: nested too deeply") from None
