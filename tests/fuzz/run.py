"""Run every fuzz harness for a set time and report what each executed.

    python -m tests.fuzz.run [--seconds 60] [--targets frames,mux] [--engine atheris|hypothesis]

``make fuzz FUZZ_ARGS="--seconds 60"`` runs this.  With the ``atheris``
engine (default when atheris is installed) each target runs in its own
libFuzzer process, with a per-input timeout and an RSS limit (the "no hang,
memory bounded" half of the invariant); the corpus grows in
``build/fuzz/corpus/TARGET`` and crashing inputs land in
``build/fuzz/artifacts/TARGET``.  The ``hypothesis`` engine runs the same
targets on mutated seeds and random bytes for the same time, for machines
where atheris does not install.  The exit status is 1 if any target failed.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.fuzz import targets

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "build" / "fuzz"
PER_INPUT_TIMEOUT = 30  # seconds: libFuzzer reports a hang beyond this
RSS_LIMIT_MB = 2048


@dataclass
class Result:
    target: str
    engine: str
    seconds: float
    executed: int
    ok: bool
    detail: str


def _seed_corpus(name: str) -> Path:
    corpus = WORK / "corpus" / name
    corpus.mkdir(parents=True, exist_ok=True)
    for seed in targets.seeds(name):
        (corpus / f"seed-{hashlib.sha256(seed).hexdigest()[:16]}").write_bytes(seed)
    return corpus


def run_atheris(name: str, seconds: int) -> Result:
    corpus = _seed_corpus(name)
    artifacts = WORK / "artifacts" / name
    artifacts.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "tests.fuzz.harness",
        name,
        str(corpus),
        f"-max_total_time={seconds}",
        f"-timeout={PER_INPUT_TIMEOUT}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
    ]
    before = set(artifacts.iterdir())
    started = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 600, check=False
    )
    elapsed = time.monotonic() - started
    log = proc.stdout + proc.stderr
    (WORK / f"{name}.log").write_text(log)
    stats = dict(re.findall(r"stat::(\w+):\s+(\d+)", log))
    executed = int(stats.get("number_of_executed_units", 0))
    cov = re.findall(r"cov: (\d+) ft: (\d+)", log)
    detail = f"cov {cov[-1][0]} ft {cov[-1][1]}" if cov else ""
    if "peak_rss_mb" in stats:
        detail += f", peak RSS {stats['peak_rss_mb']} MB"
    corpus_size = len(list((WORK / "corpus" / name).iterdir()))
    detail += f", corpus {corpus_size}"
    ok = proc.returncode == 0
    if not ok:
        crash = re.findall(r"(Test unit written to \S+)", log)
        detail += f"; FAILED (exit {proc.returncode}) {' '.join(crash)}; see {WORK / name}.log"
        for artifact in sorted(set(artifacts.iterdir()) - before):
            detail += f"; rerun of {artifact.name}: {_rerun(name, artifact)}"
    return Result(name, "atheris", elapsed, executed, ok, detail)


def _rerun(name: str, artifact: Path) -> str:
    """Replay one saved input without instrumentation: does it still fail or hang?"""
    code = (
        "import sys, time; from tests.fuzz import targets; data = open(sys.argv[2], 'rb').read(); "
        "t = time.monotonic(); targets.TARGETS[sys.argv[1]](data); "
        "print(f'passes in {time.monotonic() - t:.3f} s')"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, name, str(artifact)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=PER_INPUT_TIMEOUT + 300,  # interpreter start-up can be slow under load
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"still hangs (> {PER_INPUT_TIMEOUT} s)"
    if proc.returncode == 0:
        return proc.stdout.strip() + " (not reproducible: the machine was overloaded?)"
    return "reproduces: " + (proc.stderr.strip().splitlines() or ["?"])[-1]


def run_hypothesis(name: str, seconds: int) -> Result:
    from hypothesis import HealthCheck, given, settings

    from tests.fuzz.strategies import inputs

    target = targets.TARGETS[name]
    count = 0

    @settings(
        max_examples=1000,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(inputs(name))
    def check(data: bytes) -> None:
        nonlocal count
        count += 1
        target(data)

    started = time.monotonic()
    ok, detail = True, ""
    rounds = 0
    while time.monotonic() - started < seconds and rounds < 1_000_000:
        rounds += 1
        try:
            check()
        except Exception as exc:
            ok, detail = False, f"FAILED: {type(exc).__name__}: {exc}"
            break
    return Result(name, "hypothesis", time.monotonic() - started, count, ok, detail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="time per target")
    parser.add_argument("--targets", default=",".join(targets.TARGETS), help="comma-separated")
    parser.add_argument(
        "--engine",
        choices=("atheris", "hypothesis"),
        default="atheris" if importlib.util.find_spec("atheris") else "hypothesis",
    )
    args = parser.parse_args(argv)
    names = [n for n in args.targets.split(",") if n]
    unknown = sorted(set(names) - set(targets.TARGETS))
    if unknown:
        parser.error(f"unknown targets {unknown}; known: {sorted(targets.TARGETS)}")
    os.chdir(ROOT)
    WORK.mkdir(parents=True, exist_ok=True)
    runner = run_atheris if args.engine == "atheris" else run_hypothesis
    results = []
    for name in names:
        print(f"fuzzing {name} with {args.engine} for {args.seconds} s ...", flush=True)
        result = runner(name, args.seconds)
        results.append(result)
        status = "ok" if result.ok else "FAIL"
        print(
            f"  {status}: {result.executed} inputs in {result.seconds:.0f} s "
            f"({result.executed / max(result.seconds, 1e-9):.0f}/s) {result.detail}",
            flush=True,
        )
    print("\ntarget             engine      seconds   inputs     inputs/s  result")
    for r in results:
        print(
            f"{r.target:<18} {r.engine:<10} {r.seconds:>8.0f} {r.executed:>9} "
            f"{r.executed / max(r.seconds, 1e-9):>11.0f}  {'ok' if r.ok else 'FAIL'}"
        )
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
