"""Files discovery keeps between runs: the server id and the client's address cache.

* The server id is 16 random bytes, stored as 32 hex digits in
  ``$XDG_STATE_HOME/ppcp/server-<port>.id`` (default ``~/.local/state``), so a
  server keeps its identity across restarts and address changes.
* The address cache maps server ids to their last-known addresses, in
  ``$XDG_CACHE_HOME/ppcp/discovery.json`` (default ``~/.cache``); a scan PINGs
  them by unicast before broadcasting.  It is only a hint: a stale or tampered
  entry costs one unanswered PING.

Both files are written atomically (temporary file + rename); an unreadable
file is treated as absent, never as an error.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from msgspec import Struct

from ppcp.discovery.collect import ServerInfo
from ppcp.discovery.wire import SERVER_ID_LEN

log = logging.getLogger("ppcp.discovery")

CACHE_MAX_SERVERS = 32
CACHE_MAX_ADDRESSES = 8
CACHE_MAX_BYTES = 64 << 10


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var, "")
    base = Path(value) if os.path.isabs(value) else Path.home() / fallback
    return base / "ppcp"


def default_server_id_path(tcp_port: int) -> Path:
    return _xdg("XDG_STATE_HOME", ".local/state") / f"server-{tcp_port}.id"


def default_cache_path() -> Path:
    return _xdg("XDG_CACHE_HOME", ".cache") / "discovery.json"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    import tempfile  # only when the cache is written: not on every client start

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_server_id(path: Path, rng: Callable[[int], bytes] = os.urandom) -> bytes:
    """The id stored at ``path``, creating it if missing or corrupt.

    If the file cannot be written the id still works, but only for this run.
    """
    try:
        stored = bytes.fromhex(path.read_text().strip())
        if len(stored) == SERVER_ID_LEN:
            return stored
        log.warning("ignoring malformed server id in %s", path)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable server id %s: %s", path, exc)
    new = rng(SERVER_ID_LEN)
    try:
        _write_atomic(path, new.hex() + "\n")
    except OSError as exc:
        log.warning("cannot save the server id to %s (%s); it will change on restart", path, exc)
    return new


class CacheEntry(Struct, frozen=True):
    name: str
    seen: float
    # (host, discovery port)
    addresses: tuple[tuple[str, int], ...]


class AddressCache:
    """Last-known addresses per server id, at most :data:`CACHE_MAX_SERVERS`.

    On disk: ``{"version": 1, "servers": {id: {"name", "seen", "addresses":
    [[host, discovery_port], ...]}}}``.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, CacheEntry] = _read_cache(path) if path is not None else {}

    def targets(self) -> list[tuple[str, str, int]]:
        """(server name, host, discovery port), most recently seen server first."""
        ordered = sorted(self.entries.values(), key=lambda e: -e.seen)
        return [(e.name, host, port) for e in ordered for host, port in e.addresses]

    def update(
        self, servers: Iterable[ServerInfo], ports: dict[tuple[str, str], int], now: float
    ) -> None:
        """Remember the addresses of verified servers (and the UDP port that answered)."""
        for info in servers:
            addresses = tuple(
                (host, ports[(info.id, host)])
                for host in info.addresses
                if (info.id, host) in ports
            )[:CACHE_MAX_ADDRESSES]
            if info.verified and addresses:
                self.entries[info.id] = CacheEntry(info.name, now, addresses)
        if len(self.entries) > CACHE_MAX_SERVERS:
            keep = sorted(self.entries.items(), key=lambda kv: -kv[1].seen)
            self.entries = dict(keep[:CACHE_MAX_SERVERS])

    def save(self) -> None:
        if self.path is None:
            return
        doc = {
            "version": 1,
            "servers": {
                sid: {"name": e.name, "seen": e.seen, "addresses": [list(a) for a in e.addresses]}
                for sid, e in self.entries.items()
            },
        }
        try:
            _write_atomic(self.path, json.dumps(doc))
        except OSError as exc:
            log.debug("cannot save the discovery cache %s: %s", self.path, exc)


def _read_cache(path: Path) -> dict[str, CacheEntry]:
    try:
        with path.open("rb") as f:
            raw = f.read(CACHE_MAX_BYTES + 1)
        doc = json.loads(raw) if len(raw) <= CACHE_MAX_BYTES else None
    except (OSError, ValueError, RecursionError):  # RecursionError: nested too deeply
        return {}
    servers = doc.get("servers") if isinstance(doc, dict) else None
    if not isinstance(servers, dict):
        return {}
    clean = {}
    for sid, entry in list(servers.items())[:CACHE_MAX_SERVERS]:
        parsed = _parse_entry(sid, entry)
        if parsed is not None:
            clean[sid] = parsed
    return clean


def _parse_entry(sid: object, entry: object) -> CacheEntry | None:
    """A validated entry, or None: the file is untrusted input like any other."""
    if not isinstance(sid, str) or len(sid) != 2 * SERVER_ID_LEN or not isinstance(entry, dict):
        return None
    try:
        bytes.fromhex(sid)
        addresses = []
        for host, port in entry.get("addresses", [])[:CACHE_MAX_ADDRESSES]:
            ipaddress.ip_address(str(host).split("%", 1)[0])
            if not 0 < int(port) <= 0xFFFF:
                return None
            addresses.append((str(host), int(port)))
        seen = min(float(entry.get("seen", 0.0)), time.time())
        return CacheEntry(str(entry.get("name", "")), seen, tuple(addresses))
    except (TypeError, ValueError):
        return None
