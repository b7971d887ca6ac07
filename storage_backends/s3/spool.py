"""The local spool: the files where the bytes of parts wait until S3 holds them.

Part ``n`` of upload ``id`` is spooled in ``{spool}/{id}/{n}``; its first bytes, as many as
the state records, are the part (a reused spare file may hold older bytes past them).
Everything here is blocking file I/O, run in a thread by the callers.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
from pathlib import Path

from ..base import StorageError
from .parts import Part

SPARE_FILES = 2
"""Spare spool files kept per upload. A part's file is given up at the second sync after
its upload ended, when the part after it has often begun: the one after that finds it."""


def digest(data: bytes | bytearray | memoryview) -> tuple[str, str]:
    """MD5 of ``data`` as hex (to compare with an ETag) and as base64 (``Content-MD5``)."""
    md5 = hashlib.md5(data, usedforsecurity=False)
    return md5.hexdigest(), base64.b64encode(md5.digest()).decode()


def body_digest(body: io.BytesIO) -> tuple[str, str]:
    """:func:`digest` of a request body, without copying it."""
    with body.getbuffer() as buffer:
        return digest(buffer)


def fsync_path(path: Path, *, data_only: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        (os.fdatasync if data_only else os.fsync)(fd)
    finally:
        os.close(fd)


def spare_paths(directory: Path) -> tuple[Path, ...]:
    return tuple(directory / f"spare-{n}" for n in range(1, SPARE_FILES + 1))


def give_up_file(path: Path, spares: tuple[Path, ...]) -> None:
    """Keep a spool file that is no longer needed as a spare, or remove it."""
    for spare in spares:
        if not spare.exists():
            with contextlib.suppress(FileNotFoundError):
                path.rename(spare)
            return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def take_spare(path: Path, spares: tuple[Path, ...]) -> None:
    """Make a spare file ``path``, if there is one."""
    for spare in spares:
        with contextlib.suppress(FileNotFoundError):
            spare.rename(path)
            return


def write_all(fd: int, view: memoryview) -> None:
    while view:
        written = os.write(fd, view)
        view = view[written:]


def read_into(body: io.BytesIO, path: Path, size: int) -> None:
    """Append the first ``size`` bytes of a spool file to ``body``, read in place.

    Request bodies are ``BytesIO`` objects filled this way, never ``bytes``: botocore
    wraps a ``bytes`` body in a ``BytesIO`` that shares it, and aiohttp's payload then
    asks that ``BytesIO`` for its buffer, which copies the whole part (about a tenth of
    the server's Python time in W6 of the benchmark).
    """
    start = body.seek(0, io.SEEK_END)
    if size:
        body.seek(start + size - 1)
        body.write(b"\0")
    got = 0
    with body.getbuffer() as buffer, buffer[start:] as free, open(path, "rb", buffering=0) as file:
        while got < size and (count := file.readinto(free[got:])):
            got += count
    if got != size:
        body.truncate(start)
        raise StorageError(f"spool file {path} holds {got} bytes, expected {size}")


def read_part(path: Path, size: int) -> tuple[io.BytesIO, str, str]:
    """The first ``size`` bytes of a spool file as a request body, with their MD5 (hex, base64)."""
    body = io.BytesIO()
    read_into(body, path, size)
    return (body, *body_digest(body))


def read_parts(directory: Path, parts: list[Part]) -> io.BytesIO:
    """Every byte of ``parts`` (all spooled) as one request body."""
    body = io.BytesIO()
    for number, part in enumerate(parts, 1):
        if part.size:
            read_into(body, directory / str(number), part.size)
    return body


def reconcile(
    upload_id: str, directory: Path, parts: list[Part], digest_numbers: list[int]
) -> dict[int, str]:
    """Make the spool hold exactly the unstored bytes of ``parts``; the MD5s (hex) of the
    parts ``digest_numbers``.

    Files of stored parts and of parts past the end go, files longer than their part are
    cut; a file shorter than its part lost bytes the state says were received.
    """
    needed = {n: part.size for n, part in enumerate(parts, 1) if part.etag is None and part.size}
    if directory.exists():
        for entry in os.scandir(directory):
            if not entry.name.isdigit() or int(entry.name) not in needed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
    for number, size in needed.items():
        path = directory / str(number)
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            actual = -1
        if actual < size:
            raise StorageError(
                f"upload {upload_id}: spool file of part {number} holds "
                f"{max(actual, 0)} bytes, the state says {size}: local data was lost"
            )
        if actual > size:
            os.truncate(path, size)
    return {number: read_part(directory / str(number), needed[number])[1]
            for number in digest_numbers}


def sync_files(directory: Path, numbers: set[int], *, entries: bool) -> None:
    """fdatasync the spool files of parts ``numbers``, by path (the open part's file may be
    closed by a write meanwhile); fsync the directory too when files were made in it."""
    for number in sorted(numbers):
        fsync_path(directory / str(number), data_only=True)
    if entries:
        fsync_path(directory)


def give_up_files(directory: Path, numbers: set[int], spares: tuple[Path, ...]) -> None:
    """Keep as spares, or remove, those of the files of parts ``numbers`` still there."""
    with contextlib.suppress(FileNotFoundError):
        present = {int(name) for name in os.listdir(directory) if name.isdigit()}
        for number in numbers & present:
            give_up_file(directory / str(number), spares)
