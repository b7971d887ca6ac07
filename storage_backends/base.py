"""The storage interface: a small core every backend implements, and optional capabilities.

Handlers ask a backend what it can do (``isinstance(backend, Concatenator)``)
instead of assuming it, in the manner of tusd's ``DataStore`` and its
capability interfaces.

A backend stores bytes only; the server keeps the offsets, and with each
offset the backend's own record of the upload (:data:`StorageRecord`). The
rule that binds them: the server records an offset only after the writer's
:meth:`UploadWriter.sync` returned it, together with the writer's
:attr:`~UploadWriter.storage` as of that sync, so neither the recorded offset
nor the record runs ahead of what storage holds durably.

A backend never changes the record it is given: the steps that change it give
the new one back (``create``, ``declare_length``, ``finish``, ``concatenate``
return it; a writer holds it as :attr:`UploadWriter.storage`), and the server
records it. A record the server has not recorded yet may be lost in a crash:
the backend then finds the upload as the last recorded one says.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

StorageRecord = Mapping[str, Any]
"""A backend's record of one upload: JSON, read-only once handed over (a backend that
changes it builds a new one)."""


class StorageError(Exception):
    """The backend cannot do its work; the message says why, for an operator."""


class StorageUnavailable(StorageError):
    """The store is down or throttling for longer than retries cover; try again later."""

    retry_after = 30


@dataclass
class StoredUpload:
    """What a backend needs to know of an upload, as the server recorded it (made afresh
    for each call)."""

    id: str
    length: int | None
    offset: int
    metadata: dict[str, bytes] = field(default_factory=dict)
    storage: StorageRecord = field(default_factory=dict)
    """Backend-owned information, as last recorded (the server's upload record holds
    it): read it, never change it; a step that changes it returns the new record."""


class UploadWriter(Protocol):
    """Appends one request's body to an upload, starting at its committed offset."""

    @property
    def offset(self) -> int:
        """The offset after the last byte written (durable or not)."""

    async def write(self, data: bytes) -> None:
        """Append ``data``. May keep it in the page cache or a buffer until :meth:`sync`."""

    async def sync(self, *, body_goes_on: bool = False) -> int:
        """Make every byte written so far durable and return the durable offset.

        ``body_goes_on``: the request's body is still arriving (a periodic commit). The
        backend may then return less than was written, down to the offset of its last
        sync, sparing work that the bytes to come make needless (S3 claims only bytes
        already in its parts and tail object, rather than put a tail that a part will
        hold soon). The sync at the end of a request makes every byte durable."""

    @property
    def storage(self) -> StorageRecord:
        """The record that goes with the offset :meth:`sync` last returned (before the
        first sync and after :meth:`discard`: with the offset the writer opened at).
        The server saves it with that offset; a record handed out here is never changed
        after, a later sync or discard makes a new one."""

    async def discard(self) -> None:
        """Forget every byte written since the writer was opened (bad checksum, too long);
        :attr:`storage` then goes with the offset the writer opened at."""

    async def close(self) -> None:
        """Release resources; bytes not synced may be lost."""


@runtime_checkable
class StorageBackend(Protocol):
    async def start(self) -> None:
        """Prepare the backend (directories, connections); called once at start-up.

        Raises :class:`StorageError` with a message for the operator when the
        backend cannot work (missing bucket, bad credentials)."""

    async def stop(self) -> None:
        """Release everything; called once at shutdown."""

    async def create(self, upload: StoredUpload) -> StorageRecord:
        """Make room for a new, empty upload; returns its record, which the server saves
        with the upload."""

    async def open_writer(self, upload: StoredUpload) -> UploadWriter:
        """A writer that appends at ``upload.offset``; bytes stored past it are dropped."""

    def read(self, upload: StoredUpload, start: int, end: int) -> AsyncIterator[bytes]:
        """The bytes ``[start, end)`` of a finished upload, in bounded chunks."""

    async def delete(self, upload: StoredUpload) -> None:
        """Remove every byte of the upload; deleting a missing upload is not an error."""


@runtime_checkable
class Finisher(Protocol):
    async def finish(self, upload: StoredUpload) -> StorageRecord:
        """Called once ``upload.offset == upload.length`` is recorded, before the upload is
        recorded complete; returns the record that the server saves with the completion.

        A backend without it has nothing left to do when the last byte is stored: the
        server then records the upload complete in the same write as its last offset."""


@runtime_checkable
class Concatenator(Protocol):
    async def concatenate(
        self, final: StoredUpload, partials: list[StoredUpload]
    ) -> StorageRecord:
        """Store the finished ``partials`` back to back as the bytes of ``final``; returns
        the final's record, which the server saves with its offset."""


@runtime_checkable
class LengthDeferrer(Protocol):
    async def declare_length(self, upload: StoredUpload, length: int) -> StorageRecord:
        """The client told the length of an upload created with ``Upload-Defer-Length``;
        returns the record for that length, which the server saves with the length and the
        request's bytes (a writer opened on an upload with both carries it on)."""


@runtime_checkable
class DownloadRedirector(Protocol):
    async def download_url(
        self, upload: StoredUpload, content_type: str, content_disposition: str
    ) -> str | None:
        """A short-lived URL that serves the finished upload with these headers, or None to
        stream it through the server instead."""


@runtime_checkable
class StorageLocator(Protocol):
    def locate(self, upload_id: str) -> dict[str, str]:
        """Where the upload's bytes are, for hooks: e.g. ``{"path": ...}`` or ``{"bucket": ...,
        "key": ...}``."""


@runtime_checkable
class HealthChecker(Protocol):
    async def check(self) -> None:
        """Raise :class:`StorageError` saying why when the store cannot take uploads right now
        (for ``/readyz``); return quickly, and touch no upload."""
