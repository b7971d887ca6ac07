"""The uploads an SQLite store wrote last, kept to answer lookups.

A PATCH after its POST need not read the row the POST wrote (5 % of a small upload's
instructions). One process alone on its SQLite file (no ``--workers``) knows every write
the file gets, so it answers a lookup from what it wrote; a worker does so only while the
upload's mark (:mod:`.marks`) is still the one its write left. Only writes fill it, never
reads: a read that waits on the connection's thread could come back with a row older than
a write made meanwhile.

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
from .marks import Stamps, WriteMarks

RECENT_UPLOADS = 4096
"""How many uploads, the last written, a store keeps."""


class RecentUploads:
    """The uploads last written, as a read of their rows would give them back."""

    def __init__(self, marks: WriteMarks | None, capacity: int = RECENT_UPLOADS) -> None:
        """``marks``: of the writes of every process on the file (None: this one alone
        writes it); ``capacity``: how many uploads to keep."""
        self._marks = marks
        self._capacity = capacity
        self._uploads: dict[str, tuple[Upload, int]] = {}
        """Each kept upload with the mark its write left (0 without marks)."""
        self._writing: dict[str, int] = {}
        """The serial number of the latest write that began, of each upload being written."""
        self._serial = 0

    def get(self, upload_id: str) -> Upload | None:
        kept = self._uploads.get(upload_id)
        if kept is None:
            return None
        if self._marks is not None and not self._marks.holds(upload_id, kept[1]):
            del self._uploads[upload_id]  # written since, by another process
            return None
        return kept[0]

    def writing(self, upload_ids: Collection[str]) -> Write:
        """A write of these uploads, for a ``with`` block around it: what was kept of them
        is forgotten now; what the block sets as :attr:`Write.upload` is kept once it ends
        without an exception, unless a later write of it began meanwhile. With marks, the
        write must leave :attr:`Write.stamps` in its transaction."""
        stamps = () if self._marks is None else self._marks.stamps(upload_ids)
        return self._write(upload_ids, stamps, stamps[0][1] if stamps else 0)

    def creating(self, upload_id: str) -> Write:
        """The write of a new upload's row, as :meth:`writing`, which leaves no stamps: no
        other process keeps a row that is not there yet, and every later write of it,
        whoever makes it, changes the mark in its slot, which is read now, before it."""
        mark = 0 if self._marks is None else self._marks.now(upload_id)
        return self._write((upload_id,), (), mark)

    def _write(self, upload_ids: Collection[str], stamps: Stamps, mark: int) -> Write:
        self._serial += 1
        for upload_id in upload_ids:
            self._uploads.pop(upload_id, None)
            self._writing[upload_id] = self._serial
        return Write(self, upload_ids, self._serial, stamps, mark)

    def _written(
        self, upload_ids: Collection[str], serial: int, upload: Upload | None, mark: int
    ) -> None:
        for upload_id in upload_ids:
            if self._writing.get(upload_id) != serial:
                continue  # a later write's to keep
            del self._writing[upload_id]
            if upload is not None and self._capacity:
                if len(self._uploads) >= self._capacity:
                    del self._uploads[next(iter(self._uploads))]  # the oldest kept
                self._uploads[upload_id] = (upload, mark)


class Write:
    """One write of :meth:`RecentUploads.writing` (or ``creating``) under way."""

    __slots__ = ("_mark", "_recent", "_serial", "_upload_ids", "stamps", "upload")

    def __init__(
        self, recent: RecentUploads, upload_ids: Collection[str], serial: int, stamps: Stamps,
        mark: int,
    ) -> None:
        self._recent = recent
        self._upload_ids = upload_ids
        self._serial = serial
        self.stamps = stamps
        """What the write's transaction leaves in the file of marks (none without one)."""
        self._mark = mark
        """The mark the upload's slot holds once the write landed, unless written since."""
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
        self._recent._written(self._upload_ids, self._serial, written, self._mark)
