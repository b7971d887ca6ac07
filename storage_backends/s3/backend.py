"""The S3 backend: what the server calls, each step handed to the module that knows it.

How the bytes travel and where the state lives is told in the package documentation.
"""

from __future__ import annotations

import asyncio
import collections
import io
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

from ..base import StorageError, StorageRecord, StoredUpload
from . import spool
from .client import S3Client, S3Error
from .concat import Pieces, copy_parts, read_pieces, stream_parts
from .metadata import object_headers
from .parts import (
    Part,
    copyable,
    cut_parts,
    declared_part_size,
    part_target,
    parts_from_json,
    parts_to_json,
    plan_part_size,
)
from .recovery import abort_strays, reconcile_parts
from .settings import S3Settings
from .uploads import PartUploads
from .writer import FinishedWriter, S3Writer

SEEN_LIMIT = 100_000


def _stored_numbers(parts: list[Part]) -> set[int]:
    return {number for number, part in enumerate(parts, 1) if part.etag is not None}


def _stored_as_object(state: StorageRecord) -> StorageRecord:
    """The record of an upload that is its object now: no multipart upload, no parts."""
    return {**state, "done": True, "mpu": None, "parts": []}


def _unsent_closed_parts(parts: list[Part], carried: PartUploads | None) -> list[int]:
    """Closed parts neither recorded as stored nor being sent by ``carried``."""
    return [
        number for number, part in enumerate(parts[:-1], 1)
        if part.etag is None and (carried is None or number not in carried.tasks)
    ]


