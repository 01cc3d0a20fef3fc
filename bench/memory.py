"""Steady memory for the transfer figures: the VM's free page reporting, paused.

On the machines this project runs on (virtual machines with a virtio balloon that does
*free page reporting*), memory the guest frees is handed back to the host, and the next
first touch of those pages faults in the host as well.  A 1 GiB write to tmpfs then
takes 1-3.5 s instead of 0.35-0.5 s, at random: whichever pages the allocator hands
out.  Every transfer method writes a fresh 1 GiB file per run (``scp`` and ``ppcp``
alike), so these "slow spells" landed on any of them and moved medians by 2x
(measured on 2026-11-23: 10 writes of 1 GiB, 3 slow ones with reporting on; 12 of 12
fast with reporting paused after one 4 GiB pre-touch, 353-497 ms).

So, for a full run as root, the harness pauses reporting for its own duration
(``page_reporting_order`` set above the largest page order: no free block qualifies),
touches a few GiB of tmpfs once so that the pages the transfers get are backed, and
restores the setting at the end.  Nothing else on the machine changes; the guest only
keeps its free memory instead of returning it to the host until the run ends.
``--no-steady-memory`` leaves the machine alone.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PARAMETERS = Path("/sys/module/page_reporting/parameters")
CHUNK = 1 << 20


def _largest_order(buddyinfo: Path = Path("/proc/buddyinfo")) -> int:
    """The largest page order the allocator keeps (11 columns on x86-64: orders 0..10)."""
    fields = buddyinfo.read_text().splitlines()[0].split()
    # "Node 0, zone DMA c0 c1 ... cN": the counts follow the zone name.
    return len(fields) - 4 - 1


def _available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _pretouch(directory: Path, size: int) -> float:
    """Write ``size`` bytes to a file in ``directory`` (tmpfs) and delete it; seconds taken."""
    path = directory / "steady-memory.fill"
    block = bytes(CHUNK)
    started = time.perf_counter()
    try:
        with open(path, "wb") as f:
            for _ in range(size // CHUNK):
                f.write(block)
    finally:
        path.unlink(missing_ok=True)
    return time.perf_counter() - started


@contextlib.contextmanager
def steady_memory(directory: Path, touch_bytes: int) -> Iterator[dict[str, Any]]:
    """Pause free page reporting and pre-touch ``touch_bytes`` of tmpfs for the block.

    Yields what was done (for the results' metadata); does nothing, and says why,
    when not root or when the kernel has no free page reporting.
    """
    knob = PARAMETERS / "page_reporting_order"
    info: dict[str, Any] = {"page_reporting": "unchanged"}
    if not knob.exists():
        info["reason"] = "no free page reporting in this kernel"
        yield info
        return
    if os.geteuid() != 0:
        info["reason"] = "not root"
        yield info
        return
    original = knob.read_text().strip()
    paused = str(_largest_order() + 1)

    def restore() -> None:
        with contextlib.suppress(OSError):
            knob.write_text(original)

    try:
        knob.write_text(paused)
    except OSError as exc:
        info["reason"] = f"could not set {knob}: {exc}"
        yield info
        return
    # A run killed before its finally still gives the setting back at interpreter exit.
    atexit.register(restore)
    reported = PARAMETERS / "reported_kib"
    before = int(reported.read_text()) if reported.exists() else None
    try:
        # Off tmpfs the files live on disk and writing gigabytes there proves nothing.
        on_tmpfs = Path("/dev/shm") in directory.resolve().parents
        size = min(touch_bytes, _available_bytes() // 2) // CHUNK * CHUNK if on_tmpfs else 0
        info.update(
            page_reporting=f"paused (page_reporting_order {original} -> {paused})",
            pretouched_mib=size // CHUNK,
            pretouch_s=round(_pretouch(directory, size), 2),
        )
        yield info
    finally:
        if before is not None:
            info["reported_during_run_mib"] = (int(reported.read_text()) - before) // 1024
        restore()
        atexit.unregister(restore)
