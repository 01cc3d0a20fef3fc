"""What plain Python can move through loopback on this machine, with no protocol at all.

Two processes (as the two PPCP ends are): one sends SIZE bytes in 1 MiB
records over a TCP loopback connection, the other receives them with
``recv_into`` into one reused buffer.  Stages add, one at a time, the work a
file transfer cannot avoid:

- ``tcp``: the kernel's copies only;
- ``tcp+aes``: AES-256-GCM ``encrypt_into``/``decrypt_into`` per record;
- ``tcp+aes+file``: read the source with ``preadv`` and write the copy with
  ``pwrite``, both on tmpfs;
- ``tcp+aes+file+sha256``: SHA-256 of the data at both ends (what
  ``checksum=True`` adds).

No framing, no flow control, no event loop, no threads: a ceiling for any
Python implementation, against which PPCP's put/get figures can be read::

    python -m bench.floor                   # 1 GiB per stage
    python -m bench.floor --size-mib 64 --json floor.json

Every loop is bounded by the byte count; each receiver has an alarm.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MiB = 1 << 20
RECORD = MiB
TAG = 16
STAGES = ("tcp", "tcp+aes", "tcp+aes+file", "tcp+aes+file+sha256")
KEY = bytes(range(32))
NONCE = bytes(12)  # one key, one nonce: acceptable only because nothing here is secret


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def receive(sock: socket.socket, size: int, stage: str, out_path: Path, report: int) -> None:
    """Child process: receive ``size`` bytes of records; write the CPU used to ``report``."""
    aes = "aes" in stage
    record = RECORD + (TAG if aes else 0)
    buf = bytearray(record)
    view = memoryview(buf)
    plain = bytearray(RECORD)
    aead = AESGCM(KEY)
    digest = hashlib.sha256() if "sha256" in stage else None
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) if "file" in stage else -1
    got = 0
    while got < size:
        filled = 0
        while filled < record:
            n = sock.recv_into(view[filled:])
            if not n:
                raise SystemExit("sender went away")
            filled += n
        data = buf
        if aes:
            aead.decrypt_into(NONCE, buf, None, plain)
            data = plain
        if digest is not None:
            digest.update(data)
        if fd >= 0:
            os.pwrite(fd, data, got)
        got += RECORD
    if fd >= 0:
        os.close(fd)
    os.write(report, f"{cpu_seconds()}\n".encode())


def run_stage(stage: str, size: int, work: Path) -> dict[str, Any]:
    src, dst = work / "src.bin", work / "dst.bin"
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            signal.alarm(120)
            listener.close()
            with socket.create_connection(("127.0.0.1", port)) as sock:
                receive(sock, size, stage, dst, report_w)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(report_w)
    sock, _ = listener.accept()
    listener.close()
    aead = AESGCM(KEY)
    record = bytearray(RECORD)
    sealed = bytearray(RECORD + TAG)
    digest = hashlib.sha256() if "sha256" in stage else None
    fd = os.open(src, os.O_RDONLY) if "file" in stage else -1
    cpu0, started = cpu_seconds(), time.perf_counter()
    try:
        for i in range(size // RECORD):
            if fd >= 0:
                os.preadv(fd, [record], i * RECORD)
            if digest is not None:
                digest.update(record)
            if "aes" in stage:
                aead.encrypt_into(NONCE, record, None, sealed)
                sock.sendall(sealed)
            else:
                sock.sendall(record)
        _, status = os.waitpid(pid, 0)
    finally:
        sock.close()
        if fd >= 0:
            os.close(fd)
    seconds = time.perf_counter() - started
    sender_cpu = cpu_seconds() - cpu0
    with os.fdopen(report_r) as r:
        line = r.read().strip()
    if status != 0 or not line:
        raise RuntimeError(f"stage {stage}: the receiver failed (status {status})")
    gib = size / (1 << 30)
    return {
        "stage": stage,
        "seconds": round(seconds, 4),
        "mib_s": round(size / MiB / seconds, 1),
        "sender_cpu_s_per_gib": round(sender_cpu / gib, 3),
        "receiver_cpu_s_per_gib": round(float(line) / gib, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    size = max(1, args.size_mib) * MiB
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    results = []
    with tempfile.TemporaryDirectory(prefix="ppcp-bench-floor-", dir=base) as tmp:
        work = Path(tmp)
        with open(work / "src.bin", "wb") as f:
            block = os.urandom(RECORD)
            for _ in range(size // RECORD):
                f.write(block)
        for stage in STAGES:
            result = run_stage(stage, size, work)
            results.append(result)
            print(
                f"{stage:22} {result['mib_s']:8.1f} MiB/s  cpu/GiB sender "
                f"{result['sender_cpu_s_per_gib']:.2f} s receiver "
                f"{result['receiver_cpu_s_per_gib']:.2f} s",
                flush=True,
            )
    out = {"size_mib": args.size_mib, "stages": results}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
