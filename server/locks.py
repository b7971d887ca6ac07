"""One writer per upload, and a way for a newer request to take over from a stale one.

A client whose connection dropped reconnects and sends HEAD or PATCH while
the server may still be waiting for the rest of the old request's body. The
new request asks the holder to let go (:meth:`Holder.request_release`); a
receiving holder then stops reading, records the bytes it got and releases.
Only if the holder does not let go within ``timeout`` is the new request
answered 423.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable

from .errors import Locked


class Holder:
    """The request that currently holds an upload's lock."""

    def __init__(self) -> None:
        self.released = asyncio.Event()
        self.release_requested = False
        self._on_release_request: Callable[[], None] | None = None

    def on_release_request(self, callback: Callable[[], None] | None) -> None:
        """Set what stops this holder's work when another request wants the upload."""
        self._on_release_request = callback
        if callback is not None and self.release_requested:
            callback()

    def request_release(self) -> None:
        self.release_requested = True
        if self._on_release_request is not None:
            self._on_release_request()


class UploadLocks:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._holders: dict[str, Holder] = {}
        self._closing = False

    @contextlib.asynccontextmanager
    async def hold(self, upload_id: str) -> AsyncIterator[Holder]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while (current := self._holders.get(upload_id)) is not None:
            current.request_release()
            remaining = deadline - loop.time()
            try:
                async with asyncio.timeout(max(remaining, 0)):
                    await current.released.wait()
            except TimeoutError:
                raise Locked("upload is in use by another request; try again later") from None
        holder = Holder()
        if self._closing:
            # Shutting down: a request that got the lock only now (it waited for a
            # holder that was let go) must not start a body that outlives the server.
            holder.request_release()
        self._holders[upload_id] = holder
        try:
            yield holder
        finally:
            del self._holders[upload_id]
            holder.released.set()

    def is_held(self, upload_id: str) -> bool:
        return upload_id in self._holders

    def release_all(self) -> None:
        """Ask every holder, present and future, to let go (server shutdown)."""
        self._closing = True
        for holder in list(self._holders.values()):
            holder.request_release()


class ConcatLocks:
    """Locks on uploads for concatenation: a final upload's assembly holds the final and
    its partial uploads, a partial's removal and a final's creation hold the partials.

    So no final is assembled twice, no partial's bytes are deleted while they are
    copied, and no final is created with a partial that is being removed, while the
    concatenations of unrelated uploads go on side by side. Unlike :class:`UploadLocks`
    these are held as long as the work takes (a copy has the storage's own deadlines)
    and nobody asks a holder to let go. Several ids are taken in sorted order, so that
    two holders of overlapping sets cannot wait on each other.
    """

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def hold(self, upload_ids: Iterable[str]) -> AsyncIterator[None]:
        ordered = sorted(set(upload_ids))
        for upload_id in ordered:
            self._users[upload_id] = self._users.get(upload_id, 0) + 1
            self._locks.setdefault(upload_id, asyncio.Lock())
        taken: list[asyncio.Lock] = []
        try:
            for upload_id in ordered:
                await self._locks[upload_id].acquire()
                taken.append(self._locks[upload_id])
            yield
        finally:
            for lock in reversed(taken):
                lock.release()
            for upload_id in ordered:
                self._users[upload_id] -= 1
                if not self._users[upload_id]:
                    del self._users[upload_id], self._locks[upload_id]

    def any_held(self, upload_ids: Iterable[str]) -> bool:
        """Whether some request holds or waits for one of ``upload_ids``."""
        return any(upload_id in self._users for upload_id in upload_ids)
