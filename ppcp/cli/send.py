"""``ppcp send MESSAGE NAME``: one encrypted message to a server."""

from __future__ import annotations

import click

from ppcp.cli.config import complete_name
from ppcp.cli.errors import handle_errors
from ppcp.cli.options import global_options
from ppcp.control.messages_api import DEFAULT_TOPIC


@click.command("send")
@click.argument("message")
@click.argument("name", required=False, shell_complete=complete_name)
@click.option(
    "--topic", "-t", default=DEFAULT_TOPIC, show_default=True, help="Topic of the message."
)
@global_options
@handle_errors()
def command(message: str, name: str | None, topic: str) -> None:
    """Send MESSAGE ('-' reads stdin) to the server NAME, over an encrypted
    message channel. `ppcp listen` on the other side prints it."""
    import os
    import sys

    from ppcp.cli.errors import EXIT_USAGE, CLIError
    from ppcp.cli.target import Context
    from ppcp.control.messages import check_topic
    from ppcp.core.errors import ChannelError

    ctx = Context()
    # Checked before connecting: what no server could take is a usage error, not a
    # connection one (and the server does not log a session for nothing).
    try:
        check_topic(topic)
    except ChannelError as exc:
        raise CLIError(EXIT_USAGE, f"bad --topic {topic!r}: {exc.message}.") from None
    limit = ctx.session_config().max_message_size
    # fsencode: an argument that is not valid UTF-8 reaches Python as surrogates; its
    # bytes are sent as they were given.  Stdin is read only to one byte past the limit.
    data = sys.stdin.buffer.read(limit + 1) if message == "-" else os.fsencode(message)
    if len(data) > limit:
        size = f"more than {limit}" if message == "-" else str(len(data))
        raise CLIError(
            EXIT_USAGE, f"the message is too large ({size} bytes; the limit is {limit})."
        )
    target = ctx.resolve(name)
    with ctx.connect(target) as session:
        channel = session.open_messages(topic)
        try:
            channel.send(data)
        finally:
            channel.close()
    if not ctx.settings.quiet:
        click.echo(f"sent {len(data)} bytes to {target.label} (topic {topic!r})", err=True)
