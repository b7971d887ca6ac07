"""Uploads as plain files: the bytes of upload ``{id}`` are the file ``{directory}/{id}``.

Writes go to the page cache inline on the event loop (a thread hop per body chunk
halves throughput); only the syncs, the slow part, go to the kernel as asynchronous
requests (:mod:`.kernel_syncs`; else to threads), while further writes go on. With
``fsync=False`` nothing is synced: the kernel writes the page cache back, which
survives a crash of the process but not of the machine.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from .base import StorageError, StorageRecord, StoredUpload
from .blocking import Uncancellable
from .kernel_syncs import SYNCS

READ_CHUNK = 1024 * 1024


class DataMissing(StorageError):
    """The file holds fewer bytes than the recorded offset: storage lost data."""


def _copy_exactly(source: BinaryIO, target: BinaryIO, size: int, upload_id: str) -> None:
    """Copy the first ``size`` bytes of ``source``; a file that holds fewer lost data."""
    left = size
    while left > 0:
        chunk = source.read(min(READ_CHUNK, left))
        if not chunk:
            raise DataMissing(f"upload {upload_id} ends at {size - left}, expected {size}")
        target.write(chunk)
        left -= len(chunk)


async def _fsync_directory(directory: str) -> None:
    """Opening a directory looks up a name the kernel holds: cheap enough for the event
    loop, as opening an upload's file is."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        await SYNCS.fsync(fd)
    finally:
        os.close(fd)


class DirectorySync:
    """Makes the entries of new files durable: one directory fsync for many files.

    A file needs a directory sync that began after the file was made. Syncs that
    many uploads ask for at once share one fsync (and one journal commit) instead of
    queueing one each.

    A failed sync may have dropped the entries it was writing, and Linux reports that
    once: a later sync that succeeds says nothing of them. So the files made before a
    sync failed fail every later wait; files made after it wait for a sync of their own.
    """

    def __init__(self, directory: Path) -> None:
        self._directory = os.fspath(directory)
        """A ``str``: a ``Path`` costs every ``os.open`` a call to its ``__fspath__``."""
        self._started = 0
        self._done = 0
        self._running: Uncancellable[None] | None = None
        """Settled when the sync under way ends."""
        self._failed: tuple[int, OSError] | None = None
        """The ticket up to which files may have lost their entries, and why."""

    def ticket(self) -> int:
        """Taken once the file exists: a sync numbered above it covers the file."""
        return self._started

    async def wait(self, ticket: int) -> None:
        while True:
            if self._failed is not None and ticket <= self._failed[0]:
                error = self._failed[1]
                raise OSError(error.errno, f"syncing the directory failed: {error.strerror}")
            if self._done > ticket:
                return
            if self._running is not None:
                await self._running
            else:
                await self._sync()

    async def _sync(self) -> None:
        """One sync, which those who come while it runs wait for. Cancelled meanwhile,
        they and its caller still wait for it to end (:class:`~.blocking.Uncancellable`);
        one whose caller was cancelled is not counted done, and the next waiter syncs."""
        number = self._started = self._started + 1
        running: Uncancellable[None] = Uncancellable(loop=asyncio.get_running_loop())
        self._running = running
        try:
            await _fsync_directory(self._directory)
            self._done = max(self._done, number)
        except OSError as exc:
            # Files made while it ran (ticket ``number``) may have been in it too.
            self._failed = (number, exc)
            self._started = number + 1
        finally:
            self._running = None
            running.set_result(None)


class FileWriter:
    def __init__(
        self, fd: int, offset: int, storage: StorageRecord, fsync: bool = True,
        directory: tuple[DirectorySync, int] | None = None,
    ) -> None:
        """``storage`` is the upload's record, which a file never changes."""
        self._fd = fd
        self._fsync = fsync
        self._directory = directory
        """The directory sync (and ticket) the first bytes wait for, when no byte of the
        file was synced yet."""
        self._start = offset
        self._offset = offset
        self._sync_failed: OSError | None = None
        self._storage = storage

    @property
    def offset(self) -> int:
        return self._offset

    @property
    def storage(self) -> StorageRecord:
        return self._storage

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, self._offset)
            self._offset += written
            view = view[written:]

    async def sync(self, *, body_goes_on: bool = False) -> int:
        # Linux reports a failed writeback (ENOSPC on NFS, EIO) to one fdatasync only; the
        # next one succeeds with the bytes lost. So a failed sync fails every later one.
        if self._sync_failed is not None:
            raise OSError(self._sync_failed.errno, self._sync_failed.strerror)
        offset = self._offset
        if not self._fsync:
            return offset
        try:
            # Writes that come while this runs are the next sync's: the offset was taken before.
            await SYNCS.fdatasync(self._fd)
            if self._directory is not None:
                directory, ticket = self._directory
                await directory.wait(ticket)
                self._directory = None
        except OSError as exc:
            self._sync_failed = exc
            raise
        return offset

    async def discard(self) -> None:
        os.ftruncate(self._fd, self._start)
        self._offset = self._start

    async def close(self) -> None:
        os.close(self._fd)


