"""bench/sec_scale.py: the concurrent section's CPU-bound note is computed from its own figures."""

from __future__ import annotations

import os

import pytest

from bench.common import machine_cpu
from bench.sec_scale import _cpu_packing


def test_packing_spreads_the_three_processes_cpu_over_the_cores() -> None:
    # Two bursts of 0.10 and 0.14 s; client, server, commands, machine busy, machine total.
    cpu = {"ppcp": [0.06, 0.08, 0.10, 0.36, 0.48]}
    packing = _cpu_packing(cpu, {"ppcp": [0.10, 0.14]})["ppcp"]
    cores = os.cpu_count() or 1
    assert packing["packed_ms"] == pytest.approx(0.24 / 2 / cores * 1e3)
    assert packing["burst_ms"] == pytest.approx(120.0)
    assert packing["busy"] == pytest.approx(0.75)


def test_no_machine_figure_is_no_busy_share() -> None:
    assert _cpu_packing({"x": [0.1, 0.1, 0.1, 0.0, 0.0]}, {"x": [0.2]})["x"]["busy"] == 0.0


def test_the_machine_counters_only_grow() -> None:
    busy, total = machine_cpu()
    assert 0 < busy <= total
    sum(range(200_000))  # some CPU, so that at least the total moves on
    again_busy, again_total = machine_cpu()
    assert again_busy >= busy and again_total >= total
