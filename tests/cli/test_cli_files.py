"""ppcp put / ppcp get: scp-like copies, errors, disk full, resume after SIGKILL."""

from __future__ import annotations

import hashlib
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import PPCP, Env, Server, StartServer


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def random_file(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 4 << 20)
            f.write(os.urandom(n))
            left -= n
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    d = tmp_path / "root"
    d.mkdir()
    return d


@pytest.fixture
def srv(server: StartServer, root: Path) -> Server:
    return server("--root", str(root))


def test_put_and_get_a_file(env: Env, srv: Server, root: Path, tmp_path: Path) -> None:
    src = random_file(tmp_path / "data.bin", 3 << 20)
    res = env.run("put", str(src), "box:", "--host", srv.address)
    assert res.returncode == 0, res.stderr
    assert "sent 1 file" in res.stderr and "3.0 MiB" in res.stderr
    assert sha256(root / "data.bin") == sha256(src)
    out = tmp_path / "back"
    out.mkdir()
    res = env.run("get", ":data.bin", str(out), "--host", srv.address)
    assert res.returncode == 0, res.stderr
    assert sha256(out / "data.bin") == sha256(src)
    # Not a terminal: no progress bar, only the summary line.
    assert "\r" not in res.stderr and res.stderr.count("\n") == 1
    res = env.run("-q", "get", ":data.bin", str(out / "copy.bin"), "--host", srv.address)
    assert (res.returncode, res.stderr) == (0, "")
    assert sha256(out / "copy.bin") == sha256(src)
    # --checksum: both ends digest the file and the summary shows the SHA-256.
    res = env.run("get", "--checksum", ":data.bin", str(out / "sum.bin"), "--host", srv.address)
    assert res.returncode == 0, res.stderr
    assert f"sha256 {sha256(src)}\n" in res.stderr


def test_directories_need_r(env: Env, srv: Server, root: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("a")
    (tree / "sub" / "b.txt").write_text("b")
    res = env.run("put", str(tree), ":", "--host", srv.address)
    assert res.returncode == 2 and "-r" in res.stderr
    res = env.run("put", "-r", str(tree), ":", "--host", srv.address)
    assert res.returncode == 0, res.stderr
    assert (root / "tree" / "sub" / "b.txt").read_text() == "b"
    res = env.run("get", ":tree", str(tmp_path / "copy"), "--host", srv.address)
    assert res.returncode == 2 and "use -r" in res.stderr, res.stderr
    assert "recursive=True" not in res.stderr
    res = env.run("get", "-r", ":tree", str(tmp_path / "copy"), "--host", srv.address)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "copy" / "sub" / "b.txt").read_text() == "b"


@pytest.mark.parametrize("quiet", [False, True])
def test_skipped_entries_are_listed_and_fail_the_copy(
    env: Env, srv: Server, root: Path, tmp_path: Path, quiet: bool
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.txt").write_text("a")
    os.mkfifo(tree / "pipe")
    res = env.run(*(["-q"] if quiet else []), "put", "-r", str(tree), ":", "--host", srv.address)
    assert res.returncode == 1, res.stderr
    assert "skipped" in res.stderr and "pipe" in res.stderr
    assert "1 entry was skipped: the copy is incomplete" in res.stderr
    assert "Traceback" not in res.stderr
    assert (root / "tree" / "a.txt").read_text() == "a"  # the rest was copied


def test_get_r_leaves_part_files_out_silently(
    env: Env, srv: Server, root: Path, tmp_path: Path
) -> None:
    """Unfinished part files of another transfer are not the user's data: exit 0."""
    (root / "tree").mkdir()
    (root / "tree" / "a.txt").write_text("a")
    (root / "tree" / ".b.txt.ppcp-part").write_text("half of b")
    res = env.run("get", "-r", ":tree", str(tmp_path / "copy"), "--host", srv.address)
    assert res.returncode == 0, res.stderr
    assert "skipped" not in res.stderr and "ppcp-part" not in res.stderr
    assert os.listdir(tmp_path / "copy") == ["a.txt"]


def test_several_files_into_a_directory(env: Env, srv: Server, root: Path, tmp_path: Path) -> None:
    (root / "inbox").mkdir()
    files = [tmp_path / f"f{i}.txt" for i in range(3)]
    for i, f in enumerate(files):
        f.write_text(str(i))
    res = env.run("put", *map(str, files), ":inbox", "--host", srv.address)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (root / "inbox").iterdir()) == ["f0.txt", "f1.txt", "f2.txt"]


