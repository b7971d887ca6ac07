"""Upload locks that the workers of one host share: byte-range locks on one file.

With ``--workers`` on SQLite every worker runs on this host, so the kernel can keep
their upload locks: an open file description lock (Linux's ``F_OFD_SETLK``) on one
byte of a lock file beside the database, the byte chosen by the upload's id. Such a
lock is the holder's until it unlocks it or its process ends, however it ends (``kill
-9`` included): no lease to renew, no row to write, and no holder that could lose its
lock while it lives, so no write needs fencing. Taking and giving back are a system
call each.

A request that wants an upload held by another worker asks its holder to let go the
same way: it takes a shared lock on the byte next to the upload's (its *ask*), and
tries the upload's byte again every :data:`POLL_SECONDS` until its ``lock_timeout``
runs out (then 423, as within a process). A worker that holds uploads looks for asks
on their bytes every :data:`ASKED_POLL_SECONDS`; a holder that is asked does what it
does within a process: stops reading, records what it got, lets go. A waiter that dies
drops its ask with its process, so an ask never outlives the request that made it.

What this gives up against leases in the database (:mod:`server.leases`, PostgreSQL's):
a worker that is paused (``SIGSTOP``) keeps its uploads until it runs again. Its
requests are paused too, and a paused worker serves nobody, so that is the operator's
to see: the supervisor restarts a worker that dies, not one that hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import struct
from collections.abc import Sequence
from pathlib import Path

from .errors import Locked
from .locks import Holder
from .state import HookEvent, Store, Upload

POLL_SECONDS = 0.1
"""How often a request waiting for another worker's holder tries the lock again."""
ASKED_POLL_SECONDS = 0.25
"""How often a worker that holds uploads looks for requests to let go of them."""

_FLOCK = struct.Struct("hhqqi4x")
"""Linux's ``struct flock``: type, whence, start, length, pid (0 for OFD locks)."""
_TAKEN = frozenset({errno.EAGAIN, errno.EACCES})
"""What a lock request that conflicts with another process's lock fails with."""


def byte_of(upload_id: str) -> int:
    """The even byte of the lock file that stands for the upload (its ask is the next).

    64 bits of a hash: two ids of live uploads share a byte once in about 10^18 pairs,
    and then only make each other's requests wait, as one upload's would."""
    digest = hashlib.blake2b(upload_id.encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 2) * 2


class HostLocks:
    """This worker's side of the upload locks the workers of one host share, for the
    holders of :class:`~server.locks.UploadLocks`."""

    def __init__(self, store: Store, path: Path) -> None:
        self._store = store
        self.path = path
        self._fd = -1
        self._holders: dict[str, Holder] = {}
        """The holders of this worker that hold their upload's lock, by upload."""
        self._busy = asyncio.Event()
        """Set while a holder holds a lock: only then is there anything to be asked for."""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Open the lock file: in each worker itself, after the fork, because a
        description that a fork shared would make two workers one lock owner."""
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._task = asyncio.create_task(self._answer_asks())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._fd >= 0:
            os.close(self._fd)  # drops whatever this worker still held
            self._fd = -1

    def hold(self, upload_id: str, holder: Holder, deadline: float) -> _Held:
        """The upload's lock for ``holder``, taken before ``deadline`` (loop time) or
        :class:`~server.errors.Locked`; given back when the ``async with`` block ends."""
        return _Held(self, upload_id, holder, deadline)

    async def create(self, upload: Upload, events: Sequence[HookEvent]) -> None:
        """Record a new upload, which the caller's :meth:`hold` takes next: taking a lock
        is a system call, nothing to spare. (Its id reaches a client only with the 104 or
        the response that follows; a request that took it first elsewhere is asked to let
        go, as any holder is.)"""
        await self._store.create(upload, events=events)

    async def is_held(self, upload_id: str) -> bool:
        """Whether another worker holds the upload."""
        return self._held_elsewhere(byte_of(upload_id))

    async def _enter(self, upload_id: str, byte: int, holder: Holder, deadline: float) -> None:
        await self._take(byte, holder, deadline)
        self._holders[upload_id] = holder
        self._busy.set()

    def _leave(self, upload_id: str, byte: int) -> None:
        del self._holders[upload_id]
        if not self._holders:
            self._busy.clear()
        if self._fd >= 0:  # else stopped meanwhile, which dropped every lock
            self._set(fcntl.F_UNLCK, byte)

    async def _take(self, byte: int, holder: Holder, deadline: float) -> None:
        if self._try(fcntl.F_WRLCK, byte):
            return
        loop = asyncio.get_running_loop()
        self._set(fcntl.F_RDLCK, byte + 1)  # the ask: nobody write-locks an ask's byte
        try:
            while True:
                remaining = deadline - loop.time()
                if holder.release_requested or remaining <= 0:
                    raise Locked("upload is in use by another request; try again later")
                await asyncio.sleep(min(POLL_SECONDS, remaining))
                if self._try(fcntl.F_WRLCK, byte):
                    return
        finally:
            self._set(fcntl.F_UNLCK, byte + 1)

    async def _answer_asks(self) -> None:
        """While this worker holds uploads: ask the holders that another worker waits
        for to let go."""
        while True:
            await self._busy.wait()
            await asyncio.sleep(ASKED_POLL_SECONDS)
            for upload_id, holder in list(self._holders.items()):
                if not holder.release_requested and self._held_elsewhere(byte_of(upload_id) + 1):
                    holder.request_release()

    def _try(self, kind: int, byte: int) -> bool:
        """Lock ``byte`` with ``kind`` unless another process's lock is in the way."""
        try:
            self._set(kind, byte)
        except OSError as exc:
            if exc.errno in _TAKEN:
                return False
            raise
        return True

    def _set(self, kind: int, byte: int) -> None:
        fcntl.fcntl(self._fd, fcntl.F_OFD_SETLK, _FLOCK.pack(kind, os.SEEK_SET, byte, 1, 0))

    def _held_elsewhere(self, byte: int) -> bool:
        """Whether another process (another description) locks ``byte`` at all."""
        query = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0)
        kind = _FLOCK.unpack(fcntl.fcntl(self._fd, fcntl.F_OFD_GETLK, query))[0]
        return kind != fcntl.F_UNLCK


class _Held:
    """An upload's lock held by one holder for an ``async with`` block. A class rather
    than an async generator (``contextlib.asynccontextmanager``): every PATCH and
    creation-with-upload takes one, and an async generator's context took eight calls more."""

    __slots__ = ("_byte", "_deadline", "_holder", "_locks", "_upload_id")

    def __init__(self, locks: HostLocks, upload_id: str, holder: Holder, deadline: float) -> None:
        self._locks = locks
        self._upload_id = upload_id
        self._byte = byte_of(upload_id)
        self._holder = holder
        self._deadline = deadline

    async def __aenter__(self) -> None:
        await self._locks._enter(self._upload_id, self._byte, self._holder, self._deadline)

    async def __aexit__(self, *exc_info: object) -> None:
        self._locks._leave(self._upload_id, self._byte)
