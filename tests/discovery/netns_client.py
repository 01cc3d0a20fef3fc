"""A PPCP client for the netns tests; prints one JSON document on stdout.

``find``: ppcp.find_server() by name, then ppcp.client_connect() on the socket
and one echoed message.  ``discover``: ppcp.discover().  Exit status 1 and the
DiscoveryError text on stderr when nothing is found.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import msgspec

import ppcp
from ppcp.discovery import DiscoveryConfig


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["find", "discover"])
    p.add_argument("--psk")
    p.add_argument("--name")
    p.add_argument("--port", type=int, default=ppcp.DEFAULT_PORT)
    p.add_argument("--timeout", type=float, default=3.0)
    p.add_argument("--cache")
    p.add_argument("--target", action="append", default=[])
    p.add_argument("--no-broadcast", action="store_true")
    p.add_argument("--no-multicast6", action="store_true")
    p.add_argument("--mdns", action="store_true")
    p.add_argument("--limit", type=int)
    args = p.parse_args()
    config = DiscoveryConfig(
        broadcast=not args.no_broadcast,
        multicast6=not args.no_multicast6,
        mdns=args.mdns,
        cache_path=Path(args.cache) if args.cache else None,
    )
    started = time.perf_counter()
    try:
        if args.mode == "discover":
            found = ppcp.discover(
                args.port,
                args.timeout,
                args.psk,
                name=args.name,
                limit=args.limit,
                targets=args.target,
                config=config,
            )
            print(json.dumps([msgspec.structs.asdict(info) for info in found]))
            return 0
        sock = ppcp.find_server(
            args.port, args.name, args.timeout, args.psk, targets=args.target, config=config
        )
    except ppcp.DiscoveryError as exc:
        print(exc, file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    peer = sock.getpeername()
    with ppcp.client_connect(sock, args.psk) as session:
        session.send(b"hello")
        reply = session.recv(5.0)
        name = session.server_name
    print(
        json.dumps(
            {
                "address": peer[0],
                "port": peer[1],
                "server_name": name,
                "reply": reply.decode(),
                "elapsed": elapsed,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
