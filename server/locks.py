"""One writer per upload, and a way for a newer request to take over from a stale one.

A client whose connection dropped reconnects and sends HEAD or PATCH while
the server may still be waiting for the rest of the old request's body. The
new request asks the holder to let go (:meth:`Holder.request_release`); a
receiving holder then stops reading, records the bytes it got and releases.
Only if the holder does not let go within ``timeout`` is the new request
answered 423.

Within a process the holders are told directly. When several processes share the
uploads, a lock is also one that the others see (:class:`SharedLocks`): a lease in
PostgreSQL (:mod:`server.leases`), whose holder is asked through the database and stops
writing once its lease is lost; or, for the workers of one host on SQLite, a lock the
kernel keeps (:mod:`server.host_locks`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from .errors import Locked, UploadStopped
from .state import HookEvent, LeaseLost, Store, Upload


class Holder:
    """The request that currently holds an upload's lock."""

    def __init__(self) -> None:
        self.released = asyncio.Event()
        self.release_requested = False
        self._on_release_request: Callable[[], None] | None = None
        self.token: int | None = None
        """The token of its lease, which its writes name, when processes share the locks;
        None when the lock is this process's alone."""
        self.deadline = math.inf
        """When its lease lapses as this process counts (``time.monotonic()``), from the
        moment its take or last renewal was sent: never later than the database counts.
        Not one byte may be written from then on: another process may have the upload."""
        self.stopped: UploadStopped | None = None
        """Why a hook stopped its body (tusd's ``StopUpload``), once one did."""
        self._taken_upload: Upload | None = None
        self.let_go = False
        """Its lease ended with its last write (:meth:`wrote_last`): nothing to release."""

    def on_release_request(self, callback: Callable[[], None] | None) -> None:
        """Set what stops this holder's work when another request wants the upload, or
        when its lease is lost."""
        self._on_release_request = callback
        if callback is not None and (self.release_requested or self.lost):
            callback()

    def stop(self, cause: UploadStopped) -> None:
        """A hook stopped this holder's body: it takes no more bytes, and its client gets
        ``cause``. Unlike a take-over, which closes the connection to stop a body at once
        (its client is gone, or has moved on), the body is stopped at its next chunk: the
        connection stays, for the client to get the hook's answer."""
        self.stopped = cause

    def request_release(self) -> None:
        self.release_requested = True
        if self._on_release_request is not None:
            self._on_release_request()

    def leased(self, token: int, deadline: float, upload: Upload | None = None) -> None:
        """It holds the lease of ``token`` until ``deadline`` (see :attr:`deadline`);
        ``upload``: the upload as the take read it, if it did (see :meth:`taken_upload`)."""
        self.token = token
        self.deadline = deadline
        self._taken_upload = upload

    def wrote_last(self) -> None:
        """Its lease ended with its last write (see :func:`server.receive.save_complete`):
        from now on it writes nothing, not one byte (:meth:`check`), and the lease is not
        released again."""
        self.let_go = True
        self.deadline = -math.inf

    def taken_upload(self) -> Upload | None:
        """The upload as the take of its lease read it, the first time only: its first
        lookup need not ask the database again, a later one (after its own writes) must."""
        upload, self._taken_upload = self._taken_upload, None
        return upload

    @property
    def lost(self) -> bool:
        return self.deadline == -math.inf

    def lose(self) -> None:
        """Its lease is gone, or may be (not renewed in time): stop its work at once."""
        self.deadline = -math.inf
        if self._on_release_request is not None:
            self._on_release_request()

    def check(self) -> None:
        """Raise :class:`~server.state.LeaseLost` once its lease may have lapsed: before
        every byte written and every write that cannot be fenced in the database."""
        if time.monotonic() >= self.deadline:
            raise LeaseLost("another request took this upload over")


class SharedLocks(Protocol):
    """The part of the upload locks that the other processes on the uploads see; chosen
    once at start (:func:`server.database.shared_locks`)."""

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    def hold(
        self, upload_id: str, holder: Holder, deadline: float
    ) -> AbstractAsyncContextManager[None]:
        """The upload's lock for ``holder`` across processes, taken before ``deadline``
        (loop time), asking its holder elsewhere to let go, or
        :class:`~server.errors.Locked`; given back when the block ends."""

    async def create(self, upload: Upload, events: Sequence[HookEvent]) -> None:
        """Record a new upload that the caller's :meth:`hold` holds next."""

    async def is_held(self, upload_id: str) -> bool:
        """Whether a request of another process holds the upload."""


