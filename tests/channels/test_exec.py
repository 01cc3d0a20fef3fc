"""Exec over loopback sessions: output, status, stdin, signals, policy, cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pwd
import signal
import socket
import time
from pathlib import Path

import pytest
from channel_helpers import (
    Connect,
    MiB,
    StartServer,
    pid_alive,
    serve_kwargs,
    until,
    wait_pid_gone,
)

import ppcp
import ppcp.aio
from ppcp import ChannelError, ExecResult, PolicyDenied, SessionClosed
from ppcp.control import exec as exec_module
from ppcp.control.aio_channel import AsyncChannel
from ppcp.control.exec import cannot_execute_errno, cannot_execute_reason
from ppcp.control.router import ServerPolicy
from ppcp.transport.frames import FrameType, encode_frame

Session = ppcp.aio.AsyncSession


async def test_stdout_and_stderr_are_separate(session: Session) -> None:
    result = await session.exec("printf out; printf err >&2; printf more")
    assert result == ExecResult(b"outmore", b"err", 0, None)
    assert result.ok and result.returncode == 0


async def test_streams_arrive_in_order_as_produced(session: Session) -> None:
    proc = await session.start_exec(
        ["sh", "-c", "echo one; read x; echo two >&2; read y; echo three"]
    )
    async with proc:
        seen = []
        for expected, line in ((0, b"one\n"), (1, b"two\n"), (0, b"three\n")):
            assert await proc.read() == (expected, line)
            seen.append(line)
            if line != b"three\n":
                await proc.write_stdin(b"go\n")  # the next line is only printed now
        await proc.close_stdin()
        result = await proc.wait()
    assert result.exit_code == 0 and result.stdout == b"" and proc.exit_code == 0


@pytest.mark.parametrize("code", [0, 1, 42, 255])
async def test_exit_codes(session: Session, code: int) -> None:
    result = await session.exec(f"exit {code}")
    assert (result.exit_code, result.signal) == (code, None)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGUSR1])
async def test_killed_by_signal(session: Session, sig: int) -> None:
    result = await session.exec(f"kill -{int(sig)} $$")
    assert (result.exit_code, result.signal) == (None, int(sig))
    assert result.returncode == -int(sig)


async def test_signal_is_sent_to_the_process_group(session: Session) -> None:
    proc = await session.start_exec(["sh", "-c", "sleep 60 & echo $!; wait"])
    async with proc:
        _, line = await proc.read() or (None, b"")
        child = int(line)
        # (Not SIGINT: a non-interactive sh starts background jobs with SIGINT ignored.)
        await proc.signal(signal.SIGTERM)
        result = await proc.wait()
    await wait_pid_gone(child)  # the background child got it too
    assert result.signal == signal.SIGTERM


async def test_stdin(session: Session) -> None:
    data = os.urandom(3 * MiB + 17)
    result = await session.exec(["cat"], stdin=data)
    assert result.stdout == data and result.exit_code == 0


async def test_no_stdin_means_eof(session: Session) -> None:
    result = await session.exec(["cat"])
    assert result == ExecResult(b"", b"", 0, None)


def _deliveries(session: Session) -> list[list[str]]:
    """The event types the client's session acts on, one list per received read."""
    seen: list[list[str]] = []
    original = session._deliver

    def deliver(events: list[object]) -> None:
        seen.append([type(event).__name__ for event in events])
        original(events)  # type: ignore[arg-type]

    session._deliver = deliver  # type: ignore[method-assign]
    return seen


