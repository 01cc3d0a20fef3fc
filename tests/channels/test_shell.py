"""Interactive shells: a PTY on the server, sizes, resize, exit codes, and the
blocking ``session.shell()`` attached to a real terminal."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import struct
import sys
import termios
import textwrap
from pathlib import Path

import pytest
from channel_helpers import PSK_TEXT, Connect, StartServer, pid_alive, until, wait_pid_gone

import ppcp
import ppcp.aio
from ppcp import AsyncShell, PolicyDenied, SessionClosed
from ppcp.control.aio_channel import AsyncChannel
from ppcp.control.router import ServerPolicy

Session = ppcp.aio.AsyncSession
REPO = Path(__file__).resolve().parents[2]


async def read_until(sh: AsyncShell, needle: bytes, timeout: float = 15.0) -> bytes:
    buf = b""

    async def collect() -> bytes:
        nonlocal buf
        while needle not in buf:
            data = await sh.read()
            if data is None:
                raise AssertionError(f"shell output ended before {needle!r}: {buf!r}")
            buf += data
        return buf

    try:
        return await asyncio.wait_for(collect(), timeout)
    except TimeoutError:
        raise AssertionError(f"{needle!r} not seen; output so far: {buf!r}") from None


async def test_size_resize_and_exit_code(session: Session) -> None:
    sh = await session.open_shell(command="sh", cols=100, rows=30)
    async with sh:
        await sh.write(b"stty size\n")
        await read_until(sh, b"30 100\r\n")
        await sh.resize(132, 43)
        await sh.write(b"stty size\n")
        await read_until(sh, b"43 132\r\n")
        await sh.write(b"exit 3\n")
        assert await sh.wait() == 3
    assert sh.exit_code == 3 and sh.signal_number is None


async def test_login_shell_term_and_tty(
    session: Session, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The server (in this process) uses $SHELL and $HOME: pin them, so the user's own
    # login scripts (slow prompt hooks, pyenv...) do not make the test depend on them.
    monkeypatch.setenv("SHELL", "/bin/sh")
    monkeypatch.setenv("HOME", str(tmp_path))
    sh = await session.open_shell(term="vt100")
    async with sh:
        await sh.write(b'echo "T=$TERM" "A=$0"; tty; pwd; exit 0\n')
        out = b""
        while (data := await asyncio.wait_for(sh.read(), 15)) is not None:
            out += data
        assert await sh.wait() == 0
    # TERM is set, argv[0] marks a login shell, stdin is a pty, cwd is home.
    assert b"T=vt100 A=-sh\r\n/dev/pts/" in out
    assert str(tmp_path).encode() + b"\r\n" in out


async def test_full_screen_program(session: Session, tmp_path: Path) -> None:
    target = tmp_path / "edited.txt"
    sh = await session.open_shell(command=f"vi {target}", cols=90, rows=20)
    async with sh:
        await read_until(sh, b"\x1b[")  # it drives the terminal with escape sequences
        await sh.write(b"ihello from vi\x1b:wq\r")
        assert await sh.wait() == 0
    assert target.read_text().strip() == "hello from vi"


async def test_ctrl_c_reaches_the_remote_foreground_job(session: Session) -> None:
    sh = await session.open_shell(command="sh")
    async with sh:
        # Quoting keeps the echoed command line from matching the expected output.
        # The job prints once it is the terminal's foreground job, so ^C reaches it.
        await sh.write(b'sh -c \'echo "sleep""ing"; exec sleep 30\'; echo "after-""sleep"\n')
        await read_until(sh, b"sleeping\r\n")
        await sh.write(b"\x03")  # ^C: the remote line discipline turns it into SIGINT
        await sh.write(b'echo "still-""here"\n')
        out = await read_until(sh, b"still-here\r\n")
        assert b"after-sleep" not in out
        await sh.write(b"exit 0\n")
        assert await sh.wait() == 0


async def test_signal_and_exit_status(session: Session) -> None:
    sh = await session.open_shell(command="sh")
    async with sh:
        await sh.write(b"echo ready\n")
        await read_until(sh, b"ready\r\n")
        await sh.signal(signal.SIGKILL)
        assert await sh.wait() == 128 + signal.SIGKILL
        assert sh.signal_number == signal.SIGKILL


async def test_eof_types_ctrl_d(session: Session) -> None:
    sh = await session.open_shell(command="cat")
    async with sh:
        await sh.write(b"abc\n")
        await read_until(sh, b"abc\r\nabc\r\n")  # echo + cat's output
        await sh.send_eof()
        assert await sh.wait() == 0


async def test_closing_the_channel_kills_the_shell(session: Session) -> None:
    sh = await session.open_shell(command="sleep 300")
    assert sh.pid is not None
    await sh.close()
    await wait_pid_gone(sh.pid)


async def test_session_death_kills_the_shell(session: Session) -> None:
    sh = await session.open_shell(command="sleep 300")
    assert sh.pid is not None
    session.abort()
    await wait_pid_gone(sh.pid)


async def test_what_a_finished_shell_left_running_is_not_killed(
    serve: StartServer, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As for exec: a shell that exited keeps a job it left, even when the session ends
    the moment the exit status is out."""
    send_request = AsyncChannel.send_request

    async def send_then_session_ends(self: AsyncChannel, name: str, payload: bytes = b"") -> None:
        await send_request(self, name, payload)
        if name == "exit-status":
            self.session._terminate(SessionClosed("the client went away"))

    monkeypatch.setattr(AsyncChannel, "send_request", send_then_session_ends)
    server = await serve()
    session = await connect(server)
    served = next(iter(server.sessions))
    # No job control: the job shares the shell's process group; HUP ignored: the
    # terminal's hangup when the shell exits is not what this is about.
    sh = await session.open_shell(
        command="trap '' HUP; sleep 300 </dev/null >/dev/null 2>&1 & echo job=$!"
    )
    async with sh:
        output = await read_until(sh, b"\r\n")
        assert await sh.wait() == 0
    background = int(output.split(b"job=")[1].split()[0])
    try:
        await until(lambda: not served._tasks)
        assert pid_alive(background)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(background, signal.SIGKILL)


