"""The S3 backend after a crash at a chosen point, or on another server, in a fixed order.

A crash is modelled by what it leaves: the state the server last committed to its
database (a deep copy of the record the backend last gave it) and whatever S3 already
holds. A new :class:`S3Backend`, as in a new process, then carries on from exactly that;
with another data directory it is another server, whose spool holds nothing of the
upload. tests/test_crash_random.py finds such points by chance; these pin the ones that
went wrong once, and those of the tail objects.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
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
    object_keys,
    s3_settings,
    tail_objects,
)
from support.storage import payload
from support.waiting import wait_for

from server.config import Settings
from storage_backends.base import StorageError, StoredUpload
from storage_backends.s3 import S3Backend, S3Settings
from storage_backends.s3.tails import MAX_CHAIN, holding, tails_from_json

pytestmark = pytest.mark.s3


@pytest.fixture
def s3_backend_settings(settings: Settings, s3_endpoint: S3Endpoint, bucket: str) -> Settings:
    return settings.with_values(**s3_settings(s3_endpoint, bucket))


BackendFactory = Callable[..., Any]


@pytest.fixture
def new_backend(s3_backend_settings: Settings, tmp_path: Path) -> BackendFactory:
    """``async with new_backend() as backend``: a started backend, as a new process has;
    ``new_backend("other")`` one of another server, with a data directory of its own."""

    @asynccontextmanager
    async def make(server: str = "") -> AsyncIterator[S3Backend]:
        changed = s3_backend_settings
        if server:
            changed = changed.with_values(data_dir=str(tmp_path / server))
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
    """The ETags of the upload's parts in S3, once ``count`` of them are there (parts land in
    the background while a request goes on)."""

    def listed() -> dict[int, str]:
        response = s3.list_parts(
            Bucket=bucket, Key=upload.storage["key"], UploadId=upload.storage["mpu"]
        )
        found = {p["PartNumber"]: p["ETag"] for p in response.get("Parts", [])}
        return found if len(found) >= count else {}

    return dict(await asyncio.to_thread(wait_for, listed, 30, f"{count} parts in S3"))


def after_crash(upload: StoredUpload, committed: dict[str, Any]) -> StoredUpload:
    """The upload as a restarted server (or another one) loads it from the database."""
    return dataclasses.replace(upload, storage=copy.deepcopy(committed))


async def test_an_upload_moves_between_servers_that_share_only_s3_and_the_record(
    new_backend: BackendFactory, s3: Any, bucket: str
) -> None:
    data = payload(2 * PART + 3 * MIB + 11, seed=1)
    key = ""
    async with new_backend("a") as first:
        upload = new_upload(len(data))
        upload.storage = await first.create(upload)
        key = upload.storage["key"]
        await receive(first, upload, data[: 3 * MIB])  # below one part: a tail only
        assert tail_objects(s3, bucket, key) == [(1, 0, 3 * MIB)]
    async with new_backend("b") as second:
        await receive(second, upload, data[3 * MIB : 7 * MIB])
        assert len(await parts_in_s3(s3, bucket, upload, 1)) == 1
        # The tail it began with is deleted while the next request arrives.
        assert tail_objects(s3, bucket, key) == [(1, 0, 3 * MIB), (2, 0, 2 * MIB)]
    async with new_backend("a") as first_again:  # its spool holds the 3 MiB it left: stale
        await receive(first_again, upload, data[7 * MIB :])
        assert (await first_again.finish(upload))["done"] is True
    assert object_bytes(s3, bucket, key) == data
    assert object_keys(s3, bucket) == [key]
    assert multipart_uploads(s3, bucket) == []


@pytest.mark.parametrize("server", ["", "other"], ids=["same-server", "another-server"])
@pytest.mark.parametrize("resumed_by", ["HEAD", "PATCH"])
async def test_crash_after_the_multipart_upload_was_completed(
    new_backend: BackendFactory, s3: Any, bucket: str, server: str, resumed_by: str,
) -> None:
    # The bug the random crash test found: the finish after the restart sent parts again,
    # to a multipart upload S3 no longer knew, and the upload answered 503 for good.
    data = payload(PART + 3 * MIB + 123)
    async with new_backend() as first:
        upload = new_upload(len(data))
        upload.storage = await first.create(upload)
        committed = await receive(first, upload, data)
        await first.finish(upload)  # CompleteMultipartUpload, then the crash before the record

    async with new_backend(server) as second:
        restarted = after_crash(upload, committed)
        if resumed_by == "PATCH":  # an empty PATCH at the end: the writer, then the finish
            writer = await second.open_writer(restarted)
            assert await writer.sync() == len(data)
            await writer.close()
        finished = await second.finish(restarted)  # what HEAD does for a full upload
        assert finished["done"] is True
        assert not second.spool_directory(upload.id).exists()
    assert object_bytes(s3, bucket, upload.storage["key"]) == data
    assert multipart_uploads(s3, bucket) == []


async def test_crash_after_a_completion_that_sent_the_last_part_from_its_tail(
    new_backend: BackendFactory, s3: Any, bucket: str
) -> None:
    # The length was declared after the bytes: the finish sends the open part from its
    # tail objects, then completes. After a crash between that and the record, the finish
    # must not send the part again, to a multipart upload that is no more (the bug the
    # random crash test found: moto answers that with 500, and the upload 503 for good).
    data = payload(3 * MIB, seed=15)
    async with new_backend() as first:
        upload = new_upload(None)
        upload.storage = await first.create(upload)
        await receive(first, upload, data[: 200 * 1024])
        await receive(first, upload, data[200 * 1024 :])
        upload.storage = await first.declare_length(upload, len(data))
        upload.length = len(data)
        committed = copy.deepcopy(upload.storage)
        await first.finish(upload)  # then the crash, before the record
    async with new_backend("other") as second:
        finished = await second.finish(after_crash(upload, committed))
        assert finished["done"] is True
    assert object_bytes(s3, bucket, upload.storage["key"]) == data
    assert object_keys(s3, bucket) == [upload.storage["key"]]


async def test_a_tail_put_but_never_recorded_is_deleted_by_the_next_server(
    new_backend: BackendFactory, s3: Any, bucket: str
) -> None:
    data = payload(PART + 2 * MIB, seed=2)
    async with new_backend() as first:
        upload = new_upload(len(data))
        upload.storage = await first.create(upload)
        committed = await receive(first, upload, data[:MIB])
        key = upload.storage["key"]
        writer = await first.open_writer(after_crash(upload, committed))
        await writer.write(payload(2 * MIB, seed=3))
        assert await writer.sync() == 3 * MIB  # its tail is put, then the crash: no record
        await writer.close()
        assert tail_objects(s3, bucket, key) == [(1, 0, MIB), (1, MIB, 2 * MIB)]
    async with new_backend("other") as second:
        restarted = after_crash(upload, committed)
        writer = await second.open_writer(restarted)
        assert writer.offset == MIB
        assert tail_objects(s3, bucket, key) == [(1, 0, MIB)]
        await writer.close()
        await receive(second, restarted, data[MIB:])
        await second.finish(restarted)
    assert object_bytes(s3, bucket, key) == data
    assert object_keys(s3, bucket) == [key]


async def test_many_small_requests_keep_the_tail_a_short_chain_that_another_server_reads(
    new_backend: BackendFactory, s3: Any, bucket: str
) -> None:
    # Each request puts only the bytes it added; past MAX_CHAIN objects, the whole tail.
    data = payload(PART + MIB, seed=14)
    step = 128 * 1024
    async with new_backend() as first:
        upload = new_upload(len(data))
        upload.storage = await first.create(upload)
        key = upload.storage["key"]
        for start in range(0, (MAX_CHAIN + 4) * step, step):
            committed = await receive(first, upload, data[start : start + step])
            assert holding(tails_from_json(committed["tails"]), 1, upload.offset) is not None
            assert len(tail_objects(s3, bucket, key)) <= MAX_CHAIN + 1
        chain = holding(tails_from_json(committed["tails"]), 1, upload.offset)
        # The 17th request put the whole tail; the three after it their own bytes.
        whole = (MAX_CHAIN + 1) * step
        assert chain is not None and [(t.start, t.size) for t in chain] == [
            (0, whole), (whole, step), (whole + step, step), (whole + 2 * step, step)
        ]
    async with new_backend("other") as second:
        await receive(second, upload, data[upload.offset :])
        await second.finish(upload)
    assert object_bytes(s3, bucket, key) == data
    assert object_keys(s3, bucket) == [key]


async def test_a_part_stored_but_never_recorded_is_sent_again_with_the_bytes_that_replace_it(
    new_backend: BackendFactory, s3: Any, bucket: str
) -> None:
    data = payload(PART + 2 * MIB, seed=4)
    async with new_backend() as first:
        upload = new_upload(len(data))
        upload.storage = await first.create(upload)
        committed = copy.deepcopy(upload.storage)
        writer = await first.open_writer(upload)
        await writer.write(payload(PART + MIB, seed=5))  # other bytes, never acknowledged
        await parts_in_s3(s3, bucket, upload, 1)
        await writer.close()  # the crash, before any commit
    async with new_backend("other") as second:
        restarted = after_crash(upload, committed)
        await receive(second, restarted, data)
        await second.finish(restarted)
    assert object_bytes(s3, bucket, upload.storage["key"]) == data


async def test_a_periodic_commit_claims_stored_parts_and_puts_no_tail(
    new_backend: BackendFactory, s3: Any, bucket: str
) -> None:
    data = payload(PART + 3 * MIB, seed=6)
    async with new_backend() as backend:
        upload = new_upload(len(data))
        upload.storage = await backend.create(upload)
        await receive(backend, upload, data[: 2 * MIB])
        key = upload.storage["key"]
        writer = await backend.open_writer(upload)
        await writer.write(data[2 * MIB : 6 * MIB])  # part 1 closes at 5 MiB
        # Before part 1 is stored, only the tail the request began with counts.
        assert await writer.sync(body_goes_on=True) in (2 * MIB, PART)
        etag = (await parts_in_s3(s3, bucket, upload, 1))[1]
        assert await writer.sync(body_goes_on=True) == PART
        assert writer.storage["parts"] == [[PART, etag], [0, None]]
        assert tail_objects(s3, bucket, key) == [(1, 0, 2 * MIB)]
        # The last sync of the request puts the open part as a tail.
        assert await writer.sync() == 6 * MIB
        upload.offset, upload.storage = 6 * MIB, writer.storage
        assert tail_objects(s3, bucket, key) == [(1, 0, 2 * MIB), (2, 0, MIB)]
        await writer.close()
        await receive(backend, upload, data[6 * MIB :])
        await backend.finish(upload)
    assert object_bytes(s3, bucket, key) == data
    assert object_keys(s3, bucket) == [key]


async def test_a_dropped_body_goes_back_to_its_first_tail_even_across_a_crash(
    new_backend: BackendFactory, s3: Any, bucket: str
) -> None:
    # A body dropped after a periodic commit recorded a part past where it began: the
    # server records the old offset first, then the writer's record; a crash in between
    # leaves the old offset with the newer record, which must still find the first tail.
    data = payload(2 * PART, seed=7)
    async with new_backend() as first:
        upload = new_upload(len(data))
        upload.storage = await first.create(upload)
        await receive(first, upload, data[: 3 * MIB])
        writer = await first.open_writer(upload)
        await writer.write(payload(4 * MIB, seed=8))
        await parts_in_s3(s3, bucket, upload, 1)
        assert await writer.sync(body_goes_on=True) == PART
        newer = copy.deepcopy(writer.storage)
        await writer.discard()
        await writer.close()
    async with new_backend("other") as second:
        restarted = after_crash(upload, newer)  # the offset went back, the record not
        assert restarted.offset == 3 * MIB
        await receive(second, restarted, data[3 * MIB :])
        await second.finish(restarted)
    assert object_bytes(s3, bucket, upload.storage["key"]) == data


@pytest.mark.parametrize("damage", ["replaced", "deleted"])
async def test_a_tail_object_that_lost_its_bytes_is_reported_as_data_loss(
    new_backend: BackendFactory, s3: Any, bucket: str, damage: str
) -> None:
    async with new_backend() as first:
        upload = new_upload(PART + MIB)
        upload.storage = await first.create(upload)
        committed = await receive(first, upload, payload(MIB, seed=9))
    (tail,) = committed["tails"]
    if damage == "replaced":
        s3.put_object(Bucket=bucket, Key=tail["key"], Body=payload(MIB, seed=10))
    else:
        s3.delete_object(Bucket=bucket, Key=tail["key"])
    async with new_backend("other") as second:
        with pytest.raises(StorageError, match="data was lost"):
            await second.open_writer(after_crash(upload, committed))


async def test_recovery_leaves_an_upload_that_another_server_finished(
    new_backend: BackendFactory, s3: Any, bucket: str
) -> None:
    data = payload(PART + 2 * MIB, seed=11)
    async with new_backend() as first:
        upload = new_upload(len(data))
        upload.storage = await first.create(upload)
        stale = await receive(first, upload, data[: 3 * MIB])
        await receive(first, upload, data[3 * MIB :])
        done = await first.finish(upload)
    key = upload.storage["key"]
    async with new_backend("other") as second:
        # A record read before the other server finished: nothing is started or undone.
        with pytest.raises(StorageError, match="completed"):
            earlier = dataclasses.replace(upload, offset=3 * MIB)
            await second.open_writer(after_crash(earlier, stale))
        # The record as it stands: finished, nothing to do.
        writer = await second.open_writer(after_crash(upload, done))
        assert await writer.sync() == len(data)
        await writer.close()
        assert await second.finish(after_crash(upload, done)) == done
    assert object_bytes(s3, bucket, key) == data
    assert object_keys(s3, bucket) == [key]
    assert multipart_uploads(s3, bucket) == []


async def test_a_vanished_multipart_upload_is_replaced_once_even_across_a_second_crash(
    new_backend: BackendFactory, s3: Any, bucket: str
) -> None:
    data = payload(PART + 2 * MIB)
    async with new_backend() as first:
        upload = new_upload(len(data))
        upload.storage = await first.create(upload)
        committed = await receive(first, upload, data[: 3 * MIB])  # all of it in a tail
    key = upload.storage["key"]
    s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=committed["mpu"])  # a lifecycle rule

    async with new_backend() as second:
        writer = await second.open_writer(after_crash(upload, committed))
        await writer.close()  # a new multipart upload, never committed: the crash comes first
    assert len(multipart_uploads(s3, bucket)) == 1

    async with new_backend("other") as third:
        restarted = after_crash(upload, committed)
        await receive(third, restarted, data[3 * MIB :])
        assert [u["UploadId"] for u in multipart_uploads(s3, bucket)] == [restarted.storage["mpu"]]
        await third.finish(restarted)
    assert object_bytes(s3, bucket, key) == data
    assert multipart_uploads(s3, bucket) == []


async def test_bytes_no_commit_recorded_are_cut_by_the_next_writer(
    new_backend: BackendFactory, s3: Any, bucket: str
) -> None:
    # The writer's sync worked but the commit after it failed: the database keeps the
    # older offset, and the next writer, in the same process, must not trust its spool.
    data = payload(3 * MIB)  # one part: no multipart upload
    async with new_backend() as backend:
        upload = new_upload(len(data))
        upload.storage = await backend.create(upload)
        committed = await receive(backend, upload, data[:MIB])
        uncommitted = dataclasses.replace(upload, storage=copy.deepcopy(committed))
        await receive(backend, uncommitted, payload(MIB + MIB // 2, seed=9))
        spool = backend.spool_directory(upload.id)
        assert (spool / "1").stat().st_size == 2 * MIB + MIB // 2
        resumed = after_crash(upload, committed)
        await receive(backend, resumed, data[MIB : 2 * MIB])
        assert (spool / "1").stat().st_size == 2 * MIB
        # The tail of the bytes never recorded (1.5 MiB) is gone; the request put only
        # the MiB it added.
        assert tail_objects(s3, bucket, upload.storage["key"]) == [(1, 0, MIB), (1, MIB, MIB)]
        await receive(backend, resumed, data[2 * MIB :])
        await backend.finish(resumed)
    assert object_bytes(s3, bucket, upload.storage["key"]) == data
    assert object_keys(s3, bucket) == [upload.storage["key"]]


def earlier_version_record(upload: StoredUpload, spool: Path, data: bytes) -> StoredUpload:
    """The upload as an earlier version recorded it after receiving ``data`` (a part and a
    MiB): no tail objects, every byte in the spool files of parts not sent yet."""
    spool.mkdir(parents=True)
    (spool / "1").write_bytes(data[:PART])
    (spool / "2").write_bytes(data[PART:])
    record = {key: upload.storage[key] for key in ("key", "mpu", "part_size", "done")}
    return dataclasses.replace(
        upload, offset=len(data), storage={**record, "parts": [[PART, None], [MIB, None]]}
    )


@pytest.mark.parametrize("full", [False, True], ids=["resumed", "finished"])
async def test_a_record_of_an_earlier_version_goes_on_from_the_spool_of_its_server(
    new_backend: BackendFactory, s3: Any, bucket: str, full: bool
) -> None:
    data = payload(PART + MIB if full else 2 * PART, seed=12)
    async with new_backend() as backend:
        upload = new_upload(len(data))
        upload.storage = await backend.create(upload)
        old = earlier_version_record(upload, backend.spool_directory(upload.id), data[: PART + MIB])
    async with new_backend() as upgraded:
        if not full:
            committed = await receive(upgraded, old, data[PART + MIB : PART + 2 * MIB])
            assert "tails" in committed and committed["parts"][0][1] is not None
            await receive(upgraded, old, data[PART + 2 * MIB :])
        assert (await upgraded.finish(old))["done"] is True
    assert object_bytes(s3, bucket, upload.storage["key"]) == data
    assert object_keys(s3, bucket) == [upload.storage["key"]]


async def test_a_record_of_an_earlier_version_cannot_go_on_on_another_server(
    new_backend: BackendFactory,
) -> None:
    data = payload(PART + MIB, seed=13)
    async with new_backend() as backend:
        upload = new_upload(2 * PART)
        upload.storage = await backend.create(upload)
        old = earlier_version_record(upload, backend.spool_directory(upload.id), data)
    async with new_backend("other") as other:
        with pytest.raises(StorageError, match="earlier version of aiotusd on another server"):
            await other.open_writer(old)


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
