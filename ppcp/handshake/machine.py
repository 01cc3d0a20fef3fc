"""The handshake orchestrator: hello exchange -> ECDH -> AUTH (sans-I/O).

It consumes handshake frames and returns the frames to send; when the peer is
authenticated it hands back a :class:`HandshakeResult` with the traffic keys.
Which frame may arrive in which state is decided by :mod:`ppcp.core.states`;
this module only checks contents.
"""

from __future__ import annotations

import functools

from msgspec import Struct, field

from ppcp.core.errors import AuthenticationError, ProtocolError, VersionMismatch
from ppcp.core.states import Role
from ppcp.crypto.schedule import HandshakeSecrets, TrafficKeys, proofs_equal, transcript_hash
from ppcp.handshake.messages import (
    MAX_CAPABILITIES,
    MAX_VERSIONS,
    RANDOM_LEN,
    ClientHello,
    ServerHello,
    check_name,
    decode_proof,
    valid_capability,
)
from ppcp.key_exchange.ecdh import POINT_LEN, EphemeralKey, RandomSource
from ppcp.transport.frames import MAX_HANDSHAKE_BODY, Frame, FrameType, encode_frame
from ppcp.utils.records import repr_hiding

PROTOCOL_VERSIONS: tuple[int, ...] = (1,)
# The record features every PPCP 1 connection offers unless told otherwise.
CORE_CAPABILITIES: tuple[str, ...] = ("msg", "channels", "heartbeat")


class HandshakeConfig(Struct, frozen=True):
    name: str
    versions: tuple[int, ...] = PROTOCOL_VERSIONS
    capabilities: tuple[str, ...] = CORE_CAPABILITIES

    def __post_init__(self) -> None:
        _check_hello_settings(self.name, tuple(self.versions), tuple(self.capabilities))


# Cached: a config is built for each connection (often from a fresh
# SessionConfig per connect), and the size check encodes a whole hello.
# A failed check raises and is not cached, so bad settings raise every time.
@functools.lru_cache(maxsize=64)
def _check_hello_settings(
    name: str, versions: tuple[int, ...], capabilities: tuple[str, ...]
) -> None:
    check_name(name)
    if not 0 < len(versions) <= MAX_VERSIONS or any(not 0 < v < 256 for v in versions):
        raise ValueError(f"versions must be 1..{MAX_VERSIONS} integers in 1..255")
    if len(capabilities) > MAX_CAPABILITIES:
        raise ValueError(f"at most {MAX_CAPABILITIES} capabilities")
    for cap in capabilities:
        if not valid_capability(cap):
            raise ValueError(f"malformed capability name {cap!r}")
    if len(set(capabilities)) != len(capabilities):
        raise ValueError("duplicate capability")
    # The largest hello this config can produce must fit one handshake frame.
    probe = ClientHello(versions, bytes(RANDOM_LEN), bytes(POINT_LEN), name, capabilities)
    if len(probe.encode()) > MAX_HANDSHAKE_BODY:
        raise ValueError("name and capabilities do not fit in one handshake frame")


class HandshakeResult(Struct, frozen=True):
    version: int
    capabilities: tuple[str, ...]
    peer_name: str
    session_id: bytes
    send_keys: TrafficKeys
    recv_keys: TrafficKeys

    def __repr__(self) -> str:
        return repr_hiding(self, frozenset({"send_keys", "recv_keys"}))


