"""The part producer: one request's body, spooled into parts that are closed and sent as they fill.

This is the hot path. Per chunk of the body the writer only appends to the open part's
spool file; everything else (closing a part, starting its upload, working out the next
part's size) happens once per part.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING, Any, Protocol

from ..base import StorageError, StorageRecord, StoredUpload
from .parts import Part, parts_to_json
from .spool import (
    fsync_path,
    give_up_files,
    spare_paths,
    sync_files,
    take_spare,
    write_all,
)
from .uploads import PartUploads

if TYPE_CHECKING:
    from pathlib import Path

    from .settings import S3Settings


class WriterHost(Protocol):
    """What a writer asks of the backend that opened it (:class:`~.backend.S3Backend`):
    named here, so that this module does not import the backend that imports it."""

    settings: S3Settings

    def spool_directory(self, upload_id: str) -> Path: ...

    def part_target(self, state: StorageRecord, length: int | None, number: int) -> int | None:
        ...

    def remember_spool(self, upload_id: str, sizes: list[int]) -> None: ...

    def carry_over(self, upload_id: str, uploads: PartUploads) -> None: ...


def _copy(parts: list[Part]) -> list[Part]:
    return [Part(part.size, part.etag) for part in parts]


class S3Writer:
    """Appends one request's body: spool, close full parts, upload them in the background.

    Its record (:attr:`storage`) is a new dict at each sync and discard, never one
    changed in place: the server may be saving the last one while the body goes on."""

    def __init__(
        self,
        backend: WriterHost,
        upload: StoredUpload,
        record: dict[str, Any],
        parts: list[Part],
        committed_stored: set[int],
        uploads: PartUploads | None,
    ) -> None:
        """``record`` is the upload's record as the writer opens it: ``parts`` as
        reconciled, the multipart upload they go to."""
        self._backend = backend
        self._settings = backend.settings
        self._upload = upload
        self._state = record
        self._directory = backend.spool_directory(upload.id)
        self._parts = parts
        self._target = self._target_of(len(parts))
        """The size at which the open part is closed; None when parts are never closed."""
        self._offset = sum(part.size for part in parts)
        self._opening_parts = _copy(parts)
        self._start = self._offset
        # The spool file of the part open at the start is kept while this writer lives,
        # whatever gets stored: discard() may have to go back to it.
        self._opening_number = len(parts)
        self._stored_at_last_sync = committed_stored
        self._uploads = uploads
        self._given_up: set[int] = set()
        """Stored parts whose files this writer removed or made spares."""
        self._spares = spare_paths(self._directory) if self._settings.fsync else ()
        self._fd: int | None = None
        self._unsynced: set[int] = set()
        self._new_files = False
        self._spool_known = True
        """Whether the spool files hold exactly the bytes of ``_parts`` (no failed write or cut)."""
        self._closed = False

    @property
    def offset(self) -> int:
        return self._offset

    @property
    def storage(self) -> StorageRecord:
        return self._state

    def _with_parts(self, parts: list[Part]) -> None:
        self._state = {**self._state, "parts": parts_to_json(parts)}

    def _target_of(self, number: int) -> int | None:
        return self._backend.part_target(self._state, self._upload.length, number)

    def _open_part_fd(self) -> int:
        if self._fd is None:
            number = len(self._parts)
            path = self._directory / str(number)
            if not self._directory.exists():
                self._directory.mkdir(parents=True, exist_ok=True)
                if self._settings.fsync:
                    fsync_path(self._directory.parent)
            if not path.exists():
                self._new_files = True
                take_spare(path, self._spares)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o640)
            os.lseek(fd, self._parts[-1].size, os.SEEK_SET)
            self._fd = fd
        return self._fd

    async def write(self, data: bytes) -> None:
        if self._uploads is not None and self._uploads.error is not None:
            raise self._uploads.error
        view = memoryview(data)
        while view:
            number = len(self._parts)
            part = self._parts[-1]
            target = self._target
            if target is not None and part.size >= target:
                await self._close_part(number, part.size)
                continue
            size = len(view) if target is None else min(len(view), target - part.size)
            fd = self._open_part_fd()
            try:
                write_all(fd, view[:size])
            except OSError:
                self._spool_known = False
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, part.size)
                    os.lseek(fd, part.size, os.SEEK_SET)
                raise
            part.size += size
            self._offset += size
            self._unsynced.add(number)
            view = view[size:]
            if target is not None and part.size >= target:
                await self._close_part(number, part.size)

    async def _close_part(self, number: int, size: int) -> None:
        """Part ``number`` is full: start its upload, open the next; wait while too many are queued."""
        assert self._uploads is not None and self._fd is not None
        max_parts = self._settings.max_parts
        if number + 1 > max_parts:
            raise StorageError(
                f"upload {self._upload.id} needs more than {max_parts} parts; "
                "raise --s3-part-size or declare the length earlier"
            )
        os.close(self._fd)
        self._fd = None
        self._parts.append(Part(0))
        self._target = self._target_of(number + 1)
        self._uploads.submit(number, (self._directory / str(number), size))
        await self._uploads.wait_room(self._settings.concurrency)

    def _record_results(self, parts: list[Part]) -> None:
        """Put the ETags of finished uploads into ``parts`` (closed parts only)."""
        if self._uploads is None:
            return
        for number, etag in self._uploads.results.items():
            if number < len(parts) and parts[number - 1].etag is None:
                parts[number - 1].etag = etag

    async def sync(self) -> int:
        """Make what was written so far durable. Writes may go on while it runs: what it
        returns and records is what was written when it began."""
        self._record_results(self._parts)
        offset = self._offset
        parts = _copy(self._parts)
        unsynced, self._unsynced = self._unsynced, set()
        new_files, self._new_files = self._new_files, False
        obsolete = self._stored_at_last_sync - self._given_up - {self._opening_number}
        directory, fsync, spares = self._directory, self._settings.fsync, self._spares

        def make_durable() -> None:
            if fsync:
                sync_files(directory, unsynced, entries=new_files)
            if obsolete:
                # Writers before this one gave up most of them already.
                give_up_files(directory, obsolete, spares)

        try:
            await asyncio.to_thread(make_durable)
        except BaseException:
            self._unsynced |= unsynced
            self._new_files = self._new_files or new_files
            raise
        self._given_up |= obsolete
        # Files of parts stored as of this sync may go once its state is committed: at the next sync.
        self._stored_at_last_sync = {
            number for number, part in enumerate(parts, 1) if part.etag is not None
        }
        self._with_parts(parts)
        return offset

    async def discard(self) -> None:
        """Forget every byte written since the writer was opened, synced or not."""
        opening = self._opening_parts
        if self._uploads is not None:
            await self._uploads.cancel(lambda number: number >= len(opening))
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        open_number, open_size = len(opening), opening[-1].size
        stale = range(open_number + 1, len(self._parts) + 1)
        directory = self._directory

        def cut_back() -> None:
            for number in stale:
                with contextlib.suppress(FileNotFoundError):
                    (directory / str(number)).unlink()
            path = directory / str(open_number)
            if path.exists():
                os.truncate(path, open_size)

        self._spool_known = False
        await asyncio.to_thread(cut_back)
        self._spool_known = True
        self._parts = _copy(opening)
        self._target = self._target_of(len(self._parts))
        self._record_results(self._parts)
        self._offset = self._start
        self._unsynced = {number for number in self._unsynced if number < open_number}
        if open_size:
            self._unsynced.add(open_number)
        self._with_parts(self._parts)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._spool_known:
            self._backend.remember_spool(self._upload.id, [part.size for part in self._parts])
        if self._uploads is None:
            return
        if self._uploads.error is None:
            # The parts in flight go on landing after the request; the next writer or
            # finish() takes them over, so receiving the next PATCH overlaps with them.
            # Finished ones go along too: their ETags are not recorded yet, and the next
            # writer would otherwise have to ask ListParts for them.
            self._backend.carry_over(self._upload.id, self._uploads)
        else:
            await self._uploads.stop()


class FinishedWriter:
    """The writer of an upload that takes no more bytes: stored as an object, or full."""

    def __init__(self, upload: StoredUpload) -> None:
        self._offset = upload.offset
        self._state = upload.storage

    @property
    def offset(self) -> int:
        return self._offset

    @property
    def storage(self) -> StorageRecord:
        return self._state

    async def write(self, data: bytes) -> None:
        if data:
            raise StorageError("the upload is finished; it takes no more bytes")

    async def sync(self) -> int:
        return self._offset

    async def discard(self) -> None:
        return None

    async def close(self) -> None:
        return None
