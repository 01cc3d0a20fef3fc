"""10,000 short commands over one session leak neither fds nor threads."""

from __future__ import annotations

import asyncio
import threading
import time

from channel_helpers import Connect, StartServer, open_fds, until

COMMANDS = 10_000
CONCURRENCY = 16


async def test_ten_thousand_commands_without_leaks(serve: StartServer, connect: Connect) -> None:
    server = await serve()
    session = await connect(server)
    # Warm up (first-use imports, the child watcher) before taking the baseline.
    await asyncio.gather(*(session.exec(["true"]) for _ in range(CONCURRENCY)))
    served = next(iter(server.sessions))
    # The client has its results before the server has closed the commands'
    # pipes: the baseline waits for the server's handlers to be done too.
    await until(lambda: not session.channels and not session.mux.channels)
    await until(lambda: not served.channels and not served.mux.channels and not served._tasks)
    fds, threads = open_fds(), threading.active_count()

    start = time.monotonic()
    done = 0
    for _ in range(COMMANDS // CONCURRENCY):
        results = await asyncio.gather(*(session.exec(["true"]) for _ in range(CONCURRENCY)))
        assert all(r.exit_code == 0 for r in results)
        done += len(results)
    elapsed = time.monotonic() - start
    assert done == COMMANDS
    print(f"\n{COMMANDS} execs in {elapsed:.1f} s ({elapsed / COMMANDS * 1e3:.2f} ms each)")

    # Channels are freed on both sides once the CLOSEs crossed.
    await until(lambda: not session.channels and not session.mux.channels)
    await until(lambda: not served.channels and not served.mux.channels and not served._tasks)
    # Child-watcher threads exit right after their child; pipes close with it.
    await until(lambda: threading.active_count() <= threads, timeout=30)
    await until(lambda: open_fds() <= fds, timeout=30)
    assert open_fds() == fds and threading.active_count() == threads
