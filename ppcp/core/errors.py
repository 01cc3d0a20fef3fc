"""The single PPCP error tree.

Every failure the library reports is a :class:`PPCPError`.  Each class carries
the close code that goes on the wire (RFC section "Close codes"), so whichever
side detects a problem tells the other one why, and the other side raises the
same class with ``remote=True``::

    PPCPError                       INTERNAL_ERROR
    ├── ProtocolError               PROTOCOL_ERROR
    │   ├── FrameTooLarge           FRAME_TOO_LARGE
    │   ├── MessageTooLarge         MESSAGE_TOO_LARGE
    │   ├── DecryptionError         DECRYPT_ERROR
    │   └── FlowControlError        FLOW_CONTROL_ERROR
    ├── HandshakeError              (abstract: never sent as such)
    │   ├── VersionMismatch         VERSION_MISMATCH
    │   ├── InvalidKeyShare         BAD_KEY_SHARE
    │   ├── AuthenticationError     AUTH_FAILED
    │   └── HandshakeTimeout        HANDSHAKE_TIMEOUT
    ├── ServerBusy                  SERVER_BUSY
    ├── RateLimited                 RATE_LIMITED
    ├── HeartbeatTimeout            HEARTBEAT_TIMEOUT
    ├── SessionClosed               NORMAL / GOING_AWAY (orderly close by either side)
    ├── ConnectionLost              CONNECTION_LOST (transport died without a close message)
    ├── ChannelError                CHANNEL_ERROR (one channel failed; the session lives on)
    │   ├── ChannelRejected         CHANNEL_REJECTED
    │   ├── PolicyDenied            POLICY_DENIED
    │   ├── RemotePathError         PATH_REFUSED
    │   └── TransferError           TRANSFER_FAILED
    └── DiscoveryError              (local only: nothing answered)

Library exceptions (``cryptography``'s ``InvalidTag``, ``OSError``) are mapped
to this tree in exactly one place, :func:`map_exception`.
"""

from __future__ import annotations

import enum


class CloseCode(enum.IntEnum):
    """Wire close codes (u16).  Values are normative: see docs/rfc.md."""

    NORMAL = 0x0000
    PROTOCOL_ERROR = 0x0001
    VERSION_MISMATCH = 0x0002
    AUTH_FAILED = 0x0003
    BAD_KEY_SHARE = 0x0004
    FRAME_TOO_LARGE = 0x0005
    DECRYPT_ERROR = 0x0006
    HANDSHAKE_TIMEOUT = 0x0007
    SERVER_BUSY = 0x0008
    INTERNAL_ERROR = 0x0009
    MESSAGE_TOO_LARGE = 0x000A
    HEARTBEAT_TIMEOUT = 0x000B
    GOING_AWAY = 0x000C
    RATE_LIMITED = 0x000D
    FLOW_CONTROL_ERROR = 0x000E
    # Channel-scoped codes: carried by channel REJECT/CLOSE, never close a session.
    CHANNEL_ERROR = 0x0100
    CHANNEL_REJECTED = 0x0101
    POLICY_DENIED = 0x0102
    PATH_REFUSED = 0x0103
    TRANSFER_FAILED = 0x0104
    # Local-only codes: never sent, used to classify what the transport did.
    CONNECTION_LOST = 0xFFFF


class PPCPError(Exception):
    """Base of every error PPCP raises.

    ``remote`` is True when the peer reported the error (it arrived in a close
    or alert message), False when this side detected it.
    """

    code: CloseCode = CloseCode.INTERNAL_ERROR

    def __init__(self, message: str = "", *, remote: bool = False) -> None:
        super().__init__(message or self.__class__.__doc__ or self.__class__.__name__)
        self.remote = remote

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ProtocolError(PPCPError):
    """The peer broke the protocol (malformed or unexpected bytes)."""

    code = CloseCode.PROTOCOL_ERROR


class FrameTooLarge(ProtocolError):
    """A frame's length prefix exceeds the limit for its type."""

    code = CloseCode.FRAME_TOO_LARGE


class MessageTooLarge(ProtocolError):
    """A message exceeds the configured maximum message size."""

    code = CloseCode.MESSAGE_TOO_LARGE


class DecryptionError(ProtocolError):
    """A record failed authentication: tampered, replayed, reordered or forged."""

    code = CloseCode.DECRYPT_ERROR


