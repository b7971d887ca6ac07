"""The part producer: one request's body, spooled into parts that are closed and sent as they fill.

This is the hot path. Per chunk of the body the writer only appends to the open part's
spool file; everything else (closing a part, starting its upload, working out the next
part's size) happens once per part.

What a sync may claim is only what any server can read: bytes in stored parts and in tail
objects (see :mod:`.tails`). A sync while the body goes on (a periodic commit) puts
nothing and claims what is there already: the bytes of the open part will be in a part
soon, and a tail object of them would be put for nothing. The last sync of a request waits
for the parts in flight and puts the bytes it added to the open part as a tail object, or,
once the upload is full, the open part as its last part (or as the whole object when it
has no multipart upload).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..base import StorageError, StorageRecord, StoredUpload
from . import tails
from .parts import Part, parts_to_json
from .spool import read_part, remove_files, write_all
from .tails import MAX_CHAIN, Chain, Tail, chains, holding, tails_to_json
from .uploads import PartUploads

if TYPE_CHECKING:
    from pathlib import Path

    from .client import S3Client
    from .settings import S3Settings


@dataclass(frozen=True)
class LocalCopy:
    """What this server's spool holds of an upload after its last request here."""

    held: frozenset[str] = frozenset()
    """The tail objects whose bytes the open part's spool file begins with."""
    put: frozenset[str] = frozenset()
    """Tail objects that request put: those no record names any more are deleted later."""


class WriterHost(Protocol):
    """What a writer asks of the backend that opened it (:class:`~.backend.S3Backend`):
    named here, so that this module does not import the backend that imports it."""

    settings: S3Settings
    client: S3Client

    def spool_directory(self, upload_id: str) -> Path: ...

    def part_target(self, state: StorageRecord, length: int | None, number: int) -> int | None:
        ...

    def remember_local(self, upload_id: str, local: LocalCopy) -> None: ...

    async def put_object(self, upload: StoredUpload, body: io.BytesIO) -> None: ...


@dataclass(frozen=True)
class Opening:
    """Where a writer starts, as the backend found and reconciled it."""

    key: str
    record: dict[str, Any]
    """The record that goes with the offset the writer opens at."""
    parts: list[Part]
    tails: Chain
    """The tail objects that hold the open part's bytes."""
    uploads: PartUploads | None
    """The part uploads to the multipart upload, if there is one."""
    kept: frozenset[int] = frozenset()
    """Spool files a record of an earlier version names: never removed by this writer."""
    housekeeping: asyncio.Task[None] | None = None
    """Superseded tail objects being deleted while the body arrives."""


def _copy(parts: list[Part]) -> list[Part]:
    return [Part(part.size, part.etag) for part in parts]


