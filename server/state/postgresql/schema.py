"""The PostgreSQL schema, as the migrations that make it, and how its rows load.

The tables are SQLite's, in PostgreSQL's types (a lease's token comes from a sequence
rather than SQLite's ``AUTOINCREMENT``); times stay seconds since the epoch as
``double precision``, as the model has them. Each migration runs in one transaction with
the schema's version, under a transaction-level advisory lock: processes that start on
one database at once migrate it one after the other (see :mod:`.database`).
"""

from __future__ import annotations

import json
from typing import Any

from ..model import ConcatKind, HookEvent, Status, Upload

# Each entry moves the schema from version N to N+1; never edit a released one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE uploads (
        id text PRIMARY KEY,
        status text NOT NULL DEFAULT 'active',
        length bigint,
        defer_length boolean NOT NULL DEFAULT false,
        "offset" bigint NOT NULL DEFAULT 0,
        metadata text NOT NULL DEFAULT '',
        concat text,
        created_at double precision NOT NULL,
        updated_at double precision NOT NULL,
        expires_at double precision,
        completed_at double precision,
        storage text NOT NULL DEFAULT '{}'
    );
    CREATE INDEX uploads_expires ON uploads (expires_at) WHERE expires_at IS NOT NULL;
    CREATE INDEX uploads_gone ON uploads (updated_at) WHERE status <> 'active';
    CREATE TABLE concat_parts (
        final_id text NOT NULL,
        position integer NOT NULL,
        partial_id text NOT NULL,
        PRIMARY KEY (final_id, position)
    );
    CREATE INDEX concat_parts_partial ON concat_parts (partial_id);
    CREATE TABLE hook_outbox (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id text NOT NULL UNIQUE,
        upload_id text NOT NULL,
        type text NOT NULL,
        payload bytea NOT NULL,
        created_at double precision NOT NULL,
        since double precision NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        next_attempt_at double precision NOT NULL,
        last_error text NOT NULL DEFAULT '',
        dead boolean NOT NULL DEFAULT false,
        claimed_by text,
        claimed_until double precision
    );
    CREATE INDEX hook_outbox_pending ON hook_outbox (upload_id, seq) WHERE NOT dead;
    CREATE INDEX hook_outbox_claims ON hook_outbox (claimed_by) WHERE claimed_by IS NOT NULL;
    """,
    """
    CREATE SEQUENCE upload_lease_tokens;
    CREATE TABLE upload_leases (
        upload_id text PRIMARY KEY,
        owner text NOT NULL,
        token bigint NOT NULL DEFAULT nextval('upload_lease_tokens'),
        expires_at double precision NOT NULL,
        release_requested boolean NOT NULL DEFAULT false
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
        defer_length=row[3],
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
    """The values of ``UPLOAD_COLUMNS`` for ``upload``: plain ``str`` for the enums, which
    asyncpg's text encoder takes as they are."""
    return (
        upload.id, str(upload.status), upload.length, upload.defer_length, upload.offset,
        upload.metadata, None if upload.concat is None else str(upload.concat),
        upload.created_at, upload.updated_at, upload.expires_at, upload.completed_at,
        json.dumps(upload.storage),
    )


def event_from_row(row: Any) -> HookEvent:
    """The event in a row of ``EVENT_COLUMNS``."""
    return HookEvent(
        seq=row[0], id=row[1], upload_id=row[2], type=row[3], payload=bytes(row[4]),
        created_at=row[5], since=row[6], attempts=row[7], next_attempt_at=row[8],
        last_error=row[9], dead=row[10],
    )