class S3Backend:
    """Uploads in an S3 bucket; see the package documentation."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self.client = S3Client(settings)
        self._seen: collections.OrderedDict[str, list[int] | None] = collections.OrderedDict()
        """Uploads this process has opened, each with the sizes of its spool files when
        its last writer closed, if known: a spool that matches the committed state needs no
        reconciliation."""
        self._carried: dict[str, PartUploads] = {}
        """Part uploads that went on after the request that started them, by upload id."""

    # -- plumbing

    def key(self, upload: StoredUpload) -> str:
        return str(upload.storage.get("key") or self.settings.prefix + upload.id)

    async def check(self) -> None:
        """The bucket answers ``HeadBucket`` (for ``/readyz``)."""
        await self.client.check_bucket()

    def locate(self, upload_id: str) -> dict[str, str]:
        return {"bucket": self.settings.bucket, "key": self.settings.prefix + upload_id}

    def spool_directory(self, upload_id: str) -> Path:
        if "/" in upload_id or upload_id.startswith(".") or not upload_id:
            raise ValueError(f"not an upload id: {upload_id!r}")
        return self.settings.spool / upload_id

    def _remember(self, upload_id: str, spool_sizes: list[int] | None = None) -> None:
        self._seen[upload_id] = spool_sizes
        self._seen.move_to_end(upload_id)
        while len(self._seen) > SEEN_LIMIT:
            self._seen.popitem(last=False)

    def plan_part_size(self, length: int | None) -> int:
        """The part size for an upload of ``length`` bytes within ``max_parts`` parts."""
        return plan_part_size(
            length, part_size=self.settings.part_size, max_parts=self.settings.max_parts
        )

    def part_target(self, state: StorageRecord, length: int | None, number: int) -> int | None:
        """The size at which part ``number`` is closed, or None when parts are never closed
        (no multipart upload: the upload is stored with one ``PutObject``)."""
        if not state.get("mpu"):
            return None
        grows = not self.settings.equal_parts and length is None
        return part_target(
            int(state["part_size"]), number, grows=grows, max_parts=self.settings.max_parts
        )

    # -- life cycle

    async def start(self) -> None:
        if not self.settings.bucket:
            raise StorageError("--s3-bucket is required with --storage s3")
        self.settings.spool.mkdir(parents=True, exist_ok=True)
        await self.client.open()

    async def stop(self) -> None:
        carried, self._carried = self._carried, {}
        for uploads in carried.values():
            await uploads.stop()
        await self.client.close()

    def remember_spool(self, upload_id: str, sizes: list[int]) -> None:
        """The spool files of ``upload_id`` now hold parts of these sizes, and nothing else
        wrote to them."""
        if upload_id in self._seen:
            self._remember(upload_id, sizes)

    def carry_over(self, upload_id: str, uploads: PartUploads) -> None:
        """Keep the part uploads of an ended request for the upload's next writer."""
        self._carried[upload_id] = uploads

    async def _take_over(self, upload_id: str, mpu: str | None) -> PartUploads | None:
        """The part uploads an earlier request of the upload left running, if still of use."""
        carried = self._carried.pop(upload_id, None)
        if carried is not None and (carried.error is not None or carried.mpu != mpu):
            await carried.stop()
            return None
        return carried

    # -- creation

    async def create(self, upload: StoredUpload) -> StorageRecord:
        key = self.settings.prefix + upload.id
        part_size = self.plan_part_size(upload.length)
        mpu = None
        if upload.length is None or upload.length > part_size:
            mpu = await self._create_multipart(key, upload.metadata)
        self._remember(upload.id)
        return {
            **upload.storage, "key": key, "mpu": mpu, "part_size": part_size,
            "parts": parts_to_json([Part(0)]), "done": False,
        }

    async def _create_multipart(self, key: str, metadata: dict[str, bytes]) -> str:
        return await self.client.create_multipart(key, object_headers(metadata))

    async def declare_length(self, upload: StoredUpload, length: int) -> StorageRecord:
        state = upload.storage
        parts = parts_from_json(state["parts"])
        closed = len(parts) - 1
        size = declared_part_size(
            length,
            current=self.part_target(state, None, closed + 1) or state["part_size"],
            closed=closed,
            stored=sum(part.size for part in parts[:-1]),
            part_size=self.settings.part_size,
            max_parts=self.settings.max_parts,
            equal_parts=self.settings.equal_parts,
        )
        if size is None and self.settings.equal_parts:
            raise StorageError(
                f"upload {upload.id} of {length} bytes does not fit in {self.settings.max_parts} "
                f"parts of {state['part_size']} bytes"
            )
        if size is None:
            raise StorageError(f"upload {upload.id} of {length} bytes needs parts over 5 GiB")
        record = {**state, "part_size": size}
        if not state.get("mpu") and length > size:
            record["mpu"] = await self._create_multipart(self.key(upload), upload.metadata)
        return record

    # -- receiving

    async def open_writer(self, upload: StoredUpload) -> S3Writer | FinishedWriter:
        """A writer at the committed offset, once the spool and S3 agree with the state."""
        state = upload.storage
        if state.get("done") or upload.offset == upload.length:
            # Full: finish() takes it from here, and it alone may find that a crash came
            # after the multipart upload was completed (which ListParts would call lost).
            return FinishedWriter(upload)
        parts = self._committed_parts(upload)
        carried = await self._take_over(upload.id, state.get("mpu"))
        if carried is not None:
            # Parts from the open tail on were cut back (a body dropped): theirs go again.
            await carried.cancel(lambda number: number >= len(parts))
        first = upload.id not in self._seen
        pending = _unsent_closed_parts(parts, carried)
        # ListParts is asked after a possible crash, or for parts that no one is sending.
        list_parts = bool(state.get("mpu")) and (first or bool(pending))
        digests = await self._reconcile_spool(upload, parts, pending if list_parts else None)
        committed_stored = _stored_numbers(parts)
        if carried is not None:
            carried.forget(committed_stored)
        key = self.key(upload)
        record = dict(state)
        if list_parts:
            record["mpu"] = await reconcile_parts(self.client, upload, key, parts, digests)
        mpu = record.get("mpu")
        if first:
            await abort_strays(self.client, key, keep=mpu)
        self._remember(upload.id)
        uploads = await self._part_uploads(upload.id, key, mpu, parts, carried)
        record["parts"] = parts_to_json(parts)
        return S3Writer(self, upload, record, parts, committed_stored, uploads)

    def _committed_parts(self, upload: StoredUpload) -> list[Part]:
        """The parts holding exactly the committed offset, which the writer's record names
        from now."""
        recorded = parts_from_json(upload.storage["parts"])
        parts = cut_parts(recorded, upload.offset)
        if parts is None:
            raise StorageError(
                f"upload {upload.id}: parts hold {sum(part.size for part in recorded)} bytes "
                f"but the offset is {upload.offset}: data was lost"
            )
        return parts

    async def _reconcile_spool(
        self, upload: StoredUpload, parts: list[Part], digest_numbers: list[int] | None
    ) -> dict[int, str]:
        """Make the spool match ``parts``; the MD5s of parts ``digest_numbers`` (None when
        ListParts is not asked: then a spool left as committed needs no look)."""
        if digest_numbers is None and self._seen.get(upload.id) == [part.size for part in parts]:
            # The last writer left the spool as committed (the files of parts stored since
            # then go at the new writer's first sync).
            return {}
        return await asyncio.to_thread(
            spool.reconcile, upload.id, self.spool_directory(upload.id), parts,
            digest_numbers or [],
        )

    async def _part_uploads(
        self, upload_id: str, key: str, mpu: str | None, parts: list[Part],
        carried: PartUploads | None,
    ) -> PartUploads | None:
        """The part uploads of a new writer, every closed part not stored yet among them:
        those ``carried`` over from the last request if of the same multipart upload."""
        if carried is not None and carried.mpu != mpu:  # a new multipart upload, after all
            await carried.stop()
            carried = None
        if not mpu:
            return None
        uploads = carried or PartUploads(self.client, key, mpu, self.settings.concurrency)
        directory = self.spool_directory(upload_id)
        for number, part in enumerate(parts[:-1], 1):
            if part.etag is None and number not in uploads.tasks:
                uploads.submit(number, (directory / str(number), part.size))
        return uploads

    # -- finishing

    async def finish(self, upload: StoredUpload) -> StorageRecord:
        """Make the object the upload: complete the multipart upload, or put a small one."""
        state = upload.storage
        if state.get("done"):
            return state
        key = self.key(upload)
        parts = parts_from_json(state["parts"])
        if not await self._stored_before(upload, key, parts):
            mpu = state.get("mpu")
            if mpu:
                await self._complete_spooled(upload, key, str(mpu), parts)
            else:
                body = await asyncio.to_thread(
                    spool.read_parts, self.spool_directory(upload.id), parts
                )
                await self._put(upload, key, body)
        await asyncio.to_thread(shutil.rmtree, self.spool_directory(upload.id), True)
        self._seen.pop(upload.id, None)
        return _stored_as_object(state)

    async def _stored_before(self, upload: StoredUpload, key: str, parts: list[Part]) -> bool:
        """Whether the object already is the upload: this process (or one that crashed)
        stored it, but the finish was not recorded. Sending parts again would go to a
        multipart upload that is no more. Asked once per process, and whenever spool
        files are missing."""
        directory = self.spool_directory(upload.id)
        spooled = [
            directory / str(n) for n, part in enumerate(parts, 1) if part.etag is None and part.size
        ]
        maybe_stored = upload.id not in self._seen or not await asyncio.to_thread(
            lambda: all(path.exists() for path in spooled)
        )
        return maybe_stored and await self.client.object_size(key) == upload.length

    async def _complete_spooled(
        self, upload: StoredUpload, key: str, mpu: str, parts: list[Part]
    ) -> None:
        """Send the parts still spooled, then assemble the object from every part."""
        await self._send_rest(upload, key, mpu, parts)
        missing = [n for n, part in enumerate(parts, 1) if part.size and part.etag is None]
        if missing:
            raise StorageError(f"upload {upload.id}: parts {missing} of {key} were not stored")
        stored = [(n, str(part.etag)) for n, part in enumerate(parts, 1) if part.size]
        if not stored:
            await self.client.abort(key, mpu)
            await self._put(upload, key, io.BytesIO())
            return
        try:
            await self.client.complete(key, mpu, stored)
        except S3Error as exc:
            # Completed before a crash kept us from recording it?
            if exc.code != "NoSuchUpload" or await self.client.object_size(key) != upload.length:
                raise

    async def _send_rest(self, upload: StoredUpload, key: str, mpu: str, parts: list[Part]) -> None:
        """Give every part of ``parts`` an ETag: those the last request's uploads got, then
        the rest sent."""
        carried = await self._take_over(upload.id, mpu)
        if carried is not None:
            await carried.wait_all()
            for number, etag in carried.results.items():
                if number <= len(parts) and parts[number - 1].etag is None:
                    parts[number - 1].etag = etag
            await carried.stop()
        uploads = PartUploads(self.client, key, mpu, self.settings.concurrency)
        directory = self.spool_directory(upload.id)
        for number, part in enumerate(parts, 1):
            if part.etag is None and part.size:
                uploads.submit(number, (directory / str(number), part.size))
        try:
            await uploads.drain()
        finally:
            await uploads.stop()
        for number, etag in uploads.results.items():
            parts[number - 1].etag = etag

    async def _put(self, upload: StoredUpload, key: str, data: io.BytesIO) -> None:
        md5 = (await asyncio.to_thread(spool.body_digest, data))[1]
        data.seek(0)
        await self.client.put(key, data, md5, object_headers(upload.metadata))

    # -- reading and removing

    def read(self, upload: StoredUpload, start: int, end: int) -> AsyncIterator[bytes]:
        return self.client.get(self.key(upload), start, end)

    async def download_url(
        self, upload: StoredUpload, content_type: str, content_disposition: str
    ) -> str | None:
        """A presigned GET of the object, valid for a few minutes, with our content headers;
        None unless ``s3_download_redirect`` is on."""
        if not self.settings.download_redirect:
            return None
        return await self.client.presigned_get(self.key(upload), content_type, content_disposition)

    async def delete(self, upload: StoredUpload) -> None:
        key = self.key(upload)
        mpu = upload.storage.get("mpu")
        carried = self._carried.pop(upload.id, None)
        if carried is not None:
            await carried.stop()
        if mpu:
            await self.client.abort(key, mpu)
        await abort_strays(self.client, key, keep=None)
        await self.client.delete(key)
        await asyncio.to_thread(shutil.rmtree, self.spool_directory(upload.id), True)
        self._seen.pop(upload.id, None)

    # -- concatenation

    async def concatenate(
        self, final: StoredUpload, partials: list[StoredUpload]
    ) -> StorageRecord:
        state = final.storage
        key = self.key(final)
        pieces = [(self.key(p), p.length or 0) for p in partials if p.length]
        total = sum(size for _, size in pieces)
        if await self.client.object_size(key) == total:
            # Assembled before a crash kept the server from recording it: the partials are
            # immutable, so an object of their total length at this key is the final upload.
            return _stored_as_object(state)
        by_copy = copyable(
            pieces, max_parts=self.settings.max_parts, equal_parts=self.settings.equal_parts
        )
        if total == 0 or (not by_copy and total <= self.settings.part_size):
            if state.get("mpu"):
                await self.client.abort(key, state["mpu"])
            await self._put(final, key, await read_pieces(self.client, pieces))
        else:
            await self._assemble(final, key, pieces, by_copy)
        return _stored_as_object(state)

    async def _assemble(self, final: StoredUpload, key: str, pieces: Pieces, by_copy: bool) -> None:
        """The final object as a multipart upload of ``pieces``, copied by S3 if ``by_copy``."""
        mpu = final.storage.get("mpu")
        # One that an earlier, crashed attempt started would never be completed.
        await abort_strays(self.client, key, keep=mpu)
        if not mpu:
            mpu = await self._create_multipart(key, final.metadata)
        concurrency = self.settings.concurrency
        if by_copy:
            stored = await copy_parts(self.client, key, mpu, pieces, concurrency)
        else:
            total = sum(size for _, size in pieces)
            part_size = self.plan_part_size(total)
            stored = await stream_parts(self.client, key, mpu, pieces, part_size, concurrency)
        await self.client.complete(key, mpu, stored)
