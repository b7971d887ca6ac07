"""The PostgreSQL database under the state store: a pool of asyncpg connections, the
schema's migrations, and writes that run to their end whatever befalls their caller.

Nothing here assumes that this process is the only one on the database: every write is
one statement or one transaction, the migrations take a lock in the database, and no
state lives in a pooled connection's session (no session advisory locks, no ``LISTEN``,
no ``SET``), so that a pooler in transaction mode (PgBouncer) may stand in between. The
one connection with a session of its own, for ``LISTEN``, is outside the pool
(:meth:`Database.connect_alone`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from ..model import DatabaseUnavailable, DatabaseUnusable, SchemaTooNew
from .pool import Pool
from .schema import MIGRATIONS, SCHEMA_VERSION

log = logging.getLogger("aiotusd")
T = TypeVar("T")

Connection: TypeAlias = asyncpg.Connection
"""One connection of the pool, lent to a query or a write."""

MIGRATION_LOCK = 0x6169_6F74_7573_64
"""The key of the transaction-level advisory lock that migrations take: "aiotusd"."""
CACHE_OPTION = "statement_cache_size"
"""The URL's own query option that asyncpg would otherwise send to the server as a setting:
``0`` turns off asyncpg's prepared statements, which a pooler in transaction mode older
than PgBouncer 1.21 cannot keep."""

LISTENER_NAME = "aiotusd lease notices"
"""The ``application_name`` of the connection outside the pool, in ``pg_stat_activity``."""
OPEN_ERRORS = (OSError, TimeoutError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError)
"""What connecting, logging in or migrating raises when the database cannot be used."""
LOST_ERRORS = (
    OSError,  # refused, reset, unreachable: the server is down or the network between
    TimeoutError,  # no connection of the pool, no connection made, no answer in time
    asyncpg.PostgresConnectionError,  # the connection broke during a statement
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up, cancelled
    asyncpg.exceptions.TooManyConnectionsError,
)
"""What a statement of a running server raises when the database is not there for it: the
request may succeed once it is back (:class:`DatabaseUnavailable`)."""
UNCLEAN = (asyncpg.InterfaceError, asyncpg.InternalClientError)
"""What asyncpg raises when a connection is not in a state to run a statement."""


def rows_changed(status: str) -> int:
    """The count at the end of a command tag such as ``UPDATE 3`` or ``INSERT 0 1``."""
    return int(status.rsplit(" ", 1)[-1])


def split_options(url: str) -> tuple[str, dict[str, Any]]:
    """The URL for asyncpg without the options that are aiotusd's, and those options as
    keywords of :func:`asyncpg.connect`. Raises ValueError for a port that is no
    number, which asyncpg would report only as a failed ``int()``, or beyond 65535, which
    ends in an OverflowError from the socket."""
    parts = urlsplit(url)
    for host in parts.netloc.rpartition("@")[2].split(","):
        port = host.rpartition("]")[2].partition(":")[2]
        if port and not port.isdigit():
            raise ValueError(f"the port {port!r} is not a number")
        if port and int(port) > 65535:
            raise ValueError(f"the port {port} is not one of 0 to 65535")
    query = parse_qsl(parts.query, keep_blank_values=True)
    options: dict[str, Any] = {}
    for key, value in query:
        if key == CACHE_OPTION:
            if not value.isdigit():
                raise ValueError(f"{CACHE_OPTION} must be a number of statements, not {value!r}")
            options[CACHE_OPTION] = int(value)
    rest = urlencode([(key, value) for key, value in query if key != CACHE_OPTION])
    return urlunsplit(parts._replace(query=rest)), options


def _reason(exc: BaseException, timeout: float) -> str:
    """Why the database could not be used, in one line: the OS's words for a failed
    connection rather than asyncpg's repetition of the address."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, OSError) and exc.errno:
        # A host name that does not resolve has a negative errno (socket.gaierror), which
        # os.strerror() calls "Unknown error -2"; its strerror says what it is.
        reason = os.strerror(exc.errno) if exc.errno > 0 else exc.strerror
        return f"cannot connect: {reason}"
    return " ".join(str(exc).split()) or type(exc).__name__


def _unusable(name: str, exc: BaseException, timeout: float) -> DatabaseUnusable:
    """The error that says, in one line, which database cannot be used and why."""
    return DatabaseUnusable(f"cannot use the database {name}: {_reason(exc, timeout)}")


async def _migrate(connection: Connection, name: str) -> None:
    """Bring the schema to :data:`SCHEMA_VERSION`, in one transaction, alone.

    The advisory lock is the transaction's: it holds through a pooler in transaction mode,
    and two processes that start on a new database at once never both create its tables.
    """
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)"
        )
        version = await connection.fetchval("SELECT max(version) FROM schema_version") or 0
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"cannot use the database {name}: its schema version {version} is newer than "
                f"this aiotusd understands ({SCHEMA_VERSION})"
            )
        if version == SCHEMA_VERSION:
            return
        for number in range(version, SCHEMA_VERSION):
            await connection.execute(MIGRATIONS[number])
        await connection.execute("DELETE FROM schema_version")
        await connection.execute("INSERT INTO schema_version VALUES ($1)", SCHEMA_VERSION)


