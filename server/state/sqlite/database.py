"""The SQLite database under the state store: its connection and thread, the reader, the
schema's migrations, and the two ways to write (a statement, a transaction).

One aiosqlite connection in autocommit mode, shared by every request, runs transactions and
queries on its own thread; single writes and lookups by key run on the event loop's thread,
each on a connection of its own; :mod:`.writes` says how the writes share the database.
The database runs in WAL mode with ``synchronous=NORMAL``: a commit costs no fsync of its
own, and an offset is durable because the data file was synced before the offset was
written (see :mod:`server.receive`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
)
from pathlib import Path
from typing import Any

import aiosqlite

from ..model import DatabaseUnavailable, DatabaseUnusable, SchemaTooNew
from .marks import Stamps, WriteMarks, marks_path
from .schema import MIGRATIONS, SCHEMA_VERSION
from .writes import FollowUps, StatementBatch, WriteGate

log = logging.getLogger("aiotusd")

LOST_CODES = frozenset({
    sqlite3.SQLITE_BUSY,  # another program holds the database locked past busy_timeout
    sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_IOERR,  # the disk failed to read or write, or went away
    sqlite3.SQLITE_CANTOPEN,  # the file, its journal or its directory is gone
})
"""SQLite's primary result codes that say the database is not there for a statement now,
though it may be again (:class:`DatabaseUnavailable`). A full disk (``SQLITE_FULL``) is
storage that is full, answered 507 (:func:`server.errors.storage_full`); a damaged
database is a failure that needs the operator."""


def placeholders(values: Collection[object]) -> str:
    """As many ``?`` as ``values``, for ``IN (...)``."""
    return ", ".join("?" * len(values))


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


def _open_writer(path: Path) -> sqlite3.Connection:
    """A third connection, for the single statements run on the event loop's thread (see
    :class:`~.writes.StatementBatch`). It never waits for a lock (timeout 0): what finds the
    database locked goes to the connection's thread. It never checkpoints the log on its own
    (which syncs the file): the batch has that done on the connection's thread."""
    writer = sqlite3.connect(path, isolation_level=None, timeout=0)
    writer.execute("PRAGMA synchronous=NORMAL")  # per connection: FULL would sync each commit
    writer.execute("PRAGMA wal_autocheckpoint=0")
    return writer


CHECKPOINT_EVERY = 200
"""Commits on the event loop's thread between two checkpoints of the log (a few MiB)."""
BUSY_TIMEOUT_MS = 5000
"""How long a write on the connection's thread waits for another process's lock."""
CHECKPOINT_WAIT_MS = 50
"""How long a checkpoint waits for other processes' writes and readers."""


def _checkpoint(connection: sqlite3.Connection) -> None:
    """Copy the whole log into the database file, so that the next write starts the log
    anew. It waits for other processes' writes (microseconds each), but not for a long
    reader (a backup, a query by hand), which would hold up every write of this process
    meanwhile: past :data:`CHECKPOINT_WAIT_MS` it gives up, and the next one tries again.
    On the connection's thread."""
    connection.execute(f"PRAGMA busy_timeout={CHECKPOINT_WAIT_MS}")
    try:
        connection.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
    finally:
        connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


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


def _try_connect(path: Path) -> None:
    """Open ``path`` with the sqlite3 module and close it again; raises what opening raises.

    An aiosqlite connection that fails to open stops its thread only after the caller has
    been answered: when the event loop is gone by then, that thread dies with a traceback
    of its own. Failing here first, that thread is never started.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    sqlite3.connect(path).close()


def _open_marks(path: Path) -> WriteMarks:
    """The file of :mod:`.marks` beside the database at ``path``; raises
    :class:`DatabaseUnusable` naming it when it cannot be made."""
    try:
        return WriteMarks.open(path)
    except OSError as exc:
        raise DatabaseUnusable(
            f"cannot use the database {path}: cannot make {marks_path(path)}: "
            f"{exc.strerror or exc}"
        ) from None


def _unusable(
    path: Path, exc: OSError | sqlite3.Error | DatabaseUnavailable
) -> DatabaseUnusable:
    """The error that says, in one line, which database file cannot be used and why."""
    if os.path.isdir(path):
        reason = "it is a directory"
    elif isinstance(exc, OSError):
        reason = f"cannot make its directory {exc.filename or path.parent}: {exc.strerror or exc}"
    else:
        reason = str(exc.__cause__ if isinstance(exc, DatabaseUnavailable) else exc)
    return DatabaseUnusable(f"cannot use the database {path}: {reason}")


class unavailable_when_lost:
    """Raise :class:`DatabaseUnavailable`, naming ``path``, for an error of SQLite's that
    says the database is not there for the statement (:data:`LOST_CODES`).

    A class rather than a generator (``contextlib.contextmanager``): every statement
    enters one, and a generator's context costs some four Python calls more."""

    __slots__ = ("path",)

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: object
    ) -> None:
        if isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode & 0xFF in LOST_CODES:
            raise DatabaseUnavailable(f"the database {self.path} is unavailable: {exc}") from exc


