"""`make demo` end to end: every phase runs and the demo ends cleanly.

The demo is a newcomer's first contact with PPCP: an error logged at exit,
or a temporary directory left behind, is a bug here too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_the_demo_runs_every_phase_and_ends_cleanly(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    run = subprocess.run(
        [sys.executable, "-m", "ppcp.demo"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    for phase in range(8):
        assert f"{phase}. " in out, f"phase {phase} missing:\n{out}"
    assert "identical: True" in out  # the file came back whole
    assert "the message text appears in them: False" in out  # the tap saw only ciphertext
    assert "Demo complete." in out
    assert "Traceback" not in out and "Exception in callback" not in out, out
    assert list(tmp_path.iterdir()) == [], "the demo left files behind"
