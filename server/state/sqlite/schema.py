"""The SQLite schema, as the migrations that make it, and how its rows load."""

from __future__ import annotations

import json
from typing import Any

from ..model import ConcatKind, HookEvent, Status, Upload

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
    # AUTOINCREMENT: a token is never handed out twice, not even after its row was deleted.
    """
    CREATE TABLE upload_leases (
        token INTEGER PRIMARY KEY AUTOINCREMENT,
        upload_id TEXT NOT NULL UNIQUE,
        owner TEXT NOT NULL,
        expires_at REAL NOT NULL,
        release_requested INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX upload_leases_owner ON upload_leases (owner);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

UPLOAD_COLUMNS = (
    'id, status, length, defer_length, "offset", metadata, concat, '
    "created_at, updated_at, expires_at, completed_at, storage"
)
EVENT_COLUMNS = (
    "seq, id, upload_id, type, payload, created_at, since, attempts, next_attempt_at, "
    "last_error, dead"
)


def upload_from_row(row: Any) -> Upload:
    """The upload in a row of ``UPLOAD_COLUMNS``."""
    return Upload(
        id=row[0],
        status=Status(row[1]),
        length=row[2],
        defer_length=bool(row[3]),
        offset=row[4],
        metadata=row[5],
        concat=None if row[6] is None else ConcatKind(row[6]),
        created_at=row[7],
        updated_at=row[8],
        expires_at=row[9],
        completed_at=row[10],
        storage=json.loads(row[11]),
    )


def upload_values(upload: Upload) -> tuple[Any, ...]:
    """The values of ``UPLOAD_COLUMNS`` for ``upload``."""
    return (
        upload.id, upload.status, upload.length, int(upload.defer_length), upload.offset,
        upload.metadata, upload.concat, upload.created_at, upload.updated_at,
        upload.expires_at, upload.completed_at, json.dumps(upload.storage),
    )


def event_from_row(row: Any) -> HookEvent:
    """The event in a row of ``EVENT_COLUMNS``."""
    return HookEvent(
        seq=row[0], id=row[1], upload_id=row[2], type=row[3], payload=row[4],
        created_at=row[5], since=row[6], attempts=row[7], next_attempt_at=row[8],
        last_error=row[9], dead=bool(row[10]),
    )
