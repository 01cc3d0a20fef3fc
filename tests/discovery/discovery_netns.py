"""Linux network namespaces for the multi-host discovery tests and benchmark.

Every namespace is named ``ppd<pid><tag>-<node>`` so a run never touches
another run's namespaces, and :meth:`Topology.close` (always called by the
fixture's finalizer) kills the processes it started and deletes them all.
Bridges live in a namespace of their own: the host's network is untouched.
Only private test subnets (10.231.x.0/24) are used, and only inside.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PREFIX = "ppd"


def netns_unavailable() -> str | None:
    """Why netns tests cannot run here, or None."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    probe = f"{PREFIX}{os.getpid()}probe"
    try:
        subprocess.run(["ip", "netns", "add", probe], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns add` does not work here: {exc}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


def remove_stale_namespaces() -> None:
    """Delete namespaces left by earlier runs whose process is gone (ours only)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    for line in out.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(rf"{PREFIX}(\d+)", name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def ip(*args: str) -> None:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip()}")


@dataclass
class Proc:
    """A process started in a namespace; ``ready`` is its first stdout line."""

    popen: subprocess.Popen[str]
    ready: str = ""
    info: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(OSError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(3)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(3)
        for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


class Topology:
    """Namespaces joined by veth pairs to bridges (in their own namespace)."""

    def __init__(self, tag: str = "") -> None:
        self.prefix = f"{PREFIX}{os.getpid()}{tag}"
        self.namespaces: list[str] = []
        self.procs: list[Proc] = []
        self.bridge_ns = self.node("br")
        self._veths = 0

    def ns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def node(self, node: str, ipv6: bool = True) -> str:
        name = self.ns(node)
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        for conf in ("all", "default"):
            # No duplicate address detection: IPv6 link-local is usable at once.
            self.sysctl(name, f"net/ipv6/conf/{conf}/accept_dad", "0")
            if not ipv6:
                self.sysctl(name, f"net/ipv6/conf/{conf}/disable_ipv6", "1")
        return name

    def sysctl(self, ns: str, key: str, value: str) -> None:
        subprocess.run(
            ["ip", "netns", "exec", ns, "sh", "-c", f"echo {value} > /proc/sys/{key}"],
            check=True,
            capture_output=True,
            timeout=10,
        )

    def bridge(self, name: str) -> str:
        ip("-n", self.bridge_ns, "link", "add", name, "type", "bridge")
        ip("-n", self.bridge_ns, "link", "set", name, "up")
        return name

    def link(self, ns: str, ifname: str, bridge: str, *cidrs: str) -> None:
        """Plug ``ns`` into ``bridge`` as interface ``ifname`` with addresses ``cidrs``."""
        self._veths += 1
        peer = f"v{self._veths}"
        ip(
            "-n",
            ns,
            "link",
            "add",
            ifname,
            "type",
            "veth",
            "peer",
            "name",
            peer,
            "netns",
            self.bridge_ns,
        )
        ip("-n", self.bridge_ns, "link", "set", peer, "master", bridge, "up")
        ip("-n", ns, "link", "set", ifname, "up")
        for cidr in cidrs:
            ip("-n", ns, "addr", "add", cidr, "dev", ifname)

    def ip_addr(self, ns: str, *args: str) -> None:
        ip("-n", ns, "addr", *args)

    def ip_route(self, ns: str, *args: str) -> None:
        ip("-n", ns, "route", "add", *args)

    def spawn(self, ns: str, argv: list[str], ready_timeout: float = 15.0) -> Proc:
        """Start ``argv`` in ``ns`` and wait (bounded) for its "ready" line on stdout."""
        popen = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        proc = Proc(popen)
        self.procs.append(proc)
        assert popen.stdout is not None
        deadline = time.monotonic() + ready_timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([popen.stdout], [], [], left)[0]:
                proc.stop()
                raise TimeoutError(f"{argv} did not print ready: {_stderr(popen)}")
            line = popen.stdout.readline()
            if not line:
                raise RuntimeError(f"{argv} exited ({popen.wait()}): {_stderr(popen)}")
            if line.startswith("ready"):
                proc.ready = line.strip()
                proc.info = dict(kv.split("=", 1) for kv in line.split()[1:])
                return proc

    def run(
        self, ns: str, argv: list[str], timeout: float = 20.0
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout
        )

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
        self.namespaces.clear()

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _stderr(popen: subprocess.Popen[str]) -> str:
    if popen.poll() is None:
        return "(still running)"
    assert popen.stderr is not None
    return popen.stderr.read()[-2000:]


def python(script: str, *args: str) -> list[str]:
    """argv running one of this directory's helper scripts with the test interpreter."""
    return [sys.executable, str(HERE / script), *args]


def server_argv(psk: str, name: str, *extra: str) -> list[str]:
    return python("netns_server.py", "--psk", psk, "--name", name, *extra)


def client_json(topo: Topology, ns: str, *args: str, timeout: float = 20.0) -> object:
    """Run netns_client.py in ``ns``; its JSON output, or AssertionError with its stderr."""
    res = topo.run(ns, python("netns_client.py", *args), timeout=timeout)
    if res.returncode != 0:
        raise AssertionError(f"client failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return json.loads(res.stdout)
