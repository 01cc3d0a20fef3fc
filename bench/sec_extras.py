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
import shutil
from pathlib import Path
from typing import Any

from bench.common import (
    PYTHON,
    REPO,
    RESULTS_DIR,
    MiB,
    Row,
    Skip,
    last_json_line,
    run_child,
    start_profiler,
    stop_profiler,
)
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
    """bench/discovery.py (root + network namespaces): first-answer latency."""
    section = "discovery"
    if ctx.settings.smoke:
        ctx.report.skip(section, "needs root and network namespaces: not part of --smoke")
        return
    out = RESULTS_DIR / "discovery.json"
    out.unlink(missing_ok=True)
    try:
        result = _script_result(ctx, "discovery", ["--runs", "100"], ctx.settings.section_budget)
    except Skip as exc:
        ctx.report.skip(section, str(exc))
        return
    data: dict[str, Any] = {}
    if out.exists():
        data = json.loads(out.read_text())
    result["json"] = data
    ctx.report.raw[section] = result
    if result["returncode"] != 0 or not data:
        tail = (result["stderr_tail"] or result["stdout_tail"]).strip().splitlines()[-1:]
        ctx.report.note(
            section, f"bench/discovery.py exited {result['returncode']}: {' '.join(tail)}"
        )
        return
    picks = [
        ("one_server", "first_ms", "scan start -> first verified PONG (1 server, netns)"),
        ("one_server", "find_server_ms", "ppcp.find_server() incl. TCP connect (netns)"),
        ("five_servers", "first_ms", "scan start -> first PONG of 5 servers (netns)"),
        ("five_servers", "all_ms", "scan start -> all 5 PONGs (netns)"),
    ]
    for group, key, what in picks:
        stat = (data.get(group) or data.get(group.split("_")[0]) or {}).get(key)
        if isinstance(stat, dict) and stat.get("n"):
            ctx.report.add(
                Row(
                    section,
                    f"discovery-{group}-{key}",
                    what,
                    "s",
                    {
                        k: (v / 1000 if k in ("median", "min", "max", "p99") else v)
                        for k, v in stat.items()
                    },
                    note=f"p99 {stat.get('p99')} ms; from bench/discovery.py",
                )
            )


EXTRAS = {
    # script -> (smoke args, full args, where its JSON lands: None = last stdout line)
    "files_throughput": (
        ["--size-mib", "8", "--runs", "1"],
        ["--size-mib", "1024", "--runs", "1"],
        "files_throughput.json",
    ),
    "heartbeat_under_load": (
        ["--size", "16", "--execs", "10", "--deadline", "25"],
        ["--size", "1024", "--execs", "200", "--deadline", "300"],
        None,
    ),
    "floor": (["--size-mib", "8"], ["--size-mib", "1024"], "floor.json"),
}


def run_extras(ctx: Context) -> None:
    section = "extras"
    for name, (smoke_args, full_args, json_name) in EXTRAS.items():
        args = list(smoke_args if ctx.settings.smoke else full_args)
        json_path = ctx.work / json_name if json_name else None
        if json_path is not None:
            args += ["--json", str(json_path)]
        try:
            result = _script_result(ctx, name, args, ctx.settings.section_budget + 60)
        except Skip as exc:
            ctx.report.skip(section, str(exc))
            continue
        except TimeoutError as exc:
            ctx.report.note(section, f"bench/{name}.py: {exc}")
            continue
        if json_path is not None and json_path.exists():
            result["json"] = json.loads(json_path.read_text())
        ctx.report.raw.setdefault(section, {})[name] = result
        if result["returncode"] != 0:
            ctx.report.note(section, f"bench/{name}.py exited {result['returncode']}")
        else:
            ctx.report.note(section, f"bench/{name}.py: output in latest.json (raw.extras)")
    _extras_rows(ctx)


# The stage of bench/floor.py that does what a file transfer must: read, encrypt,
# send, decrypt, write.
TRANSFER_FLOOR_STAGE = "tcp+aes+file"


