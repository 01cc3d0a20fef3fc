"""Section 1: file upload and download (1 GiB; 8 MiB in --smoke), all on tmpfs.

PPCP: ``ppcp put/get`` (CLI, process start included) and the library's
``session.put/get`` on the binary and the base64 paths (timed around the call,
in a worker process).  Peers: ``scp``, ``sftp``, ``ssh host 'cat > f'`` (and
``ssh host 'cat f'``) against the harness's own sshd, and asyncssh's SFTP
client against an asyncssh server.  Every run is checked (size; the first run
of each method byte for byte).  Peak RSS of both PPCP ends: the client from
its own VmHWM / wait4 rusage, the server (a separate process) from VmHWM
reset before each transfer plus sampling.
"""

from __future__ import annotations

import filecmp
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    BIN,
    PYTHON,
    Deadline,
    MiB,
    PeakRSS,
    Row,
    Skip,
    last_json_line,
    run_child,
    summarize,
)
from bench.context import Context, have_cli, have_session_api
from bench.sshd import SshDaemon

SECTION = "transfer"


@dataclass
class Sample:
    seconds: float
    client_rss_mib: float | None = None
    server_rss_mib: float | None = None


@dataclass
class Method:
    name: str
    label: str
    run: Callable[[str, int], Sample]  # (op, run index) -> sample
    ppcp: bool = False
    samples: dict[str, list[Sample]] = field(default_factory=lambda: {"put": [], "get": []})
    error: str = ""


def make_file(path: Path, size: int) -> None:
    """Incompressible content, written in 16 MiB blocks (no compression anywhere anyway)."""
    block = os.urandom(min(size, 16 * MiB))
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n


def run(ctx: Context, ssh: SshDaemon | None) -> None:
    s = ctx.settings
    base = ctx.work / "xfer"
    local, remote = base / "local", base / "remote"
    local.mkdir(parents=True)
    remote.mkdir()
    src = local / "src.bin"
    make_file(src, s.file_size)
    os.link(src, remote / "src.bin")
    up, down = remote / "up.bin", local / "down.bin"
    checked: set[tuple[str, str]] = set()

    def check(method: str, op: str) -> None:
        out, ref = (up, src) if op == "put" else (down, src)
        size = out.stat().st_size if out.exists() else -1
        if size != s.file_size:
            raise RuntimeError(f"{method} {op}: {size} bytes arrived, expected {s.file_size}")
        if (method, op) not in checked:
            if not filecmp.cmp(out, ref, shallow=False):
                raise RuntimeError(f"{method} {op}: the copy differs from the original")
            checked.add((method, op))

    def cleanup() -> None:
        for p in (up, down):
            p.unlink(missing_ok=True)

    methods: list[Method] = []
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}

    # -- PPCP library (worker process; server in another) --------------------------
    if have_session_api("put", "get"):
        servers["ppcp"] = ctx.start_server("ppcp", remote)
        from bench.peers import binary_supported

        modes = ["binary", "base64"] if binary_supported() else ["base64"]
        if "binary" not in modes:
            ctx.report.skip(SECTION, "binary path: 'binary-data' capability not implemented")
        for mode in modes:
            methods.append(
                Method(f"lib-{mode}", f"session.put/get ({mode})", _lib(ctx, servers, mode), True)
            )
    else:
        ctx.report.skip(SECTION, "library session.put/get not implemented yet")

    # -- PPCP CLI ---------------------------------------------------------------------
    if have_cli("put", "get", "serve") and have_session_api("put", "get"):
        servers["cli"] = ctx.start_cli_server(remote)
        methods.append(Method("cli", "ppcp put/get", _cli(ctx, servers), True))
    else:
        ctx.report.skip(SECTION, "`ppcp put/get` CLI not implemented yet")

    # -- peers --------------------------------------------------------------------------
    if ssh is not None:
        methods.append(Method("scp", "scp", _scp(ssh, src, remote, down)))
        methods.append(Method("sftp", "sftp", _sftp(ctx, ssh, src, remote, down)))
        methods.append(Method("ssh-cat", "ssh host 'cat'", _sshcat(ssh, src, remote, down)))
    else:
        ctx.report.skip(SECTION, "OpenSSH peers (scp, sftp, ssh cat): no sshd in this run")
    if ctx.have.get("asyncssh"):
        servers["asyncssh"] = ctx.start_server("asyncssh", remote)
        methods.append(Method("asyncssh", "asyncssh SFTP", _asyncssh(ctx, servers)))
    else:
        ctx.report.skip(SECTION, "asyncssh SFTP: asyncssh not installed")

    deadline = Deadline(s.section_budget * 3)
    try:
        for i in range(s.transfer_runs):
            for m in methods:
                for op in ("put", "get"):
                    if m.error or deadline.expired:
                        continue
                    try:
                        sample = m.run(op, i)
                        check(m.name, op)
                    except Skip as exc:
                        m.error = f"skipped: {exc}"
                    except Exception as exc:
                        m.error = f"{type(exc).__name__}: {exc}"
                        if m.ppcp:
                            raise
                    else:
                        m.samples[op].append(sample)
                    finally:
                        cleanup()
    finally:
        for proc, _ in servers.values():
            ctx.procs.stop(proc)
        for p in (src, remote / "src.bin"):
            p.unlink(missing_ok=True)
    if deadline.expired:
        ctx.report.note(SECTION, "time budget ran out: some methods have fewer runs")
    for m in methods:
        if m.error:
            ctx.report.note(SECTION, f"{m.label}: {m.error}")
    _rows(ctx, methods)


