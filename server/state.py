"""Upload state in SQLite (through aiosqlite), with a schema version and migrations.

The database runs in WAL mode with ``synchronous=NORMAL``: a commit costs no
fsync of its own, and an offset is durable because the data file was synced
before the offset was written (see :mod:`server.receive`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

log = logging.getLogger("aiotusd")

ACTIVE = "active"
TERMINATED = "terminated"
EXPIRED = "expired"
REFUSED = "refused"
"""A final upload whose parts add up to more than ``max_size``: it is never assembled."""

# Each entry moves the schema from version N to N+1; never edit a released one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE uploads (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL DEFAULT 'active',
        length INTEGER,
        defer_length INTEGER NOT NULL DEFAULT 0,
        "offset" INTEGER NOT NULL DEFAULT 0,
        metadata TEXT NOT NULL DEFAULT '',
        concat TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        expires_at REAL,
        completed_at REAL,
        storage TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX uploads_expires ON uploads (expires_at) WHERE expires_at IS NOT NULL;
    CREATE TABLE concat_parts (
        final_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        partial_id TEXT NOT NULL,
        PRIMARY KEY (final_id, position)
    );
    CREATE INDEX concat_parts_partial ON concat_parts (partial_id);
    """,
    """
    CREATE TABLE hook_outbox (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        upload_id TEXT NOT NULL,
        type TEXT NOT NULL,
        payload BLOB NOT NULL,
        created_at REAL NOT NULL,
        since REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error TEXT NOT NULL DEFAULT '',
        dead INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX hook_outbox_pending ON hook_outbox (upload_id, seq) WHERE dead = 0;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_COLUMNS = (
    'id, status, length, defer_length, "offset", metadata, concat, '
    "created_at, updated_at, expires_at, completed_at, storage"
)


class _NothingChanged(Exception):
    """Rolls back a transaction whose statement changed no row."""


class UploadGone(Exception):
    """The upload a write was for is not active (any more): nothing was recorded."""


@dataclass
class Upload:
    id: str
    length: int | None
    offset: int = 0
    metadata: str = ""
    """The ``Upload-Metadata`` header as the client sent it (echoed on HEAD)."""
    defer_length: bool = False
    concat: str | None = None
    """None, ``"partial"`` or ``"final"``."""
    status: str = ACTIVE
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    expires_at: float | None = None
    completed_at: float | None = None
    storage: dict[str, Any] = field(default_factory=dict)

    @property
    def is_complete(self) -> bool:
        return self.completed_at is not None

    @property
    def is_final(self) -> bool:
        return self.concat == "final"

    @classmethod
    def from_row(cls, row: aiosqlite.Row) -> Upload:
        return cls(
            id=row[0],
            status=row[1],
            length=row[2],
            defer_length=bool(row[3]),
            offset=row[4],
            metadata=row[5],
            concat=row[6],
            created_at=row[7],
            updated_at=row[8],
            expires_at=row[9],
            completed_at=row[10],
            storage=json.loads(row[11]),
        )


@dataclass
class HookEvent:
    """A post-hook event in the outbox, from the state change that caused it until delivered."""

    id: str
    """The ``Hook-Id``: the same on every delivery attempt, for idempotent receivers."""
    upload_id: str
    type: str
    payload: bytes
    """The JSON body, fixed when the event is recorded."""
    created_at: float = field(default_factory=time.time)
    seq: int = 0
    """Outbox order; events of one upload are delivered in this order."""
    since: float = 0.0
    """When the current series of attempts began: creation, or the last ``hooks retry``."""
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str = ""
    dead: bool = False

    @classmethod
    def from_row(cls, row: aiosqlite.Row) -> HookEvent:
        return cls(
            seq=row[0], id=row[1], upload_id=row[2], type=row[3], payload=row[4],
            created_at=row[5], since=row[6], attempts=row[7], next_attempt_at=row[8],
            last_error=row[9], dead=bool(row[10]),
        )


_EVENT_COLUMNS = (
    "seq, id, upload_id, type, payload, created_at, since, attempts, next_attempt_at, "
    "last_error, dead"
)
# The oldest undelivered, live event of each upload: the only one of it that may go out.
_HEADS = "seq IN (SELECT MIN(seq) FROM hook_outbox WHERE dead = 0 GROUP BY upload_id)"


def _open_reader(path: Path) -> sqlite3.Connection:
    """A second connection, for lookups by key on the event loop's own thread.

    One row by its key takes microseconds once its pages are cached; a round trip to the
    aiosqlite thread costs hundreds (two thread wake-ups), and every HEAD and PATCH begins
    with one. In WAL mode a reader does not wait for the writer, and it sees every
    committed write: every write awaited before it. It never waits for a lock (timeout 0).
    """
    reader = sqlite3.connect(path, isolation_level=None, timeout=0)
    reader.execute("PRAGMA query_only = 1")
    return reader


async def _to_the_end(db: aiosqlite.Connection, statement: Awaitable[Any]) -> None:
    """Await ``statement``; when the caller is cancelled meanwhile, raise that only once the
    statement has run.

    aiosqlite runs a statement whose caller stopped waiting all the same. Left to itself,
    a cancelled request's last offset could land after the request released the upload's
    lock: unseen by the next request's lookup (another connection), and over its write.
    The connection's thread runs statements in order, so one queued after it, once
    answered, says that it has run.
    """
    try:
        await statement
    except asyncio.CancelledError:
        barrier = asyncio.ensure_future(db.execute("SELECT 1"))
        while not barrier.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([barrier])
        if not barrier.cancelled() and barrier.exception() is not None:
            log.warning("waiting for a cancelled request's write failed: %s", barrier.exception())
        raise


class DatabaseUnusable(Exception):
    """The database file cannot be opened, read or migrated; the message names the file."""


class SchemaTooNew(DatabaseUnusable):
    """The database was written by a newer aiotusd than this one."""


def _try_connect(path: Path) -> None:
    """Open ``path`` with the sqlite3 module and close it again; raises what opening raises.

    An aiosqlite connection that fails to open stops its thread only after the caller has
    been answered: when the event loop is gone by then, that thread dies with a traceback
    of its own. Failing here first, that thread is never started.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    sqlite3.connect(path).close()


