"""Attacks on the handshake by a network attacker without the PSK.

Each test plays one attack and asserts the exact outcome, so it fails if the
defence it names is removed:

* offline-oracle minimisation: the server proves nothing until the client has;
* reflection: client and server proofs use distinct keys and labels;
* replay of a recorded session: fresh randomness on each side;
* Terrapin-style injection or deletion of frames during the handshake: every
  handshake frame is in the transcript, and the state table ignores nothing;
* downgrade of versions or capabilities: the hellos are in the transcript;
* invalid curve points: rejected before anything is derived or proven.
"""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from hardening_util import (
    OTHER_PSK,
    OTHER_PSK_TEXT,
    PSK,
    PSK_TEXT,
    WAIT,
    FramePipe,
    Proxy,
    alert_code,
    client_conn,
    conn_config,
    feed_error,
    fixed_rng,
    frames_of,
    read_all,
    running_server,
    server_conn,
    session_config,
    settle,
    wire,
)

import ppcp.aio
from ppcp.core.errors import (
    AuthenticationError,
    CloseCode,
    DecryptionError,
    InvalidKeyShare,
    ProtocolError,
)
from ppcp.core.events import MessageReceived
from ppcp.core.states import Role, State
from ppcp.handshake.messages import ClientHello, ServerHello
from ppcp.key_exchange.ecdh import POINT_LEN
from ppcp.transport.connection import ConnectionConfig
from ppcp.transport.frames import Frame, FrameType, encode_frame

# -- offline-oracle minimisation ---------------------------------------------------------------


def test_failed_client_gets_server_hello_then_alert_only() -> None:
    """A client with the wrong key receives SERVER_HELLO, then ALERT(AUTH_FAILED): no proof."""
    pipe = FramePipe(client_conn(OTHER_PSK), server_conn(PSK)).handshake()
    sent = pipe.server.frames_sent
    assert [f.type for f in sent] == [FrameType.SERVER_HELLO, FrameType.ALERT]
    assert alert_code(sent[1]) == CloseCode.AUTH_FAILED
    assert isinstance(pipe.server.error, AuthenticationError)
    assert not pipe.client.established and not pipe.server.established


def test_server_output_to_a_failed_client_does_not_depend_on_the_psk() -> None:
    """Byte for byte, what the server sends a failing client is the same whatever its PSK is.

    Same client bytes in, same server randomness: if anything the server sent
    were derived from its PSK, two servers with different PSKs would differ.
    """
    outputs = []
    for server_psk in (PSK, derive_other(b"one"), derive_other(b"two")):
        client = client_conn(OTHER_PSK, rng=fixed_rng(b"client"))
        server = server_conn(server_psk, rng=fixed_rng(b"server"))
        pipe = FramePipe(client, server).handshake()
        assert pipe.server.error is not None
        outputs.append(bytes(pipe.server.bytes_sent))
    assert outputs[0] == outputs[1] == outputs[2]


def derive_other(tag: bytes) -> bytes:
    import hashlib

    return hashlib.sha256(b"another psk " + tag).digest()


async def test_loopback_failed_auth_sees_hello_and_alert_only() -> None:
    """The same over a real socket against ppcp.aio.serve: exactly two frames, then EOF."""
    async with running_server() as (server, recorder):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        attacker = client_conn(OTHER_PSK)
        attacker.initiate()
        writer.write(attacker.data_to_send())
        hello = await asyncio.wait_for(reader.readexactly(6), WAIT)
        body = await asyncio.wait_for(reader.readexactly(int.from_bytes(hello[2:], "big")), WAIT)
        # A wrong-key client computes its proof without noticing anything yet.
        attacker.receive_data(hello + body)
        writer.write(attacker.data_to_send())
        rest = await read_all(reader)
        writer.close()
        frames = frames_of(hello + body + rest)
        assert [f.type for f in frames] == [FrameType.SERVER_HELLO, FrameType.ALERT]
        assert alert_code(frames[1]) == CloseCode.AUTH_FAILED
        await settle(server)
        assert recorder.established == 0


# -- reflection ----------------------------------------------------------------------------------


