"""A kernel-side pre-filter for the responder's UDP sockets (Linux, best effort).

A classic BPF program (``SO_ATTACH_FILTER``) drops, before it is queued or
wakes Python, every datagram that cannot be a PING: outside
MIN_PING_SIZE..max_datagram bytes, or not starting with ``"PPCP" 0x01 0x01``.
Under a garbage flood the socket buffer then holds only PING-shaped
datagrams, so valid PINGs are not lost behind garbage, and the responder
spends its time on the one check that needs the key (the tag).

The same checks run again in :class:`~ppcp.discovery.abuse.ResponderCore`;
the filter only makes them cheaper.  Elsewhere than Linux, or if attaching
fails, nothing changes.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys

from ppcp.discovery.wire import MAGIC, MIN_PING_SIZE, TYPE_PING, WIRE_VERSION

SO_ATTACH_FILTER = 26
UDP_HEADER = 8  # for UDP sockets the filter sees the packet from the UDP header on

# Classic BPF opcodes.
_LD_LEN = 0x80  # A = packet length
_LD_W_ABS = 0x20  # A = u32 at k
_LD_H_ABS = 0x28  # A = u16 at k
_JGE = 0x35
_JGT = 0x25
_JEQ = 0x15
_RET = 0x06


def ping_filter(max_datagram: int) -> list[tuple[int, int, int, int]]:
    """The program: (code, jump-if-true, jump-if-false, k) per instruction."""
    return [
        (_LD_LEN, 0, 0, 0),
        (_JGE, 0, 6, UDP_HEADER + MIN_PING_SIZE),  # too short -> drop
        (_JGT, 5, 0, UDP_HEADER + max_datagram),  # too long -> drop
        (_LD_W_ABS, 0, 0, UDP_HEADER),
        (_JEQ, 0, 3, int.from_bytes(MAGIC, "big")),  # not "PPCP" -> drop
        (_LD_H_ABS, 0, 0, UDP_HEADER + 4),
        (_JEQ, 0, 1, WIRE_VERSION << 8 | TYPE_PING),  # not v1 PING -> drop
        (_RET, 0, 0, 0x40000),  # accept the whole datagram
        (_RET, 0, 0, 0),  # drop
    ]


def attach(sock: socket.socket, max_datagram: int) -> bool:
    """Attach the filter to ``sock``; False if this platform cannot."""
    if not sys.platform.startswith("linux"):
        return False
    program = ping_filter(max_datagram)
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in program))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    fprog = struct.pack("HP", len(program), ctypes.addressof(code))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError:
        return False
    return True