def test_several_sources_are_named_as_the_library_names_them(
    env: Env, srv: Server, root: Path, tmp_path: Path
) -> None:
    """``put -r a.txt .. :multi`` sends ``..`` under its real name, not as '..'."""
    src = tmp_path / "src"
    (src / "inner").mkdir(parents=True)
    (src / "inner" / "a.txt").write_text("a")
    (src / "b.txt").write_text("b")
    (root / "multi").mkdir()
    res = env.run("put", "-r", "a.txt", "..", ":multi", "--host", srv.address, cwd=src / "inner")
    assert res.returncode == 0, res.stderr
    assert (root / "multi" / "a.txt").read_text() == "a"
    assert (root / "multi" / "src" / "b.txt").read_text() == "b"
    assert (root / "multi" / "src" / "inner" / "a.txt").read_text() == "a"


def test_what_was_sent_before_a_failure_is_reported(
    env: Env, srv: Server, root: Path, tmp_path: Path
) -> None:
    (root / "inbox").mkdir()
    os.mkfifo(root / "inbox" / "second.txt")  # the second copy is refused
    files = [tmp_path / "first.txt", tmp_path / "second.txt", tmp_path / "third.txt"]
    for f in files:
        f.write_text(f.name)
    res = env.run("put", *map(str, files), ":inbox", "--host", srv.address)
    assert res.returncode == 7, res.stderr
    lines = res.stderr.splitlines()
    assert lines[0].startswith("sent 1 file, 9 B, to ") and "(inbox/first.txt)" in lines[0]
    assert "'inbox/second.txt' is a FIFO" in lines[1] and len(lines) == 2
    assert (root / "inbox" / "first.txt").read_text() == "first.txt"
    assert not (root / "inbox" / "third.txt").exists()


def test_remote_spec_errors(env: Env, srv: Server, tmp_path: Path) -> None:
    f = tmp_path / "x"
    f.write_text("x")
    res = env.run("put", str(f), "no-colon")
    assert res.returncode == 2 and "NAME:PATH" in res.stderr
    res = env.run("put", str(f), ":x")  # no name and no --host
    assert res.returncode == 2
    res = env.run("put", str(tmp_path / "missing"), ":x", "--host", srv.address)
    assert res.returncode == 6 and "missing" in res.stderr


def test_paths_outside_the_root_are_refused(env: Env, srv: Server, tmp_path: Path) -> None:
    res = env.run("get", ":../../etc/passwd", str(tmp_path), "--host", srv.address)
    assert res.returncode == 7
    assert "'..'" in res.stderr and "Traceback" not in res.stderr
    res = env.run("get", ":no-such-file", str(tmp_path), "--host", srv.address)
    assert res.returncode == 7 and "no such file" in res.stderr


def test_files_disabled(env: Env, server: StartServer, tmp_path: Path) -> None:
    srv = server("--no-files")
    res = env.run("get", ":x", str(tmp_path), "--host", srv.address)
    assert res.returncode == 7 and "refused" in res.stderr


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run a server that cannot bypass file permissions",
)
def test_permission_denied(env: Env, server: StartServer, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "locked").write_text("secret")
    (root / "locked").chmod(0)
    (root / "ro").mkdir(mode=0o555)
    drop = "-dac_override,-dac_read_search"
    srv = server(
        "--root", str(root), wrap=["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}"]
    )
    res = env.run("get", ":locked", str(tmp_path), "--host", srv.address)
    assert res.returncode == 7
    assert "Permission denied" in res.stderr and "Traceback" not in res.stderr
    res = env.run("put", str(env.psk_file), ":ro/", "--host", srv.address)
    assert res.returncode == 7 and "Permission denied" in res.stderr


