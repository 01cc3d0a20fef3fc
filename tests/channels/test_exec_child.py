"""The server's child processes (ppcp/control/child.py), on their own.

The exec service runs every command through :class:`Child`: non-blocking
pipes on the event loop and a pidfd for the exit (a waitpid thread where
there is no pidfd).  These tests run real processes both ways.
"""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from ppcp.control.child import STDERR, STDOUT, Child


async def read_all(proc: Child, stream: int) -> bytes:
    out = bytearray()
    for _ in range(100_000):
        data = await proc.read(stream, 65536)
        if not data:
            return bytes(out)
        out += data
    raise AssertionError("output did not end")


@pytest.fixture(params=["pidfd", "waitpid thread"])
def exit_watch(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "waitpid thread":
        monkeypatch.delattr(os, "pidfd_open", raising=False)
    elif not hasattr(os, "pidfd_open"):
        pytest.skip("no pidfd on this platform")
    return str(request.param)


async def test_output_and_exit_status(exit_watch: str) -> None:
    proc = Child.spawn(["sh", "-c", "echo out; echo err >&2; exit 3"])
    try:
        out, err, code = await asyncio.gather(
            read_all(proc, STDOUT), read_all(proc, STDERR), proc.wait()
        )
    finally:
        proc.close()
    assert (out, err, code, proc.returncode) == (b"out\n", b"err\n", 3, 3)


async def test_a_signal_is_reported_as_a_negative_status(exit_watch: str) -> None:
    proc = Child.spawn(["sh", "-c", "kill -TERM $$"])
    try:
        assert await proc.wait() == -15
    finally:
        proc.close()


async def test_stdin_larger_than_a_pipe_comes_back_whole(exit_watch: str) -> None:
    data = os.urandom(1 << 20)  # 16 pipe buffers: the writer must wait for room
    proc = Child.spawn(["cat"])
    try:

        async def feed() -> None:
            await proc.write(data)
            proc.close_stdin()

        _, echoed, code = await asyncio.gather(feed(), read_all(proc, STDOUT), proc.wait())
    finally:
        proc.close()
    assert echoed == data and code == 0


async def test_writing_to_a_command_that_exited_is_a_broken_pipe() -> None:
    proc = Child.spawn(["true"])
    try:
        await proc.wait()
        with pytest.raises(BrokenPipeError):
            await proc.write(b"x" * 200_000)
    finally:
        proc.close()


async def test_a_program_that_cannot_start_leaks_no_descriptor() -> None:
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(FileNotFoundError):
        Child.spawn(["/nonexistent/program"])
    with pytest.raises(FileNotFoundError) as info:
        Child.spawn(["true"], cwd="/nonexistent/dir")
    assert info.value.filename == "/nonexistent/dir"
    assert set(os.listdir("/proc/self/fd")) == before


async def test_with_a_pidfd_no_thread_waits_for_the_command() -> None:
    if not hasattr(os, "pidfd_open"):
        pytest.skip("no pidfd on this platform")
    threads = threading.active_count()
    proc = Child.spawn(["sleep", "0.2"])
    try:
        assert threading.active_count() == threads
        assert await proc.wait() == 0
    finally:
        proc.close()


async def test_a_cancelled_wait_leaves_the_status_to_later_waits(exit_watch: str) -> None:
    proc = Child.spawn(["sh", "-c", "read line; exit 5"])
    try:
        first = asyncio.ensure_future(proc.wait())
        second = asyncio.ensure_future(proc.wait())
        await asyncio.sleep(0)  # both are waiting now
        first.cancel()
        proc.close_stdin()  # read hits EOF: the command exits
        assert await second == 5
        assert first.cancelled()
        assert proc.returncode == 5 and await proc.wait() == 5
    finally:
        proc.close()


async def test_a_command_already_gone_is_reaped_without_waiting_for_the_loop() -> None:
    if not hasattr(os, "pidfd_open"):
        pytest.skip("no pidfd on this platform")
    proc = Child.spawn(["true"])
    try:
        # Block until it has exited, without reaping it (WNOWAIT) and without
        # letting the loop poll the pidfd.
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        waiting = proc.wait()
        with pytest.raises(StopIteration) as done:
            waiting.send(None)  # finishes on its first step: no loop turn
        assert done.value.value == 0 and proc.returncode == 0
    finally:
        proc.close()


async def test_the_output_ends_at_the_exit_not_when_the_command_closes_it(
    exit_watch: str,
) -> None:
    # The server holds the pipes' write ends until the exit, so a command's end
    # wakes the loop once (its exit), not once per pipe hanging up as it exits.
    proc = Child.spawn(["sh", "-c", "exec >&- 2>&-; kill -STOP $$"])
    try:
        reading = asyncio.ensure_future(proc.read_any((STDOUT, STDERR), 65536))
        os.waitid(os.P_PID, proc.pid, os.WSTOPPED | os.WNOWAIT)  # both closed by now
        for _ in range(20):  # loop turns: a hang-up would have been seen in the first
            await asyncio.sleep(0)
        assert not reading.done()
        os.kill(proc.pid, 9)
        assert await reading == (STDOUT, b"")
        assert await proc.read(STDERR, 65536) == b""
        assert await proc.wait() == -9
    finally:
        proc.close()


async def test_what_a_command_leaves_running_keeps_its_output_open(exit_watch: str) -> None:
    proc = Child.spawn(["sh", "-c", "echo started; exec 3<&0; (read line <&3; echo late) &"])
    try:
        assert await proc.wait() == 0
        assert await proc.read(STDOUT, 65536) == b"started\n"
        reading = asyncio.ensure_future(read_all(proc, STDOUT))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not reading.done()  # the background job still holds stdout
        await proc.write(b"go\n")
        proc.close_stdin()
        assert await reading == b"late\n"
    finally:
        proc.close()


async def test_no_descriptor_outlives_a_command(exit_watch: str) -> None:
    before = set(os.listdir("/proc/self/fd"))
    for argv in (["true"], ["sleep", "60"]):
        proc = Child.spawn(argv)
        if argv == ["sleep", "60"]:
            os.kill(proc.pid, 9)
        await proc.wait()
        proc.close()
    assert set(os.listdir("/proc/self/fd")) == before
