"""The least a remote ``exec true`` can cost here: the same work with no protocol.

A bare asyncio client and server make the two round trips a PPCP (or SSH)
handshake needs, each side doing the handshake's crypto floor
(:func:`bench.sec_handshake.crypto_floor_once`: P-256 keygen + ECDH + HKDF +
2 HMAC), then one more round trip in which the server runs the user's shell
with ``-c true`` exactly as the PPCP server does (``ppcp.control.child.Child``:
three pipes, a pidfd) and answers with its exit status.  No framing, no
record encryption, no session or channel objects, no flow control.

The ``cold`` and ``concurrent`` sections run it beside PPCP and asyncssh: its
ratio to asyncssh is the best any implementation in Python on this machine
could show, so a target below it cannot be met by optimising PPCP.
"""

from __future__ import annotations

import asyncio

from bench.sec_handshake import crypto_floor_once

KEY_LEN = 65  # an uncompressed P-256 point
PROOF_LEN = 32


def _public_key() -> bytes:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


class _Reader(asyncio.Protocol):
    """Collects bytes; ``need(n)`` waits for the next ``n``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._waiter: tuple[int, asyncio.Future[bytes]] | None = None
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is None:
            return
        n, fut = self._waiter
        if fut.done():
            return
        if len(self._buf) >= n:
            out = bytes(self._buf[:n])
            del self._buf[:n]
            self._waiter = None
            fut.set_result(out)
        elif self._closed:
            fut.set_exception(ConnectionError("closed early"))

    async def need(self, n: int) -> bytes:
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiter = (n, fut)
        self._wake()
        return await fut


async def _serve_one(reader: _Reader, public: bytes, shell: str) -> None:
    from ppcp.control.child import STDERR, STDOUT, Child

    try:
        crypto_floor_once(await reader.need(KEY_LEN))
        transport = reader.transport  # connected by now
        assert transport is not None
        transport.write(public)
        await reader.need(PROOF_LEN)
        transport.write(bytes(PROOF_LEN))
        await reader.need(1)  # the exec request
        child = Child.spawn([shell, "-c", "true"])
        try:
            child.close_stdin()
            await asyncio.gather(child.read(STDOUT, 1 << 16), child.read(STDERR, 1 << 16))
            code = await child.wait()
        finally:
            child.close()
        transport.write(bytes([code & 0xFF]))
    finally:
        if reader.transport is not None:
            reader.transport.close()


async def start_floor_server(port: int = 0) -> asyncio.Server:
    from ppcp.control.exec import user_shell

    loop = asyncio.get_running_loop()
    public, shell = _public_key(), user_shell()
    tasks: set[asyncio.Task[None]] = set()

    def make() -> _Reader:
        reader = _Reader()
        task = loop.create_task(_serve_one(reader, public, shell))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return reader

    return await loop.create_server(make, "127.0.0.1", port)


async def floor_exec(port: int, public: bytes) -> int:
    """One client run: connect, two round trips with crypto, exec; the exit status."""
    loop = asyncio.get_running_loop()
    transport, reader = await loop.create_connection(_Reader, "127.0.0.1", port)
    try:
        transport.write(public)
        crypto_floor_once(await reader.need(KEY_LEN))
        transport.write(bytes(PROOF_LEN))
        await reader.need(PROOF_LEN)
        transport.write(b"x")
        return (await reader.need(1))[0]
    finally:
        transport.close()


def client_key() -> bytes:
    return _public_key()