def unreadable_tree(top: Path) -> None:
    """a, c and sub/d readable; b (a file) and locked/ (a directory) not, without caps."""
    (top / "sub").mkdir(parents=True)
    (top / "locked").mkdir()
    for name in ("a.txt", "b.txt", "c.txt", "sub/d.txt", "locked/e.txt"):
        (top / name).write_text(name)
    (top / "b.txt").chmod(0)
    (top / "locked").chmod(0)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to make entries unreadable to a ppcp process",
)
@pytest.mark.parametrize("direction", ["put", "get"])
def test_unreadable_entries_are_skipped_not_fatal(
    env: Env, server: StartServer, tmp_path: Path, direction: str
) -> None:
    drop = "-dac_override,-dac_read_search"
    wrap = ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}"]
    root = tmp_path / "root"
    root.mkdir()
    if direction == "get":
        unreadable_tree(root / "tree")
        srv = server("--root", str(root), wrap=wrap)
        res = env.run("get", "-r", ":tree", str(tmp_path / "copy"), "--host", srv.address)
        copy = tmp_path / "copy"
    else:
        unreadable_tree(tmp_path / "tree")
        srv = server("--root", str(root))
        res = env.run_in(wrap, "put", "-r", str(tmp_path / "tree"), ":", "--host", srv.address)
        copy = root / "tree"
    assert res.returncode == 1, res.stderr
    assert "skipped b.txt: " in res.stderr and "skipped locked: " in res.stderr
    assert res.stderr.count("Permission denied") == 2, res.stderr
    assert "2 entries were skipped: the copy is incomplete" in res.stderr
    assert "Traceback" not in res.stderr
    for name in ("a.txt", "c.txt", "sub/d.txt"):  # everything else was copied
        assert (copy / name).read_text() == name
    assert not (copy / "b.txt").exists() and not (copy / ".b.txt.ppcp-part").exists()
    assert (copy / "locked").is_dir() and not any((copy / "locked").iterdir())


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True, timeout=20).returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=20)


def test_disk_full(env: Env, server: StartServer, tiny_fs: Path, tmp_path: Path) -> None:
    srv = server("--root", str(tiny_fs))
    src = random_file(tmp_path / "big.bin", 3 << 20)
    res = env.run("put", str(src), ":", "--host", srv.address)
    assert res.returncode == 6
    assert "no space left" in res.stderr and "Traceback" not in res.stderr
    assert "copy again to resume" in res.stderr
    assert res.stderr.count("\n") <= 2
    assert not (tiny_fs / "big.bin").exists()
    assert (tiny_fs / ".big.bin.ppcp-part").exists()  # kept for the resume


def test_disk_full_while_replacing_a_file(
    env: Env, server: StartServer, tiny_fs: Path, tmp_path: Path
) -> None:
    """Old and new copies do not fit side by side on the 1 MiB disk: no resume could ever
    succeed, so none is promised; the old file is intact and the disk is given back."""
    srv = server("--root", str(tiny_fs))
    old = random_file(tiny_fs / "f.bin", 600 << 10)
    before = sha256(old)
    src = random_file(tmp_path / "f.bin", 700 << 10)
    res = env.run("put", str(src), ":", "--host", srv.address)
    assert res.returncode == 6, res.stderr
    assert res.stderr.startswith("ppcp: transfer failed: the server says no space left on device")
    assert "'f.bin': it was not replaced and is unchanged" in res.stderr
    assert "needs 700.0 KiB free beside the old one" in res.stderr
    assert "remove the old file, then copy again" in res.stderr and "resume" not in res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert sha256(old) == before
    assert os.listdir(tiny_fs) == ["f.bin"]  # no hidden part holding the disk full
    assert shutil.disk_usage(tiny_fs).free >= 400 << 10


