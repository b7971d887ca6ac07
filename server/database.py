"""Which state store the settings name: a PostgreSQL database by its URL, else an SQLite file.

``database`` is either: ``postgresql://USER@HOST:PORT/DB`` (or ``postgres://``) selects
PostgreSQL, which several aiotusd processes may share; anything else is the path of the
SQLite file (by default in ``data_dir``), which one process owns.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from urllib.parse import urlsplit

from .config import Settings
from .errors import ConfigError
from .host_locks import HostLocks
from .leases import LeaseKeeper
from .locks import SharedLocks
from .state import DatabaseUnusable, PostgresStore, SQLiteStore, Store
from .state.postgresql.database import split_options

SCHEMES = ("postgresql://", "postgres://")
LOCK_SUFFIX = ".lock"
"""The lock file of an SQLite database is its path with this added."""
HOST_LOCKS_SUFFIX = ".upload-locks"
"""The file of the upload locks that the workers on an SQLite database share."""


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


def shared_locks(settings: Settings, store: Store) -> SharedLocks | None:
    """The upload locks that the other processes on this database see: leases in
    PostgreSQL, which processes on any host share; byte-range locks on a file beside an
    SQLite database that several workers of this host share; None for one process alone
    on an SQLite file (it holds the file's flock), which keeps its locks to itself."""
    if isinstance(store, PostgresStore):
        return LeaseKeeper(store, settings.limits.lock_lease)
    if settings.server.workers > 1:
        if not hasattr(fcntl, "F_OFD_SETLK"):
            raise ConfigError(
                "bad value for 'workers': several workers on SQLite need Linux's open file "
                "description locks; run one worker, or use PostgreSQL"
            )
        path = settings.storage.database_path
        return HostLocks(store, path.with_name(path.name + HOST_LOCKS_SUFFIX))
    return None


def sqlite_path(settings: Settings) -> Path | None:
    """The SQLite file the settings name; None for PostgreSQL."""
    return None if postgres_url(settings) else settings.storage.database_path


def own_database(settings: Settings) -> int | None:
    """Make this process the owner of the SQLite database the settings name: an exclusive
    ``flock`` on the lock file beside it, held until the process ends; the descriptor, or
    None when there is nothing to own (PostgreSQL, which processes share by design).

    Two servers on one SQLite file overwrite each other's uploads: each keeps its upload
    locks and hook claims to itself. The operating system drops the lock with the last
    descriptor of it, however the process ended (a pid file would outlive ``kill -9``),
    and forked workers share it with their parent. ``aiotusd hooks`` does not take it:
    it runs beside the server, one statement at a time.

    Raises :class:`~server.state.DatabaseUnusable` naming the database when another
    process holds the lock. A lock file that cannot be made (the data directory is a
    file, or not writable) is left to the start-up that follows, which fails on that
    database or directory and tells why in its own words; the database's missing
    directory is made, so that two first starts on one new directory see each other.
    """
    path = sqlite_path(settings)
    if path is None:
        return None
    lock_path = path.with_name(path.name + LOCK_SUFFIX)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(descriptor)
        reason = (
            f"another aiotusd uses it (it holds {lock_path})" if isinstance(exc, BlockingIOError)
            else f"cannot lock {lock_path}: {exc.strerror or exc}"
        )
        raise DatabaseUnusable(f"cannot use the database {path}: {reason}") from None
    return descriptor


async def open_store(settings: Settings) -> Store:
    """The state store the settings name, opened (and migrated).

    Raises :class:`~server.state.DatabaseUnusable` naming the database when it cannot be
    used: unreachable, refusing the login, damaged, or of a newer schema; and
    :class:`~server.errors.ConfigError` for a URL that cannot name one."""
    url = postgres_url(settings)
    if url is None:
        # Its workers share the file; one process alone owns it (own_database).
        sole_writer = settings.server.workers <= 1
        return await SQLiteStore.open(settings.storage.database_path, sole_writer)
    name = without_secrets(url)
    try:
        split_options(url)
    except ValueError as exc:
        raise ConfigError(f"bad value {name!r} for 'database': {exc}") from None
    return await PostgresStore.open(
        url, name, settings.storage.database_pool_size, settings.storage.database_timeout
    )
