"""The blocking API (the seed's functions), a thin facade over the asyncio driver.

Every blocking call is the matching coroutine run on one shared background
event loop thread, as python-zeroconf does for its sync API.  The protocol is
therefore driven by exactly one implementation, and heartbeats and channels
keep flowing while the calling thread does something else.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from ppcp import aio
from ppcp.control.exec import SyncExecMixin
from ppcp.control.files_api import SyncFilesMixin
from ppcp.control.messages_api import SyncMessagesMixin
from ppcp.control.shell_api import SyncShellMixin
from ppcp.core.config import DEFAULT_PORT, SessionConfig
from ppcp.core.errors import CloseCode, PPCPError, SessionClosed
from ppcp.transport.aio_driver import AsyncSession

T = TypeVar("T")


class _LoopThread:
    """One daemon thread running an event loop for all blocking-API sessions."""

    _lock = threading.Lock()
    _instance: _LoopThread | None = None

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(
            target=self._run, args=(ready,), name="ppcp-loop", daemon=True
        )
        self.thread.start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    @classmethod
    def get(cls) -> _LoopThread:
        with cls._lock:
            # A forked child inherits a dead copy of the loop thread: start anew.
            if cls._instance is None or cls._instance.pid != os.getpid():
                cls._instance = cls()
            return cls._instance


def run(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` on the PPCP loop thread and wait for its result."""
    runner = _LoopThread.get()
    if threading.current_thread() is runner.thread:
        coro.close()
        raise RuntimeError("blocking PPCP calls cannot be made from the PPCP loop thread")
    future = asyncio.run_coroutine_threadsafe(coro, runner.loop)
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise
    except BaseException:
        # KeyboardInterrupt in the caller: do not leave the coroutine running.
        future.cancel()
        raise


class Session(SyncExecMixin, SyncShellMixin, SyncFilesMixin, SyncMessagesMixin):
    """An authenticated, encrypted session (blocking API).

    ``send(data)`` and ``recv()`` exchange whole messages.  Use it as a
    context manager, or call :meth:`close`; iterating yields messages until
    the peer closes.
    """

    def __init__(self, inner: AsyncSession) -> None:
        self._inner = inner

    @property
    def aio(self) -> AsyncSession:
        """The asyncio session this facade drives."""
        return self._inner

    @property
    def client_id(self) -> str:
        return self._inner.client_id

    @property
    def server_name(self) -> str:
        return self._inner.server_name

    @property
    def peer_name(self) -> str:
        return self._inner.peer_name

    @property
    def peer_address(self) -> Any:
        return self._inner.peer_address

    @property
    def version(self) -> int:
        return self._inner.version

    @property
    def capabilities(self) -> tuple[str, ...]:
        return self._inner.capabilities

    @property
    def session_id(self) -> str:
        return self._inner.session_id

    @property
    def closed(self) -> bool:
        return self._inner.is_closed

    def send(self, data: bytes | bytearray | memoryview) -> None:
        run(self._inner.send(data))

    def recv(self, timeout: float | None = None) -> bytes:
        """The next message.  Raises SessionClosed when the peer has closed,
        TimeoutError if ``timeout`` passes first (the session stays usable)."""
        return run(self._recv(timeout))

    async def _recv(self, timeout: float | None) -> bytes:
        return await asyncio.wait_for(self._inner.recv(), timeout)

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        run(self._inner.close(code, reason))

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                yield self.recv()
            except SessionClosed:
                return

    def __repr__(self) -> str:
        try:
            who = f"{self._inner.role.value} peer={self.peer_name!r}"
        except PPCPError:
            who = self._inner.role.value
        return f"<ppcp.Session {who}{' closed' if self.closed else ''}>"


def create_tcp_server(
    host: str = "0.0.0.0", port: int = DEFAULT_PORT, backlog: int = 128
) -> socket.socket:
    """A listening TCP socket for :func:`server_accept` (IPv6 if ``host`` is one)."""
    family = socket.AF_INET6 if ":" in (host or "") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def server_accept(
    sock: socket.socket, psk: bytes | str, *, config: SessionConfig | None = None
) -> Session:
    """Run the server handshake on an accepted socket; return the encrypted session.

    Raises a :class:`PPCPError` (and closes the socket) if the client fails to
    authenticate or the handshake times out.
    """
    return Session(run(aio.server_accept(sock, psk, config=config)))


def client_connect(
    sock: socket.socket, psk: bytes | str, *, config: SessionConfig | None = None
) -> Session:
    """Run the client handshake on a connected socket; return the encrypted session."""
    return Session(run(aio.client_connect(sock, psk, config=config)))


def connect(
    host: str,
    port: int = DEFAULT_PORT,
    psk: bytes | str = b"",
    *,
    config: SessionConfig | None = None,
) -> Session:
    """Connect to ``host:port`` and run the client handshake."""
    return Session(run(aio.connect(host, port, psk, config=config)))
