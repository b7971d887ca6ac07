"""Upload leases in SQLite: the table ``upload_leases`` (see :class:`~..interface.Leases`).

Processes on one host that share the database file (a supervised group of workers) share
the leases. A lease is a row, deleted when released; its token is the row's
``AUTOINCREMENT`` key, which SQLite never hands out twice, so a new lease's token is
greater than any the upload had. Taking a lease is one statement, ``INSERT OR REPLACE``
guarded by "no live lease": SQLite runs one writer at a time, so two processes can never
both take one. Times are this host's clock, which every process on it shares. SQLite
cannot notify another process: holders and waiters poll (lookups by key, on the event
loop's thread, cost microseconds).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Collection
from typing import Any

from ..interface import Leases
from ..model import Lease
from .database import Database, placeholders
from .writes import Statement

_COLUMNS = "upload_id, owner, token, expires_at, release_requested"
_TAKE = (
    "INSERT OR REPLACE INTO upload_leases (upload_id, owner, expires_at) "
    "SELECT ?, ?, ? WHERE NOT EXISTS "
    "(SELECT 1 FROM upload_leases WHERE upload_id = ? AND expires_at >= ?)"
)


def _lease(row: Any, now: float) -> Lease:
    """The lease in a row of ``_COLUMNS`` read at ``now``."""
    return Lease(
        upload_id=row[0], owner=row[1], token=row[2], expires_in=row[3] - now,
        release_requested=bool(row[4]),
    )


class SQLiteLeases(Leases):
    """The leases' queries and writes, keeping the promises of :class:`Leases`."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self.owner = uuid.uuid4().hex

    async def take_lease(self, upload_id: str, length: float) -> Lease | None:
        token = await self._db.statement(*self.taking(upload_id, length))
        return self._taken(upload_id, token, length)

    def taking(self, upload_id: str, length: float) -> Statement:
        """The statement that takes the upload's lease when no live lease holds it; its
        outcome is the new lease's token (0: none taken), so that nothing is read back."""
        now = time.time()
        return _TAKE, (upload_id, self.owner, now + length, upload_id, now), True

    def _taken(self, upload_id: str, token: int, length: float) -> Lease | None:
        """The lease of a :meth:`taking` statement's outcome."""
        if not token:
            return None
        return Lease(upload_id=upload_id, owner=self.owner, token=token, expires_in=length,
                     release_requested=False)

    async def lease_of(self, upload_id: str) -> Lease | None:
        now = time.time()
        rows = await self._db.lookup(
            f"SELECT {_COLUMNS} FROM upload_leases WHERE upload_id = ? AND expires_at >= ?",
            (upload_id, now),
        )
        return next((_lease(row, now) for row in rows), None)

    async def renew_leases(self, tokens: Collection[int], length: float) -> list[Lease]:
        if not tokens:
            return []
        now = time.time()
        marks = placeholders(tokens)
        await self._db.statement(
            f"UPDATE upload_leases SET expires_at = ? WHERE owner = ? AND token IN ({marks})",
            (now + length, self.owner, *tokens),
        )
        rows = await self._db.lookup(
            f"SELECT {_COLUMNS} FROM upload_leases WHERE owner = ? AND token IN ({marks})",
            (self.owner, *tokens),
        )
        return [_lease(row, now) for row in rows]

    async def asked_back(self) -> list[Lease]:
        now = time.time()
        rows = await self._db.lookup(
            f"SELECT {_COLUMNS} FROM upload_leases WHERE owner = ? AND release_requested = 1",
            (self.owner,),
        )
        return [_lease(row, now) for row in rows]

    async def request_release(self, upload_id: str) -> Lease | None:
        asked = await self._db.statement(
            "UPDATE upload_leases SET release_requested = 1 "
            "WHERE upload_id = ? AND expires_at >= ?",
            (upload_id, time.time()),
        )
        return await self.lease_of(upload_id) if asked else None

    async def release_lease(self, upload_id: str, token: int) -> None:
        await self._db.statement(
            "DELETE FROM upload_leases WHERE upload_id = ? AND token = ?", (upload_id, token)
        )

    def watch_leases(
        self, asked: Callable[[str, int], None], freed: Callable[[str], None]
    ) -> None:
        """Nothing to watch: SQLite tells no other process of a change."""

    async def forget_leases(self) -> None:
        """Delete every lease, whoever's: only when every process that held one is gone
        (see :func:`server.database.open_store`)."""
        await self._db.statement("DELETE FROM upload_leases", ())

    async def release_leases(self) -> None:
        """Give up every lease of this store (at closing): a holder whose release failed
        leaves its lease behind, which must not wait for its lease to lapse."""
        await self._db.statement("DELETE FROM upload_leases WHERE owner = ?", (self.owner,))
