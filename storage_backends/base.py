"""The storage interface: a small core every backend implements, and optional capabilities.

Handlers ask a backend what it can do (``isinstance(backend, Concatenator)``)
instead of assuming it, in the manner of tusd's ``DataStore`` and its
capability interfaces.

A backend stores bytes only; the server keeps the offsets. The rule that
binds the two: the server records an offset only after the writer's
:meth:`UploadWriter.sync` returned it, so the recorded offset never runs
ahead of what storage holds durably.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class StorageError(Exception):
    """The backend cannot do its work; the message says why, for an operator."""


class StorageUnavailable(StorageError):
    """The store is down or throttling for longer than retries cover; try again later."""

    retry_after = 30


@dataclass
class StoredUpload:
    """What a backend needs to know of an upload."""

    id: str
    length: int | None
    offset: int
    metadata: dict[str, bytes] = field(default_factory=dict)
    storage: dict[str, Any] = field(default_factory=dict)
    """Backend-owned information. It is the upload record's own dict: what a
    backend changes in it is saved by the server together with the offset, at
    creation and after every :meth:`UploadWriter.sync`."""


class UploadWriter(Protocol):
    """Appends one request's body to an upload, starting at its committed offset."""

    @property
    def offset(self) -> int:
        """The offset after the last byte written (durable or not)."""

    async def write(self, data: bytes) -> None:
        """Append ``data``. May keep it in the page cache or a buffer until :meth:`sync`."""

    async def sync(self) -> int:
        """Make every byte written so far durable and return the durable offset."""

    async def discard(self) -> None:
        """Forget every byte written since the writer was opened (bad checksum, too long)."""

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

    async def create(self, upload: StoredUpload) -> None:
        """Make room for a new, empty upload; may fill ``upload.storage``."""

    async def open_writer(self, upload: StoredUpload) -> UploadWriter:
        """A writer that appends at ``upload.offset``; bytes stored past it are dropped."""

    def read(self, upload: StoredUpload, start: int, end: int) -> AsyncIterator[bytes]:
        """The bytes ``[start, end)`` of a finished upload, in bounded chunks."""

    async def delete(self, upload: StoredUpload) -> None:
        """Remove every byte of the upload; deleting a missing upload is not an error."""


@runtime_checkable
class Finisher(Protocol):
    async def finish(self, upload: StoredUpload) -> None:
        """Called once ``upload.offset == upload.length`` is recorded, before the upload is
        recorded complete; it may change ``upload.storage``.

        A backend without it has nothing left to do when the last byte is stored: the
        server then records the upload complete in the same write as its last offset."""


@runtime_checkable
class Concatenator(Protocol):
    async def concatenate(self, final: StoredUpload, partials: list[StoredUpload]) -> None:
        """Store the finished ``partials`` back to back as the bytes of ``final``."""


@runtime_checkable
class LengthDeferrer(Protocol):
    async def declare_length(self, upload: StoredUpload, length: int) -> None:
        """The client told the length of an upload created with ``Upload-Defer-Length``."""


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
