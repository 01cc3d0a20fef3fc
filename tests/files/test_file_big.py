"""A GiB each way on tmpfs: identical SHA-256, and memory that does not grow with size."""

from __future__ import annotations

import resource

import pytest
from files_helpers import Loopback, MiB, make_file, sha256_file

from ppcp.control.transfer import BULK_CHUNK

GiB = 1 << 30


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_one_gib_put_and_get(lo: Loopback) -> None:
    digest = make_file(lo.local / "big.bin", GiB)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    calls = 0

    def progress(done: int, total: int, rate: float) -> None:
        nonlocal calls
        calls += 1
        assert total == GiB

    async with lo.client() as session:
        up = await session.put(lo.local / "big.bin", "big.bin", progress=progress)
        (lo.local / "big.bin").unlink()  # two GiB on tmpfs at a time, not three
        down = await session.get("big.bin", lo.local / "back.bin")
    peak_growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert (up.bytes, down.bytes) == (GiB, GiB)
    assert up.sha256 is None and down.sha256 is None  # no checksum asked: none computed
    assert sha256_file(lo.root / "big.bin") == digest
    assert sha256_file(lo.local / "back.bin") == digest
    assert calls >= GiB // BULK_CHUNK
    # Both ends run in this process: a few channel windows, not a GiB.
    assert peak_growth_mib < 128, f"peak RSS grew by {peak_growth_mib:.0f} MiB"
    print(
        f"\nput {GiB / MiB / up.seconds:.0f} MiB/s, get {GiB / MiB / down.seconds:.0f} MiB/s "
        f"(both ends in one process), peak RSS growth {peak_growth_mib:.0f} MiB"
    )