def test_client_proof_reflected_as_server_proof_is_rejected() -> None:
    """An impostor mirrors the client's hello back and reflects its proof as SERVER_AUTH."""
    client = client_conn(PSK)
    client.initiate()
    ch = frames_of(client.data_to_send())[0]
    hello = ClientHello.decode(ch.body)
    mirror = ServerHello(1, hello.random, hello.key_share, "impostor", hello.capabilities)
    client.receive_data(encode_frame(FrameType.SERVER_HELLO, mirror.encode()))
    (ca,) = frames_of(client.data_to_send())
    assert ca.type == FrameType.CLIENT_AUTH
    with pytest.raises(AuthenticationError):
        client.receive_data(encode_frame(FrameType.SERVER_AUTH, ca.body))
    assert client.state is State.FAILED and client.result is None


def test_server_proof_replayed_as_client_proof_is_rejected() -> None:
    """A proof the attacker relayed from one session is no CLIENT_AUTH in another."""
    relayed = FramePipe(client_conn(PSK), server_conn(PSK)).handshake()
    assert relayed.client.established
    server_auth = next(f for f in relayed.server.frames_sent if f.type == FrameType.SERVER_AUTH)
    client_auth = next(f for f in relayed.client.frames_sent if f.type == FrameType.CLIENT_AUTH)

    for proof in (server_auth.body, client_auth.body):
        attacker = client_conn(OTHER_PSK)
        attacker.initiate()
        victim = server_conn(PSK)
        victim.receive_data(attacker.data_to_send())
        victim.data_to_send()
        with pytest.raises(AuthenticationError):
            victim.receive_data(encode_frame(FrameType.CLIENT_AUTH, proof))
        assert [f.type for f in frames_of(victim.data_to_send())] == [FrameType.ALERT]


def test_records_reflected_to_their_sender_do_not_decrypt() -> None:
    """c2s and s2c keys differ: a client's own record sent back to it fails."""
    pipe = FramePipe(client_conn(PSK), server_conn(PSK)).handshake()
    client = pipe.client.conn
    client.send_message(b"attack at dawn")
    record = client.data_to_send()
    with pytest.raises(DecryptionError):
        client.receive_data(record)


# -- replay of a whole recorded session -----------------------------------------------------------


async def test_replayed_session_fails_authentication() -> None:
    """Record a real session's client bytes through a proxy; replay them on a new connection."""
    async with running_server() as (server, recorder):
        proxy = await Proxy(server.port).start()
        try:
            cfg = session_config("replayed-client")
            async with await ppcp.aio.connect("127.0.0.1", proxy.port, PSK_TEXT, config=cfg) as s:
                for message in (b"rm -rf /tmp/x", b"second"):
                    await s.send(message)
                    assert await asyncio.wait_for(s.recv(), WAIT) == message
            await asyncio.wait_for(proxy.done.wait(), WAIT)
        finally:
            await proxy.aclose()
        recorded = bytes(proxy.client_bytes)
        assert recorder.established == 1
        kinds = [f.type for f in frames_of(recorded)]
        assert kinds[:2] == [FrameType.CLIENT_HELLO, FrameType.CLIENT_AUTH]
        assert FrameType.MESSAGE in kinds

        # Replay all at once, then segment by segment as originally sent.
        for replay in ([recorded], list(proxy.client_segments)):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            for segment in replay:
                writer.write(segment)
            answer = await read_all(reader)
            writer.close()
            frames = frames_of(answer)
            assert [f.type for f in frames] == [FrameType.SERVER_HELLO, FrameType.ALERT]
            assert alert_code(frames[1]) == CloseCode.AUTH_FAILED
        await settle(server)
        assert recorder.established == 1, "a replayed session was accepted"

        # And the server's side of the recording means nothing to a new client.
        client = client_conn(PSK)
        client.initiate()
        with pytest.raises(AuthenticationError):
            client.receive_data(bytes(proxy.server_bytes))


# -- Terrapin-style injection and deletion during the handshake -----------------------------------

EXTRA_FRAMES = {
    "unknown-type": encode_frame(0x06, b""),
    "empty-message": encode_frame(FrameType.MESSAGE, b""),
    "fake-record": encode_frame(FrameType.MESSAGE, bytes(32)),
    "heartbeat": encode_frame(FrameType.HEARTBEAT, bytes(24)),
    "key-update": encode_frame(FrameType.KEY_UPDATE, bytes(16)),
}


