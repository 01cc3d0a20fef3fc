"""bench/sec_extras.py: the transfer floor is read against the same scp figures as put/get."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from bench.common import MiB, Report, Row
from bench.context import Settings
from bench.sec_extras import TRANSFER_FLOOR_STAGE, _extras_rows

STAGES = [
    {"stage": name, "seconds": seconds, "mib_s": 1.0}
    | {"sender_cpu_s_per_gib": 0.1, "receiver_cpu_s_per_gib": 0.1}
    for name, seconds in (("tcp", 0.25), (TRANSFER_FLOOR_STAGE, 0.6))
]


def _run(rows: list[Row], file_mib: int, process_start: float | None = None) -> dict[str, Row]:
    report = Report(rows=list(rows))
    report.raw["extras"] = {"floor": {"json": {"size_mib": 1024, "stages": STAGES}}}
    if process_start is not None:
        report.raw["cold"] = {"python_dependency_floor": {"n": 9, "median": process_start}}
    ctx: Any = SimpleNamespace(settings=Settings(file_size=file_mib * MiB), report=report)
    _extras_rows(ctx)
    return {row.key: row for row in report.rows}


def _scp_row(op: str, seconds: float) -> Row:
    ppcp = {"n": 5, "median": seconds / 4}
    return Row("transfer", f"{op}-cli-vs-scp", op, "s", ppcp, "scp", {"n": 5, "median": seconds})


@pytest.mark.parametrize("file_mib", [1024, 64])
def test_the_floor_gets_a_ratio_against_scp_at_the_transfer_size(file_mib: int) -> None:
    rows = _run([_scp_row("put", 3.0), _scp_row("get", 2.0)], file_mib)
    scale = file_mib / 1024
    assert rows["floor-put-vs-scp"].ratio == pytest.approx(0.6 * scale / 3.0)
    assert rows["floor-get-vs-scp"].ratio == pytest.approx(0.6 * scale / 2.0)
    assert rows["floor-tcp"].ratio is None  # the other stages stay absolute


def test_no_floor_ratio_without_an_scp_figure() -> None:
    rows = _run([], 1024)
    assert "floor-put-vs-scp" not in rows and "floor-get-vs-scp" not in rows
    assert rows[f"floor-{TRANSFER_FLOOR_STAGE}"].ppcp == {"n": 1, "median": 0.6}


def test_the_cli_floor_adds_the_process_start_measured_by_the_cold_section() -> None:
    rows = _run([_scp_row("put", 3.0), _scp_row("get", 2.0)], 1024, process_start=0.09)
    assert rows["floor-put-cli-vs-scp"].ratio == pytest.approx((0.6 + 0.09) / 3.0)
    assert rows["floor-get-cli-vs-scp"].ratio == pytest.approx((0.6 + 0.09) / 2.0)
    without_cold = _run([_scp_row("put", 3.0)], 1024)
    assert "floor-put-cli-vs-scp" not in without_cold and "floor-put-vs-scp" in without_cold
