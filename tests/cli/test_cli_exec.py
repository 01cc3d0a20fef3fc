"""ppcp exec: streaming, exit codes, stdin, policy, failures, fan-out."""

from __future__ import annotations

import pytest
from cli_helpers import Env, Server, StartServer


def test_exec_streams_and_returns_the_exit_code(shared_env: Env, shared: Server) -> None:
    env, srv = shared_env, shared
    res = env.run("exec", "--host", srv.address, "--", "echo out; echo err >&2; exit 7")
    assert res.returncode == 7
    assert res.stdout == "out\n"
    assert res.stderr == "err\n"
    res = env.run("exec", "--host", srv.address, "--", "printf", "%s|", "a b", "c")
    assert (res.returncode, res.stdout) == (0, "a b|c|")
    assert "exec for" in srv.wait_for(r"exec for .*printf")


def test_exec_without_double_dash(shared_env: Env, shared: Server) -> None:
    env, srv = shared_env, shared
    res = env.run("--host", srv.address, "exec", "ls", "-d", "/")
    assert (res.returncode, res.stdout) == (0, "/\n"), res.stderr


def test_exec_forwards_piped_stdin(shared_env: Env, shared: Server) -> None:
    env, srv = shared_env, shared
    data = "".join(f"line {i}\n" for i in range(5000))
    res = env.run("exec", "--host", srv.address, "--", "wc", "-l", input=data)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "5000"
    res = env.run("exec", "-n", "--host", srv.address, "--", "wc", "-c", input=data)
    assert res.stdout.strip() == "0"


def test_exec_exits_while_its_stdin_pipe_stays_open(shared_env: Env, shared: Server) -> None:
    """`producer | ppcp exec HOST true`: the command ends before the producer does.

    The stdin pump is then blocked in a read; the client must still exit with the
    command's status (a daemon thread blocked inside a buffered read used to abort
    the interpreter at exit: "Fatal Python error: _enter_buffered_busy", status -6).
    """
    import subprocess

    env, srv = shared_env, shared
    client = env.exec_process(srv.address, "exit 3", stdin=subprocess.PIPE)
    assert client.stdin is not None
    try:
        client.wait(15)  # stdin stays open, without data or EOF, until the client exits
        out, err = client.stdout.read(), client.stderr.read()  # type: ignore[union-attr]
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(5)
        client.stdin.close()
    assert (client.returncode, out) == (3, b""), err.decode()
    assert b"Fatal Python error" not in err


def test_remote_command_not_found_is_127(shared_env: Env, shared: Server) -> None:
    env, srv = shared_env, shared
    res = env.run("exec", "--host", srv.address, "--", "no-such-command-xyz")
    assert res.returncode == 127
    assert "no-such-command-xyz" in res.stderr and "No such file" in res.stderr
    res = env.run("exec", "--host", srv.address, "--", "no-such-command-xyz --flag")
    assert res.returncode == 127  # through the shell, which says so itself


def test_remote_program_not_executable_is_126(shared_env: Env, shared: Server) -> None:
    env, srv = shared_env, shared
    script = shared_env.home / "not-executable"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o644)
    res = env.run("exec", "--host", srv.address, "--", str(script), "arg")  # argv: no shell
    assert res.returncode == 126, res.stderr
    assert "not-executable" in res.stderr and "EACCES" in res.stderr
    assert res.stdout == ""


def test_remote_script_without_interpreter_line(shared_env: Env, shared: Server) -> None:
    """`ppcp exec HOST ./script arg` runs a script without "#!" as `ssh HOST ./script arg`."""
    env, srv = shared_env, shared
    script = shared_env.home / "plain-script"
    script.write_text('echo "ran with $1"\nexit 4\n')
    script.chmod(0o755)
    res = env.run("exec", "--host", srv.address, "./plain-script", "arg")
    assert (res.returncode, res.stdout) == (4, "ran with arg\n"), res.stderr


def test_remote_signal_is_128_plus_n(shared_env: Env, shared: Server) -> None:
    env, srv = shared_env, shared
    res = env.run("exec", "--host", srv.address, "--", "kill -TERM $$")
    assert res.returncode == 128 + 15


