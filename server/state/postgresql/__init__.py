"""The state interface on PostgreSQL, through asyncpg: one database for many processes.

``database`` owns the pool, migrations and writes that run to their end; ``schema`` the
tables and how their rows load; ``uploads`` and ``outbox`` the SQL of each (the outbox's
claims let several processes deliver from it); ``store`` puts them together as
:class:`PostgresStore`.
"""

from .schema import MIGRATIONS, SCHEMA_VERSION
from .store import PostgresStore

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "PostgresStore"]
