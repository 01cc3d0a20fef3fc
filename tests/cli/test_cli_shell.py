"""ppcp shell under a real pseudo-terminal: type, read the screen, exit, terminal restored."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pty
import re
import select
import signal
import sys
import time
from collections.abc import Iterator

import pytest
from cli_helpers import PPCP, Env, Server, StartServer

# Runs `ppcp shell` in the pty and reports whether the terminal modes survived.
WRAPPER = """
import subprocess, sys, termios
before = termios.tcgetattr(0)
child = subprocess.Popen(sys.argv[1:])
print(f"CHILD {child.pid}", flush=True)
rc = child.wait()
after = termios.tcgetattr(0)
print(f"\\r\\nWRAPPER rc={rc} restored={before == after}", flush=True)
"""


class Terminal:
    def __init__(self, env: Env, *args: str) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # child: becomes the wrapper, in the pty
            os.execve(sys.executable, [sys.executable, "-c", WRAPPER, *PPCP, *args], env.vars)
        self.screen = b""
        self.child_pid = int(self.expect(rb"CHILD (\d+)").group(1))

    def expect(self, pattern: bytes, timeout: float = 20.0) -> re.Match[bytes]:
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.screen)
            if m:
                return m
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise AssertionError(f"{pattern!r} not seen; screen:\n{self.screen!r}")
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: the pty closed
                chunk = b""
            if not chunk:
                raise AssertionError(f"{pattern!r} not seen before EOF:\n{self.screen!r}")
            self.screen += chunk

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def finish(self) -> tuple[int, bool]:
        m = self.expect(rb"WRAPPER rc=(-?\d+) restored=(True|False)")
        os.waitpid(self.pid, 0)
        return int(m.group(1)), m.group(2) == b"True"

    def close(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(self.fd)


@pytest.fixture
def terminal(env: Env) -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for t in opened:
        t.close()


def open_shell(env: Env, srv: Server, terminals: list[Terminal]) -> Terminal:
    t = Terminal(env, "shell", "--host", srv.address)
    terminals.append(t)
    # Raw mode flushes type-ahead: wait for the remote prompt before typing.
    t.expect(rb"[#$] $")
    return t


def test_shell_runs_commands_and_restores_the_terminal(
    env: Env, server: StartServer, terminal: list[Terminal]
) -> None:
    srv = server()
    t = open_shell(env, srv, terminal)
    t.type("echo answer-$((6*7))\r")
    t.expect(rb"answer-42")
    t.type("exit 3\r")
    assert t.finish() == (3, True)


def test_terminal_restored_when_the_server_goes_away(
    env: Env, server: StartServer, terminal: list[Terminal]
) -> None:
    srv = server()
    t = open_shell(env, srv, terminal)
    t.type("echo ready-$((1+1))\r")
    t.expect(rb"ready-2")
    assert srv.stop() == 0
    assert "closing 1 session(s)" in srv.log
    rc, restored = t.finish()
    assert restored
    assert rc == 255
    assert b"ppcp:" in t.screen


def test_terminal_restored_when_the_client_is_terminated(
    env: Env, server: StartServer, terminal: list[Terminal]
) -> None:
    srv = server()
    t = open_shell(env, srv, terminal)
    t.type("echo up-$((2+2))\r")
    t.expect(rb"up-4")
    os.kill(t.child_pid, signal.SIGTERM)
    rc, restored = t.finish()
    assert restored
    assert rc == 255
    assert b"SIGTERM" in t.screen


@pytest.mark.parametrize("local_term", ["caf\udce9", "x" * 70], ids=["not-utf-8", "too-long"])
def test_a_term_the_wire_cannot_carry_falls_back(
    env: Env, server: StartServer, terminal: list[Terminal], local_term: str
) -> None:
    """$TERM only picks the remote terminfo entry: an odd one (here not UTF-8, which
    was an internal error, or over 64 bytes, which was refused) must not cost the shell."""
    odd = dataclasses.replace(env, vars={**env.vars, "TERM": local_term})
    t = open_shell(odd, server(), terminal)
    t.type("echo term=$TERM\r")
    t.expect(rb"term=xterm-256color")
    t.type("exit 6\r")
    assert t.finish() == (6, True)


def test_shell_refused_by_policy(env: Env, server: StartServer) -> None:
    srv = server("--no-exec")
    res = env.run("shell", "--host", srv.address)
    assert res.returncode == 255
    assert "refused" in res.stderr


def test_shell_with_piped_stdin_runs_without_a_terminal(env: Env, server: StartServer) -> None:
    """`echo cmd | ppcp shell`: the ^D typed at the end of input into a terminal could
    be lost, and the shell then waited forever; as with ssh, no terminal is used."""
    srv = server()
    res = env.run("shell", "--host", srv.address, input="echo piped-$((6*7)); tty\n")
    assert res.returncode == 1, res.stderr  # tty: "not a tty"
    assert res.stdout.splitlines() == ["piped-42", "not a tty"]
    assert "stdin is not a terminal" in res.stderr
    res = env.run("-q", "shell", "--host", srv.address, input="echo err >&2; exit 4\n")
    assert (res.returncode, res.stdout, res.stderr) == (4, "", "err\n")
    res = env.run("shell", "--host", srv.address)  # stdin is /dev/null
    assert res.returncode == 0, res.stderr
    assert "no terminal" in srv.wait_for(r"shell for .*no terminal")


def test_shell_without_terminal_keeps_the_shell_policy(env: Env, server: StartServer) -> None:
    for policy in (("--no-shell",), ("--allow", "echo")):
        srv = server(*policy)
        res = env.run("shell", "--host", srv.address, input="echo ran\n")
        assert res.returncode == 255, res
        assert "refused" in res.stderr and "ran" not in res.stdout


def test_background_jobs_end_when_the_connection_drops(
    env: Env, server: StartServer, terminal: list[Terminal]
) -> None:
    """As with sshd: the terminal hangs up and bash passes SIGHUP on to its jobs.
    The shell's group was SIGKILLed at once, and `sleep 501 &` ran on under init."""
    srv = server(extra_env={"SHELL": "/bin/bash"})
    t = open_shell(env, srv, terminal)
    t.type("sleep 501 & echo job=$!\r")
    pid = int(t.expect(rb"job=(\d+)").group(1))
    job = os.pidfd_open(pid)
    try:
        os.kill(t.child_pid, signal.SIGKILL)  # the client dies: the connection drops
        assert select.select([job], [], [], 30)[0], "the background job is still running"
    finally:
        os.close(job)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_terminal_of_unknown_size_gets_80x24(
    env: Env, server: StartServer, terminal: list[Terminal]
) -> None:
    """A new pty reports 0x0 (the test's own terminal does): the remote one was 1x1."""
    t = open_shell(env, server(), terminal)
    t.type("echo size=$(stty size | tr ' ' x)\r")
    t.expect(rb"size=24x80")
    t.type("exit\r")
    assert t.finish() == (0, True)