async def test_exec_asks_for_a_late_accept_only_beside_other_commands(
    session: Session, tmp_path: Path
) -> None:
    """Alone, ``exec`` is answered at once: the ACCEPT is handled while the
    command runs.  With other commands in flight it asks for a late accept:
    the ACCEPT leaves with the exit status, one read (one wake-up of the
    client) instead of two."""
    seen = _deliveries(session)
    asked: list[bool] = []
    open_channel = session.mux.open_channel

    def recording_open(kind: str, payload: bytes = b"") -> int:
        asked.append(json.loads(payload).get("late_accept", False))
        return open_channel(kind, payload)

    session.mux.open_channel = recording_open  # type: ignore[method-assign]
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    first = asyncio.ensure_future(session.exec(["sh", "-c", 'read x < "$0"', str(gate)]))
    await until(lambda: ["ChannelAccepted"] in seen)  # while it waits at the gate
    seen.clear()
    assert (await session.exec(["true"])).exit_code == 0  # beside the first one
    assert ["ChannelAccepted", "ChannelRequest", "ChannelClosed"] in seen
    with open(gate, "w") as opened:
        opened.write("go\n")
    assert (await first).exit_code == 0
    assert asked == [False, True]
    assert exec_module._execs_in_flight == 0
    blocker = asyncio.ensure_future(session.exec(["sleep", "30"]))
    await until(lambda: exec_module._execs_in_flight == 1)
    blocker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocker
    assert exec_module._execs_in_flight == 0  # a cancelled exec leaves the count too


async def test_late_accept_comes_with_the_first_output(session: Session) -> None:
    seen = _deliveries(session)
    proc = await session.start_exec(
        ["sh", "-c", "echo hi; sleep 30"], stdin=False, late_accept=True
    )
    async with proc:
        assert ["ChannelAccepted", "ChannelData"] in seen
        assert await proc.read() == (0, b"hi\n")
        assert proc.pid is not None and pid_alive(proc.pid)
    await wait_pid_gone(proc.pid)  # closing still stops it


async def test_late_accept_is_held_at_most_half_a_second(session: Session) -> None:
    """A silent command is accepted anyway once the hold ends, so a client
    that asked for a late accept can still stop it."""
    proc = await asyncio.wait_for(
        session.start_exec(["sleep", "30"], stdin=False, late_accept=True),
        20 * exec_module.LATE_ACCEPT_HOLD,
    )
    async with proc:
        assert proc.pid is not None and pid_alive(proc.pid)  # accepted while it runs
    await wait_pid_gone(proc.pid)  # and the close stopped it


async def test_late_accept_needs_stdin_false(session: Session) -> None:
    with pytest.raises(ChannelError, match="late_accept"):
        await session.start_exec(["cat"], late_accept=True)
    result = await session.exec(["cat"], stdin=b"with input: accepted at once")
    assert result.stdout == b"with input: accepted at once"


async def test_no_stdin_sends_no_message_for_it(session: Session) -> None:
    """Without stdin the request says so and the client sends no EOF: the
    command's stdin is at end of file from the start (ssh -n)."""
    sent: list[int] = []
    original = session.mux.send_eof

    def send_eof(channel_id: int) -> None:
        sent.append(channel_id)
        original(channel_id)

    session.mux.send_eof = send_eof  # type: ignore[method-assign]
    proc = await session.start_exec(["cat"], stdin=False)
    async with proc:
        assert await proc.read() is None
        assert (await proc.wait()).exit_code == 0
    assert (await session.exec(["cat"])).exit_code == 0
    assert sent == []


async def test_back_to_back_commands_take_one_send_each(session: Session) -> None:
    """The CLOSE answering a finished command's CLOSE rides with the next
    command's CHANNEL_OPEN: one send and one server wake-up per command, not two."""
    transport = session._transport
    assert transport is not None
    writes: list[int] = []
    original = transport.write

    def write(data: bytes | bytearray | memoryview) -> None:
        writes.append(len(data))
        original(data)

    transport.write = write  # type: ignore[method-assign]
    for _ in range(5):
        assert (await session.exec(["true"])).exit_code == 0
    assert len(writes) == 5
    # With no command after it, the last CLOSE still goes out on its own.
    await until(lambda: len(writes) == 6)


