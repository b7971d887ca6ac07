"""The marks the writes of uploads leave in a small file beside the database, which every
worker of ``--workers`` maps: how a worker knows that an upload it wrote has not been
written since by another worker, without reading its row.

A process alone on its file keeps the uploads it wrote last (:mod:`.recent`), so that a
PATCH after its POST reads no row. A worker cannot simply do the same: another worker may
write the upload meanwhile (the client's next request came in on another connection; the
expiry sweep ended it). So every write of an upload's row, by any worker, leaves a mark in
the upload's slot of this file: a random 64-bit number, set inside the write's transaction
while it holds SQLite's write lock, after its statements and before its COMMIT. The lock
orders the marks as it orders the commits: a slot holds the mark of the last transaction
that wrote the upload, or of one under way. A worker keeps an upload it wrote with its
mark, and answers a lookup from it only while the slot still holds that mark:

- a slot that holds another mark (another write, or a write of another upload whose id
  falls on the same slot) sends the lookup to the row, which is all a false alarm costs;
- a lookup that reads the slot while another worker's write is under way sees the old
  mark, and the upload it keeps is the one committed, or the new mark and reads the row.

The marks are written by aiotusd's code, not by a trigger of SQLite's: every write of the
``uploads`` table is made by :class:`~.uploads.SQLiteUploads`, and each carries its
stamps (:meth:`WriteMarks.stamps`) to the statement or transaction that makes it. The
insert of a new row leaves none: no other process keeps a row that is not there yet, so
its writer keeps it with the mark its slot held before the insert, which any later write
of it changes. A write made outside aiotusd (the ``sqlite3`` shell) leaves no mark: while
workers run on the file it is theirs, as it is one process's.
"""

from __future__ import annotations

import mmap
import os
import random
import zlib
from collections.abc import Collection, Sequence
from pathlib import Path

MARKS_SUFFIX = ".upload-writes"
"""The file of the marks is the database's path with this added."""
SLOTS = 65536
"""Slots in the file (8 bytes each): uploads that share one only send lookups to the row."""

Stamps = Sequence[tuple[int, int]]
"""(slot, mark) pairs that a write leaves in its transaction, in this order."""


class WriteMarks:
    """This process's view of the file of marks: the stamps its writes leave
    (:meth:`stamps`, :meth:`leave`) and whether an upload's slot still holds the mark of
    the write that a kept upload came from (:meth:`holds`)."""

    def __init__(self, path: Path, mapping: mmap.mmap) -> None:
        self.path = path
        self._mapping = mapping
        self._slots = memoryview(mapping).cast("Q")

    @classmethod
    def open(cls, database_path: Path) -> WriteMarks:
        """The file of marks beside the database at ``database_path``, made if missing;
        raises :class:`OSError` when it cannot be made or mapped.

        Its blocks are allocated here: a write to a mapped page on a full disk would kill
        the process (``SIGBUS``), not fail."""
        path = marks_path(database_path)
        size = SLOTS * 8
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            if os.fstat(descriptor).st_size < size:
                os.posix_fallocate(descriptor, 0, size)
            mapping = mmap.mmap(descriptor, size)
        finally:
            os.close(descriptor)
        return cls(path, mapping)

    @staticmethod
    def stamps(upload_ids: Collection[str]) -> Stamps:
        """The stamps of one write of these uploads: a mark of its own (never 0, which a
        slot never written holds), in the slot of each."""
        mark = random.getrandbits(64) | 1  # the random module is seeded anew in a fork
        return [(_slot(upload_id), mark) for upload_id in upload_ids]

    def leave(self, stamps: Stamps) -> None:
        """Set the marks of ``stamps``: only inside the transaction of their write, while
        it holds SQLite's write lock."""
        slots = self._slots
        for slot, mark in stamps:
            slots[slot] = mark

    def now(self, upload_id: str) -> int:
        """The mark in the upload's slot now."""
        return int(self._slots[_slot(upload_id)])

    def holds(self, upload_id: str, mark: int) -> bool:
        """Whether the upload's slot holds ``mark``: no write of the upload since it."""
        return self._slots[_slot(upload_id)] == mark

    def close(self) -> None:
        self._slots.release()
        self._mapping.close()


def marks_path(database_path: Path) -> Path:
    """The file of the marks of the database at ``database_path``."""
    return database_path.with_name(database_path.name + MARKS_SUFFIX)


def _slot(upload_id: str) -> int:
    return zlib.crc32(upload_id.encode()) % SLOTS
