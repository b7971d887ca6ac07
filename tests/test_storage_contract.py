"""The storage contract: what ``storage_backends/base.py`` promises, held against every backend.

One set of tests, run on the filesystem and on S3 (moto's server), through the interface
of ``base.py`` only, doing with a backend what the server does with it: a backend made of
the settings by ``make_backend``, its optional capabilities looked up by
``Capabilities.of`` (a test of one runs on the backends that have it), the backend's
record of an upload (``storage``), as the step that changed it returned it, saved as JSON
at creation and after every sync and loaded again for each request. Where a rule speaks of the bytes stored, the storage is looked at from outside
(``storage_view``: the data files, or the bucket and the spool). Each test says which
rule it holds.
"""

from __future__ import annotations

import copy
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from support.storage import payload

from server.capabilities import Capabilities
from server.config import Settings
from storage_backends import make_backend
from storage_backends.base import (
    StorageBackend,
    StorageRecord,
    StoredUpload,
    UploadWriter,
)

pytestmark = pytest.mark.all_backends

MIB = 1024 * 1024
"""The S3 backend's parts are 5 MiB here: uploads of a few MiB fill parts."""


@dataclass
class Record:
    """What the server's database holds of an upload."""

    id: str = field(default_factory=lambda: secrets.token_hex(16))
    length: int | None = None
    offset: int = 0
    storage: str = "{}"
    """The backend's dict, as JSON: what survives a restart."""

    def load(self) -> StoredUpload:
        """The upload as a request finds it: the backend's dict fresh from the record."""
        return StoredUpload(
            self.id, self.length, self.offset, {"filename": b"contract.bin"},
            json.loads(self.storage),
        )

    def save(self, upload: StoredUpload) -> None:
        self.length, self.offset = upload.length, upload.offset
        self.storage = json.dumps(upload.storage)


@dataclass
class Running:
    """The backend of one server process; :meth:`restart` makes the next process's, over
    the same storage, as after a crash."""

    settings: Settings
    backend: StorageBackend

    @property
    def can(self) -> Capabilities:
        return Capabilities.of(self.backend)

    async def restart(self) -> None:
        await self.backend.stop()
        self.backend = await started(self.settings)


async def started(settings: Settings) -> StorageBackend:
    backend = make_backend(settings)
    await backend.start()
    return backend


@pytest.fixture
async def running(settings: Settings) -> AsyncIterator[Running]:
    process = Running(settings, await started(settings))
    yield process
    await process.backend.stop()


async def create(running: Running, length: int | None) -> Record:
    record = Record(length=length)
    upload = record.load()
    upload.storage = await running.backend.create(upload)
    record.save(upload)
    return record


async def commit(writer: UploadWriter, upload: StoredUpload, record: Record) -> int:
    """Sync, then record the offset sync returned, with the writer's record that goes with
    it (the server's rule: never before)."""
    upload.offset = await writer.sync()
    upload.storage = writer.storage
    record.save(upload)
    return upload.offset


async def append(running: Running, record: Record, *chunks: bytes) -> int:
    """One PATCH as the server receives it: a writer at the recorded offset, the body
    written, synced and recorded, the writer closed. Returns the recorded offset."""
    upload = record.load()
    writer = await running.backend.open_writer(upload)
    try:
        for chunk in chunks:
            await writer.write(chunk)
        return await commit(writer, upload, record)
    finally:
        await writer.close()


async def complete(running: Running, record: Record) -> None:
    """What the server does once an upload's last byte is recorded: the backend's
    :class:`Finisher`, if it has one, whose changes to ``storage`` are recorded."""
    assert record.offset == record.length
    finisher = running.can.finisher
    if finisher is not None:
        upload = record.load()
        upload.storage = await finisher.finish(upload)
        record.save(upload)


async def chunks_of(running: Running, record: Record, start: int, end: int) -> list[bytes]:
    return [chunk async for chunk in running.backend.read(record.load(), start, end)]


async def read(running: Running, record: Record, start: int = 0, end: int | None = None) -> bytes:
    end = record.offset if end is None else end
    return b"".join(await chunks_of(running, record, start, end))


# --- create, write, sync ------------------------------------------------------------------


async def test_a_new_upload_is_empty_and_its_writer_starts_at_0(running):
    """create: room for a new, empty upload; open_writer: appends at ``upload.offset``."""
    record = await create(running, 5)
    writer = await running.backend.open_writer(record.load())
    try:
        assert writer.offset == 0
        assert await writer.sync() == 0
    finally:
        await writer.close()
    assert await append(running, record, b"hel", b"lo") == 5
    await complete(running, record)
    assert await read(running, record) == b"hello"