class HandshakeMachine(Struct):
    role: Role
    psk_key: bytes
    config: HandshakeConfig
    rng: RandomSource
    _transcript: list[bytes] = field(default_factory=list)
    _ephemeral: EphemeralKey | None = None
    _random: bytes = b""
    _secrets: HandshakeSecrets | None = None
    _client_hello: ClientHello | None = None
    _server_hello: ServerHello | None = None

    def __repr__(self) -> str:
        return repr_hiding(self, frozenset({"psk_key"}))

    def _fresh(self) -> None:
        self._random = self.rng(RANDOM_LEN)
        if len(self._random) != RANDOM_LEN:
            raise ProtocolError("random source returned a short read")
        self._ephemeral = EphemeralKey(self.rng)

    def _record(self, frame_type: FrameType, body: bytes) -> bytes:
        wire = encode_frame(frame_type, body)
        self._transcript.append(wire)
        return wire

    # -- client -------------------------------------------------------------

    def client_hello(self) -> bytes:
        self._fresh()
        assert self._ephemeral is not None
        hello = ClientHello(
            self.config.versions,
            self._random,
            self._ephemeral.public_bytes,
            self.config.name,
            self.config.capabilities,
        )
        self._client_hello = hello
        return self._record(FrameType.CLIENT_HELLO, hello.encode())

    def on_server_hello(self, frame: Frame) -> bytes:
        hello = ServerHello.decode(frame.body)
        sent = self._client_hello
        assert sent is not None and self._ephemeral is not None
        if hello.version not in sent.versions:
            raise ProtocolError(f"server selected version {hello.version}, which was not offered")
        if not set(hello.capabilities) <= set(sent.capabilities):
            raise ProtocolError("server selected capabilities that were not offered")
        self._server_hello = hello
        self._transcript.append(frame.header + frame.body)
        hello_hash = transcript_hash(*self._transcript)
        secrets = HandshakeSecrets.derive(
            self.psk_key, self._ephemeral.exchange(hello.key_share), hello_hash
        )
        self._secrets = secrets
        return self._record(FrameType.CLIENT_AUTH, secrets.client_proof(hello_hash))

    def on_server_auth(self, frame: Frame) -> HandshakeResult:
        secrets, hello = self._secrets, self._server_hello
        assert secrets is not None and hello is not None
        received = decode_proof(frame.body, "SERVER_AUTH")
        expected = secrets.server_proof(transcript_hash(*self._transcript))
        if not proofs_equal(received, expected):
            raise AuthenticationError(
                "the server could not prove it holds the pre-shared key (wrong key, or an impostor)"
            )
        self._transcript.append(frame.header + frame.body)
        return self._result(hello.version, hello.capabilities, hello.name)

    # -- server -------------------------------------------------------------

    def on_client_hello(self, frame: Frame) -> bytes:
        hello = ClientHello.decode(frame.body)
        common = [v for v in self.config.versions if v in hello.versions]
        if not common:
            raise VersionMismatch(
                f"no common protocol version: client offers {list(hello.versions)}, "
                f"server supports {list(self.config.versions)}"
            )
        self._client_hello = hello
        self._transcript.append(frame.header + frame.body)
        self._fresh()
        assert self._ephemeral is not None
        # The client's point is validated here, before anything is sent back.
        ecdh_secret = self._ephemeral.exchange(hello.key_share)
        offered = set(hello.capabilities)
        reply = ServerHello(
            max(common),
            self._random,
            self._ephemeral.public_bytes,
            self.config.name,
            tuple(c for c in self.config.capabilities if c in offered),
        )
        self._server_hello = reply
        wire = self._record(FrameType.SERVER_HELLO, reply.encode())
        self._secrets = HandshakeSecrets.derive(
            self.psk_key, ecdh_secret, transcript_hash(*self._transcript)
        )
        return wire

    def on_client_auth(self, frame: Frame) -> tuple[bytes, HandshakeResult]:
        secrets, hello, reply = self._secrets, self._client_hello, self._server_hello
        assert secrets is not None and hello is not None and reply is not None
        received = decode_proof(frame.body, "CLIENT_AUTH")
        expected = secrets.client_proof(transcript_hash(*self._transcript))
        if not proofs_equal(received, expected):
            raise AuthenticationError("the client could not prove it holds the pre-shared key")
        self._transcript.append(frame.header + frame.body)
        wire = self._record(
            FrameType.SERVER_AUTH, secrets.server_proof(transcript_hash(*self._transcript))
        )
        return wire, self._result(reply.version, reply.capabilities, hello.name)

    # -- both ---------------------------------------------------------------

    def _result(self, version: int, caps: tuple[str, ...], peer_name: str) -> HandshakeResult:
        assert self._secrets is not None
        full_hash = transcript_hash(*self._transcript)
        c2s, s2c = self._secrets.traffic(full_hash)
        send, recv = (c2s, s2c) if self.role is Role.CLIENT else (s2c, c2s)
        # Forward secrecy: the ephemeral key and handshake secrets are dropped
        # as soon as the traffic keys exist.
        self._ephemeral = None
        self._secrets = None
        return HandshakeResult(version, caps, peer_name, full_hash[:16], send, recv)
