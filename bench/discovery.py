"""Discovery benchmark: PING -> first valid PONG between network namespaces.

    sudo .venv/bin/python bench/discovery.py [--runs 200]

Builds a private LAN of namespaces joined by a bridge (10.231.1.0/24, inside
the namespaces only; the host's network is untouched), then measures, each
over ``--runs`` scans from a client namespace:

1. one server: time from the start of a scan (interfaces listed, sockets
   opened, PINGs sent to broadcast, directed broadcast and ff02::1) to the
   first verified PONG; the PING/PONG round trip; the whole ``aio_discover``
   call; and the blocking ``ppcp.find_server`` call including the TCP connect;
2. five servers answering the same broadcast: time to the first and to all five;
3. floods: unicast PINGs to one server, first without, then while a third
   namespace floods that server's UDP port as fast as it can, with random
   garbage (dropped by the kernel pre-filter), then with well-formed PINGs
   carrying wrong tags (the worst case: each costs an HMAC in Python).

Servers run with raised rate limits (``--rate``): the default per-source
limit (10 PONGs/s) would otherwise throttle hundreds of scans in a row.
Runs are ``--gap`` (20 ms) apart: a real client scans from idle, and on a
busy machine a client looping flat out delays the server's own wakeups.
Prints a table and writes bench/results/discovery.json.  Needs root.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import select
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "discovery.json"
sys.path.insert(0, str(REPO / "tests" / "discovery"))
sys.path.insert(0, str(REPO))

from discovery_netns import (  # noqa: E402
    Proc,
    Topology,
    netns_unavailable,
    remove_stale_namespaces,
    server_argv,
)

import ppcp  # noqa: E402

SERVERS = 5
SUBNET = "10.231.1"
RATE = "100000"


# -- the client and flood workers (run inside namespaces) ------------------------------


async def scan_once(key: bytes, cfg: Any, port: int, want: int) -> tuple[float, float, float]:
    """(ms to first verified PONG, ms to ``want`` servers, rtt ms of the first)."""
    from ppcp.discovery.scanner import Scan

    started = time.perf_counter()
    scan = Scan(key, cfg, port)
    await scan.start()
    first = rtt = 0.0
    seen: set[str] = set()
    try:
        while len(seen) < want:
            sighting = await asyncio.wait_for(scan.updates.get(), 1.0)
            if sighting.verified and sighting.id not in seen:
                if not seen:
                    first = time.perf_counter() - started
                    rtt = sighting.rtt or 0.0
                seen.add(sighting.id)
        return first * 1e3, (time.perf_counter() - started) * 1e3, rtt * 1e3
    finally:
        await scan.aclose()


async def client_worker(args: argparse.Namespace) -> dict[str, Any]:
    from ppcp.crypto.psk import derive_psk_key
    from ppcp.discovery import DiscoveryConfig, aio_discover
    from ppcp.discovery.wire import discovery_key

    key = discovery_key(derive_psk_key(args.psk))
    targets = tuple(args.target)
    cfg = DiscoveryConfig(
        broadcast=not targets, multicast6=not targets, mdns=False, cache_path=None, targets=targets
    )
    out: dict[str, list[float]] = {"first_ms": [], "all_ms": [], "rtt_ms": []}
    lost = 0
    for _ in range(args.runs):
        try:
            first, everyone, rtt = await scan_once(key, cfg, ppcp.DEFAULT_PORT, args.want)
        except TimeoutError:
            lost += 1
            continue
        out["first_ms"].append(first)
        out["all_ms"].append(everyone)
        out["rtt_ms"].append(rtt)
        await asyncio.sleep(args.gap)
    if args.api:
        out["api_discover_ms"] = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            await aio_discover(timeout=1.0, psk=args.psk, limit=1, config=cfg)
            out["api_discover_ms"].append((time.perf_counter() - t0) * 1e3)
            await asyncio.sleep(args.gap)
    result: dict[str, Any] = dict(out)
    result["lost"] = lost
    return result


def find_server_worker(args: argparse.Namespace) -> dict[str, Any]:
    from ppcp.discovery import DiscoveryConfig

    cfg = DiscoveryConfig(mdns=False, cache_path=None)
    samples = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        sock = ppcp.find_server(timeout=2.0, psk=args.psk, config=cfg)
        samples.append((time.perf_counter() - t0) * 1e3)
        sock.close()
        time.sleep(args.gap)
    return {"find_server_ms": samples}


def flood_worker(args: argparse.Namespace) -> None:
    """Send junk to the target as fast as possible until stdin closes.

    ``garbage``: random bytes of many sizes, including oversize datagrams.
    ``forged``: well-formed PINGs with wrong tags, the worst case (each costs
    the responder an HMAC; the kernel pre-filter cannot tell them apart).
    """
    from ppcp.discovery.wire import Ping, discovery_key

    if args.kind == "garbage":
        pool = [os.urandom(n) for n in (1, 7, 60, 191, 300, 900, 1400, 1472)]
    else:
        wrong = discovery_key(os.urandom(32))
        pool = [Ping(os.urandom(16), size).encode(wrong) for size in (192, 384, 1200)]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    host, port = args.target[0].rsplit(":", 1)
    dest = (host, int(port))
    print("ready", flush=True)
    sent, started = 0, time.perf_counter()
    while not select.select([sys.stdin], [], [], 0)[0]:
        for data in pool * 20:
            with contextlib.suppress(OSError):
                sock.sendto(data, dest)
                sent += 1
    print(json.dumps({"sent": sent, "seconds": time.perf_counter() - started}), flush=True)


# -- the orchestrator (runs on the host, drives the namespaces) ------------------------


def stats(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "n": len(samples),
        "median": round(statistics.median(samples), 3),
        "p99": round(p99, 3),
        "min": round(ordered[0], 3),
        "max": round(ordered[-1], 3),
    }


def summary(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: stats(v) if isinstance(v, list) else v for k, v in raw.items()}


def run_worker(topo: Topology, ns: str, gap: float, *args: str) -> dict[str, Any]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--gap", str(gap), *args]
    res = topo.run(ns, argv, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"worker failed: {res.stderr[-3000:]}")
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    reason = netns_unavailable()
    if reason:
        raise SystemExit(f"bench/discovery.py: {reason}")
    remove_stale_namespaces()
    psk = ppcp.generate_psk()
    runs = str(args.runs)
    results: dict[str, Any] = {
        "runs": args.runs,
        "gap_s": args.gap,
        "load_average_before": os.getloadavg()[0],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    with Topology("bench") as topo:
        br = topo.bridge("br0")
        client, flooder = topo.node("c"), topo.node("f")
        topo.link(client, "eth0", br, f"{SUBNET}.2/24")
        topo.link(flooder, "eth0", br, f"{SUBNET}.3/24")
        topo.ip_route(client, "default", "dev", "eth0")
        servers = []
        for i in range(1, SERVERS + 1):
            ns = topo.node(f"s{i}")
            topo.link(ns, "eth0", br, f"{SUBNET}.{10 + i}/24")
            servers.append(ns)
        first_ip = f"{SUBNET}.11"
        unicast = ("--target", f"{first_ip}:{ppcp.DEFAULT_PORT}")

        topo.spawn(servers[0], server_argv(psk, "s1", "--rate", RATE))
        print(f"1 server, {runs} scans (broadcast + directed + ff02::1) ...", flush=True)
        one = run_worker(
            topo, client, args.gap, "--worker", "client", "--psk", psk, "--runs", runs, "--api"
        )
        one.update(
            run_worker(topo, client, args.gap, "--worker", "find", "--psk", psk, "--runs", runs)
        )
        results["one_server"] = summary(one)

        print(f"1 server, {runs} unicast scans, no flood ...", flush=True)
        calm = run_worker(
            topo, client, args.gap, "--worker", "client", "--psk", psk, "--runs", runs, *unicast
        )
        results["flood"] = {"baseline": summary(calm)}
        for kind in ("garbage", "forged"):
            print(f"1 server, {runs} unicast scans, during a {kind} flood ...", flush=True)
            argv = [sys.executable, str(Path(__file__).resolve()), "--worker", "flood"]
            flood = topo.spawn(flooder, [*argv, "--kind", kind, *unicast])
            try:
                stormy = run_worker(
                    topo,
                    client,
                    args.gap,
                    "--worker",
                    "client",
                    "--psk",
                    psk,
                    "--runs",
                    runs,
                    *unicast,
                )
            finally:
                sent = stop_flooder(flood)
            results["flood"][kind] = summary(stormy)
            results["flood"][kind]["datagrams_per_s"] = round(sent["sent"] / sent["seconds"])

        for i, ns in enumerate(servers[1:], start=2):
            topo.spawn(ns, server_argv(psk, f"s{i}", "--rate", RATE))
        print(f"{SERVERS} servers, {runs} scans waiting for all of them ...", flush=True)
        five = run_worker(
            topo,
            client,
            args.gap,
            "--worker",
            "client",
            "--psk",
            psk,
            "--runs",
            runs,
            "--want",
            str(SERVERS),
        )
        results["five_servers"] = {
            k: stats(v) if isinstance(v, list) else v for k, v in five.items()
        }
    return results


def stop_flooder(proc: Proc) -> dict[str, Any]:
    popen = proc.popen
    assert popen.stdin is not None and popen.stdout is not None
    popen.stdin.close()
    try:
        line = popen.stdout.readline()
        popen.wait(10)
    except subprocess.TimeoutExpired:
        proc.stop()
        return {"sent": 0, "seconds": 1.0}
    return json.loads(line)  # type: ignore[no-any-return]


def report(results: dict[str, Any]) -> None:
    def row(label: str, s: dict[str, Any]) -> None:
        print(f"  {label:<44} median {s['median']:8.3f} ms   p99 {s['p99']:8.3f} ms   (n={s['n']})")

    one, flood, five = results["one_server"], results["flood"], results["five_servers"]
    print(f"\nDiscovery between namespaces, {results['runs']} runs each")
    print(" one server")
    row("scan start -> first verified PONG", one["first_ms"])
    row("PING -> PONG round trip", one["rtt_ms"])
    row("aio_discover(limit=1) call", one["api_discover_ms"])
    row("ppcp.find_server() incl. TCP connect", one["find_server_ms"])
    print(f" {SERVERS} servers answering the same broadcast")
    row("scan start -> first verified PONG", five["first_ms"])
    row(f"scan start -> all {SERVERS} PONGs", five["all_ms"])
    print(" floods at the server's UDP port (unicast scans)")
    row("no flood", flood["baseline"]["first_ms"])
    for kind, what in (("garbage", "random garbage"), ("forged", "PING-shaped forgeries")):
        f = flood[kind]
        row(f"{what}, {f['datagrams_per_s']:,}/s", f["first_ms"])
        print(f"  {'':<44} lost scans (nothing within 1 s): {f['lost']}")
    print(f"  (load average before the run: {results['load_average_before']:.1f})")
    print(f"\nwritten to {RESULTS.relative_to(REPO)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--gap", type=float, default=0.02, help="seconds between runs")
    p.add_argument("--worker", choices=["client", "find", "flood"], help=argparse.SUPPRESS)
    p.add_argument("--psk", help=argparse.SUPPRESS)
    p.add_argument("--target", action="append", default=[], help=argparse.SUPPRESS)
    p.add_argument("--want", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--kind", choices=["garbage", "forged"], help=argparse.SUPPRESS)
    p.add_argument("--api", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker == "client":
        print(json.dumps(asyncio.run(client_worker(args))))
    elif args.worker == "find":
        print(json.dumps(find_server_worker(args)))
    elif args.worker == "flood":
        flood_worker(args)
    else:
        results = orchestrate(args)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        report(results)


if __name__ == "__main__":
    main()
