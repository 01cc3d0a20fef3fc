"""PPCP: the Ping-Pong Communication Protocol.

Zero-configuration, mutually authenticated, forward-secret, encrypted remote
control for the machines on your LAN.  The seed's API::

    from ppcp import create_tcp_server, server_accept, client_connect

The asyncio twin lives in :mod:`ppcp.aio`.
"""

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
    "AuthenticationError",
    "ChannelError",
    "ChannelRejected",
    "CloseCode",
    "ConnectionLost",
    "DecryptionError",
    "DiscoveryError",
    "FlowControlError",
    "FrameTooLarge",
    "HandshakeError",
    "HandshakeTimeout",
    "HeartbeatTimeout",
    "InvalidKeyShare",
    "InvalidPSK",
    "MessageTooLarge",
    "PPCPError",
    "PolicyDenied",
    "ProtocolError",
    "RateLimited",
    "RemotePathError",
    "ServerBusy",
    "Session",
    "SessionClosed",
    "SessionConfig",
    "TransferError",
    "VersionMismatch",
    "WeakPSKWarning",
    "__version__",
    "client_connect",
    "connect",
    "create_tcp_server",
    "generate_psk",
    "server_accept",
]
