"""The S3 workload's store: moto in server mode on loopback, and the plain multipart ceiling."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from .common import MIB, REPO, free_port
from .procs import Command, clean_env, running
from .targets import S3_CREDENTIALS, S3Place

BUCKET = "bench"
PART = 8 * MIB
"""aiotusd's default ``--s3-part-size``; @tus/server's S3 store is given the same."""
CONCURRENCY = 4
"""aiotusd's default ``--s3-concurrency``; @tus/server's S3 store is given the same."""


def _client_config() -> AioConfig:
    # aiotusd's own client settings: Content-MD5 per part, no payload hashing.
    return AioConfig(
        s3={"addressing_style": "path", "payload_signing_enabled": False},
        request_checksum_calculation="when_required",
        max_pool_connections=16,
    )


@asynccontextmanager
async def s3_client(endpoint: str) -> AsyncIterator[Any]:
    async with get_session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", config=_client_config(),
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    ) as client:
        yield client


MOTO_BUFFER = 2 * 1024**3
"""moto keeps objects up to this size in memory (W6 objects are 256 MiB by default)."""


@asynccontextmanager
async def moto(log: Path) -> AsyncIterator[S3Place]:
    """A fresh moto S3 endpoint (its own process) with an empty bucket.

    It keeps every object in memory: by default moto spills anything above 5 MiB to temporary
    files on the disk under test, where a remote S3 would write nothing, and its writeback
    then slows the spool syncs of the server measured.
    """
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    command = Command([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                      clean_env(MOTO_S3_DEFAULT_KEY_BUFFER_SIZE=str(MOTO_BUFFER)), REPO)
    async with running(command, endpoint + "/", log):
        async with s3_client(endpoint) as client:
            await client.create_bucket(Bucket=BUCKET)
        yield S3Place(endpoint, BUCKET)


async def plain_multipart(place: S3Place, key: str, data: memoryview) -> None:
    """CreateMultipartUpload, ``PART``-sized parts ``CONCURRENCY`` at a time, Complete."""
    async with s3_client(place.endpoint) as client:
        upload_id = (await client.create_multipart_upload(Bucket=place.bucket, Key=key))["UploadId"]
        slots = asyncio.Semaphore(CONCURRENCY)

        async def part(number: int, start: int) -> dict[str, Any]:
            async with slots:
                chunk = bytes(data[start : start + PART])
                md5 = await asyncio.to_thread(hashlib.md5, chunk)
                answer = await client.upload_part(
                    Bucket=place.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                    Body=chunk, ContentMD5=base64.b64encode(md5.digest()).decode(),
                )
                return {"PartNumber": number, "ETag": answer["ETag"]}

        parts = await asyncio.gather(*(
            part(number, start) for number, start in enumerate(range(0, len(data), PART), 1)))
        await client.complete_multipart_upload(
            Bucket=place.bucket, Key=key, UploadId=upload_id,
            MultipartUpload={"Parts": list(parts)},
        )
        head = await client.head_object(Bucket=place.bucket, Key=key)
    if head["ContentLength"] != len(data):
        raise RuntimeError(f"S3 object {key} has {head['ContentLength']} bytes, not {len(data)}")


async def objects_of_size(place: S3Place, size: int) -> int:
    """How many objects in the bucket have exactly ``size`` bytes (bounded to one listing)."""
    async with s3_client(place.endpoint) as client:
        listing = await client.list_objects_v2(Bucket=place.bucket, MaxKeys=1000)
    return sum(1 for item in listing.get("Contents", []) if item["Size"] == size)
