"""Load under attack: many authenticated sessions at work while failed logins pour in.

    python -m bench.load [--sessions 1000] [--failures 10000] [--fail-sources 2000]

Three processes on loopback:

* the **server** (``ppcp.aio.serve``, default limits, heartbeats every second,
  exec allowed, an echo handler for messages);
* the **good clients**: ``--sessions`` sessions, each from its own loopback
  address, all connected first and held open; then every one runs ``--execs``
  small execs and ``--messages`` echoed messages while heartbeats flow;
* the **storm**: ``--failures`` handshakes with a wrong key from
  ``--fail-sources`` addresses, started once every good session is up.

It checks that the server stays up, every good session completes its work
and keeps answering heartbeats, and that the server's file descriptors and
threads return to their baseline once everyone has left; it reports the
server's peak RSS.  Exit status 0 if every check passed.  The scaled-down
version runs in tests/hardening/test_load.py (marked slow).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import resource
import selectors
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PSK = "ppcp-psk-" + "4d" * 32
WRONG_PSK = "ppcp-psk-" + "d4" * 32
HOST = "127.0.0.1"
CONNECT_CONCURRENCY = 48  # below the server's 64 handshake slots
WORK_CONCURRENCY = 64  # execs in flight at once (each is a process on the server)
STORM_CONCURRENCY = 24
EVENT_TIMEOUT = 900.0


def _raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _address(prefix: int, i: int) -> str:
    """The i-th loopback address of a /16 block: 127.<prefix + i // 250>.<...>."""
    return f"127.{prefix + i // 62500}.{(i // 250) % 250}.{i % 250 + 1}"


def _emit(**event: Any) -> None:
    print(json.dumps(event), flush=True)


def _proc_status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    return out


# -- server --------------------------------------------------------------------------------------


async def _server_role(args: argparse.Namespace) -> None:
    import ppcp.aio
    from ppcp.core.config import SessionConfig

    _raise_nofile()
    # Count the server's log lines instead of printing 10,000 of them.
    log_lines: collections.Counter[str] = collections.Counter()

    class _Count(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            log_lines[record.levelname] += 1

    ppcp_log = logging.getLogger("ppcp")
    ppcp_log.addHandler(_Count())
    ppcp_log.setLevel(logging.INFO)
    ppcp_log.propagate = False

    async def echo(session: ppcp.aio.AsyncSession) -> None:
        async for message in session:
            await session.send(message)

    cfg = SessionConfig(name="load-server", heartbeat_interval=args.heartbeat)
    server = await ppcp.aio.serve(HOST, 0, PSK, echo, config=cfg, discovery=False)

    def stats(**extra: Any) -> None:
        status = _proc_status()
        _emit(
            port=server.port,
            rss_kb=status["VmRSS"],
            peak_rss_kb=status["VmHWM"],
            threads=status["Threads"],
            fds=len(os.listdir("/proc/self/fd")),
            sessions=len(server.sessions),
            handshaking=server.handshaking,
            refused=server.refused,
            tracked_sources=len(server.auth_limiter),
            tasks=len(server._tasks),
            log_lines=dict(log_lines),
            **extra,
        )

    stats(event="ready")
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    for _ in range(1000):
        line = (await reader.readline()).decode().strip()
        if line in ("", "quit"):
            break
        if line == "settle":
            # Every connection task started so far has finished (bounded).
            tasks = set(server._tasks)
            if tasks:
                await asyncio.wait(tasks, timeout=120)
            # Exec children are reaped by asyncio's child-watcher threads
            # ("waitpid-N"): wait for them to end (blocking the loop is fine
            # here, every session is gone).
            for thread in threading.enumerate():
                if thread.name.startswith("waitpid-"):
                    thread.join(10)
        stats(event=line)
    await server.aclose()


# -- good clients -------------------------------------------------------------------------------


async def _connect_from(source: str, port: int, psk: str, cfg: Any) -> Any:
    import ppcp.aio

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.bind((source, 0))
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_connect(sock, (HOST, port)), cfg.handshake_timeout
        )
    except BaseException:
        sock.close()
        raise
    return await ppcp.aio.client_connect(sock, psk, config=cfg)


