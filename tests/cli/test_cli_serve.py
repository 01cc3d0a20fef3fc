"""ppcp serve: logs, clean shutdown on SIGTERM/SIGINT, start-up failures."""

from __future__ import annotations

import os
import shutil
import signal
import socket
from pathlib import Path

import pytest
from cli_helpers import Env, StartServer


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_closes_sessions_cleanly(env: Env, server: StartServer, sig: int) -> None:
    srv = server()
    client = env.exec_process(srv.address, "sleep 60")
    try:
        srv.wait_for(r"exec for .*sleep 60")
        assert srv.stop(sig) == 0
        _, err = client.communicate(timeout=15)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(5)
    assert f"{signal.Signals(sig).name} received: closing 1 session(s)" in srv.log
    assert "server stopped" in srv.log
    assert "Traceback" not in srv.log
    assert client.returncode == 255, err.decode()
    assert b"ppcp:" in err and b"Traceback" not in err


def test_logs_connections_transfers_and_auth_failures(
    env: Env, server: StartServer, tmp_path: Path
) -> None:
    srv = server("--name", "logged", "--root", str(tmp_path))
    assert "commands allowed" in srv.wait_for("server name 'logged'")
    assert env.run("exec", "--host", srv.address, "--", "true").returncode == 0
    assert "127.0.0.1:" in srv.wait_for(r"session with .* established")
    other = env.new_key("other.psk")
    env.run("exec", "--psk-file", str(other), "--host", srv.address, "--", "true")
    line = srv.wait_for(r"handshake with .* failed")
    assert "127.0.0.1:" in line and "pre-shared key" in line
    # Commands, messages and transfers.
    assert env.run("exec", "--host", srv.address, "--", "echo", "logged-cmd").returncode == 0
    srv.wait_for(r"exec for .*echo.*logged-cmd")
    assert env.run("send", "logged-msg", "--host", srv.address).returncode == 0
    srv.wait_for(r"message from .*logged-msg")
    src = tmp_path / "up.txt"
    src.write_text("x" * 1000)
    assert env.run("put", str(src), ":copy.txt", "--host", srv.address).returncode == 0
    assert "1000 bytes received" in srv.wait_for(r"put from .*copy.txt done")
    res = env.run("get", ":copy.txt", str(tmp_path / "back.txt"), "--host", srv.address)
    assert res.returncode == 0, res.stderr
    srv.wait_for(r"get by .*copy.txt done")


def test_tcp_port_in_use(env: Env, server: StartServer) -> None:
    """Without discovery only the TCP port can fail, and the message must say so."""
    srv = server()
    res = env.run("serve", "--bind", "127.0.0.1", "--port", str(srv.port), "--no-discovery")
    assert res.returncode == 5, res.stderr
    assert f"TCP port 127.0.0.1:{srv.port}" in res.stderr
    assert "already in use" in res.stderr and "--port" in res.stderr
    assert "UDP" not in res.stderr and "discovery" not in res.stderr
    assert "Traceback" not in res.stderr and res.stderr.count("\n") == 1


def test_discovery_port_in_use(env: Env) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        res = env.run("serve", "--bind", "127.0.0.1", "--port", "0", "--discovery-port", str(port))
    assert res.returncode == 5, res.stderr
    assert f"discovery UDP port {port}" in res.stderr and "already in use" in res.stderr
    assert "--discovery-port" in res.stderr and "--no-discovery" in res.stderr
    assert "TCP" not in res.stderr and "Traceback" not in res.stderr


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run a server without CAP_NET_BIND_SERVICE",
)
@pytest.mark.parametrize("which", ["TCP", "UDP"])
def test_privileged_port_refused(env: Env, which: str) -> None:
    """Root without CAP_NET_BIND_SERVICE: the port below 1024 is refused, and said so."""
    with socket.socket() as probe:  # a low port nothing uses, if there is one
        for port in range(1000, 1023):
            try:
                probe.bind(("127.0.0.1", port))
                break
            except OSError:
                continue
        else:
            pytest.skip("no free port below 1024")
    ports = ["--port", str(port), "--no-discovery"]
    if which == "UDP":
        ports = ["--port", "0", "--discovery-port", str(port)]
    no_cap = ["setpriv", "--bounding-set=-net_bind_service"]
    res = env.run_in(no_cap, "serve", "--bind", "127.0.0.1", *ports)
    assert res.returncode == 5, res.stderr
    where = f"TCP port 127.0.0.1:{port}" if which == "TCP" else f"discovery UDP port {port}"
    assert where in res.stderr, res.stderr
    assert "permission denied" in res.stderr and "1024" in res.stderr


def test_bind_address_not_on_this_machine(env: Env) -> None:
    # 192.0.2.0/24 is TEST-NET-1: never assigned, so nothing is sent or bound.
    res = env.run("serve", "--bind", "192.0.2.1", "--port", "0", "--no-discovery")
    assert res.returncode == 5, res.stderr
    assert "TCP port 192.0.2.1:0" in res.stderr and "--bind" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("choice", "shown"), [(None, "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio")]
)
def test_serve_event_loop(env: Env, server: StartServer, choice: str | None, shown: str) -> None:
    # uvloop is in the dev extra, so the default ("auto") picks it here.
    extra_env = {"PPCP_EVENT_LOOP": choice} if choice else None
    srv = server(extra_env=extra_env)
    assert f"event loop {shown}" in srv.wait_for("server name")
    # The whole path on that loop: handshake, a command with output, a transfer.
    res = env.run("exec", "--host", srv.address, "--", "echo", "on-" + shown)
    assert res.returncode == 0 and res.stdout.strip() == f"on-{shown}", res.stderr
    local = env.home / "local"
    local.mkdir()
    src = local / "loop.bin"
    src.write_bytes(os.urandom(3 << 20))
    assert env.run("put", str(src), ":loop.bin", "--host", srv.address).returncode == 0
    back = local / "back.bin"
    assert env.run("get", ":loop.bin", str(back), "--host", srv.address).returncode == 0
    assert back.read_bytes() == src.read_bytes()


@pytest.mark.parametrize(
    ("value", "message"),
    [("epoll", "expected auto, asyncio or uvloop"), ("uvloop", "uvloop is not installed")],
)
def test_serve_event_loop_errors(env: Env, value: str, message: str) -> None:
    extra = {"PPCP_EVENT_LOOP": value}
    if value == "uvloop":
        # A uvloop that cannot be imported: a module of that name raising ImportError.
        fake = env.home / "no-uvloop"
        fake.mkdir()
        (fake / "uvloop.py").write_text("raise ImportError('not here')\n")
        extra["PYTHONPATH"] = str(fake)
    res = env.run("serve", "--bind", "127.0.0.1", "--port", "0", "--no-discovery", extra_env=extra)
    assert res.returncode == 8, res.stderr
    assert message in res.stderr and "PPCP_EVENT_LOOP" in res.stderr
    assert "Traceback" not in res.stderr
