"""Uploads and hook events as rows: the columns both stores select, and the conversions.

The tables of SQLite and PostgreSQL have the same columns in the same order; what each
driver hands back differs only in ways these conversions absorb (SQLite's integers for
booleans, asyncpg's ``memoryview``-like ``bytea``).
"""

from __future__ import annotations

import json
from typing import Any

from .model import ConcatKind, HookEvent, Status, Upload

UPLOAD_COLUMNS = (
    'id, status, length, defer_length, "offset", metadata, concat, '
    "created_at, updated_at, expires_at, completed_at, storage, repr_digest"
)
UPLOAD_VALUES = len(UPLOAD_COLUMNS.split(","))
"""How many values :func:`upload_values` gives: the placeholders of an insert."""
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
        repr_digest=row[12],
    )


def upload_values(upload: Upload) -> tuple[Any, ...]:
    """The values of ``UPLOAD_COLUMNS`` for ``upload``: plain ``str`` for the enums (asyncpg's
    text encoder takes nothing else), a ``bool`` (SQLite stores it as 1 or 0)."""
    return (
        upload.id, str(upload.status), upload.length, upload.defer_length, upload.offset,
        upload.metadata, None if upload.concat is None else str(upload.concat),
        upload.created_at, upload.updated_at, upload.expires_at, upload.completed_at,
        json.dumps(upload.storage), upload.repr_digest,
    )


def event_from_row(row: Any) -> HookEvent:
    """The event in a row of ``EVENT_COLUMNS``."""
    return HookEvent(
        seq=row[0], id=row[1], upload_id=row[2], type=row[3], payload=bytes(row[4]),
        created_at=row[5], since=row[6], attempts=row[7], next_attempt_at=row[8],
        last_error=row[9], dead=bool(row[10]),
    )
