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
from . import spool, tails
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
from .recovery import abort_strays, check_parts
from .settings import S3Settings
from .tails import Chain, holding, tails_from_json, tails_to_json
from .uploads import PartSource, PartUploads
from .writer import FinishedWriter, LocalCopy, Opening, S3Writer

SEEN_LIMIT = 100_000


def is_spooled(state: StorageRecord) -> bool:
    """Whether a record is of an earlier version, which kept unsent bytes in this server's
    spool: it names no tail objects."""
    return "tails" not in state


def _stored_as_object(state: StorageRecord) -> StorageRecord:
    """The record of an upload that is its object now: no multipart upload, parts or tails."""
    return {**state, "done": True, "mpu": None, "parts": [], "tails": []}


class S3Backend:
    """Uploads in an S3 bucket; see the package documentation."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self.client = S3Client(settings)
        self._seen: collections.OrderedDict[str, LocalCopy] = collections.OrderedDict()
        """Uploads this process has opened (or made), each with what its spool holds of
        it: an upload not among them is looked up in S3's lists first."""

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

    def _remember(self, upload_id: str, local: LocalCopy | None = None) -> None:
        self._seen[upload_id] = local or LocalCopy()
        self._seen.move_to_end(upload_id)
        while len(self._seen) > SEEN_LIMIT:
            self._seen.popitem(last=False)

    def remember_local(self, upload_id: str, local: LocalCopy) -> None:
        """What the spool holds of ``upload_id`` as its writer closes."""
        if upload_id in self._seen:
            self._remember(upload_id, local)

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
        try:
            self.settings.spool.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # in data_dir, which may be a file or not ours to write
            raise StorageError(
                f"cannot make the spool directory {self.settings.spool}: {exc.strerror or exc}"
            ) from None
        await self.client.open()

    async def stop(self) -> None:
        await self.client.close()

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
            "parts": parts_to_json([Part(0)]), "tails": [], "done": False,
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
        if is_spooled(state):
            return S3Writer(self, upload, await self._open_spooled(upload))
        return S3Writer(self, upload, await self._open(upload))

    async def _open(self, upload: StoredUpload) -> Opening:
        """Where a writer starts: the stored parts, checked once per process, and the tail
        objects of the open part in the spool (downloaded, unless the spool kept them).

        Tail objects that no record names hold bytes past the offset: they go before the
        writer opens. Those the record names but the open part does not need are copies of
        bytes now in parts or in a longer tail: they go while the body arrives."""
        state, key = upload.storage, self.key(upload)
        parts = self._committed_parts(upload)
        chain = self._chain_of(upload, parts)
        first = upload.id not in self._seen
        local = self._seen.get(upload.id, LocalCopy())
        mpu = state.get("mpu")
        named = {t.key for t in tails_from_json(state["tails"])}
        strays = local.put - named
        if first:
            if mpu:
                mpu = await check_parts(self.client, upload, key, parts)
            await abort_strays(self.client, key, keep=mpu)
            strays |= set(await self.client.keys(tails.prefix_of(key))) - named
        if strays:
            await tails.delete(self.client, strays)
        await self._fill_spool(upload.id, len(parts), chain, local)
        self._remember(upload.id)
        superseded = (named | local.held) - {tail.key for tail in chain}
        uploads = PartUploads(self.client, key, mpu, self.settings.concurrency) if mpu else None
        record = {**state, "mpu": mpu, "parts": parts_to_json(parts), "tails": tails_to_json(chain)}
        housekeeping = None
        if superseded:
            housekeeping = asyncio.create_task(tails.delete_quietly(self.client, superseded))
        return Opening(key, record, parts, chain, uploads, frozenset(), housekeeping)

    def _chain_of(self, upload: StoredUpload, parts: list[Part]) -> Chain:
        """The tail objects that hold the bytes of the open part of ``parts``."""
        number, open_part = len(parts), parts[-1]
        if open_part.etag is not None:
            return ()
        chain = holding(tails_from_json(upload.storage["tails"]), number, open_part.size)
        if chain is None:
            raise StorageError(
                f"upload {upload.id}: no tail objects hold the {open_part.size} bytes of part "
                f"{number} recorded: data was lost"
            )
        return chain

    async def _fill_spool(
        self, upload_id: str, number: int, chain: Chain, local: LocalCopy
    ) -> None:
        """Make the spool hold the bytes of ``chain`` as part ``number``, and nothing else.
        A spool file that holds a chain this one begins is cut to it: tail objects are
        never written over, so a key names the same bytes wherever it is read."""
        directory = self.spool_directory(upload_id)
        size = sum(tail.size for tail in chain)
        if {tail.key for tail in chain} <= local.held and await asyncio.to_thread(
            spool.keep_only, directory, number, size
        ):
            return
        await asyncio.to_thread(spool.clear, directory)
        if chain:
            bodies = await tails.read_chain(self.client, chain)
            await asyncio.to_thread(spool.write_file, directory / str(number), bodies)

    async def _open_spooled(self, upload: StoredUpload) -> Opening:
        """Where a writer starts on a record of an earlier version: the spool as that
        record names it (on this server only), its unsent parts sent again."""
        state, key = upload.storage, self.key(upload)
        parts = self._committed_parts(upload)
        directory = self.spool_directory(upload.id)
        await asyncio.to_thread(spool.reconcile, upload.id, directory, parts)
        pending = [n for n, part in enumerate(parts[:-1], 1) if part.etag is None]
        first = upload.id not in self._seen
        mpu = state.get("mpu")
        if mpu and (first or pending):
            mpu = await check_parts(self.client, upload, key, parts)
        if first:
            await abort_strays(self.client, key, keep=mpu)
        self._remember(upload.id)
        uploads = None
        if mpu:
            uploads = PartUploads(self.client, key, mpu, self.settings.concurrency)
            for number in pending:
                uploads.submit(number, (directory / str(number), parts[number - 1].size))
        kept = frozenset(n for n, part in enumerate(parts, 1) if part.etag is None and part.size)
        record = {**state, "mpu": mpu, "parts": parts_to_json(parts)}
        return Opening(key, record, parts, (), uploads, kept)

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

    # -- finishing

    async def finish(self, upload: StoredUpload) -> StorageRecord:
        """Make the object the upload: complete the multipart upload, or put a small one;
        then delete its tail objects."""
        state = upload.storage
        key = self.key(upload)
        if not state.get("done"):
            await self._store_object(upload, key, parts_from_json(state["parts"]))
        named = {t.key for t in tails_from_json(state.get("tails", []))}
        if named or state.get("mpu"):
            # Tails put just before a crash are named by no record: look for them too.
            found = await self.client.keys(tails.prefix_of(key))
            await tails.delete(self.client, named.union(found))
        await asyncio.to_thread(shutil.rmtree, self.spool_directory(upload.id), True)
        self._seen.pop(upload.id, None)
        return _stored_as_object(state)

    async def _store_object(self, upload: StoredUpload, key: str, parts: list[Part]) -> None:
        """Complete the multipart upload, or put the object, unless that was done already
        (by this server or another) and only the record of it was lost."""
        mpu = upload.storage.get("mpu")
        if await self._stored_before(upload, key, parts):
            return
        try:
            if mpu:
                await self._complete(upload, key, str(mpu), parts)
            else:
                await self.put_object(upload, await self._single_body(upload, parts))
        except S3Error as exc:
            if exc.code != "NoSuchUpload" or await self.client.object_size(key) != upload.length:
                raise

    async def _stored_before(self, upload: StoredUpload, key: str, parts: list[Part]) -> bool:
        """Whether the object already is the upload, though bytes of it are still to be sent:
        a finish went through (here or on another server) but was not recorded. Sending them
        again would go to a multipart upload that is no more, and their tail objects may be
        gone with it. Asked only when there is something to send: rarely (a length declared
        after the bytes, a record of an earlier version)."""
        if all(part.etag is not None or not part.size for part in parts):
            return False  # a completion that was done already is told by its NoSuchUpload
        return await self.client.object_size(key) == upload.length

    async def _complete(self, upload: StoredUpload, key: str, mpu: str, parts: list[Part]) -> None:
        """Send the parts not stored yet, then assemble the object from every part."""
        await self._send_rest(upload, key, mpu, parts)
        stored = [(n, str(part.etag)) for n, part in enumerate(parts, 1) if part.size]
        if not stored:
            await self.client.abort(key, mpu)
            await self.put_object(upload, io.BytesIO())
            return
        await self.client.complete(key, mpu, stored)

    async def _send_rest(self, upload: StoredUpload, key: str, mpu: str, parts: list[Part]) -> None:
        """Give every part of ``parts`` an ETag: the open part of a full upload whose bytes
        are in a tail object (its length was declared after them), or, with a record of an
        earlier version, the parts still spooled."""
        uploads = PartUploads(self.client, key, mpu, self.settings.concurrency)
        for number, part in enumerate(parts, 1):
            if part.etag is None and part.size:
                uploads.submit(number, await self._part_source(upload, number, part))
        try:
            await uploads.drain()
        finally:
            await uploads.stop()
        for number, etag in uploads.results.items():
            parts[number - 1].etag = etag

    async def _part_source(self, upload: StoredUpload, number: int, part: Part) -> PartSource:
        """Where the bytes of part ``number``, not stored as a part, are."""
        if is_spooled(upload.storage):
            return (self.spool_directory(upload.id) / str(number), part.size)
        chain = holding(tails_from_json(upload.storage["tails"]), number, part.size)
        if chain is None:
            raise StorageError(
                f"upload {upload.id}: nothing holds the {part.size} bytes of part {number}: "
                "data was lost"
            )
        body = io.BytesIO()
        for piece in await tails.read_chain(self.client, chain):
            body.write(piece.getbuffer())
        body.seek(0)
        return body

    async def _single_body(self, upload: StoredUpload, parts: list[Part]) -> io.BytesIO:
        """The bytes of an upload without a multipart upload (one part at most)."""
        if not parts or not parts[0].size:
            return io.BytesIO()
        source = await self._part_source(upload, 1, parts[0])
        if isinstance(source, tuple):
            return (await asyncio.to_thread(spool.read_part, *source))[0]
        return source

    async def put_object(self, upload: StoredUpload, body: io.BytesIO) -> None:
        """Store ``body`` as the upload's object, with its content headers."""
        md5 = (await asyncio.to_thread(spool.body_digest, body))[1]
        body.seek(0)
        await self.client.put(self.key(upload), body, md5, object_headers(upload.metadata))

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
        if mpu:
            await self.client.abort(key, mpu)
        await abort_strays(self.client, key, keep=None)
        await self.client.delete(key)
        await tails.delete(self.client, await self.client.keys(tails.prefix_of(key)))
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
            await self.put_object(final, await read_pieces(self.client, pieces))
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