async def _clients_role(args: argparse.Namespace) -> None:
    from ppcp.core.config import SessionConfig
    from ppcp.core.errors import PPCPError, ServerBusy

    _raise_nofile()
    cfg = SessionConfig(name="load-client", heartbeat_interval=args.heartbeat)
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    retries = 0

    async def connect(i: int) -> Any:
        nonlocal retries
        for attempt in range(12):
            async with gate:
                try:
                    return await _connect_from(_address(2, i), args.port, PSK, cfg)
                except ServerBusy:
                    retries += 1
            await asyncio.sleep(0.05 * 2**attempt)  # client backoff on SERVER_BUSY
        raise RuntimeError(f"session {i}: server busy after 12 attempts")

    started = time.monotonic()
    sessions = await asyncio.gather(*(connect(i) for i in range(args.sessions)))
    connected_at = time.monotonic()
    _emit(event="connected", n=len(sessions), seconds=connected_at - started, retries=retries)

    work_gate = asyncio.Semaphore(WORK_CONCURRENCY)
    errors: collections.Counter[str] = collections.Counter()
    done = 0

    async def work(i: int, session: Any) -> None:
        nonlocal done
        try:
            for k in range(args.execs):
                async with work_gate:
                    result = await session.exec(["echo", f"{i}.{k}"], timeout=60)
                if result.stdout != f"{i}.{k}\n".encode() or not result.ok:
                    errors[f"exec output {result!r}"[:80]] += 1
                else:
                    done += 1
            for k in range(args.messages):
                payload = b"%d/%d " % (i, k) * 10
                await session.send(payload)
                if await asyncio.wait_for(session.recv(), 60) == payload:
                    done += 1
                else:
                    errors["message mismatch"] += 1
        except (PPCPError, TimeoutError) as exc:
            errors[f"{type(exc).__name__}: {exc}"[:120]] += 1

    started = time.monotonic()
    await asyncio.gather(*(work(i, s) for i, s in enumerate(sessions)))
    # A session's first heartbeat goes out one interval after its handshake;
    # hold every session past its second, so the check below sees heartbeats
    # answered under load however fast the work went.
    await asyncio.sleep(max(0.0, connected_at + 2.5 * args.heartbeat - time.monotonic()))
    _emit(
        event="worked",
        done=done,
        expected=args.sessions * (args.execs + args.messages),
        errors=dict(errors),
        seconds=time.monotonic() - started,
    )

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.readline()  # "release"
    alive = sum(1 for s in sessions if not s.is_closed)
    rtts = [len(s.heartbeat.rtts) for s in sessions if s.heartbeat is not None]
    await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
    _emit(
        event="closed",
        alive_before_close=alive,
        heartbeats_answered_min=min(rtts, default=0),
        heartbeats_answered_max=max(rtts, default=0),
    )


# -- the storm -----------------------------------------------------------------------------------


async def _storm_role(args: argparse.Namespace) -> None:
    from ppcp.core.config import SessionConfig
    from ppcp.core.errors import PPCPError

    _raise_nofile()
    cfg = SessionConfig(name="guesser", heartbeat_interval=0)
    outcomes: collections.Counter[str] = collections.Counter()
    gate = asyncio.Semaphore(STORM_CONCURRENCY)

    async def attempt(i: int) -> None:
        async with gate:
            try:
                session = await _connect_from(
                    _address(100, i % args.fail_sources), args.port, WRONG_PSK, cfg
                )
            except PPCPError as exc:
                outcomes[type(exc).__name__] += 1
            except OSError as exc:
                outcomes[f"OSError {exc.errno}"] += 1
            else:
                outcomes["AUTHENTICATED (!)"] += 1
                await session.close()

    started = time.monotonic()
    await asyncio.gather(*(attempt(i) for i in range(args.failures)))
    _emit(event="stormed", outcomes=dict(outcomes), seconds=time.monotonic() - started)


# -- orchestration ---------------------------------------------------------------------------------


