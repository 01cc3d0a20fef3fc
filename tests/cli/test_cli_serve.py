"""ppcp serve: logs, clean shutdown on SIGTERM/SIGINT, start-up failures."""

from __future__ import annotations

import signal
import subprocess

import pytest
from conftest import Env, StartServer


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_closes_sessions_cleanly(env: Env, server: StartServer, sig: int) -> None:
    srv = server()
    client = env.popen(
        "exec",
        "--host",
        srv.address,
        "--",
        "sleep 60",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
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
    assert client.returncode == 255
    assert b"ppcp:" in err and b"Traceback" not in err


def test_logs_connections_and_auth_failures(env: Env, server: StartServer) -> None:
    srv = server("--name", "logged")
    assert "commands allowed" in srv.wait_for("server name 'logged'")
    assert env.run("exec", "--host", srv.address, "--", "true").returncode == 0
    assert "127.0.0.1:" in srv.wait_for(r"session with .* established")
    other = env.new_key("other.psk")
    env.run("exec", "--psk-file", str(other), "--host", srv.address, "--", "true")
    line = srv.wait_for(r"handshake with .* failed")
    assert "127.0.0.1:" in line and "pre-shared key" in line


def test_port_in_use(env: Env, server: StartServer) -> None:
    srv = server()
    res = env.run("serve", "--bind", "127.0.0.1", "--port", str(srv.port), "--no-discovery")
    assert res.returncode == 5
    assert "cannot start the server" in res.stderr and "Traceback" not in res.stderr
