"""The file worker: jobs inline while storage is fast, in a thread once it is not.

A transfer's file I/O runs on the event loop while each job is quick (a
thread hand-off costs more than a page-cache write), and moves to a pool
thread for the rest of the file as soon as one job keeps the loop waiting
longer than ``SLOW_JOB``, so a slow disk cannot stall the other sessions.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from ppcp.control import transfer
from ppcp.control.transfer import Worker


def where(fd: int) -> tuple[int, int]:
    """(thread that ran the job, the descriptor it was given)."""
    return threading.get_ident(), fd


def slow_where(fd: int) -> tuple[int, int]:
    # Stands in for a disk that takes longer than SLOW_JOB to answer.
    time.sleep(transfer.SLOW_JOB * 2)
    return where(fd)


async def test_quick_jobs_run_inline_on_the_loop_thread(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_CREAT | os.O_RDWR, 0o600)
    worker = Worker(fd)
    try:
        for _ in range(3):
            worker.submit(where)
            thread, used_fd = await worker.result()
            assert thread == threading.get_ident() and used_fd == fd
        assert not worker.threaded
    finally:
        worker.close()
        os.close(fd)


async def test_a_slow_job_moves_the_rest_of_the_file_to_a_thread(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_CREAT | os.O_RDWR, 0o600)
    worker = Worker(fd)
    try:
        worker.submit(slow_where)
        thread, _ = await worker.result()
        assert thread == threading.get_ident(), "the slow job itself ran inline"
        assert worker.threaded
        worker.submit(where)
        thread, used_fd = await worker.result()
        assert thread != threading.get_ident()
        # A thread works on its own duplicate: closing the transfer's
        # descriptor never leaves a job using a reused number.
        assert used_fd != fd and os.path.samestat(os.fstat(used_fd), os.fstat(fd))
    finally:
        worker.close()
        os.close(fd)
    with pytest.raises(OSError):
        os.fstat(used_fd)
