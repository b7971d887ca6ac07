"""The uploads in SQLite: the tables ``uploads`` and ``concat_parts`` (see
:class:`~..interface.Uploads`)."""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Sequence
from typing import Any

from ..interface import Uploads
from ..model import ACTIVE, HookEvent, Status, Upload, UploadGone
from ..rows import UPLOAD_COLUMNS, UPLOAD_VALUES, upload_from_row, upload_values
from .database import Database, placeholders
from .marks import Stamps
from .outbox import SQLiteOutbox
from .recent import RecentUploads

_ACTIVE = ACTIVE.value
"""Bound as a plain ``str``: sqlite3 binds a subclass of it (an enum member) slower."""
_SAVE = (
    'UPDATE uploads SET "offset" = ?, length = ?, expires_at = ?, completed_at = ?, '
    "storage = ?, updated_at = ?, repr_digest = ? WHERE id = ? AND status = ?"
)
_INSERT = f"INSERT INTO uploads ({UPLOAD_COLUMNS}) VALUES ({', '.join('?' * UPLOAD_VALUES)})"


def _no_lease(lease: int | None) -> None:
    """SQLite keeps no leases (see :class:`~..interface.Uploads`): a caller that names one
    was given a store it did not expect."""
    if lease is not None:
        raise ValueError("the SQLite store keeps no leases")


class SQLiteUploads(Uploads):
    """The uploads' queries and writes, keeping the promises of :class:`Uploads`;
    :meth:`get` answers first from the uploads written last (:mod:`.recent`). Every write
    of the ``uploads`` table is made here, and leaves the stamps of :mod:`.marks`."""

    def __init__(self, database: Database, outbox: SQLiteOutbox) -> None:
        """``outbox`` records the events of the writes."""
        self._db = database
        self._outbox = outbox
        self._recent = RecentUploads(database.marks)

    async def _write(
        self, sql: str, parameters: tuple[Any, ...], stamps: Stamps,
        events: Sequence[HookEvent] = (),
    ) -> int:
        """Run one writing statement, leaving ``stamps``, with ``events`` in its
        transaction; the rows it changed.

        A statement that changed no row changed nothing that ``events`` could report: they
        are not recorded either. It goes with other requests' statements, events and all
        (a transaction of its own on aiosqlite's thread, one round trip per statement,
        made a small upload with two hooked events cost three times the CPU)."""
        if not events:
            return await self._db.statement(sql, parameters, stamps=stamps)
        try:
            return await self._db.statement(
                sql, parameters, stamps=stamps, follow_ups=self._outbox.inserts(events)
            )
        finally:
            # Also when the caller was cancelled (after the write ran) or nothing changed:
            # the delivery looks once more for nothing rather than 5 s late.
            self._outbox.recorded()

    async def create(
        self, upload: Upload, parts: tuple[str, ...] = (), events: Sequence[HookEvent] = ()
    ) -> None:
        values = upload_values(upload)
        with self._recent.creating(upload.id) as write:
            if not parts:
                await self._write(_INSERT, values, write.stamps, events)
            else:
                async with self._db.transaction(write.stamps) as transaction:
                    await transaction.execute(_INSERT, values)
                    await transaction.executemany(
                        "INSERT INTO concat_parts (final_id, position, partial_id) "
                        "VALUES (?, ?, ?)",
                        [(upload.id, position, part) for position, part in enumerate(parts)],
                    )
                    if events:
                        await self._outbox.record(transaction, events)
            write.upload = upload

    async def get(self, upload_id: str) -> Upload | None:
        kept = self._recent.get(upload_id)
        if kept is not None:
            return kept
        rows = await self._db.lookup(
            f"SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = ?", (upload_id,)
        )
        return next((upload_from_row(row) for row in rows), None)

    async def get_many(self, upload_ids: tuple[str, ...]) -> dict[str, Upload]:
        unique = tuple(set(upload_ids))
        rows = await self._db.lookup(
            f"SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id IN ({placeholders(unique)})", unique
        )
        return {row[0]: upload_from_row(row) for row in rows}

    async def save_progress(
        self,
        upload: Upload,
        events: Sequence[HookEvent] = (),
        lease: int | None = None,
        release: bool = False,
    ) -> Upload:
        _no_lease(lease)
        saved = upload.but(updated_at=time.time())
        values = (
            saved.offset, saved.length, saved.expires_at, saved.completed_at,
            json.dumps(saved.storage), saved.updated_at, saved.repr_digest, saved.id, _ACTIVE,
        )
        with self._recent.writing((upload.id,)) as write:
            if not await self._write(_SAVE, values, write.stamps, events):
                raise UploadGone(upload.id)
            # A complete upload is not kept: no PATCH comes for it, and few lookups.
            write.upload = None if saved.is_complete else saved
        return saved

    async def mark_gone(
        self,
        upload_id: str,
        status: Status,
        events: Sequence[HookEvent] = (),
        also: Sequence[str] = (),
        lease: int | None = None,
    ) -> None:
        _no_lease(lease)
        ids = (upload_id, *also)
        sql = (
            "UPDATE uploads SET status = ?, updated_at = ?, expires_at = NULL "
            f"WHERE id IN ({placeholders(ids)}) AND status = ?"
        )
        with self._recent.writing(ids) as write:
            await self._write(sql, (status, time.time(), *ids, _ACTIVE), write.stamps, events)

    async def parts(self, final_id: str) -> tuple[str, ...]:
        rows = await self._db.rows(
            "SELECT partial_id FROM concat_parts WHERE final_id = ? ORDER BY position",
            (final_id,),
        )
        return tuple(row[0] for row in rows)

    async def finals_waiting_on(self, partial_id: str) -> list[str]:
        rows = await self._db.rows(
            "SELECT DISTINCT u.id FROM concat_parts p JOIN uploads u ON u.id = p.final_id "
            "WHERE p.partial_id = ? AND u.status = ? AND u.completed_at IS NULL",
            (partial_id, _ACTIVE),
        )
        return [row[0] for row in rows]

    async def expired_ids(self, now: float, limit: int) -> list[str]:
        rows = await self._db.rows(
            "SELECT id FROM uploads WHERE expires_at IS NOT NULL AND expires_at <= ? "
            "AND status = ? AND completed_at IS NULL LIMIT ?",
            (now, _ACTIVE, limit),
        )
        return [row[0] for row in rows]

    async def count_unfinished(self) -> int:
        rows = await self._db.rows(
            "SELECT COUNT(*) FROM uploads WHERE status = ? AND completed_at IS NULL", (_ACTIVE,)
        )
        return next((int(row[0]) for row in rows), 0)

    async def gone_before(self, before: float, limit: int) -> list[Upload]:
        rows = await self._db.rows(
            f"SELECT {UPLOAD_COLUMNS} FROM uploads WHERE status != ? AND updated_at < ? LIMIT ?",
            (_ACTIVE, before, limit),
        )
        return [upload_from_row(row) for row in rows]

    async def forget(self, upload_ids: Collection[str]) -> None:
        if not upload_ids:
            return
        marks = placeholders(upload_ids)
        with self._recent.writing(upload_ids) as write:
            async with self._db.transaction(write.stamps) as transaction:
                await transaction.execute(
                    f"DELETE FROM concat_parts WHERE final_id IN ({marks})", (*upload_ids,)
                )
                await transaction.execute(
                    f"DELETE FROM uploads WHERE id IN ({marks})", (*upload_ids,)
                )
