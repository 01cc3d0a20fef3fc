"""Known-answer vectors for the channel layer, generated from the code.

Two :class:`~ppcp.control.channels.ChannelMux` objects (client and server)
run over recording stand-ins for the connection, so the exact plaintext of
every channel record is captured before encryption.  Each record is also
fed to the other side's mux and must produce the expected event, so a vector
can only be printed if encoder and decoder agree.

    python tests/channels/channel_vectors.py            # print the vectors block
    python tests/channels/channel_vectors.py --table    # print the state table
    python tests/channels/channel_vectors.py --update   # rewrite the blocks in docs/

The blocks sit between ``<!-- channel-vectors:begin/end -->`` and
``<!-- channel-state-table:begin/end -->`` in docs/rfc.md (section 15.5 and
Appendix A.3).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

from ppcp.control.channels import (
    CHANNEL_TRANSITIONS,
    DEFAULT_MAX_PACKET,
    DEFAULT_WINDOW,
    ChannelAccepted,
    ChannelClosed,
    ChannelData,
    ChannelEOF,
    ChannelMux,
    ChannelOpenRequested,
    ChannelRefused,
    ChannelRequest,
    HeartbeatReceived,
    WindowOpened,
)
from ppcp.control.exec import ExecSpec, encode_exit_status
from ppcp.control.shell import ShellSpec
from ppcp.core.errors import CloseCode
from ppcp.core.events import Event
from ppcp.core.states import Role
from ppcp.transport.frames import Frame, FrameType, encode_header

DOCS = Path(__file__).resolve().parents[2] / "docs"
VECTOR_BLOCK = "channel-vectors"
TABLE_BLOCK = "channel-state-table"
HEX_WIDTH = 64


class RecordingConnection:
    """Stands in for Connection: records (type, flags, plaintext) instead of encrypting."""

    def __init__(self, role: Role) -> None:
        self.role = role
        self.is_open = True
        self.record_handler: Any = None
        self.records: list[tuple[int, int, bytes]] = []

    def send_record(self, frame_type: int, plaintext: bytes, flags: int = 0) -> None:
        self.records.append((frame_type, flags, bytes(plaintext)))


class _Side:
    def __init__(self, role: Role) -> None:
        self.conn = RecordingConnection(role)
        self.mux = ChannelMux(self.conn)  # type: ignore[arg-type]


def generate() -> list[tuple[str, int, int, bytes]]:
    """``(name, record type, flags, plaintext)`` for each documented record."""
    client, server = _Side(Role.CLIENT), _Side(Role.SERVER)
    out: list[tuple[str, int, int, bytes]] = []

    def step(name: str, src: _Side, dst: _Side, expect: list[Event]) -> None:
        records = src.conn.records
        if len(records) != 1:
            raise RuntimeError(f"{name}: expected one record, got {len(records)}")
        ftype, flags, plaintext = records.pop()
        header = encode_header(ftype, flags, len(plaintext) + 16)
        events = dst.mux.handle_record(Frame(ftype, flags, header, b""), plaintext)
        if events != expect:
            raise RuntimeError(f"{name}: decoded as {events}, expected {expect}")
        out.append((name, ftype, flags, plaintext))

    exec_payload = ExecSpec.build(["uname", "-a"], None, None, None).encode()
    cid = client.mux.open_channel("exec", exec_payload)
    step("channel_open_exec", client, server, [ChannelOpenRequested(cid, "exec", exec_payload)])
    server.mux.accept(cid, b'{"pid":4242}')
    step("channel_accept", server, client, [ChannelAccepted(cid, b'{"pid":4242}')])
    client.mux.send_eof(cid)
    step("channel_eof", client, server, [ChannelEOF(cid)])
    server.mux.send_data(cid, b"Linux\n", 0)
    step("channel_data_stdout", server, client, [ChannelData(cid, 0, b"Linux\n")])
    server.mux.send_data(cid, b"warning\n", 1)
    step("channel_data_stderr", server, client, [ChannelData(cid, 1, b"warning\n")])
    client.mux.send_request(cid, "signal", b'{"signal":%d}' % signal.SIGTERM)
    step(
        "channel_request_signal",
        client,
        server,
        [ChannelRequest(cid, "signal", b'{"signal":%d}' % signal.SIGTERM)],
    )
    client.mux.consume(cid, 2 << 20)  # the application read half the 4 MiB window
    step("window_adjust", client, server, [WindowOpened(cid)])
    status = encode_exit_status(0, False)
    server.mux.send_request(cid, "exit-status", status)
    step(
        "channel_request_exit_status", server, client, [ChannelRequest(cid, "exit-status", status)]
    )
    server.mux.close_channel(cid)
    step("channel_close", server, client, [ChannelClosed(cid, CloseCode.NORMAL, "")])
    client.conn.records.clear()  # the client's answering CLOSE is the same layout

    shell_payload = ShellSpec("xterm-256color", 80, 24, None).encode()
    sid = client.mux.open_channel("shell", shell_payload)
    step("channel_open_shell", client, server, [ChannelOpenRequested(sid, "shell", shell_payload)])
    server.mux.reject(sid, CloseCode.POLICY_DENIED, "interactive shells are disabled")
    step(
        "channel_reject",
        server,
        client,
        [ChannelRefused(sid, CloseCode.POLICY_DENIED, "interactive shells are disabled")],
    )
    msg_payload = b'{"topic":"default"}'
    mid = client.mux.open_channel("message", msg_payload)
    step(
        "channel_open_message", client, server, [ChannelOpenRequested(mid, "message", msg_payload)]
    )
    server.mux.accept(mid)
    client.mux.handle_record(
        Frame(FrameType.CHANNEL_ACCEPT, 0, b"", b""), server.conn.records.pop()[2]
    )
    framed = len(b"hello").to_bytes(4, "big") + b"hello"
    client.mux.send_data(mid, framed)
    step("channel_data_message", client, server, [ChannelData(mid, 0, framed)])

    client.mux.send_heartbeat(1)
    step("heartbeat", client, server, [])
    step("heartbeat_reply", server, client, [HeartbeatReceived(1)])
    return out


def _wrap(hex_value: str) -> list[str]:
    return ["    " + hex_value[i : i + HEX_WIDTH] for i in range(0, len(hex_value), HEX_WIDTH)]


def vectors_markdown() -> str:
    lines = [
        "Inputs: both sides use the default channel settings (window "
        f"{DEFAULT_WINDOW >> 20} MiB = 0x{DEFAULT_WINDOW:08x},",
        f"max packet {DEFAULT_MAX_PACKET >> 20} MiB = 0x{DEFAULT_MAX_PACKET:08x}). "
        "The client opens channel 1 for exec",
        '`["uname", "-a"]`, the server accepts it (pid 4242), the client sends EOF, the',
        'server sends `"Linux\\n"` on stdout and `"warning\\n"` on stderr, the client asks',
        "for SIGTERM and returns 2 MiB of window, the server reports exit status 0 and",
        "closes. The client then opens channel 3 for a shell (rejected by policy) and",
        'channel 5 for messages, on which it sends the message `"hello"`. Last, the',
        "client sends heartbeat 1 and the server answers it.",
        "",
        "Each value is the record plaintext, i.e. what is sealed with AES-GCM (section 10.1)",
        "as the body of a record of the given type and flags.",
        "",
        "```text",
    ]
    for name, ftype, flags, plaintext in generate():
        lines.append(
            f"{name} ({FrameType(ftype).name} 0x{ftype:02x}, flags 0x{flags:02x}, "
            f"{len(plaintext)} bytes)"
        )
        lines.extend(_wrap(plaintext.hex()))
    lines.append("```")
    return "\n".join(lines)


def state_table() -> str:
    lines = ["| State | Record received | Next state |", "| --- | --- | --- |"]
    for state, row in CHANNEL_TRANSITIONS.items():
        if not row:
            lines.append(f"| {state.name} | (none) | - |")
        for ftype, nxt in row.items():
            lines.append(f"| {state.name} | {ftype.name} | {nxt.name if nxt else '(freed)'} |")
    return "\n".join(lines)


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def find_block(name: str) -> tuple[Path, str] | None:
    """``(file, content)`` of block ``name`` in docs/rfc.md."""
    begin, end = _markers(name)
    for path in (DOCS / "rfc.md",):
        if not path.exists():
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        if begin in lines:
            start = lines.index(begin)
            stop = lines.index(end, start)
            return path, "\n".join(lines[start + 1 : stop])
    return None


def generated() -> dict[str, str]:
    return {VECTOR_BLOCK: vectors_markdown(), TABLE_BLOCK: state_table()}


def update() -> list[str]:
    changed = []
    for name, content in generated().items():
        found = find_block(name)
        if found is None:
            raise SystemExit(f"no {name} block in docs/")
        path, _ = found
        begin, end = _markers(name)
        lines = path.read_text(encoding="utf-8").splitlines()
        start = lines.index(begin)
        stop = lines.index(end, start)
        new = [*lines[: start + 1], *content.splitlines(), *lines[stop:]]
        path.write_text("\n".join(new) + "\n", encoding="utf-8")
        changed.append(f"{path.name}:{name}")
    return changed


if __name__ == "__main__":
    if "--update" in sys.argv:
        print("\n".join(update()))
    elif "--table" in sys.argv:
        print(state_table())
    else:
        print(vectors_markdown())
