"""Which state store the settings name: a PostgreSQL database by its URL, else an SQLite file.

``database`` is either: ``postgresql://USER@HOST:PORT/DB`` (or ``postgres://``) selects
PostgreSQL, which several aiotusd processes may share; anything else is the path of the
SQLite file (by default in ``data_dir``), which one process owns.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from .config import Settings
from .errors import ConfigError
from .state import PostgresStore, SQLiteStore, Store
from .state.postgresql.database import split_options

SCHEMES = ("postgresql://", "postgres://")


def postgres_url(settings: Settings) -> str | None:
    """The URL of the PostgreSQL database the settings name; None for SQLite."""
    return settings.storage.database if settings.storage.database.startswith(SCHEMES) else None


def without_secrets(url: str) -> str:
    """``url`` as messages may show it: no password, and no query (which may hold one)."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return f"{parts.scheme}://{user}{at}{hosts}{parts.path}"


def database_name(settings: Settings) -> str:
    """The database in messages: its URL without secrets, or the SQLite file's path."""
    url = postgres_url(settings)
    return str(settings.storage.database_path) if url is None else without_secrets(url)


def sqlite_path(settings: Settings) -> Path | None:
    """The SQLite file the settings name; None for PostgreSQL."""
    return None if postgres_url(settings) else settings.storage.database_path


async def open_store(settings: Settings) -> Store:
    """The state store the settings name, opened (and migrated).

    Raises :class:`~server.state.DatabaseUnusable` naming the database when it cannot be
    used: unreachable, refusing the login, damaged, or of a newer schema; and
    :class:`~server.errors.ConfigError` for a URL that cannot name one."""
    url = postgres_url(settings)
    if url is None:
        return await SQLiteStore.open(settings.storage.database_path)
    name = without_secrets(url)
    try:
        split_options(url)
    except ValueError as exc:
        raise ConfigError(f"bad value {name!r} for 'database': {exc}") from None
    return await PostgresStore.open(
        url, name, settings.storage.database_pool_size, settings.storage.database_timeout
    )
