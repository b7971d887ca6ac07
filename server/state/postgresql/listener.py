"""Lease notices: one connection per process, outside the pool, that ``LISTEN``\\s.

A pooled connection is reset when it goes back (asyncpg runs ``UNLISTEN *``), so the
listener keeps a connection of its own for as long as the store is open. asyncpg notices
a connection that the server closed, but not one that died without a word (a host or a
network gone): the listener asks its connection a trivial query every
:data:`CHECK_SECONDS`, and connects again whenever it was lost. Notices sent while it was
away are lost for good (PostgreSQL replays none): the leases are polled as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from .database import OPEN_ERRORS, Connection

log = logging.getLogger("aiotusd")

CHANNEL = "aiotusd_leases"
"""Notices: ``asked TOKEN OWNER UPLOAD`` (the holder of that lease is asked to let go),
``freed TOKEN OWNER UPLOAD`` (a lease that was asked for was released)."""
CHECK_SECONDS = 5.0
RETRY_SECONDS = 1.0


class Listener:
    """Hands ``asked`` the notices to this store's holders, ``freed`` every release."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[Connection]],
        owner: str,
        asked: Callable[[str, int], None],
        freed: Callable[[str], None],
    ) -> None:
        self._connect = connect
        self._owner = owner
        self._asked = asked
        self._freed = freed
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        """Listen, and listen again after every loss, until stopped."""
        failing = False
        while True:
            try:
                connection = await self._connect()
            except OPEN_ERRORS as exc:
                failing = _report(failing, exc)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            try:
                await self._listen(connection)
                if failing:
                    log.info("lease notices are heard again")
                    failing = False
                await self._watch(connection)
                failing = _report(failing, "its connection was closed")
            except OPEN_ERRORS as exc:
                failing = _report(failing, exc)
            finally:
                connection.terminate()
            await asyncio.sleep(RETRY_SECONDS)

    async def _listen(self, connection: Connection) -> None:
        await connection.add_listener(CHANNEL, self._notice)

    async def _watch(self, connection: Connection) -> None:
        """Return once ``connection`` is lost; raises what the check raised."""
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _: lost.set())
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), CHECK_SECONDS)
            if not lost.is_set():
                await connection.execute("SELECT 1", timeout=CHECK_SECONDS)

    def _notice(self, connection: object, pid: int, channel: str, payload: str) -> None:
        try:
            kind, token, owner, upload_id = payload.split(" ", 3)
            number = int(token)
        except ValueError:
            return  # not one of ours
        if kind == "asked" and owner == self._owner:
            self._asked(upload_id, number)
        elif kind == "freed":
            self._freed(upload_id)


def _report(failing: bool, why: BaseException | str) -> bool:
    """Log the first failure of a run of them; True (failing from now on)."""
    if not failing:
        log.warning("lease notices are not heard until the database answers again "
                    "(leases are polled meanwhile): %s", " ".join(str(why).split()) or why)
    return True