def wait_for_part(path: Path, timeout: float = 30.0) -> int:
    """Poll (bounded) until the part file holds some bytes; its size."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size >= 1 << 20:
            return size
        select.select([], [], [], 0.005)
    raise AssertionError(f"{path} did not appear within {timeout} s")


@pytest.mark.parametrize("direction", ["put", "get"])
def test_interrupted_transfer_resumes(
    env: Env, srv: Server, root: Path, tmp_path: Path, direction: str
) -> None:
    size = 64 << 20
    if direction == "put":
        src = random_file(tmp_path / "big.bin", size)
        args = ("put", str(src), ":", "--host", srv.address)
        dest, part = root / "big.bin", root / ".big.bin.ppcp-part"
    else:
        src = random_file(root / "big.bin", size)
        out = tmp_path / "out"
        out.mkdir()
        args = ("get", ":big.bin", str(out), "--host", srv.address)
        dest, part = out / "big.bin", out / ".big.bin.ppcp-part"
    client = env.popen(*args, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_part(part)
        client.send_signal(signal.SIGKILL)
    finally:
        client.wait(15)
    assert client.returncode == -signal.SIGKILL
    assert part.exists() and not dest.exists()
    res = env.run(*args, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "resumed from" in res.stderr
    assert sha256(dest) == sha256(src)
    assert not part.exists()


def on_terminal(env: Env, *args: str) -> tuple[int, bytes]:
    """(exit status, everything written) of ppcp run on a pseudo-terminal."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(sys.executable, [*PPCP, *args], {**env.vars, "TERM": "xterm"})
    screen = b""
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not select.select([fd], [], [], deadline - time.monotonic())[0]:
                break
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), screen


def test_progress_bar_on_a_terminal(env: Env, srv: Server, tmp_path: Path) -> None:
    src = random_file(tmp_path / "bar.bin", 8 << 20)
    status, screen = on_terminal(env, "put", str(src), ":", "--host", srv.address)
    assert status == 0, screen
    assert b"bar.bin" in screen and b"8.4 MB" in screen, screen


def test_progress_bar_of_an_empty_file_and_an_odd_name(
    env: Env, srv: Server, tmp_path: Path
) -> None:
    src = tmp_path / "[red]empty"
    src.write_bytes(b"")
    status, screen = on_terminal(env, "put", str(src), ":", "--host", srv.address)
    assert status == 0, screen
    # It ends complete (0/0), not pending (0/?, how a bar starts before any report).
    assert screen.rfind(b"0/0 bytes") > screen.rfind(b"0/?"), screen
    assert b"[red]empty" in screen, screen  # a name, not rich markup


