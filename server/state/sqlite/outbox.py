"""The hook outbox in SQLite: the table ``hook_outbox`` (see :class:`~..interface.Outbox`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from ..interface import Outbox
from ..model import HookEvent
from ..rows import EVENT_COLUMNS, event_from_row
from .database import Database, Transaction, placeholders
from .writes import FollowUps

# The oldest undelivered, live event of each upload: the only one of it that may go out.
_HEADS = "seq IN (SELECT MIN(seq) FROM hook_outbox WHERE dead = 0 GROUP BY upload_id)"
# The same of one row ``o``, by its upload's earlier events in the index: a claim that
# walks the outbox in order stops at its LIMIT instead of grouping all of it first (with
# 6,000 events waiting, 39 us a claim instead of 4.2 ms).
_IS_HEAD = (
    "o.dead = 0 AND NOT EXISTS (SELECT 1 FROM hook_outbox AS p "
    "WHERE p.upload_id = o.upload_id AND p.dead = 0 AND p.seq < o.seq)"
)
_INSERT = (
    "INSERT INTO hook_outbox (id, upload_id, type, payload, created_at, since, "
    "next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def _values(e: HookEvent) -> tuple[object, ...]:
    """A new event's row, for :data:`_INSERT`."""
    return (e.id, e.upload_id, e.type, e.payload, e.created_at, e.created_at, e.created_at)


class SQLiteOutbox(Outbox):
    """The outbox's queries and writes, keeping the promises of :class:`Outbox`.

    One process owns an SQLite database, so its claims live in this object: nothing
    outlives the process that could hold an event back after it."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self.outbox_changed = asyncio.Event()
        self._claims: dict[int, tuple[str, float]] = {}
        """The claimed events by ``seq``: their upload, and when the claim lapses."""
        self._claiming = asyncio.Lock()
        """Claims are taken one call at a time: two must not both take one head."""

    async def record(self, transaction: Transaction, events: Sequence[HookEvent]) -> None:
        """Insert ``events`` in ``transaction``, the one of the change they report: they are
        recorded if and only if it is committed."""
        await transaction.executemany(_INSERT, [_values(event) for event in events])
        transaction.on_commit(self.outbox_changed.set)

    def inserts(self, events: Sequence[HookEvent]) -> FollowUps:
        """The statements that insert ``events``, as the follow-ups of the write whose
        change they report (:meth:`Database.statement`); once it has landed, call
        :meth:`recorded`."""
        return tuple((_INSERT, _values(event)) for event in events)

    def recorded(self) -> None:
        """Events may have been inserted by the follow-ups of a write (:meth:`inserts`)."""
        self.outbox_changed.set()

    def _claimed_uploads(self, now: float) -> list[str]:
        """The uploads whose head is under a claim at ``now``."""
        return [upload for upload, until in self._claims.values() if until >= now]

    async def claim_events(self, now: float, limit: int, lease: float) -> list[HookEvent]:
        async with self._claiming:
            claimed = self._claimed_uploads(now)
            rows = await self._db.rows(
                f"SELECT {EVENT_COLUMNS} FROM hook_outbox AS o WHERE {_IS_HEAD} "
                f"AND next_attempt_at <= ? AND upload_id NOT IN ({placeholders(claimed)}) "
                "ORDER BY seq LIMIT ?",
                (now, *claimed, limit),
            )
            events = [event_from_row(row) for row in rows]
            for event in events:
                self._claims[event.seq] = (event.upload_id, now + lease)
            return events

    async def next_event_due(self, now: float) -> float | None:
        claimed = self._claimed_uploads(now)
        rows = await self._db.rows(
            f"SELECT MIN(next_attempt_at) FROM hook_outbox WHERE {_HEADS} "
            f"AND upload_id NOT IN ({placeholders(claimed)})",
            tuple(claimed),
        )
        return next((row[0] for row in rows), None)

    async def event_delivered(self, seq: int) -> None:
        if seq not in self._claims:
            return
        try:
            await self._db.statement("DELETE FROM hook_outbox WHERE seq = ?", (seq,))
        finally:
            # Also when the write failed: the event is due again, as it would be after a
            # restart, rather than held back by a claim nobody settles.
            del self._claims[seq]

    async def event_failed(self, event: HookEvent) -> None:
        if event.seq not in self._claims:
            return
        try:
            await self._db.statement(
                "UPDATE hook_outbox SET attempts = ?, next_attempt_at = ?, last_error = ?, "
                "dead = ? WHERE seq = ?",
                (event.attempts, event.next_attempt_at, event.last_error, int(event.dead),
                 event.seq),
            )
        finally:
            del self._claims[event.seq]

    async def hook_events(self, dead_only: bool = False) -> list[HookEvent]:
        rows = await self._db.rows(
            f"SELECT {EVENT_COLUMNS} FROM hook_outbox"
            + (" WHERE dead = 1" if dead_only else "")
            + " ORDER BY seq"
        )
        return [event_from_row(row) for row in rows]

    async def retry_events(self, hook_id: str | None) -> int:
        now = time.time()
        where, parameters = ("dead = 1", ()) if hook_id is None else ("id = ?", (hook_id,))
        changed = await self._db.statement(
            "UPDATE hook_outbox SET dead = 0, attempts = 0, since = ?, next_attempt_at = ? "
            f"WHERE {where}",
            (now, now, *parameters),
        )
        self.outbox_changed.set()
        return changed

    async def count_events(self) -> tuple[int, int]:
        rows = await self._db.rows(
            "SELECT COALESCE(SUM(NOT dead), 0), COALESCE(SUM(dead), 0) FROM hook_outbox"
        )
        return next(((int(row[0]), int(row[1])) for row in rows), (0, 0))