class Child:
    def __init__(self, role: str, args: list[str]) -> None:
        self.role = role
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.load", "--role", role, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self._sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)

    def event(self, timeout: float = EVENT_TIMEOUT) -> dict[str, Any]:
        assert self.proc.stdout is not None
        if not self._sel.select(timeout):
            raise TimeoutError(f"{self.role}: no event within {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.role} exited with {self.proc.wait()}")
        return dict(json.loads(line))

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 120) -> int:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def run(
    sessions: int,
    failures: int,
    fail_sources: int,
    execs: int = 2,
    messages: int = 2,
    heartbeat: float = 1.0,
) -> dict[str, Any]:
    """Run the whole scenario; return the report (``report["ok"]``: every check passed)."""
    common = ["--heartbeat", str(heartbeat)]
    server = Child("server", common)
    report: dict[str, Any] = {
        "sessions": sessions,
        "failures": failures,
        "fail_sources": fail_sources,
        "execs": execs,
        "messages": messages,
    }
    started = time.monotonic()
    children: list[Child] = []
    try:
        baseline = server.event(300)
        port = str(baseline["port"])
        client_args = ["--port", port, "--sessions", str(sessions), "--execs", str(execs)]
        clients = Child("clients", [*common, *client_args, "--messages", str(messages)])
        children.append(clients)
        report["connected"] = clients.event()
        server.send("stats")
        report["server_connected"] = server.event()
        storm_args = ["--port", port, "--failures", str(failures)]
        storm = Child("storm", [*common, *storm_args, "--fail-sources", str(fail_sources)])
        children.append(storm)
        report["worked"] = clients.event()
        report["stormed"] = storm.event()
        storm.finish()
        server.send("stats")
        report["server_loaded"] = server.event()
        clients.send("release")
        report["closed"] = clients.event()
        clients.finish()
        server.send("settle")
        after = server.event()
        report["server_baseline"] = baseline
        report["server_after"] = after
    finally:
        for child in children:
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait()
        server.finish()
    report["seconds"] = time.monotonic() - started
    loaded = report["server_loaded"]
    checks = {
        "server stayed up": report["server_after"]["event"] == "settle",
        "every session connected": report["connected"]["n"] == sessions,
        "every session did its work": report["worked"]["done"] == report["worked"]["expected"]
        and not report["worked"]["errors"],
        "sessions alive to the end": report["closed"]["alive_before_close"] == sessions,
        "heartbeats answered on every session": report["closed"]["heartbeats_answered_min"] >= 1,
        "no wrong-key client authenticated": "AUTHENTICATED (!)"
        not in report["stormed"]["outcomes"],
        "all sessions were concurrent": loaded["sessions"] == sessions,
        "fds back to baseline": after["fds"] == baseline["fds"],
        "threads back to baseline": after["threads"] == baseline["threads"],
        "no connection left": after["sessions"] == 0 and after["handshaking"] == 0,
    }
    report["checks"] = checks
    report["peak_rss_mb"] = loaded["peak_rss_kb"] / 1024
    report["ok"] = all(checks.values())
    return report


def _print(report: dict[str, Any]) -> None:
    b, loaded, a = report["server_baseline"], report["server_loaded"], report["server_after"]
    print(
        f"load: {report['sessions']} sessions x ({report['execs']} execs + "
        f"{report['messages']} messages), {report['failures']} failed logins from "
        f"{report['fail_sources']} addresses, in {report['seconds']:.1f} s"
    )
    c, w, s = report["connected"], report["worked"], report["stormed"]
    print(f"  connect all: {c['seconds']:.1f} s ({c['retries']} SERVER_BUSY retries)")
    print(f"  work: {w['done']}/{w['expected']} in {w['seconds']:.1f} s, errors {w['errors']}")
    print(f"  storm: {s['outcomes']} in {s['seconds']:.1f} s")
    hb = report["closed"]
    print(
        f"  heartbeats answered per session: {hb['heartbeats_answered_min']}.."
        f"{hb['heartbeats_answered_max']}"
    )
    print(
        f"  server RSS: baseline {b['rss_kb'] / 1024:.1f} MB, under load "
        f"{loaded['rss_kb'] / 1024:.1f} MB, peak {report['peak_rss_mb']:.1f} MB, "
        f"after {a['rss_kb'] / 1024:.1f} MB"
    )
    print(
        f"  server fds {b['fds']} -> {loaded['fds']} -> {a['fds']}; threads "
        f"{b['threads']} -> {loaded['threads']} -> {a['threads']}; refused {a['refused']}; "
        f"sources tracked {a['tracked_sources']}; server log lines {a['log_lines']}"
    )
    for name, passed in report["checks"].items():
        print(f"  [{'ok' if passed else 'FAIL'}] {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=("main", "server", "clients", "storm"), default="main")
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--failures", type=int, default=10_000)
    parser.add_argument("--fail-sources", type=int, default=2000)
    parser.add_argument("--execs", type=int, default=2)
    parser.add_argument("--messages", type=int, default=2)
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)
    if args.role == "server":
        asyncio.run(_server_role(args))
        return 0
    if args.role == "clients":
        asyncio.run(_clients_role(args))
        return 0
    if args.role == "storm":
        asyncio.run(_storm_role(args))
        return 0
    report = run(
        args.sessions, args.failures, args.fail_sources, args.execs, args.messages, args.heartbeat
    )
    _print(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