async def test_the_writer_offset_counts_every_byte_written_and_sync_returns_it(running):
    """UploadWriter.offset: after the last byte written, durable or not; sync: every byte
    written so far made durable, and the durable offset returned."""
    record = await create(running, 12)
    upload = record.load()
    writer = await running.backend.open_writer(upload)
    try:
        await writer.write(b"abcd")
        assert writer.offset == 4
        await writer.write(b"efg")
        assert writer.offset == 7
        assert await commit(writer, upload, record) == 7
        assert await writer.sync() == 7
        await writer.write(b"hijkl")
        assert writer.offset == 12
        assert await commit(writer, upload, record) == 12
    finally:
        await writer.close()
    await complete(running, record)
    assert await read(running, record) == b"abcdefghijkl"


async def test_what_was_recorded_serves_the_next_process(running):
    """StoredUpload.storage: the record create returns, and the writer's after every sync,
    are saved; with that alone, a restarted server resumes and reads the upload."""
    record = await create(running, 11)
    await running.restart()
    assert await append(running, record, b"hello") == 5
    await running.restart()
    assert await append(running, record, b" world") == 11
    await complete(running, record)
    await running.restart()
    assert await read(running, record) == b"hello world"


async def test_a_full_upload_reads_once_finished_or_at_once_without_a_finisher(running):
    """Finisher.finish: called once ``offset == length`` is recorded, and the record it
    returns is recorded; a backend without it has nothing left to do once the last byte
    is stored."""
    data = payload(MIB + 3, seed=1)
    record = await create(running, len(data))
    assert await append(running, record, data) == len(data)
    finisher = running.can.finisher
    if finisher is not None:
        upload = record.load()
        upload.storage = await finisher.finish(upload)
        record.save(upload)
    await running.restart()
    assert await read(running, record) == data
    # A PATCH without a body on the complete upload still opens a writer.
    assert await append(running, record) == len(data)
    assert await read(running, record) == data


# --- what a writer drops ------------------------------------------------------------------


@pytest.mark.parametrize("restart", [False, True], ids=["same-process", "restarted"])
async def test_a_writer_drops_unsynced_bytes_past_the_recorded_offset(
    running, storage_view, restart
):
    """close: bytes not synced may be lost; open_writer: appends at ``upload.offset``,
    bytes stored past it are dropped."""
    record = await create(running, 11)
    assert await append(running, record, b"hello") == 5
    writer = await running.backend.open_writer(record.load())
    await writer.write(b"JUNK" * 8)
    await writer.close()
    if restart:
        await running.restart()
    upload = record.load()
    writer = await running.backend.open_writer(upload)
    try:
        assert writer.offset == 5
        assert storage_view.size(record.id) == 5
        await writer.write(b" world")
        assert await commit(writer, upload, record) == 11
    finally:
        await writer.close()
    await complete(running, record)
    assert await read(running, record) == b"hello world"


@pytest.mark.parametrize("restart", [False, True], ids=["same-process", "restarted"])
async def test_a_writer_drops_synced_bytes_whose_offset_was_never_recorded(
    running, storage_view, restart
):
    """The server records an offset only after sync returned it, and may crash in between:
    open_writer drops the bytes stored past the recorded offset, synced or not."""
    record = await create(running, 11)
    assert await append(running, record, b"hello") == 5
    upload = record.load()
    writer = await running.backend.open_writer(upload)
    await writer.write(b"JUNK" * 8)
    assert await writer.sync() == 37  # and the record is not written
    await writer.close()
    if restart:
        await running.restart()
    writer = await running.backend.open_writer(record.load())
    try:
        assert writer.offset == 5
        assert storage_view.size(record.id) == 5
    finally:
        await writer.close()
    assert await append(running, record, b" world") == 11
    await complete(running, record)
    assert await read(running, record) == b"hello world"


async def test_discard_forgets_every_byte_written_since_the_writer_opened(running):
    """discard: forget every byte written since the writer was opened, also those a
    periodic commit synced and recorded (the server then records the offset it opened at
    and the ``storage`` the discard left)."""
    record = await create(running, 11)
    assert await append(running, record, b"hello") == 5
    upload = record.load()
    writer = await running.backend.open_writer(upload)
    try:
        await writer.write(b"abc")
        assert await commit(writer, upload, record) == 8
        await writer.write(b"def")
        await writer.discard()
        assert writer.offset == 5
        assert await writer.sync() == 5
        upload.offset, upload.storage = 5, writer.storage
        record.save(upload)
    finally:
        await writer.close()
    assert await append(running, record, b" world") == 11
    await complete(running, record)
    assert await read(running, record) == b"hello world"


