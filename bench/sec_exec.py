"""Sections 2 and 3: cold and warm ``exec true``.

cold (library): connect + handshake + authenticate + ``exec("true")`` until the
exit status is in, client and server in this process (one event loop), PPCP
vs asyncssh client -> asyncssh server.  Closing is not timed.
cold (CLI): ``ppcp exec --host 127.0.0.1:N NAME -- true`` vs ``ssh host true``,
wall time of the whole process (interpreter start included).
warm: ``exec("true")`` on an already open session vs asyncssh ``conn.run``
on an open connection, and vs ``ssh`` through an open ControlMaster (that one
includes the ssh client's process start, which the library figures do not).

Every command runs a real ``true`` process through the server user's shell
on all sides.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from bench.common import BIN, PYTHON, Deadline, Row, free_udp_port, run_child, summarize
from bench.context import Context, have_cli, have_session_api
from bench.exec_timeline import describe, exec_timelines, hooks_available
from bench.sshd import SshDaemon
from bench.worker import exit_status


async def _ppcp_cold(port: int, psk: str) -> float:
    import ppcp.aio
    from bench.peers import ppcp_client_config

    started = time.perf_counter()
    session = await ppcp.aio.connect("127.0.0.1", port, psk, config=ppcp_client_config())
    result = await session.exec("true")
    elapsed = time.perf_counter() - started
    await session.close()
    if exit_status(result) != 0:
        raise RuntimeError(f"exec true failed: {result!r}")
    return elapsed


async def _floor_cold(port: int, public: bytes) -> float:
    from bench.exec_floor import floor_exec

    started = time.perf_counter()
    status = await floor_exec(port, public)
    elapsed = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(f"floor exec true exited {status}")
    return elapsed


async def _asyncssh_cold(port: int, keys: Any) -> float:
    from bench.peers import asyncssh_connect

    started = time.perf_counter()
    conn = await asyncssh_connect(port, keys)
    result = await conn.run("true", check=True)
    elapsed = time.perf_counter() - started
    conn.close()
    await conn.wait_closed()
    del result
    return elapsed


async def _in_process(
    ctx: Context,
    root: Path,
    cold: bool,
    warm: bool,
    timelines: dict[str, Any] | None = None,
) -> dict[str, list[float]]:
    from bench.peers import ppcp_client_config, server_port, start_asyncssh, start_ppcp

    s = ctx.settings
    out: dict[str, list[float]] = {}
    has_exec = have_session_api("exec")
    servers: list[Any] = []
    try:
        ppcp_port = asyncssh_port = floor_port = 0
        if cold:
            from bench.exec_floor import client_key, start_floor_server

            floor_server = await start_floor_server()
            servers.append(floor_server)
            floor_port = server_port(floor_server)
            floor_key = client_key()
        if has_exec:
            server = await start_ppcp(root, ctx.psk)
            servers.append(server)
            ppcp_port = server_port(server)
        if ctx.have.get("asyncssh"):
            acceptor = await start_asyncssh(root, ctx.ssh_keys)
            servers.append(acceptor)
            asyncssh_port = server_port(acceptor)
        deadline = Deadline(s.section_budget)
        if cold:
            # Warm-up: first-use imports and caches on both sides.
            if ppcp_port:
                await _ppcp_cold(ppcp_port, ctx.psk)
            if asyncssh_port:
                await _asyncssh_cold(asyncssh_port, ctx.ssh_keys)
            await _floor_cold(floor_port, floor_key)
            for _ in range(s.cold_runs):  # interleaved, so drift hits all alike
                if deadline.expired:
                    break
                if ppcp_port:
                    out.setdefault("ppcp-cold", []).append(await _ppcp_cold(ppcp_port, ctx.psk))
                if asyncssh_port:
                    out.setdefault("asyncssh-cold", []).append(
                        await _asyncssh_cold(asyncssh_port, ctx.ssh_keys)
                    )
                out.setdefault("floor-cold", []).append(await _floor_cold(floor_port, floor_key))
        if warm:
            import ppcp.aio
            from bench.peers import asyncssh_connect

            session = conn = None
            try:
                if ppcp_port:
                    session = await ppcp.aio.connect(
                        "127.0.0.1", ppcp_port, ctx.psk, config=ppcp_client_config()
                    )
                    await session.exec("true")
                if asyncssh_port:
                    conn = await asyncssh_connect(asyncssh_port, ctx.ssh_keys)
                    await conn.run("true", check=True)
                for _ in range(s.warm_runs):
                    if deadline.expired:
                        break
                    if session is not None:
                        t = time.perf_counter()
                        result = await session.exec("true")
                        out.setdefault("ppcp-warm", []).append(time.perf_counter() - t)
                        if exit_status(result) != 0:
                            raise RuntimeError(f"exec true failed: {result!r}")
                    if conn is not None:
                        t = time.perf_counter()
                        await conn.run("true", check=True)
                        out.setdefault("asyncssh-warm", []).append(time.perf_counter() - t)
                    # Interleaved too, so that drift hits the floor as it hits the rest.
                    out.setdefault("spawn-floor", []).append(await _spawn_once())
                if timelines is not None and session is not None and hooks_available():
                    # After the timed runs: the hooks cost those nothing.
                    live = session
                    runs = max(10, s.warm_runs // 4)
                    timelines.update(
                        await exec_timelines(
                            {"ppcp": lambda: live.exec("true"), "floor": _spawn_once}, runs
                        )
                    )
            finally:
                if session is not None:
                    await session.close()
                if conn is not None:
                    conn.close()
                    await conn.wait_closed()
    finally:
        for server in servers:
            if hasattr(server, "aclose"):
                await server.aclose()
            else:
                server.close()
                await server.wait_closed()
    return out


DEPENDENCY_IMPORTS = (
    "import asyncio, click, cryptography.hazmat.primitives.ciphers.aead, "
    "cryptography.hazmat.primitives.asymmetric.ec, cryptography.hazmat.primitives.kdf.hkdf"
)


def _cli_runs(ctx: Context, cmd: list[str], runs: int, what: str) -> list[float]:
    return _cli_rounds(ctx, {what: cmd}, runs)[what]


def _cli_rounds(ctx: Context, commands: dict[str, list[str]], runs: int) -> dict[str, list[float]]:
    """Each command once per round, in turn, for ``runs`` rounds.

    Interleaved, not one block per command: this host's speed drifts by 10-30 %
    within a minute, and a block measured in a slow spell would move the ratio
    by as much.  Compared in the same rounds, both sides see the same host.
    """
    deadline = Deadline(ctx.settings.section_budget)
    times: dict[str, list[float]] = {what: [] for what in commands}
    for cmd in commands.values():
        run_child(cmd, 60, env=ctx.env())  # warm the page cache
    for _ in range(runs):
        if deadline.expired:
            break
        for what, cmd in commands.items():
            r = run_child(cmd, 60, env=ctx.env())
            if r.returncode != 0:
                err = r.stderr.decode(errors="replace")
                raise RuntimeError(f"{what} exited {r.returncode}: {err}")
            times[what].append(r.seconds)
    return times


def run_cold(ctx: Context, ssh: SshDaemon | None) -> None:
    s = ctx.settings
    section = "cold"
    root = ctx.work / "exec-root"
    root.mkdir(exist_ok=True)
    if not have_session_api("exec"):
        ctx.report.skip(section, "session.exec not implemented yet")
    if not ctx.have.get("asyncssh"):
        ctx.report.skip(section, "asyncssh peer: not installed")
    lib = asyncio.run(_in_process(ctx, root, cold=True, warm=False))
    ctx.report.add(
        Row(
            section,
            "cold-lib",
            "connect+handshake+exec true (library, in-process)",
            "s",
            _summ(lib.get("ppcp-cold")),
            "asyncssh",
            _summ(lib.get("asyncssh-cold")),
            max_ratio=0.3,
            target_text="ratio <= 0.3",
        )
    )
    ctx.report.add(
        Row(
            section,
            "cold-floor",
            "floor: the same steps with no protocol (bench/exec_floor.py)",
            "s",
            _summ(lib.get("floor-cold")),
            "asyncssh",
            _summ(lib.get("asyncssh-cold")),
            note="2 round trips + handshake crypto per side + $SHELL -c true; "
            "no implementation can go below this ratio",
        )
    )
    # CLI: whole process, interpreter start included.  The floors, PPCP and
    # ssh are measured in the same rounds (see _cli_rounds).
    commands = {
        "python": [PYTHON, "-c", "import ppcp.cli"],
        # What any Python client built on the same libraries pays before its
        # first byte: the rest of `ppcp exec`'s time is PPCP's own imports and work.
        "libraries": [PYTHON, "-c", DEPENDENCY_IMPORTS],
    }
    if ssh is not None:
        commands["ssh true"] = [*ssh.ssh_cmd(), "true"]
    else:
        ctx.report.skip(section, "`ssh host true`: no sshd in this run")
    proc = None
    if have_cli("exec", "serve") and have_session_api("exec"):
        # By name: the server answers PINGs on a loopback UDP port, the client
        # finds it with one unicast PING there (no broadcast leaves loopback).
        udp = free_udp_port()
        proc, port = ctx.start_cli_server(root, discovery_port=udp)
        by_name = [str(BIN / "ppcp"), "exec", "--unicast", "127.0.0.1", "--discovery-port"]
        commands["ppcp exec by name"] = [*by_name, str(udp), "bench", "--", "true"]
        commands["ppcp exec --host"] = [
            *[str(BIN / "ppcp"), "exec", "--host", f"127.0.0.1:{port}"],
            *["bench", "--", "true"],
        ]
    else:
        ctx.report.skip(section, "`ppcp exec` CLI not implemented yet")
    try:
        times = _cli_rounds(ctx, commands, s.cli_runs)
    finally:
        if proc is not None:
            ctx.procs.stop(proc)
    floor, libraries = times["python"], times["libraries"]
    ctx.report.note(
        section,
        f"interpreter floor `python -c 'import ppcp.cli'`: median {_ms(floor)} ms",
    )
    ctx.report.raw.setdefault(section, {})["python_import_floor"] = summarize(floor)
    ctx.report.note(
        section,
        f"dependency floor `python -c 'import asyncio, click, cryptography (AES-GCM, EC, "
        f"HKDF)'`: median {_ms(libraries)} ms",
    )
    ctx.report.raw[section]["python_dependency_floor"] = summarize(libraries)
    by_name_times = times.get("ppcp exec by name")
    by_address = times.get("ppcp exec --host")
    ssh_times = times.get("ssh true")
    ctx.report.add(
        Row(
            section,
            "cold-cli",
            "`ppcp exec NAME -- true` (CLI, process start and discovery by name included)",
            "s",
            _summ(by_name_times),
            "ssh host true",
            _summ(ssh_times),
            max_ratio=0.5,
            target_text="ratio <= 0.5",
            note="discovery: one unicast PING to 127.0.0.1",
        )
    )
    ctx.report.add(
        Row(
            section,
            "cold-cli-host",
            "`ppcp exec --host ADDR NAME -- true` (CLI, no discovery)",
            "s",
            _summ(by_address),
            "ssh host true",
            _summ(ssh_times),
        )
    )


async def _spawn_once() -> float:
    """``$SHELL -c true`` with three pipes + wait, locally: what any exec must pay.

    Started the way the PPCP server starts commands (``Child``: no thread,
    no asyncio transports), the cheapest way asyncio offers.
    """
    from ppcp.control.child import STDERR, STDOUT, Child
    from ppcp.control.exec import user_shell

    t = time.perf_counter()
    child = Child.spawn([user_shell(), "-c", "true"])
    try:
        child.close_stdin()
        await asyncio.gather(child.read(STDOUT, 1 << 16), child.read(STDERR, 1 << 16))
        await child.wait()
    finally:
        child.close()
    return time.perf_counter() - t


def run_warm(ctx: Context, ssh: SshDaemon | None) -> None:
    s = ctx.settings
    section = "warm"
    root = ctx.work / "exec-root"
    root.mkdir(exist_ok=True)
    if not have_session_api("exec"):
        ctx.report.skip(section, "session.exec not implemented yet")
    timelines: dict[str, Any] = {}
    lib = asyncio.run(_in_process(ctx, root, cold=False, warm=True, timelines=timelines))
    if timelines:
        ctx.report.raw.setdefault(section, {})["timeline"] = timelines
        ctx.report.note(
            section,
            "where a warm exec's time goes, median ms (bench/exec_timeline.py): "
            f"PPCP {describe(timelines['ppcp'])}; floor {describe(timelines['floor'])}",
        )
    floor = lib.get("spawn-floor") or []
    if floor:
        ctx.report.raw.setdefault(section, {})["spawn_floor"] = summarize(floor)
        ctx.report.note(
            section,
            f"local spawn floor (`$SHELL -c true` with pipes + wait, no protocol): "
            f"median {_ms(floor)} ms; both library figures include it",
        )
    ppcp_warm = _summ(lib.get("ppcp-warm"))
    ctx.report.add(
        Row(
            section,
            "warm-lib",
            "exec true on an open session (library)",
            "s",
            ppcp_warm,
            "asyncssh conn.run",
            _summ(lib.get("asyncssh-warm")),
            max_ratio=0.6,
            target_text="ratio <= 0.6",
        )
    )
    ctx.report.add(
        Row(
            section,
            "warm-floor",
            "floor: `$SHELL -c true` + wait, no protocol",
            "s",
            _summ(floor),
            "asyncssh conn.run",
            _summ(lib.get("asyncssh-warm")),
            note="no implementation can go below this ratio",
        )
    )
    if ssh is not None:
        prefix = ssh.start_master()
        try:
            cm = _cli_runs(ctx, [*prefix, "true"], max(s.cli_runs, 10), "ssh -S")
        finally:
            ssh.stop_master()
        ctx.report.add(
            Row(
                section,
                "warm-lib-vs-controlmaster",
                "exec true on an open session (library)",
                "s",
                ppcp_warm,
                "ssh via ControlMaster",
                _summ(cm),
                note="the ssh figure includes starting the ssh client process",
            )
        )
    else:
        ctx.report.skip(section, "ssh ControlMaster: no sshd in this run")


def _summ(samples: list[float] | None) -> dict[str, Any] | None:
    return summarize(samples) if samples else None


def _ms(samples: list[float]) -> str:
    s = summarize(samples)
    return f"{s['median'] * 1000:.1f}" if s["median"] is not None else "?"
