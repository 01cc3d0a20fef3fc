"""keygen, the PSK and config lookups, global options, help, completion, unit file."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from cli_helpers import Env, StartServer


def test_help_lists_every_command_without_heavy_imports(env: Env) -> None:
    res = env.run("--help")
    assert res.returncode == 0
    for name in ("keygen", "serve", "scan", "exec", "shell", "put", "get", "send", "listen"):
        assert f"  {name}" in res.stdout
    code = (
        "import sys; from ppcp.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('rich', 'asyncio', 'ppcp.aio', 'zeroconf', 'tomllib')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    out = env.python(code)
    # rich, zeroconf and the config parser are only imported by the commands that need them.
    heavy = out.stdout.split("HEAVY", 1)[1]
    assert "rich" not in heavy and "zeroconf" not in heavy and "tomllib" not in heavy


def test_version(env: Env) -> None:
    res = env.run("--version")
    assert res.returncode == 0
    assert res.stdout.startswith("ppcp ")


def test_keygen_writes_0600_and_refuses_to_overwrite(env: Env) -> None:
    key = env.psk_file.read_text()
    assert key.startswith("ppcp-psk-") and len(key.strip()) == len("ppcp-psk-") + 64
    assert stat.S_IMODE(env.psk_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(env.psk_file.parent.stat().st_mode) == 0o700
    res = env.run("keygen")
    assert res.returncode == 8
    assert "already exists" in res.stderr and "--force" in res.stderr
    assert env.psk_file.read_text() == key
    res = env.run("keygen", "--force")
    assert res.returncode == 0, res.stderr
    assert env.psk_file.read_text() != key
    assert stat.S_IMODE(env.psk_file.stat().st_mode) == 0o600


def test_keygen_honours_umask_and_stdout(env: Env, tmp_path: Path) -> None:
    out = tmp_path / "k"
    old = os.umask(0)
    try:
        res = env.run("keygen", "--out", str(out))
    finally:
        os.umask(old)
    assert res.returncode == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    res = env.run("keygen", "--out", "-")
    assert res.returncode == 0 and res.stdout.startswith("ppcp-psk-")


def test_psk_file_readable_by_others_is_refused(env: Env, server: StartServer) -> None:
    srv = server()
    env.psk_file.chmod(0o640)
    res = env.run("send", "hi", "--host", srv.address)
    assert res.returncode == 8
    assert "too open" in res.stderr and f"chmod 600 {env.psk_file}" in res.stderr
    assert "Traceback" not in res.stderr
    res = env.run("exec", "--host", srv.address, "--", "true")
    assert res.returncode == 255
    assert "too open" in res.stderr


def test_missing_psk_file(env: Env) -> None:
    env.psk_file.unlink()
    res = env.run("send", "hi", "--host", "127.0.0.1:1")
    assert res.returncode == 8
    assert "does not exist" in res.stderr and "ppcp keygen" in res.stderr


def test_psk_sources_in_order(env: Env, server: StartServer, tmp_path: Path) -> None:
    srv = server()
    other = env.new_key("other.psk")
    good = env.psk_file.read_text().strip()
    # PPCP_PSK_FILE beats the default location; --psk-file beats PPCP_PSK_FILE.
    res = env.run("send", "x", "--host", srv.address, extra_env={"PPCP_PSK_FILE": str(other)})
    assert res.returncode == 4, res.stderr
    res = env.run(
        "send",
        "x",
        "--host",
        srv.address,
        "--psk-file",
        str(env.psk_file),
        extra_env={"PPCP_PSK_FILE": str(other)},
    )
    assert res.returncode == 0, res.stderr
    # PPCP_PSK (the key itself) is used when no file is named.
    env.psk_file.unlink()
    res = env.run("send", "x", "--host", srv.address, extra_env={"PPCP_PSK": good})
    assert res.returncode == 0, res.stderr
    # The config file's psk_file, relative to the config file.
    cfg = env.home / ".config" / "ppcp" / "config.toml"
    (env.home / ".config" / "ppcp" / "real.psk").write_text(good)
    (env.home / ".config" / "ppcp" / "real.psk").chmod(0o600)
    cfg.write_text('psk_file = "real.psk"\n')
    res = env.run("send", "x", "--host", srv.address)
    assert res.returncode == 0, res.stderr


def test_config_defaults_and_aliases(env: Env, server: StartServer) -> None:
    srv = server()
    cfg = env.home / ".config" / "ppcp" / "config.toml"
    cfg.write_text(f'port = {srv.port}\ntimeout = 5\n[aliases]\nkitchen = "127.0.0.1:{srv.port}"\n')
    res = env.run("exec", "kitchen", "--", "echo", "via-alias")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "via-alias\n"
    # The config's port is the default for --host without a port.
    res = env.run("exec", "--host", "127.0.0.1", "--", "echo", "via-port")
    assert res.stdout == "via-port\n", res.stderr


def test_bad_config_is_a_config_error(env: Env) -> None:
    cfg = env.home / ".config" / "ppcp" / "config.toml"
    cfg.write_text("port = 'nine'\n")
    res = env.run("send", "x", "somewhere")
    assert res.returncode == 8
    assert "port" in res.stderr and "Traceback" not in res.stderr
    cfg.write_text("this is not toml\n")
    res = env.run("send", "x", "somewhere")
    assert res.returncode == 8 and "not valid TOML" in res.stderr
    cfg.write_text("port = " + "[" * 5000 + "]" * 5000 + "\n")  # tomllib: RecursionError
    res = env.run("send", "x", "somewhere")
    assert res.returncode == 8 and "nested too deeply" in res.stderr, res.stderr


def test_global_options_before_and_after_the_command(env: Env, server: StartServer) -> None:
    srv = server()
    before = env.run("--host", srv.address, "exec", "--", "echo", "a")
    after = env.run("exec", "--host", srv.address, "--", "echo", "a")
    between = env.run("exec", "label", "--host", srv.address, "--", "echo", "a")
    for res in (before, after, between):
        assert res.returncode == 0, res.stderr
        assert res.stdout == "a\n"
    # The value after the command name wins.
    res = env.run("--host", "127.0.0.1:1", "exec", "--host", srv.address, "--", "true")
    assert res.returncode == 0, res.stderr


def test_usage_errors(env: Env) -> None:
    res = env.run("send")
    assert res.returncode == 2 and "Usage" in res.stderr
    res = env.run("put", "onlyone")
    assert res.returncode == 2
    # exec reports every failure of its own as 255, like ssh.
    res = env.run("exec", "--no-such-option", "x", "--", "true")
    assert res.returncode == 255
    res = env.run("exec", "host-only")
    assert res.returncode == 255 and "no command" in res.stderr
    res = env.run("exec", "a", "b", "--host", "127.0.0.1:1", "--", "true")
    assert res.returncode == 255 and "--host names one server" in res.stderr
    res = env.run("--host", "127.0.0.1:notaport", "send", "x")
    assert res.returncode == 2 and "not a port" in res.stderr


def test_shell_completion_script(env: Env) -> None:
    res = subprocess.run(
        [sys.executable, "-c", "from ppcp.cli import main; main()"],
        capture_output=True,
        text=True,
        env={**env.vars, "_PPCP_COMPLETE": "bash_source"},
        timeout=30,
    )
    assert "_PPCP_COMPLETE" in res.stdout and "complete " in res.stdout
    # Server names complete from the config's aliases.
    cfg = env.home / ".config" / "ppcp" / "config.toml"
    cfg.write_text('[aliases]\nkitchen = "kitchen-pi"\nkeg = "10.0.0.1:9000"\n')
    for words, expected in (
        ("ppcp exec k", ["plain,keg", "plain,kitchen"]),
        ("ppcp get kit", ["plain,kitchen:"]),
        ("ppcp sh", ["plain,shell"]),
    ):
        res = subprocess.run(
            [sys.executable, "-m", "ppcp.cli"],
            capture_output=True,
            text=True,
            env={
                **env.vars,
                "_PPCP_COMPLETE": "bash_complete",
                "COMP_WORDS": words,
                "COMP_CWORD": str(len(words.split()) - 1),
            },
            timeout=30,
        )
        assert res.stdout.split() == expected, (words, res.stdout, res.stderr)


def test_systemd_unit(env: Env, tmp_path: Path) -> None:
    res = env.run("serve", "--systemd-unit", "--name", "kitchen", "--root", str(tmp_path))
    assert res.returncode == 0, res.stderr
    unit = res.stdout
    assert "[Service]" in unit and "[Install]" in unit
    assert f"Environment=PPCP_PSK_FILE={env.psk_file}" in unit
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert " serve " in exec_start and "--name kitchen" in exec_start
    assert f"--root {tmp_path}" in exec_start
    assert "ppcp-psk-" not in unit  # never the key itself


def test_a_lost_connection_is_said_once() -> None:
    from ppcp.cli.errors import EXIT_CONNECTION, classify
    from ppcp.core.errors import ConnectionLost, map_exception

    lost = map_exception(ConnectionResetError(104, "Connection reset by peer"))
    assert isinstance(lost, ConnectionLost)
    assert classify(lost) == (EXIT_CONNECTION, "connection lost: Connection reset by peer.")
    assert classify(ConnectionLost("the connection closed")) == (
        EXIT_CONNECTION,
        "connection lost: the connection closed.",
    )


def test_usage_error_before_exec_or_shell_is_255(env: Env) -> None:
    """README: exec/shell usage errors exit 255 (2 could be the remote status)."""
    for command in (("exec", "a", "--", "true"), ("shell",)):
        res = env.run("--timeout", "0", *command)
        assert res.returncode == 255, res.stderr
        assert "'--timeout'" in res.stderr
    res = env.run("exec", "--timeout", "0", "a", "--", "true")
    assert res.returncode == 255 and "'--timeout'" in res.stderr, res.stderr
    assert env.run("--timeout", "0", "send", "x").returncode == 2
