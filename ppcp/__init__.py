"""PPCP: the Ping-Pong Communication Protocol.

Zero-configuration, mutually authenticated, forward-secret, encrypted remote
control for the machines on your LAN.  The seed's API::

    from ppcp import create_tcp_server, server_accept, client_connect

The asyncio twin lives in :mod:`ppcp.aio`.
"""

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
