"""The PostgreSQL schema, as the migrations that make it, and how its rows load.

The tables are SQLite's, in PostgreSQL's types (a lease's token comes from a sequence
rather than SQLite's ``AUTOINCREMENT``); times stay seconds since the epoch as
``double precision``, as the model has them. Each migration runs in one transaction with
the schema's version, under a transaction-level advisory lock: processes that start on
one database at once migrate it one after the other (see :mod:`.database`).
"""

from __future__ import annotations

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
    "ALTER TABLE uploads ADD COLUMN repr_digest text;",
)
SCHEMA_VERSION = len(MIGRATIONS)