class UploadLocks:
    def __init__(self, timeout: float, shared: SharedLocks | None = None) -> None:
        """``shared``: the upload's lock is taken there too, for processes that share
        the uploads; None when this process is the database's only one."""
        self.timeout = timeout
        self._shared = shared
        self._holders: dict[str, Holder] = {}
        self._closing = False

    def start(self) -> None:
        if self._shared is not None:
            self._shared.start()

    async def stop(self) -> None:
        if self._shared is not None:
            await self._shared.stop()

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
            if self._shared is None:
                yield holder
            else:
                async with self._shared.hold(upload_id, holder, deadline):
                    yield holder
        finally:
            del self._holders[upload_id]
            holder.released.set()

    async def create(self, store: Store, upload: Upload, events: Sequence[HookEvent]) -> None:
        """Record a new upload in ``store`` that the caller holds next (creation-with-upload):
        shared locks may record it their way (born leased)."""
        if self._shared is None:
            await store.create(upload, events=events)
        else:
            await self._shared.create(upload, events)

    @contextlib.asynccontextmanager
    async def alone(self, name: str) -> AsyncIterator[bool]:
        """Hold ``name`` alone among the processes that share the database, for work that
        is not taken over (a final's assembly): nobody is asked to let go, and a caller
        that does not get it within ``timeout`` is told so (False) rather than refused.
        Within this process the caller's own locks keep it alone; without shared locks,
        there is nothing else to hold (True)."""
        if self._shared is None:
            yield True
            return
        deadline = asyncio.get_running_loop().time() + self.timeout
        async with contextlib.AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(self._shared.hold(name, Holder(), deadline))
                held = True
            except Locked:
                held = False
            yield held

    async def is_held(self, upload_id: str) -> bool:
        """Whether a request holds the upload, in this process or, with shared locks,
        another."""
        if upload_id in self._holders:
            return True
        return self._shared is not None and await self._shared.is_held(upload_id)

    def release_all(self) -> None:
        """Ask every holder, present and future, to let go (server shutdown)."""
        self._closing = True
        for holder in list(self._holders.values()):
            holder.request_release()


@dataclass(frozen=True)
class _Claim:
    """Upload ids one holder of :class:`ConcatLocks` takes, alone or with other readers."""

    exclusive: frozenset[str]
    shared: frozenset[str]

    def conflicts(self, other: _Claim) -> bool:
        return bool(
            self.exclusive & (other.exclusive | other.shared) or self.shared & other.exclusive
        )


class ConcatLocks:
    """Locks on uploads for concatenation, exclusive or shared.

    A final upload's assembly holds the final alone and its partial uploads shared; a
    final's creation holds the partials it names shared; removing a partial holds it
    (and the finals that go with it) alone, and so does removing a final. So no final
    is assembled twice or removed while assembled, no partial's bytes are deleted while
    they are copied, and no final is created with a partial that is being removed,
    while unrelated concatenations, and those that only read the same partial, go on
    side by side.

    Unlike :class:`UploadLocks` these are held as long as the work takes (a copy has
    the storage's own deadlines), and nobody asks a holder to let go. A claim is taken
    whole or not at all, so that no waiter holds a part of one; a waiter is let in in
    order of arrival among those it conflicts with, so that readers cannot starve a
    removal.
    """

    def __init__(self) -> None:
        self._held: list[_Claim] = []
        self._waiting: list[tuple[_Claim, asyncio.Future[None]]] = []

    @contextlib.asynccontextmanager
    async def hold(
        self, exclusive: Iterable[str] = (), shared: Iterable[str] = ()
    ) -> AsyncIterator[None]:
        claim = _Claim(frozenset(exclusive), frozenset(shared) - frozenset(exclusive))
        if self.is_free(claim.exclusive, claim.shared):
            self._held.append(claim)
        else:
            await self._wait(claim)
        try:
            yield
        finally:
            self._held.remove(claim)
            self._let_in()

    def is_free(self, exclusive: Iterable[str] = (), shared: Iterable[str] = ()) -> bool:
        """Whether a claim on these ids would be taken at once."""
        claim = _Claim(frozenset(exclusive), frozenset(shared))
        return not any(claim.conflicts(other) for other in self._held) and not any(
            claim.conflicts(other) for other, _ in self._waiting
        )

    async def _wait(self, claim: _Claim) -> None:
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append((claim, turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # let in, but cancelled before it went on
                self._held.remove(claim)
                self._let_in()
            else:
                if (claim, turn) in self._waiting:
                    self._waiting.remove((claim, turn))
                self._let_in()  # a later waiter may no longer wait behind this one
            raise

    def _let_in(self) -> None:
        still_waiting: list[tuple[_Claim, asyncio.Future[None]]] = []
        for claim, turn in self._waiting:
            if turn.done():
                continue
            blocked = any(claim.conflicts(other) for other in self._held) or any(
                claim.conflicts(other) for other, _ in still_waiting
            )
            if blocked:
                still_waiting.append((claim, turn))
            else:
                self._held.append(claim)
                turn.set_result(None)
        self._waiting = still_waiting
