"""Upload locks across processes and hosts: the leases this process takes, keeps and gives back.

When several processes share a PostgreSQL database, holding an upload's lock
(:class:`~server.locks.UploadLocks`) also means holding its lease in the database
(:class:`~server.state.Leases`), which is taken only when no live lease holds the upload:

* **Taking.** A request takes the lease, or asks its holder to let go
  (:meth:`~server.state.Leases.request_release`) and tries again, every
  :data:`POLL_SECONDS` or as soon as the database tells that it was released, until its
  ``lock_timeout`` runs out (then 423, as within a process).
* **Keeping.** While it holds leases, the process renews them all in one write every third
  of ``lock_lease``, and looks for requests to let go of them every
  :data:`ASKED_POLL_SECONDS` (PostgreSQL tells at once, but a notice may be lost). A holder
  asked to let go does what it does within a process: stops reading, records what it got,
  releases.
* **Losing.** A holder whose lease was not renewed in time (the database was out of
  reach, or the process was paused) or was taken over is stopped at once, writes no
  further byte (:meth:`~server.locks.Holder.check`), and its writes to the database
  change nothing (they name its token, see :class:`~server.state.Uploads`).

Why no byte lands after a take-over: this process counts a lease from when it *sent* the
take or the renewal, the database from when it *ran* it, which is later; so the holder's
own deadline passes before the database lets anyone else take the upload, and the check
before each write comes first. The new holder then opens its writer at the recorded
offset, dropping whatever the old one wrote past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence

from .errors import Locked
from .locks import Holder
from .state import HookEvent, Lease, LeasingStore, Upload

log = logging.getLogger("aiotusd")

POLL_SECONDS = 0.1
"""How often a request waiting for another process's holder looks at the lease again."""
ASKED_POLL_SECONDS = 0.25
"""How often a process that holds leases looks for requests to let go of them."""
RENEWALS = 3
"""Renewals within one lease's length: two may fail before a holder is stopped."""


