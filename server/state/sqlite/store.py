"""The state store in one SQLite file (see :class:`~server.state.interface.Store`)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from ..interface import Store
from ..model import HookEvent, Lease, LeaseLost, Upload
from .database import Database
from .leases import SQLiteLeases
from .outbox import SQLiteOutbox
from .uploads import SQLiteUploads

log = logging.getLogger("aiotusd")


class SQLiteStore(SQLiteUploads, SQLiteLeases, SQLiteOutbox, Store):
    """The uploads, their leases and the outbox on one :class:`Database`, as one object.

    The parts are kept apart by what they know: the uploads' SQL, the leases' SQL and the
    outbox's SQL. The writes of the uploads record the events they are given through the
    outbox, in the transaction of the change (:meth:`SQLiteOutbox.record`).
    """

    def __init__(self, database: Database) -> None:
        SQLiteOutbox.__init__(self, database)
        SQLiteLeases.__init__(self, database)
        SQLiteUploads.__init__(self, database, outbox=self)

    @classmethod
    async def open(cls, path: Path) -> SQLiteStore:
        """The store in the SQLite file at ``path``, made (with its directory) if missing.

        Raises :class:`~server.state.model.DatabaseUnusable` naming ``path`` when the file
        cannot be the database (see :meth:`Database.open`)."""
        return cls(await Database.open(path))

    async def create_leased(
        self, upload: Upload, length: float, events: Sequence[HookEvent] = ()
    ) -> Lease:
        """The row and the lease in one commit, with other requests' writes. With events,
        the creation is a transaction of its own and the lease a write after it: in the
        transaction (never batched with others') the lease cost more than it saved."""
        taking = self.taking(upload.id, length)
        if events:
            await self.create(upload, events=events)
            token = await self._db.statement(*taking)
        else:
            _, token = await self._db.statements((self.inserting(upload), taking))
        lease = self._taken(upload.id, token, length)
        if lease is None:  # a new upload that another store leased: only by a fault
            raise LeaseLost(upload.id)
        return lease

    async def schema_version(self) -> int:
        return await self._db.schema_version()

    async def close(self) -> None:
        try:
            await self.release_leases()
        except sqlite3.Error as exc:
            log.warning("uploads leased by this process stay locked until the lease: %s", exc)
        await self._db.close()
