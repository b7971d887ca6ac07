"""Upload state in SQLite (through aiosqlite), with a schema version and migrations.

The database runs in WAL mode with ``synchronous=NORMAL``: a commit costs no
fsync of its own, and an offset is durable because the data file was synced
before the offset was written (see :mod:`server.receive`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

ACTIVE = "active"
TERMINATED = "terminated"
EXPIRED = "expired"

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
)
SCHEMA_VERSION = len(MIGRATIONS)

_COLUMNS = (
    'id, status, length, defer_length, "offset", metadata, concat, '
    "created_at, updated_at, expires_at, completed_at, storage"
)


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


class SchemaTooNew(Exception):
    """The database was written by a newer aiotusd than this one."""


class StateStore:
    """All reads and writes of upload state.

    One connection in autocommit mode, shared by every request. Writes take
    ``_write_lock`` so that a statement of one request can never slip into
    (and be rolled back with) another request's transaction.
    """

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._db = connection
        self._write_lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._write_lock:
            await self._db.execute("BEGIN")
            try:
                yield self._db
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")

    async def _write(self, sql: str, parameters: tuple[Any, ...]) -> None:
        async with self._write_lock:
            await self._db.execute(sql, parameters)

    @classmethod
    async def open(cls, path: Path) -> StateStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = await aiosqlite.connect(path, isolation_level=None)
        await connection.execute("PRAGMA journal_mode=WAL")
        await connection.execute("PRAGMA synchronous=NORMAL")
        await connection.execute("PRAGMA busy_timeout=5000")
        store = cls(connection)
        await store._migrate()
        return store

    async def close(self) -> None:
        await self._db.close()

    async def _migrate(self) -> None:
        await self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        async with self._db.execute("SELECT version FROM schema_version") as cursor:
            row = await cursor.fetchone()
        version = row[0] if row else 0
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"database schema version {version} is newer than this aiotusd "
                f"understands ({SCHEMA_VERSION})"
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

    async def create(self, upload: Upload, parts: tuple[str, ...] = ()) -> None:
        """Insert an upload, and for a final upload its ordered parts, atomically."""
        values = (
            upload.id, upload.status, upload.length, int(upload.defer_length), upload.offset,
            upload.metadata, upload.concat, upload.created_at, upload.updated_at,
            upload.expires_at, upload.completed_at, json.dumps(upload.storage),
        )
        insert_upload = f"INSERT INTO uploads ({_COLUMNS}) VALUES ({', '.join('?' * 12)})"
        if not parts:
            await self._write(insert_upload, values)
            return
        async with self._transaction() as db:
            await db.execute(insert_upload, values)
            await db.executemany(
                "INSERT INTO concat_parts (final_id, position, partial_id) VALUES (?, ?, ?)",
                [(upload.id, position, part) for position, part in enumerate(parts)],
            )

    async def get(self, upload_id: str) -> Upload | None:
        async with self._db.execute(
            f"SELECT {_COLUMNS} FROM uploads WHERE id = ?", (upload_id,)
        ) as cursor:
            row = await cursor.fetchone()
        return Upload.from_row(row) if row else None

    async def get_many(self, upload_ids: tuple[str, ...]) -> dict[str, Upload]:
        unique = tuple(set(upload_ids))
        async with self._db.execute(
            f"SELECT {_COLUMNS} FROM uploads WHERE id IN ({', '.join('?' * len(unique))})",
            unique,
        ) as cursor:
            rows = await cursor.fetchall()
        return {row[0]: Upload.from_row(row) for row in rows}

    async def save_progress(self, upload: Upload) -> None:
        """Write offset, length, expiry, completion and storage info of ``upload``."""
        upload.updated_at = time.time()
        await self._write(
            'UPDATE uploads SET "offset" = ?, length = ?, expires_at = ?, completed_at = ?, '
            "storage = ?, updated_at = ? WHERE id = ?",
            (
                upload.offset, upload.length, upload.expires_at, upload.completed_at,
                json.dumps(upload.storage), upload.updated_at, upload.id,
            ),
        )

    async def mark_gone(self, upload_id: str, status: str) -> None:
        """Keep a terminated or expired upload as a tombstone, so it answers 410."""
        await self._write(
            "UPDATE uploads SET status = ?, updated_at = ?, expires_at = NULL WHERE id = ?",
            (status, time.time(), upload_id),
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

    async def forget_gone(self, before: float) -> int:
        """Drop tombstones older than ``before``; returns how many were dropped."""
        async with self._transaction() as db:
            await db.execute(
                "DELETE FROM concat_parts WHERE final_id IN "
                "(SELECT id FROM uploads WHERE status != ? AND updated_at < ?)",
                (ACTIVE, before),
            )
            cursor = await db.execute(
                "DELETE FROM uploads WHERE status != ? AND updated_at < ?", (ACTIVE, before)
            )
        return cursor.rowcount
