"""The uploads in PostgreSQL: the tables ``uploads`` and ``concat_parts`` (see
:class:`~..interface.Uploads`)."""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Sequence
from typing import Any

from ..interface import Uploads
from ..model import ACTIVE, HookEvent, LeaseLost, Status, Upload, UploadGone
from ..rows import UPLOAD_COLUMNS, UPLOAD_VALUES, upload_from_row, upload_values
from .database import Connection, Database, rows_changed
from .listener import CHANNEL
from .outbox import PostgresOutbox

_ACTIVE = ACTIVE.value
_SAVE = (
    'UPDATE uploads SET "offset" = $1, length = $2, expires_at = $3, '
    "completed_at = $4, storage = $5, updated_at = $6, repr_digest = $9 "
    "WHERE id = $7 AND status = $8"
)
_MARK_GONE = (
    "UPDATE uploads SET status = $1, updated_at = $2, expires_at = NULL "
    "WHERE id = ANY($3::text[]) AND status = $4"
)


def _under_lease(upload_id: str, token: str) -> str:
    """The fence of a write made under a lease, for the write's numbered parameters
    ``upload_id`` and ``token``: it lands only while that is the upload's lease.

    ``FOR SHARE`` puts the write and a take-over of the lease in turn: read committed
    would otherwise let a write that saw the old lease land after the new holder took the
    upload over (and looked up its offset). A take-over waits for the write under way;
    a write that comes after it rechecks the row it waited for, and finds another token."""
    return (
        f" AND EXISTS (SELECT 1 FROM upload_leases WHERE upload_id = {upload_id} "
        f"AND token = {token} FOR SHARE)"
    )


_SAVE_UNDER_LEASE = _SAVE + _under_lease("$7", "$10")
_SAVE_RELEASING = (
    f"WITH saved AS ({_SAVE_UNDER_LEASE} RETURNING 1) "
    "DELETE FROM upload_leases WHERE upload_id = $7 AND token = $10 AND EXISTS "
    "(SELECT FROM saved) RETURNING CASE WHEN release_requested THEN "
    f"pg_notify('{CHANNEL}', concat_ws(' ', 'freed', token, owner, upload_id)) END"
)
"""The save under a lease that also ends the lease, once the save landed (its count of
rows is the lease's, deleted or not), telling the waiters as a release does."""
_MARK_GONE_UNDER_LEASE = _MARK_GONE + _under_lease("$5", "$6")
_INSERT_UPLOAD = (
    f"INSERT INTO uploads ({UPLOAD_COLUMNS}) VALUES "
    f"({', '.join(f'${n}' for n in range(1, UPLOAD_VALUES + 1))})"
)


