"""Uploads as S3 objects: a finished upload is the object ``{prefix}{id}``, assembled by multipart upload.

How the bytes travel
--------------------
Every byte of a request body is first appended to a local *spool file* of
the part it belongs to, ``{data_dir}/s3-spool/{id}/{part number}``. A part
whose spool file reaches the part size is *closed* and uploaded in the
background (``UploadPart`` with ``Content-MD5``), at most ``s3_concurrency``
parts at once per upload, while the request keeps streaming into the next
part. :meth:`S3Writer.sync` only fsyncs spool files: the durable offset it
returns is every byte received, never waiting for S3, and never more than
what is either in a completed part or in a spool file. The last, partly
filled part is the *tail*: it stays in its spool file, survives a restart,
and the next request appends to it until it fills up.

With ``fsync always``, the file of a part stored in S3 is not removed but kept
as a *spare* (at most ``SPARE_FILES`` per upload), and a later part is written
over it: an fdatasync of blocks already on disk commits no journal, where one of
appended bytes does (1.1 against 1.7 ms per MiB on the benchmark's disk), and no
part-sized file is freed on the way. So a spool file may be longer than its
part: its first bytes, as many as the state says, are the part.

Where state lives
-----------------
``StoredUpload.storage`` (saved by the server in SQLite together with the
offset, at creation and after every sync)::

    {"key": "<prefix><id>", "mpu": "<UploadId>" | null, "part_size": 8388608,
     "parts": [[size, etag | null], ...], "done": false}

``parts[n-1]`` is part ``n``; every entry but the last is a closed part of
exactly its target size, the last is the open tail. An ETag means the part
is stored in S3 (and its spool file may go); ``null`` means its bytes are in
the spool file. The sizes add up to the offset.

Reconciliation
--------------
When a writer opens, the spool is made to match the committed state (bytes
past the committed offset are cut off, files of stored parts and of parts
past the end removed). When closed parts are still unrecorded, or the upload
is opened for the first time since this process started (it may have
crashed), ``ListParts`` is asked: a recorded part that S3 lacks is reported
as data loss; an unrecorded part that S3 holds with the MD5 of its spool file
is adopted without a new upload; any other is (re)uploaded under the same
part number, which replaces whatever an interrupted attempt left there, so
nothing is lost and nothing duplicated. Multipart uploads of the same key
that the state does not name are aborted.

Small uploads (length known and at most one part) never start a multipart
upload: :meth:`S3Backend.finish` sends them with one ``PutObject``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import io
import logging
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from .base import StorageError, StorageUnavailable, StoredUpload

if TYPE_CHECKING:
    from server.config import Settings

log = logging.getLogger("aiotusd")

MIB = 1024 * 1024
MIN_PART = 5 * MIB
"""S3's smallest part (all but the last)."""
MAX_PART = 5 * 1024 * MIB
"""S3's largest part, and the largest range one ``UploadPartCopy`` may copy."""
READ_CHUNK = MIB
USER_METADATA_LIMIT = 2048
"""S3 user metadata: keys and values together, in UTF-8 bytes."""
PRESIGN_SECONDS = 300
SEEN_LIMIT = 100_000
_THROTTLING = frozenset(
    {
        "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
        "RequestThrottledException", "TooManyRequestsException", "SlowDown",
        "RequestLimitExceeded", "BandwidthLimitExceeded", "RequestTimeout",
        "RequestTimeTooSkewed", "ServiceUnavailable", "InternalError",
    }
)
START_CHECK = AioConfig(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=10)
"""The start-up ``HeadBucket``: one attempt, soon given up. A wrong endpoint or bucket is
then told at once, and a store that is down is waited for by whatever restarts the server;
the retries that ride out a store's hiccups are for a server that runs."""
SPARE_FILES = 2
"""Spare spool files kept per upload. A part's file is given up at the second sync after
its upload ended, when the part after it has often begun: the one after that finds it."""
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")


