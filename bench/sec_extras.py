"""Section 6 (discovery), the other teams' bench scripts, and profiling.

discovery and extras *call* scripts owned by other engineers
(bench/discovery.py, bench/files_throughput.py, bench/heartbeat_under_load.py)
when they exist, each as its own process with a time limit, and keep
whatever they print (their last JSON line if any) in latest.json.

profile writes pyinstrument text profiles to bench/results/profile-*.txt:
the put/get hot path on both ends (binary path, server in its own process)
and the sans-I/O handshake.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from bench.common import PYTHON, REPO, RESULTS_DIR, MiB, Row, Skip, run_child, summarize
from bench.context import Context, have_session_api

BENCH_DIR = REPO / "bench"


def _script_result(ctx: Context, name: str, args: list[str], timeout: float) -> dict[str, Any]:
    path = BENCH_DIR / f"{name}.py"
    if not path.exists():
        raise Skip(f"bench/{name}.py does not exist yet")
    r = run_child([PYTHON, "-m", f"bench.{name}", *args], timeout, env=ctx.env(), cwd=REPO)
    text = r.stdout.decode(errors="replace")
    parsed: Any = None
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                parsed = json.loads(line)
                break
            except ValueError:
                continue
    return {
        "returncode": r.returncode,
        "seconds": r.seconds,
        "json": parsed,
        "stdout_tail": text[-3000:],
        "stderr_tail": r.stderr.decode(errors="replace")[-2000:],
    }


def run_discovery(ctx: Context) -> None:
    section = "discovery"
    if ctx.settings.smoke:
        ctx.report.skip(section, "needs root and network namespaces: not part of --smoke")
        return
    try:
        result = _script_result(ctx, "discovery", [], ctx.settings.section_budget)
    except Skip as exc:
        ctx.report.skip(section, str(exc))
        return
    ctx.report.raw[section] = result
    if result["returncode"] != 0:
        ctx.report.note(section, f"bench/discovery.py exited {result['returncode']}")
    data = result["json"] or {}
    first = _find_latency(data)
    if first is not None:
        ctx.report.add(
            Row(
                section,
                "discovery-first-answer",
                "discovery first-answer latency (netns)",
                "s",
                first,
                note="from bench/discovery.py",
            )
        )
    else:
        ctx.report.note(section, "bench/discovery.py output kept in latest.json (raw.discovery)")


def _find_latency(data: Any) -> dict[str, Any] | None:
    """A first-answer latency summary in whatever shape the script printed."""
    if not isinstance(data, dict):
        return None
    for key, value in data.items():
        if "first" in key and isinstance(value, dict) and "median" in value:
            scale = 0.001 if key.endswith("_ms") else 1.0
            return {k: (v * scale if isinstance(v, int | float) else v) for k, v in value.items()}
        if "first" in key and isinstance(value, list) and value:
            scale = 0.001 if key.endswith("_ms") else 1.0
            return summarize([float(v) * scale for v in value])
    return None


def run_extras(ctx: Context) -> None:
    section = "extras"
    for name in ("files_throughput", "heartbeat_under_load"):
        args = ["--smoke"] if ctx.settings.smoke else []
        try:
            result = _script_result(ctx, name, args, ctx.settings.section_budget)
        except Skip as exc:
            ctx.report.skip(section, str(exc))
            continue
        ctx.report.raw.setdefault(section, {})[name] = result
        if result["returncode"] != 0:
            ctx.report.note(section, f"bench/{name}.py exited {result['returncode']}")


# -- profiling ---------------------------------------------------------------------------


def run_profile(ctx: Context) -> None:
    section = "profile"
    if not ctx.have.get("pyinstrument"):
        ctx.report.skip(section, "pyinstrument not installed")
        return
    out_dir = RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    files["handshake"] = str(_profile_handshake(ctx, out_dir))
    if have_session_api("put", "get"):
        files.update(_profile_transfer(ctx, out_dir))
    else:
        ctx.report.skip(section, "put/get not implemented yet: no transfer profile")
    ctx.report.raw[section] = files
    for what, path in files.items():
        ctx.report.note(section, f"{what}: {path}")


def _profile_handshake(ctx: Context, out_dir: Path) -> Path:
    from pyinstrument import Profiler

    from bench.sec_handshake import ppcp_in_memory_once
    from ppcp.core.config import SessionConfig
    from ppcp.crypto.psk import derive_psk_key

    psk_key = derive_psk_key(ctx.psk)
    config = SessionConfig(name="bench")
    n = 200 if ctx.settings.smoke else 3000
    profiler = Profiler(interval=0.0001, async_mode="disabled")
    profiler.start()
    for _ in range(n):
        ppcp_in_memory_once(psk_key, config)
    profiler.stop()
    path = out_dir / "profile-handshake.txt"
    path.write_text(profiler.output_text(unicode=False, color=False, show_all=False))
    return path


def _profile_transfer(ctx: Context, out_dir: Path) -> dict[str, str]:
    from bench.sec_transfer import make_file

    size = ctx.settings.file_size if ctx.settings.smoke else min(ctx.settings.file_size, 512 * MiB)
    base = ctx.work / "prof"
    remote = base / "remote"
    remote.mkdir(parents=True)
    src = base / "src.bin"
    make_file(src, size)
    os.link(src, remote / "src.bin")
    files: dict[str, str] = {}
    try:
        for op in ("put", "get"):
            server_prof = out_dir / f"profile-{op}-server.txt"
            client_prof = out_dir / f"profile-{op}-client.txt"
            proc, port = ctx.start_server("ppcp", remote, profile=server_prof)
            try:
                cmd = [PYTHON, "-m", "bench.worker", "ppcp-transfer", "--port", str(port)]
                cmd += ["--op", op, "--mode", "binary", "--profile", str(client_prof)]
                cmd += ["--remote", "up.bin" if op == "put" else "src.bin"]
                cmd += ["--local", str(src if op == "put" else base / "down.bin")]
                r = run_child(cmd, ctx.settings.transfer_timeout * 3, env=ctx.env())
                if r.returncode != 0:
                    raise RuntimeError(f"profiled {op}: {r.stderr.decode(errors='replace')[-800:]}")
            finally:
                ctx.procs.stop(proc, timeout=30)
            deadline = time.monotonic() + 10
            while not server_prof.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            files[f"{op}-client"] = str(client_prof)
            files[f"{op}-server"] = str(server_prof)
            (remote / "up.bin").unlink(missing_ok=True)
            (base / "down.bin").unlink(missing_ok=True)
    finally:
        src.unlink(missing_ok=True)
        (remote / "src.bin").unlink(missing_ok=True)
    return files