async def test_discard_forgets_bytes_that_filled_parts_and_the_upload_goes_on(running):
    """discard, across a part boundary of the S3 backend: the closed part being sent in the
    background is forgotten with the rest, and sent again with the bytes that replace it."""
    data = payload(9 * MIB + 5, seed=2)
    record = await create(running, len(data))
    assert await append(running, record, data[: 4 * MIB]) == 4 * MIB
    upload = record.load()
    writer = await running.backend.open_writer(upload)
    try:
        await writer.write(payload(3 * MIB, seed=3))
        assert await commit(writer, upload, record) == 7 * MIB
        await writer.write(payload(2 * MIB, seed=4))
        await writer.discard()
        assert writer.offset == 4 * MIB
        upload.offset, upload.storage = 4 * MIB, writer.storage
        record.save(upload)
    finally:
        await writer.close()
    assert await append(running, record, data[4 * MIB :]) == len(data)
    await complete(running, record)
    assert await read(running, record) == data


async def test_no_record_is_changed_once_handed_over(running):
    """StoredUpload.storage is read, never changed: a step that changes the record returns
    a new one. UploadWriter.storage: a record handed out is never changed after, whatever
    the writer does next (the server may still be saving it while the body goes on)."""
    data = payload(6 * MIB + 1, seed=12)
    handed: list[tuple[StorageRecord, StorageRecord]] = []

    def hand(storage: StorageRecord) -> StorageRecord:
        """Keep ``storage``, with a copy of it as it is now."""
        handed.append((storage, copy.deepcopy(storage)))
        return storage

    record = Record(length=len(data))
    upload = record.load()
    hand(upload.storage)
    upload.storage = hand(await running.backend.create(upload))
    record.save(upload)
    upload = record.load()
    hand(upload.storage)
    writer = await running.backend.open_writer(upload)
    try:
        hand(writer.storage)
        await writer.write(data[: 4 * MIB])
        assert await commit(writer, upload, record) == 4 * MIB
        hand(writer.storage)
        await writer.write(data[4 * MIB :])  # past the first part of the S3 backend
        assert await writer.sync() == len(data)
        hand(writer.storage)
        await writer.discard()  # back to where the writer opened
        hand(writer.storage)
        await writer.write(data)
        assert await commit(writer, upload, record) == len(data)
        hand(writer.storage)
    finally:
        await writer.close()
    upload = record.load()
    hand(upload.storage)
    if running.can.finisher is not None:
        upload.storage = hand(await running.can.finisher.finish(upload))
        record.save(upload)
    assert [storage for storage, _ in handed] == [as_handed for _, as_handed in handed]
    # And it is JSON as it is (lists, not tuples; keys that are strings): the SQLite store
    # keeps what it wrote as it was given (server/state/sqlite/recent.py), and that must
    # be what a read of the row gives back.
    assert [json.loads(json.dumps(storage)) for storage, _ in handed] == [
        storage for storage, _ in handed
    ]
    assert await read(running, record) == data


# --- read ---------------------------------------------------------------------------------


async def test_read_gives_any_range_of_a_finished_upload_in_bounded_chunks(running):
    """read: the bytes ``[start, end)`` of a finished upload, in bounded chunks."""
    data = payload(3 * MIB + 17, seed=5)
    record = await create(running, len(data))
    await append(running, record, data[:MIB])
    await append(running, record, data[MIB : 2 * MIB + 1])
    await append(running, record, data[2 * MIB + 1 :])
    await complete(running, record)
    size = len(data)
    for start, end in [
        (0, size), (0, 1), (1, 2), (MIB - 1, MIB + 1), (12345, 2 * MIB + 7), (size - 1, size),
        (0, 0), (size, size), (MIB, MIB),
    ]:
        assert await read(running, record, start, end) == data[start:end], (start, end)
    whole = await chunks_of(running, record, 0, size)
    assert len(whole) > 1 and all(whole), [len(chunk) for chunk in whole]


async def test_an_empty_upload_reads_as_no_bytes(running):
    """create and read for an upload of length 0, complete as soon as it is made."""
    record = await create(running, 0)
    await complete(running, record)
    assert await chunks_of(running, record, 0, 0) == []
    await running.restart()
    assert await read(running, record) == b""


# --- delete -------------------------------------------------------------------------------


async def _created(running: Running) -> Record:
    return await create(running, 10)