@pytest.mark.parametrize(
    "policy",
    [
        ServerPolicy(allow_shell=False),
        ServerPolicy(allow_exec=False),
        ServerPolicy(exec_allowlist=("ls",)),
    ],
    ids=["shell-off", "exec-off", "allow-list"],
)
async def test_shell_policy(serve: StartServer, connect: Connect, policy: ServerPolicy) -> None:
    session = await connect(await serve(policy))
    with pytest.raises(PolicyDenied):
        await session.open_shell()


async def test_bad_sizes_are_refused_locally(session: Session) -> None:
    with pytest.raises(ppcp.ChannelError):
        await session.open_shell(cols=0)
    with pytest.raises(ppcp.ChannelError):
        await session.open_shell(term="bad\x1bterm")


def test_blocking_open_shell(blocking_session: ppcp.Session) -> None:
    with blocking_session.open_shell(command="sh", cols=70, rows=10) as sh:
        sh.write(b"stty size; exit 5\n")
        out = b""
        while (data := sh.read(timeout=15)) is not None:
            out += data
        assert b"10 70\r\n" in out
        assert sh.wait(timeout=15) == 5


# -- session.shell() attached to a real terminal ----------------------------------------

CHILD = textwrap.dedent(
    """
    import sys, termios
    import ppcp
    port = int(sys.argv[1])
    before = termios.tcgetattr(0)
    with ppcp.connect("127.0.0.1", port, sys.argv[2],
                      config=ppcp.SessionConfig(name="tty-child")) as session:
        code = session.shell(command="PS1='READY> ' sh")
    after = termios.tcgetattr(0)
    print(f"RESULT code={code} restored={before == after}", flush=True)
    """
)


