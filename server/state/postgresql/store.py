"""The state store in a PostgreSQL database (see :class:`~server.state.interface.Store`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..interface import LeasingStore
from ..model import HookEvent, Lease, Upload
from ..rows import upload_values
from .database import OPEN_ERRORS, Connection, Database
from .leases import _CREATE_LEASED, PostgresLeases, _lease
from .outbox import PostgresOutbox
from .uploads import PostgresUploads

log = logging.getLogger("aiotusd")


class PostgresStore(PostgresUploads, PostgresLeases, PostgresOutbox, LeasingStore):
    """The uploads, their leases and the outbox on one :class:`Database` (a pool), as one
    object.

    Unlike SQLite, one database may serve several processes: each store claims the hook
    events it delivers (see :mod:`.outbox`) and leases the uploads it works on (see
    :mod:`.leases`), both under its ``owner``, and holds nothing else that another process
    would have to know.
    """

    def __init__(self, database: Database) -> None:
        PostgresOutbox.__init__(self, database)
        PostgresLeases.__init__(self, database, self.owner)
        PostgresUploads.__init__(self, database, outbox=self)

    @classmethod
    async def open(
        cls, url: str, name: str, pool_size: int = 10, timeout: float = 10.0
    ) -> PostgresStore:
        """The store in the database at ``url`` (``postgresql://``), migrated; ``name``
        says which database in messages (the URL without its password).

        Raises :class:`~server.state.model.DatabaseUnusable` naming it when it cannot be
        used (see :meth:`Database.open`)."""
        return cls(await Database.open(url, name, pool_size, timeout))

    async def create_leased(
        self, upload: Upload, length: float, events: Sequence[HookEvent] = ()
    ) -> Lease:
        async def run(connection: Connection) -> Lease:
            row = await connection.fetchrow(
                _CREATE_LEASED, *upload_values(upload), self.owner, length
            )
            if events:
                await self.record(connection, events)
            return _lease(row)

        return await self._db.write(
            run, transaction=bool(events), committed=self.outbox_changed.set if events else None
        )

    async def schema_version(self) -> int:
        rows = await self._db.rows("SELECT max(version) FROM schema_version")
        return int(rows[0][0] or 0)

    async def close(self) -> None:
        await self.release_claims()
        try:
            await self.release_leases()
        except OPEN_ERRORS as exc:
            log.warning("uploads leased by this process stay locked until the lease: %s", exc)
        await self._db.close()