async def _unfinished(running: Running) -> Record:
    record = await create(running, 10)
    await append(running, record, b"hello")
    return record


async def _deferred(running: Running) -> Record:
    record = await create(running, None)
    await append(running, record, b"hello")
    return record


async def _past_a_part(running: Running) -> Record:
    """Its first part full, and sent after the request that filled it (S3)."""
    record = await create(running, 8 * MIB)
    await append(running, record, payload(6 * MIB, seed=6))
    return record


async def _finished(running: Running) -> Record:
    record = await create(running, 5)
    await append(running, record, b"hello")
    await complete(running, record)
    return record


@pytest.mark.parametrize(
    "made", [_created, _unfinished, _deferred, _past_a_part, _finished],
    ids=["created", "unfinished", "deferred", "past-a-part", "finished"],
)
async def test_delete_removes_every_byte_and_may_be_repeated(running, storage_view, made):
    """delete: remove every byte of the upload; deleting a missing upload is no error."""
    kept = await _finished(running)
    record = await made(running)
    await running.backend.delete(record.load())
    assert storage_view.ids() == [kept.id]
    await running.backend.delete(record.load())
    await running.restart()
    await running.backend.delete(record.load())
    assert await read(running, kept) == b"hello"


async def test_deleting_an_upload_that_was_never_made_is_no_error(running, storage_view):
    """delete: deleting a missing upload is not an error."""
    await running.backend.delete(Record(length=10).load())
    assert storage_view.ids() == []


# --- optional capabilities ----------------------------------------------------------------


@pytest.mark.needs("concatenator")
@pytest.mark.parametrize(
    "parts",
    [[b"abc", b"", b"defgh", payload(MIB, seed=7)], [b"", b""],
     [payload(5 * MIB, seed=10), payload(5 * MIB + 1, seed=11)]],
    ids=["small", "empty", "of-whole-parts"],
)
async def test_concatenate_stores_finished_partials_back_to_back(running, parts):
    """Concatenator.concatenate: the finished partials, back to back, as the final's bytes;
    the partials stay as they were (a partial may be in more than one final)."""
    partials = []
    for data in parts:
        partial = await create(running, len(data))
        await append(running, partial, data)
        await complete(running, partial)
        partials.append(partial)
    length = sum(map(len, parts))
    final = await create(running, length)
    upload = final.load()
    upload.storage = await running.can.concatenator.concatenate(
        upload, [p.load() for p in partials]
    )
    upload.offset = length
    final.save(upload)
    await complete(running, final)
    await running.restart()
    assert await read(running, final) == b"".join(parts)
    for partial, data in zip(partials, parts, strict=True):
        assert await read(running, partial) == data


@pytest.mark.needs("length_deferrer")
@pytest.mark.parametrize(
    ("before", "after"),
    [(b"", b"hello world"), (b"hello", b" world"), (b"hello world", b""), (b"", b""),
     (payload(6 * MIB, seed=8), payload(MIB, seed=9))],
    ids=["before-any-byte", "midway", "at-the-offset", "empty", "past-a-part"],
)
async def test_declare_length_lets_a_deferred_upload_finish(running, before, after):
    """LengthDeferrer.declare_length: told the length of an upload made without one (as
    the server does: before the body of the PATCH that tells it, then recorded with it)."""
    record = await create(running, None)
    if before:
        assert await append(running, record, before) == len(before)
    length = len(before) + len(after)
    upload = record.load()
    upload.storage = await running.can.length_deferrer.declare_length(upload, length)
    upload.length = length
    writer = await running.backend.open_writer(upload)
    try:
        await writer.write(after)
        assert await commit(writer, upload, record) == length
    finally:
        await writer.close()
    await complete(running, record)
    await running.restart()
    assert await read(running, record) == before + after


@pytest.mark.needs("health_checker")
async def test_a_health_check_of_a_usable_store_passes_and_touches_no_upload(running, storage_view):
    """HealthChecker.check: raises only when the store cannot take uploads; returns
    quickly, and touches no upload."""
    record = await _unfinished(running)
    held = storage_view.ids(), storage_view.size(record.id)
    started_at = time.monotonic()
    await running.can.health_checker.check()
    assert time.monotonic() - started_at < 2
    assert (storage_view.ids(), storage_view.size(record.id)) == held
    assert await append(running, record, b"world") == 10


def test_every_backend_is_a_storage_backend(settings):
    """StorageBackend is runtime-checkable: what make_backend returns implements it."""
    assert isinstance(make_backend(settings), StorageBackend)