def test_exec_disabled_and_allowlist(env: Env, server: StartServer) -> None:
    srv = server("--no-exec")
    res = env.run("exec", "--host", srv.address, "--", "true")
    assert res.returncode == 255
    assert "refused" in res.stderr and "exec is disabled" in res.stderr
    assert "Traceback" not in res.stderr
    srv2 = server("--allow", "echo")
    res = env.run("exec", "--host", srv2.address, "--", "echo", "allowed")
    assert (res.returncode, res.stdout) == (0, "allowed\n"), res.stderr
    res = env.run("exec", "--host", srv2.address, "--", "cat", "/etc/hostname")
    assert res.returncode == 255 and "allow-list" in res.stderr


def test_no_server_at_host(env: Env) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = env.run("exec", "--host", f"127.0.0.1:{port}", "--", "true")
    assert res.returncode == 255
    assert "connection refused" in res.stderr and "Traceback" not in res.stderr
    res = env.run("send", "hi", "--host", f"127.0.0.1:{port}")
    assert res.returncode == 3
    assert res.stderr.count("\n") <= 2


def test_nothing_answers_discovery(env: Env) -> None:
    # Discovery PINGs go to a UDP port nothing listens on.
    args = ("--timeout", "0.3", "--discovery-port", "9", "--unicast", "127.0.0.1")
    res = env.run("scan", *args)
    assert res.returncode == 3 and "no PPCP server answered" in res.stderr
    res = env.run("scan", "--json", *args)
    assert res.returncode == 3 and res.stdout.strip() == "[]"
    res = env.run("send", "hi", "nobody-here", *args)
    assert res.returncode == 3 and "'nobody-here'" in res.stderr
    res = env.run("exec", "nobody-here", *args, "--", "true")
    assert res.returncode == 255 and "'nobody-here'" in res.stderr


def test_unknown_name_while_another_server_answers(env: Env, server: StartServer) -> None:
    srv = server("--name", "alpha", discovery=True)
    args = ("--discovery-port", str(srv.discovery_port), "--unicast", "127.0.0.1")
    res = env.run("exec", "beta", "--timeout", "0.5", *args, "--", "true")
    assert res.returncode == 255
    assert "no PPCP server named 'beta'" in res.stderr
    # Found as soon as it answers; the timeout is only an upper bound.
    res = env.run("exec", "alpha", "--timeout", "10", *args, "--", "echo", "found")
    assert (res.returncode, res.stdout) == (0, "found\n"), res.stderr


def test_wrong_key(shared_env: Env, shared: Server) -> None:
    env, srv = shared_env, shared
    other = env.new_key("wrong.psk")
    res = env.run("exec", "--psk-file", str(other), "--host", srv.address, "--", "true")
    assert res.returncode == 255
    assert "authentication failed" in res.stderr
    res = env.run("send", "x", "--psk-file", str(other), "--host", srv.address)
    assert res.returncode == 4
    assert "same pre-shared key" in res.stderr and "Traceback" not in res.stderr
    # The server logs the failure with the client's address.
    assert "127.0.0.1:" in srv.wait_for(r"handshake with .* failed")


def test_verbose_shows_the_traceback(env: Env) -> None:
    env.psk_file.chmod(0o644)
    res = env.run("-v", "send", "x", "--host", "127.0.0.1:1")
    assert res.returncode == 8
    assert "Traceback" in res.stderr


def test_fan_out_to_several_servers(env: Env, server: StartServer) -> None:
    a = server("--name", "alpha")
    b = server("--name", "beta")
    cfg = env.home / ".config" / "ppcp" / "config.toml"
    cfg.write_text(f'[aliases]\nalpha = "{a.address}"\nbeta = "{b.address}"\n')
    res = env.run("exec", "alpha", "beta", "--", "echo one; echo two; exit 0")
    assert res.returncode == 0, res.stderr
    lines = sorted(res.stdout.splitlines())
    assert lines == ["alpha | one", "alpha | two", "beta  | one", "beta  | two"]
    assert "summary" in res.stderr and "exit 0" in res.stderr
    # Different exit codes: 1 overall, each listed in the summary.
    res = env.run("exec", "alpha", "beta", "-e", "PPCP_T=y", "--", 'test "$PPCP_T" = x')
    assert res.returncode == 1
    assert res.stderr.count("exit 1") == 2
    # A server that cannot be reached makes it 255.
    cfg.write_text(f'[aliases]\nalpha = "{a.address}"\ngone = "127.0.0.1:1"\n')
    res = env.run("exec", "alpha", "gone", "--", "true")
    assert res.returncode == 255
    assert "gone" in res.stderr and "connection refused" in res.stderr


