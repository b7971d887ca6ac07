"""Upload leases in PostgreSQL: the table ``upload_leases`` (see :class:`~..interface.Leases`).

A lease is a row, deleted when released. Taking one is one upsert guarded by "the row
there lapsed": two stores that race for one upload are put in turn by the row's lock, and
the second finds it live when it rechecks the row. Every take draws a token from a
sequence, so a new lease's token is greater than any the upload had. Times are the
database's clock (``clock_timestamp()``), the one clock that every host agrees to read.

Asking a holder to let go, and releasing a lease that was asked for, also send a
``NOTIFY`` on :data:`~.listener.CHANNEL` in the same statement, which each process hears
on a connection of its own (:mod:`.listener`): a take-over across processes waits for no
poll. No session state is used for the leases themselves, so a pooler in transaction
mode may stand in between (it carries no ``LISTEN``: then polling is all there is).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from ..interface import Leases
from ..model import Lease
from ..rows import UPLOAD_COLUMNS, UPLOAD_VALUES, upload_from_row
from .database import Database
from .listener import CHANNEL, Listener

_NOW = "extract(epoch FROM clock_timestamp())"
_RETURNED = (
    f"upload_id, owner, token, expires_at - {_NOW} AS expires_in, release_requested"
)
_TAKE = (
    "INSERT INTO upload_leases AS l (upload_id, owner, expires_at) "
    f"VALUES ($1, $2, {_NOW} + $3) "
    "ON CONFLICT (upload_id) DO UPDATE SET owner = excluded.owner, token = excluded.token, "
    "expires_at = excluded.expires_at, release_requested = false "
    f"WHERE l.expires_at < {_NOW} RETURNING {_RETURNED}"
)
_CREATE_LEASED = (
    f"WITH created AS (INSERT INTO uploads ({UPLOAD_COLUMNS}) VALUES "
    f"({', '.join(f'${n}' for n in range(1, UPLOAD_VALUES + 1))})) "
    "INSERT INTO upload_leases (upload_id, owner, expires_at) "
    f"VALUES ($1, ${UPLOAD_VALUES + 1}, {_NOW} + ${UPLOAD_VALUES + 2}) RETURNING {_RETURNED}"
)
"""A new upload and its lease in one statement: both or neither."""
_TAKE_READING = (
    f"WITH taken AS ({_TAKE}) SELECT taken.*, u.* FROM taken LEFT JOIN LATERAL "
    f"(SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = taken.upload_id FOR SHARE) u ON true"
)
"""The take, and the upload's row as it stands once the lease is taken.

Read in the take's own statement, the row is the one the previous holder left: the
lateral read depends on the lease taken, so it runs after the take got the lease row
(which waited for a fenced write under the old lease that was under way, see
:func:`.uploads._under_lease`); and ``FOR SHARE`` makes read committed read the row's
latest committed version rather than the one in the statement's snapshot, which was
taken before that wait, and so before the old holder's last write may have committed."""
_ASK = (
    "WITH asked AS (UPDATE upload_leases SET release_requested = true "
    f"WHERE upload_id = $1 AND expires_at >= {_NOW} RETURNING {_RETURNED}) "
    "SELECT upload_id, owner, token, expires_in, release_requested, "
    f"pg_notify('{CHANNEL}', concat_ws(' ', 'asked', token, owner, upload_id)) FROM asked"
)
_RELEASE = (
    "WITH released AS (DELETE FROM upload_leases WHERE upload_id = $1 AND token = $2 "
    "RETURNING upload_id, owner, token, release_requested) "
    f"SELECT pg_notify('{CHANNEL}', concat_ws(' ', 'freed', token, owner, upload_id)) "
    "FROM released WHERE release_requested"
)


def _lease(row: Any) -> Lease:
    """The lease in a row of ``_RETURNED``."""
    return Lease(upload_id=row[0], owner=row[1], token=row[2], expires_in=row[3],
                 release_requested=row[4])


def _taken(row: Any) -> Lease:
    """The lease in a row of ``_TAKE_READING``, with its upload when there is one."""
    upload = None if row[5] is None else upload_from_row(row[5:])
    return Lease(upload_id=row[0], owner=row[1], token=row[2], expires_in=row[3],
                 release_requested=row[4], upload=upload)


class PostgresLeases(Leases):
    """The leases' queries and writes, keeping the promises of :class:`Leases`."""

    def __init__(self, database: Database, owner: str) -> None:
        self._db = database
        self.owner = owner
        self._listener: Listener | None = None

    async def take_lease(self, upload_id: str, length: float) -> Lease | None:
        rows = await self._db.write(
            lambda connection: connection.fetch(_TAKE_READING, upload_id, self.owner, length)
        )
        return _taken(rows[0]) if rows else None

    async def lease_of(self, upload_id: str) -> Lease | None:
        rows = await self._db.rows(
            f"SELECT {_RETURNED} FROM upload_leases WHERE upload_id = $1 "
            f"AND expires_at >= {_NOW}",
            upload_id,
        )
        return _lease(rows[0]) if rows else None

    async def renew_leases(self, tokens: Collection[int], length: float) -> list[Lease]:
        if not tokens:
            return []
        rows = await self._db.write(lambda connection: connection.fetch(
            f"UPDATE upload_leases SET expires_at = {_NOW} + $3 "
            f"WHERE owner = $1 AND token = ANY($2::bigint[]) RETURNING {_RETURNED}",
            self.owner, list(tokens), length,
        ))
        return [_lease(row) for row in rows]

    async def asked_back(self) -> list[Lease]:
        rows = await self._db.rows(
            f"SELECT {_RETURNED} FROM upload_leases WHERE owner = $1 AND release_requested",
            self.owner,
        )
        return [_lease(row) for row in rows]

    async def request_release(self, upload_id: str) -> Lease | None:
        rows = await self._db.write(lambda connection: connection.fetch(_ASK, upload_id))
        return _lease(rows[0]) if rows else None

    async def release_lease(self, upload_id: str, token: int) -> None:
        await self._db.write(lambda connection: connection.execute(_RELEASE, upload_id, token))

    def watch_leases(
        self, asked: Callable[[str, int], None], freed: Callable[[str], None]
    ) -> None:
        """Listen on a connection of this store's own, until it closes (see :mod:`.listener`)."""
        if self._listener is None:
            self._listener = Listener(self._db.connect_alone, self.owner, asked, freed)
            self._listener.start()

    async def release_leases(self) -> None:
        """Stop listening, and give up every lease of this store (at closing): a holder
        whose release failed leaves its lease behind, which must not wait to lapse."""
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        await self._db.write(lambda connection: connection.execute(
            "DELETE FROM upload_leases WHERE owner = $1", self.owner
        ))
