"""The SQLite schema, as the migrations that make it, and how its rows load."""

from __future__ import annotations

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
    "ALTER TABLE uploads ADD COLUMN repr_digest TEXT;",
    # The workers on one file lock uploads in the kernel now (server/host_locks.py).
    "DROP TABLE upload_leases;",
)
SCHEMA_VERSION = len(MIGRATIONS)