def _set_winsize(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _take_terminal() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtyReader:
    """Reads a pty master on the event loop and waits for expected output."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""
        self.eof = False
        self._changed = asyncio.Event()
        os.set_blocking(fd, False)
        asyncio.get_running_loop().add_reader(fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.eof = True
            asyncio.get_running_loop().remove_reader(self.fd)
        self.buf += data
        self._changed.set()

    async def expect(self, needle: bytes, timeout: float = 20.0) -> None:
        async def wait() -> None:
            while needle not in self.buf:
                if self.eof:
                    raise AssertionError(f"terminal closed before {needle!r}: {self.buf!r}")
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"{needle!r} not seen; terminal shows {self.buf!r}") from None

    def close(self) -> None:
        if not self.eof:
            asyncio.get_running_loop().remove_reader(self.fd)


async def test_blocking_shell_on_a_real_terminal(serve: StartServer) -> None:
    server = await serve()
    master, slave = os.openpty()
    _set_winsize(slave, 61, 17)
    env = dict(os.environ, TERM="xterm", PYTHONPATH=str(REPO))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(server.port),
        PSK_TEXT,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
        preexec_fn=_take_terminal,
    )
    os.close(slave)
    reader = PtyReader(master)
    try:
        await reader.expect(b"READY> ")
        # The remote terminal has the local terminal's size.
        os.write(master, b"stty size; echo sum=$((6*7))\r")
        await reader.expect(b"17 61\r\n")
        await reader.expect(b"sum=42\r\n")
        # Raw mode: ^C is a byte for the remote side, not SIGINT for the local client.
        os.write(master, b'sh -c \'echo "sleep""ing"; exec sleep 30\'; echo "not-""interrupted"\r')
        await reader.expect(b"sleeping\r\n")
        os.write(master, b"\x03")
        os.write(master, b'echo "interrupted-""ok"\r')
        await reader.expect(b"interrupted-ok\r\n")
        assert b"not-interrupted" not in reader.buf
        # A local resize (SIGWINCH) is forwarded.
        _set_winsize(master, 99, 33)
        os.write(master, b"stty size\r")
        await reader.expect(b"33 99\r\n")
        os.write(master, b"exit 3\r")
        await reader.expect(b"RESULT code=3 restored=True")
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        reader.close()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        os.close(master)


class RecordingShell:
    """Stands in for AsyncShell to record what the input forwarder sends, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, object]] = []
        self.done = asyncio.Event()

    async def resize(self, cols: int, rows: int) -> None:
        self.sent.append(("resize", (cols, rows)))

    async def write(self, data: bytes) -> None:
        self.sent.append(("data", data))

    async def send_eof(self) -> None:
        self.sent.append(("eof", None))
        self.done.set()


async def test_a_resize_reaches_the_server_before_keys_typed_after_it() -> None:
    # No SIGWINCH handler here: the ordering must not depend on signal delivery,
    # which races the keystrokes (CI once saw the old size after a resize).
    from ppcp.control.shell import _forward_input, _WindowSync

    master, slave = os.openpty()
    keys_read, keys_written = os.pipe()
    try:
        _set_winsize(slave, 80, 24)
        shell = RecordingShell()
        window = _WindowSync(shell, slave, (80, 24))  # type: ignore[arg-type]
        forwarder = asyncio.ensure_future(_forward_input(shell, keys_read, window))  # type: ignore[arg-type]
        os.write(keys_written, b"a")
        _set_winsize(slave, 99, 33)
        await asyncio.sleep(0)  # nothing else is scheduled; the forwarder may read "a" now or later
        os.write(keys_written, b"b")
        os.close(keys_written)
        keys_written = -1
        await asyncio.wait_for(shell.done.wait(), 10)
        await asyncio.wait_for(forwarder, 10)
        sent = shell.sent
        assert sent[-1] == ("eof", None)
        typed_after = next(
            i
            for i, (kind, value) in enumerate(sent)
            if kind == "data" and value.endswith(b"b")  # type: ignore[attr-defined]
        )
        resizes = [i for i, (kind, _) in enumerate(sent) if kind == "resize"]
        assert [sent[i][1] for i in resizes] == [(99, 33)]
        assert resizes[0] < typed_after
    finally:
        for fd in (master, slave, keys_read, keys_written):
            if fd >= 0:
                os.close(fd)
