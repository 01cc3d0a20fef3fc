"""PPCP: the Ping-Pong Communication Protocol.

Zero-configuration, mutually authenticated, forward-secret, encrypted remote
control for the machines on your LAN.  The seed's API::

    from ppcp import create_tcp_server, server_accept, client_connect

The asyncio twin lives in :mod:`ppcp.aio`.
"""

from typing import TYPE_CHECKING

from ppcp.utils.lazy import lazy_exports

if TYPE_CHECKING:
    from ppcp.control.exec import AsyncProcess, ExecResult, Process
    from ppcp.control.files import TransferResult
    from ppcp.control.messages import MessageChannel, MessageInbox, SyncMessageChannel
    from ppcp.control.shell import AsyncShell, Shell
    from ppcp.core.config import DEFAULT_PORT, SessionConfig
    from ppcp.core.errors import (
        AuthenticationError,
        ChannelError,
        ChannelRejected,
        CloseCode,
        ConnectionLost,
        DecryptionError,
        DiscoveryError,
        FlowControlError,
        FrameTooLarge,
        HandshakeError,
        HandshakeTimeout,
        HeartbeatTimeout,
        InvalidKeyShare,
        MessageTooLarge,
        PolicyDenied,
        PPCPError,
        ProtocolError,
        RateLimited,
        RemotePathError,
        ServerBusy,
        SessionClosed,
        TransferError,
        VersionMismatch,
    )
    from ppcp.crypto.psk import InvalidPSK, WeakPSKWarning, generate_psk
    from ppcp.discovery import ServerInfo, discover, find_server
    from ppcp.transport.blocking import (
        Session,
        client_connect,
        connect,
        create_tcp_server,
        server_accept,
    )

# Public name -> module, imported on first use (PEP 562): `import ppcp`, and with it
# `ppcp --help`, does not load asyncio, cryptography, discovery and the services.
_LAZY: dict[str, str] = {
    "AsyncProcess": "ppcp.control.exec",
    "ExecResult": "ppcp.control.exec",
    "Process": "ppcp.control.exec",
    "TransferResult": "ppcp.control.files",
    "MessageChannel": "ppcp.control.messages",
    "MessageInbox": "ppcp.control.messages",
    "SyncMessageChannel": "ppcp.control.messages",
    "AsyncShell": "ppcp.control.shell",
    "Shell": "ppcp.control.shell",
    "DEFAULT_PORT": "ppcp.core.config",
    "SessionConfig": "ppcp.core.config",
    "AuthenticationError": "ppcp.core.errors",
    "ChannelError": "ppcp.core.errors",
    "ChannelRejected": "ppcp.core.errors",
    "CloseCode": "ppcp.core.errors",
    "ConnectionLost": "ppcp.core.errors",
    "DecryptionError": "ppcp.core.errors",
    "DiscoveryError": "ppcp.core.errors",
    "FlowControlError": "ppcp.core.errors",
    "FrameTooLarge": "ppcp.core.errors",
    "HandshakeError": "ppcp.core.errors",
    "HandshakeTimeout": "ppcp.core.errors",
    "HeartbeatTimeout": "ppcp.core.errors",
    "InvalidKeyShare": "ppcp.core.errors",
    "MessageTooLarge": "ppcp.core.errors",
    "PolicyDenied": "ppcp.core.errors",
    "PPCPError": "ppcp.core.errors",
    "ProtocolError": "ppcp.core.errors",
    "RateLimited": "ppcp.core.errors",
    "RemotePathError": "ppcp.core.errors",
    "ServerBusy": "ppcp.core.errors",
    "SessionClosed": "ppcp.core.errors",
    "TransferError": "ppcp.core.errors",
    "VersionMismatch": "ppcp.core.errors",
    "InvalidPSK": "ppcp.crypto.psk",
    "WeakPSKWarning": "ppcp.crypto.psk",
    "generate_psk": "ppcp.crypto.psk",
    "ServerInfo": "ppcp.discovery",
    "discover": "ppcp.discovery",
    "find_server": "ppcp.discovery",
    "Session": "ppcp.transport.blocking",
    "client_connect": "ppcp.transport.blocking",
    "connect": "ppcp.transport.blocking",
    "create_tcp_server": "ppcp.transport.blocking",
    "server_accept": "ppcp.transport.blocking",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PORT",
    "AsyncProcess",
    "AsyncShell",
    "AuthenticationError",
    "ChannelError",
    "ChannelRejected",
    "CloseCode",
    "ConnectionLost",
    "DecryptionError",
    "DiscoveryError",
    "ExecResult",
    "FlowControlError",
    "FrameTooLarge",
    "HandshakeError",
    "HandshakeTimeout",
    "HeartbeatTimeout",
    "InvalidKeyShare",
    "InvalidPSK",
    "MessageChannel",
    "MessageInbox",
    "MessageTooLarge",
    "PPCPError",
    "PolicyDenied",
    "Process",
    "ProtocolError",
    "RateLimited",
    "RemotePathError",
    "ServerBusy",
    "ServerInfo",
    "Session",
    "SessionClosed",
    "SessionConfig",
    "Shell",
    "SyncMessageChannel",
    "TransferError",
    "TransferResult",
    "VersionMismatch",
    "WeakPSKWarning",
    "__version__",
    "client_connect",
    "connect",
    "create_tcp_server",
    "discover",
    "find_server",
    "generate_psk",
    "server_accept",
]
