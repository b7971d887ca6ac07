"""After a crash, or on a server that did not write the upload last: S3's own lists are the truth.

The record in the database may lag behind S3 (a part or a tail object stored, or a
multipart upload started or completed, just before a crash kept it from being recorded)
but never runs ahead of it unless S3 lost something. ``ListParts`` settles that the parts
recorded are there, and ``ListMultipartUploads`` finds multipart uploads that no record
names. Nothing here reads the local spool: any server can recover any upload.

Recovery never undoes what another server finished: a multipart upload that is gone
while the object stands was completed, and is left as it is.
"""

from __future__ import annotations

import logging

from ..base import StorageError, StoredUpload
from .client import S3Client, S3Error
from .metadata import object_headers
from .parts import Part

log = logging.getLogger("aiotusd")


def etag_hex(etag: str) -> str:
    """An ETag as it compares with an MD5 in hex."""
    return etag.strip().strip('"').lower()


async def check_parts(client: S3Client, upload: StoredUpload, key: str, parts: list[Part]) -> str:
    """Check the stored ``parts`` against ListParts. Returns the UploadId, a new one if S3
    lost the multipart upload before any part of it was stored.

    Parts S3 holds that the record does not name are left: they are sent again, under
    the same numbers, with the bytes the client sends again.
    """
    mpu = str(upload.storage["mpu"])
    try:
        listed = await client.list_parts(key, mpu)
    except S3Error as exc:
        if exc.code != "NoSuchUpload":
            raise
        return await _replace_vanished(client, upload, key, mpu, parts)
    for number, part in enumerate(parts, 1):
        if part.etag is not None:
            _check_recorded(upload.id, key, number, part, listed.get(number))
    return mpu


async def _replace_vanished(
    client: S3Client, upload: StoredUpload, key: str, mpu: str, parts: list[Part]
) -> str:
    """A new multipart upload for one that S3 no longer knows, if nothing was lost with it."""
    if await client.object_size(key) is not None:
        raise StorageError(
            f"upload {upload.id}: the multipart upload {mpu} of {key} was completed, by a "
            "server that finished the upload after this record was read; it is left as it is"
        )
    if any(part.etag is not None for part in parts):
        raise StorageError(
            f"upload {upload.id}: the multipart upload {mpu} of {key} is gone from S3 "
            "(aborted by a lifecycle rule?) with parts already stored"
        )
    # Nothing was stored in it: every byte is in tail objects (or, recorded by an earlier
    # version, the spool): start afresh.
    log.warning("upload %s: multipart upload of %s was gone; starting a new one", upload.id, key)
    return await client.create_multipart(key, object_headers(upload.metadata))


def _check_recorded(
    upload_id: str, key: str, number: int, part: Part, found: tuple[str, int] | None
) -> None:
    """A part recorded as stored must be in S3 as recorded: anything else is data loss."""
    assert part.etag is not None
    if found is None or etag_hex(found[0]) != etag_hex(part.etag) or found[1] != part.size:
        raise StorageError(
            f"upload {upload_id}: part {number} of {key} recorded as stored "
            f"({part.size} bytes, ETag {part.etag}) is not in S3 as such: {found}"
        )


async def abort_strays(client: S3Client, key: str, keep: str | None) -> None:
    """Abort multipart uploads of ``key`` other than ``keep`` (left by a crash)."""
    for upload_id in await client.multipart_uploads(key):
        if upload_id != keep:
            log.warning("aborting stray multipart upload %s of %s", upload_id, key)
            await client.abort(key, upload_id)