class Transaction:
    """A transaction under way, alone on the connection: its statements, and what is to be
    done once it is committed."""

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._connection = connection
        self._on_commit: list[Callable[[], None]] = []

    async def execute(self, sql: str, parameters: tuple[Any, ...] = ()) -> int:
        """Run one statement; how many rows it changed."""
        cursor = await self._connection.execute(sql, parameters)
        return cursor.rowcount

    async def executemany(self, sql: str, rows: Iterable[tuple[Any, ...]]) -> None:
        await self._connection.executemany(sql, rows)

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the transaction is committed (never if it is not)."""
        self._on_commit.append(callback)

    def committed(self) -> None:
        """The transaction was committed: call what waited for that."""
        for callback in self._on_commit:
            callback()


class Database:
    """The aiosqlite ``connection`` every write goes through, the ``reader`` for lookups by
    key, and the writes' turns on the connection (``gate``), of the file at ``path``.

    A statement that finds the database not there for it (locked by another program past
    ``busy_timeout``, a failing disk) raises :class:`DatabaseUnavailable`."""

    def __init__(
        self, path: Path, connection: aiosqlite.Connection,
        reader: sqlite3.Connection | None = None,
    ) -> None:
        self.path = path
        self.connection = connection
        self.reader = reader
        """Lookups by key try this connection first (see :func:`_open_reader`)."""
        self.marks: WriteMarks | None = None
        """Where the writes' stamps go, when other processes write the file (:mod:`.marks`)."""
        self.gate = WriteGate()
        self._batch = StatementBatch(connection, committed_here=self._committed_here)
        self._commits_here = 0
        self._checkpoint: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: Path, sole_writer: bool = False) -> Database:
        """The database in the SQLite file at ``path``, made (with its directory) if missing,
        and migrated to :data:`SCHEMA_VERSION`; unless it is the file's ``sole_writer``,
        with the file of :mod:`.marks` beside it.

        Raises :class:`DatabaseUnusable` naming ``path`` when the file cannot be the
        database: not SQLite, damaged, a directory, unwritable, or of a newer schema.
        Whatever fails, no connection is left open: its thread would keep the process alive.
        """
        try:
            await asyncio.to_thread(_try_connect, path)
            connection = await aiosqlite.connect(path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise _unusable(path, exc) from None
        database = cls(path, connection)
        try:
            await connection.execute("PRAGMA journal_mode=WAL")
            await connection.execute("PRAGMA synchronous=NORMAL")
            await connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            await database._migrate(path)
            database.reader = _open_reader(path)
            database._batch.here = _open_writer(path)
            if not sole_writer:
                database.marks = database._batch.marks = _open_marks(path)
        except (sqlite3.Error, DatabaseUnavailable) as exc:
            await database.close()
            raise _unusable(path, exc) from None
        except BaseException:
            await database.close()
            raise
        return database

    async def close(self) -> None:
        if self._checkpoint is not None:
            await asyncio.wait([self._checkpoint])
        if self._batch.here is not None:
            self._batch.here.close()
        if self.reader is not None:
            self.reader.close()
        if self.marks is not None:
            self.marks.close()
        await self.connection.close()

    async def schema_version(self) -> int:
        rows = await self.rows("SELECT version FROM schema_version")
        return next((int(row[0]) for row in rows), 0)

    async def _migrate(self, path: Path) -> None:
        await self.connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
        )
        version = await self.schema_version()
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"cannot use the database {path}: its schema version {version} is newer than "
                f"this aiotusd understands ({SCHEMA_VERSION})"
            )
        for number in range(version, SCHEMA_VERSION):
            statements = MIGRATIONS[number].strip()
            await self.connection.executescript(
                f"BEGIN; {statements}; DELETE FROM schema_version; "
                f"INSERT INTO schema_version VALUES ({number + 1}); COMMIT;"
            )

    async def statement(
        self, sql: str, parameters: tuple[Any, ...], row_id: bool = False, stamps: Stamps = (),
        follow_ups: FollowUps = (),
    ) -> int:
        """Run one writing statement, side by side with others (:class:`StatementBatch`),
        in a transaction that leaves ``stamps`` (:mod:`.marks`) and, when it changed a
        row, runs ``follow_ups`` too; the rows it changed, or with ``row_id`` the id of the
        row it inserted (0: none). A cancelled caller waits for it to have run."""
        with unavailable_when_lost(self.path):
            async with self.gate.statement():
                return await self._batch.run((sql, parameters, row_id, follow_ups), stamps)

    def _committed_here(self) -> None:
        """Every :data:`CHECKPOINT_EVERY` commits made on the event loop's thread, checkpoint
        the log on the connection's thread, one checkpoint at a time.

        That connection never checkpoints by itself (a checkpoint syncs the database file,
        which must not hold up the event loop). The checkpoint takes a transaction's turn
        at the gate: a log that this process keeps writing to while it is copied can never
        be started anew, and would grow for as long as uploads keep coming."""
        self._commits_here += 1
        if self._commits_here >= CHECKPOINT_EVERY and self._checkpoint is None:
            self._commits_here = 0
            self._checkpoint = asyncio.create_task(self._run_checkpoint())

    async def _run_checkpoint(self) -> None:
        try:
            async with self.gate.transaction():
                await self.connection._execute(_checkpoint, self.connection._connection)
        except (sqlite3.Error, ValueError) as exc:  # ValueError: the connection is closed
            # The log grows until the next one; the writes report what is really wrong.
            log.warning("checkpointing the database %s failed: %s", self.path, exc)
        finally:
            self._checkpoint = None

    @contextlib.asynccontextmanager
    async def transaction(self, stamps: Stamps = ()) -> AsyncIterator[Transaction]:
        """A transaction, alone on the connection, that leaves ``stamps`` (:mod:`.marks`);
        committed when the block ends, rolled back when it raises. A caller cancelled as it
        commits waits for the commit."""
        with unavailable_when_lost(self.path):
            async with self._transaction(stamps) as transaction:
                yield transaction

    @contextlib.asynccontextmanager
    async def _transaction(self, stamps: Stamps) -> AsyncIterator[Transaction]:
        db = self.connection
        async with self.gate.transaction():
            transaction = Transaction(db)
            try:
                # IMMEDIATE: the write lock from the start, waited for (busy_timeout) while
                # another process of --workers holds it. Deferred, a read that another task
                # runs on this connection before the first write (lookups and queries take
                # no turn at the gate) would begin the transaction as a read, which SQLite
                # fails at once, not waiting, to turn into a write once another process has
                # committed meanwhile: a 503 for nothing.
                await db.execute("BEGIN IMMEDIATE")
                yield transaction
                if stamps and self.marks is not None:
                    # From this thread, before the COMMIT: held since BEGIN IMMEDIATE.
                    self.marks.leave(stamps)
            except BaseException:
                # Also when awaiting BEGIN was cancelled: aiosqlite runs it all the same, and
                # this ROLLBACK, queued after it, ends it. A full disk may have rolled back.
                with contextlib.suppress(sqlite3.OperationalError):
                    await db.execute("ROLLBACK")
                raise
            try:
                await _to_the_end(db, db.execute("COMMIT"))
            except BaseException as exc:
                # A COMMIT that failed on SQLITE_BUSY or a deferred constraint leaves the
                # transaction open, and every later BEGIN would fail; a full disk rolls back.
                if db.in_transaction:
                    await db.execute("ROLLBACK")
                elif isinstance(exc, asyncio.CancelledError):
                    transaction.committed()  # committed all the same
                raise
        transaction.committed()

    async def lookup(self, sql: str, parameters: tuple[Any, ...]) -> Iterable[Any]:
        """The rows of a lookup by key: on this thread, else on the connection's thread."""
        if self.reader is not None:
            try:
                return self.reader.execute(sql, parameters).fetchall()
            except sqlite3.OperationalError:
                # Busy (a checkpoint that must not be waited for here) or failing: the
                # connection's thread asks again, and reports what is really wrong.
                pass
        with unavailable_when_lost(self.path):
            return await self.connection.execute_fetchall(sql, parameters)

    async def rows(self, sql: str, parameters: tuple[Any, ...] = ()) -> Iterable[Any]:
        """The rows of a query, on the connection's thread: one that scans a table must not
        hold up the event loop."""
        with unavailable_when_lost(self.path):
            return await self.connection.execute_fetchall(sql, parameters)
