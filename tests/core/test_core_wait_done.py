"""wait_done: wait for a future, bounded, never cancelling it."""

from __future__ import annotations

import asyncio

import pytest

from ppcp.transport.aio_driver import wait_done


async def test_the_result_or_the_error_of_the_future() -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    done.set_result(7)
    assert await wait_done(done, 0) == 7
    later: asyncio.Future[int] = loop.create_future()
    loop.call_soon(later.set_exception, ValueError("boom"))
    with pytest.raises(ValueError, match="boom"):
        await wait_done(later, 5)


async def test_a_timeout_leaves_the_future_pending_and_usable() -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[str] = loop.create_future()
    with pytest.raises(TimeoutError):
        await wait_done(fut, 0.01)
    assert not fut.done()
    fut.set_result("late")
    assert await wait_done(fut, None) == "late"


async def test_cancelling_the_waiter_does_not_cancel_the_future() -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[str] = loop.create_future()
    waiting = asyncio.ensure_future(wait_done(fut, None))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not fut.cancelled() and not fut.done()
    fut.set_result("still here")  # no callback of the cancelled wait is left on it
    assert await wait_done(fut, 1) == "still here"
