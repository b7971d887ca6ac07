"""The state interface: what the server asks of the database that holds upload state.

Every implementation keeps the promises written here, and ``tests/test_state_contract.py``
holds each implementation to them. The promises that matter most, because requests and
hook receivers rely on them:

* Events are recorded in the same transaction as the change they report, and only if it
  changed a row: a recorded event's change happened, and a change that happened has its
  events recorded (see :class:`Outbox`).
* A write that returned has been committed, and every lookup after it sees it.
* A caller cancelled while its write runs waits for it to have run before the
  cancellation goes on: the write lands or fails before the caller lets go of the upload's
  lock, never after (when a later request's write could be overtaken by it).
* Writes of different uploads may run side by side; a write never sees, nor is rolled back
  with, half of another.
* In a store that keeps leases (:class:`LeasingStore`), a write made under a lease
  (``lease``, its token) lands only while that is the upload's lease, checked in the
  write's own statement: a holder whose lease another process took over records nothing
  more (see :class:`Leases`). A store that keeps none refuses a ``lease``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Sequence
from typing import Protocol

from .model import HookEvent, Lease, Status, Upload


class Uploads(Protocol):
    """The uploads: one record each, kept as a tombstone once terminated or expired."""

    async def get(self, upload_id: str) -> Upload | None:
        """The upload, tombstones included; None if there is none of that id (any more)."""

    async def get_many(self, upload_ids: tuple[str, ...]) -> dict[str, Upload]:
        """The uploads of these ids that exist, by id (an id may be named more than once)."""

    async def create(
        self, upload: Upload, parts: tuple[str, ...] = (), events: Sequence[HookEvent] = ()
    ) -> None:
        """Record a new upload, with ``events``, and for a final upload its ordered ``parts``,
        all or nothing. An id that exists already raises (the database's own error) and
        records nothing, events included."""

    async def save_progress(
        self,
        upload: Upload,
        events: Sequence[HookEvent] = (),
        lease: int | None = None,
        release: bool = False,
    ) -> Upload:
        """Write ``upload``'s offset, length, expiry, completion and storage info, with
        ``events``; returns the upload as saved, with its new ``updated_at`` (``upload``
        itself is a value, left as it was).

        Raises :class:`~server.state.model.UploadGone` and records nothing (no events
        either) when the upload is not active: a request must never be told its bytes are
        kept by an upload that was terminated or expired meanwhile. With ``lease`` (the
        token of the caller's lease, in a store that keeps leases), raises :class:`~server.state.model.LeaseLost` and
        records nothing when that is not the upload's lease any more; with ``release``
        too, the lease ends with a write that landed, as :meth:`Leases.release_lease`
        would end it (for a holder's last write: one round trip fewer)."""

    async def mark_gone(
        self,
        upload_id: str,
        status: Status,
        events: Sequence[HookEvent] = (),
        also: Sequence[str] = (),
        lease: int | None = None,
    ) -> None:
        """Make the upload, and those ``also`` names (the finals that go with a partial), a
        tombstone with ``status`` and no expiry, in one transaction with ``events``.

        Only active uploads change: one that is gone already keeps its status, and when
        none of them was active, ``events`` are not recorded either. With ``lease``, as
        :meth:`save_progress`: nothing changes, and :class:`~server.state.model.LeaseLost`
        is raised, unless that is the upload's lease."""

    async def parts(self, final_id: str) -> tuple[str, ...]:
        """The partial uploads of a final upload, in the order of its ``Upload-Concat``
        (a part may appear more than once); empty for any other upload."""

    async def finals_waiting_on(self, partial_id: str) -> list[str]:
        """Active, unfinished final uploads that contain ``partial_id``, each once."""

    async def expired_ids(self, now: float, limit: int) -> list[str]:
        """Up to ``limit`` active, unfinished uploads whose expiry is at or before ``now``."""

    async def count_unfinished(self) -> int:
        """Active uploads still waiting for bytes (for metrics)."""

    async def gone_before(self, before: float, limit: int) -> list[Upload]:
        """Up to ``limit`` tombstones last changed before ``before``."""

    async def forget(self, upload_ids: Collection[str]) -> None:
        """Drop these uploads for good, with the parts of those that are final."""


class Leases(Protocol):
    """Upload locks that processes sharing the database respect: a lease per held upload.

    A lease is taken only when the upload has none that is live, and lapses ``length``
    seconds after it was taken or last renewed, so that the uploads of a process that died
    are free again within that time. Each lease gets a token greater than any before it,
    which the writes made under it name (``lease`` of :meth:`Uploads.save_progress` and
    :meth:`Uploads.mark_gone`): once an upload's lease was taken over, the old holder's
    writes change nothing. Times are the database's own clock, never the caller's, so that
    processes on hosts whose clocks differ agree on when a lease lapses.

    A request that wants a held upload asks its holder to let go
    (:meth:`request_release`); the holder's process sees the request by polling
    (:meth:`asked_back`) or, sooner, through :meth:`watch_leases`.
    """

    owner: str
    """Whose leases are this store's: unique to each store that is opened."""

    async def take_lease(self, upload_id: str, length: float) -> Lease | None:
        """A new lease of this store's on the upload for ``length`` seconds, when no live
        lease holds it (none, or one that lapsed); None when one does."""

    async def lease_of(self, upload_id: str) -> Lease | None:
        """The upload's live lease; None when it has none."""

    async def renew_leases(self, tokens: Collection[int], length: float) -> list[Lease]:
        """Make the leases of these tokens that are still this store's last ``length``
        seconds from now; them (one that is missing was lost)."""

    async def asked_back(self) -> list[Lease]:
        """This store's leases whose holder another request asked to let go."""

    async def request_release(self, upload_id: str) -> Lease | None:
        """Ask the holder of the upload's live lease to let go; that lease, or None when
        there is none."""

    async def release_lease(self, upload_id: str, token: int) -> None:
        """End the lease of ``token`` on the upload, if it is still the upload's."""

    def watch_leases(
        self, asked: Callable[[str, int], None], freed: Callable[[str], None]
    ) -> None:
        """Call ``asked(upload_id, token)`` when the holder of that lease is asked to let
        go, and ``freed(upload_id)`` when a lease that was asked for is released, as soon
        as the database tells. A notice may come late, twice or never (a store may have no
        way to tell at all): callers poll as well."""


class Outbox(Protocol):
    """Post-hook events from the change that caused them until delivered or given up on.

    Events get a ``seq`` when recorded: the outbox order. Of each upload, only the oldest
    event that is not dead (its head) is ever due, so that one upload's events are
    delivered in the order of the changes they report.

    An event is sent only under a claim, which one store holds at a time, even when
    several processes deliver from one database: a claimed head is no other store's to
    take, and its upload's next event is no head until it is settled (delivered, or
    failed). A claim lapses after its lease, so that the events of a process that died
    go out all the same; and it ends when the store that holds it closes."""

    outbox_changed: asyncio.Event
    """Set whenever events were committed or rescheduled (the delivery worker waits on it);
    also when the caller that committed them was cancelled as the commit ran."""

    async def claim_events(self, now: float, limit: int, lease: float) -> list[HookEvent]:
        """Claim up to ``limit`` heads whose next attempt is at or before ``now`` and that
        are under no claim at ``now``, for ``lease`` seconds; them, oldest first."""

    async def next_event_due(self, now: float) -> float | None:
        """When the next head under no claim at ``now`` is due; None if none waits."""

    async def event_delivered(self, seq: int) -> None:
        """Drop the event, if this store holds its claim: the next one of its upload
        becomes its head. A claim that lapsed and went to another store is that store's."""

    async def event_failed(self, event: HookEvent) -> None:
        """Record a failed attempt as ``event`` now says (its attempts, next attempt,
        error, and whether it is dead) and end its claim, if this store holds that. A dead
        event stays, but is never due and heads nothing."""

    async def hook_events(self, dead_only: bool = False) -> list[HookEvent]:
        """Every event in the outbox (or only the dead ones), oldest first."""

    async def retry_events(self, hook_id: str | None) -> int:
        """Make event ``hook_id`` (None: every dead event) due now, alive, with no attempts
        and its series of attempts beginning now; how many events that was."""

    async def count_events(self) -> tuple[int, int]:
        """How many events are pending, and how many dead (for metrics)."""


class Store(Uploads, Outbox, Protocol):
    """The uploads and their outbox in one database, so a change and its events commit
    together. Opening one is the implementation's own (its settings differ)."""

    async def schema_version(self) -> int:
        """The version of the schema the database has: a cheap query (``/readyz`` asks it)."""

    async def close(self) -> None:
        """Give up the claims (and leases) this store holds and let go of the database;
        nothing may be asked after."""


class LeasingStore(Store, Leases, Protocol):
    """A store that processes on several hosts share (PostgreSQL): the uploads' locks are
    leases in it too, so that a write and its lease are checked together."""

    async def create_leased(
        self, upload: Upload, length: float, events: Sequence[HookEvent] = ()
    ) -> Lease:
        """Record a new upload (not a final one), with ``events``, under a new lease of
        this store's for ``length`` seconds: :meth:`create` and :meth:`take_lease` at once,
        for a creation that goes on to receive the upload's bytes. Raises as :meth:`create`
        does, and takes no lease then."""
