"""Helpers for the CLI tests: every command runs as a real subprocess.

:class:`Env` runs ``python -m ppcp.cli`` in an isolated environment (its own
HOME, XDG directories and 0600 key file); :class:`Servers` starts ``ppcp
serve`` on 127.0.0.1 with port 0 and waits (bounded, no sleeps) for its
``listening on HOST:PORT`` log line.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PPCP = [sys.executable, "-m", "ppcp.cli"]
READY_TIMEOUT = 20.0
LISTENING = re.compile(r"listening on (\S+):(\d+)")
DISCOVERY = re.compile(r"discovery on UDP port (\d+)")


@dataclass
class Env:
    """An isolated user environment for ppcp processes."""

    home: Path
    vars: dict[str, str]
    psk_file: Path

    def run(
        self,
        *args: str,
        input: bytes | str | None = None,
        timeout: float = 30.0,
        extra_env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return self._run([*PPCP, *args], input, timeout, extra_env, cwd)

    def python(self, code: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """``python -c code`` in this environment (to look inside a ppcp process)."""
        return self._run([sys.executable, "-c", code], None, timeout, None, None)

    def _run(
        self,
        argv: list[str],
        input: bytes | str | None,
        timeout: float,
        extra_env: dict[str, str] | None,
        cwd: Path | None,
    ) -> subprocess.CompletedProcess[str]:
        env = {**self.vars, **(extra_env or {})}
        data = input.encode() if isinstance(input, str) else input
        res = subprocess.run(
            argv,
            input=data,
            capture_output=True,
            env=env,
            timeout=timeout,
            cwd=cwd or self.home,
            stdin=None if data is not None else subprocess.DEVNULL,
        )
        return subprocess.CompletedProcess(
            res.args,
            res.returncode,
            res.stdout.decode("utf-8", "replace"),
            res.stderr.decode("utf-8", "replace"),
        )

    def run_in(self, wrap: list[str], *args: str) -> subprocess.CompletedProcess[str]:
        """Run ppcp under a wrapper command (``ip netns exec NS``...)."""
        res = subprocess.run(
            [*wrap, *PPCP, *args],
            capture_output=True,
            text=True,
            env=self.vars,
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
        return res

    def popen(self, *args: str, **kwargs: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
            [*PPCP, *args], env=self.vars, cwd=self.home, **kwargs
        )

    def exec_process(
        self, address: str, command: str, stdin: int = subprocess.DEVNULL
    ) -> subprocess.Popen[bytes]:
        """``ppcp exec --host ADDRESS -- COMMAND`` running, its stdout and stderr piped."""
        return self.popen(
            "exec",
            "--host",
            address,
            "--",
            command,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def new_key(self, name: str) -> Path:
        path = self.home / name
        res = self.run("keygen", "--out", str(path), "-q")
        assert res.returncode == 0, res.stderr
        return path


def make_env(base: Path) -> Env:
    home = base / "home"
    home.mkdir()
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
    variables = {
        **keep,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "SHELL": "/bin/sh",
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "200",
        "TERM": "dumb",
    }
    e = Env(home, variables, home / ".config" / "ppcp" / "psk")
    res = e.run("keygen", "-q")
    assert res.returncode == 0, res.stderr
    assert e.psk_file.exists()
    return e


@dataclass
class Server:
    """A running ``ppcp serve`` (or ``listen``) whose stderr is collected."""

    proc: subprocess.Popen[bytes]
    host: str = ""
    port: int = 0
    discovery_port: int | None = None
    lines: list[str] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    stdout_lines: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self.cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.lines.append("<EOF>")
            self.cond.notify_all()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self.cond:
                self.stdout_lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self.cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = READY_TIMEOUT, stdout: bool = False) -> str:
        """The first log line matching ``pattern`` (regex), waiting at most ``timeout`` s."""
        rx = re.compile(pattern)
        lines = self.stdout_lines if stdout else self.lines
        with self.cond:
            found: list[str] = []

            def match() -> bool:
                found[:] = [line for line in lines if rx.search(line)]
                return bool(found) or "<EOF>" in self.lines

            self.cond.wait_for(match, timeout)
            if not found:
                raise AssertionError(f"no line matching {pattern!r} in:\n" + self.log)
            return found[0]

    @property
    def log(self) -> str:
        with self.cond:
            return "\n".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError("server did not stop on SIGTERM:\n" + self.log) from None


class Servers:
    """Starts ``ppcp <command> --bind 127.0.0.1 --port 0 ...`` and stops them all."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.started: list[Server] = []

    def __call__(
        self,
        *extra: str,
        command: str = "serve",
        discovery: bool = False,
        psk_file: Path | None = None,
        wrap: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
        bind: str = "127.0.0.1",
        discovery_port: int = 0,
    ) -> Server:
        args = [command, "--bind", bind, "--port", "0"]
        args += ["--discovery-port", str(discovery_port)] if discovery else ["--no-discovery"]
        if psk_file is not None:
            args += ["--psk-file", str(psk_file)]
        proc = subprocess.Popen(
            [*(wrap or []), *PPCP, *args, *extra],
            env={**self.env.vars, **(extra_env or {})},
            cwd=self.env.home,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        srv = Server(proc)
        self.started.append(srv)
        threading.Thread(target=srv._read, daemon=True).start()
        threading.Thread(target=srv._read_stdout, daemon=True).start()
        m = LISTENING.search(srv.wait_for(LISTENING.pattern))
        assert m is not None
        srv.host, srv.port = m.group(1), int(m.group(2))
        if discovery:
            d = DISCOVERY.search(srv.wait_for(DISCOVERY.pattern))
            assert d is not None
            srv.discovery_port = int(d.group(1))
        return srv

    def close(self) -> None:
        for srv in self.started:
            if srv.proc.poll() is None:
                srv.proc.kill()
                srv.proc.wait(5)


StartServer = Callable[..., Server]
