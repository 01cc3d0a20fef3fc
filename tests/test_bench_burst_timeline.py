"""bench/burst_timeline.py stamps every step of every connection of a burst, on both ends."""

from __future__ import annotations

import itertools

import pytest

from bench.burst_timeline import CLIENT_STEPS, SERVER_STEPS, run


@pytest.mark.timeout(120)
def test_a_small_burst_is_stamped_in_order_on_both_ends() -> None:
    result = run(bursts=2, connections=4, uvloop=False)
    for step in CLIENT_STEPS:
        assert len(result["client"][step]) == 4, step
    for step in SERVER_STEPS:
        # The last burst's four connections (the first burst's are before its start).
        assert len(result["server"][step]) == 4, step
    order = [
        result["client"]["start"],
        result["server"]["connected"],
        result["server"]["command started"],
        result["server"]["command reaped"],
        result["client"]["closed"],
    ]
    for earlier, later in itertools.pairwise(order):
        assert min(earlier) <= min(later) and max(earlier) <= max(later)
    assert len(result["burst_ms"]) == 2
    assert 0 < result["busy"] <= 1
