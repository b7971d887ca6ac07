"""The state store in one SQLite file (see :class:`~server.state.interface.Store`)."""

from __future__ import annotations

from pathlib import Path

from ..interface import Store
from .database import Database
from .outbox import SQLiteOutbox
from .uploads import SQLiteUploads


class SQLiteStore(SQLiteUploads, SQLiteOutbox, Store):
    """The uploads and the outbox on one :class:`Database`, as one object.

    The parts are kept apart by what they know: the uploads' SQL and the outbox's SQL.
    The writes of the uploads record the events they are given through the outbox, in
    the transaction of the change (:meth:`SQLiteOutbox.record`). No leases: only the
    workers of one host share a file, and they lock uploads in the kernel
    (:mod:`server.host_locks`).
    """

    def __init__(self, database: Database) -> None:
        SQLiteOutbox.__init__(self, database)
        SQLiteUploads.__init__(self, database, outbox=self)

    @classmethod
    async def open(cls, path: Path, sole_writer: bool = False) -> SQLiteStore:
        """The store in the SQLite file at ``path``, made (with its directory) if missing;
        ``sole_writer``: no other process writes the file (else the writes leave marks
        beside it, see :mod:`.marks`).

        Raises :class:`~server.state.model.DatabaseUnusable` naming ``path`` when the file
        cannot be the database (see :meth:`Database.open`)."""
        return cls(await Database.open(path, sole_writer))

    async def schema_version(self) -> int:
        return await self._db.schema_version()

    async def close(self) -> None:
        await self._db.close()