@pytest.mark.parametrize("extra", sorted(EXTRA_FRAMES))
@pytest.mark.parametrize(("direction", "after"), [(Role.CLIENT, 0), (Role.SERVER, 0)])
def test_frame_injected_during_handshake_fails_it(extra: str, direction: Role, after: int) -> None:
    """An extra frame after the first hello (either direction) kills the handshake."""

    def hook(sender: Role, n: int, frame: Frame) -> list[bytes]:
        if sender is direction and n == after:
            return [wire(frame), EXTRA_FRAMES[extra]]
        return [wire(frame)]

    pipe = FramePipe(client_conn(PSK), server_conn(PSK), hook).handshake()
    victim = pipe.server if direction is Role.CLIENT else pipe.client
    assert isinstance(victim.error, ProtocolError)
    assert not pipe.client.established or not pipe.server.established
    assert victim.conn.state is State.FAILED


@pytest.mark.parametrize("frame_type", [FrameType.CLIENT_HELLO, FrameType.CLIENT_AUTH])
def test_duplicated_client_handshake_frame_fails(frame_type: FrameType) -> None:
    def hook(sender: Role, n: int, frame: Frame) -> list[bytes]:
        copies = 2 if sender is Role.CLIENT and frame.type == frame_type else 1
        return [wire(frame)] * copies

    pipe = FramePipe(client_conn(PSK), server_conn(PSK), hook).handshake()
    assert isinstance(pipe.server.error, ProtocolError)


def test_dropping_the_first_record_after_the_handshake_is_detected() -> None:
    """Terrapin's move: delete the first protected record; the next one must fail."""
    dropped: list[Frame] = []

    def hook(sender: Role, n: int, frame: Frame) -> list[bytes]:
        if sender is Role.CLIENT and frame.type == FrameType.MESSAGE and not dropped:
            dropped.append(frame)
            return []
        return [wire(frame)]

    pipe = FramePipe(client_conn(PSK), server_conn(PSK), hook).handshake()
    assert pipe.server.established
    pipe.client.conn.send_message(b"first: set sequence number 0")
    pipe.client.conn.send_message(b"second")
    pipe.pump()
    assert dropped
    assert isinstance(pipe.server.error, DecryptionError)
    assert not [e for e in pipe.server.events if isinstance(e, MessageReceived)]


def test_replayed_or_reordered_record_is_detected() -> None:
    for mutate in ("replay", "reorder"):
        pipe = FramePipe(client_conn(PSK), server_conn(PSK)).handshake()
        client, server = pipe.client.conn, pipe.server.conn
        client.send_message(b"one")
        first = client.data_to_send()
        client.send_message(b"two")
        second = client.data_to_send()
        stream = first + first if mutate == "replay" else second + first
        assert isinstance(feed_error(server, stream), DecryptionError)


def test_dropped_handshake_frame_never_establishes() -> None:
    for victim_type in (FrameType.SERVER_HELLO, FrameType.CLIENT_AUTH, FrameType.SERVER_AUTH):

        def hook(sender: Role, n: int, frame: Frame, t: int = victim_type) -> list[bytes]:
            return [] if frame.type == t else [wire(frame)]

        pipe = FramePipe(client_conn(PSK), server_conn(PSK), hook).handshake()
        assert not pipe.client.established
        with pytest.raises(ProtocolError):
            pipe.client.conn.send_message(b"must not go out unprotected")


# -- downgrade -------------------------------------------------------------------------------------


def _rewrite_client_hello(frame: Frame, **changes: object) -> bytes:
    hello = msgspec.structs.replace(ClientHello.decode(frame.body), **changes)  # type: ignore[arg-type]
    return encode_frame(FrameType.CLIENT_HELLO, hello.encode())


def _rewrite_server_hello(frame: Frame, **changes: object) -> bytes:
    hello = msgspec.structs.replace(ServerHello.decode(frame.body), **changes)  # type: ignore[arg-type]
    return encode_frame(FrameType.SERVER_HELLO, hello.encode())


CAPS = ("msg", "channels", "heartbeat")
DOWNGRADES = {
    "client-versions": (Role.CLIENT, {"versions": (1,)}),
    "client-caps": (Role.CLIENT, {"capabilities": ("msg", "channels")}),
    "client-caps-empty": (Role.CLIENT, {"capabilities": ()}),
    "server-version": (Role.SERVER, {"version": 1}),
    "server-caps": (Role.SERVER, {"capabilities": ("msg",)}),
}