class S3Error(StorageError):
    """S3 refused a request; ``code`` is S3's error code."""

    def __init__(self, message: str, code: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class S3Unavailable(StorageUnavailable):
    """S3 could not be reached, or kept answering 5xx or throttling after the retries."""

    def __init__(self, message: str, code: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def translate(exc: BaseException, what: str) -> StorageError:
    """The :class:`StorageError` for an exception of aiobotocore, for an operator."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = f"{what}: S3 answered {status} {code} {error.get('Message', '')}".rstrip()
        if status >= 500 or status == 429 or code in _THROTTLING:
            return S3Unavailable(message, code, status)
        return S3Error(message, code, status)
    if isinstance(exc, (HTTPClientError, BotoConnectionError, aiohttp.ClientError, TimeoutError)):
        return S3Unavailable(f"{what}: {exc or type(exc).__name__}")
    return S3Error(f"{what}: {exc or type(exc).__name__}")


def _digest(data: bytes | bytearray | memoryview) -> tuple[str, str]:
    """MD5 of ``data`` as hex (to compare with an ETag) and as base64 (``Content-MD5``)."""
    md5 = hashlib.md5(data, usedforsecurity=False)
    return md5.hexdigest(), base64.b64encode(md5.digest()).decode()


def _etag_hex(etag: str) -> str:
    return etag.strip().strip('"').lower()


def cut_parts(parts: list[list[Any]], offset: int) -> list[list[Any]] | None:
    """``parts`` holding exactly the first ``offset`` bytes; None if they hold fewer.

    Bytes past the recorded offset (a body dropped after a periodic commit, or
    a crash before the commit) are dropped: the part that holds ``offset``
    becomes the open tail again, to be refilled from its spool file.
    """
    kept: list[list[Any]] = []
    total = 0
    for index, (size, etag) in enumerate(parts):
        last = index == len(parts) - 1
        if total + size < offset or (total + size == offset and last):
            kept.append([size, etag])
            total += size
        elif total + size == offset:
            # A closed part ends exactly at the offset: a fresh tail follows it.
            return [*kept, [size, etag], [0, None]]
        else:
            return [*kept, [offset - total, None]]
    if not kept and offset == 0:
        return [[0, None]]
    return kept if total == offset else None


def _round_up(value: int, unit: int = MIB) -> int:
    return -(-value // unit) * unit


def _metadata_text(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _header_value(text: str) -> str:
    """``text`` as an S3 metadata value: plain printable ASCII, or an RFC 2047 encoded word."""
    if all(" " <= ch <= "~" for ch in text) and text == text.strip():
        return text
    return "=?UTF-8?B?" + base64.b64encode(text.encode("utf-8")).decode() + "?="


def object_headers(metadata: dict[str, bytes]) -> dict[str, Any]:
    """Content-Type, Content-Disposition and user metadata of the object for tus metadata.

    The type and disposition are the ones the server's own GET answers (an
    unsafe type becomes ``application/octet-stream``, ``attachment``). Other
    keys become user metadata while they fit in S3's 2 KB; the rest is left
    out, never failing the upload (the full metadata stays in the database).
    """
    from server.content import content_disposition, content_type

    media_type, inline = content_type(_metadata_text(metadata.get("filetype")))
    headers: dict[str, Any] = {
        "ContentType": media_type,
        "ContentDisposition": content_disposition(
            _metadata_text(metadata.get("filename")), inline
        ),
    }
    user: dict[str, str] = {}
    used = 0
    for key, raw in metadata.items():
        name = key.lower()
        if name in ("filename", "filetype") or name in user or not _TOKEN_RE.fullmatch(name):
            continue
        text = _metadata_text(raw)
        if text is None:
            continue
        value = _header_value(text)
        cost = len(name.encode()) + len(value.encode())
        if used + cost > USER_METADATA_LIMIT:
            continue
        user[name] = value
        used += cost
    headers["Metadata"] = user
    return headers


# --- the local spool -------------------------------------------------------------------


def _fsync_path(path: Path, *, data_only: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        (os.fdatasync if data_only else os.fsync)(fd)
    finally:
        os.close(fd)


def _give_up_file(path: Path, spares: tuple[Path, ...]) -> None:
    """Keep a spool file that is no longer needed as a spare, or remove it."""
    for spare in spares:
        if not spare.exists():
            with contextlib.suppress(FileNotFoundError):
                path.rename(spare)
            return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _take_spare(path: Path, spares: tuple[Path, ...]) -> None:
    """Make a spare file ``path``, if there is one."""
    for spare in spares:
        with contextlib.suppress(FileNotFoundError):
            spare.rename(path)
            return


def _read_into(body: io.BytesIO, path: Path, size: int) -> None:
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


def _body_digest(body: io.BytesIO) -> tuple[str, str]:
    with body.getbuffer() as buffer:
        return _digest(buffer)


def _read_part(path: Path, size: int) -> tuple[io.BytesIO, str, str]:
    """The first ``size`` bytes of a spool file as a request body, with their MD5 (hex, base64)."""
    body = io.BytesIO()
    _read_into(body, path, size)
    return (body, *_body_digest(body))


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _Uploads:
    """The part uploads of one multipart upload, at most ``concurrency`` at once.

    A failed upload does not raise here: its error is kept in :attr:`error`
    for the writer to raise at its next write.
    """

    def __init__(self, backend: S3Backend, key: str, mpu: str, concurrency: int) -> None:
        self._backend = backend
        self._key = key
        self.mpu = mpu
        self._slots = asyncio.Semaphore(concurrency)
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.results: dict[int, str] = {}
        self.error: StorageError | None = None

    def submit(self, number: int, source: tuple[Path, int] | io.BytesIO) -> None:
        assert number not in self.tasks, f"part {number} is already being uploaded"
        self.results.pop(number, None)
        self.tasks[number] = asyncio.create_task(self._upload(number, source))

    @property
    def unfinished(self) -> int:
        return sum(1 for task in self.tasks.values() if not task.done())

    async def _upload(self, number: int, source: tuple[Path, int] | io.BytesIO) -> None:
        try:
            async with self._slots:
                if isinstance(source, tuple):
                    data, _, md5 = await asyncio.to_thread(_read_part, *source)
                else:
                    data = source
                    md5 = (await asyncio.to_thread(_body_digest, data))[1]
                data.seek(0)
                response = await self._backend.call(
                    f"uploading part {number} of {self._key}", "upload_part",
                    Key=self._key, UploadId=self.mpu, PartNumber=number, Body=data,
                    ContentMD5=md5,
                )
                self.results[number] = response["ETag"]
        except StorageError as exc:
            log.warning("%s", exc)
            self.error = self.error or exc
        except OSError as exc:
            self.error = self.error or StorageError(f"reading part {number} of {self._key}: {exc}")

    async def wait_room(self, limit: int) -> None:
        """Wait until no more than ``limit`` uploads are unfinished."""
        while self.unfinished > limit:
            await asyncio.wait(
                [task for task in self.tasks.values() if not task.done()],
                return_when=asyncio.FIRST_COMPLETED,
            )

    async def wait_all(self) -> None:
        """Wait for every upload; their errors stay in :attr:`error`."""
        tasks = list(self.tasks.values())
        if tasks:
            await asyncio.wait(tasks)

    async def drain(self) -> None:
        """Wait for every upload; raise the first error."""
        await self.wait_all()
        if self.error is not None:
            raise self.error

    async def cancel(self, which: Callable[[int], bool]) -> None:
        """Stop the uploads of the parts ``which`` selects and forget their results."""
        chosen = [number for number in self.tasks if which(number)]
        for number in chosen:
            self.tasks[number].cancel()
        for number in chosen:
            with contextlib.suppress(asyncio.CancelledError):
                await self.tasks.pop(number)
            self.results.pop(number, None)

    def forget(self, numbers: Iterable[int]) -> None:
        """Drop the finished uploads of these parts: their ETags are recorded."""
        for number in numbers:
            task = self.tasks.get(number)
            if task is not None and task.done():
                del self.tasks[number]
                self.results.pop(number, None)

    async def stop(self) -> None:
        """Stop the uploads still running; keep the results of those that finished."""
        await self.cancel(lambda number: not self.tasks[number].done())


# --- the writer --------------------------------------------------------------------------


class S3Writer:
    """Appends one request's body: spool, close full parts, upload them in the background."""

    def __init__(
        self,
        backend: S3Backend,
        upload: StoredUpload,
        parts: list[list[Any]],
        committed_stored: set[int],
        uploads: _Uploads | None,
    ) -> None:
        self._backend = backend
        self._upload = upload
        self._state = upload.storage
        self._directory = backend.spool_directory(upload.id)
        self._parts = parts
        self._offset = sum(part[0] for part in parts)
        self._opening_parts = [list(part) for part in parts]
        self._start = self._offset
        # The spool file of the part open at the start is kept while this writer lives,
        # whatever gets stored: discard() may have to go back to it.
        self._opening_number = len(parts)
        self._stored_at_last_sync = committed_stored
        self._uploads = uploads
        self._given_up: set[int] = set()
        """Stored parts whose files this writer removed or made spares."""
        self._spares = tuple(
            self._directory / f"spare-{n}" for n in range(1, SPARE_FILES + 1)
        ) if backend.fsync else ()
        self._fd: int | None = None
        self._unsynced: set[int] = set()
        self._new_files = False
        self._spool_known = True
        """Whether the spool files hold exactly the bytes of ``_parts`` (no failed write or cut)."""
        self._closed = False

    @property
    def offset(self) -> int:
        return self._offset

    def _target(self, number: int) -> int | None:
        return self._backend.part_target(self._state, self._upload.length, number)

    def _open_part_fd(self) -> int:
        if self._fd is None:
            number = len(self._parts)
            path = self._directory / str(number)
            if not self._directory.exists():
                self._directory.mkdir(parents=True, exist_ok=True)
                if self._backend.fsync:
                    _fsync_path(self._directory.parent)
            if not path.exists():
                self._new_files = True
                _take_spare(path, self._spares)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o640)
            os.lseek(fd, self._parts[-1][0], os.SEEK_SET)
            self._fd = fd
        return self._fd

    async def write(self, data: bytes) -> None:
        if self._uploads is not None and self._uploads.error is not None:
            raise self._uploads.error
        view = memoryview(data)
        while view:
            number = len(self._parts)
            part = self._parts[-1]
            target = self._target(number)
            if target is not None and part[0] >= target:
                await self._close_part(number, part[0])
                continue
            size = len(view) if target is None else min(len(view), target - part[0])
            fd = self._open_part_fd()
            try:
                _write_all(fd, view[:size])
            except OSError:
                self._spool_known = False
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, part[0])
                    os.lseek(fd, part[0], os.SEEK_SET)
                raise
            part[0] += size
            self._offset += size
            self._unsynced.add(number)
            view = view[size:]
            if target is not None and part[0] >= target:
                await self._close_part(number, part[0])

    async def _close_part(self, number: int, size: int) -> None:
        """Part ``number`` is full: start its upload, open the next; wait while too many are queued."""
        assert self._uploads is not None and self._fd is not None
        if number + 1 > self._backend.max_parts:
            raise StorageError(
                f"upload {self._upload.id} needs more than {self._backend.max_parts} parts; "
                "raise --s3-part-size or declare the length earlier"
            )
        os.close(self._fd)
        self._fd = None
        self._parts.append([0, None])
        self._uploads.submit(number, (self._directory / str(number), size))
        await self._uploads.wait_room(self._backend.concurrency)

    def _record_results(self, parts: list[list[Any]]) -> None:
        """Put the ETags of finished uploads into ``parts`` (closed parts only)."""
        if self._uploads is None:
            return
        for number, etag in self._uploads.results.items():
            if number < len(parts) and parts[number - 1][1] is None:
                parts[number - 1][1] = etag

    async def sync(self) -> int:
        """Make what was written so far durable. Writes may go on while it runs: what it
        returns and records is what was written when it began."""
        self._record_results(self._parts)
        offset = self._offset
        parts = [list(part) for part in self._parts]
        unsynced, self._unsynced = self._unsynced, set()
        new_files, self._new_files = self._new_files, False
        obsolete = self._stored_at_last_sync - self._given_up - {self._opening_number}
        directory = self._directory
        fsync = self._backend.fsync
        spares = self._spares

        def make_durable() -> None:
            if fsync:
                # By path: the part open now may be closed by a write while this runs.
                for number in sorted(unsynced):
                    _fsync_path(directory / str(number), data_only=True)
                if new_files:
                    _fsync_path(directory)
            if obsolete:
                # Writers before this one gave up most of them already.
                with contextlib.suppress(FileNotFoundError):
                    present = set(os.listdir(directory))
                    for number in obsolete & {int(name) for name in present if name.isdigit()}:
                        _give_up_file(directory / str(number), spares)

        try:
            await asyncio.to_thread(make_durable)
        except BaseException:
            self._unsynced |= unsynced
            self._new_files = self._new_files or new_files
            raise
        self._given_up |= obsolete
        # Files of parts stored as of this sync may go once its state is committed: at the next sync.
        self._stored_at_last_sync = {
            number for number, part in enumerate(parts, 1) if part[1] is not None
        }
        self._state["parts"] = parts
        return offset

    async def discard(self) -> None:
        """Forget every byte written since the writer was opened, synced or not."""
        opening = self._opening_parts
        if self._uploads is not None:
            await self._uploads.cancel(lambda number: number >= len(opening))
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        open_number, open_size = len(opening), opening[-1][0]
        stale = [number for number in range(open_number + 1, len(self._parts) + 1)]
        directory = self._directory

        def cut_back() -> None:
            for number in stale:
                with contextlib.suppress(FileNotFoundError):
                    (directory / str(number)).unlink()
            path = directory / str(open_number)
            if path.exists():
                os.truncate(path, open_size)

        self._spool_known = False
        await asyncio.to_thread(cut_back)
        self._spool_known = True
        self._parts = [list(part) for part in opening]
        self._record_results(self._parts)
        self._offset = self._start
        self._unsynced = {number for number in self._unsynced if number < open_number}
        if open_size:
            self._unsynced.add(open_number)
        self._state["parts"] = [list(part) for part in self._parts]

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._spool_known:
            self._backend.remember_spool(self._upload.id, [part[0] for part in self._parts])
        if self._uploads is None:
            return
        if self._uploads.error is None:
            # The parts in flight go on landing after the request; the next writer or
            # finish() takes them over, so receiving the next PATCH overlaps with them.
            # Finished ones go along too: their ETags are not recorded yet, and the next
            # writer would otherwise have to ask ListParts for them.
            self._backend.carry_over(self._upload.id, self._uploads)
        else:
            await self._uploads.stop()
        self._record_results(self._state["parts"])