class LeaseKeeper:
    """This process's leases on uploads, for the holders of :class:`~server.locks.UploadLocks`."""

    def __init__(self, store: LeasingStore, length: float) -> None:
        self._store = store
        self.length = length
        self._holders: dict[str, Holder] = {}
        """The holders of this process by upload, including those still taking the lease."""
        self._wake: dict[str, asyncio.Event] = {}
        """Set when the lease a holder waits for may be free."""
        self._busy = asyncio.Event()
        """Set while a holder has a lease: only then is there anything to keep."""
        self._renew_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._releases: set[asyncio.Task[None]] = set()
        self._born: dict[str, tuple[int, float] | None] = {}
        """Leases that uploads were created with (:meth:`create`), token and deadline, for
        the hold that comes next; None while the creation runs."""

    def start(self) -> None:
        self._store.watch_leases(self._asked, self._freed)
        self._task = asyncio.create_task(self._keep())

    async def stop(self) -> None:
        tasks = [task for task in (self._task, *self._releases) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @contextlib.asynccontextmanager
    async def hold(self, upload_id: str, holder: Holder, deadline: float) -> AsyncIterator[None]:
        """The upload's lease for ``holder``, taken before ``deadline`` (loop time) or
        :class:`~server.errors.Locked`; given back when the block ends."""
        self._holders[upload_id] = holder
        try:
            await self._take(upload_id, holder, deadline)
            self._busy.set()
            yield
        finally:
            del self._holders[upload_id]
            if not self._holders:
                self._busy.clear()
            if holder.token is not None and not holder.let_go:
                await self._release(upload_id, holder.token)

    async def create(self, upload: Upload, events: Sequence[HookEvent]) -> None:
        """Record a new upload under a lease of this process's, which the next
        :meth:`hold` of it holds rather than taking one: one write fewer for a creation
        that receives its upload's first bytes. That hold follows at once; were it never
        to come, the lease would lapse, unrenewed."""
        sent = time.monotonic()
        self._born[upload.id] = None
        try:
            lease = await self._store.create_leased(upload, self.length, events)
        except BaseException:
            del self._born[upload.id]
            raise
        self._born[upload.id] = (lease.token, sent + self.length)

    async def is_held(self, upload_id: str) -> bool:
        return await self._store.lease_of(upload_id) is not None

    async def _take(self, upload_id: str, holder: Holder, deadline: float) -> None:
        born = self._born.pop(upload_id, None)
        if born is not None:
            holder.leased(*born)
            return
        loop = asyncio.get_running_loop()
        wake = self._wake[upload_id] = asyncio.Event()
        holder.on_release_request(wake.set)
        asked: int | None = None
        try:
            while True:
                sent = time.monotonic()
                lease = await self._store.take_lease(upload_id, self.length)
                if lease is not None:
                    holder.leased(lease.token, sent + self.length, lease.upload)
                    return
                if holder.release_requested:
                    raise Locked("upload is in use by another request; try again later")
                holding = await self._store.lease_of(upload_id)
                if holding is not None and holding.owner == self._store.owner:
                    # No other holder of this process has it: a release that failed.
                    await self._store.release_lease(upload_id, holding.token)
                    holding = None
                if holding is not None and holding.token != asked:
                    await self._store.request_release(upload_id)
                    asked = holding.token
                await self._wait(wake, deadline - loop.time(), holding)
        finally:
            holder.on_release_request(None)
            del self._wake[upload_id]

    @staticmethod
    async def _wait(wake: asyncio.Event, remaining: float, holding: Lease | None) -> None:
        """Wait for a poll's interval, or less: until woken, or until ``holding`` lapses
        (not at all when the lease was released or lapsed just now);
        :class:`~server.errors.Locked` once no time remains."""
        if remaining <= 0:
            raise Locked("upload is in use by another request; try again later")
        if holding is None:
            return
        wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                wake.wait(), min(POLL_SECONDS, remaining, max(holding.expires_in, 0.0))
            )

    async def _release(self, upload_id: str, token: int) -> None:
        try:
            await self._store.release_lease(upload_id, token)
        except Exception as exc:  # the database's errors, whichever it is
            log.warning("the lease on upload %s lapses by itself (releasing it failed: %s)",
                        upload_id, exc)

    def _asked(self, upload_id: str, token: int) -> None:
        """Another request wants the lease of ``token``, which is this store's."""
        if upload_id in self._born:
            return  # its holder is on its way; the next poll asks it once it holds it
        holder = self._holders.get(upload_id)
        if holder is None:
            # Nobody here holds it: a lease whose release failed, or a holder just gone.
            task = asyncio.create_task(self._release(upload_id, token))
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)
        elif holder.token == token:
            holder.request_release()
        # A holder still taking its lease is asked by the next poll, once it holds it.

    def _freed(self, upload_id: str) -> None:
        wake = self._wake.get(upload_id)
        if wake is not None:
            wake.set()

    async def _keep(self) -> None:
        """While leases are held: renew them, hear requests to let go, stop the holders
        whose leases lapsed."""
        failing = False
        while True:
            await self._busy.wait()
            await asyncio.sleep(ASKED_POLL_SECONDS)
            try:
                if time.monotonic() >= self._renew_at:
                    await self._renew()
                for lease in await self._store.asked_back():
                    self._asked(lease.upload_id, lease.token)
            except Exception as exc:  # the database's errors, whichever it is
                if not failing:
                    log.warning("cannot keep the leases on uploads: %s", exc)
                failing = True
            else:
                failing = False
            self._stop_overdue()

    async def _renew(self) -> None:
        now = time.monotonic()
        holding = {
            holder.token: (upload_id, holder) for upload_id, holder in self._holders.items()
            if holder.token is not None and holder.deadline > now
        }
        renewed = {lease.token for lease in await self._store.renew_leases(holding, self.length)}
        for token, (upload_id, holder) in holding.items():
            if token in renewed:
                if not holder.lost:  # one stopped meanwhile stays stopped
                    holder.deadline = now + self.length
            elif self._holders.get(upload_id) is holder:  # not just released by itself
                log.warning("upload %s: its lease was taken over; stopping its request",
                            upload_id)
                holder.lose()
        self._renew_at = now + self.length / RENEWALS

    def _stop_overdue(self) -> None:
        now = time.monotonic()
        for upload_id, holder in self._holders.items():
            if holder.token is not None and not holder.lost and now >= holder.deadline:
                log.warning("upload %s: its lease lapsed before it was renewed; stopping its "
                            "request", upload_id)
                holder.lose()