@pytest.mark.parametrize("attack", sorted(DOWNGRADES))
def test_downgrade_by_mitm_fails_authentication(attack: str) -> None:
    """Both ends support versions 1 and 2; the MITM rewrites a hello to lower what is used."""
    direction, changes = DOWNGRADES[attack]

    def hook(sender: Role, n: int, frame: Frame) -> list[bytes]:
        if sender is direction and n == 0:
            rewrite = _rewrite_client_hello if sender is Role.CLIENT else _rewrite_server_hello
            return [rewrite(frame, **changes)]
        return [wire(frame)]

    def cfg(name: str) -> ConnectionConfig:
        return conn_config(name, versions=(1, 2), capabilities=CAPS)

    honest = FramePipe(client_conn(PSK, cfg("c")), server_conn(PSK, cfg("s"))).handshake()
    assert honest.client.conn.result is not None
    assert honest.client.conn.result.version == 2
    assert honest.client.conn.result.capabilities == CAPS

    pipe = FramePipe(client_conn(PSK, cfg("c")), server_conn(PSK, cfg("s")), hook).handshake()
    assert not pipe.client.established and not pipe.server.established
    assert isinstance(pipe.server.error, AuthenticationError)
    assert isinstance(pipe.client.error, AuthenticationError) and pipe.client.error.remote


# -- invalid curve points ------------------------------------------------------------------

P = 2**256 - 2**224 + 2**192 + 2**96 - 1
GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5


def _point(prefix: int, x: int, y: int) -> bytes:
    return bytes((prefix,)) + (x % 2**256).to_bytes(32, "big") + (y % 2**256).to_bytes(32, "big")


BAD_POINTS = {
    "all-zero": bytes(POINT_LEN),
    "infinity-origin": _point(4, 0, 0),
    "off-curve": _point(4, GX, GY + 1),
    "x-equals-p": _point(4, P, GY),
    "coords-above-p": _point(4, GX + P, GY),
    "y-above-p": _point(4, GX, GY + P),
    "all-ones": b"\x04" + b"\xff" * 64,
    "compressed-prefix": _point(2, GX, GY),
    "hybrid-prefix": _point(6, GX, GY),
}


def test_valid_point_sanity() -> None:
    """The generator itself is accepted: the bad points fail for the right reason."""
    client = client_conn(PSK)
    client.initiate()
    hello = ClientHello.decode(frames_of(client.data_to_send())[0].body)
    forged = ClientHello(hello.versions, hello.random, _point(4, GX, GY), "x", hello.capabilities)
    server = server_conn(PSK)
    server.receive_data(encode_frame(FrameType.CLIENT_HELLO, forged.encode()))
    assert [f.type for f in frames_of(server.data_to_send())] == [FrameType.SERVER_HELLO]


@pytest.mark.parametrize("name", sorted(BAD_POINTS))
def test_invalid_client_key_share_gets_only_an_alert(name: str) -> None:
    client = client_conn(PSK)
    client.initiate()
    hello = ClientHello.decode(frames_of(client.data_to_send())[0].body)
    bad = ClientHello(hello.versions, hello.random, BAD_POINTS[name], "x", hello.capabilities)
    server = server_conn(PSK)
    with pytest.raises(InvalidKeyShare):
        server.receive_data(encode_frame(FrameType.CLIENT_HELLO, bad.encode()))
    (frame,) = frames_of(server.data_to_send())
    assert alert_code(frame) == CloseCode.BAD_KEY_SHARE


@pytest.mark.parametrize("name", sorted(BAD_POINTS))
def test_invalid_server_key_share_gets_no_client_proof(name: str) -> None:
    """A client answering a bogus share with its proof would hand out an offline oracle."""
    client = client_conn(PSK)
    client.initiate()
    server = server_conn(PSK)
    server.receive_data(client.data_to_send())
    (sh,) = frames_of(server.data_to_send())
    with pytest.raises(InvalidKeyShare):
        client.receive_data(_rewrite_server_hello(sh, key_share=BAD_POINTS[name]))
    (frame,) = frames_of(client.data_to_send())
    assert alert_code(frame) == CloseCode.BAD_KEY_SHARE


async def test_wrong_psk_loopback_client_error_is_authentication() -> None:
    """Sanity for the oracle tests: the public API reports a wrong key as AuthenticationError."""
    async with running_server() as (server, _):
        with pytest.raises(AuthenticationError):
            await ppcp.aio.connect("127.0.0.1", server.port, OTHER_PSK_TEXT)
