"""Run-wide settings and state shared by the benchmark sections."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    BIN,
    RESULTS_DIR,
    GiB,
    MiB,
    Procs,
    Report,
    child_env,
    free_port,
    wait_port,
)


@dataclass(frozen=True)
class Settings:
    """How big and how many; ``smoke()`` is the CI-sized version."""

    smoke: bool = False
    file_size: int = GiB
    transfer_runs: int = 5
    cold_runs: int = 40  # milliseconds each: more samples steady the median on a noisy host
    cli_runs: int = 20
    warm_runs: int = 200
    concurrent: int = 100
    # asyncssh's bursts spread +-12 % on this host: 5 rounds left the median loose.
    concurrent_rounds: int = 11
    idle_sessions: int = 1000
    idle_hold: float = 8.0
    idle_heartbeat: float = 1.0
    handshake_runs: int = 500
    socket_handshakes: int = 200
    transfer_timeout: float = 300.0
    section_budget: float = 600.0
    total_budget: float = 3600.0  # sections not started by then are skipped

    @classmethod
    def smoke_settings(cls) -> Settings:
        return cls(
            smoke=True,
            file_size=8 * MiB,
            transfer_runs=2,
            cold_runs=3,
            cli_runs=2,
            warm_runs=10,
            concurrent=20,
            concurrent_rounds=2,
            idle_sessions=30,
            idle_hold=1.5,
            idle_heartbeat=0.5,
            handshake_runs=40,
            socket_handshakes=20,
            transfer_timeout=30.0,
            section_budget=20.0,
            total_budget=45.0,
        )


@dataclass
class Context:
    settings: Settings
    report: Report
    procs: Procs
    have: dict[str, bool]
    work: Path = field(default_factory=Path)
    psk: str = ""
    psk_file: Path = field(default_factory=Path)
    ssh_keys: Any = None  # bench.peers.SshKeys when asyncssh is available
    out_dir: Path = RESULTS_DIR

    def __post_init__(self) -> None:
        import ppcp

        shm = Path("/dev/shm")
        parent = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
        self.work = Path(tempfile.mkdtemp(prefix="ppcp-bench-", dir=parent))
        self.psk = ppcp.generate_psk()
        self.psk_file = self.work / "psk"
        self.psk_file.write_text(self.psk + "\n")
        self.psk_file.chmod(0o600)
        (self.work / "config").mkdir()
        if self.have.get("asyncssh"):
            from bench.peers import SshKeys

            keydir = self.work / "askeys"
            keydir.mkdir()
            self.ssh_keys = SshKeys.create(keydir)

    def cleanup(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    def env(self) -> dict[str, str]:
        """Environment for child processes: our PSK, no user config."""
        from bench.peers import PSK_ENV

        return child_env(
            **{
                PSK_ENV: self.psk,
                "PPCP_PSK_FILE": str(self.psk_file),
                "XDG_CONFIG_HOME": str(self.work / "config"),
            }
        )

    def start_server(
        self,
        kind: str,
        root: Path,
        *,
        heartbeat: float | None = None,
        max_unauthenticated: int | None = None,
        profile: Path | None = None,
        profiler: str = "pyinstrument",
        extra_env: dict[str, str] | None = None,
    ) -> tuple[subprocess.Popen[bytes], int]:
        """A PPCP or asyncssh server in a child process; (process, port)."""
        port = free_port()
        cmd = [str(BIN / "python"), "-m", "bench.peers", kind, "--port", str(port)]
        cmd += ["--root", str(root)]
        if kind == "asyncssh":
            cmd += ["--keys", str(self.ssh_keys.dir)]
        if heartbeat is not None:
            cmd += ["--heartbeat", str(heartbeat)]
        if max_unauthenticated is not None:
            cmd += ["--max-unauthenticated", str(max_unauthenticated)]
        if profile is not None:
            cmd += ["--profile", str(profile), "--profiler", profiler]
        log = open(self.work / f"server-{kind}-{port}.log", "wb")  # noqa: SIM115
        env = {**self.env(), **(extra_env or {})}
        proc = self.procs.start(cmd, stdout=log, stderr=log, env=env)
        log.close()
        wait_port(port, 30, proc)
        return proc, port

    def start_cli_server(
        self, root: Path, discovery_port: int | None = None
    ) -> tuple[subprocess.Popen[bytes], int]:
        """``ppcp serve`` on loopback; with ``discovery_port`` it answers PINGs there
        (as ``bench``), otherwise discovery is off."""
        port = free_port()
        log = open(self.work / f"server-cli-{port}.log", "wb")  # noqa: SIM115
        cmd = [str(BIN / "ppcp"), "serve", "--bind", "127.0.0.1", "--port", str(port)]
        cmd += ["--root", str(root), "--name", "bench"]
        if discovery_port is None:
            cmd += ["--no-discovery"]
        else:
            cmd += ["--discovery-port", str(discovery_port)]
        proc = self.procs.start(cmd, stdout=log, stderr=log, env=self.env())
        log.close()
        wait_port(port, 30, proc)
        return proc, port


def have_session_api(*names: str) -> bool:
    """Does the asyncio session have these client methods yet?"""
    from ppcp.transport.aio_driver import AsyncSession

    return all(callable(getattr(AsyncSession, n, None)) for n in names)


def have_cli(*commands: str) -> bool:
    """Are these ``ppcp`` subcommands implemented (module present) and installed?"""
    if not (BIN / "ppcp").exists():
        return False
    return all(importlib.util.find_spec(f"ppcp.cli.{c}") is not None for c in commands)