class S3Writer:
    """Appends one request's body: spool, close full parts, upload them in the background.

    Its record (:attr:`storage`) is a new dict at each sync and discard, never one
    changed in place: the server may be saving the last one while the body goes on."""

    def __init__(self, host: WriterHost, upload: StoredUpload, opening: Opening) -> None:
        self._host = host
        self._settings = host.settings
        self._upload = upload
        self._opening = opening
        self._state: StorageRecord = opening.record
        self._directory = host.spool_directory(upload.id)
        self._parts = _copy(opening.parts)
        self._tails: list[Tail] = list(opening.tails)
        self._put: set[str] = set()
        self._target = self._target_of(len(self._parts))
        """The size at which the open part is closed; None when parts are never closed."""
        self._offset = sum(part.size for part in self._parts)
        self._start = self._offset
        # The spool file of the part open at the start is kept while this writer lives,
        # whatever gets stored: discard() may have to go back to it.
        self._kept = opening.kept | {len(opening.parts)}
        self._removed: set[int] = set()
        """Parts whose spool files this writer removed (their bytes are stored)."""
        self._uploads = opening.uploads
        self._fd: int | None = None
        self._done = False
        """Whether the whole upload was put as its object (no multipart upload)."""
        self._spool_known = True
        """Whether the spool files hold exactly the bytes of ``_parts`` (no failed write or cut)."""
        self._closed = False

    @property
    def offset(self) -> int:
        return self._offset

    @property
    def storage(self) -> StorageRecord:
        return self._state

    def _target_of(self, number: int) -> int | None:
        return self._host.part_target(self._state, self._upload.length, number)

    def _open_part_fd(self) -> int:
        if self._fd is None:
            path = self._directory / str(len(self._parts))
            self._directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o640)
            os.lseek(fd, self._parts[-1].size, os.SEEK_SET)
            self._fd = fd
        return self._fd

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

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
            view = view[size:]
            if target is not None and part.size >= target:
                await self._close_part(number, part.size)

    async def _close_part(self, number: int, size: int) -> None:
        """Part ``number`` is full: start its upload, open the next; wait while too many are queued."""
        assert self._uploads is not None
        max_parts = self._settings.max_parts
        if number + 1 > max_parts:
            raise StorageError(
                f"upload {self._upload.id} needs more than {max_parts} parts; "
                "raise --s3-part-size or declare the length earlier"
            )
        self._close_fd()
        self._parts.append(Part(0))
        self._target = self._target_of(number + 1)
        self._uploads.submit(number, (self._directory / str(number), size))
        await self._uploads.wait_room(self._settings.concurrency)

    def _record_results(self, parts: list[Part]) -> None:
        """Put the ETags of finished uploads into ``parts``."""
        if self._uploads is None:
            return
        for number, etag in self._uploads.results.items():
            if number <= len(parts) and parts[number - 1].etag is None:
                parts[number - 1].etag = etag

    async def sync(self, *, body_goes_on: bool = False) -> int:
        """Return the offset that stored parts and tail objects hold, and make its record
        :attr:`storage`. Unless ``body_goes_on``, every byte written is stored first.

        While the body goes on, writes may go on as it runs: it looks at the parts once."""
        if not body_goes_on:
            await self._store_all()
        self._record_results(self._parts)
        offset, self._state = self._durable()
        stored = {n for n, part in enumerate(self._parts, 1) if part.etag is not None}
        needless = stored - self._kept - self._removed
        if needless:
            # Their bytes are in S3 now: no record needs the spool's copy.
            await asyncio.to_thread(remove_files, self._directory, needless)
            self._removed |= needless
        return offset

    def _durable(self) -> tuple[int, StorageRecord]:
        """The offset any server can read, and its record: the stored parts from the
        first on, and the tail objects of the part after them; or, when that is no more
        than where the writer opened, the record it opened with."""
        if self._done:
            record = {**self._opening.record, "done": True, "mpu": None, "parts": [],
                      "tails": tails_to_json(self._tails)}
            return self._offset, record
        parts = self._parts
        count = 0
        while count < len(parts) and parts[count].etag is not None:
            count += 1
        held = _copy(parts[:count])
        if count < len(parts):
            held.append(Part(max(chains(self._tails, count + 1))))
        offset = sum(part.size for part in held)
        if offset <= self._start:
            return self._start, self._opening.record
        record = {**self._opening.record, "parts": parts_to_json(held),
                  "tails": tails_to_json(self._tails)}
        return offset, record

    async def _store_all(self) -> None:
        """Make every byte written readable by any server: the parts in flight stored, then
        the bytes added to the open part put as a tail object (the whole open part past
        :data:`~.tails.MAX_CHAIN` of them), or the open part as the last part, or as the
        whole object."""
        self._close_fd()
        if self._uploads is not None:
            await self._uploads.drain()
            self._record_results(self._parts)
        number, part = len(self._parts), self._parts[-1]
        if self._done or part.etag is not None or not part.size:
            return
        path = self._directory / str(number)
        if self._offset == self._upload.length:
            await self._store_last(number, path, part.size)
            return
        held = chains(self._tails, number)
        start = max(held)
        if start == part.size:
            return
        if len(held[start]) >= MAX_CHAIN:
            start = 0  # the whole tail as one object: the chain would grow too long
        tail = await tails.put(
            self._host.client, self._opening.key, path, number, start, part.size - start
        )
        self._tails.append(tail)
        self._put.add(tail.key)

    async def _store_last(self, number: int, path: Path, size: int) -> None:
        """The upload is full: its open part is its last part, or, without a multipart
        upload, the whole object (which :meth:`S3Backend.finish` then finds done)."""
        if self._uploads is None:
            body = (await asyncio.to_thread(read_part, path, size))[0]
            await self._host.put_object(self._upload, body)
            self._done = True
            return
        self._uploads.submit(number, (path, size))
        await self._uploads.drain()
        self._record_results(self._parts)

    async def discard(self) -> None:
        """Forget every byte written since the writer was opened, synced or not."""
        opening = self._opening.parts
        if self._uploads is not None:
            await self._uploads.cancel(lambda number: number >= len(opening))
        self._close_fd()
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
        self._removed = {number for number in self._removed if number < open_number}
        self._tails = list(self._opening.tails)
        self._done = False
        self._target = self._target_of(len(self._parts))
        self._record_results(self._parts)
        self._offset = self._start
        self._state = self._opening.record

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._close_fd()
        if self._uploads is not None:
            await self._uploads.stop()
        if self._opening.housekeeping is not None:
            await self._opening.housekeeping
        number, part = len(self._parts), self._parts[-1]
        chain = holding(self._tails, number, part.size) if self._spool_known else None
        held = frozenset(tail.key for tail in chain or ())
        self._host.remember_local(self._upload.id, LocalCopy(held, frozenset(self._put)))


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

    async def sync(self, *, body_goes_on: bool = False) -> int:
        return self._offset

    async def discard(self) -> None:
        return None

    async def close(self) -> None:
        return None