def test_fan_out_to_all_discovered(env: Env, server: StartServer) -> None:
    a = server("--name", "alpha", discovery=True)
    b = server("--name", "beta", discovery=True)
    res = env.run(
        "exec",
        "--all",
        "--timeout",
        "1",
        "--unicast",
        f"127.0.0.1:{a.discovery_port}",
        "--unicast",
        f"127.0.0.1:{b.discovery_port}",
        "--",
        "echo hi",
        input="",
    )
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == ["alpha | hi", "beta  | hi"]


def test_ctrl_c_is_forwarded_to_the_remote_command(shared_env: Env, shared: Server) -> None:
    import signal

    env, srv = shared_env, shared
    client = env.exec_process(
        srv.address, "trap 'echo got-int; exit 5' INT; echo ready; while :; do sleep 0.1; done"
    )
    try:
        assert client.stdout is not None
        assert client.stdout.readline() == b"ready\n"
        client.send_signal(signal.SIGINT)
        out, err = client.communicate(timeout=15)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(5)
    assert out == b"got-int\n", err
    assert client.returncode == 5


def test_exec_loads_none_of_the_server_nor_the_other_services(
    shared_env: Env, shared: Server
) -> None:
    # What `ppcp exec` imports is most of its start-up time (bench/README.md):
    # a client must not pay for the server's router, limits and rate limiters,
    # nor for the shell, message and file services it does not use; nor for
    # dataclasses, whose classes cost 0.5-0.8 ms each to create (records are Structs).
    env, srv = shared_env, shared
    code = (
        "import sys\nfrom ppcp.cli import main\n"
        f"try:\n    main(['exec', '--host', {srv.address!r}, '--', 'echo ran'])\n"
        "except SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
        "print('LOADED', sorted(m for m in sys.modules if m in ("
        "'ppcp.transport.aio_server', 'ppcp.control.router', 'ppcp.core.limits',"
        " 'ppcp.utils.ratelimit', 'ppcp.control.shell', 'ppcp.control.messages',"
        " 'ppcp.control.files', 'ppcp.control.transfer', 'ppcp.discovery.responder',"
        " 'secrets', 'termios', 'shlex', 'dataclasses')))\n"
    )
    res = env.python(code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["ran", "LOADED []"]


def test_closed_standard_streams_are_dev_null(shared_env: Env, shared: Server) -> None:
    """As ssh: `ppcp exec ... >&-` or `2>&-` is no traceback, and no output lost."""
    import subprocess

    from cli_helpers import PPCP

    env, srv = shared_env, shared
    run = [*PPCP, "exec", "--host", srv.address, "--", "echo out; echo err >&2; exit 3"]
    for closing, kept in ((">&-", "stderr"), ("2>&-", "stdout")):
        res = subprocess.run(
            ["sh", "-c", f'exec "$@" {closing}', "sh", *run],
            env=env.vars,
            cwd=env.home,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
        )
        assert res.returncode == 3, res
        assert getattr(res, kept) == (b"err\n" if kept == "stderr" else b"out\n"), res


def _aliases(env: Env, **servers: Server) -> None:
    cfg = env.home / ".config" / "ppcp" / "config.toml"
    cfg.write_text("[aliases]\n" + "".join(f'{n} = "{s.address}"\n' for n, s in servers.items()))


def test_fan_out_streams_large_stdin_beside_the_output(env: Env, server: StartServer) -> None:
    """20 MB through `cat` on two servers: stdin written all before reading the
    output deadlocked once the output window filled (about 5-10 MB)."""
    _aliases(env, alpha=server(), beta=server())
    line = b"%07d" + b"x" * 4088 + b"\n"
    data = b"".join(line % i for i in range(5000))  # 20 MB
    res = env.run("-q", "exec", "alpha", "beta", "--", "cat", input=data, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    for label in ("alpha", "beta"):
        prefix = f"{label:<5} | "
        got = [ln[len(prefix) :] for ln in res.stdout.splitlines() if ln.startswith(prefix)]
        assert "\n".join(got) + "\n" == data.decode()


# A process's ru_maxrss starts at the peak of the process it was forked from (the
# kernel records the old address space's high-water mark at exec), and pytest may
# hold hundreds of MiB by the time this runs: a small launcher starts the client,
# so that wait4 reports the client's own peak.  It writes it to the fd it is given.
_PEAK_RSS_LAUNCHER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
os.write(int(sys.argv[1]), str(usage.ru_maxrss).encode())
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


def test_fan_out_stops_on_endless_stdin_with_bounded_memory(env: Env, server: StartServer) -> None:
    """`yes | ppcp exec a b -- head -1`: all of stdin was read before anything ran."""
    import os
    import signal
    import subprocess
    import sys
    import threading

    from cli_helpers import PPCP

    _aliases(env, alpha=server(), beta=server())
    yes = subprocess.Popen(["yes"], stdout=subprocess.PIPE)
    assert yes.stdout is not None
    peak_r, peak_w = os.pipe()
    argv = [*PPCP, "exec", "alpha", "beta", "--", "head", "-1"]
    client = subprocess.Popen(
        [sys.executable, "-c", _PEAK_RSS_LAUNCHER, str(peak_w), *argv],
        env=env.vars,
        cwd=env.home,
        stdin=yes.stdout,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=(peak_w,),
        start_new_session=True,
    )
    os.close(peak_w)
    yes.stdout.close()
    guard = threading.Timer(60, os.killpg, (client.pid, signal.SIGKILL))
    guard.start()
    try:
        # EOF on both pipes: the client has exited (stderr is only the summary).
        out, err = client.stdout.read(), client.stderr.read()  # type: ignore[union-attr]
        client.wait()
        with os.fdopen(peak_r, "rb") as peak:
            peak_kib = int(peak.read() or b"0")
    finally:
        guard.cancel()
        yes.kill()
        yes.wait(5)
    assert client.returncode == 0, err.decode()
    assert sorted(out.decode().splitlines()) == ["alpha | y", "beta  | y"], err.decode()
    assert 0 < peak_kib < 300_000, peak_kib  # KiB: stdin is not all held


def test_double_dash_inside_the_command_runs_nothing_elsewhere(
    env: Env, server: StartServer
) -> None:
    """`ppcp exec alpha echo -- touch ran` ran `touch ran` on alpha (and looked for a
    server named `echo`): now every name is reached first, and nothing runs."""
    srv = server("--name", "alpha", discovery=True)
    look = ("--timeout", "1", "--unicast", "127.0.0.1", "--discovery-port")
    args = (*look, str(srv.discovery_port))
    res = env.run("exec", "alpha", "echo", *args, "--", "touch", "ran")
    assert res.returncode == 255
    assert "no PPCP server named 'echo'" in res.stderr and "Nothing was run" in res.stderr
    assert "ppcp exec NAME -- CMD" in res.stderr and "Traceback" not in res.stderr
    assert not (env.home / "ran").exists()
    res = env.run("exec", "alpha", *args, "--", "echo", "--", "ok")
    assert (res.returncode, res.stdout) == (0, "-- ok\n"), res.stderr


def test_fan_out_runs_once_on_a_server_named_twice(env: Env, server: StartServer) -> None:
    srv = server("--name", "alpha", discovery=True)
    _aliases(env, one=srv, two=srv)
    args = ("--unicast", "127.0.0.1", "--discovery-port", str(srv.discovery_port))
    res = env.run("exec", "one", "two", "alpha", *args, "--", "echo ran")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["one | ran"]
    res = env.run("exec", "--all", "one", "--timeout", "1", *args, "--", "echo ran")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["one | ran"]


def test_command_too_long_is_a_clear_error(shared_env: Env, shared: Server) -> None:
    """Over the 64 KiB open payload: it was "internal error: ValueError" and exit 1."""
    env, srv = shared_env, shared
    for extra in (("--", "echo " + "a" * 70000), ("-e", "X=" + "x" * 70000, "--", "true")):
        res = env.run("exec", "--host", srv.address, *extra)
        assert res.returncode == 255, res.stderr
        assert "the command is too long" in res.stderr and "65536" in res.stderr
        assert "Traceback" not in res.stderr and "internal error" not in res.stderr


def test_fan_out_into_head_stops_quietly_with_141(env: Env, server: StartServer) -> None:
    """`ppcp exec a b -- yes | head -2`: it was a "Broken pipe" per server, exit 255."""
    import subprocess

    _aliases(env, alpha=server(), beta=server())
    client = env.popen(
        "exec",
        "alpha",
        "beta",
        "--",
        "yes",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert client.stdout is not None and client.stderr is not None
    try:
        assert client.stdout.readline().endswith(b"| y\n")
        client.stdout.close()
        err = client.stderr.read()
        client.wait(30)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(5)
    assert client.returncode == 141, err.decode()
    assert err == b""


def test_fan_out_cuts_output_without_newlines_into_prefixed_lines(
    env: Env, server: StartServer
) -> None:
    """A line was held whole and copied again with each chunk (quadratic time)."""
    _aliases(env, alpha=server(), beta=server())
    res = env.run("-q", "exec", "alpha", "beta", "--", "head -c 1000000 /dev/zero | tr '\\0' z")
    assert res.returncode == 0, res.stderr
    for label in ("alpha", "beta"):
        prefix = f"{label:<5} | "
        pieces = [ln[len(prefix) :] for ln in res.stdout.splitlines() if ln.startswith(prefix)]
        assert "".join(pieces) == "z" * 1000000
        assert len(pieces) > 1 and max(len(p) for p in pieces) <= 128 * 1024


def test_fan_out_summary_says_timed_out_and_quiet_keeps_only_failures(
    env: Env, server: StartServer
) -> None:
    _aliases(env, alpha=server(), beta=server())
    res = env.run("exec", "alpha", "beta", "--max-time", "0.5", "--", "sleep 30")
    assert res.returncode == 1
    assert res.stderr.count("exit 143 (timed out)") == 2, res.stderr
    res = env.run("-q", "exec", "alpha", "beta", "--", "true")
    assert (res.returncode, res.stderr) == (0, "")  # README: -q, no summaries
    res = env.run("-q", "exec", "alpha", "beta", "--", "exit 3")
    assert res.returncode == 1 and res.stderr.count("exit 3") == 2, res.stderr


def test_a_busy_server_is_tried_again_within_the_timeout(env: Env, server: StartServer) -> None:
    """8 handshakes in progress from one address fill its slots (`xargs -P 16 ppcp
    exec`): the next client failed at once, although the server says "try again"."""
    import socket
    import subprocess

    srv = server()
    held = [socket.create_connection((srv.host, srv.port)) for _ in range(8)]
    try:
        client = env.popen(
            "exec",
            "--host",
            srv.address,
            "--timeout",
            "20",
            "--",
            "echo",
            "in",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        srv.wait_for(r"refusing .*too many handshakes in progress from this address")
    finally:
        for sock in held:
            sock.close()
    try:
        out, err = client.communicate(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(5)
    assert (client.returncode, out) == (0, b"in\n"), err.decode()


@pytest.mark.parametrize("limit", ["inf", "nan", "0", "-1", "soon"])
def test_max_time_must_be_a_positive_finite_number(env: Env, limit: str) -> None:
    # Refused before anything is looked up or sent (nothing listens on port 9).
    res = env.run("exec", "--host", "127.0.0.1:9", "--max-time", limit, "--", "true")
    assert res.returncode == 255, res.stderr
    assert "--max-time" in res.stderr and "number of seconds" in res.stderr
    assert "connection" not in res.stderr and "Traceback" not in res.stderr
