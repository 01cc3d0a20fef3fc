"""``ppcp listen``: a server that only accepts messages, and prints them."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import click

from ppcp.cli.errors import handle_errors
from ppcp.cli.options import server_options

if TYPE_CHECKING:
    import asyncio

    from ppcp.control.router import ServerPolicy


@click.command("listen")
@click.option("--name", metavar="NAME", help="Name to answer discovery with (default: hostname).")
@click.option("--bind", metavar="HOST", default="0.0.0.0", help="Listen address (default 0.0.0.0).")
@click.option("--no-discovery", is_flag=True, help="Do not answer discovery requests.")
@click.option("--no-mdns", is_flag=True, help="Answer UDP discovery but do not announce on mDNS.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per message.")
@server_options
@handle_errors()
def command(name: str | None, bind: str, no_discovery: bool, no_mdns: bool, as_json: bool) -> None:
    """Receive encrypted messages (`ppcp send`) and print each one with its
    sender and topic. Commands, shells and files are refused."""
    from ppcp.cli.serve import ServeOptions, run_server, setup_logging
    from ppcp.cli.target import Context

    ctx = Context()
    psk = ctx.psk
    setup_logging(ctx.settings)
    options = ServeOptions(
        name=name,
        bind=bind,
        root=None,
        no_exec=True,
        allow=(),
        no_shell=True,
        no_files=True,
        no_discovery=no_discovery,
        no_mdns=no_mdns,
    )
    import asyncio

    stdout_closed = asyncio.Event()
    policy = messages_only_policy(as_json, stdout_closed)
    run_server(ctx, psk, policy, options, lambda _: "messages only", stop=stdout_closed)
    if stdout_closed.is_set():
        raise BrokenPipeError  # `ppcp listen | head -1`: 141, quietly (handle_errors)


def messages_only_policy(as_json: bool, stdout_closed: asyncio.Event | None = None) -> ServerPolicy:
    from ppcp.aio import ServerPolicy

    def on_message(peer: str, topic: str, data: bytes) -> None:
        try:
            print_message(peer, topic, data, as_json)
        except BrokenPipeError:
            # Nothing reads what we print any more: stop, as a writer killed by
            # SIGPIPE would, instead of failing every later sender.
            if stdout_closed is None:
                raise
            from ppcp.cli.errors import silence_stdout

            silence_stdout()
            stdout_closed.set()

    return ServerPolicy(
        allow_exec=False,
        allow_shell=False,
        allow_files=False,
        allow_messages=True,
        on_message=on_message,
    )


def print_message(sender: str, topic: str, data: bytes, as_json: bool) -> None:
    import datetime

    text = data.decode("utf-8", "replace")
    when = datetime.datetime.now().astimezone()
    if as_json:
        import json

        line = json.dumps(
            {
                "time": when.isoformat(timespec="seconds"),
                "sender": sender,
                "topic": topic,
                "message": text,
            }
        )
    else:
        if _stdout_is_terminal():
            # A message must not drive the terminal (colours, title, cursor): the
            # sender only holds the key, not this screen.
            text = _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
        line = f"{when:%H:%M:%S} [{topic}] {sender}: {text}"
    click.echo(line)


# C0 and C1 control characters but newline and tab, and DEL.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _stdout_is_terminal() -> bool:
    import sys

    try:
        return sys.stdout.isatty()
    except (ValueError, OSError):
        return False
