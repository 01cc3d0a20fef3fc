"""Servers the measurements talk to, usable in-process or in a child process.

* :func:`start_ppcp` - ``ppcp.aio.serve`` with the default services, files
  confined to ``root``.
* :func:`start_asyncssh` - an asyncssh server with the same two services the
  comparisons need: exec (a real subprocess per command, like PPCP and sshd)
  and SFTP (chrooted to ``root``).

``python -m bench.peers ppcp|asyncssh ...`` runs one of them as a separate
process (so its memory and CPU can be measured on their own) until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import getpass
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import LOOPBACK, start_profiler, stop_profiler, use_uvloop_if_asked

PSK_ENV = "PPCP_BENCH_PSK"


# -- PPCP -----------------------------------------------------------------------------


async def start_ppcp(
    root: Path,
    psk: str,
    port: int = 0,
    *,
    heartbeat: float | None = None,
    max_unauthenticated: int | None = None,
) -> Any:
    """A PPCP server on loopback; discovery off.

    ``max_unauthenticated`` raises both handshake caps (total and per source
    address): the many-sessions benchmarks come from one address on purpose.
    """
    import inspect

    import ppcp.aio
    from ppcp.control.router import ServerPolicy
    from ppcp.core.config import SessionConfig

    config: dict[str, Any] = {"name": "bench-server"}
    if heartbeat is not None:
        config["heartbeat_interval"] = heartbeat
    kwargs: dict[str, Any] = {"config": SessionConfig(**config), "policy": ServerPolicy(root=root)}
    params = inspect.signature(ppcp.aio.serve).parameters
    if "discovery" in params:
        kwargs["discovery"] = False
    if max_unauthenticated:
        if "limits" in params:
            from ppcp.core.limits import ServerLimits

            kwargs["limits"] = ServerLimits(
                max_unauthenticated=max_unauthenticated,
                max_unauthenticated_per_source=max_unauthenticated,
            )
        else:
            kwargs["max_unauthenticated"] = max_unauthenticated
    return await ppcp.aio.serve(LOOPBACK, port, psk, **kwargs)


@functools.cache
def ppcp_client_config(*, binary: bool = True, heartbeat: float | None = None) -> Any:
    """Client settings; ``binary=False`` withholds "binary-data" (forces base64).

    One instance per set of arguments, as a program opening many sessions
    would keep one (a config is frozen).
    """
    from ppcp.core.config import SUPPORTED_CAPABILITIES, SessionConfig

    kwargs: dict[str, Any] = {"name": "bench-client"}
    if not binary:
        kwargs["capabilities"] = tuple(c for c in SUPPORTED_CAPABILITIES if c != "binary-data")
    if heartbeat is not None:
        kwargs["heartbeat_interval"] = heartbeat
    return SessionConfig(**kwargs)


def binary_supported() -> bool:
    from ppcp.core.config import SUPPORTED_CAPABILITIES

    return "binary-data" in SUPPORTED_CAPABILITIES


# -- asyncssh -------------------------------------------------------------------------


@dataclass(frozen=True)
class SshKeys:
    """Throwaway asyncssh host and client keys (ed25519) in ``dir``."""

    dir: Path

    @property
    def host_key(self) -> Path:
        return self.dir / "as_host"

    @property
    def client_key(self) -> Path:
        return self.dir / "as_client"

    @property
    def authorized_keys(self) -> Path:
        return self.dir / "as_authorized_keys"

    @classmethod
    def create(cls, directory: Path) -> SshKeys:
        import asyncssh

        keys = cls(directory)
        host = asyncssh.generate_private_key("ssh-ed25519")
        client = asyncssh.generate_private_key("ssh-ed25519")
        host.write_private_key(str(keys.host_key))
        client.write_private_key(str(keys.client_key))
        client.write_public_key(str(keys.authorized_keys))
        return keys


async def _asyncssh_exec(process: Any) -> None:
    """Run the command in a real subprocess (sshd and PPCP do too), pumping its I/O.

    Through the user's login shell, as sshd and the PPCP server do, so that
    every side pays for the same shell (``create_subprocess_shell`` would use
    /bin/sh: on Debian dash starts 0.5 ms faster than bash, a third of a
    warm exec).  (asyncssh's own ``process.redirect`` leaves an un-awaited
    cleanup coroutine behind per command, hence the explicit pumps.)
    """
    from ppcp.control.exec import user_shell

    proc = await asyncio.create_subprocess_exec(
        user_shell(),
        "-c",
        process.command or "true",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    command_stdin = proc.stdin

    async def feed() -> None:
        with contextlib.suppress(Exception):
            while data := await process.stdin.read(1 << 16):
                command_stdin.write(data)
                await command_stdin.drain()
        command_stdin.close()

    async def pump(src: asyncio.StreamReader, dst: Any) -> None:
        while data := await src.read(1 << 16):
            dst.write(data)
            await dst.drain()

    feeder = asyncio.ensure_future(feed())
    try:
        await asyncio.gather(pump(proc.stdout, process.stdout), pump(proc.stderr, process.stderr))
        code = await proc.wait()
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
    process.exit(code)


async def start_asyncssh(
    root: Path, keys: SshKeys, port: int = 0, *, keepalive: float | None = None
) -> Any:
    import asyncssh

    def sftp_factory(chan: Any) -> Any:
        return asyncssh.SFTPServer(chan, chroot=str(root).encode())

    kwargs: dict[str, Any] = {}
    if keepalive:
        kwargs["keepalive_interval"] = keepalive
    return await asyncssh.listen(
        LOOPBACK,
        port,
        server_host_keys=[str(keys.host_key)],
        authorized_client_keys=str(keys.authorized_keys),
        process_factory=_asyncssh_exec,
        sftp_factory=sftp_factory,
        allow_scp=False,
        encoding=None,
        **kwargs,
    )


async def asyncssh_connect(port: int, keys: SshKeys, *, keepalive: float | None = None) -> Any:
    import asyncssh

    kwargs: dict[str, Any] = {}
    if keepalive:
        kwargs["keepalive_interval"] = keepalive
    return await asyncssh.connect(
        LOOPBACK,
        port,
        username=getpass.getuser(),
        client_keys=[str(keys.client_key)],
        known_hosts=None,
        config=None,
        **kwargs,
    )


def server_port(server: Any) -> int:
    """The bound port of a PPCP Server or an asyncssh acceptor."""
    port = getattr(server, "port", None)
    if isinstance(port, int):
        return port
    get_port = getattr(server, "get_port", None)
    if get_port is not None:
        return int(get_port())
    return int(server.sockets[0].getsockname()[1])


# -- child process entry point ------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> None:
    profiler = start_profiler(args.profiler if args.profile else None)
    if args.kind == "ppcp":
        psk = os.environ[PSK_ENV]
        server = await start_ppcp(
            Path(args.root),
            psk,
            args.port,
            heartbeat=args.heartbeat,
            max_unauthenticated=args.max_unauthenticated,
        )
    elif args.kind == "floor":
        from bench.exec_floor import start_floor_server

        server = await start_floor_server(args.port)
    else:
        server = await start_asyncssh(
            Path(args.root), SshKeys(Path(args.keys)), args.port, keepalive=args.heartbeat
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"port": server_port(server), "pid": os.getpid()}), flush=True)
    await stop.wait()
    stop_profiler(profiler, args.profiler, args.profile)
    server.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.wait_closed(), 3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["ppcp", "asyncssh", "floor"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--keys", help="asyncssh key dir")
    parser.add_argument("--heartbeat", type=float, default=None)
    parser.add_argument("--max-unauthenticated", type=int, default=None)
    parser.add_argument("--profile", help="write a profile here on exit")
    parser.add_argument("--profiler", choices=["pyinstrument", "cprofile"], default="pyinstrument")
    args = parser.parse_args(argv)
    use_uvloop_if_asked()
    asyncio.run(_serve(args))
    sys.exit(0)


if __name__ == "__main__":
    main()
