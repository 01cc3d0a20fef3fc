"""What a peer sent before it closed the session is still acted on."""

from __future__ import annotations

import channel_helpers
from channel_helpers import Connect, StartServer, until


async def test_a_request_sent_with_the_close_reaches_its_handler(
    serve: StartServer, connect: Connect
) -> None:
    # The request and the session's CLOSE leave in one write, so the server reads
    # them in one go: its handler, woken by the request, must run before the
    # session's end cancels it (a `get` whose last "finished" shared a segment
    # with the CLOSE was once never logged as done).
    channel_helpers.LAST_WORDS.clear()
    server = await serve()
    for _ in range(20):
        session = await connect(server)
        chan = await session.open_channel("test-last-words", b"")
        session.mux.send_request(chan.channel_id, "bye", b"")  # queued, not flushed
        await session.close()  # flushes the request and CLOSE together
    await until(lambda: len(channel_helpers.LAST_WORDS) == 20)
    assert channel_helpers.LAST_WORDS == ["bye"] * 20