class Lent:
    """A connection lent by the pool for one block (:meth:`Database.connection`).

    A class rather than ``contextlib.asynccontextmanager``, and a deadline only when
    there is a wait: every statement borrows a connection, a generator context costs some
    four Python calls more, and a timer costs one to arm and one to cancel."""

    __slots__ = ("_connection", "_database")

    def __init__(self, database: Database) -> None:
        self._database = database
        self._connection: Connection | None = None

    async def __aenter__(self) -> Connection:
        database = self._database
        connection = database.pool.lend_idle()
        if connection is None:
            try:
                async with asyncio.timeout(database.timeout):
                    connection = await database.pool.acquire()
            except LOST_ERRORS as exc:
                raise database.unavailable(exc) from exc
        self._connection = connection
        return connection

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: object
    ) -> None:
        database, connection = self._database, self._connection
        assert connection is not None
        self._connection = None
        # A statement that did not run to its end leaves its connection in no state to
        # be lent again; one that the server refused (a PostgresError) does.
        database.pool.release(connection, clean=exc is None or (
            isinstance(exc, Exception) and not isinstance(exc, (*LOST_ERRORS, *UNCLEAN))
        ))
        if isinstance(exc, LOST_ERRORS):
            raise database.unavailable(exc) from exc


class Database:
    """The pool, and the one ``timeout`` for taking a connection from it; ``name`` says
    which database in messages."""

    def __init__(
        self, pool: Pool, timeout: float, name: str, dsn: str, options: dict[str, Any]
    ) -> None:
        self.pool = pool
        self.timeout = timeout
        self._name = name
        self._dsn = dsn
        self._options = options
        """Where and how the pool connects, for :meth:`connect_alone`."""

    @classmethod
    async def open(cls, url: str, name: str, pool_size: int, timeout: float) -> Database:
        """The database at ``url``, migrated to :data:`SCHEMA_VERSION`, with a pool of at
        most ``pool_size`` connections; ``timeout`` bounds connecting, waiting for a
        connection of the pool, and each statement.

        Raises :class:`DatabaseUnusable` naming ``name`` (the URL without its password)
        when it cannot be reached, refuses the login, or is of a newer schema. Whatever
        fails, no connection is left open.
        """
        try:
            dsn, options = split_options(url)
        except ValueError as exc:
            raise _unusable(name, exc, timeout) from None

        def connect() -> Awaitable[Connection]:
            return asyncpg.connect(dsn, timeout=timeout, command_timeout=timeout, **options)

        # No floor of connections: requests connect as they need, and a connection made
        # stays for the next one.
        database = cls(Pool(connect, pool_size), timeout, name, dsn, options)
        try:
            async with asyncio.timeout(timeout):
                connection = await database.pool.acquire()
            migrated = False
            try:
                await _migrate(connection, name)
                migrated = True
            finally:
                database.pool.release(connection, clean=migrated)
        except OPEN_ERRORS as exc:
            await database.close()
            raise _unusable(name, exc, timeout) from None
        except BaseException:
            await database.close()
            raise
        return database

    async def close(self) -> None:
        """Close the pool once its connections are back; those that are not back within
        ``timeout`` are cut."""
        try:
            await asyncio.wait_for(self.pool.close(), self.timeout)
        except TimeoutError:
            self.pool.terminate()

    def connection(self) -> Lent:
        """A connection of the pool for an ``async with`` block; waits at most ``timeout``
        for one.

        Raises :class:`DatabaseUnavailable` when the database is not there for the block:
        no connection could be had, or the one lent broke or did not answer."""
        return Lent(self)

    def unavailable(self, exc: BaseException) -> DatabaseUnavailable:
        return DatabaseUnavailable(
            f"the database {self._name} is unavailable: {_reason(exc, self.timeout)}"
        )

    async def connect_alone(self) -> Connection:
        """A connection outside the pool, as the pool's connect, for a session of its own
        (``LISTEN``); the caller closes it."""
        connection: Connection = await asyncpg.connect(
            self._dsn, timeout=self.timeout, command_timeout=self.timeout,
            server_settings={"application_name": LISTENER_NAME}, **self._options,
        )
        return connection

    async def rows(self, sql: str, *parameters: Any) -> list[asyncpg.Record]:
        """The rows of a query."""
        async with self.connection() as connection:
            return await connection.fetch(sql, *parameters)

    async def write(
        self,
        work: Callable[[Connection], Awaitable[T]],
        transaction: bool = False,
        committed: Callable[[], None] | None = None,
    ) -> T:
        """Run ``work`` on a connection (in a transaction if asked), then ``committed``,
        and return what ``work`` returned. A caller cancelled meanwhile waits for it to
        have run before the cancellation goes on (the interface's promise, see
        :mod:`server.state.interface`): it is a task of its own, which the cancellation
        does not reach, and ``committed`` is called even for a caller that is gone.

        The caller waits on a future of its own, which the task settles as its last step,
        rather than on the task under ``asyncio.shield``: a turn of the event loop less."""
        outcome: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(self._run(work, transaction, committed, outcome))
        try:
            return await outcome
        except asyncio.CancelledError:
            if not outcome.cancelled():
                raise
            while not task.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([task])
            failed = None if task.cancelled() else task.result()
            if failed is not None:
                log.warning("a cancelled request's write failed: %s", failed)
            raise

    async def _run(
        self,
        work: Callable[[Connection], Awaitable[T]],
        transaction: bool,
        committed: Callable[[], None] | None,
        outcome: asyncio.Future[T],
    ) -> Exception | None:
        """Run the write and settle ``outcome`` with what it returned or raised, unless
        its caller is gone (``outcome`` cancelled); returns what it raised, for the caller
        that is gone."""
        try:
            async with self.connection() as connection:
                if transaction:
                    async with connection.transaction():
                        result = await work(connection)
                else:
                    result = await work(connection)
        except Exception as exc:  # noqa: BLE001 -- the caller's to raise, whatever it is
            if not outcome.done():
                outcome.set_exception(exc)
            return exc
        except BaseException:
            outcome.cancel()
            raise
        if committed is not None:
            committed()
        if not outcome.done():
            outcome.set_result(result)
        return None
