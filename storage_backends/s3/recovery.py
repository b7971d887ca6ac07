"""After a crash: S3's own lists are the truth about what it holds.

The state in the database may lag behind S3 (a part stored, or a multipart upload started
or completed, just before a crash kept it from being recorded) but never run ahead of it
unless S3 lost something. ``ListParts`` settles which parts S3 holds, and
``ListMultipartUploads`` finds multipart uploads that no state names.
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


async def reconcile_parts(
    client: S3Client, upload: StoredUpload, key: str, parts: list[Part], digests: dict[int, str]
) -> str:
    """Check ``parts`` against ListParts; adopt parts S3 already holds. Returns the UploadId,
    a new one if S3 lost the multipart upload before any part of it was stored.

    ``digests`` are the MD5s (hex) of the spool files of unrecorded parts: S3 holding a
    part of that MD5 and size under that number holds these very bytes.
    """
    mpu = str(upload.storage["mpu"])
    try:
        listed = await client.list_parts(key, mpu)
    except S3Error as exc:
        if exc.code != "NoSuchUpload":
            raise
        if any(part.etag is not None for part in parts):
            raise StorageError(
                f"upload {upload.id}: the multipart upload {mpu} of {key} is gone from S3 "
                "(aborted by a lifecycle rule?) with parts already stored"
            ) from None
        # Nothing was stored in it: every byte is in the spool, start afresh.
        log.warning("upload %s: multipart upload of %s was gone; starting a new one",
                    upload.id, key)
        return await client.create_multipart(key, object_headers(upload.metadata))
    for number, part in enumerate(parts, 1):
        found = listed.get(number)
        if part.etag is not None:
            _check_recorded(upload.id, key, number, part, found)
        elif (
            number in digests and found is not None and found[1] == part.size
            and etag_hex(found[0]) == digests[number]
        ):
            part.etag = found[0]
    return mpu


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
