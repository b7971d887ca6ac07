"""The uploads an SQLite store wrote last, for a store that is its file's only writer.

One process alone on its SQLite file (no ``--workers``) knows every write the file gets,
so a lookup may be answered from what it wrote: a PATCH after its POST reads no row (5 %
of a small upload's instructions). Only writes fill it, never reads: a read that waits on
the connection's thread could come back with a row older than a write made meanwhile.

Writes of one upload land in the order they begin (the write gate and the batch keep
arrival order), but their callers go on in whatever order the event loop resumes them: a
cancelled caller may go on before one whose write landed earlier. So each write of an
upload gets a serial number as it begins, which forgets what was kept of it; once it
ended, what it wrote is kept only when no later write of that upload began meanwhile.
A write that failed, or whose caller was cancelled, keeps nothing: the next lookup reads
the row.

What is kept is the upload as written, not a copy: it reads back the same because its
storage info is JSON as it is (lists, not tuples; ``tests/test_storage_contract.py``
holds every backend to that), and nothing changes an upload's storage info in place.
"""

from __future__ import annotations

from collections.abc import Collection
from types import TracebackType
from typing import Self

from ..model import Upload

RECENT_UPLOADS = 4096
"""How many uploads, the last written, a store that is its file's only writer keeps."""


class RecentUploads:
    """The uploads last written, as a read of their rows would give them back."""

    def __init__(self, capacity: int) -> None:
        """``capacity``: how many to keep; 0 keeps none (other processes write the file)."""
        self._capacity = capacity
        self._uploads: dict[str, Upload] = {}
        self._writing: dict[str, int] = {}
        """The serial number of the latest write that began, of each upload being written."""
        self._serial = 0

    def get(self, upload_id: str) -> Upload | None:
        return self._uploads.get(upload_id)

    def writing(self, upload_ids: Collection[str]) -> Write:
        """A write of these uploads, for a ``with`` block around it: what was kept of them
        is forgotten now; what the block sets as :attr:`Write.upload` is kept once it ends
        without an exception, unless a later write of it began meanwhile."""
        self._serial += 1
        for upload_id in upload_ids:
            self._uploads.pop(upload_id, None)
            self._writing[upload_id] = self._serial
        return Write(self, upload_ids, self._serial)

    def _written(self, upload_ids: Collection[str], serial: int, upload: Upload | None) -> None:
        for upload_id in upload_ids:
            if self._writing.get(upload_id) != serial:
                continue  # a later write's to keep
            del self._writing[upload_id]
            if upload is not None and self._capacity:
                if len(self._uploads) >= self._capacity:
                    del self._uploads[next(iter(self._uploads))]  # the oldest kept
                self._uploads[upload_id] = upload


class Write:
    """One write of :meth:`RecentUploads.writing` under way."""

    __slots__ = ("_recent", "_serial", "_upload_ids", "upload")

    def __init__(self, recent: RecentUploads, upload_ids: Collection[str], serial: int) -> None:
        self._recent = recent
        self._upload_ids = upload_ids
        self._serial = serial
        self.upload: Upload | None = None
        """What the write wrote, once it landed; None for a removal."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Failed, or its caller cancelled: nothing kept (the next lookup reads the row).
        written = self.upload if kind is None else None
        self._recent._written(self._upload_ids, self._serial, written)
