"""ppcp listen / ppcp send: encrypted messages, by address and by name."""

from __future__ import annotations

import json

from cli_helpers import Env, Server, StartServer


def test_send_to_listen_by_address(env: Env, server: StartServer) -> None:
    srv = server("--name", "inbox", command="listen")
    res = env.run("send", "hello there", "--host", srv.address)
    assert res.returncode == 0, res.stderr
    line = srv.wait_for(r"hello there", stdout=True)
    assert "[default]" in line and "hello there" in line
    res = env.run("send", "-", "--topic", "alerts", "--host", srv.address, input="from stdin")
    assert res.returncode == 0, res.stderr
    line = srv.wait_for(r"from stdin", stdout=True)
    assert "[alerts]" in line


def test_send_an_argument_that_is_not_utf8(env: Env, server: StartServer) -> None:
    srv = server(command="listen")
    res = env.run("send", "bytes-\udcff-here", "--host", srv.address)  # argv b"bytes-\xff-here"
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert "bytes-" in srv.wait_for(r"bytes-", stdout=True)


def test_send_by_name_through_discovery(env: Env, server: StartServer) -> None:
    srv = server("--name", "inbox", command="listen", discovery=True)
    res = env.run(
        "send",
        "found you",
        "inbox",
        "--timeout",
        "2",
        "--discovery-port",
        str(srv.discovery_port),
        "--unicast",
        "127.0.0.1",
    )
    assert res.returncode == 0, res.stderr
    assert "found you" in srv.wait_for("found you", stdout=True)


def test_listen_json_output(env: Env, server: StartServer) -> None:
    srv = server("--json", command="listen")
    assert env.run("send", "ünïcode", "--host", srv.address).returncode == 0
    record = json.loads(srv.wait_for("message", stdout=True))
    assert record["message"] == "ünïcode" and record["topic"] == "default"
    assert record["sender"]


def test_listen_refuses_everything_but_messages(env: Env, server: StartServer) -> None:
    srv = server(command="listen")
    res = env.run("exec", "--host", srv.address, "--", "true")
    assert res.returncode == 255 and "refused" in res.stderr
    res = env.run("put", str(env.psk_file), ":x", "--host", srv.address)
    assert res.returncode == 7 and "refused" in res.stderr


def test_send_to_a_server_refusing_messages_is_denied(env: Env, server: StartServer) -> None:
    srv = server()
    res = env.run("send", "x", "--host", srv.address)
    # ppcp serve accepts messages (and logs them).
    assert res.returncode == 0, res.stderr
    assert "message from" in srv.wait_for("message from")


def _listen(env: Env, stdout: int) -> Server:
    """`ppcp listen` on 127.0.0.1 with its stdout where the test says."""
    import subprocess
    import threading

    from cli_helpers import LISTENING, PPCP

    proc = subprocess.Popen(
        [*PPCP, "listen", "--bind", "127.0.0.1", "--port", "0", "--no-discovery"],
        env=env.vars,
        cwd=env.home,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.PIPE,
    )
    srv = Server(proc)
    threading.Thread(target=srv._read, daemon=True).start()
    m = LISTENING.search(srv.wait_for(LISTENING.pattern))
    assert m is not None
    srv.host, srv.port = m.group(1), int(m.group(2))
    return srv


def test_listen_into_head_stops_with_141(env: Env) -> None:
    """`ppcp listen | head -1` went on listening and failed every later sender."""
    import subprocess

    srv = _listen(env, subprocess.PIPE)
    try:
        assert env.run("send", "first", "--host", srv.address).returncode == 0
        assert srv.proc.stdout is not None
        assert b"first" in srv.proc.stdout.readline()
        srv.proc.stdout.close()
        env.run("send", "second", "--host", srv.address)
        assert srv.proc.wait(30) == 141, srv.log
    finally:
        srv.stop()
    assert "Traceback" not in srv.log and "server stopped" in srv.log


def test_listen_escapes_control_characters_on_a_terminal(env: Env) -> None:
    import os
    import pty
    import select

    master, slave = pty.openpty()
    srv = _listen(env, slave)
    os.close(slave)
    try:
        res = env.run("send", "\x1b]0;title\x07red\x1b[31m\tend", "--host", srv.address)
        assert res.returncode == 0, res.stderr
        screen = b""
        while b"end" not in screen:  # bounded: select times out
            assert select.select([master], [], [], 20)[0], screen
            screen += os.read(master, 4096)
    finally:
        srv.stop()
        os.close(master)
    assert b"\\x1b]0;title\\x07red\\x1b[31m\tend" in screen
    assert b"\x1b" not in screen and b"\x07" not in screen


def test_send_checks_topic_and_size_before_connecting(env: Env) -> None:
    # Port 1: nothing listens; a connection attempt would be exit 3.
    res = env.run("send", "-t", "", "x", "--host", "127.0.0.1:1")
    assert res.returncode == 2 and "--topic" in res.stderr, res.stderr
    res = env.run("send", "-", "--host", "127.0.0.1:1", input=b"x" * ((16 << 20) + 1))
    assert res.returncode == 2 and "too large" in res.stderr, res.stderr
