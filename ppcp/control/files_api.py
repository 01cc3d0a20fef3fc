"""put/get on a session, apart from their implementation (ppcp/control/files.py).

A session's class needs these methods, not the transfer machinery behind
them: kept here, a command that never moves a file (``ppcp exec``, most
library uses) does not import it, about 10 ms of every such process start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, BinaryIO, cast

if TYPE_CHECKING:
    from ppcp.control.files import LocalPath
    from ppcp.control.transfer import ProgressCallback, TransferResult
    from ppcp.transport.aio_driver import AsyncSession
    from ppcp.transport.blocking import Session


class FilesMixin:
    """asyncio client methods mixed into :class:`ppcp.aio.AsyncSession`."""

    async def put(
        self,
        local: LocalPath | BinaryIO,
        remote: str,
        *,
        recursive: bool = False,
        progress: ProgressCallback | None = None,
        resume: bool = True,
        compress: bool = False,
        checksum: bool = False,
    ) -> TransferResult:
        """Upload ``local`` (a file, or a directory with ``recursive=True``) to ``remote``.

        ``remote`` is relative to the server's root; an existing directory
        receives the file inside it.  ``local`` may also be a binary stream
        open for reading (``sys.stdin.buffer``): what it holds until its end
        is sent, never resumed, to the file ``remote`` names (a stream has no
        name of its own), as ``"type": "stream"`` (RFC 16.4.4), which servers
        older than that refuse.  ``progress(done, total, bytes_per_s)``
        is called as data moves.  An interrupted upload resumes from what
        the server verifiably holds when ``resume`` is true.  ``compress``
        asks for zlib when both peers support it.  ``checksum`` has both
        ends compute the file's SHA-256 and compare it (reported in
        ``TransferResult.sha256``); the session's AEAD already authenticates
        every byte, so this costs CPU and buys a digest, not safety.
        """
        from ppcp.control.files import put_files

        return await put_files(
            cast("AsyncSession", self),
            local,
            remote,
            recursive,
            progress,
            resume,
            compress,
            checksum,
        )

    async def get(
        self,
        remote: str,
        local: LocalPath | BinaryIO,
        *,
        recursive: bool = False,
        progress: ProgressCallback | None = None,
        resume: bool = True,
        compress: bool = False,
        checksum: bool = False,
    ) -> TransferResult:
        """Download ``remote`` (relative to the server's root) to ``local``; options as
        :meth:`put`.

        ``local`` may also be a binary stream open for writing
        (``sys.stdout.buffer``): the file's bytes are written to it in order,
        without a part file or a resume; a directory cannot be.  A checksum
        mismatch is then found only after the bytes were written.
        """
        from ppcp.control.files import get_files

        return await get_files(
            cast("AsyncSession", self),
            remote,
            local,
            recursive,
            progress,
            resume,
            compress,
            checksum,
        )


class SyncFilesMixin:
    """Blocking client methods mixed into :class:`ppcp.Session`.

    ``progress`` is called on the PPCP loop thread; it must not call back into
    the blocking API.
    """

    def put(
        self,
        local: LocalPath | BinaryIO,
        remote: str,
        *,
        recursive: bool = False,
        progress: ProgressCallback | None = None,
        resume: bool = True,
        compress: bool = False,
        checksum: bool = False,
    ) -> TransferResult:
        """Upload ``local`` to ``remote``; see :meth:`FilesMixin.put`."""
        from ppcp.transport.blocking import run

        return run(
            cast("Session", self).aio.put(
                local,
                remote,
                recursive=recursive,
                progress=progress,
                resume=resume,
                compress=compress,
                checksum=checksum,
            )
        )

    def get(
        self,
        remote: str,
        local: LocalPath | BinaryIO,
        *,
        recursive: bool = False,
        progress: ProgressCallback | None = None,
        resume: bool = True,
        compress: bool = False,
        checksum: bool = False,
    ) -> TransferResult:
        """Download ``remote`` to ``local``; see :meth:`FilesMixin.get`."""
        from ppcp.transport.blocking import run

        return run(
            cast("Session", self).aio.get(
                remote,
                local,
                recursive=recursive,
                progress=progress,
                resume=resume,
                compress=compress,
                checksum=checksum,
            )
        )
