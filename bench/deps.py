"""Install what the full benchmark needs, at run time, only when it is missing.

Python packages go into the running interpreter's environment (the project
venv) with ``pip``; OpenSSH comes from ``apt-get`` (root only).  ``--smoke``
never installs anything: it uses what is already there and skips the rest.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys

from bench.common import PYTHON

# import name -> pip requirement (kept in step with pyproject's `bench` extra).
PIP_PACKAGES = {
    "asyncssh": "asyncssh>=2.14",
    "matplotlib": "matplotlib>=3.8",
    "pyinstrument": "pyinstrument>=4.6",
}
# Only for --uvloop.
OPTIONAL_PIP = {"uvloop": "uvloop>=0.19"}
APT_PACKAGES = {"sshd": "openssh-server", "ssh": "openssh-client"}
SSHD_PATHS = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")


def have_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def ensure_pip(names: list[str], log: list[str]) -> list[str]:
    """pip-install the missing modules; return the names importable afterwards."""
    missing = [n for n in names if not have_module(n)]
    if missing:
        reqs = [{**PIP_PACKAGES, **OPTIONAL_PIP}[n] for n in missing]
        log.append(f"pip install {' '.join(reqs)}")
        proc = subprocess.run(
            [PYTHON, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *reqs],
            capture_output=True,
            timeout=600,
            check=False,
        )
        if proc.returncode != 0:
            log.append(f"pip failed: {proc.stderr.decode(errors='replace')[-500:]}")
        importlib.invalidate_caches()
    return [n for n in names if have_module(n)]


def sshd_path() -> str | None:
    for path in SSHD_PATHS:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("sshd")


def ensure_openssh(log: list[str]) -> bool:
    """apt-get install openssh-server/-client if missing (root + apt only)."""
    need = []
    if sshd_path() is None:
        need.append(APT_PACKAGES["sshd"])
    if not all(shutil.which(t) for t in ("ssh", "scp", "sftp", "ssh-keygen")):
        need.append(APT_PACKAGES["ssh"])
    if not need:
        return True
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        log.append(f"cannot install {' '.join(need)}: not root or no apt-get")
        return False
    log.append(f"apt-get install {' '.join(need)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *need],
    ):
        proc = subprocess.run(cmd, capture_output=True, env=env, timeout=900, check=False)
        if proc.returncode != 0:
            log.append(f"{' '.join(cmd[:2])} failed: {proc.stderr.decode(errors='replace')[-500:]}")
            return False
    return sshd_path() is not None


def ensure_all(smoke: bool, log: list[str]) -> dict[str, bool]:
    """What is available for this run (installing first unless ``smoke``)."""
    names = list(PIP_PACKAGES)
    if smoke:
        have = {n: have_module(n) for n in names}
        have["openssh"] = False  # smoke never starts an sshd
        return have
    available = set(ensure_pip(names, log))
    have = {n: n in available for n in names}
    have["openssh"] = ensure_openssh(log)
    return have


def import_optional(name: str) -> object | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


if __name__ == "__main__":  # pragma: no cover - manual helper
    messages: list[str] = []
    print(ensure_all("--smoke" in sys.argv, messages))
    print("\n".join(messages))
