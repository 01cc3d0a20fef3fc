"""The fuzz targets under hypothesis: CI's short version of ``make fuzz``.

The same targets (tests/fuzz/targets.py) that the atheris harnesses run,
fed with genuine inputs, mutated genuine inputs and random bytes.  Each
target checks h11's invariant (parse, or raise a PPCPError; nothing else)
plus its no-hang and bounded-memory checks.  Budget: well under 30 s.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from tests.fuzz import targets
from tests.fuzz.strategies import inputs

EXAMPLES = {
    "frames": 400,
    "handshake_server": 250,
    "handshake_client": 250,
    "mux": 250,
    "discovery": 300,
}


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_invariant(name: str) -> None:
    target = targets.TARGETS[name]

    @settings(
        max_examples=EXAMPLES.get(name, 200),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(inputs(name))
    def check(data: bytes) -> None:
        target(data)

    check()


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_seeds_pass(name: str) -> None:
    """Every genuine seed satisfies the invariant (and the seeds stay genuine)."""
    for seed in targets.seeds(name):
        targets.TARGETS[name](seed)


def test_conversation_is_deterministic() -> None:
    """Fixed random sources: a crashing input reproduces byte for byte."""
    first = targets.conversation()
    targets.conversation.cache_clear()
    assert targets.conversation() == first


def test_every_target_has_seeds() -> None:
    assert set(EXAMPLES) == set(targets.TARGETS)
    for name in targets.TARGETS:
        assert targets.seeds(name)
