"""The local spool: the files where the bytes of a request wait until S3 holds them.

Part ``n`` of upload ``id`` is spooled in ``{spool}/{id}/{n}``. The spool is a buffer of the
server that receives a request, not storage: whatever an upload needs between requests is
in S3 (parts and tail objects), so nothing here is synced, and another server never reads
it. The file of the open part stays after a request as a copy of its tail objects, which
the next request on this server uses instead of downloading them again.

Records written by earlier versions kept their unsent parts here (fsynced), and name no
tail objects: :func:`reconcile` makes the spool match such a record, on the server that
wrote it.

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


def digest(data: bytes | bytearray | memoryview) -> tuple[str, str]:
    """MD5 of ``data`` as hex (to compare with an ETag) and as base64 (``Content-MD5``)."""
    md5 = hashlib.md5(data, usedforsecurity=False)
    return md5.hexdigest(), base64.b64encode(md5.digest()).decode()


def body_digest(body: io.BytesIO) -> tuple[str, str]:
    """:func:`digest` of a request body, without copying it."""
    with body.getbuffer() as buffer:
        return digest(buffer)


def write_all(fd: int, view: memoryview) -> None:
    while view:
        written = os.write(fd, view)
        view = view[written:]


def read_into(body: io.BytesIO, path: Path, size: int, start: int = 0) -> None:
    """Append ``size`` bytes of a spool file, from ``start`` on, to ``body``, read in place.

    Request bodies are ``BytesIO`` objects filled this way, never ``bytes``: botocore
    wraps a ``bytes`` body in a ``BytesIO`` that shares it, and aiohttp's payload then
    asks that ``BytesIO`` for its buffer, which copies the whole part (about a tenth of
    the server's Python time in W6 of the benchmark).
    """
    end = body.seek(0, io.SEEK_END)
    if size:
        body.seek(end + size - 1)
        body.write(b"\0")
    got = 0
    with body.getbuffer() as buffer, buffer[end:] as free, open(path, "rb", buffering=0) as file:
        file.seek(start)
        while got < size and (count := file.readinto(free[got:])):
            got += count
    if got != size:
        body.truncate(end)
        raise StorageError(f"spool file {path} holds {start + got} bytes, expected {start + size}")


def read_part(path: Path, size: int, start: int = 0) -> tuple[io.BytesIO, str, str]:
    """``size`` bytes of a spool file, from ``start`` on, as a request body, with their MD5
    (hex, base64)."""
    body = io.BytesIO()
    read_into(body, path, size, start)
    return (body, *body_digest(body))


def write_file(path: Path, bodies: list[io.BytesIO]) -> None:
    """Make ``path`` hold exactly the bytes of ``bodies``, one after the other (its
    directory made if need be)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb", buffering=0) as file:
        for body in bodies:
            with body.getbuffer() as buffer:
                write_all(file.fileno(), buffer)


def keep_only(directory: Path, number: int, size: int) -> bool:
    """Remove every spool file of the upload but part ``number``'s, which is cut to ``size``
    bytes; whether it holds that many (else it goes too)."""
    kept = False
    if directory.exists():
        for entry in os.scandir(directory):
            if entry.name == str(number) and entry.stat().st_size >= size:
                os.truncate(entry.path, size)
                kept = True
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
    return kept


def clear(directory: Path) -> None:
    """Remove every spool file of the upload."""
    if directory.exists():
        for entry in os.scandir(directory):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def remove_files(directory: Path, numbers: set[int]) -> None:
    """Remove the spool files of parts ``numbers`` that are there."""
    for number in numbers:
        with contextlib.suppress(FileNotFoundError):
            (directory / str(number)).unlink()


def reconcile(upload_id: str, directory: Path, parts: list[Part]) -> None:
    """Make the spool hold exactly the unstored bytes of ``parts``, as a record of an earlier
    version names them (see the module's documentation).

    Files of stored parts and of parts past the end go, files longer than their part are
    cut; a file shorter than its part lost bytes the state says were received, and one
    that is missing was on another server, or lost.
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
                f"{max(actual, 0)} bytes, the state says {size}: its bytes were received "
                "by an earlier version of aiotusd on another server, or local data was lost"
            )
        if actual > size:
            os.truncate(path, size)
