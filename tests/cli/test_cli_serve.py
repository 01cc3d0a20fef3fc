"""ppcp serve: logs, clean shutdown on SIGTERM/SIGINT, start-up failures."""

from __future__ import annotations

import signal
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


def test_port_in_use(env: Env, server: StartServer) -> None:
    srv = server()
    res = env.run("serve", "--bind", "127.0.0.1", "--port", str(srv.port), "--no-discovery")
    assert res.returncode == 5
    assert "cannot start the server" in res.stderr and "Traceback" not in res.stderr
