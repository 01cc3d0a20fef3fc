"""Section 5: handshake CPU per side vs the crypto floor.

Floor (per side, measured in this run with ``cryptography`` directly): one
P-256 key pair + point decode/validation + ECDH + one HKDF-SHA256 (extract +
expand of all the key material) + 2 HMAC-SHA256 (one proof made, one checked).
That is the least work any PSK+ECDH design with key confirmation must do.

PPCP in memory: the sans-I/O client and server :class:`Connection` objects
exchange their handshake bytes directly; each side's calls are timed with
``thread_time`` (CPU, not wall).  PPCP over sockets: a worker runs sequential
connect + handshake + close against a server process; CPU per handshake of
each process (asyncio, syscalls and the close exchange included).
"""

from __future__ import annotations

import hashlib
import hmac
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.common import PYTHON, Deadline, Row, last_json_line, proc_cpu_seconds, run_child
from bench.common import summarize as _summarize
from bench.context import Context


def crypto_floor_once(peer_public: bytes) -> float:
    """CPU seconds of the minimum per-side handshake crypto."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    t = time.thread_time()
    private = ec.generate_private_key(ec.SECP256R1())
    private.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), peer_public)
    shared = private.exchange(ec.ECDH(), peer)
    okm = HKDF(hashes.SHA256(), 2 * (32 + 12) + 2 * 32, b"psk" * 8, b"ppcp").derive(shared)
    made = hmac.new(okm[-64:-32], b"transcript", hashlib.sha256).digest()
    hmac.compare_digest(made, hmac.new(okm[-32:], b"transcript", hashlib.sha256).digest())
    return time.thread_time() - t


def ppcp_in_memory_once(psk_key: bytes, config: Any) -> tuple[float, float]:
    """(client CPU, server CPU) seconds for one in-memory handshake."""
    from ppcp.core.states import Role
    from ppcp.transport.connection import Connection

    cpu = {"c": 0.0, "s": 0.0}

    def timed(side: str, fn: Callable[..., Any], *args: Any) -> Any:
        t = time.thread_time()
        out = fn(*args)
        cpu[side] += time.thread_time() - t
        return out

    client = timed("c", Connection, Role.CLIENT, psk_key, config.connection_config())
    server = timed("s", Connection, Role.SERVER, psk_key, config.connection_config())
    timed("c", client.initiate)
    for _ in range(2):  # two round trips: hello/hello, auth/auth
        timed("s", server.receive_data, timed("c", client.data_to_send))
        timed("c", client.receive_data, timed("s", server.data_to_send))
    if not (client.is_open and server.is_open):
        raise RuntimeError("in-memory handshake did not complete")
    return cpu["c"], cpu["s"]


def run(ctx: Context) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from ppcp.core.config import SessionConfig
    from ppcp.crypto.psk import derive_psk_key

    s = ctx.settings
    section = "handshake"
    peer_public = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    )
    psk_key = derive_psk_key(ctx.psk)
    config = SessionConfig(name="bench")
    deadline = Deadline(s.section_budget)
    for _ in range(20):  # warm-up: imports, OpenSSL tables
        crypto_floor_once(peer_public)
        ppcp_in_memory_once(psk_key, config)
    floor: list[float] = []
    client: list[float] = []
    server: list[float] = []
    for _ in range(s.handshake_runs):  # interleaved
        if deadline.expired:
            break
        floor.append(crypto_floor_once(peer_public))
        c, sv = ppcp_in_memory_once(psk_key, config)
        client.append(c)
        server.append(sv)
    # ms per handshake for readability
    floor_ms, client_ms, server_ms = (_ms(x) for x in (floor, client, server))
    for side, data in (("client", client_ms), ("server", server_ms)):
        ctx.report.add(
            Row(
                section,
                f"hs-{side}-memory",
                f"handshake CPU, {side} side (sans-I/O core)",
                "ms",
                data,
                "crypto floor",
                floor_ms,
                note="floor: keygen+ECDH+HKDF+2 HMAC",
            )
        )
    # Over real sockets, whole processes.
    sock = _socket_handshakes(ctx, deadline)
    if sock is not None:
        fm = floor_ms["median"]
        for side in ("client", "server"):
            ctx.report.add(
                Row(
                    section,
                    f"hs-{side}-socket",
                    f"handshake CPU, {side} process (connect+handshake+close, asyncio)",
                    "ms",
                    _summarize([sock[side] * 1000]),
                    "crypto floor",
                    floor_ms,
                    note=f"{sock[side] * 1000 / fm:.1f}x floor" if fm else "",
                )
            )
    ctx.report.raw[section] = {
        "floor_ms": floor_ms,
        "client_ms": client_ms,
        "server_ms": server_ms,
        "socket_cpu_s_per_handshake": sock,
        "floor_share": {
            "client": statistics.median(floor) / statistics.median(client),
            "server": statistics.median(floor) / statistics.median(server),
        },
    }


def _socket_handshakes(ctx: Context, deadline: Deadline) -> dict[str, float] | None:
    s = ctx.settings
    root = ctx.work / "exec-root"
    root.mkdir(exist_ok=True)
    server, port = ctx.start_server("ppcp", root, heartbeat=0)
    try:
        cmd = [PYTHON, "-m", "bench.worker", "ppcp-handshakes", "--port", str(port)]
        cmd += ["--count", str(s.socket_handshakes), "--timeout", str(max(deadline.left(), 10))]
        before = proc_cpu_seconds(server.pid)
        r = run_child(cmd, max(deadline.left(), 10) + 30, env=ctx.env())
        time.sleep(0.1)  # let the server finish the last close
        after = proc_cpu_seconds(server.pid)
        if r.returncode != 0:
            raise RuntimeError(f"handshake worker: {r.stderr.decode(errors='replace')[-800:]}")
        out = last_json_line(r.stdout)
        n = out["count"]
        if not n or before is None or after is None:
            return None
        return {"client": out["cpu_seconds"] / n, "server": (after - before) / n, "count": n}
    finally:
        ctx.procs.stop(server)


def _ms(samples: list[float]) -> dict[str, Any]:
    return _summarize([x * 1000 for x in samples])
