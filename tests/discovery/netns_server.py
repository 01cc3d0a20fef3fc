"""A PPCP server for the netns tests: serve(), echo each message, run until stdin closes.

With ``--uvloop`` it runs on uvloop, as ``ppcp serve`` does where uvloop is installed.

Prints ``ready tcp=<port> udp=<port> id=<server id>`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import ppcp
import ppcp.aio
from ppcp.discovery import ResponderLimits
from ppcp.discovery.responder import DiscoveryService


async def echo(session: ppcp.aio.AsyncSession) -> None:
    async for message in session:
        await session.send(b"echo:" + message)


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--psk", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--discovery-port", type=int, default=ppcp.DEFAULT_PORT)
    p.add_argument("--id-path")
    p.add_argument("--mdns", action="store_true")
    p.add_argument("--rate", type=float, help="per-source PONG rate (benchmark only)")
    args = p.parse_args()
    server = await ppcp.aio.serve(
        None,
        args.port,
        args.psk,
        echo,
        config=ppcp.SessionConfig(name=args.name),
        discovery_port=args.discovery_port,
        server_id_path=args.id_path,
        mdns=args.mdns,
    )
    assert server.discovery is not None
    if args.rate:
        # Benchmarks PING one server hundreds of times a second from one address.
        await server.discovery.aclose()
        limits = ResponderLimits(
            per_source_rate=args.rate, per_source_burst=args.rate, global_rate=args.rate
        )
        server.discovery = await DiscoveryService.start(
            server._psk_key,
            server.discovery.identity,
            port=args.discovery_port,
            mdns=False,
            limits=limits,
        )
    d = server.discovery
    print(f"ready tcp={server.port} udp={d.port} id={d.server_id}", flush=True)
    loop = asyncio.get_running_loop()
    # Run until the parent closes our stdin (or kills us).
    await loop.run_in_executor(None, sys.stdin.read)
    await server.aclose()


if __name__ == "__main__":
    if "--uvloop" in sys.argv:  # as `ppcp serve` runs where uvloop is installed
        sys.argv.remove("--uvloop")
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(main())
