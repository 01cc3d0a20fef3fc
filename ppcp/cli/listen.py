"""``ppcp listen``: a server that only accepts messages, and prints them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ppcp.cli.errors import handle_errors
from ppcp.cli.options import server_options

if TYPE_CHECKING:
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
    run_server(ctx, psk, messages_only_policy(as_json), options, lambda _: "messages only")


def messages_only_policy(as_json: bool) -> ServerPolicy:
    from ppcp.aio import ServerPolicy

    def on_message(peer: str, topic: str, data: bytes) -> None:
        print_message(peer, topic, data, as_json)

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
        line = f"{when:%H:%M:%S} [{topic}] {sender}: {text}"
    click.echo(line)
