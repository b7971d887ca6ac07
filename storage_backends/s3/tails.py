"""Tail objects: the bytes of an upload's open part, where every server can read them.

A part goes to S3 once it is full. Until then its bytes (the *tail*: below the part size,
so often below S3's 5 MiB minimum part) are put at the end of each request as tail
objects ``{key}.part{n}.{start}.{token}``, each holding bytes ``[start, start + size)``
of part ``n``, which the upload's record names with their part, start, size and MD5. The
tail is a chain of them from the part's first byte on: a request puts only the bytes it
added (one object), so many small requests do not send the whole tail again and again;
past :data:`MAX_CHAIN` objects, a request puts the whole tail as one instead. The next
request, on whichever server, reads the chain back into its spool and appends to it (or
uses the copy its own spool kept, when it is this one).

Each put is a new object under a new random token, never written over: a record that the
server may still hold, or go back to, names bytes that are still there, and a server that
lost the upload's lock but still runs cannot spoil the tail of the one that took over.
Upload ids hold no dot, so ``{key}.part`` begins no other upload's key.

Superseded tail objects are deleted by the next writer, which opens from a record the
database holds, so that no older record can become current again. One put just before a
crash, never recorded, is found by listing ``{key}.part`` when a server first opens the
upload, and when the upload is finished or deleted.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..base import StorageError
from .client import S3Client, S3Error
from .spool import body_digest, read_part

log = logging.getLogger("aiotusd")

MAX_CHAIN = 16
"""Most tail objects in one chain: a longer one would be put as one object instead. Bounds
the record's size and the reads of a server that takes the upload over."""

Chain = tuple["Tail", ...]
"""Tail objects end to end, from the first byte of their part on."""


@dataclass(frozen=True, slots=True)
class Tail:
    """A tail object: bytes ``[start, start + size)`` of part ``part``, with their MD5 (hex)."""

    key: str
    part: int
    start: int
    size: int
    md5: str

    @property
    def end(self) -> int:
        return self.start + self.size

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> Tail:
        return cls(
            str(item["key"]), int(item["part"]), int(item["start"]), int(item["size"]),
            str(item["md5"]),
        )

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "part": self.part, "start": self.start, "size": self.size,
                "md5": self.md5}


def tails_from_json(items: list[dict[str, Any]]) -> list[Tail]:
    return [Tail.from_json(item) for item in items]


def tails_to_json(tails: Iterable[Tail]) -> list[dict[str, Any]]:
    return [tail.to_json() for tail in tails]


def chains(tails: Iterable[Tail], part: int) -> dict[int, Chain]:
    """For each size of a beginning of part ``part`` that ``tails`` hold end to end, the
    chain of fewest objects that holds it (the empty chain holds 0 bytes)."""
    by_start: dict[int, list[Tail]] = {}
    for tail in tails:
        if tail.part == part:
            by_start.setdefault(tail.start, []).append(tail)
    found: dict[int, Chain] = {0: ()}
    reached = [0]
    while reached:  # breadth first: each size is reached first by its shortest chain
        step = []
        for position in reached:
            for tail in by_start.get(position, ()):
                if tail.end not in found:
                    found[tail.end] = (*found[position], tail)
                    step.append(tail.end)
        reached = step
    return found


def holding(tails: Iterable[Tail], part: int, size: int) -> Chain | None:
    """The chain that holds the first ``size`` bytes of part ``part``, if ``tails`` have one."""
    return chains(tails, part).get(size)


def prefix_of(key: str) -> str:
    """What the keys of the tail objects of the upload stored as ``key`` begin with."""
    return key + ".part"


async def put(
    client: S3Client, key: str, path: Path, part: int, start: int, size: int
) -> Tail:
    """Put bytes ``[start, start + size)`` of spool file ``path`` (part ``part``) as a new
    tail object of the upload stored as ``key``."""
    body, md5, md5_base64 = await asyncio.to_thread(read_part, path, size, start)
    tail = Tail(f"{prefix_of(key)}{part}.{start}.{secrets.token_hex(8)}", part, start, size, md5)
    body.seek(0)
    await client.put(tail.key, body, md5_base64, {})
    return tail


async def read(client: S3Client, tail: Tail) -> io.BytesIO:
    """The bytes of ``tail``, checked against the size and MD5 recorded."""
    body = io.BytesIO()
    try:
        async for chunk in client.get(tail.key, 0, tail.size):
            body.write(chunk)
    except S3Error as exc:
        if exc.code not in ("NoSuchKey", "InvalidRange"):
            raise
        raise _lost(tail, exc.code) from None
    md5 = (await asyncio.to_thread(body_digest, body))[0]
    if body.tell() != tail.size or md5 != tail.md5:
        raise _lost(tail, f"it holds {body.tell()} bytes of MD5 {md5}")
    body.seek(0)
    return body


async def read_chain(client: S3Client, chain: Chain) -> list[io.BytesIO]:
    """The bytes of the tail objects of ``chain``, each checked, in order."""
    return list(await asyncio.gather(*(read(client, tail) for tail in chain)))


def _lost(tail: Tail, found: str) -> StorageError:
    return StorageError(
        f"tail object {tail.key} does not hold the {tail.size} bytes of MD5 {tail.md5} "
        f"recorded ({found}): data was lost"
    )


async def delete(client: S3Client, keys: Iterable[str]) -> None:
    """Delete these tail objects; one that is gone already is no error."""
    await asyncio.gather(*(client.delete(key) for key in set(keys)))


async def delete_quietly(client: S3Client, keys: Iterable[str]) -> None:
    """:func:`delete`, for superseded tails: one that cannot be deleted now is only logged
    (finishing or deleting the upload finds it again)."""
    try:
        await delete(client, keys)
    except StorageError as exc:
        log.warning("%s", exc)
