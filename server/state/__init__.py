"""Upload state: the uploads, their leases, and the outbox of post-hook events, in a database.

``model`` holds what the state layer speaks in (:class:`Upload`, :class:`HookEvent`,
:class:`Lease`, the statuses and errors); ``interface`` what the server may ask of a store,
and what every implementation promises; ``sqlite`` the implementation on SQLite,
``postgresql`` the one on PostgreSQL (which several processes may share).
"""

from .interface import Leases, LeasingStore, Outbox, Store, Uploads
from .model import (
    ACTIVE,
    EXPIRED,
    REFUSED,
    TERMINATED,
    ConcatKind,
    DatabaseUnavailable,
    DatabaseUnusable,
    HookEvent,
    Lease,
    LeaseLost,
    SchemaTooNew,
    Status,
    Upload,
    UploadGone,
)
from .postgresql import PostgresStore
from .sqlite import MIGRATIONS, SCHEMA_VERSION, SQLiteStore

StateStore = SQLiteStore
"""The store in a file of its own: SQLite (``server.database`` chooses by the settings)."""

__all__ = [
    "ACTIVE",
    "EXPIRED",
    "MIGRATIONS",
    "REFUSED",
    "SCHEMA_VERSION",
    "TERMINATED",
    "ConcatKind",
    "DatabaseUnavailable",
    "DatabaseUnusable",
    "HookEvent",
    "Lease",
    "LeaseLost",
    "Leases",
    "LeasingStore",
    "Outbox",
    "PostgresStore",
    "SQLiteStore",
    "SchemaTooNew",
    "StateStore",
    "Status",
    "Store",
    "Upload",
    "UploadGone",
    "Uploads",
]
