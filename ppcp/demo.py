"""`make demo`: a PPCP server and client on loopback, every phase shown.

A small tap sits between client and server and prints each frame as it
crosses: the clear-text handshake decoded field by field, then the records,
whose contents it cannot read.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

import ppcp
import ppcp.aio
from ppcp.control.router import ServerPolicy
from ppcp.core.config import SessionConfig
from ppcp.discovery.config import DiscoveryConfig
from ppcp.handshake.messages import Alert, ClientHello, ServerHello
from ppcp.transport.frames import HEADER, HEADER_LEN, FrameType

console = Console(highlight=False)


def phase(title: str) -> None:
    console.rule(f"[bold cyan]{title}")


def describe(direction: str, frame_type: int, body: bytes) -> None:
    try:
        name = FrameType(frame_type).name
    except ValueError:
        name = f"0x{frame_type:02x}"
    line = f"  {direction} [bold]{name:<15}[/bold] {len(body):>8} bytes"
    if frame_type == FrameType.CLIENT_HELLO:
        ch = ClientHello.decode(body)
        line += (
            f"\n      versions={list(ch.versions)} name={ch.name!r} caps={list(ch.capabilities)}"
            f"\n      random={ch.random.hex()[:32]}…\n      key_share={ch.key_share.hex()[:48]}…"
        )
    elif frame_type == FrameType.SERVER_HELLO:
        sh = ServerHello.decode(body)
        line += (
            f"\n      version={sh.version} name={sh.name!r} caps={list(sh.capabilities)}"
            f"\n      random={sh.random.hex()[:32]}…\n      key_share={sh.key_share.hex()[:48]}…"
        )
    elif frame_type in (FrameType.CLIENT_AUTH, FrameType.SERVER_AUTH):
        line += f"\n      HMAC-SHA256 proof={body.hex()[:32]}…"
    elif frame_type == FrameType.ALERT:
        alert = Alert.decode(body)
        line += f"\n      code={alert.code} reason={alert.reason!r}"
    else:
        line += f"  {body[:6].hex()}…"
    console.print(line)


class Tap:
    """A loopback TCP relay that prints frame headers in both directions."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.quiet = False
        self.server: asyncio.Server | None = None
        self.frames = 0
        self.seen = bytearray()
        self._relays: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        relay = asyncio.current_task()
        assert relay is not None
        self._relays.add(relay)
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            self._writers.add(up_writer)
            await asyncio.gather(
                self._pump(reader, up_writer, "client → server"),
                self._pump(up_reader, writer, "server → client"),
                return_exceptions=True,
            )
        finally:
            self._relays.discard(relay)

    async def aclose(self) -> None:
        """Stop relaying: each relay sees its sockets close and ends on its own.

        Not by cancelling it: asyncio (3.11) reports a cancelled stream
        handler as an unhandled error.
        """
        if self.server is not None:
            self.server.close()
        for writer in self._writers:
            writer.close()
        if self._relays:
            await asyncio.wait(self._relays, timeout=5)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str
    ) -> None:
        try:
            while True:
                header = await reader.readexactly(HEADER_LEN)
                frame_type, _flags, length = HEADER.unpack(header)
                body = await reader.readexactly(length)
                self.frames += 1
                self.seen += header + body
                if not self.quiet:
                    describe(direction, frame_type, body)
                writer.write(header + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def main() -> None:
    console.print(
        Panel.fit(
            "[bold]PPCP demo[/bold]: a server and a client on 127.0.0.1, every phase shown.\n"
            "PING → ECDH → AUTH → AES-256-GCM records → channels (message, exec, files) → close",
            border_style="cyan",
        )
    )
    phase("0. Pre-shared key")
    psk = ppcp.generate_psk()
    console.print(f"  generated with ppcp.generate_psk(): {psk[:18]}…  (256 random bits)")

    with tempfile.TemporaryDirectory(prefix="ppcp-demo-") as tmp:
        await _run(psk, Path(tmp))


async def _echo_messages(session: ppcp.aio.AsyncSession) -> None:
    """The server's session handler: answers each session MESSAGE (channels run beside it)."""
    async for message in session:
        await session.send(b"echo: " + message)


async def _run(psk: str, workdir: Path) -> None:
    server_root = workdir / "server-root"
    server_root.mkdir()
    server = await ppcp.aio.serve(
        "127.0.0.1",
        0,
        psk,
        _echo_messages,
        config=SessionConfig(name="demo-server"),
        policy=ServerPolicy(root=server_root),
        discovery_port=0,
    )
    console.print(f"  server 'demo-server' on 127.0.0.1:{server.port}, file root {server_root}")

    phase("1. Discovery: PING → PONG")
    await _demo_discovery(server, psk)

    tap = Tap(server.port)
    tap_port = await tap.start()
    phase("2. Handshake: hello → ECDH → AUTH (frames as seen on the wire)")
    started = time.perf_counter()
    session = await ppcp.aio.connect(
        "127.0.0.1",
        tap_port,
        psk,
        config=SessionConfig(name="demo-client", rekey_after_records=6),
    )
    elapsed = (time.perf_counter() - started) * 1000
    console.print(
        f"  [green]authenticated[/green] in {elapsed:.1f} ms: server={session.server_name!r} "
        f"version={session.version} capabilities={list(session.capabilities)}\n"
        f"  session id {session.session_id}; traffic keys derived with HKDF-SHA256 from "
        "ECDH secret + PSK + transcript hash, one key per direction"
    )

    phase("3. Encrypted records (the tap sees only ciphertext)")
    marker = b"hello from the client: this text never appears on the wire"
    await session.send(marker)
    reply = await asyncio.wait_for(session.recv(), 10)
    console.print(
        f"  sent one MESSAGE record, the server answered {len(reply)} bytes "
        f"({reply[:20].decode()!r}...); rekey_after_records=6 forces KEY_UPDATE records soon"
    )

    phase("4. Remote exec over a channel")
    result = await session.exec(["uname", "-sr"])
    console.print(
        f"  exec ['uname', '-sr'] → exit {result.exit_code}, "
        f"stdout {result.stdout.decode().strip()!r}"
    )
    result = await session.exec("echo out; echo err >&2; exit 3")
    console.print(
        f"  exec 'echo out; echo err >&2; exit 3' → exit {result.exit_code}, "
        f"stdout {result.stdout!r}, stderr {result.stderr!r}"
    )

    phase("5. File transfer: put then get, SHA-256 verified end to end")
    tap.quiet = True
    local = workdir / "payload.bin"
    local.write_bytes(os.urandom(3 << 20))
    put = await session.put(local, "payload.bin")
    back = workdir / "payload.back"
    got = await session.get("payload.bin", back)
    same = hashlib.sha256(local.read_bytes()).digest() == hashlib.sha256(back.read_bytes()).digest()
    console.print(
        f"  put {put.bytes} bytes, got {got.bytes} bytes back, identical: {same}  "
        f"(tap relayed {tap.frames} frames so far, output muted)"
    )
    tap.quiet = False

    phase("6. Orderly close")
    await session.close()
    console.print("  CLOSE records exchanged; neither side saw a truncation")
    leaked = marker in tap.seen
    console.print(
        f"  the tap relayed {len(tap.seen)} bytes; the message text appears in them: {leaked}"
    )

    phase("7. A client with the wrong key")
    try:
        await ppcp.aio.connect("127.0.0.1", tap_port, ppcp.generate_psk())
    except ppcp.AuthenticationError as exc:
        console.print(f"  [red]refused[/red]: {exc}")
    await tap.aclose()
    await server.aclose()
    console.print("\n[bold green]Demo complete.[/bold green] Run `make test` for the full suite.")


async def _demo_discovery(server: ppcp.aio.Server, psk: str) -> None:
    assert server.discovery is not None
    port = server.discovery.port
    console.print(
        f"  responder on UDP {port}; the demo PINGs it by unicast (a LAN scan would also\n"
        "  broadcast on every interface and browse _ppcp._tcp.local. over mDNS)"
    )
    try:
        # Unicast to loopback only: the demo must not broadcast on the host's LAN.
        loopback_only = DiscoveryConfig(
            broadcast=False, multicast6=False, mdns=False, cache_path=None
        )
        found = await ppcp.aio.discover(
            port,
            timeout=1.0,
            psk=psk,
            targets=[f"127.0.0.1:{port}"],
            limit=1,
            config=loopback_only,
        )
    except ppcp.PPCPError as exc:
        console.print(f"  [red]no answer[/red]: {exc}")
        return
    for info in found:
        console.print(
            f"  PONG from {info.name!r} id={info.id[:12]}… at {list(info.addresses)} "
            f"tcp port {info.port}, rtt {(info.rtt or 0) * 1000:.2f} ms, "
            f"PSK tag verified={info.verified}"
        )


if __name__ == "__main__":
    asyncio.run(main())
