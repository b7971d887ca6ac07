"""The state interface on SQLite, through aiosqlite.

``database`` owns the connection and its thread, the reader, migrations and transactions;
``writes`` how the writes of many requests share that thread; ``schema`` the tables and
how their rows load; ``uploads`` and ``outbox`` the SQL of each; ``store`` puts them
together as :class:`SQLiteStore`.
"""

from .schema import MIGRATIONS, SCHEMA_VERSION
from .store import SQLiteStore

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SQLiteStore"]