class PostgresUploads(Uploads):
    """The uploads' queries and writes, keeping the promises of :class:`Uploads`."""

    def __init__(self, database: Database, outbox: PostgresOutbox) -> None:
        """``outbox`` records the events of the writes."""
        self._db = database
        self._outbox = outbox

    async def _write(
        self, sql: str, parameters: tuple[Any, ...], events: Sequence[HookEvent]
    ) -> int:
        """Run one writing statement, with ``events`` in its transaction; the rows it changed.

        A statement that changed no row changed nothing that ``events`` could report: they
        are not recorded either. Without events, it needs no transaction of its own."""

        async def run(connection: Connection) -> int:
            changed = rows_changed(await connection.execute(sql, *parameters))
            if changed and events:
                await self._outbox.record(connection, events)
            return changed

        committed = self._outbox.outbox_changed.set if events else None
        return await self._db.write(run, transaction=bool(events), committed=committed)

    async def create(
        self, upload: Upload, parts: tuple[str, ...] = (), events: Sequence[HookEvent] = ()
    ) -> None:
        async def run(connection: Connection) -> None:
            await connection.execute(_INSERT_UPLOAD, *upload_values(upload))
            if parts:
                await connection.executemany(
                    "INSERT INTO concat_parts (final_id, position, partial_id) "
                    "VALUES ($1, $2, $3)",
                    [(upload.id, position, part) for position, part in enumerate(parts)],
                )
            if events:
                await self._outbox.record(connection, events)

        await self._db.write(
            run, transaction=bool(parts or events),
            committed=self._outbox.outbox_changed.set if events else None,
        )

    async def get(self, upload_id: str) -> Upload | None:
        rows = await self._db.rows(
            f"SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = $1", upload_id
        )
        return next((upload_from_row(row) for row in rows), None)

    async def get_many(self, upload_ids: tuple[str, ...]) -> dict[str, Upload]:
        if not upload_ids:
            return {}
        rows = await self._db.rows(
            f"SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = ANY($1::text[])",
            list(set(upload_ids)),
        )
        return {row[0]: upload_from_row(row) for row in rows}

    async def save_progress(
        self,
        upload: Upload,
        events: Sequence[HookEvent] = (),
        lease: int | None = None,
        release: bool = False,
    ) -> Upload:
        saved = upload.but(updated_at=time.time())
        values = (
            saved.offset, saved.length, saved.expires_at, saved.completed_at,
            json.dumps(saved.storage), saved.updated_at, saved.id, _ACTIVE,
            saved.repr_digest,
        )
        if lease is None:
            changed = await self._write(_SAVE, values, events)
        else:
            sql = _SAVE_RELEASING if release else _SAVE_UNDER_LEASE
            changed = await self._write(sql, (*values, lease), events)
        if not changed:
            if lease is not None and not await self._lease_holds(upload.id, lease):
                raise LeaseLost(upload.id)
            raise UploadGone(upload.id)
        return saved

    async def mark_gone(
        self,
        upload_id: str,
        status: Status,
        events: Sequence[HookEvent] = (),
        also: Sequence[str] = (),
        lease: int | None = None,
    ) -> None:
        values: tuple[Any, ...] = (str(status), time.time(), [upload_id, *also], _ACTIVE)
        if lease is None:
            await self._write(_MARK_GONE, values, events)
            return
        changed = await self._write(_MARK_GONE_UNDER_LEASE, (*values, upload_id, lease), events)
        if not changed and not await self._lease_holds(upload_id, lease):
            raise LeaseLost(upload_id)

    async def _lease_holds(self, upload_id: str, token: int) -> bool:
        """Whether ``token`` is still the upload's lease: why a fenced write changed nothing."""
        rows = await self._db.rows(
            "SELECT 1 FROM upload_leases WHERE upload_id = $1 AND token = $2", upload_id, token
        )
        return bool(rows)

    async def parts(self, final_id: str) -> tuple[str, ...]:
        rows = await self._db.rows(
            "SELECT partial_id FROM concat_parts WHERE final_id = $1 ORDER BY position",
            final_id,
        )
        return tuple(row[0] for row in rows)

    async def finals_waiting_on(self, partial_id: str) -> list[str]:
        rows = await self._db.rows(
            "SELECT DISTINCT u.id FROM concat_parts p JOIN uploads u ON u.id = p.final_id "
            "WHERE p.partial_id = $1 AND u.status = $2 AND u.completed_at IS NULL",
            partial_id, _ACTIVE,
        )
        return [row[0] for row in rows]

    async def expired_ids(self, now: float, limit: int) -> list[str]:
        rows = await self._db.rows(
            "SELECT id FROM uploads WHERE expires_at IS NOT NULL AND expires_at <= $1 "
            "AND status = $2 AND completed_at IS NULL LIMIT $3",
            now, _ACTIVE, limit,
        )
        return [row[0] for row in rows]

    async def count_unfinished(self) -> int:
        rows = await self._db.rows(
            "SELECT count(*) FROM uploads WHERE status = $1 AND completed_at IS NULL", _ACTIVE
        )
        return int(rows[0][0])

    async def gone_before(self, before: float, limit: int) -> list[Upload]:
        rows = await self._db.rows(
            f"SELECT {UPLOAD_COLUMNS} FROM uploads WHERE status <> $1 AND updated_at < $2 "
            "LIMIT $3",
            _ACTIVE, before, limit,
        )
        return [upload_from_row(row) for row in rows]

    async def forget(self, upload_ids: Collection[str]) -> None:
        if not upload_ids:
            return
        ids = list(upload_ids)

        async def run(connection: Connection) -> None:
            await connection.execute(
                "DELETE FROM concat_parts WHERE final_id = ANY($1::text[])", ids
            )
            await connection.execute("DELETE FROM uploads WHERE id = ANY($1::text[])", ids)

        await self._db.write(run, transaction=True)