def test_get_to_stdout(env: Env, srv: Server, root: Path, tmp_path: Path) -> None:
    src = random_file(root / "data.bin", (3 << 20) + 7)
    res = subprocess.run(
        [*PPCP, "get", ":data.bin", "-", "--host", srv.address],
        env=env.vars,
        cwd=env.home,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == src.read_bytes()
    assert res.stderr == b""  # no bar, no summary: stdout is the data
    assert os.listdir(env.home) == [".config"]  # nothing was written under the name "-"
    res = subprocess.run(
        [*PPCP, "get", "--checksum", ":data.bin", "-", "--host", srv.address],
        env=env.vars,
        cwd=env.home,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    assert res.stdout == src.read_bytes()
    assert res.stderr.decode() == f"sha256 {sha256(src)}\n"  # asked for, on stderr


def test_get_to_stdout_errors(env: Env, srv: Server, root: Path) -> None:
    (root / "tree").mkdir()
    res = env.run("get", "-r", ":tree", "-", "--host", srv.address)
    assert res.returncode == 2 and "-r cannot write to standard output" in res.stderr
    res = env.run("get", ":missing", "-", "--host", srv.address)
    assert res.returncode == 7 and res.stdout == "" and "no such file" in res.stderr
    res = env.run("get", ":tree", "-", "--host", srv.address)
    assert res.returncode == 2 and "use -r" in res.stderr and res.stdout == ""


def test_get_of_a_binary_file_to_a_terminal_is_refused(env: Env, srv: Server, root: Path) -> None:
    (root / "data.bin").write_bytes(b"ELF\0\x1b[2J\x1b]0;pwned\x07" * 100)
    status, screen = on_terminal(env, "get", ":data.bin", "-", "--host", srv.address)
    assert status != 0 and b"refusing to write a binary file to the terminal" in screen
    assert b"\x1b[2J" not in screen  # none of it reached the terminal
    (root / "notes.txt").write_text("plain text\n")
    status, screen = on_terminal(env, "get", ":notes.txt", "-", "--host", srv.address)
    assert status == 0 and b"plain text" in screen, screen


def test_get_to_stdout_closed_early(env: Env, srv: Server, root: Path) -> None:
    """`ppcp get NAME:big - | head -c 100`: 141 and quiet, as a writer killed by SIGPIPE."""
    random_file(root / "big.bin", 64 << 20)
    proc = env.popen(
        "get",
        ":big.bin",
        "-",
        "--host",
        srv.address,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert len(proc.stdout.read(100)) == 100
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(30) == 141, stderr
    assert b"Traceback" not in stderr and b"Error" not in stderr, stderr


def test_put_from_stdin(env: Env, srv: Server, root: Path) -> None:
    data = os.urandom((2 << 20) + 3)
    (root / "inbox").mkdir()
    res = env.run("put", "-", ":inbox/from-stdin.bin", "--host", srv.address, input=data)
    assert res.returncode == 0, res.stderr
    assert (root / "inbox" / "from-stdin.bin").read_bytes() == data
    assert (
        res.stderr.startswith("sent 1 file, 2.0 MiB, to ")
        and "(inbox/from-stdin.bin)" in res.stderr
    )
    res = env.run("put", "--checksum", "-", ":small", "--host", srv.address, input=b"small")
    assert res.returncode == 0 and (root / "small").read_bytes() == b"small"
    assert f"sha256 {hashlib.sha256(b'small').hexdigest()}" in res.stderr


def test_put_from_stdin_errors(env: Env, srv: Server, root: Path, tmp_path: Path) -> None:
    (root / "inbox").mkdir()
    other = tmp_path / "other.txt"
    other.write_text("other")
    res = env.run("put", "-", ":inbox", "--host", srv.address, input=b"x")
    assert res.returncode == 2, res.stderr
    assert "standard input has no name: give one in the remote path (NAME:inbox/FILE)" in res.stderr
    res = env.run("put", str(other), "-", ":inbox", "--host", srv.address, input=b"x")
    assert res.returncode == 2 and "must be the only LOCAL" in res.stderr
    res = env.run("put", "-r", "-", ":x", "--host", srv.address, input=b"x")
    assert res.returncode == 2 and "-r cannot copy standard input" in res.stderr
    assert os.listdir(root) == ["inbox"] and os.listdir(root / "inbox") == []


def test_put_from_stdin_fails_at_once_when_the_server_does(
    env: Env, server: StartServer, tiny_fs: Path
) -> None:
    """Disk full on the server while stdin is open and silent: the error comes at once
    and ppcp exits 6 (the thread reading stdin must not hold it, or abort it at exit)."""
    srv = server("--root", str(tiny_fs))
    r, w = os.pipe()
    try:
        proc = env.popen("put", "-", ":f", "--host", srv.address, stdin=r, stderr=subprocess.PIPE)
        os.close(r)
        os.set_blocking(w, False)
        sent = 0
        for _ in range(2000):  # bounded: a bit more than the disk holds, then silence
            if sent >= 1280 << 10 or proc.poll() is not None:
                break
            select.select([], [w], [], 0.05)
            try:
                sent += os.write(w, os.urandom(min(64 << 10, (1280 << 10) - sent)))
            except BlockingIOError:
                continue
            except BrokenPipeError:
                break
        assert proc.stderr is not None
        stderr = proc.stderr.read().decode()  # ends when ppcp does, w still open
        assert proc.wait(30) == 6, stderr
    finally:
        os.close(w)
    assert "no space left on device" in stderr and "cannot resume" in stderr
    assert "Fatal Python error" not in stderr and "Traceback" not in stderr
    assert os.listdir(tiny_fs) == []
