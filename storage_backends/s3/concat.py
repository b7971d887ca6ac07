"""Concatenation: the final upload's object made of the partial uploads' objects.

S3 copies the partials into parts itself (``UploadPartCopy``) when every range would be
a valid part; otherwise their bytes pass through the server, a part at a time.
"""

from __future__ import annotations

import asyncio
import io

from .client import S3Client
from .parts import copy_ranges
from .uploads import PartUploads

Pieces = list[tuple[str, int]]
"""The partial uploads' objects in order: ``(key, size)``."""


async def read_pieces(client: S3Client, pieces: Pieces) -> io.BytesIO:
    """Every byte of ``pieces`` in memory, for a final upload small enough for one PutObject."""
    data = io.BytesIO()
    for source, size in pieces:
        async for chunk in client.get(source, 0, size):
            data.write(chunk)
    return data


async def copy_parts(
    client: S3Client, key: str, mpu: str, pieces: Pieces, concurrency: int
) -> list[tuple[int, str]]:
    """Copy ``pieces`` into the parts of ``mpu`` within S3; ``(number, etag)`` of each part."""
    slots = asyncio.Semaphore(concurrency)

    async def copy(number: int, source: str, start: int, end: int) -> tuple[int, str]:
        async with slots:
            return number, await client.upload_part_copy(key, mpu, number, source, start, end)

    return list(await asyncio.gather(*(
        copy(number, *piece) for number, piece in enumerate(copy_ranges(pieces), 1)
    )))


async def stream_parts(
    client: S3Client, key: str, mpu: str, pieces: Pieces, part_size: int, concurrency: int
) -> list[tuple[int, str]]:
    """Download ``pieces`` and upload them again as parts of ``part_size``: (concurrency + 1)
    parts in memory. ``(number, etag)`` of each part."""
    uploads = PartUploads(client, key, mpu, concurrency)
    part = io.BytesIO()
    number = 0
    try:
        for source, length in pieces:
            async for chunk in client.get(source, 0, length):
                view = memoryview(chunk)
                while view:
                    view = view[part.write(view[: part_size - part.tell()]):]
                    if part.tell() == part_size:
                        number += 1
                        uploads.submit(number, part)
                        part = io.BytesIO()
                        await uploads.wait_room(concurrency)
                        if uploads.error is not None:
                            raise uploads.error
        if part.tell():
            number += 1
            uploads.submit(number, part)
        await uploads.drain()
    finally:
        await uploads.stop()
    return sorted(uploads.results.items())
