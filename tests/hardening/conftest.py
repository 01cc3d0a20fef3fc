"""Fixtures for the hardening tests (helpers live in hardening_util.py).

The repository root is put on sys.path so the tests can import the fuzz
targets (``tests.fuzz.targets``) and the load benchmark (``bench.load``).
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))


@pytest.fixture
def many_fds() -> Iterator[int]:
    """Raise RLIMIT_NOFILE (soft) as far as the hard limit allows, for this test only."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    try:
        yield want
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def root_only() -> None:
    import os

    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, tmpfs mounts)")