def _lib(
    ctx: Context, servers: dict[str, tuple[subprocess.Popen[bytes], int]], mode: str
) -> Callable[[str, int], Sample]:
    def go(op: str, i: int) -> Sample:
        proc, port = servers["ppcp"]
        local = ctx.work / "xfer" / "local"
        cmd = [PYTHON, "-m", "bench.worker", "ppcp-transfer", "--port", str(port)]
        cmd += ["--op", op, "--mode", mode, "--remote", "up.bin" if op == "put" else "src.bin"]
        cmd += ["--local", str(local / ("src.bin" if op == "put" else "down.bin"))]
        with PeakRSS(proc.pid) as peak:
            r = run_child(cmd, ctx.settings.transfer_timeout, env=ctx.env())
        if r.returncode != 0:
            raise RuntimeError(f"worker failed: {r.stderr.decode(errors='replace')[-800:]}")
        out = last_json_line(r.stdout)
        return Sample(out["seconds"], out["hwm_kib"] / 1024, peak.peak_mib)

    return go


def _cli(
    ctx: Context, servers: dict[str, tuple[subprocess.Popen[bytes], int]]
) -> Callable[[str, int], Sample]:
    def go(op: str, i: int) -> Sample:
        proc, port = servers["cli"]
        local = ctx.work / "xfer" / "local"
        host = ["--host", f"127.0.0.1:{port}"]
        if op == "put":
            cmd = [str(BIN / "ppcp"), "put", *host, str(local / "src.bin"), ":up.bin"]
        else:
            cmd = [str(BIN / "ppcp"), "get", *host, ":src.bin", str(local / "down.bin")]
        with PeakRSS(proc.pid) as peak:
            r = run_child(cmd, ctx.settings.transfer_timeout, env=ctx.env())
        if r.returncode != 0:
            raise RuntimeError(
                f"`{' '.join(cmd[1:3])}` exited {r.returncode}: "
                f"{r.stderr.decode(errors='replace')[-800:]}"
            )
        return Sample(r.seconds, r.maxrss_kib / 1024, peak.peak_mib)

    return go


def _scp(ssh: SshDaemon, src: Path, remote: Path, down: Path) -> Callable[[str, int], Sample]:
    def go(op: str, i: int) -> Sample:
        if op == "put":
            cmd = [*ssh.scp_cmd(), str(src), f"{ssh.dest}:{remote / 'up.bin'}"]
        else:
            cmd = [*ssh.scp_cmd(), f"{ssh.dest}:{remote / 'src.bin'}", str(down)]
        return _ok(run_child(cmd, 600), "scp")

    return go


def _sftp(
    ctx: Context, ssh: SshDaemon, src: Path, remote: Path, down: Path
) -> Callable[[str, int], Sample]:
    def go(op: str, i: int) -> Sample:
        batch = ctx.work / "sftp-batch"
        if op == "put":
            batch.write_text(f'put "{src}" "{remote / "up.bin"}"\n')
        else:
            batch.write_text(f'get "{remote / "src.bin"}" "{down}"\n')
        return _ok(run_child(ssh.sftp_cmd(batch), 600), "sftp")

    return go


def _sshcat(ssh: SshDaemon, src: Path, remote: Path, down: Path) -> Callable[[str, int], Sample]:
    def go(op: str, i: int) -> Sample:
        if op == "put":
            with open(src, "rb") as f:
                r = run_child([*ssh.ssh_cmd(), f"cat > '{remote / 'up.bin'}'"], 600, stdin=f)
        else:
            with open(down, "wb") as f:
                r = run_child([*ssh.ssh_cmd(), f"cat '{remote / 'src.bin'}'"], 600, stdout=f)
        return _ok(r, "ssh cat")

    return go


def _asyncssh(
    ctx: Context, servers: dict[str, tuple[subprocess.Popen[bytes], int]]
) -> Callable[[str, int], Sample]:
    def go(op: str, i: int) -> Sample:
        _, port = servers["asyncssh"]
        local = ctx.work / "xfer" / "local"
        cmd = [PYTHON, "-m", "bench.worker", "asyncssh-transfer", "--port", str(port)]
        cmd += ["--keys", str(ctx.ssh_keys.dir), "--op", op]
        cmd += ["--remote", "/up.bin" if op == "put" else "/src.bin"]
        cmd += ["--local", str(local / ("src.bin" if op == "put" else "down.bin"))]
        r = run_child(cmd, ctx.settings.transfer_timeout * 3, env=ctx.env())
        if r.returncode != 0:
            raise RuntimeError(f"asyncssh worker: {r.stderr.decode(errors='replace')[-800:]}")
        out = last_json_line(r.stdout)
        return Sample(out["seconds"], out["hwm_kib"] / 1024)

    return go