class FinishedWriter:
    """The writer of an upload that takes no more bytes: stored as an object, or full."""

    def __init__(self, offset: int) -> None:
        self._offset = offset

    @property
    def offset(self) -> int:
        return self._offset

    async def write(self, data: bytes) -> None:
        if data:
            raise StorageError("the upload is finished; it takes no more bytes")

    async def sync(self) -> int:
        return self._offset

    async def discard(self) -> None:
        return None

    async def close(self) -> None:
        return None


# --- the backend -------------------------------------------------------------------------


class S3Backend:
    """Uploads in an S3 bucket; see the module documentation."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_prefix
        self.part_size = max(settings.s3_part_size, MIN_PART)
        self.max_parts = settings.s3_max_parts
        self.concurrency = max(settings.s3_concurrency, 1)
        self.equal_parts = settings.s3_equal_parts
        self.spool = Path(settings.data_dir) / "s3-spool"
        self.fsync = settings.fsync == "always"
        # While the length is unknown, parts double in size every ``_growth_step`` parts,
        # so that max_parts parts hold ~255 times the first step's bytes.
        self._growth_step = max(1, self.max_parts // 8)
        self._client: Any = None
        self._exit = contextlib.AsyncExitStack()
        self._seen: collections.OrderedDict[str, list[int] | None] = collections.OrderedDict()
        """Uploads this process has opened, each with the sizes of its spool files when
        its last writer closed, if known: a spool that matches the committed state needs no
        reconciliation."""
        self._carried: dict[str, _Uploads] = {}
        """Part uploads that went on after the request that started them, by upload id."""

    # -- plumbing

    def _config(self) -> AioConfig:
        attempts = os.environ.get("AWS_MAX_ATTEMPTS", "5")
        if not attempts.strip().isdecimal():
            raise StorageError(f"AWS_MAX_ATTEMPTS {attempts!r} is not a whole number")
        retries: dict[str, Any] = {
            "mode": os.environ.get("AWS_RETRY_MODE", "standard"),
            "max_attempts": int(attempts),
        }
        return AioConfig(
            region_name=self.settings.s3_region or None,
            signature_version="s3v4",
            s3={
                "addressing_style": "path" if self.settings.s3_path_style else "auto",
                # Parts carry Content-MD5; hashing them again with SHA-256 for the signature
                # would only burn CPU on the event loop.
                "payload_signing_enabled": False,
            },
            retries=retries,
            connect_timeout=10,
            read_timeout=60,
            # One pool for every upload of the server, each with up to `concurrency` parts in flight.
            max_pool_connections=max(64, self.concurrency * 16),
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )

    async def call(self, what: str, operation: str, **params: Any) -> Any:
        """Run a client operation on the bucket; errors become :class:`StorageError`."""
        try:
            return await getattr(self._client, operation)(Bucket=self.bucket, **params)
        except (BotoCoreError, ClientError, aiohttp.ClientError, TimeoutError) as exc:
            raise translate(exc, what) from exc

    def key(self, upload: StoredUpload) -> str:
        return str(upload.storage.get("key") or self.prefix + upload.id)

    async def check(self) -> None:
        """The bucket answers ``HeadBucket`` (for ``/readyz``)."""
        await self.call(f"checking the bucket {self.bucket}", "head_bucket")

    def locate(self, upload_id: str) -> dict[str, str]:
        return {"bucket": self.bucket, "key": self.prefix + upload_id}

    def spool_directory(self, upload_id: str) -> Path:
        if "/" in upload_id or upload_id.startswith(".") or not upload_id:
            raise ValueError(f"not an upload id: {upload_id!r}")
        return self.spool / upload_id

    def _remember(self, upload_id: str, spool: list[int] | None = None) -> None:
        self._seen[upload_id] = spool
        self._seen.move_to_end(upload_id)
        while len(self._seen) > SEEN_LIMIT:
            self._seen.popitem(last=False)

    def plan_part_size(self, length: int | None) -> int:
        """The part size for an upload of ``length`` bytes within ``max_parts`` parts."""
        if length is None:
            return self.part_size
        size = max(self.part_size, _round_up(-(-length // self.max_parts)))
        if size > MAX_PART:
            raise StorageError(
                f"an upload of {length} bytes needs parts over 5 GiB with at most "
                f"{self.max_parts} parts"
            )
        return size

    def part_target(self, state: dict[str, Any], length: int | None, number: int) -> int | None:
        """The size at which part ``number`` is closed, or None when parts are never closed."""
        if not state.get("mpu"):
            return None
        size = int(state["part_size"])
        if self.equal_parts or length is not None:
            return size
        return min(size << ((number - 1) // self._growth_step), MAX_PART)

    # -- life cycle

    async def start(self) -> None:
        """Open the client once the bucket answered (see :data:`START_CHECK`); else raise
        :class:`StorageError` naming the bucket and the endpoint."""
        if not self.bucket:
            raise StorageError("--s3-bucket is required with --storage s3")
        self.spool.mkdir(parents=True, exist_ok=True)
        session = get_session()
        endpoint = self.settings.s3_endpoint or None
        where = endpoint or "AWS"
        try:
            config = self._config()
            async with session.create_client(
                "s3", endpoint_url=endpoint, config=config.merge(START_CHECK)
            ) as client:
                await client.head_bucket(Bucket=self.bucket)
            self._client = await self._exit.enter_async_context(
                session.create_client("s3", endpoint_url=endpoint, config=config)
            )
        except ClientError as exc:
            await self._exit.aclose()
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if status == 404 or code in ("404", "NoSuchBucket"):
                raise StorageError(f"S3 bucket {self.bucket!r} does not exist at {where}") from None
            if status in (401, 403):
                raise StorageError(
                    f"access to S3 bucket {self.bucket!r} at {where} was denied ({status}): check "
                    "the credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE / instance role), the "
                    "region and the bucket policy"
                ) from None
            raise StorageError(f"cannot use S3 bucket {self.bucket!r} at {where}: {exc}") from None
        except (BotoCoreError, ValueError) as exc:  # botocore refuses some values with ValueError
            await self._exit.aclose()
            raise StorageError(f"cannot use S3 bucket {self.bucket!r} at {where}: {exc}") from None
        except BaseException:
            await self._exit.aclose()
            raise

    async def stop(self) -> None:
        carried, self._carried = self._carried, {}
        for uploads in carried.values():
            await uploads.stop()
        await self._exit.aclose()
        self._client = None

    def remember_spool(self, upload_id: str, sizes: list[int]) -> None:
        """The spool files of ``upload_id`` now hold parts of these sizes, and nothing else
        wrote to them."""
        if upload_id in self._seen:
            self._remember(upload_id, sizes)

    def carry_over(self, upload_id: str, uploads: _Uploads) -> None:
        """Keep the part uploads of an ended request for the upload's next writer."""
        self._carried[upload_id] = uploads

    async def _take_over(self, upload_id: str, mpu: str | None) -> _Uploads | None:
        """The part uploads an earlier request of the upload left running, if still of use."""
        carried = self._carried.pop(upload_id, None)
        if carried is not None and (carried.error is not None or carried.mpu != mpu):
            await carried.stop()
            return None
        return carried

    # -- uploads

    async def create(self, upload: StoredUpload) -> None:
        key = self.prefix + upload.id
        state = upload.storage
        state.update(
            key=key, mpu=None, part_size=self.plan_part_size(upload.length),
            parts=[[0, None]], done=False,
        )
        if upload.length is None or upload.length > state["part_size"]:
            state["mpu"] = await self._create_multipart(key, upload.metadata)
        self._remember(upload.id)

    async def _create_multipart(self, key: str, metadata: dict[str, bytes]) -> str:
        response = await self.call(
            f"starting the multipart upload of {key}", "create_multipart_upload",
            Key=key, **object_headers(metadata),
        )
        return str(response["UploadId"])

    async def declare_length(self, upload: StoredUpload, length: int) -> None:
        state = upload.storage
        parts = state["parts"]
        closed = len(parts) - 1
        if self.equal_parts:
            if -(-length // state["part_size"]) > self.max_parts:
                if closed:
                    raise StorageError(
                        f"upload {upload.id} of {length} bytes does not fit in {self.max_parts} "
                        f"parts of {state['part_size']} bytes"
                    )
                state["part_size"] = self.plan_part_size(length)
        else:
            current = self.part_target(state, None, closed + 1) or state["part_size"]
            stored = sum(part[0] for part in parts[:-1])
            room = max(self.max_parts - closed, 1)
            size = max(current, _round_up(-(-(length - stored) // room)))
            if size > MAX_PART:
                raise StorageError(f"upload {upload.id} of {length} bytes needs parts over 5 GiB")
            state["part_size"] = size
        if not state.get("mpu") and length > state["part_size"]:
            state["mpu"] = await self._create_multipart(self.key(upload), upload.metadata)

    async def open_writer(self, upload: StoredUpload) -> S3Writer | FinishedWriter:
        state = upload.storage
        if state.get("done") or upload.offset == upload.length:
            # Full: finish() takes it from here, and it alone may find that a crash came
            # after the multipart upload was completed (which ListParts would call lost).
            return FinishedWriter(upload.offset)
        parts = cut_parts(state["parts"], upload.offset)
        if parts is None:
            raise StorageError(
                f"upload {upload.id}: parts hold {sum(p[0] for p in state['parts'])} bytes "
                f"but the offset is {upload.offset}: data was lost"
            )
        state["parts"] = [list(part) for part in parts]
        directory = self.spool_directory(upload.id)
        key = self.key(upload)
        mpu = state.get("mpu")
        carried = await self._take_over(upload.id, mpu)
        if carried is not None:
            # Parts from the open tail on were cut back (a body dropped): theirs go again.
            await carried.cancel(lambda number: number >= len(parts))
        pending = [
            n for n, part in enumerate(parts[:-1], 1)
            if part[1] is None and (carried is None or n not in carried.tasks)
        ]
        first = upload.id not in self._seen
        check = bool(mpu) and (first or bool(pending))
        # Nothing to reconcile when the last writer left the spool as committed (the files
        # of parts stored since then go at the new writer's first sync).
        spool_matches = self._seen.get(upload.id) == [part[0] for part in parts]
        digests = {} if spool_matches and not check else await asyncio.to_thread(
            self._reconcile_spool, upload.id, directory, parts, pending if check else []
        )
        committed_stored = {n for n, part in enumerate(parts, 1) if part[1] is not None}
        if carried is not None:
            carried.forget(committed_stored)
        if check:
            mpu = await self._reconcile_parts(upload, key, parts, digests)
            state["mpu"] = mpu
        if first:
            await self._abort_strays(key, keep=mpu)
        self._remember(upload.id)
        if carried is not None and carried.mpu != mpu:  # a new multipart upload, after all
            await carried.stop()
            carried = None
        uploads = carried or (_Uploads(self, key, mpu, self.concurrency) if mpu else None)
        if uploads is not None:
            for number, part in enumerate(parts[:-1], 1):
                if part[1] is None and number not in uploads.tasks:
                    uploads.submit(number, (directory / str(number), part[0]))
        return S3Writer(self, upload, parts, committed_stored, uploads)

    @staticmethod
    def _reconcile_spool(
        upload_id: str, directory: Path, parts: list[list[Any]], digest_numbers: list[int]
    ) -> dict[int, str]:
        """Make the spool hold exactly the unstored bytes of ``parts``; MD5s of some parts."""
        needed = {n: part[0] for n, part in enumerate(parts, 1) if part[1] is None and part[0]}
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
        return {number: _read_part(directory / str(number), needed[number])[1]
                for number in digest_numbers}

    async def _list_parts(self, key: str, mpu: str) -> dict[int, tuple[str, int]]:
        listed: dict[int, tuple[str, int]] = {}
        marker = 0
        while True:
            response = await self.call(
                f"listing the parts of {key}", "list_parts",
                Key=key, UploadId=mpu, PartNumberMarker=marker, MaxParts=1000,
            )
            for part in response.get("Parts", []):
                listed[int(part["PartNumber"])] = (str(part["ETag"]), int(part["Size"]))
            if not response.get("IsTruncated"):
                return listed
            marker = int(response["NextPartNumberMarker"])

    async def _reconcile_parts(
        self, upload: StoredUpload, key: str, parts: list[list[Any]], digests: dict[int, str]
    ) -> str:
        """Check ``parts`` against ListParts; adopt parts S3 already holds. Returns the UploadId."""
        mpu = str(upload.storage["mpu"])
        try:
            listed = await self._list_parts(key, mpu)
        except S3Error as exc:
            if exc.code != "NoSuchUpload":
                raise
            if any(part[1] is not None for part in parts):
                raise StorageError(
                    f"upload {upload.id}: the multipart upload {mpu} of {key} is gone from S3 "
                    "(aborted by a lifecycle rule?) with parts already stored"
                ) from None
            # Nothing was stored in it: every byte is in the spool, start afresh.
            log.warning("upload %s: multipart upload of %s was gone; starting a new one",
                        upload.id, key)
            return await self._create_multipart(key, upload.metadata)
        for number, part in enumerate(parts, 1):
            size, etag = part
            found = listed.get(number)
            if etag is not None:
                if found is None or _etag_hex(found[0]) != _etag_hex(etag) or found[1] != size:
                    raise StorageError(
                        f"upload {upload.id}: part {number} of {key} recorded as stored "
                        f"({size} bytes, ETag {etag}) is not in S3 as such: {found}"
                    )
            elif (
                number in digests and found is not None and found[1] == size
                and _etag_hex(found[0]) == digests[number]
            ):
                part[1] = found[0]
        return mpu

    async def _abort_strays(self, key: str, keep: str | None) -> None:
        """Abort multipart uploads of ``key`` other than ``keep`` (left by a crash)."""
        for upload_id in await self._multipart_uploads_of(key):
            if upload_id != keep:
                log.warning("aborting stray multipart upload %s of %s", upload_id, key)
                await self._abort(key, upload_id)

    async def _multipart_uploads_of(self, key: str) -> list[str]:
        found: list[str] = []
        params: dict[str, Any] = {"Prefix": key}
        while True:
            response = await self.call(
                f"listing multipart uploads of {key}", "list_multipart_uploads", **params
            )
            found += [u["UploadId"] for u in response.get("Uploads", []) if u["Key"] == key]
            if not response.get("IsTruncated"):
                return found
            params = {
                "Prefix": key,
                "KeyMarker": response["NextKeyMarker"],
                "UploadIdMarker": response["NextUploadIdMarker"],
            }

    async def _abort(self, key: str, mpu: str) -> None:
        try:
            await self.call(
                f"aborting the multipart upload of {key}", "abort_multipart_upload",
                Key=key, UploadId=mpu,
            )
        except S3Error as exc:
            if exc.code != "NoSuchUpload":
                raise

    async def _put(self, upload: StoredUpload, key: str, data: io.BytesIO) -> None:
        md5 = (await asyncio.to_thread(_body_digest, data))[1]
        data.seek(0)
        await self.call(
            f"storing {key}", "put_object",
            Key=key, Body=data, ContentMD5=md5, **object_headers(upload.metadata),
        )

    async def _complete(self, key: str, mpu: str, parts: Iterable[tuple[int, str]]) -> None:
        await self.call(
            f"completing the multipart upload of {key}", "complete_multipart_upload",
            Key=key, UploadId=mpu,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in parts]},
        )

    async def _object_size(self, key: str) -> int | None:
        try:
            response = await self.call(f"looking up {key}", "head_object", Key=key)
        except S3Error as exc:
            if exc.status == 404 or exc.code in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(response["ContentLength"])

    async def finish(self, upload: StoredUpload) -> None:
        state = upload.storage
        if state.get("done"):
            return
        key = self.key(upload)
        directory = self.spool_directory(upload.id)
        parts = state["parts"]
        mpu = state.get("mpu")
        spooled = [
            directory / str(n) for n, part in enumerate(parts, 1) if part[1] is None and part[0]
        ]
        # The object may already be the upload: this process (or one that crashed) stored
        # it, but the finish was not recorded. Sending parts again would go to a multipart
        # upload that is no more. Asked once per process, and whenever spool files are missing.
        maybe_stored = upload.id not in self._seen or not await asyncio.to_thread(
            lambda: all(path.exists() for path in spooled)
        )
        if maybe_stored and await self._object_size(key) == upload.length:
            state.update(done=True, mpu=None, parts=[])
            await asyncio.to_thread(shutil.rmtree, directory, True)
            self._seen.pop(upload.id, None)
            return
        if not mpu:
            def gather() -> io.BytesIO:
                body = io.BytesIO()
                for n, part in enumerate(parts, 1):
                    if part[0]:
                        _read_into(body, directory / str(n), part[0])
                return body

            await self._put(upload, key, await asyncio.to_thread(gather))
        else:
            carried = await self._take_over(upload.id, mpu)
            if carried is not None:
                await carried.wait_all()
                for number, etag in carried.results.items():
                    if number <= len(parts) and parts[number - 1][1] is None:
                        parts[number - 1][1] = etag
                await carried.stop()
            uploads = _Uploads(self, key, mpu, self.concurrency)
            for number, part in enumerate(parts, 1):
                if part[1] is None and part[0]:
                    uploads.submit(number, (directory / str(number), part[0]))
            try:
                await uploads.drain()
            finally:
                await uploads.stop()
            for number, etag in uploads.results.items():
                parts[number - 1][1] = etag
            stored = [(n, part[1]) for n, part in enumerate(parts, 1) if part[0]]
            if not stored:
                await self._abort(key, mpu)
                await self._put(upload, key, io.BytesIO())
            else:
                try:
                    await self._complete(key, mpu, stored)
                except S3Error as exc:
                    # Completed before a crash kept us from recording it?
                    if exc.code != "NoSuchUpload" or await self._object_size(key) != upload.length:
                        raise
        state.update(done=True, mpu=None, parts=[])
        await asyncio.to_thread(shutil.rmtree, directory, True)
        self._seen.pop(upload.id, None)

    def read(self, upload: StoredUpload, start: int, end: int) -> AsyncIterator[bytes]:
        return self._read_key(self.key(upload), start, end)

    async def _read_key(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` of object ``key`` (GetObject with Range), in bounded chunks."""
        if start >= end:
            return
        what = f"reading {key}"
        response = await self.call(what, "get_object", Key=key, Range=f"bytes={start}-{end - 1}")
        async with response["Body"] as body:
            remaining = end - start
            while remaining > 0:
                try:
                    chunk = await body.read(min(READ_CHUNK, remaining))
                except (BotoCoreError, aiohttp.ClientError, TimeoutError) as exc:
                    raise translate(exc, what) from exc
                if not chunk:
                    raise StorageError(f"{key} ended {remaining} bytes early")
                remaining -= len(chunk)
                yield chunk

    async def download_url(
        self, upload: StoredUpload, content_type: str, content_disposition: str
    ) -> str | None:
        """A presigned GET of the object, valid for a few minutes, with our content headers;
        None unless ``s3_download_redirect`` is on."""
        if not self.settings.s3_download_redirect:
            return None
        return str(
            await self._client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket, "Key": self.key(upload),
                    "ResponseContentType": content_type,
                    "ResponseContentDisposition": content_disposition,
                },
                ExpiresIn=PRESIGN_SECONDS,
            )
        )

    async def delete(self, upload: StoredUpload) -> None:
        key = self.key(upload)
        mpu = upload.storage.get("mpu")
        carried = self._carried.pop(upload.id, None)
        if carried is not None:
            await carried.stop()
        if mpu:
            await self._abort(key, mpu)
        await self._abort_strays(key, keep=None)
        await self.call(f"deleting {key}", "delete_object", Key=key)
        await asyncio.to_thread(shutil.rmtree, self.spool_directory(upload.id), True)
        self._seen.pop(upload.id, None)

    # -- concatenation

    async def concatenate(self, final: StoredUpload, partials: list[StoredUpload]) -> None:
        state = final.storage
        key = self.key(final)
        pieces = [(self.key(p), p.length or 0) for p in partials if p.length]
        total = sum(size for _, size in pieces)
        mpu = state.get("mpu")
        if await self._object_size(key) == total:
            # Assembled before a crash kept the server from recording it: the partials are
            # immutable, so an object of their total length at this key is the final upload.
            state.update(done=True, mpu=None, parts=[])
            return
        if total == 0 or (not self._copyable(pieces) and total <= self.part_size):
            if mpu:
                await self._abort(key, mpu)
            data = io.BytesIO()
            for source, size in pieces:
                async for chunk in self._read_key(source, 0, size):
                    data.write(chunk)
            await self._put(final, key, data)
        else:
            # One that an earlier, crashed attempt started would never be completed.
            await self._abort_strays(key, keep=mpu)
            if not mpu:
                mpu = state["mpu"] = await self._create_multipart(key, final.metadata)
            if self._copyable(pieces):
                stored = await self._copy_parts(key, mpu, pieces)
            else:
                stored = await self._stream_parts(key, mpu, pieces, total)
            await self._complete(key, mpu, stored)
        state.update(done=True, mpu=None, parts=[])

    def _copy_ranges(self, pieces: list[tuple[str, int]]) -> list[tuple[str, int, int]]:
        ranges = []
        for source, size in pieces:
            count = -(-size // MAX_PART)
            step = -(-size // count)
            ranges += [(source, start, min(start + step, size)) for start in range(0, size, step)]
        return ranges

    def _copyable(self, pieces: list[tuple[str, int]]) -> bool:
        """Whether every part of a server-side copy would be a valid part."""
        if not pieces:
            return False
        ranges = self._copy_ranges(pieces)
        if len(ranges) > self.max_parts:
            return False
        sizes = [end - start for _, start, end in ranges]
        if any(size < MIN_PART for size in sizes[:-1]):
            return False
        # Equal-part stores (R2): every part but the last the same size, the last no larger.
        return not self.equal_parts or len(set(sizes[:-1])) <= 1 and sizes[-1] <= sizes[0]

    async def _copy_parts(
        self, key: str, mpu: str, pieces: list[tuple[str, int]]
    ) -> list[tuple[int, str]]:
        slots = asyncio.Semaphore(self.concurrency)

        async def copy(number: int, source: str, start: int, end: int) -> tuple[int, str]:
            async with slots:
                response = await self.call(
                    f"copying {source} into part {number} of {key}", "upload_part_copy",
                    Key=key, UploadId=mpu, PartNumber=number,
                    CopySource={"Bucket": self.bucket, "Key": source},
                    CopySourceRange=f"bytes={start}-{end - 1}",
                )
                return number, str(response["CopyPartResult"]["ETag"])

        return list(await asyncio.gather(*(
            copy(number, *piece) for number, piece in enumerate(self._copy_ranges(pieces), 1)
        )))

    async def _stream_parts(
        self, key: str, mpu: str, pieces: list[tuple[str, int]], total: int
    ) -> list[tuple[int, str]]:
        """Download the partials and upload them again as parts: (concurrency + 1) parts in memory."""
        size = self.plan_part_size(total)
        uploads = _Uploads(self, key, mpu, self.concurrency)
        part = io.BytesIO()
        number = 0
        try:
            for source, length in pieces:
                async for chunk in self._read_key(source, 0, length):
                    view = memoryview(chunk)
                    while view:
                        view = view[part.write(view[: size - part.tell()]):]
                        if part.tell() == size:
                            number += 1
                            uploads.submit(number, part)
                            part = io.BytesIO()
                            await uploads.wait_room(self.concurrency)
                            if uploads.error is not None:
                                raise uploads.error
            if part.tell():
                number += 1
                uploads.submit(number, part)
            await uploads.drain()
        finally:
            await uploads.stop()
        return sorted(uploads.results.items())
