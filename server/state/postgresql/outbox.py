"""The hook outbox in PostgreSQL: the table ``hook_outbox`` (see :class:`~..interface.Outbox`).

Several processes may deliver from one outbox. An event goes out only under a claim, a
row's ``claimed_by`` (the store that took it) and ``claimed_until`` (when the claim
lapses): :meth:`PostgresOutbox.claim_events` takes the heads that are due and not under a
live claim in one ``UPDATE``. Two stores that race for one row are put in turn by its row
lock, and the second finds it claimed when it rechecks the row, so it skips it. A claim
ends when its event is settled (delivered or failed), when its store closes, or when its
lease runs out: a process that died gives its events up within the lease. Settling checks
that the claim is still the store's, so a store whose lease ran out while it delivered
cannot undo what the next claimant does.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence

from ..interface import Outbox
from ..model import HookEvent
from ..rows import EVENT_COLUMNS, event_from_row
from .database import OPEN_ERRORS, Connection, Database, rows_changed

log = logging.getLogger("aiotusd")

_HEADS = "(SELECT min(seq) AS seq FROM hook_outbox WHERE NOT dead GROUP BY upload_id)"
"""The oldest undelivered, live event of each upload: the only one of it that may go out."""
_IS_HEAD = (
    "NOT o.dead AND NOT EXISTS (SELECT 1 FROM hook_outbox p "
    "WHERE p.upload_id = o.upload_id AND NOT p.dead AND p.seq < o.seq)"
)
"""The same of one row ``o``, by its upload's earlier events in the index: a claim that
walks the outbox in order stops at its LIMIT instead of grouping all of it first (with
6,000 events waiting, 0.15 ms a claim instead of 7 ms)."""
_FREE = "(o.claimed_until IS NULL OR o.claimed_until < $1)"
"""Under no claim at ``$1``: never claimed, settled, or its lease ran out."""
_RETURNED = ", ".join("o." + column for column in EVENT_COLUMNS.split(", "))


class PostgresOutbox(Outbox):
    """The outbox's queries and writes, keeping the promises of :class:`Outbox`."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self.owner = uuid.uuid4().hex
        """Whose claims are this store's: unique to each store that is opened."""
        self.outbox_changed = asyncio.Event()

    async def record(self, connection: Connection, events: Sequence[HookEvent]) -> None:
        """Insert ``events`` on ``connection``, in the transaction of the change they
        report: they are recorded if and only if it is committed."""
        await connection.executemany(
            "INSERT INTO hook_outbox (id, upload_id, type, payload, created_at, since, "
            "next_attempt_at) VALUES ($1, $2, $3, $4, $5, $5, $5)",
            [(e.id, e.upload_id, e.type, e.payload, e.created_at) for e in events],
        )

    async def claim_events(self, now: float, limit: int, lease: float) -> list[HookEvent]:
        async def claim(connection: Connection) -> list[HookEvent]:
            # The conditions on the row are asked again in the UPDATE: a row that another
            # store claimed or settled after this statement's snapshot is rechecked once
            # its lock is free, and skipped.
            rows = await connection.fetch(
                f"WITH due AS (SELECT o.seq FROM hook_outbox o WHERE {_IS_HEAD} "
                f"AND o.next_attempt_at <= $1 AND {_FREE} ORDER BY o.seq LIMIT $2) "
                "UPDATE hook_outbox o SET claimed_by = $3, claimed_until = $4 FROM due "
                f"WHERE o.seq = due.seq AND NOT o.dead AND o.next_attempt_at <= $1 AND {_FREE} "
                f"RETURNING {_RETURNED}",
                now, limit, self.owner, now + lease,
            )
            return sorted((event_from_row(row) for row in rows), key=lambda e: e.seq)

        return await self._db.write(claim)

    async def next_event_due(self, now: float) -> float | None:
        rows = await self._db.rows(
            f"SELECT min(o.next_attempt_at) FROM hook_outbox o JOIN {_HEADS} h USING (seq) "
            f"WHERE {_FREE}",
            now,
        )
        due: float | None = rows[0][0]
        return due

    async def event_delivered(self, seq: int) -> None:
        await self._db.write(lambda connection: connection.execute(
            "DELETE FROM hook_outbox WHERE seq = $1 AND claimed_by = $2", seq, self.owner
        ))

    async def event_failed(self, event: HookEvent) -> None:
        await self._db.write(lambda connection: connection.execute(
            "UPDATE hook_outbox SET attempts = $1, next_attempt_at = $2, last_error = $3, "
            "dead = $4, claimed_by = NULL, claimed_until = NULL "
            "WHERE seq = $5 AND claimed_by = $6",
            event.attempts, event.next_attempt_at, event.last_error, event.dead, event.seq,
            self.owner,
        ))

    async def hook_events(self, dead_only: bool = False) -> list[HookEvent]:
        rows = await self._db.rows(
            f"SELECT {EVENT_COLUMNS} FROM hook_outbox"
            + (" WHERE dead" if dead_only else "")
            + " ORDER BY seq"
        )
        return [event_from_row(row) for row in rows]

    async def retry_events(self, hook_id: str | None) -> int:
        now = time.time()
        where, parameters = ("dead", ()) if hook_id is None else ("id = $2", (hook_id,))
        status = await self._db.write(lambda connection: connection.execute(
            "UPDATE hook_outbox SET dead = false, attempts = 0, since = $1, "
            f"next_attempt_at = $1 WHERE {where}",
            now, *parameters,
        ))
        self.outbox_changed.set()
        return rows_changed(status)

    async def count_events(self) -> tuple[int, int]:
        rows = await self._db.rows(
            "SELECT count(*) FILTER (WHERE NOT dead), count(*) FILTER (WHERE dead) "
            "FROM hook_outbox"
        )
        return int(rows[0][0]), int(rows[0][1])

    async def release_claims(self) -> None:
        """Give up this store's claims, so that another process, or this one started
        again, delivers their events without waiting for their leases: at closing, when
        the deliveries under way have ended or been given up. A database that cannot be
        reached by then lets them lapse instead."""
        try:
            await self._db.write(lambda connection: connection.execute(
                "UPDATE hook_outbox SET claimed_by = NULL, claimed_until = NULL "
                "WHERE claimed_by = $1",
                self.owner,
            ))
        except OPEN_ERRORS as exc:
            log.warning("hook events claimed by this process wait for their lease: %s", exc)