async def test_a_finished_command_ends_with_its_status_and_close_only(session: Session) -> None:
    """The server reports a command with exit-status + CLOSE: the CLOSE ends the
    output (RFC 15.5 rule 3), so no CHANNEL_EOF record precedes them."""
    from ppcp.control import channels as mux_events

    seen: list[str] = []
    original = session._dispatch

    def record(event: mux_events.Event) -> None:
        if hasattr(event, "channel_id"):
            seen.append(type(event).__name__)
        original(event)

    session._dispatch = record  # type: ignore[method-assign]
    result = await session.exec(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.stdout, result.stderr, result.exit_code) == (b"out\n", b"err\n", 3)
    assert "ChannelEOF" not in seen
    assert seen[0] == "ChannelAccepted" and seen[-2:] == ["ChannelRequest", "ChannelClosed"]


async def test_a_status_after_an_eof_is_still_read(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that does send CHANNEL_EOF first (as the RFC allows) is understood."""
    original = AsyncChannel.finish

    async def finish_with_eof(self: AsyncChannel, name: str, payload: bytes = b"") -> None:
        self._mux.send_eof(self.channel_id)
        await original(self, name, payload)

    monkeypatch.setattr(AsyncChannel, "finish", finish_with_eof)
    result = await session.exec(["sh", "-c", "echo out; exit 4"])
    assert (result.stdout, result.exit_code) == (b"out\n", 4)


async def test_stdin_written_after_saying_none_is_not_read(session: Session) -> None:
    proc = await session.start_exec(["sh", "-c", "cat; echo done"], stdin=False)
    async with proc:
        await proc.write_stdin(b"ignored")
        await proc.close_stdin()
        result = await proc.wait()
    assert result.exit_code == 0
    assert (await session.exec(["echo", "still fine"])).stdout == b"still fine\n"


async def test_stdin_bigger_than_what_the_command_reads(session: Session) -> None:
    result = await session.exec(["head", "-c", "10"], stdin=b"x" * (8 * MiB))
    assert result.stdout == b"x" * 10 and result.exit_code == 0


async def test_streaming_stdin(session: Session) -> None:
    proc = await session.start_exec(["cat"])
    async with proc:
        for i in range(5):
            await proc.write_stdin(b"line %d\n" % i)
            assert await proc.read() == (0, b"line %d\n" % i)
        await proc.close_stdin()
        assert await proc.read() is None
        assert (await proc.wait()).exit_code == 0


async def test_large_output(session: Session) -> None:
    result = await session.exec(["head", "-c", str(24 * MiB), "/dev/zero"])
    assert len(result.stdout) == 24 * MiB and result.exit_code == 0


async def test_timeout(session: Session) -> None:
    start = time.monotonic()
    result = await session.exec(["sleep", "30"], timeout=0.3)
    assert result.timed_out and result.signal == signal.SIGTERM
    assert time.monotonic() - start < 10


async def test_timeout_covers_a_background_job_holding_the_output(session: Session) -> None:
    """The shell exits at once; its background job keeps stdout open past the limit."""
    start = time.monotonic()
    result = await session.exec("sleep 30 & echo started", timeout=0.3)
    assert result.timed_out and result.exit_code == 0 and result.stdout == b"started\n"
    assert time.monotonic() - start < 10


async def test_timeout_escalates_to_sigkill(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exec_module, "KILL_GRACE", 0.3)
    result = await session.exec("trap '' TERM; sleep 30; echo survived", timeout=0.2)
    assert result.timed_out and result.signal == signal.SIGKILL
    assert b"survived" not in result.stdout


async def test_server_caps_the_timeout(serve: StartServer, connect: Connect) -> None:
    session = await connect(await serve(ServerPolicy(max_exec_seconds=0.2)))
    result = await session.exec(["sleep", "30"], timeout=60)
    assert result.timed_out


async def test_cancel(session: Session) -> None:
    proc = await session.start_exec(["sleep", "30"])
    async with proc:
        await proc.cancel()
        result = await proc.wait()
    assert result.signal == signal.SIGTERM and not result.timed_out
    assert proc.signal_number == signal.SIGTERM and proc.exit_code is None


async def test_cwd_and_env(session: Session, tmp_path: Path) -> None:
    result = await session.exec(
        'pwd; printf %s "$PPCP_TEST"', cwd=str(tmp_path), env={"PPCP_TEST": "a b=c"}
    )
    assert result.stdout == f"{tmp_path}\n".encode() + b"a b=c"


async def test_default_cwd_is_home(session: Session) -> None:
    result = await session.exec(["pwd"])
    assert result.stdout.decode().strip() == os.path.realpath(os.path.expanduser("~"))


async def test_a_tilde_in_cwd_is_the_servers_home(
    session: Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As typed in a quoted --cwd '~/src': the local shell left it alone.
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "src").mkdir()
    assert (await session.exec(["pwd"], cwd="~")).stdout == f"{tmp_path}\n".encode()
    assert (await session.exec(["pwd"], cwd="~/src")).stdout == f"{tmp_path}/src\n".encode()
    root_home = pwd.getpwuid(0).pw_dir
    assert (await session.exec(["pwd"], cwd="~root")).stdout == f"{root_home}\n".encode()
    # Only a leading tilde is special: elsewhere it is part of a name.
    (tmp_path / "a~b").mkdir()
    assert (await session.exec(["pwd"], cwd="a~b")).stdout == f"{tmp_path}/a~b\n".encode()


async def test_without_a_home_directory_commands_run_in_the_servers_own(
    session: Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A system account's home may not exist: the default (unchecked, to save a
    # stat per command) falls back when the spawn cannot enter it.
    monkeypatch.setenv("HOME", str(tmp_path / "gone"))
    here = os.getcwd().encode()
    assert (await session.exec(["pwd"])).stdout == here + b"\n"
    assert (await session.exec(["pwd"], cwd="~")).stdout == here + b"\n"
    # Not where a directory was asked for: that is the client's mistake to hear about.
    with pytest.raises(ChannelError, match="working directory"):
        await session.exec(["pwd"], cwd="~/no-such-dir-ppcp")
    with pytest.raises(ChannelError, match="cannot execute 'no-such-program-ppcp': ENOENT"):
        await session.exec(["no-such-program-ppcp"])


async def test_a_tilde_naming_no_user_is_refused(session: Session) -> None:
    with pytest.raises(ChannelError, match="no user 'no-such-user-ppcp'"):
        await session.exec(["true"], cwd="~no-such-user-ppcp/x")


async def test_missing_cwd_is_a_channel_error(session: Session, tmp_path: Path) -> None:
    with pytest.raises(ChannelError, match="working directory"):
        await session.exec(["true"], cwd=str(tmp_path / "nope"))


async def test_too_many_arguments_says_how_many(session: Session) -> None:
    argv = ["true", *["x"] * exec_module.MAX_ARGS]
    with pytest.raises(ChannelError, match=f"1..{exec_module.MAX_ARGS} strings, not {len(argv)}"):
        await session.exec(argv)
    assert (await session.exec(["true", *["x"] * 4095])).exit_code == 0


async def test_a_failing_service_is_logged_with_its_channel(
    session: Session, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(channel: AsyncChannel, policy: ServerPolicy) -> None:
        raise RuntimeError("a bug in a service")

    monkeypatch.setattr(exec_module, "serve_exec", broken)
    with (
        caplog.at_level(logging.ERROR, logger="ppcp"),
        pytest.raises(ChannelError, match="internal error: RuntimeError"),
    ):
        await session.exec(["true"])
    [record] = [r for r in caplog.records if r.name == "ppcp.session"]
    assert "internal error in the 'exec' channel" in record.getMessage()
    assert record.exc_info is not None and "a bug in a service" in str(record.exc_info[1])
    # Logged once, where it happened: nothing is left for asyncio to report at collection.
    assert not [r for r in caplog.records if r.name == "asyncio"]
    monkeypatch.undo()
    assert (await session.exec(["true"])).exit_code == 0  # the session is fine


async def test_command_not_found(session: Session) -> None:
    # A string goes through the shell: like ssh, exit status 127 and the shell's message.
    result = await session.exec("no-such-command-ppcp")
    assert result.exit_code == 127 and b"not found" in result.stderr
    # An argv is exec'd directly: the channel is refused with the OS error.
    with pytest.raises(ChannelError, match="cannot execute 'no-such-command-ppcp'") as info:
        await session.exec(["no-such-command-ppcp"])
    assert type(info.value) is ChannelError
    # The errno symbol, not the (localisable) text, is what a client decides on.
    assert cannot_execute_errno(info.value.message) == "ENOENT"
    assert (await session.exec(["true"])).exit_code == 0  # the session is fine


async def test_program_not_executable(session: Session, tmp_path: Path) -> None:
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    with pytest.raises(ChannelError, match=r"cannot execute .*not-executable") as info:
        await session.exec([str(script)])
    assert cannot_execute_errno(info.value.message) == "EACCES"


async def test_script_without_interpreter_line_runs_as_execvp_runs_it(
    session: Session, tmp_path: Path
) -> None:
    """No "#!": execve says ENOEXEC, and execvp (so ssh, and the RFC) runs /bin/sh FILE ARGS."""
    script = tmp_path / "no-shebang"
    script.write_text('printf "%s|" "$0" "$@"\nexit 3\n')
    script.chmod(0o755)
    relative = await session.exec(["./no-shebang", "a b", "c"], cwd=str(tmp_path))
    assert (relative.exit_code, relative.stdout) == (3, b"./no-shebang|a b|c|"), relative
    absolute = await session.exec([str(script)])
    assert absolute.stdout == f"{script}|".encode()
    # Found on PATH: the shell is given the path that was executed, as glibc does.
    (tmp_path / "empty").mkdir()
    path = f"{tmp_path / 'empty'}:{tmp_path}"
    found = await session.exec(["no-shebang", "x"], env={"PATH": path})
    assert found.stdout == f"{script}|x|".encode(), found


async def test_binary_for_another_machine_is_not_run_by_the_shell(
    session: Session, tmp_path: Path
) -> None:
    program = tmp_path / "foreign"
    program.write_bytes(b"\x7fXYZ\x00\x01\x02; touch ran\n")
    program.chmod(0o755)
    with pytest.raises(ChannelError, match=r"cannot execute .*foreign") as info:
        await session.exec(["./foreign"], cwd=str(tmp_path))
    assert cannot_execute_errno(info.value.message) == "ENOEXEC"
    assert not (tmp_path / "ran").exists()


async def test_bytes_that_are_not_utf8_travel_as_surrogate_escapes(
    session: Session, tmp_path: Path
) -> None:
    """An argument, cwd or env value in another encoding reaches the command byte for
    byte: the byte 0xE9 travels as U+DCE9 (RFC, exec)."""
    (tmp_path / "caf\udce9").mkdir()
    result = await session.exec(
        ["sh", "-c", 'printf "%s|" "$1" "$V" "$(basename "$PWD")"', "sh", "caf\udce9"],
        cwd=str(tmp_path / "caf\udce9"),
        env={"V": "\udcff\udc80"},
    )
    assert result.stdout == b"caf\xe9|\xff\x80|caf\xe9|", result


@pytest.mark.parametrize(
    "fields",
    [
        {"argv": ["echo", "\ud800"]},
        {"command": "echo \udc41"},  # an escape for a byte that is UTF-8 anyway
        {"argv": ["true"], "cwd": "\udfff"},
        {"argv": ["true"], "env": {"X": "\ud800"}},
        {"argv": ["true"], "env": {"\ud800": "x"}},
    ],
)
async def test_a_lone_surrogate_that_stands_for_no_byte_is_refused(
    session: Session, fields: dict[str, object]
) -> None:
    # Sent raw: the client refuses it too (below).  It failed the spawn with an
    # internal error (UnicodeEncodeError) and a traceback in the server's log.
    with pytest.raises(ChannelError, match="lone surrogate that stands for no byte"):
        await session.open_channel("exec", json.dumps(fields).encode())
    with pytest.raises(ChannelError, match="lone surrogate"):
        await session.exec(["echo", "\ud800"])
    with pytest.raises(ChannelError, match="lone surrogate"):
        await session.open_channel("shell", json.dumps({"command": "echo \ud800"}).encode())
    assert (await session.exec(["true"])).exit_code == 0  # the session is fine


async def test_a_missing_interpreter_is_named(session: Session, tmp_path: Path) -> None:
    """A script whose "#!" interpreter does not exist fails with ENOENT, though the
    script does: the reason names the interpreter (CRLF line ends: '/bin/sh\\r')."""
    crlf = tmp_path / "crlf"
    crlf.write_bytes(b"#!/bin/sh\r\necho ran\r\n")
    crlf.chmod(0o755)
    with pytest.raises(ChannelError) as info:
        await session.exec([str(crlf)])
    assert "(the interpreter '/bin/sh\\r' on its #! line)" in info.value.message
    assert cannot_execute_errno(info.value.message) == "ENOENT"  # still 127 for the CLI
    odd = tmp_path / "odd"
    odd.write_text("#! \t/no/such: EACCES: x -w\necho ran\n")  # read up to a blank
    odd.chmod(0o755)
    with pytest.raises(ChannelError) as info:
        await session.exec(["odd"], env={"PATH": str(tmp_path)})
    assert "(the interpreter '/no/such:' on its #! line)" in info.value.message
    assert cannot_execute_errno(info.value.message) == "ENOENT"
    with pytest.raises(ChannelError) as info:
        await session.exec([str(tmp_path / "absent")])  # no file: nothing to add
    assert info.value.message.endswith("ENOENT: No such file or directory")


def test_cannot_execute_reason_round_trip() -> None:
    import errno

    exc = OSError(errno.ENOENT, "No such file or directory")
    # A program name that itself looks like a reason must not confuse the parser.
    for program in ("ls", "odd: EACCES: name", "it's"):
        reason = cannot_execute_reason(program, exc)
        assert reason.endswith(": ENOENT: No such file or directory")
        assert cannot_execute_errno("peer reported: " + reason) == "ENOENT"
    assert cannot_execute_errno("cannot use working directory '/x': No such file") is None
    assert cannot_execute_errno("exec is disabled on this server") is None
    # An error without a number carries no symbol, and then no client guesses one.
    assert cannot_execute_errno(cannot_execute_reason("x", OSError("odd"))) is None


async def test_exec_disabled(serve: StartServer, connect: Connect) -> None:
    session = await connect(await serve(ServerPolicy(allow_exec=False)))
    with pytest.raises(PolicyDenied, match="disabled"):
        await session.exec(["true"])
    with pytest.raises(PolicyDenied):
        await session.open_shell()
    chan = await session.open_messages()  # the session itself lives on
    await chan.close()


async def test_allowlist(serve: StartServer, connect: Connect) -> None:
    session = await connect(await serve(ServerPolicy(exec_allowlist=("echo", "true"))))
    assert (await session.exec(["echo", "hi"])).stdout == b"hi\n"
    # Plain words are run without a shell, so $HOME would not be expanded anyway.
    assert (await session.exec("echo plain words")).stdout == b"plain words\n"
    with pytest.raises(PolicyDenied, match="allow-list"):
        await session.exec(["ls"])
    with pytest.raises(PolicyDenied, match="shell syntax"):
        await session.exec("echo hi; ls")
    with pytest.raises(PolicyDenied, match="shell syntax"):
        await session.exec("echo $(ls)")
    with pytest.raises(PolicyDenied, match="environment"):
        await session.exec(["echo"], env={"LD_PRELOAD": "/tmp/x.so"})
    with pytest.raises(PolicyDenied):
        await session.exec(["/bin/ls"])
    with pytest.raises(PolicyDenied):
        await session.open_shell()
    assert (await session.exec(["true"])).exit_code == 0


async def test_malformed_requests_are_refused(session: Session) -> None:
    for payload in (
        b"not json",
        b"[]",
        b'{"argv": []}',
        b'{"argv": "ls"}',
        b'{"command": "x", "argv": ["y"]}',
        b'{"argv": ["a\\u0000b"]}',
        b'{"command": "true", "timeout": -1}',
        b'{"command": "true", "bogus": 1}',
        b'{"command": "true", "stdin": 0}',
        b'{"command": "true", "stdin": false, "late_accept": 1}',
        # A late accept would leave the client unable to send the input the
        # command may be waiting for: refused, not silently ignored.
        b'{"command": "true", "late_accept": true}',
    ):
        with pytest.raises(ChannelError):
            await session.open_channel("exec", payload)
    assert (await session.exec(["true"])).exit_code == 0


async def test_bad_signal_request_is_ignored(session: Session) -> None:
    proc = await session.start_exec(["cat"])
    async with proc:
        await proc.signal(0)
        await proc.channel.send_json("signal", {"signal": "KILL"})
        await proc.write_stdin(b"alive\n")
        assert await proc.read() == (0, b"alive\n")
        await proc.close_stdin()
        assert (await proc.wait()).exit_code == 0


async def test_children_die_with_the_session(serve: StartServer, connect: Connect) -> None:
    server = await serve()
    session = await connect(server)
    proc = await session.start_exec(["sh", "-c", "sleep 300 & echo $!; wait"])
    item = await proc.read()
    assert item is not None
    child = int(item[1])
    assert proc.pid is not None
    session.abort()  # the connection drops without a close exchange
    await wait_pid_gone(proc.pid)
    await wait_pid_gone(child)


async def test_a_dropped_session_lets_the_command_clean_up_first(
    serve: StartServer, connect: Connect, tmp_path: Path
) -> None:
    """SIGTERM, then SIGKILL after the grace: a trap can remove what the command made."""
    server = await serve()
    session = await connect(server)
    marker = tmp_path / "cleaned"
    script = f"trap 'touch {marker}; exit 3' TERM; echo ready; while :; do sleep 0.05; done"
    proc = await session.start_exec(["sh", "-c", script])
    assert await proc.read() == (0, b"ready\n")
    assert proc.pid is not None
    session.abort()
    await wait_pid_gone(proc.pid)
    assert marker.exists()


async def test_a_command_ignoring_sigterm_is_still_killed(
    serve: StartServer, connect: Connect
) -> None:
    server = await serve()
    session = await connect(server)
    proc = await session.start_exec(["sh", "-c", "trap '' TERM; echo ready; sleep 300 & wait"])
    assert await proc.read() == (0, b"ready\n")
    assert proc.pid is not None
    started = time.monotonic()
    session.abort()
    await wait_pid_gone(proc.pid)
    assert time.monotonic() - started >= exec_module.KILL_GRACE * 0.9  # it had its grace


async def test_children_die_when_the_session_closes(session: Session) -> None:
    proc = await session.start_exec(["sleep", "300"])
    assert proc.pid is not None
    await session.close()
    await wait_pid_gone(proc.pid)


async def test_children_die_when_the_channel_closes(session: Session) -> None:
    proc = await session.start_exec(["sh", "-c", "sleep 300 & echo $!; wait"])
    item = await proc.read()
    assert item is not None and proc.pid is not None
    await proc.close()
    await wait_pid_gone(proc.pid)
    await wait_pid_gone(int(item[1]))
    assert (await session.exec(["true"])).exit_code == 0


async def test_what_a_finished_command_left_running_is_not_killed(
    serve: StartServer, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command that ended normally keeps its background jobs (as over ssh), even when
    the session ends the moment its exit status is out (``ppcp exec`` closes at once)."""
    finish = AsyncChannel.finish

    async def finish_then_session_ends(self: AsyncChannel, name: str, payload: bytes = b"") -> None:
        await finish(self, name, payload)
        self.session._terminate(SessionClosed("the client went away"))

    monkeypatch.setattr(AsyncChannel, "finish", finish_then_session_ends)
    server = await serve()
    session = await connect(server)
    served = next(iter(server.sessions))
    result = await session.exec("sleep 300 >/dev/null 2>&1 </dev/null & echo $!")
    background = int(result.stdout)
    try:
        assert result.exit_code == 0
        await until(lambda: not served._tasks)  # the server is done with the command
        assert pid_alive(background)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(background, signal.SIGKILL)


async def test_cancelling_exec_kills_the_command(session: Session) -> None:
    task = asyncio.ensure_future(session.exec(["sleep", "300"]))
    await until(lambda: any(ch.kind == "exec" for ch in session.channels.values()))
    channel = next(ch for ch in session.channels.values() if ch.kind == "exec")
    pid = json.loads(await channel.wait_accepted())["pid"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_pid_gone(pid)


async def test_fast_producer_is_bounded_by_the_window(serve: StartServer, connect: Connect) -> None:
    """`yes` with a client that does not read: the server buffers about nothing."""
    server = await serve()
    session = await connect(server)
    proc = await session.start_exec(["yes"])
    async with proc:
        served = next(iter(server.sessions))
        channel_id = proc.channel.channel_id
        window = session.mux.config.window

        def buffered() -> int:
            return sum(len(d) for _, d in proc.channel._data)

        await until(lambda: buffered() >= window)
        assert buffered() == window  # exactly one window arrived, nothing more
        assert served.mux.channels[channel_id].send_window == 0
        transport = served._transport
        assert transport is not None and transport.get_write_buffer_size() < MiB
        # Reading one chunk reopens the window only by that chunk's size.
        await proc.read()
        assert served.mux.channels[channel_id].send_window <= window


async def test_nothing_runs_before_authentication(serve: StartServer, tmp_path: Path) -> None:
    """A CHANNEL_OPEN sent instead of a handshake is refused; no command runs."""
    server = await serve()
    marker = tmp_path / "ran"
    body = (
        (1).to_bytes(4, "big")
        + (1 << 20).to_bytes(4, "big")
        + (1 << 20).to_bytes(4, "big")
        + b"\x04exec"
        + b'{"command": "touch %s"}' % str(marker).encode()
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(encode_frame(FrameType.CHANNEL_OPEN, body))
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)  # the server answers and hangs up
    writer.close()
    assert data[:1] == bytes((FrameType.ALERT,))
    assert not marker.exists()


def test_blocking_exec(blocking_session: ppcp.Session) -> None:
    result = blocking_session.exec("echo hi; echo err >&2; exit 7")
    assert result == ExecResult(b"hi\n", b"err\n", 7, None)
    with blocking_session.start_exec(["cat"]) as proc:
        proc.write_stdin(b"abc")
        proc.close_stdin()
        assert list(proc) == [(0, b"abc")]
        assert proc.wait().exit_code == 0
    with blocking_session.start_exec(["sleep", "30"]) as proc:
        proc.signal(signal.SIGTERM)
        assert proc.wait(timeout=10).signal == signal.SIGTERM
        assert proc.signal_number == signal.SIGTERM
    with blocking_session.start_exec(["sleep", "30"]) as proc:
        proc.cancel()
        assert proc.wait(timeout=10).signal == signal.SIGTERM
    with pytest.raises(ChannelError):
        blocking_session.exec(["no-such-command-ppcp"])


def test_blocking_exec_disabled(blocking_server: object) -> None:
    server = blocking_server(ServerPolicy(allow_exec=False))  # type: ignore[operator]
    with ppcp.connect("127.0.0.1", server.port, _psk()) as session, pytest.raises(PolicyDenied):
        session.exec("true")


def _psk() -> str:
    from channel_helpers import PSK_TEXT

    return PSK_TEXT


def test_serve_kwargs_keep_discovery_off() -> None:
    import inspect

    if "discovery" in inspect.signature(ppcp.aio.serve).parameters:
        assert serve_kwargs() == {"discovery": False}
    assert socket.AF_INET  # loopback only: every server here binds 127.0.0.1
