"""Crash faults during file transfers: kill -9 the client or the server mid-transfer.

    python -m bench.faults [--transfers 100] [--min-mib 4] [--max-mib 12] [--seed 1]

Half the transfers are ``put``, half ``get``, each between two processes on
loopback (a ``ppcp.aio.serve`` server with its root in a temporary directory,
and a client calling ``session.put``/``session.get``).  For each transfer the
client reports progress; at a random fraction of the file, either the client
or the server is killed with SIGKILL.  Then:

1. no file under its real name is partial or corrupt (it is absent, or it has
   the source's SHA-256; partial data only ever lives in the hidden
   ``.NAME.ppcp-part`` file);
2. rerunning the same transfer (server restarted if it was the victim)
   resumes from the partial data and ends with the right SHA-256.

Exit status 0 if every transfer satisfied both.  The roles (``--role
server|put|get|hold``) are also used by tests/hardening/test_faults.py, which
runs a scaled-down version and the network-cut test.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PSK = "ppcp-psk-" + "6b" * 32
EVENT_TIMEOUT = 120.0


def _emit(**event: Any) -> None:
    print(json.dumps(event), flush=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def part_path(path: Path) -> Path:
    from ppcp.control.paths import part_name

    return path.with_name(part_name(path.name))


# -- roles (subprocesses) ---------------------------------------------------------------------


def _config(args: argparse.Namespace, name: str) -> Any:
    from ppcp.core.config import SessionConfig

    return SessionConfig(
        name=name,
        heartbeat_interval=args.heartbeat,
        heartbeat_max_missed=args.max_missed,
        handshake_timeout=10.0,
    )


async def _server_role(args: argparse.Namespace) -> None:
    import ppcp.aio
    from ppcp.control.router import ServerPolicy

    async def handler(session: ppcp.aio.AsyncSession) -> None:
        await session.wait_closed()
        error = session._error
        _emit(event="session_end", error=type(error).__name__, t=time.monotonic())

    server = await ppcp.aio.serve(
        args.host,
        0,
        PSK,
        handler,
        config=_config(args, "fault-server"),
        policy=ServerPolicy(root=Path(args.root)),
        discovery=False,
    )
    _emit(event="ready", port=server.port)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.read()  # until the parent closes our stdin (or kills us)
    await server.aclose()


async def _client_role(args: argparse.Namespace) -> None:
    import ppcp.aio
    from ppcp.core.errors import PPCPError

    try:
        session = await ppcp.aio.connect(
            args.host, args.port, PSK, config=_config(args, "fault-client")
        )
    except PPCPError as exc:
        _emit(event="error", error=type(exc).__name__, message=str(exc))
        sys.exit(1)
    if args.role == "hold":
        _emit(event="ready", t=time.monotonic())
        await session.wait_closed()
        _emit(event="ended", error=type(session._error).__name__, t=time.monotonic())
        return

    def progress(done: int, total: int, rate: float) -> None:
        _emit(event="progress", done=done, total=total)

    try:
        if args.role == "put":
            result = await session.put(args.local, args.remote, progress=progress, checksum=True)
        else:
            result = await session.get(args.remote, args.local, progress=progress, checksum=True)
    except PPCPError as exc:
        _emit(event="error", error=type(exc).__name__, message=str(exc))
        sys.exit(1)
    _emit(
        event="result",
        bytes=result.bytes,
        resumed_from=result.resumed_from,
        total=result.total,
        sha256=result.sha256,
    )
    await session.close()


# -- orchestration -------------------------------------------------------------------------------


class Child:
    """A role subprocess whose stdout is a stream of JSON events."""

    def __init__(self, args: list[str], prefix: list[str] | None = None) -> None:
        cmd = [*(prefix or []), sys.executable, "-m", "bench.faults", *args]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        self._sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)

    def event(self, timeout: float = EVENT_TIMEOUT) -> dict[str, Any] | None:
        """The next event, or None once the process has exited."""
        assert self.proc.stdout is not None
        if not self._sel.select(timeout):
            raise TimeoutError(f"no event from {self.proc.args!r} within {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout)
            return None
        return dict(json.loads(line))

    def wait_for(self, name: str, timeout: float = EVENT_TIMEOUT) -> dict[str, Any]:
        for _ in range(100_000):
            event = self.event(timeout)
            if event is None:
                status = self.proc.returncode
                raise RuntimeError(f"{self.proc.args!r} exited {status} before {name}")
            if event["event"] == name:
                return event
        raise RuntimeError(f"too many events before {name}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self.close_pipes()

    def finish(self, timeout: float = 60) -> int:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.close_pipes()
        return code

    def close_pipes(self) -> None:
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self._sel.unregister(self.proc.stdout)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()


def start_server(
    root: Path,
    host: str = "127.0.0.1",
    prefix: list[str] | None = None,
    extra: list[str] | None = None,
) -> tuple[Child, int]:
    server = Child(
        ["--role", "server", "--root", str(root), "--host", host, *(extra or [])], prefix
    )
    return server, int(server.wait_for("ready", 60)["port"])


def client_args(op: str, port: int, local: Path, remote: str) -> list[str]:
    return ["--role", op, "--port", str(port), "--local", str(local), "--remote", remote]


@dataclass
class Outcome:
    index: int
    op: str
    victim: str
    size: int
    killed_at: int | None  # bytes done when the kill was sent (None: finished first)
    real_name_after_kill: str  # "absent" or "complete"
    part_bytes_after_kill: int
    resumed_from: int
    ok: bool
    problems: list[str] = field(default_factory=list)


def run(
    transfers: int,
    workdir: Path,
    min_mib: float = 4,
    max_mib: float = 12,
    seed: int = 1,
) -> dict[str, Any]:
    rng = random.Random(seed)
    server_root = workdir / "server"
    local_dir = workdir / "client"
    server_root.mkdir(parents=True, exist_ok=True)
    local_dir.mkdir(parents=True, exist_ok=True)
    outcomes: list[Outcome] = []
    server, port = start_server(server_root)
    live: list[Child] = [server]
    started = time.monotonic()
    try:
        for i in range(transfers):
            op = "put" if i % 2 == 0 else "get"
            size = int(rng.uniform(min_mib, max_mib) * (1 << 20))
            data = rng.randbytes(size)
            expected = hashlib.sha256(data).hexdigest()
            name = f"file{i:03d}.bin"
            if op == "put":
                source, dest = local_dir / f"src-{name}", server_root / name
            else:
                source, dest = server_root / f"src-{name}", local_dir / name
            source.write_bytes(data)
            del data
            victim = rng.choice(("client", "server"))
            fraction = rng.uniform(0.05, 0.95)
            local = source if op == "put" else dest
            remote = name if op == "put" else f"src-{name}"

            client = Child(client_args(op, port, local, remote))
            live.append(client)
            killed_at: int | None = None
            for _ in range(100_000):
                event = client.event()
                if event is None or event["event"] in ("result", "error"):
                    break
                if event["event"] == "progress" and event["done"] >= fraction * event["total"]:
                    killed_at = event["done"]
                    (client if victim == "client" else server).kill()
                    break
            if victim == "server" and killed_at is not None:
                client.finish()
            else:
                client.kill()

            problems: list[str] = []
            state = "absent"
            if dest.exists():
                state = "complete"
                if sha256_file(dest) != expected:
                    problems.append(f"{dest.name} exists but is partial or corrupt after the kill")
            part = part_path(dest)
            part_bytes = part.stat().st_size if part.exists() else 0
            if part_bytes and data_prefix_mismatch(source, part):
                problems.append("the part file is not a prefix of the source")

            if server.proc.poll() is not None:
                server, port = start_server(server_root)
                live.append(server)
            rerun = Child(client_args(op, port, local, remote))
            live.append(rerun)
            result: dict[str, Any] = {"sha256": None, "resumed_from": 0}
            for _ in range(100_000):
                event = rerun.event()
                if event is None or event["event"] == "error":
                    problems.append(f"the rerun failed: {event}")
                    break
                if event["event"] == "result":
                    result = event
                    break
            rerun.finish()
            if result["sha256"] != expected or not dest.exists() or sha256_file(dest) != expected:
                problems.append("the rerun did not produce the right SHA-256")
            if part.exists():
                problems.append("a part file was left after the rerun")
            outcomes.append(
                Outcome(
                    i,
                    op,
                    victim,
                    size,
                    killed_at,
                    state,
                    part_bytes,
                    int(result["resumed_from"]),
                    not problems,
                    problems,
                )
            )
            source.unlink()
            dest.unlink(missing_ok=True)
            live = [c for c in live if c.proc.poll() is None]
    finally:
        for child in live:
            if child is not server and child.proc.poll() is None:
                child.kill()
        server.finish()
    mid = [o for o in outcomes if o.killed_at is not None]
    return {
        "transfers": transfers,
        "seconds": time.monotonic() - started,
        "killed_mid_transfer": len(mid),
        "client_kills": sum(1 for o in mid if o.victim == "client"),
        "server_kills": sum(1 for o in mid if o.victim == "server"),
        "partial_files_after_kill": sum(1 for o in outcomes if o.part_bytes_after_kill),
        "resumed": sum(1 for o in outcomes if o.resumed_from > 0),
        "resumed_bytes": sum(o.resumed_from for o in outcomes),
        "complete_real_name_after_kill": sum(
            1 for o in outcomes if o.real_name_after_kill == "complete"
        ),
        "failures": [o.__dict__ for o in outcomes if not o.ok],
        "ok": all(o.ok for o in outcomes) and len(outcomes) == transfers,
    }


def data_prefix_mismatch(source: Path, part: Path) -> bool:
    """True unless the part file's bytes are a prefix of the source file."""
    with open(source, "rb") as src, open(part, "rb") as p:
        for _ in range(1 << 20):
            block = p.read(1 << 20)
            if not block:
                return False
            if src.read(len(block)) != block:
                return True
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", default="main", choices=("main", "server", "put", "get", "hold"))
    parser.add_argument("--transfers", type=int, default=100)
    parser.add_argument("--min-mib", type=float, default=4)
    parser.add_argument("--max-mib", type=float, default=12)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--root", default="")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--local", default="")
    parser.add_argument("--remote", default="")
    parser.add_argument("--heartbeat", type=float, default=5.0)
    parser.add_argument("--max-missed", type=int, default=3)
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)
    if args.role == "server":
        asyncio.run(_server_role(args))
        return 0
    if args.role != "main":
        asyncio.run(_client_role(args))
        return 0
    with tempfile.TemporaryDirectory(prefix="ppcp-faults-") as tmp:
        report = run(args.transfers, Path(tmp), args.min_mib, args.max_mib, args.seed)
    print(
        f"faults: {report['transfers']} transfers in {report['seconds']:.1f} s; killed "
        f"mid-transfer {report['killed_mid_transfer']} ({report['client_kills']} client, "
        f"{report['server_kills']} server); partial files after the kill "
        f"{report['partial_files_after_kill']}; complete files under the real name after the "
        f"kill {report['complete_real_name_after_kill']}; resumed {report['resumed']} "
        f"({report['resumed_bytes'] / (1 << 20):.1f} MiB not resent); failures "
        f"{len(report['failures'])}"
    )
    for failure in report["failures"]:
        print(f"  FAIL {failure}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