class FilesystemBackend:
    def __init__(self, directory: str | Path, fsync: bool = True) -> None:
        self._fsync = fsync
        self.directory = Path(directory)
        self._directory_sync = DirectorySync(self.directory)
        self._prefix = os.path.join(self.directory, "")

    def path(self, upload_id: str) -> Path:
        return Path(self._file(upload_id))

    def _file(self, upload_id: str) -> str:
        """The name of ``upload_id``'s file, as a string: with pathlib, naming the file
        cost the create and the open of every upload some twenty Python calls."""
        if "/" in upload_id or upload_id.startswith("."):
            raise ValueError(f"not an upload id: {upload_id!r}")
        return self._prefix + upload_id

    def locate(self, upload_id: str) -> dict[str, str]:
        return {"path": str(self.path(upload_id).absolute())}

    async def start(self) -> None:
        """Make the data directory if it is missing, and see that it takes a file: one that
        cannot be used stops the start, instead of failing every upload."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise StorageError(f"the data directory {self.directory} is not a directory") from None
        except OSError as exc:
            raise StorageError(
                f"cannot make the data directory {self.directory}: {exc.strerror or exc}"
            ) from None
        await self.check()

    async def stop(self) -> None:
        return None

    async def check(self) -> None:
        """The directory takes a new file (a name no upload id can have)."""

        def probe() -> None:
            fd, name = tempfile.mkstemp(prefix="aiotusd.readyz-", dir=self.directory)
            os.close(fd)
            os.unlink(name)

        try:
            await asyncio.to_thread(probe)
        except OSError as exc:
            raise StorageError(
                f"cannot write to the data directory {self.directory}: {exc.strerror or exc}"
            ) from None

    async def create(self, upload: StoredUpload) -> StorageRecord:
        """An empty file, made inline: creating it costs less than a thread hop. The record
        stays as it is: the file's name is the upload's id.

        Its directory entry becomes durable with its first synced bytes (see
        :class:`FileWriter`), not here: an upload at offset 0 has nothing to lose, and a
        file that a power cut took with it is made again, empty, by :meth:`open_writer`.
        """
        fd = os.open(self._file(upload.id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        os.close(fd)
        return upload.storage

    async def open_writer(self, upload: StoredUpload) -> FileWriter:
        fd = os.open(self._file(upload.id), os.O_WRONLY | os.O_CREAT, 0o640)
        try:
            size = os.fstat(fd).st_size
            if size < upload.offset:
                raise DataMissing(
                    f"upload {upload.id} has {size} bytes on disk but offset {upload.offset}"
                )
            if size > upload.offset:
                os.ftruncate(fd, upload.offset)
        except BaseException:
            os.close(fd)
            raise
        # Until an offset above 0 is recorded, the file may be as new as its directory entry.
        directory = (
            (self._directory_sync, self._directory_sync.ticket()) if upload.offset == 0 else None
        )
        return FileWriter(fd, upload.offset, upload.storage, self._fsync, directory)

    async def read(self, upload: StoredUpload, start: int, end: int) -> AsyncIterator[bytes]:
        if start >= end:
            # Nothing to read, and an empty upload's file need not have survived a power cut.
            return
        fd = await asyncio.to_thread(os.open, self.path(upload.id), os.O_RDONLY)
        try:
            position = start
            while position < end:
                chunk = await asyncio.to_thread(
                    os.pread, fd, min(READ_CHUNK, end - position), position
                )
                if not chunk:
                    raise DataMissing(f"upload {upload.id} ends at {position}, expected {end}")
                position += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    async def delete(self, upload: StoredUpload) -> None:
        try:
            await asyncio.to_thread(os.unlink, self.path(upload.id))
        except FileNotFoundError:
            pass

    async def concatenate(
        self, final: StoredUpload, partials: list[StoredUpload]
    ) -> StorageRecord:
        """Copy the partials' bytes into the final's file: each partial's ``offset`` bytes,
        which its file must hold (else :class:`DataMissing`, and no final is made)."""

        def copy() -> None:
            with open(self.path(final.id), "wb") as target:
                for partial in partials:
                    if partial.offset == 0:
                        # Nothing to copy, and an empty file need not have survived a power cut.
                        continue
                    with open(self.path(partial.id), "rb") as source:
                        _copy_exactly(source, target, partial.offset, partial.id)
                if self._fsync:
                    os.fdatasync(target.fileno())

        await asyncio.to_thread(copy)
        if self._fsync:
            await _fsync_directory(os.fspath(self.directory))
        return final.storage

    async def declare_length(self, upload: StoredUpload, length: int) -> StorageRecord:
        """Nothing to prepare: a file grows as it is written."""
        return upload.storage
