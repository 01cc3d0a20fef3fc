"""``ppcp scan``: list the PPCP servers that answer discovery."""

from __future__ import annotations

from typing import Any

import click

from ppcp.cli.errors import handle_errors
from ppcp.cli.options import global_options

FIELDS = ("name", "id", "addresses", "port", "rtt", "capabilities", "versions", "verified")


@click.command("scan")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list of objects) for scripts.")
@global_options
@handle_errors()
def command(as_json: bool) -> None:
    """List the servers on the local network (name, id, addresses, port, RTT...).

    Exits 3 when nothing answers within --timeout seconds.
    """
    from ppcp.cli.errors import EXIT_NOT_FOUND, CLIError
    from ppcp.cli.target import Context

    ctx = Context()
    servers = [server_dict(s) for s in ctx.discover()]
    servers.sort(key=lambda s: (str(s["name"]), float(s["rtt"] or 0)))
    if as_json:
        import json

        click.echo(json.dumps(servers, indent=2))
    elif servers:
        print_table(servers)
    if not servers:
        raise CLIError(
            EXIT_NOT_FOUND,
            f"no PPCP server answered within {ctx.timeout:g} s "
            f"(UDP port {ctx.udp_port}); -v says what was tried.",
        )


def server_dict(info: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in FIELDS:
        value = getattr(info, name, None)
        if isinstance(value, tuple | list | set | frozenset):
            value = [str(v) if not isinstance(v, int | float) else v for v in value]
        out[name] = value
    return out


def print_table(servers: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("NAME", no_wrap=True)
    table.add_column("ID", no_wrap=True)
    table.add_column("ADDRESSES")
    table.add_column("PORT", justify="right", no_wrap=True)
    table.add_column("RTT", justify="right", no_wrap=True)
    table.add_column("CAPABILITIES")
    table.add_column("VERIFIED", no_wrap=True)
    for s in servers:
        rtt = s["rtt"]
        table.add_row(
            str(s["name"]),
            str(s["id"] or "")[:12],  # like docker: --json has the whole id
            "\n".join(s["addresses"] or []),
            str(s["port"]),
            f"{rtt * 1000:.1f} ms" if isinstance(rtt, int | float) else "-",
            " ".join(s["capabilities"] or []),
            "yes" if s["verified"] else "no (mDNS)",
        )
    Console(soft_wrap=False).print(table)
