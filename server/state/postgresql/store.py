"""The state store in a PostgreSQL database (see :class:`~server.state.interface.Store`)."""

from __future__ import annotations

from ..interface import Store
from .database import Database
from .outbox import PostgresOutbox
from .uploads import PostgresUploads


class PostgresStore(PostgresUploads, PostgresOutbox, Store):
    """The uploads and the outbox on one :class:`Database` (a pool), as one object.

    Unlike SQLite, one database may serve several processes: each store claims the hook
    events it delivers (see :mod:`.outbox`), and holds nothing else that another process
    would have to know.
    """

    def __init__(self, database: Database) -> None:
        PostgresOutbox.__init__(self, database)
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

    async def schema_version(self) -> int:
        rows = await self._db.rows("SELECT max(version) FROM schema_version")
        return int(rows[0][0] or 0)

    async def close(self) -> None:
        await self.release_claims()
        await self._db.close()