class FlowControlError(ProtocolError):
    """The peer sent more than the flow-control window it was granted."""

    code = CloseCode.FLOW_CONTROL_ERROR


class HandshakeError(PPCPError):
    """The handshake did not complete."""

    code = CloseCode.PROTOCOL_ERROR


class VersionMismatch(HandshakeError):
    """Client and server share no protocol version."""

    code = CloseCode.VERSION_MISMATCH


class InvalidKeyShare(HandshakeError):
    """The peer's ephemeral ECDH public key is not a valid P-256 point."""

    code = CloseCode.BAD_KEY_SHARE


class AuthenticationError(HandshakeError):
    """The peer could not prove knowledge of the pre-shared key."""

    code = CloseCode.AUTH_FAILED


class HandshakeTimeout(HandshakeError):
    """The handshake did not finish within the deadline."""

    code = CloseCode.HANDSHAKE_TIMEOUT


class ServerBusy(PPCPError):
    """The server refused the connection: too many connections in progress."""

    code = CloseCode.SERVER_BUSY


class RateLimited(PPCPError):
    """The server refused the connection: too many failures from this address."""

    code = CloseCode.RATE_LIMITED


class HeartbeatTimeout(PPCPError):
    """The peer stopped answering heartbeats and was declared dead."""

    code = CloseCode.HEARTBEAT_TIMEOUT


class SessionClosed(PPCPError):
    """The session was closed in an orderly way."""

    code = CloseCode.NORMAL


class ConnectionLost(PPCPError):
    """The transport failed or ended without a close message (possible truncation)."""

    code = CloseCode.CONNECTION_LOST


class ChannelError(PPCPError):
    """One channel failed; the session itself is still usable."""

    code = CloseCode.CHANNEL_ERROR


class ChannelRejected(ChannelError):
    """The peer refused to open the channel."""

    code = CloseCode.CHANNEL_REJECTED


class PolicyDenied(ChannelError):
    """The server's policy forbids this request (exec disabled, not on the allow-list)."""

    code = CloseCode.POLICY_DENIED


class RemotePathError(ChannelError):
    """The server refused a path (outside its root, a device, a bad name...)."""

    code = CloseCode.PATH_REFUSED


class TransferError(ChannelError):
    """A file transfer failed (I/O error, disk full, checksum mismatch)."""

    code = CloseCode.TRANSFER_FAILED


class DiscoveryError(PPCPError):
    """No server answered the discovery request."""

    code = CloseCode.INTERNAL_ERROR


_BY_CODE: dict[int, type[PPCPError]] = {}
for _cls in (
    ProtocolError,
    FrameTooLarge,
    MessageTooLarge,
    DecryptionError,
    FlowControlError,
    VersionMismatch,
    InvalidKeyShare,
    AuthenticationError,
    HandshakeTimeout,
    ServerBusy,
    RateLimited,
    HeartbeatTimeout,
    SessionClosed,
    ChannelError,
    ChannelRejected,
    PolicyDenied,
    RemotePathError,
    TransferError,
):
    _BY_CODE.setdefault(int(_cls.code), _cls)
_BY_CODE[int(CloseCode.GOING_AWAY)] = SessionClosed
_BY_CODE[int(CloseCode.INTERNAL_ERROR)] = PPCPError


def error_for_code(code: int, reason: str, *, remote: bool = True) -> PPCPError:
    """Build the error a received close/alert code stands for."""
    cls = _BY_CODE.get(code, PPCPError)
    text = reason or (cls.__doc__ or cls.__name__)
    if remote and code not in (CloseCode.NORMAL, CloseCode.GOING_AWAY):
        text = f"peer reported: {text}"
    return cls(text, remote=remote)


def map_exception(exc: BaseException) -> PPCPError:
    """The one boundary where foreign exceptions become PPCP errors."""
    if isinstance(exc, PPCPError):
        return exc
    # Imported lazily: cryptography is heavy and the CLI's --help must stay fast.
    from cryptography.exceptions import InvalidTag

    if isinstance(exc, InvalidTag):
        return DecryptionError("record authentication failed (tampered, replayed or reordered)")
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return ConnectionLost(f"connection lost: {exc.strerror or exc}")
    if isinstance(exc, TimeoutError):
        return HandshakeTimeout("timed out")
    if isinstance(exc, OSError):
        return ConnectionLost(f"network error: {exc.strerror or exc}")
    return PPCPError(f"internal error: {type(exc).__name__}: {exc}")
