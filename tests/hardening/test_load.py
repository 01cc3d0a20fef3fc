"""The scaled-down load test: 100 sessions at work while 1,000 failed logins arrive.

The full version (1,000 sessions, 10,000 failures) is ``python -m bench.load``;
see bench/load.py for the scenario and the checks.
"""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_load_under_failed_login_storm() -> None:
    from bench import load

    report = load.run(sessions=100, failures=1000, fail_sources=200, execs=1, messages=2)
    load._print(report)
    failed = [name for name, ok in report["checks"].items() if not ok]
    assert not failed, failed
    assert report["peak_rss_mb"] < 512