def _unusable(path: Path, exc: OSError | sqlite3.Error) -> DatabaseUnusable:
    """The error that says, in one line, which database file cannot be used and why."""
    if os.path.isdir(path):
        reason = "it is a directory"
    elif isinstance(exc, OSError):
        reason = f"cannot make its directory {exc.filename or path.parent}: {exc.strerror or exc}"
    else:
        reason = str(exc)
    return DatabaseUnusable(f"cannot use the database {path}: {reason}")


class _WriteGate:
    """Single statements side by side, a transaction alone, each in its turn.

    The one connection's thread runs what it is given in order. Single statements need
    not wait for each other: those that come in one turn of the event loop go to the
    thread together (:class:`_StatementBatch`), which is what makes many small uploads
    fast. A
    transaction must run alone, so that no other request's statement slips into it (and
    is rolled back with it): it waits for the statements under way, and statements that
    come after it wait for it.

    Turns go in the order of arrival: neither a stream of statements nor one of
    transactions (every creation with a post-create hook is one) keeps the other out.
    """

    def __init__(self) -> None:
        self._statements = 0
        self._transaction = False
        self._waiting: collections.deque[tuple[bool, asyncio.Future[None]]] = (
            collections.deque()
        )
        """Who waits for a turn, first come first: (is a transaction, woken when in)."""

    @contextlib.asynccontextmanager
    async def statement(self) -> AsyncIterator[None]:
        await self._enter(transaction=False)
        try:
            yield
        finally:
            self._leave(transaction=False)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        await self._enter(transaction=True)
        try:
            yield
        finally:
            self._leave(transaction=True)

    def _may_enter(self, transaction: bool) -> bool:
        return not self._transaction and not (transaction and self._statements)

    def _let_in(self, transaction: bool) -> None:
        if transaction:
            self._transaction = True
        else:
            self._statements += 1

    async def _enter(self, transaction: bool) -> None:
        if not self._waiting and self._may_enter(transaction):
            self._let_in(transaction)
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append((transaction, turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.cancelled():
                # Its place is given up: those behind it may now go in.
                self._wake()
            else:
                self._leave(transaction)  # let in, but cancelled before it could go on
            raise

    def _leave(self, transaction: bool) -> None:
        if transaction:
            self._transaction = False
        else:
            self._statements -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiting:
            transaction, turn = self._waiting[0]
            if turn.done():  # cancelled while waiting
                self._waiting.popleft()
                continue
            if not self._may_enter(transaction):
                return
            self._waiting.popleft()
            self._let_in(transaction)
            turn.set_result(None)


def _run_together(
    connection: sqlite3.Connection, statements: list[tuple[str, tuple[Any, ...]]]
) -> list[Exception | int]:
    """Run ``statements`` in one transaction; when one fails, each alone: every statement
    gets its own outcome, as if it had been sent by itself: the rows it changed, or its
    exception. On the connection's thread."""
    if len(statements) > 1:
        try:
            connection.execute("BEGIN")
            changed: list[Exception | int] = [
                connection.execute(sql, values).rowcount for sql, values in statements
            ]
            connection.execute("COMMIT")
            return changed
        except Exception as exc:
            # A full disk may have rolled back already; a failed COMMIT may have not.
            if connection.in_transaction:
                try:
                    connection.execute("ROLLBACK")
                except sqlite3.Error:
                    return [exc] * len(statements)  # none of them may go into that one
    outcomes: list[Exception | int] = []
    for sql, parameters in statements:
        try:
            outcomes.append(connection.execute(sql, parameters).rowcount)
        except Exception as exc:
            outcomes.append(exc)
    return outcomes


class _StatementBatch:
    """Single statements that come within one turn of the event loop go to the connection's
    thread together, as one call, and are committed together.

    A round trip to that thread costs far more CPU than an UPDATE by key (measured: 83 us
    against 11 us a statement when 32 go together); many small uploads make two writes
    each. A statement is answered once its batch is committed.
    """

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._connection = connection
        self._waiting: list[tuple[str, tuple[Any, ...], asyncio.Future[int]]] = []

    async def run(self, sql: str, parameters: tuple[Any, ...]) -> int:
        """Run one statement and return how many rows it changed; a cancelled caller waits
        for it to have run all the same (see :func:`_to_the_end`)."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._send)
        self._waiting.append((sql, parameters, done))
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            while not done.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([done])
            raise

    def _send(self) -> None:
        batch, self._waiting = self._waiting, []
        statements = [(sql, parameters) for sql, parameters, _ in batch]
        sent = asyncio.ensure_future(
            self._connection._execute(_run_together, self._connection._connection, statements)
        )

        def answer(sent: asyncio.Future[list[Exception | int]]) -> None:
            if sent.cancelled():  # the loop is closing
                for _, _, done in batch:
                    done.cancel()
                return
            failure = sent.exception()
            outcomes: Sequence[BaseException | int] = (
                sent.result() if failure is None else [failure] * len(batch)
            )
            for (_, _, done), outcome in zip(batch, outcomes):
                if isinstance(outcome, BaseException):
                    done.set_exception(outcome)
                else:
                    done.set_result(outcome)

        sent.add_done_callback(answer)


class StateStore:
    """All reads and writes of upload state.

    One connection in autocommit mode, shared by every request. Writes pass
    ``_gate``: single statements run side by side, a transaction alone.

    The writes that change an upload take the post-hook ``events`` the change
    causes and insert them into the outbox in the same transaction: an event is
    recorded if and only if its change is. Without events they are single
    statements, sent to the database together with those of other requests
    (:class:`_StatementBatch`).
    """

    def __init__(
        self, connection: aiosqlite.Connection, reader: sqlite3.Connection | None = None
    ) -> None:
        self._db = connection
        self._reader = reader
        self._gate = _WriteGate()
        self._batch = _StatementBatch(connection)
        self.outbox_changed = asyncio.Event()
        """Set whenever events were committed to the outbox (the delivery worker waits on it)."""

    @contextlib.asynccontextmanager
    async def _transaction(
        self, events: Sequence[HookEvent] = ()
    ) -> AsyncIterator[aiosqlite.Connection]:
        async with self._gate.transaction():
            try:
                await self._db.execute("BEGIN")
                yield self._db
                if events:
                    await self._db.executemany(
                        "INSERT INTO hook_outbox (id, upload_id, type, payload, created_at, since, "
                        "next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [
                            (e.id, e.upload_id, e.type, e.payload, e.created_at, e.created_at,
                             e.created_at)
                            for e in events
                        ],
                    )
            except BaseException:
                # Also when awaiting BEGIN was cancelled: aiosqlite runs it all the same, and
                # this ROLLBACK, queued after it, ends it. A full disk may have rolled back.
                with contextlib.suppress(sqlite3.OperationalError):
                    await self._db.execute("ROLLBACK")
                raise
            try:
                await _to_the_end(self._db, self._db.execute("COMMIT"))
            except BaseException as exc:
                # A COMMIT that failed on SQLITE_BUSY or a deferred constraint leaves the
                # transaction open, and every later BEGIN would fail; a full disk rolls back.
                if self._db.in_transaction:
                    await self._db.execute("ROLLBACK")
                elif events and isinstance(exc, asyncio.CancelledError):
                    self.outbox_changed.set()  # committed all the same
                raise
        if events:
            self.outbox_changed.set()

    async def _write(
        self, sql: str, parameters: tuple[Any, ...], events: Sequence[HookEvent] = ()
    ) -> int:
        """Run one writing statement, with ``events`` in its transaction; the rows it changed.

        A statement that changed no row changed nothing that ``events`` could report:
        they are not recorded either."""
        if events:
            try:
                async with self._transaction(events) as db:
                    cursor = await db.execute(sql, parameters)
                    if not cursor.rowcount:
                        raise _NothingChanged
                    return cursor.rowcount
            except _NothingChanged:
                return 0
        async with self._gate.statement():
            return await self._batch.run(sql, parameters)

    @classmethod
    async def open(cls, path: Path) -> StateStore:
        """The store in the SQLite file at ``path``, made (with its directory) if missing.

        Raises :class:`DatabaseUnusable` naming ``path`` when the file cannot be the
        database: not SQLite, damaged, a directory, unwritable, or of a newer schema.
        Whatever fails, no connection is left open: its thread would keep the process alive.
        """
        try:
            await asyncio.to_thread(_try_connect, path)
            connection = await aiosqlite.connect(path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise _unusable(path, exc) from None
        try:
            await connection.execute("PRAGMA journal_mode=WAL")
            await connection.execute("PRAGMA synchronous=NORMAL")
            await connection.execute("PRAGMA busy_timeout=5000")
            store = cls(connection)
            await store._migrate(path)
            store._reader = _open_reader(path)
        except sqlite3.Error as exc:
            await connection.close()
            raise _unusable(path, exc) from None
        except BaseException:
            await connection.close()
            raise
        return store

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        await self._db.close()

    async def _read_rows(self, sql: str, parameters: tuple[Any, ...]) -> Iterable[Any]:
        """The rows of a lookup by key: on this thread, else on the connection's thread."""
        if self._reader is not None:
            try:
                return self._reader.execute(sql, parameters).fetchall()
            except sqlite3.OperationalError:
                # Busy (a checkpoint that must not be waited for here) or failing: the
                # connection's thread asks again, and reports what is really wrong.
                pass
        return await self._db.execute_fetchall(sql, parameters)

    async def _migrate(self, path: Path) -> None:
        await self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        async with self._db.execute("SELECT version FROM schema_version") as cursor:
            row = await cursor.fetchone()
        version = row[0] if row else 0
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"cannot use the database {path}: its schema version {version} is newer than "
                f"this aiotusd understands ({SCHEMA_VERSION})"
            )
        for number in range(version, SCHEMA_VERSION):
            statements = MIGRATIONS[number].strip()
            await self._db.executescript(
                f"BEGIN; {statements}; DELETE FROM schema_version; "
                f"INSERT INTO schema_version VALUES ({number + 1}); COMMIT;"
            )

    async def schema_version(self) -> int:
        async with self._db.execute("SELECT version FROM schema_version") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def create(
        self, upload: Upload, parts: tuple[str, ...] = (), events: Sequence[HookEvent] = ()
    ) -> None:
        """Insert an upload, and for a final upload its ordered parts, atomically."""
        values = (
            upload.id, upload.status, upload.length, int(upload.defer_length), upload.offset,
            upload.metadata, upload.concat, upload.created_at, upload.updated_at,
            upload.expires_at, upload.completed_at, json.dumps(upload.storage),
        )
        insert_upload = f"INSERT INTO uploads ({_COLUMNS}) VALUES ({', '.join('?' * 12)})"
        if not parts:
            await self._write(insert_upload, values, events)
            return
        async with self._transaction(events) as db:
            await db.execute(insert_upload, values)
            await db.executemany(
                "INSERT INTO concat_parts (final_id, position, partial_id) VALUES (?, ?, ?)",
                [(upload.id, position, part) for position, part in enumerate(parts)],
            )

    async def get(self, upload_id: str) -> Upload | None:
        rows = await self._read_rows(f"SELECT {_COLUMNS} FROM uploads WHERE id = ?", (upload_id,))
        return next((Upload.from_row(row) for row in rows), None)

    async def get_many(self, upload_ids: tuple[str, ...]) -> dict[str, Upload]:
        unique = tuple(set(upload_ids))
        rows = await self._read_rows(
            f"SELECT {_COLUMNS} FROM uploads WHERE id IN ({', '.join('?' * len(unique))})",
            unique,
        )
        return {row[0]: Upload.from_row(row) for row in rows}

    async def save_progress(self, upload: Upload, events: Sequence[HookEvent] = ()) -> None:
        """Write offset, length, expiry, completion and storage info of ``upload``.

        Raises :class:`UploadGone` (and records nothing) when the upload is no longer
        active: a request must never be told its bytes are kept by an upload that was
        terminated or expired meanwhile."""
        upload.updated_at = time.time()
        changed = await self._write(
            'UPDATE uploads SET "offset" = ?, length = ?, expires_at = ?, completed_at = ?, '
            "storage = ?, updated_at = ? WHERE id = ? AND status = ?",
            (
                upload.offset, upload.length, upload.expires_at, upload.completed_at,
                json.dumps(upload.storage), upload.updated_at, upload.id, ACTIVE,
            ),
            events,
        )
        if not changed:
            raise UploadGone(upload.id)

    async def mark_gone(
        self,
        upload_id: str,
        status: str,
        events: Sequence[HookEvent] = (),
        also: Sequence[str] = (),
    ) -> None:
        """Keep a terminated or expired upload as a tombstone, so it answers 410; the
        uploads ``also`` names (the finals that go with a partial) in the same transaction.

        Only active uploads: one that is gone already keeps its tombstone, and when none
        of them was active, ``events`` are not recorded either."""
        ids = (upload_id, *also)
        await self._write(
            "UPDATE uploads SET status = ?, updated_at = ?, expires_at = NULL "
            f"WHERE id IN ({', '.join('?' * len(ids))}) AND status = ?",
            (status, time.time(), *ids, ACTIVE),
            events,
        )

    async def parts(self, final_id: str) -> tuple[str, ...]:
        async with self._db.execute(
            "SELECT partial_id FROM concat_parts WHERE final_id = ? ORDER BY position",
            (final_id,),
        ) as cursor:
            return tuple(row[0] for row in await cursor.fetchall())

    async def finals_waiting_on(self, partial_id: str) -> list[str]:
        """Unfinished active final uploads that contain ``partial_id``."""
        async with self._db.execute(
            "SELECT DISTINCT u.id FROM concat_parts p JOIN uploads u ON u.id = p.final_id "
            "WHERE p.partial_id = ? AND u.status = ? AND u.completed_at IS NULL",
            (partial_id, ACTIVE),
        ) as cursor:
            return [row[0] for row in await cursor.fetchall()]

    async def expired_ids(self, now: float, limit: int) -> list[str]:
        async with self._db.execute(
            "SELECT id FROM uploads WHERE expires_at IS NOT NULL AND expires_at <= ? "
            "AND status = ? AND completed_at IS NULL LIMIT ?",
            (now, ACTIVE, limit),
        ) as cursor:
            return [row[0] for row in await cursor.fetchall()]

    async def count_unfinished(self) -> int:
        """Active uploads still waiting for bytes (for metrics)."""
        async with self._db.execute(
            "SELECT COUNT(*) FROM uploads WHERE status = ? AND completed_at IS NULL", (ACTIVE,)
        ) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def count_events(self) -> tuple[int, int]:
        """Post-hook events in the outbox: pending, and dead (for metrics)."""
        async with self._db.execute(
            "SELECT COALESCE(SUM(NOT dead), 0), COALESCE(SUM(dead), 0) FROM hook_outbox"
        ) as cursor:
            row = await cursor.fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    async def gone_before(self, before: float, limit: int) -> list[Upload]:
        """Tombstones (terminated or expired uploads) last changed before ``before``."""
        async with self._db.execute(
            f"SELECT {_COLUMNS} FROM uploads WHERE status != ? AND updated_at < ? LIMIT ?",
            (ACTIVE, before, limit),
        ) as cursor:
            return [Upload.from_row(row) for row in await cursor.fetchall()]

    async def forget(self, upload_ids: Collection[str]) -> None:
        """Drop the rows of these uploads for good."""
        if not upload_ids:
            return
        marks = ", ".join("?" * len(upload_ids))
        async with self._transaction() as db:
            await db.execute(f"DELETE FROM concat_parts WHERE final_id IN ({marks})", (*upload_ids,))
            await db.execute(f"DELETE FROM uploads WHERE id IN ({marks})", (*upload_ids,))

    async def due_events(
        self, now: float, busy: Collection[str], limit: int
    ) -> list[HookEvent]:
        """The next event of each upload not in ``busy`` whose attempt is due, oldest first."""
        async with self._db.execute(
            f"SELECT {_EVENT_COLUMNS} FROM hook_outbox WHERE {_HEADS} AND next_attempt_at <= ? "
            f"AND upload_id NOT IN ({', '.join('?' * len(busy))}) ORDER BY seq LIMIT ?",
            (now, *busy, limit),
        ) as cursor:
            return [HookEvent.from_row(row) for row in await cursor.fetchall()]

    async def next_event_due(self, busy: Collection[str]) -> float | None:
        """When the next event of an upload not in ``busy`` is due, or None if none waits."""
        async with self._db.execute(
            f"SELECT MIN(next_attempt_at) FROM hook_outbox WHERE {_HEADS} "
            f"AND upload_id NOT IN ({', '.join('?' * len(busy))})",
            tuple(busy),
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None else row[0]

    async def event_delivered(self, seq: int) -> None:
        await self._write("DELETE FROM hook_outbox WHERE seq = ?", (seq,))

    async def event_failed(self, event: HookEvent) -> None:
        """Record a failed attempt: its error, and the next attempt or that there is none."""
        await self._write(
            "UPDATE hook_outbox SET attempts = ?, next_attempt_at = ?, last_error = ?, dead = ? "
            "WHERE seq = ?",
            (event.attempts, event.next_attempt_at, event.last_error, int(event.dead), event.seq),
        )

    async def hook_events(self, dead_only: bool = False) -> list[HookEvent]:
        """Every event still in the outbox (or only the dead ones), oldest first."""
        async with self._db.execute(
            f"SELECT {_EVENT_COLUMNS} FROM hook_outbox"
            + (" WHERE dead = 1" if dead_only else "")
            + " ORDER BY seq"
        ) as cursor:
            return [HookEvent.from_row(row) for row in await cursor.fetchall()]

    async def retry_events(self, hook_id: str | None) -> int:
        """Send event ``hook_id`` (None: every dead event) again from now, with fresh attempts.

        Returns how many events were rescheduled."""
        now = time.time()
        where, parameters = ("dead = 1", ()) if hook_id is None else ("id = ?", (hook_id,))
        async with self._gate.statement():
            cursor = await self._db.execute(
                "UPDATE hook_outbox SET dead = 0, attempts = 0, since = ?, next_attempt_at = ? "
                f"WHERE {where}",
                (now, now, *parameters),
            )
        self.outbox_changed.set()
        return cursor.rowcount
