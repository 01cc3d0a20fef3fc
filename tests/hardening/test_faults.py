"""Faults: processes killed mid-transfer, a full disk, a network cut.

* kill -9 of the client or the server at random points of 20 transfers (half
  put, half get): afterwards no file under its real name is partial or
  corrupt, and rerunning each transfer resumes and ends with the right
  SHA-256 (the 100-transfer version is ``python -m bench.faults``);
* disk full on the receiver (a size-limited tmpfs): a clear error, the
  partial data kept (as a prefix of the source) for resume, nothing under
  the real name; after making room the transfer resumes and completes;
* network cut (two namespaces joined by a veth, the link set down): both
  ends' heartbeats declare the peer dead within the bound.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hardening_util import WAIT, running_server

import ppcp.aio
from ppcp.control.router import ServerPolicy
from ppcp.core.errors import TransferError

# -- kill -9 ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill9_mid_transfer_never_corrupts_and_resumes(tmp_path: Path) -> None:
    from bench import faults

    report = faults.run(20, tmp_path, min_mib=1, max_mib=4, seed=7)
    print(f"\n{report}")
    assert report["ok"], report["failures"]
    assert report["killed_mid_transfer"] >= 15
    assert report["client_kills"] and report["server_kills"]
    assert report["resumed"] > 0


# -- disk full ------------------------------------------------------------------------------


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    _run("mount", "-t", "tmpfs", "-o", f"size={size}", "ppcp-hardening", str(path))
    try:
        yield path
    finally:
        result = subprocess.run(["umount", str(path)], capture_output=True, timeout=30)
        if result.returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def _is_prefix(part: Path, data: bytes) -> bool:
    got = part.read_bytes()
    return data[: len(got)] == got


SIZE = 12 << 20


@pytest.mark.usefixtures("root_only")
async def test_disk_full_on_put(tmp_path: Path) -> None:
    from bench.faults import part_path

    data = os.urandom(SIZE)
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    with tmpfs(tmp_path / "full", "8m") as root:
        policy = ServerPolicy(root=root)
        async with running_server(policy=policy) as (server, _):
            session = await ppcp.aio.connect("127.0.0.1", server.port, _psk())
            with pytest.raises(TransferError) as info:
                await session.put(source, "big.bin")
            message = str(info.value).lower()
            assert "space" in message or "full" in message, message
            dest = root / "big.bin"
            part = part_path(dest)
            assert not dest.exists(), "a partial file appeared under its real name"
            assert part.exists() and part.stat().st_size > 0, "the partial data was not kept"
            assert _is_prefix(part, data), "the partial data is corrupt"
            kept = part.stat().st_size

            _run("mount", "-o", "remount,size=32m", str(root))
            result = await session.put(source, "big.bin", checksum=True)
            await session.close()
        assert result.resumed_from > 0 and result.resumed_from <= kept
        assert result.sha256 == hashlib.sha256(data).hexdigest()
        assert hashlib.sha256(dest.read_bytes()).hexdigest() == result.sha256
        assert not part.exists()
    print(f"\nput: disk full after {kept} bytes: {info.value}; resumed from {result.resumed_from}")


@pytest.mark.usefixtures("root_only")
async def test_disk_full_on_get(tmp_path: Path) -> None:
    from bench.faults import part_path

    data = os.urandom(SIZE)
    server_root = tmp_path / "srv"
    server_root.mkdir()
    (server_root / "big.bin").write_bytes(data)
    with tmpfs(tmp_path / "full", "8m") as local:
        async with running_server(policy=ServerPolicy(root=server_root)) as (server, _):
            session = await ppcp.aio.connect("127.0.0.1", server.port, _psk())
            dest = local / "big.bin"
            with pytest.raises(TransferError) as info:
                await session.get("big.bin", dest)
            message = str(info.value).lower()
            assert "space" in message or "full" in message, message
            part = part_path(dest)
            assert not dest.exists()
            assert part.exists() and part.stat().st_size > 0
            assert _is_prefix(part, data)
            kept = part.stat().st_size

            _run("mount", "-o", "remount,size=32m", str(local))
            result = await session.get("big.bin", dest)
            await session.close()
        assert 0 < result.resumed_from <= kept
        assert hashlib.sha256(dest.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
        assert not part.exists()
    print(f"\nget: disk full after {kept} bytes: {info.value}; resumed from {result.resumed_from}")


def _psk() -> str:
    from hardening_util import PSK_TEXT

    return PSK_TEXT


# -- network cut ----------------------------------------------------------------------------

INTERVAL = 0.5
MAX_MISSED = 2


@contextlib.contextmanager
def netns_pair() -> Iterator[tuple[str, str, str, str]]:
    """Two namespaces joined by a veth pair: (server ns, client ns, server ip, client link)."""
    tag = f"ph{os.getpid() % 100000}"
    a, b, va, vb = f"{tag}s", f"{tag}c", f"{tag}vs", f"{tag}vc"
    try:
        _run("ip", "netns", "add", a)
        _run("ip", "netns", "add", b)
        _run("ip", "link", "add", va, "type", "veth", "peer", "name", vb)
        _run("ip", "link", "set", va, "netns", a)
        _run("ip", "link", "set", vb, "netns", b)
        for ns, link, addr in ((a, va, "10.213.7.1/24"), (b, vb, "10.213.7.2/24")):
            _run("ip", "-n", ns, "addr", "add", addr, "dev", link)
            _run("ip", "-n", ns, "link", "set", link, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        yield a, b, "10.213.7.1", vb
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.mark.slow
@pytest.mark.netns
@pytest.mark.usefixtures("root_only")
def test_network_cut_is_detected_by_heartbeats(tmp_path: Path) -> None:
    from bench.faults import Child, start_server

    hb = ["--heartbeat", str(INTERVAL), "--max-missed", str(MAX_MISSED)]
    # HeartbeatMonitor: dead after interval * (max_missed + 0.5) without an answer,
    # checked once per interval.
    bound = INTERVAL * (MAX_MISSED + 1.5)
    with netns_pair() as (server_ns, client_ns, server_ip, client_link):
        server, port = start_server(
            tmp_path, server_ip, prefix=["ip", "netns", "exec", server_ns], extra=hb
        )
        client = Child(
            ["--role", "hold", "--host", server_ip, "--port", str(port), *hb],
            prefix=["ip", "netns", "exec", client_ns],
        )
        try:
            client.wait_for("ready", WAIT)
            cut = time.monotonic()
            _run("ip", "-n", client_ns, "link", "set", client_link, "down")
            ended = client.wait_for("ended", 10 * bound)
            server_end = server.wait_for("session_end", 10 * bound)
        finally:
            client.kill()
            server.kill()
    client_delay = ended["t"] - cut
    server_delay = server_end["t"] - cut
    print(
        f"\nnetwork cut detected by the client after {client_delay:.2f} s and by the server "
        f"after {server_delay:.2f} s (bound {bound:.2f} s)"
    )
    assert ended["error"] == "HeartbeatTimeout"
    assert server_end["error"] == "HeartbeatTimeout"
    assert 0 < client_delay <= bound + 0.25
    assert 0 < server_delay <= bound + 0.25
