"""A throwaway OpenSSH server on 127.0.0.1 for the peer measurements.

Host and client keys, ``authorized_keys`` and ``sshd_config`` live in a temp
dir; sshd runs in the foreground (``-D -e -f cfg``) in a process group of its
own, and only that group is stopped at the end.  Nothing in /etc is read
or changed (the client side uses ``-F /dev/null``).
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from bench.common import LOOPBACK, Deadline, Procs, free_port, wait_port
from bench.deps import sshd_path


class SshDaemon:
    def __init__(self, procs: Procs) -> None:
        self.procs = procs
        self.port = 0
        self.dir = Path()
        self.user = getpass.getuser()
        self.proc: subprocess.Popen[bytes] | None = None
        self._master: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SshDaemon:
        sshd = sshd_path()
        if sshd is None:
            raise RuntimeError("sshd is not installed")
        self.dir = Path(tempfile.mkdtemp(prefix="ppcp-bench-ssh-"))
        try:
            self._setup(sshd)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _setup(self, sshd: str) -> None:
        d = self.dir
        os.chmod(d, 0o700)
        for name in ("host_ed25519", "client_ed25519"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ppcp-bench", "-f", d / name],
                check=True,
                timeout=30,
            )
        shutil.copy(d / "client_ed25519.pub", d / "authorized_keys")
        # sshd (as root) insists on its privilege-separation directory.
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.port = free_port()
        sftp_server = next(
            (
                p
                for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server")
                if os.access(p, os.X_OK)
            ),
            "internal-sftp",
        )
        (d / "sshd_config").write_text(
            f"""\
Port {self.port}
ListenAddress {LOOPBACK}
HostKey {d / "host_ed25519"}
PidFile {d / "sshd.pid"}
AuthorizedKeysFile {d / "authorized_keys"}
PermitRootLogin yes
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PrintMotd no
PrintLastLog no
MaxSessions 64
MaxStartups 200:30:400
LogLevel ERROR
Subsystem sftp {sftp_server}
"""
        )
        self.proc = self.procs.start(
            [sshd, "-D", "-e", "-f", str(d / "sshd_config")],
            stdout=subprocess.DEVNULL,
            stderr=open(d / "sshd.log", "wb"),  # noqa: SIM115 - closed with the dir
        )
        wait_port(self.port, 15, self.proc)
        # The first real login proves the keys and config work.
        check = subprocess.run(
            [*self.ssh_cmd(), "true"], capture_output=True, timeout=30, check=False
        )
        if check.returncode != 0:
            raise RuntimeError(
                f"ssh login to the bench sshd failed: {check.stderr.decode(errors='replace')}"
                f" / sshd log: {(d / 'sshd.log').read_text(errors='replace')[-500:]}"
            )

    @property
    def client_key(self) -> Path:
        return self.dir / "client_ed25519"

    @property
    def host_key(self) -> Path:
        return self.dir / "host_ed25519"

    def common_opts(self) -> list[str]:
        return [
            "-F",
            "/dev/null",
            "-i",
            str(self.client_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
        ]

    @property
    def dest(self) -> str:
        return f"{self.user}@{LOOPBACK}"

    def ssh_cmd(self, *extra: str) -> list[str]:
        return ["ssh", *self.common_opts(), "-p", str(self.port), *extra, self.dest]

    def scp_cmd(self) -> list[str]:
        return ["scp", "-q", *self.common_opts(), "-P", str(self.port)]

    def sftp_cmd(self, batch: Path) -> list[str]:
        return [
            "sftp",
            "-q",
            *self.common_opts(),
            "-P",
            str(self.port),
            "-b",
            str(batch),
            self.dest,
        ]

    # -- ControlMaster --------------------------------------------------------

    @property
    def control_path(self) -> Path:
        return self.dir / "cm.sock"

    def start_master(self) -> list[str]:
        """Start a ControlMaster; return the ssh command prefix that reuses it."""
        self._master = self.procs.start(
            self.ssh_cmd(
                "-M", "-N", "-o", f"ControlPath={self.control_path}", "-o", "ControlPersist=no"
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = Deadline(15)
        while not self.control_path.exists():
            if deadline.expired or self._master.poll() is not None:
                raise RuntimeError("ssh ControlMaster did not come up")
            time.sleep(0.05)
        return self.ssh_cmd("-o", f"ControlPath={self.control_path}", "-o", "ControlMaster=no")

    def stop_master(self) -> None:
        if self._master is not None:
            self.procs.stop(self._master)
            self._master = None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_master()
        if self.proc is not None:
            self.procs.stop(self.proc)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
