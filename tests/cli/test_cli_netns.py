"""By name through real discovery: client and server in two network namespaces.

Reuses the discovery tests' namespace topology (tests/discovery/discovery_netns.py).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cli_helpers import Env, StartServer

HELPER = Path(__file__).resolve().parent.parent / "discovery" / "discovery_netns.py"

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def _load_helper() -> ModuleType | None:
    if "discovery_netns" in sys.modules:
        return sys.modules["discovery_netns"]
    if not HELPER.exists():
        return None
    spec = importlib.util.spec_from_file_location("discovery_netns", HELPER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["discovery_netns"] = module
    spec.loader.exec_module(module)
    return module


netns = _load_helper()


@pytest.fixture
def lan() -> Iterator[Any]:
    """Two namespaces, ``srv`` (10.231.77.1) and ``cli`` (10.231.77.2), on one bridge."""
    if netns is None:
        pytest.skip("tests/discovery/discovery_netns.py is not available")
    reason = netns.netns_unavailable()
    if reason:
        pytest.skip(reason)
    netns.remove_stale_namespaces()
    topo = netns.Topology("cli")
    try:
        bridge = topo.bridge("br0")
        topo.srv = topo.node("srv")
        topo.cli = topo.node("cli")
        topo.link(topo.srv, "eth0", bridge, "10.231.77.1/24")
        topo.link(topo.cli, "eth0", bridge, "10.231.77.2/24")
        yield topo
    finally:
        topo.close()


def test_exec_scan_and_send_by_name(env: Env, server: StartServer, lan: Any) -> None:
    srv = server(
        "--name",
        "kitchen",
        "--no-mdns",
        discovery=True,
        discovery_port=9000,
        bind="0.0.0.0",
        wrap=["ip", "netns", "exec", lan.srv],
    )
    assert srv.discovery_port == 9000

    def client(*args: str, timeout: str = "3") -> Any:
        return env.run_in(["ip", "netns", "exec", lan.cli], "--timeout", timeout, *args)

    res = client("exec", "kitchen", "--", "echo", "hello from the kitchen")
    assert (res.returncode, res.stdout) == (0, "hello from the kitchen\n"), res.stderr
    res = client("scan", "--json", timeout="0.7")
    assert res.returncode == 0, res.stderr
    (found,) = json.loads(res.stdout)
    assert found["name"] == "kitchen" and found["verified"] is True
    assert "10.231.77.1" in found["addresses"] and found["port"] == srv.port
    res = client("send", "dinner is ready", "kitchen")
    assert res.returncode == 0, res.stderr
    assert "dinner is ready" in srv.wait_for("dinner is ready")
    res = client("exec", "garage", "--", "true", timeout="0.7")
    assert res.returncode == 255 and "'garage'" in res.stderr
