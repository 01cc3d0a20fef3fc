"""ppcp listen / ppcp send: encrypted messages, by address and by name."""

from __future__ import annotations

import json

from cli_helpers import Env, StartServer


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