def _extras_rows(ctx: Context) -> None:
    raw = ctx.report.raw.get("extras", {})
    floor = (raw.get("floor") or {}).get("json") or {}
    earlier = {row.key: row for row in ctx.report.rows}
    # The cold section's median start of a Python process importing what PPCP's
    # CLI needs (asyncio, click, cryptography): None if it did not run.
    start = (ctx.report.raw.get("cold", {}).get("python_dependency_floor") or {}).get("median")
    for stage in floor.get("stages", []):
        seconds = {"n": 1, "median": stage["seconds"] * (1024 / floor["size_mib"])}
        ctx.report.add(
            Row(
                "extras",
                f"floor-{stage['stage']}",
                f"floor, 1 GiB, no protocol: bare Python {stage['stage']} (bench/floor.py)",
                "s",
                seconds,
                note=(
                    f"{stage['mib_s']} MiB/s; CPU-s/GiB sender "
                    f"{stage['sender_cpu_s_per_gib']}, receiver {stage['receiver_cpu_s_per_gib']}"
                ),
            )
        )
        if stage["stage"] != TRANSFER_FLOOR_STAGE:
            continue
        # The transfer targets read against their floor, as cold and warm are:
        # what PPCP's put/get must do at the least, over the same scp figures.
        for op in ("put", "get"):
            scp = earlier.get(f"{op}-cli-vs-scp")
            if scp is None or scp.peer is None:
                continue
            size = ctx.settings.file_size // MiB
            transfer_floor = stage["seconds"] * (size / floor["size_mib"])
            ctx.report.add(
                Row(
                    "extras",
                    f"floor-{op}-vs-scp",
                    f"floor for {op} {size} MiB: {TRANSFER_FLOOR_STAGE}, no protocol "
                    "(bench/floor.py)",
                    "s",
                    {"n": 1, "median": transfer_floor},
                    "scp",
                    scp.peer,
                    note="read, encrypt, send, decrypt, write in bare Python: no Python "
                    "implementation on these libraries can go below this ratio",
                )
            )
            if start is not None:
                # The CLI rows time a whole process, as scp's do: its floor
                # adds what a Python process pays before its first byte.
                ctx.report.add(
                    Row(
                        "extras",
                        f"floor-{op}-cli-vs-scp",
                        f"floor for `ppcp {op}` {size} MiB: the one above + a Python "
                        "process importing the libraries (cold section)",
                        "s",
                        {"n": 1, "median": transfer_floor + start},
                        "scp",
                        scp.peer,
                        note="what the CLI rows' ratio to scp cannot go below",
                    )
                )
    hb = (raw.get("heartbeat_under_load") or {}).get("json") or {}
    for key, what in (
        ("heartbeat_idle", "heartbeat RTT, idle session"),
        ("heartbeat_under_load", "heartbeat RTT during a bulk transfer"),
        ("exec_true_under_load", "warm exec true during a bulk transfer"),
    ):
        stat = hb.get(key) or {}
        if stat.get("median_ms") is not None:
            ctx.report.add(
                Row(
                    "extras",
                    f"hb-{key}",
                    what + " (bench/heartbeat_under_load.py)",
                    "s",
                    {
                        "n": stat.get("n"),
                        "median": stat["median_ms"] / 1000,
                        "min": None,
                        "max": stat["max_ms"] / 1000 if stat.get("max_ms") else None,
                    },
                    note=f"p99 {stat.get('p99_ms')} ms" if stat.get("p99_ms") else "",
                )
            )


# -- profiling ---------------------------------------------------------------------------


def run_profile(ctx: Context) -> None:
    """Profiles of the handshake and the put/get hot path, each with two profilers.

    pyinstrument: wall-clock call tree (where the time goes, waiting included);
    cProfile with a thread-CPU timer: CPU per function, robust on a busy machine.
    """
    section = "profile"
    if not ctx.have.get("pyinstrument"):
        ctx.report.skip(section, "pyinstrument not installed")
        return
    out_dir = ctx.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for kind in ("pyinstrument", "cprofile"):
        files[f"handshake-{kind}"] = str(_profile_handshake(ctx, out_dir, kind))
    if have_session_api("put", "get"):
        for kind in ("pyinstrument", "cprofile"):
            files.update(_profile_transfer(ctx, out_dir, kind))
    else:
        ctx.report.skip(section, "put/get not implemented yet: no transfer profile")
    ctx.report.raw[section] = files
    ctx.report.note(section, f"{len(files)} profiles written to {out_dir}/profile-*.txt")


def _profile_handshake(ctx: Context, out_dir: Path, kind: str) -> Path:
    from bench.sec_handshake import ppcp_in_memory_once
    from ppcp.core.config import SessionConfig
    from ppcp.crypto.psk import derive_psk_key

    psk_key = derive_psk_key(ctx.psk)
    config = SessionConfig(name="bench")
    n = 200 if ctx.settings.smoke else 3000
    path = out_dir / f"profile-handshake-{kind}.txt"
    profiler = start_profiler(kind)
    for _ in range(n):
        ppcp_in_memory_once(psk_key, config)
    stop_profiler(profiler, kind, path)
    return path


def _profile_transfer(ctx: Context, out_dir: Path, kind: str) -> dict[str, str]:
    from bench.sec_transfer import make_file

    size = ctx.settings.file_size if ctx.settings.smoke else min(ctx.settings.file_size, 512 * MiB)
    base = ctx.work / f"prof-{kind}"
    remote = base / "remote"
    remote.mkdir(parents=True)
    src = base / "src.bin"
    make_file(src, size)
    os.link(src, remote / "src.bin")
    files: dict[str, str] = {}
    try:
        for op in ("put", "get"):
            server_prof = out_dir / f"profile-{op}-server-{kind}.txt"
            client_prof = out_dir / f"profile-{op}-client-{kind}.txt"
            server_prof.unlink(missing_ok=True)
            proc, port = ctx.start_server("ppcp", remote, profile=server_prof, profiler=kind)
            try:
                cmd = [PYTHON, "-m", "bench.worker", "ppcp-transfer", "--port", str(port)]
                cmd += ["--op", op, "--mode", "binary", "--profile", str(client_prof)]
                cmd += ["--profiler", kind, "--remote", "up.bin" if op == "put" else "src.bin"]
                cmd += ["--local", str(src if op == "put" else base / "down.bin")]
                r = run_child(cmd, ctx.settings.transfer_timeout * 3, env=ctx.env())
                if r.returncode != 0:
                    raise RuntimeError(f"profiled {op}: {r.stderr.decode(errors='replace')[-800:]}")
                out = last_json_line(r.stdout)
                ctx.report.note(
                    "profile",
                    f"{op} {size // MiB} MiB under {kind}: {size / MiB / out['seconds']:.0f} MiB/s",
                )
            finally:
                ctx.procs.stop(proc, timeout=30)
            files[f"{op}-client-{kind}"] = str(client_prof)
            files[f"{op}-server-{kind}"] = str(server_prof)
            (remote / "up.bin").unlink(missing_ok=True)
            (base / "down.bin").unlink(missing_ok=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return files
