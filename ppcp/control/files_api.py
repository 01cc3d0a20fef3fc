"""put/get on a session, apart from their implementation (ppcp/control/files.py).

A session's class needs these methods, not the transfer machinery behind
them: kept here, a command that never moves a file (``ppcp exec``, most
library uses) does not import it, about 10 ms of every such process start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from ppcp.control.files import LocalPath
    from ppcp.control.transfer import ProgressCallback, TransferResult
    from ppcp.transport.aio_driver import AsyncSession
    from ppcp.transport.blocking import Session


class FilesMixin:
    """asyncio client methods mixed into :class:`ppcp.aio.AsyncSession`."""

    async def put(
        self,
        local: LocalPath,
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
        receives the file inside it.  ``progress(done, total, bytes_per_s)``
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
        local: LocalPath,
        *,
        recursive: bool = False,
        progress: ProgressCallback | None = None,
        resume: bool = True,
        compress: bool = False,
        checksum: bool = False,
    ) -> TransferResult:
        """Download ``remote`` (relative to the server's root) to ``local``; options as
        :meth:`put`."""
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
        local: LocalPath,
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
        local: LocalPath,
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
