"""Server side: which services a session offers, and under which policy.

Every channel the client opens is routed here by kind.  Nothing is routed
before the handshake has authenticated the client: channels only exist on
an OPEN connection (see ppcp/core/states.py).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from msgspec import Struct, field

from ppcp.control.aio_channel import AsyncChannel
from ppcp.core.errors import CloseCode

ServiceHandler = Callable[[AsyncChannel, "ServerPolicy"], Awaitable[None]]
# on_message(peer_name, topic, data) -> reply (bytes) or None, possibly awaitable.
MessageHook = Callable[[str, str, bytes], Awaitable[bytes | None] | bytes | None]

# kind -> "module:function"; modules are imported on first use.
SERVICES: dict[str, str] = {
    "exec": "ppcp.control.exec:serve_exec",
    "shell": "ppcp.control.shell:serve_shell",
    "file-put": "ppcp.control.files:serve_put",
    "file-get": "ppcp.control.files:serve_get",
    "message": "ppcp.control.messages:serve_message",
}


class ServerPolicy(Struct, frozen=True):
    """What an authenticated client may do.  Safe defaults, all configurable."""

    allow_exec: bool = True
    # None: any command.  Otherwise argv[0] must be in this list (exact match),
    # a command string is accepted only if it is plain words (no shell syntax)
    # and is then run without a shell, env overrides are refused, and
    # interactive shells are refused.
    exec_allowlist: tuple[str, ...] | None = None
    allow_shell: bool = True
    allow_files: bool = True
    # Every path from the network is confined to this directory.
    root: Path = field(default_factory=Path.cwd)
    allow_messages: bool = True
    max_exec_seconds: float | None = None
    # Called for every message received on a message channel (after it is
    # logged at INFO on "ppcp.server"); a returned reply goes back on the channel.
    on_message: MessageHook | None = None


async def route(channel: AsyncChannel, policy: ServerPolicy) -> None:
    target = SERVICES.get(channel.kind)
    if target is None:
        channel.reject(CloseCode.CHANNEL_REJECTED, f"unknown service {channel.kind!r}")
        return
    module_name, _, func_name = target.partition(":")
    # sys.modules first: import_module's own lookup is a few us per channel.
    module = sys.modules.get(module_name) or importlib.import_module(module_name)
    handler: ServiceHandler = getattr(module, func_name)
    await handler(channel, policy)
