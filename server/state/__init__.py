"""Upload state: the uploads, and the outbox of post-hook events, in a database.

``model`` holds what the state layer speaks in (:class:`Upload`, :class:`HookEvent`, the
statuses and errors); ``interface`` what the server may ask of a store, and what every
implementation promises; ``sqlite`` the implementation on SQLite.
"""

from .interface import Outbox, Store, Uploads
from .model import (
    ACTIVE,
    EXPIRED,
    REFUSED,
    TERMINATED,
    ConcatKind,
    DatabaseUnusable,
    HookEvent,
    SchemaTooNew,
    Status,
    Upload,
    UploadGone,
)
from .sqlite import MIGRATIONS, SCHEMA_VERSION, SQLiteStore

StateStore = SQLiteStore
"""The store the server opens: SQLite, the only implementation so far."""

__all__ = [
    "ACTIVE",
    "EXPIRED",
    "MIGRATIONS",
    "REFUSED",
    "SCHEMA_VERSION",
    "TERMINATED",
    "ConcatKind",
    "DatabaseUnusable",
    "HookEvent",
    "Outbox",
    "SQLiteStore",
    "SchemaTooNew",
    "StateStore",
    "Status",
    "Store",
    "Upload",
    "UploadGone",
    "Uploads",
]
