"""Where the CLI finds its pre-shared key and defaults.

Precedence, highest first: command-line options, environment variables
(``PPCP_PSK_FILE``, ``PPCP_PSK``, ``PPCP_CONFIG``), the config file
(``$XDG_CONFIG_HOME/ppcp/config.toml``), built-in defaults.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from msgspec import Struct, field

from ppcp.cli.errors import EXIT_CONFIG, CLIError
from ppcp.cli.options import Settings

DEFAULT_PORT = 9000
DEFAULT_TIMEOUT = 2.0
CONFIG_KEYS = {"psk_file", "port", "discovery_port", "timeout", "name", "aliases"}


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or ""
    root = Path(base) if base.strip() and Path(base).is_absolute() else Path.home() / ".config"
    return root / "ppcp"


def default_psk_path() -> Path:
    return config_dir() / "psk"


def default_config_path() -> Path:
    return config_dir() / "config.toml"


class FileConfig(Struct, frozen=True):
    """The parsed config file (every key optional)."""

    path: Path | None = None
    psk_file: str | None = None
    port: int | None = None
    discovery_port: int | None = None
    timeout: float | None = None
    name: str | None = None
    aliases: dict[str, str] = field(default_factory=dict)


def load_config(settings: Settings) -> FileConfig:
    explicit = settings.config or os.environ.get("PPCP_CONFIG")
    path = Path(explicit).expanduser() if explicit else default_config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise CLIError(EXIT_CONFIG, f"config file {path} does not exist.") from None
        return FileConfig()
    except OSError as exc:
        raise CLIError(EXIT_CONFIG, f"cannot read config file {path}: {exc.strerror}.") from None
    except UnicodeDecodeError:
        raise CLIError(EXIT_CONFIG, f"config file {path} is not UTF-8 text.") from None
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CLIError(EXIT_CONFIG, f"config file {path} is not valid TOML: {exc}.") from None
    except RecursionError:
        raise CLIError(EXIT_CONFIG, f"config file {path} is nested too deeply.") from None
    return _validate(path, data)


def _validate(path: Path, data: dict[str, Any]) -> FileConfig:
    def bad(key: str, what: str) -> CLIError:
        return CLIError(EXIT_CONFIG, f"config file {path}: {key!r} must be {what}.")

    unknown = sorted(set(data) - CONFIG_KEYS)
    if unknown:
        raise CLIError(
            EXIT_CONFIG,
            f"config file {path}: unknown key {unknown[0]!r} "
            f"(known: {', '.join(sorted(CONFIG_KEYS))}).",
        )
    values: dict[str, Any] = {"path": path}
    for key in ("psk_file", "name"):
        if key in data:
            if not isinstance(data[key], str) or not data[key]:
                raise bad(key, "a non-empty string")
            values[key] = data[key]
    for key in ("port", "discovery_port"):
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
                raise bad(key, "a port number (1-65535)")
            values[key] = value
    if "timeout" in data:
        value = data["timeout"]
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise bad("timeout", "a positive number of seconds")
        values["timeout"] = float(value)
    aliases = data.get("aliases", {})
    if not isinstance(aliases, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in aliases.items()
    ):
        raise bad("aliases", 'a table of name = "server-name" or "host:port" strings')
    values["aliases"] = dict(aliases)
    return FileConfig(**values)


# -- the pre-shared key -------------------------------------------------------------


def psk_source(settings: Settings, config: FileConfig) -> tuple[str, Path | None]:
    """(description, path) of the PSK to use; path None means $PPCP_PSK."""
    if settings.psk_file:
        return "--psk-file", Path(settings.psk_file).expanduser()
    if os.environ.get("PPCP_PSK_FILE"):
        return "PPCP_PSK_FILE", Path(os.environ["PPCP_PSK_FILE"]).expanduser()
    if os.environ.get("PPCP_PSK"):
        return "PPCP_PSK", None
    if config.psk_file:
        path = Path(config.psk_file).expanduser()
        if not path.is_absolute() and config.path is not None:
            path = config.path.parent / path
        return f"psk_file in {config.path}", path
    return "default location", default_psk_path()


def load_psk(settings: Settings, config: FileConfig) -> str:
    """The pre-shared key text.  Refuses files other users could read."""
    source, path = psk_source(settings, config)
    if path is None:
        return os.environ["PPCP_PSK"]
    return read_psk_file(path, source)


def read_psk_file(path: Path, source: str = "") -> str:
    hint = (
        "Create one with `ppcp keygen` and copy it to every machine, "
        "or point --psk-file or PPCP_PSK_FILE at it."
    )
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        where = f" ({source})" if source else ""
        raise CLIError(
            EXIT_CONFIG, f"no pre-shared key: {path}{where} does not exist. {hint}"
        ) from None
    except OSError as exc:
        raise CLIError(
            EXIT_CONFIG, f"cannot read the pre-shared key {path}: {exc.strerror}."
        ) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise CLIError(EXIT_CONFIG, f"the pre-shared key {path} is not a regular file.")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise CLIError(
                EXIT_CONFIG,
                f"permissions {mode:04o} for the pre-shared key {path} are too open: "
                f"other users could read it. Run `chmod 600 {path}`.",
            )
        data = f.read(64 * 1024 + 1)
    if len(data) > 64 * 1024:
        raise CLIError(EXIT_CONFIG, f"the pre-shared key {path} is too large to be a key.")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CLIError(EXIT_CONFIG, f"the pre-shared key {path} is not UTF-8 text.") from None
    if not text:
        raise CLIError(EXIT_CONFIG, f"the pre-shared key file {path} is empty. {hint}")
    return text


# -- effective values ----------------------------------------------------------------


def effective_port(settings: Settings, config: FileConfig) -> int:
    if settings.port is not None:
        return settings.port
    return config.port if config.port is not None else DEFAULT_PORT


def effective_timeout(settings: Settings, config: FileConfig) -> float:
    if settings.timeout is not None:
        return settings.timeout
    return config.timeout if config.timeout is not None else DEFAULT_TIMEOUT


def effective_discovery_port(settings: Settings, config: FileConfig) -> int | None:
    if settings.discovery_port is not None:
        return settings.discovery_port
    return config.discovery_port


# -- shell completion ------------------------------------------------------------------


def alias_names() -> list[str]:
    """Alias names from the config file, for shell completion (never fails)."""
    try:
        return sorted(load_config(Settings()).aliases)
    except Exception:  # completion must not print errors into the user's shell
        return []


def complete_name(ctx: Any, param: Any, incomplete: str) -> list[str]:
    return [name for name in alias_names() if name.startswith(incomplete)]


def complete_remote(ctx: Any, param: Any, incomplete: str) -> list[str]:
    """``NAME:`` for the aliases (remote paths themselves are not completed)."""
    if ":" in incomplete:
        return []
    return [f"{name}:" for name in alias_names() if name.startswith(incomplete)]
