"""The PPCP benchmark harness: ``make bench`` (full) and ``make bench-smoke`` (CI).

    python -m bench.run                   # everything, 1 GiB files, peers installed
    python -m bench.run --smoke           # < 60 s, no apt/sshd, 8 MiB files
    python -m bench.run --only transfer   # one section (repeat or comma-separate)
    python -m bench.run --profile         # also profile put/get and the handshake

Writes bench/results/latest.json and bench/results/ratios.png and prints a
table; bench/README.md explains every figure.  Exit status: 0 if every
section ran (peers may be skipped), 1 if a PPCP measurement failed, 2 on bad
usage.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import deps
from bench.common import (
    RESULTS_DIR,
    UVLOOP_ENV,
    Deadline,
    MiB,
    Procs,
    Report,
    reap_leftovers,
    use_uvloop_if_asked,
)
from bench.context import Context, Settings
from bench.sshd import SshDaemon

# name -> (needs the sshd?, description)
SECTIONS: dict[str, tuple[bool, str]] = {
    "handshake": (False, "handshake CPU per side vs the crypto floor"),
    "transfer": (True, "file upload/download vs scp, sftp, ssh cat, asyncssh SFTP"),
    "cold": (True, "cold connect+handshake+exec true (library and CLI)"),
    "warm": (True, "warm exec true on an open session"),
    "concurrent": (False, "N concurrent connect+auth+exec from one asyncio client"),
    "idle": (False, "N idle sessions with heartbeats on one server (RSS)"),
    "discovery": (False, "discovery first-answer latency between network namespaces"),
    "extras": (False, "the other teams' bench scripts (files, heartbeat under load)"),
    "profile": (False, "pyinstrument profiles of put/get and the handshake (opt-in)"),
}
DEFAULT_SECTIONS = [s for s in SECTIONS if s != "profile"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--smoke", action="store_true", help="tiny CI run: no apt, no sshd, < 60 s")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only this section (repeatable, or comma-separated): {', '.join(SECTIONS)}",
    )
    p.add_argument("--profile", action="store_true", help="add the profile section")
    p.add_argument("--runs", type=int, help="repetitions of each transfer (default 5)")
    p.add_argument("--size-mib", type=int, help="transfer file size in MiB (default 1024)")
    p.add_argument("--no-install", action="store_true", help="never pip/apt install anything")
    p.add_argument(
        "--uvloop", action="store_true", help="run every PPCP and asyncssh end on uvloop"
    )
    p.add_argument(
        "--no-steady-memory",
        action="store_true",
        help="leave the VM's free page reporting on during the run (see bench/memory.py)",
    )
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    p.add_argument("--list", action="store_true", help="list the sections and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for name, (_, text) in SECTIONS.items():
            print(f"{name:12} {text}")
        return 0
    only = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
    unknown = [n for n in only if n not in SECTIONS]
    if unknown:
        print(f"unknown section(s): {', '.join(unknown)}; see --list", file=sys.stderr)
        return 2
    sections = only or DEFAULT_SECTIONS + (["profile"] if args.profile else [])
    settings = Settings.smoke_settings() if args.smoke else Settings()
    overrides = {}
    if args.runs:
        overrides["transfer_runs"] = args.runs
    if args.size_mib:
        overrides["file_size"] = args.size_mib * MiB
    if overrides:
        import dataclasses

        settings = dataclasses.replace(settings, **overrides)

    started = time.monotonic()
    load_before = os.getloadavg()
    install_log: list[str] = []
    have = deps.ensure_all(args.smoke or args.no_install, install_log)
    if args.no_install and not args.smoke:
        have["openssh"] = deps.sshd_path() is not None
    if args.uvloop:
        if not deps.ensure_pip(["uvloop"], install_log):
            print("--uvloop: uvloop is not installed", file=sys.stderr)
            return 2
        os.environ[UVLOOP_ENV] = "1"
        use_uvloop_if_asked()
    for line in install_log:
        print(f"[deps] {line}", flush=True)
    report = Report()
    report.raw["available"] = have

    left_alone = _why_memory_is_left_alone(args, sections)
    memory: dict[str, object] = {"page_reporting": "unchanged", "reason": left_alone}
    with Procs() as procs:
        ctx = Context(settings, report, procs, have, out_dir=args.out)
        try:
            with contextlib.ExitStack() as stack:
                if left_alone is None:
                    from bench.memory import steady_memory

                    # Room for every file a transfer run holds at once, and their copies.
                    memory = stack.enter_context(steady_memory(ctx.work, 4 * settings.file_size))
                    print(f"[bench] memory: {memory}", flush=True)
                _run_sections(ctx, sections, args)
        finally:
            ctx.cleanup()
    left = reap_leftovers()
    if left:
        report.note("processes", f"{left} killed child process(es) had not exited at the end")

    elapsed = time.monotonic() - started
    title = (
        f"PPCP benchmarks ({'smoke' if args.smoke else 'full'}"
        f"{'; uvloop' if args.uvloop else ''}; "
        f"{settings.file_size // MiB} MiB files; {elapsed:.0f} s)"
    )
    from bench import output

    output.print_table(report, title)
    meta = {
        "mode": "smoke" if args.smoke else "full",
        "event_loop": "uvloop" if args.uvloop else "asyncio",
        "sections": sections,
        "elapsed_s": round(elapsed, 1),
        "cpus": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "settings": {k: v for k, v in vars(settings).items()},
        "install_log": install_log,
        "memory": memory,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    output.write_json(report, args.out / "latest.json", meta)
    if output.write_chart(report, args.out / "ratios.png", title):
        print(f"chart: {args.out / 'ratios.png'}")
    else:
        print("chart: skipped (matplotlib missing or no ratios)")
    print(f"results: {args.out / 'latest.json'}")
    return 1 if report.errors else 0


def _why_memory_is_left_alone(args: argparse.Namespace, sections: list[str]) -> str | None:
    """None if the run should pause free page reporting (bench/memory.py), else why not."""
    if args.smoke:
        return "--smoke"
    if args.no_steady_memory:
        return "--no-steady-memory"
    if not any(name in ("transfer", "extras", "profile") for name in sections):
        return "no section writes large files"
    return None


def _run_sections(ctx: Context, sections: list[str], args: argparse.Namespace) -> None:
    from bench import sec_exec, sec_extras, sec_handshake, sec_scale, sec_transfer

    runners: dict[str, Callable[[Context, SshDaemon | None], None]] = {
        "handshake": lambda c, _s: sec_handshake.run(c),
        "cold": sec_exec.run_cold,
        "warm": sec_exec.run_warm,
        "concurrent": lambda c, _s: sec_scale.run_concurrent(c),
        "idle": lambda c, _s: sec_scale.run_idle(c),
        "transfer": sec_transfer.run,
        "discovery": lambda c, _s: sec_extras.run_discovery(c),
        "extras": lambda c, _s: sec_extras.run_extras(c),
        "profile": lambda c, _s: sec_extras.run_profile(c),
    }
    need_ssh = any(SECTIONS[s][0] for s in sections) and ctx.have.get("openssh")
    with contextlib.ExitStack() as stack:
        ssh: SshDaemon | None = None
        if need_ssh:
            try:
                ssh = stack.enter_context(SshDaemon(ctx.procs))
            except Exception as exc:
                ctx.report.note("sshd", f"could not start the bench sshd: {exc}")
        budget = Deadline(ctx.settings.total_budget)
        for name in sections:
            if budget.expired:
                ctx.report.skip(name, f"time budget ({ctx.settings.total_budget:g} s) used up")
                continue
            t = time.monotonic()
            print(f"[bench] {name} ...", flush=True)
            try:
                runners[name](ctx, ssh)
            except Exception as exc:
                ctx.report.errors[name] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            print(f"[bench] {name} done in {time.monotonic() - t:.1f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