def _ok(r: Any, what: str) -> Sample:
    if r.returncode != 0:
        raise RuntimeError(f"{what} exited {r.returncode}: {r.stderr.decode(errors='replace')}")
    return Sample(r.seconds, r.maxrss_kib / 1024)


# -- rows ---------------------------------------------------------------------------------


def _rows(ctx: Context, methods: list[Method]) -> None:
    s = ctx.settings
    size_mib = s.file_size / MiB
    size_text = f"{size_mib / 1024:g} GiB" if size_mib >= 1024 else f"{size_mib:g} MiB"
    by_name = {m.name: m for m in methods}
    raw: dict[str, Any] = {}
    for m in methods:
        for op in ("put", "get"):
            samples = m.samples[op]
            raw[f"{m.name}-{op}"] = {
                "seconds": summarize([x.seconds for x in samples]),
                "mib_per_s": summarize([size_mib / x.seconds for x in samples]),
                "client_rss_mib": summarize([x.client_rss_mib or 0 for x in samples]),
                "server_rss_mib": summarize(
                    [x.server_rss_mib for x in samples if x.server_rss_mib is not None]
                ),
            }
    ctx.report.raw[SECTION] = {"file_bytes": s.file_size, "methods": raw}

    def secs(name: str, op: str) -> dict[str, Any] | None:
        m = by_name.get(name)
        if m is None or not m.samples[op]:
            return None
        return summarize([x.seconds for x in m.samples[op]])

    comparisons = [
        # (ppcp method, peer method, max ratio, target text)
        ("cli", "scp", 0.25, ">= 4x scp"),
        ("cli", "ssh-cat", 0.5, ">= 2x ssh cat"),
        ("cli", "sftp", None, ""),
        ("lib-binary", "scp", 0.25, ">= 4x scp"),
        ("lib-binary", "ssh-cat", 0.5, ">= 2x ssh cat"),
        ("lib-binary", "asyncssh", None, ""),
        ("lib-base64", "asyncssh", None, ""),
        ("lib-base64", "scp", None, ""),
    ]
    for op in ("put", "get"):
        shown: set[str] = set()
        for mine, peer, max_ratio, target in comparisons:
            a = secs(mine, op)
            b = secs(peer, op)
            if mine not in by_name or b is None:
                continue
            shown.add(mine)
            lib_vs_tool = mine.startswith("lib") and peer in ("scp", "ssh-cat", "sftp")
            if by_name[peer].error:  # a peer that failed or timed out is no yardstick
                max_ratio = None
            mib_s = size_mib / a["median"] if a else None
            peer_mib_s = size_mib / b["median"]
            ctx.report.add(
                Row(
                    SECTION,
                    f"{op}-{mine}-vs-{peer}",
                    f"{op} {size_text}: {by_name[mine].label}",
                    "s",
                    a,
                    by_name[peer].label,
                    b,
                    max_ratio=max_ratio,
                    target_text=f"time ratio <= {max_ratio:g} ({target})" if max_ratio else "",
                    note=(f"{mib_s:.0f} vs " if mib_s else "")
                    + f"{peer_mib_s:.0f} MiB/s"
                    + ("; the peer failed in some runs (see notes)" if by_name[peer].error else "")
                    + ("; library timed in-call, peer incl. process start" if lib_vs_tool else ""),
                )
            )
        for m in methods:  # PPCP figures with no peer to compare in this run
            a = secs(m.name, op)
            if m.ppcp and m.name not in shown and a is not None:
                ctx.report.add(
                    Row(
                        SECTION,
                        f"{op}-{m.name}",
                        f"{op} {size_text}: {m.label}",
                        "s",
                        a,
                        note=f"{size_mib / a['median']:.0f} MiB/s; no peer in this run",
                    )
                )
    # Peak RSS of both PPCP ends, per method (worst run of put and get).
    for m in methods:
        if not m.ppcp:
            continue
        samples = m.samples["put"] + m.samples["get"]
        for end in ("client", "server"):
            values = [v for x in samples if (v := getattr(x, f"{end}_rss_mib")) is not None]
            if values:
                ctx.report.add(
                    Row(
                        SECTION,
                        f"rss-{m.name}-{end}",
                        f"peak RSS, {end} end: {m.label}, {size_text} put+get",
                        "MiB",
                        summarize(values),
                        limit=100.0,
                        target_text="< 100 MiB (flat)",
                    )
                )
