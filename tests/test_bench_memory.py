"""bench/memory.py: free page reporting is paused only inside the block, and always restored."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import memory

MiB = 1 << 20
KNOB = memory.PARAMETERS / "page_reporting_order"
CAN_PAUSE = KNOB.exists() and os.geteuid() == 0 and os.access("/dev/shm", os.W_OK)


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ppcp-test-memory-", dir="/dev/shm"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_largest_order_is_read_from_buddyinfo(tmp_path: Path) -> None:
    buddyinfo = tmp_path / "buddyinfo"
    buddyinfo.write_text(
        "Node 0, zone      DMA      1      1      1      0      2      1      1      0      1"
        "      1      3\nNode 0, zone   Normal   4518   2113    926    347    123     41"
        "     19      7      4      2   4672\n"
    )
    assert memory._largest_order(buddyinfo) == 10


@pytest.mark.skipif(not CAN_PAUSE, reason="needs root and a kernel with free page reporting")
def test_reporting_is_paused_inside_and_restored_after(shm_dir: Path) -> None:
    before = KNOB.read_text()
    with memory.steady_memory(shm_dir, 4 * MiB) as info:
        assert KNOB.read_text().strip() == str(memory._largest_order() + 1)
        assert info["pretouched_mib"] == 4
        assert info["page_reporting"].startswith("paused")
    assert KNOB.read_text() == before
    assert "reported_during_run_mib" in info
    assert list(shm_dir.iterdir()) == []  # the pre-touch file is gone


@pytest.mark.skipif(not CAN_PAUSE, reason="needs root and a kernel with free page reporting")
def test_nothing_is_written_off_tmpfs(tmp_path: Path) -> None:
    with memory.steady_memory(tmp_path, 4 * MiB) as info:
        assert info["pretouched_mib"] == 0


@pytest.mark.skipif(not CAN_PAUSE, reason="needs root and a kernel with free page reporting")
def test_a_failing_run_still_restores_the_setting(tmp_path: Path) -> None:
    before = KNOB.read_text()
    with pytest.raises(RuntimeError), memory.steady_memory(tmp_path, MiB):
        raise RuntimeError("a section crashed")
    assert KNOB.read_text() == before


def test_without_the_knob_nothing_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "PARAMETERS", tmp_path / "absent")
    with memory.steady_memory(tmp_path, MiB) as info:
        assert info == {
            "page_reporting": "unchanged",
            "reason": "no free page reporting in this kernel",
        }
    assert list(tmp_path.iterdir()) == []
