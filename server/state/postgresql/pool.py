"""The connections under :class:`~.database.Database`: at most so many of asyncpg's, made
as they are needed, lent and taken back in no time.

asyncpg's own pool takes a connection back in a task of its own under ``asyncio.shield``,
resets it, and arms a timer for its inactivity, and every statement borrows one: its
turns of the event loop, tasks and timers cost a fifth of this process's time per
statement. Nothing here needs what they are for. No session state is kept, so there is
nothing to reset; a connection whose statement did not run to its end (cancelled, timed
out, broken) is closed rather than lent again; and an idle connection that the server
closed is noticed (asyncpg sees its end) and dropped when its turn comes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable

import asyncpg
from asyncpg import Connection


class Pool:
    """At most ``size`` connections that ``connect`` makes."""

    def __init__(self, connect: Callable[[], Awaitable[Connection]], size: int) -> None:
        self._connect = connect
        self._size = size
        self._idle: list[Connection] = []
        self._lent: set[Connection] = set()
        self._opening = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False
        self._all_back: asyncio.Event | None = None
        """Set once every lent connection is back, while the pool closes."""

    def lend_idle(self) -> Connection | None:
        """An idle connection, at once; None when there is none."""
        while self._idle:
            connection = self._idle.pop()
            if not connection.is_closed():
                self._lent.add(connection)
                return connection
        return None

    async def acquire(self) -> Connection:
        """An idle connection, else a new one while there are fewer than ``size``, else
        the next one given back; the caller bounds the wait."""
        while True:
            if self._closed:
                raise asyncpg.InterfaceError("the pool is closed")
            connection = self.lend_idle()
            if connection is not None:
                return connection
            if len(self._lent) + self._opening < self._size:
                return await self._open()
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken, but gone: the next waiter's turn
                else:
                    self._waiters.remove(waiter)
                raise

    async def _open(self) -> Connection:
        self._opening += 1
        try:
            connection = await self._connect()
        except BaseException:
            self._wake()  # room for another attempt
            raise
        finally:
            self._opening -= 1
        self._lent.add(connection)
        return connection

    def release(self, connection: Connection, clean: bool) -> None:
        """Take ``connection`` back: kept for the next borrower when ``clean`` (its
        statements ran to their end) and in no transaction, else closed."""
        self._lent.discard(connection)
        if clean and not self._closed and not connection.is_closed() and (
            not connection.is_in_transaction()
        ):
            self._idle.append(connection)
        else:
            connection.terminate()
        self._wake()
        if self._all_back is not None and not self._lent:
            self._all_back.set()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        """Close the idle connections, then the lent ones once they are back."""
        self._closed = True
        for waiter in self._waiters:
            waiter.set_exception(asyncpg.InterfaceError("the pool is closed"))
        self._waiters.clear()
        idle, self._idle = self._idle, []
        for connection in idle:
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await connection.close()
        if self._lent:
            self._all_back = asyncio.Event()
            await self._all_back.wait()

    def terminate(self) -> None:
        """Cut every connection at once."""
        self._closed = True
        for connection in (*self._idle, *self._lent):
            connection.terminate()
        self._idle.clear()
        self._lent.clear()
