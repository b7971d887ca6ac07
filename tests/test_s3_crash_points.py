"""The S3 backend after a crash at a chosen point, in a fixed order (no random timing).

A crash is modelled by what it leaves: the state the server last committed to its
database (a deep copy of the record the backend last gave it), the spool
files on disk, and whatever S3 already holds. A new :class:`S3Backend`, as in a new
process, then carries on from exactly that. tests/test_crash_random.py finds such
points by chance; these pin the ones that went wrong once, and the spool's own
shortcuts (spare part files, a writer that trusts what the last one left).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from support.s3 import (
    MIB,
    PART,
    S3Endpoint,
    multipart_uploads,
    object_bytes,
    s3_settings,
)
from support.storage import payload
from support.waiting import wait_for

from server.config import Settings
from storage_backends.base import StoredUpload
from storage_backends.s3 import S3Backend, S3Settings

pytestmark = pytest.mark.s3


@pytest.fixture
def s3_backend_settings(settings: Settings, s3_endpoint: S3Endpoint, bucket: str) -> Settings:
    return settings.with_values(**s3_settings(s3_endpoint, bucket))


BackendFactory = Callable[..., Any]


@pytest.fixture
def new_backend(s3_backend_settings: Settings) -> BackendFactory:
    """``async with new_backend(fsync="none") as backend``: a started backend, as a new
    process has, with changed settings."""

    @asynccontextmanager
    async def make(**changes: Any) -> AsyncIterator[S3Backend]:
        changed = s3_backend_settings.with_values(**changes)
        backend = S3Backend(S3Settings.from_settings(changed))
        await backend.start()
        try:
            yield backend
        finally:
            await backend.stop()

    return make


def new_upload(length: int | None) -> StoredUpload:
    return StoredUpload(id=uuid.uuid4().hex, length=length, offset=0)


async def receive(backend: S3Backend, upload: StoredUpload, data: bytes) -> dict[str, Any]:
    """One request's body, as the server appends it; returns the state committed after its
    sync (the writer's record as of that sync)."""
    writer = await backend.open_writer(upload)
    try:
        for start in range(0, len(data), 256 * 1024):
            await writer.write(data[start : start + 256 * 1024])
        upload.offset = await writer.sync()
        upload.storage = writer.storage
        committed = copy.deepcopy(upload.storage)
    finally:
        await writer.close()
    return committed


async def parts_in_s3(s3: Any, bucket: str, upload: StoredUpload, count: int) -> dict[int, str]:
    """The ETags of the upload's parts in S3, once ``count`` of them are there (parts go on
    landing in the background after the request that closed them)."""

    def listed() -> dict[int, str]:
        response = s3.list_parts(
            Bucket=bucket, Key=upload.storage["key"], UploadId=upload.storage["mpu"]
        )
        found = {p["PartNumber"]: p["ETag"] for p in response.get("Parts", [])}
        return found if len(found) >= count else {}

    return dict(await asyncio.to_thread(wait_for, listed, 30, f"{count} parts in S3"))


def after_crash(upload: StoredUpload, committed: dict[str, Any]) -> StoredUpload:
    """The upload as a restarted server loads it from its database."""
    return dataclasses.replace(upload, storage=copy.deepcopy(committed))


def spool_of(backend: S3Backend, upload: StoredUpload) -> Path:
    return backend.spool_directory(upload.id)


@pytest.mark.parametrize("first_part_recorded", [True, False], ids=["part-1-recorded", "part-1-unrecorded"])
@pytest.mark.parametrize("resumed_by", ["HEAD", "PATCH"])
async def test_crash_after_the_multipart_upload_was_completed_with_the_spool_still_there(
    new_backend: BackendFactory, s3: Any, bucket: str, tmp_path: Path,
    first_part_recorded: bool, resumed_by: str,
) -> None:
    # The bug the random crash test found: the finish after the restart sent parts again,
    # to a multipart upload S3 no longer knew, and the upload answered 503 for good.
    data = payload(PART + 3 * MIB + 123)
    async with new_backend() as first:
        upload = new_upload(len(data))
        upload.storage = await first.create(upload)
        committed = await receive(first, upload, data)
        # Part 1's upload may or may not have ended by the last commit.
        etag = (await parts_in_s3(s3, bucket, upload, 1))[1]
        committed["parts"][0][1] = etag if first_part_recorded else None
        spool = spool_of(first, upload)
        saved_spool = tmp_path / "spool-at-crash"
        shutil.copytree(spool, saved_spool)
        await first.finish(upload)  # CompleteMultipartUpload, then the crash before the record
    shutil.copytree(saved_spool, spool)

    async with new_backend() as second:
        restarted = after_crash(upload, committed)
        if resumed_by == "PATCH":  # an empty PATCH at the end: the writer, then the finish
            writer = await second.open_writer(restarted)
            assert await writer.sync() == len(data)
            await writer.close()
        finished = await second.finish(restarted)  # what HEAD does for a full upload
        assert finished["done"] is True
        assert not spool.exists()
    assert object_bytes(s3, bucket, upload.storage["key"]) == data
    assert multipart_uploads(s3, bucket) == []


async def test_crash_after_the_spool_of_a_completed_upload_was_removed(
    new_backend: BackendFactory, s3: Any, bucket: str
) -> None:
    data = payload(PART + MIB)
    async with new_backend() as first:
        upload = new_upload(len(data))
        upload.storage = await first.create(upload)
        committed = await receive(first, upload, data)
        await first.finish(upload)
    async with new_backend() as second:
        restarted = after_crash(upload, committed)
        assert (await second.finish(restarted))["done"] is True
    assert object_bytes(s3, bucket, upload.storage["key"]) == data


async def test_a_part_stored_before_its_etag_was_committed_is_adopted(
    new_backend: BackendFactory, s3: Any, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    data = payload(2 * PART + MIB)
    async with new_backend() as first:
        upload = new_upload(len(data))
        upload.storage = await first.create(upload)
        committed = await receive(first, upload, data[: PART + MIB])
        # Part 1 landed; the crash came before a commit said so.
        await parts_in_s3(s3, bucket, upload, 1)
        committed["parts"][0][1] = None
    caplog.clear()
    async with new_backend() as second:
        restarted = after_crash(upload, committed)
        await receive(second, restarted, data[PART + MIB :])
        await second.finish(restarted)
    # ListParts found part 1 with the MD5 of its spool file: adopted, not sent again.
    requests = [record.getMessage() for record in caplog.records if record.name == "werkzeug"]
    assert any("list-type" not in r and "part-number-marker" in r for r in requests), requests
    assert not [r for r in requests if "PUT" in r and "partNumber=1 " in r], requests
    assert object_bytes(s3, bucket, upload.storage["key"]) == data
    assert multipart_uploads(s3, bucket) == []


async def test_a_vanished_multipart_upload_is_replaced_once_even_across_a_second_crash(
    new_backend: BackendFactory, s3: Any, bucket: str
) -> None:
    data = payload(PART + 2 * MIB)
    async with new_backend() as first:
        upload = new_upload(len(data))
        upload.storage = await first.create(upload)
        committed = await receive(first, upload, data[: 3 * MIB])  # all of it still spooled
    key = upload.storage["key"]
    s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=committed["mpu"])  # a lifecycle rule

    async with new_backend() as second:
        writer = await second.open_writer(after_crash(upload, committed))
        await writer.close()  # a new multipart upload, never committed: the crash comes first
    assert len(multipart_uploads(s3, bucket)) == 1

    async with new_backend() as third:
        restarted = after_crash(upload, committed)
        await receive(third, restarted, data[3 * MIB :])
        assert [u["UploadId"] for u in multipart_uploads(s3, bucket)] == [restarted.storage["mpu"]]
        await third.finish(restarted)
    assert object_bytes(s3, bucket, key) == data
    assert multipart_uploads(s3, bucket) == []


async def concatenation(
    backend: S3Backend, pieces: list[bytes]
) -> tuple[StoredUpload, list[StoredUpload]]:
    """A created final upload of finished partial uploads holding ``pieces``, and those."""
    partials = []
    for piece in pieces:
        partial = new_upload(len(piece))
        partial.storage = await backend.create(partial)
        await receive(backend, partial, piece)
        partial.storage = await backend.finish(partial)
        partials.append(partial)
    final = new_upload(sum(map(len, pieces)))
    final.storage = await backend.create(final)
    return final, partials


async def test_a_concatenation_completed_before_a_crash_is_recognised(
    new_backend: BackendFactory, s3: Any, bucket: str
) -> None:
    pieces = [payload(PART, seed=1), payload(MIB, seed=2)]
    async with new_backend() as first:
        final, partials = await concatenation(first, pieces)
        committed = copy.deepcopy(final.storage)
        await first.concatenate(final, partials)  # then the crash, before the record
    async with new_backend() as second:
        restarted = after_crash(final, committed)
        assert (await second.concatenate(restarted, partials))["done"] is True
    assert object_bytes(s3, bucket, final.storage["key"]) == b"".join(pieces)
    assert multipart_uploads(s3, bucket) == []


async def test_a_concatenation_aborts_a_multipart_upload_a_crashed_attempt_left(
    new_backend: BackendFactory, s3: Any, bucket: str
) -> None:
    pieces = [payload(PART, seed=3), payload(MIB, seed=4)]
    async with new_backend() as backend:
        final, partials = await concatenation(backend, pieces)
        key = final.storage["key"]
        s3.create_multipart_upload(Bucket=bucket, Key=key)
        await backend.concatenate(final, partials)
    assert object_bytes(s3, bucket, key) == b"".join(pieces)
    assert multipart_uploads(s3, bucket) == []


def list_parts_requests(caplog: pytest.LogCaptureFixture) -> list[str]:
    requests = [record.getMessage() for record in caplog.records if record.name == "werkzeug"]
    return [r for r in requests if "GET" in r and "part-number-marker" in r]


async def receive_in_mib(
    backend: S3Backend, upload: StoredUpload, data: bytes, s3: Any, bucket: str
) -> dict[str, Any]:
    """``data`` in 1 MiB requests, each waiting until the parts it closed are in S3, so
    that a part's file is given up two requests later; returns the last committed state."""
    committed: dict[str, Any] = {}
    for start in range(0, len(data), MIB):
        committed = await receive(backend, upload, data[start : start + MIB])
        closed = len(upload.storage["parts"]) - 1
        if closed:
            await parts_in_s3(s3, bucket, upload, closed)
    return committed


@pytest.mark.parametrize("fsync", ["always", "none"])
async def test_the_file_of_a_stored_part_is_written_over_by_a_later_part(
    new_backend: BackendFactory, s3: Any, bucket: str, fsync: str
) -> None:
    # With fsync always, part 3 is written over part 1's file (a spare): overwriting blocks
    # already on disk syncs faster than appending. The spare is longer than what part 3
    # holds so far, and longer than the last part: its old bytes must never show.
    data = payload(2 * PART + 2 * MIB + 7)
    async with new_backend(fsync=fsync) as backend:
        upload = new_upload(len(data))
        upload.storage = await backend.create(upload)
        await receive_in_mib(backend, upload, data[: 2 * PART + MIB], s3, bucket)
        spool = spool_of(backend, upload)
        expected = PART if fsync == "always" else MIB
        assert (spool / "3").stat().st_size == expected
        assert (spool / "1").exists() is False
        await receive(backend, upload, data[2 * PART + MIB :])
        await backend.finish(upload)
        assert not spool.exists()
    assert object_bytes(s3, bucket, upload.storage["key"]) == data


async def test_a_spare_file_longer_than_its_part_after_a_crash(
    new_backend: BackendFactory, s3: Any, bucket: str
) -> None:
    data = payload(2 * PART + 3 * MIB)
    async with new_backend() as first:
        upload = new_upload(len(data))
        upload.storage = await first.create(upload)
        committed = await receive_in_mib(first, upload, data[: 2 * PART + MIB], s3, bucket)
        spool = spool_of(first, upload)
        assert (spool / "3").stat().st_size == PART  # part 3 holds 1 MiB of it
    async with new_backend() as second:
        restarted = after_crash(upload, committed)
        await receive(second, restarted, data[2 * PART + MIB :])
        await second.finish(restarted)
    assert object_bytes(s3, bucket, upload.storage["key"]) == data
    assert multipart_uploads(s3, bucket) == []


async def test_a_part_stored_after_the_last_commit_of_a_request_needs_no_list_parts(
    new_backend: BackendFactory, s3: Any, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Part 1's upload ends after the request's last sync but before it ends: its ETag is in
    # no commit. The next request takes the finished upload over instead of asking S3.
    data = payload(PART + 2 * MIB)
    async with new_backend() as backend:
        upload = new_upload(len(data))
        upload.storage = await backend.create(upload)
        writer = await backend.open_writer(upload)
        await writer.write(data[: PART + MIB])
        upload.offset = await writer.sync()
        upload.storage = writer.storage
        committed = copy.deepcopy(upload.storage)
        committed["parts"][0][1] = None
        etag = (await parts_in_s3(s3, bucket, upload, 1))[1]
        await asyncio.wait(writer._uploads.tasks.values(), timeout=30)
        await writer.close()
        caplog.clear()
        restarted = after_crash(upload, committed)
        recorded = await receive(backend, restarted, data[PART + MIB :])
        assert recorded["parts"][0][1] == etag
        await backend.finish(restarted)
    assert list_parts_requests(caplog) == []
    assert object_bytes(s3, bucket, upload.storage["key"]) == data


async def test_bytes_no_commit_recorded_are_cut_by_the_next_writer(
    new_backend: BackendFactory, s3: Any, bucket: str
) -> None:
    # The writer's sync worked but the commit after it failed: the database keeps the
    # older offset, and the next writer, in the same process, must not trust the spool.
    data = payload(3 * MIB)  # one part: no multipart upload
    async with new_backend() as backend:
        upload = new_upload(len(data))
        upload.storage = await backend.create(upload)
        committed = await receive(backend, upload, data[:MIB])
        uncommitted = dataclasses.replace(upload, storage=copy.deepcopy(committed))
        await receive(backend, uncommitted, payload(3 * MIB, seed=9))
        spool = spool_of(backend, upload)
        assert (spool / "1").stat().st_size == 4 * MIB
        resumed = after_crash(upload, committed)
        await receive(backend, resumed, data[MIB:])
        assert (spool / "1").stat().st_size == 3 * MIB
        await backend.finish(resumed)
    assert object_bytes(s3, bucket, upload.storage["key"]) == data
