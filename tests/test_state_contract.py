"""What every state store promises (server.state.interface), asked through the interface only.

Each test runs once per implementation in ``IMPLEMENTATIONS``: a second database is one more
entry there. What is particular to one implementation (SQLite's WAL, its migrations, its
reader, how its writes share the connection) is tested in that implementation's own file.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import pytest

from server.state import (
    ACTIVE,
    EXPIRED,
    TERMINATED,
    ConcatKind,
    HookEvent,
    PostgresStore,
    SQLiteStore,
    Status,
    Store,
    Upload,
    UploadGone,
)


async def _sqlite(request: pytest.FixtureRequest) -> Store:
    # As the server opens it: one process, the file's only writer.
    return await SQLiteStore.open(request.getfixturevalue("tmp_path") / "state.sqlite3", True)


async def _postgresql(request: pytest.FixtureRequest) -> Store:
    url = request.getfixturevalue("postgres_url")
    return await PostgresStore.open(url, url)


IMPLEMENTATIONS: dict[str, Callable[[pytest.FixtureRequest], Awaitable[Store]]] = {
    "sqlite": _sqlite, "postgresql": _postgresql,
}
"""A fresh, empty store of each implementation: in a test's own directory, or database."""


@pytest.fixture(params=[
    pytest.param("sqlite"), pytest.param("postgresql", marks=pytest.mark.postgres)
])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    opened = await IMPLEMENTATIONS[request.param](request)
    yield opened
    await opened.close()


@pytest.fixture
async def other(store: Store, request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """A second store on the database of ``store``: another process, as far as claims and
    leases go."""
    opened = await IMPLEMENTATIONS[request.node.callspec.params["store"]](request)
    yield opened
    await opened.close()


LEASE = 60.0
"""A claim's or an upload lease's length, longer than any test."""
SHORT = 0.3
"""An upload lease's length that a test waits out."""


def event(hook_id: str, upload_id: str, created_at: float | None = None) -> HookEvent:
    return HookEvent(
        hook_id, upload_id, "post-receive", b'{"id": "%s"}' % hook_id.encode(),
        created_at=time.time() if created_at is None else created_at,
    )


async def event_ids(store: Store, dead_only: bool = False) -> list[str]:
    return [e.id for e in await store.hook_events(dead_only)]


# --- uploads ----------------------------------------------------------------------------


async def test_an_upload_reads_back_as_it_was_created(store: Store) -> None:
    upload = Upload(
        id="a", length=None, metadata="filename aGVsbG8=,empty", defer_length=True,
        concat=ConcatKind.PARTIAL, created_at=1000.25, updated_at=1000.5, expires_at=2000.75,
        storage={"key": "a/b", "parts": [1, "x"]}, repr_digest="sha-256=:AAAA:, sha-512",
    )
    await store.create(upload)
    found = await store.get("a")
    assert found == upload
    assert found is not None and found.status is Status.ACTIVE
    assert found.concat is ConcatKind.PARTIAL
    assert await store.get("missing") is None
    assert await store.get_many(("a", "missing", "a")) == {"a": upload}
    assert await store.get_many(()) == {}


async def test_progress_is_saved_with_everything_it_changes(store: Store) -> None:
    """save_progress returns the upload as saved, with its new ``updated_at``; the value
    it was given stays as it was."""
    upload = Upload(id="a", length=None, defer_length=True, updated_at=0.0)
    await store.create(upload)
    changed = replace(
        upload, offset=7, length=9, expires_at=5000.0, completed_at=4000.0,
        storage={"etag": "x"}, repr_digest="sha-512=:AAAA:",
    )
    before = time.time()
    saved = await store.save_progress(changed)
    assert before <= saved.updated_at <= time.time()
    assert saved == replace(changed, updated_at=saved.updated_at)
    assert changed.updated_at == 0.0
    assert await store.get("a") == saved


async def test_concurrent_progress_writes_all_land(store: Store) -> None:
    uploads = [Upload(id=f"u{n}", length=100) for n in range(20)]
    for upload in uploads:
        await store.create(upload)

    async def progress(upload: Upload) -> None:
        await store.save_progress(replace(upload, offset=42))

    await asyncio.gather(*(progress(upload) for upload in uploads))
    for upload in uploads:
        stored = await store.get(upload.id)
        assert stored is not None and stored.offset == 42


async def test_progress_of_an_upload_that_is_gone_is_refused_with_its_events(
    store: Store,
) -> None:
    """A write for an upload terminated or expired meanwhile records nothing, and says so:
    no request may be told that its bytes are kept by an upload that is gone."""
    gone = Upload(id="gone", length=10)
    await store.create(gone)
    await store.mark_gone("gone", TERMINATED)
    gone = replace(gone, offset=5)
    with pytest.raises(UploadGone):
        await store.save_progress(gone)
    with pytest.raises(UploadGone):
        await store.save_progress(gone, [event("e1", "gone")])
    row = await store.get("gone")
    assert row is not None and row.status == TERMINATED and row.offset == 0
    assert await store.count_events() == (0, 0)
    alive = Upload(id="alive", length=10)
    await store.create(alive)
    await store.save_progress(replace(alive, offset=5), [event("e2", "alive")])
    assert (await store.get("alive")).offset == 5  # type: ignore[union-attr]
    assert await store.count_events() == (1, 0)


async def cancel_after(turns: int, write: Awaitable[object]) -> bool:
    """Run ``write``, cancelling it after ``turns`` turns of the event loop, and wait for it
    to end; whether it had ended by itself before that."""
    task = asyncio.ensure_future(write)
    for _ in range(turns):
        await asyncio.sleep(0)
    ended = task.done()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return ended


MOST_TURNS = 2000
"""A write ends by itself well within this many turns of an otherwise idle loop."""


async def test_a_save_whose_caller_is_cancelled_lands_before_the_cancellation_goes_on(
    store: Store,
) -> None:
    """Cancelled after 1, 2, ... turns of the loop, until the save ends first: whenever the
    caller sees its cancellation, the write has landed (a request lets go of the upload's
    lock right then, and the next request's lookup must see it)."""
    for turns in range(1, MOST_TURNS):
        upload = Upload(id=f"u{turns}", length=10)
        await store.create(upload)
        ended = await cancel_after(turns, store.save_progress(replace(upload, offset=6)))
        found = await store.get(upload.id)
        assert found is not None and found.offset == 6, f"cancelled after {turns} turns"
        if ended:
            break
    else:
        pytest.fail(f"a save did not end within {MOST_TURNS} turns")


async def test_a_cancelled_save_with_events_lands_whole_or_not_at_all(store: Store) -> None:
    """The same with an event: its transaction is committed with both, or rolled back, by
    the time the caller sees only its cancellation."""
    for turns in range(MOST_TURNS):
        upload = Upload(id=f"u{turns}", length=10)
        await store.create(upload)
        ended = await cancel_after(
            turns, store.save_progress(replace(upload, offset=6), [event(f"e{turns}", upload.id)])
        )
        found = await store.get(upload.id)
        assert found is not None
        recorded = f"e{turns}" in await event_ids(store)
        assert (found.offset == 6) == recorded, f"cancelled after {turns} turns"
        if ended:
            assert recorded
            break
    else:
        pytest.fail(f"a save did not end within {MOST_TURNS} turns")


async def test_events_recorded_by_a_cancelled_save_wake_the_delivery(store: Store) -> None:
    """Cancelled after 1, 2, ... turns of the loop: whenever its event was recorded, the
    delivery is told so at once (else it would find it only at its next idle look, 5 s
    on)."""
    for turns in range(1, MOST_TURNS):
        upload = Upload(id=f"u{turns}", length=10)
        await store.create(upload)
        store.outbox_changed.clear()
        ended = await cancel_after(
            turns, store.save_progress(replace(upload, offset=6), [event(f"e{turns}", upload.id)])
        )
        if f"e{turns}" in await event_ids(store):
            assert store.outbox_changed.is_set(), f"cancelled after {turns} turns"
        if ended:
            break
    else:
        pytest.fail(f"a save did not end within {MOST_TURNS} turns")


async def test_writes_with_events_sent_together_land_each_whole_or_not_at_all(
    store: Store,
) -> None:
    """Saves with events that reach the database together (one turn of the loop, as
    requests' writes do): the one whose event cannot be recorded (its id is taken) lands
    neither its change nor its other event; the others land with theirs."""
    uploads = [Upload(id=f"u{n}", length=10) for n in range(3)]
    for upload in uploads:
        await store.create(upload)
    await store.create(Upload(id="taken", length=1), events=[event("e-taken", "taken")])
    outcomes = await asyncio.gather(
        store.save_progress(replace(uploads[0], offset=1), [event("e0", "u0")]),
        store.save_progress(
            replace(uploads[1], offset=1), [event("e1", "u1"), event("e-taken", "u1")]
        ),
        store.save_progress(replace(uploads[2], offset=1), [event("e2", "u2")]),
        return_exceptions=True,
    )
    assert [isinstance(outcome, Exception) for outcome in outcomes] == [False, True, False]
    found = await store.get_many(tuple(upload.id for upload in uploads))
    assert {u.id: u.offset for u in found.values()} == {"u0": 1, "u1": 0, "u2": 1}
    assert sorted(await event_ids(store)) == ["e-taken", "e0", "e2"]


async def test_a_creation_that_fails_records_none_of_its_events(store: Store) -> None:
    await store.create(Upload(id="a", length=1), events=[event("e1", "a")])
    with pytest.raises(Exception):  # noqa: B017 -- the database's own error, whichever
        await store.create(Upload(id="a", length=99), events=[event("e2", "a")])
    found = await store.get("a")
    assert found is not None and found.length == 1
    assert await event_ids(store) == ["e1"]


async def test_mark_gone_makes_tombstones_of_the_active_uploads_only(store: Store) -> None:
    for upload_id in ("p", "f1", "f2", "x"):
        await store.create(Upload(id=upload_id, length=1, expires_at=time.time() + 60))
    await store.mark_gone("x", EXPIRED)
    await store.mark_gone("p", TERMINATED, [event("e1", "p")], also=["f1", "f2", "x"])
    found = await store.get_many(("p", "f1", "f2", "x"))
    assert {u.id: u.status for u in found.values()} == {
        "p": TERMINATED, "f1": TERMINATED, "f2": TERMINATED, "x": EXPIRED
    }
    assert all(u.expires_at is None for u in found.values())
    # None of them is active: nothing changes, and the event is not recorded.
    await store.mark_gone("p", EXPIRED, [event("e2", "p")], also=["x"])
    found = await store.get_many(("p", "x"))
    assert (found["p"].status, found["x"].status) == (TERMINATED, EXPIRED)
    assert await event_ids(store) == ["e1"]


async def test_a_final_upload_keeps_its_parts_in_order(store: Store) -> None:
    for part in ("p1", "p2"):
        await store.create(Upload(id=part, length=1, concat=ConcatKind.PARTIAL))
    await store.create(Upload(id="f", length=None, concat=ConcatKind.FINAL), ("p2", "p1", "p2"))
    assert await store.parts("f") == ("p2", "p1", "p2")
    assert await store.parts("p1") == ()
    assert await store.finals_waiting_on("p2") == ["f"]


async def test_only_active_unfinished_finals_wait_on_a_part(store: Store) -> None:
    await store.create(Upload(id="p", length=1, concat=ConcatKind.PARTIAL))
    finals = {name: Upload(id=name, length=None, concat=ConcatKind.FINAL)
              for name in ("waiting", "done", "gone")}
    for final in finals.values():
        await store.create(final, ("p",))
    await store.save_progress(replace(finals["done"], completed_at=time.time()))
    await store.mark_gone("gone", TERMINATED)
    assert await store.finals_waiting_on("p") == ["waiting"]


async def test_expiry_lists_active_unfinished_uploads_past_their_time(store: Store) -> None:
    now = time.time()
    uploads = {
        "past": Upload(id="past", length=1, expires_at=now - 10),
        "at_now": Upload(id="at_now", length=1, expires_at=now),
        "future": Upload(id="future", length=1, expires_at=now + 60),
        "complete": Upload(id="complete", length=1, expires_at=now - 10, completed_at=now - 20),
        "never": Upload(id="never", length=1),
    }
    for upload in uploads.values():
        await store.create(upload)
    assert sorted(await store.expired_ids(now, 10)) == ["at_now", "past"]
    assert len(await store.expired_ids(now, 1)) == 1
    assert await store.count_unfinished() == 4
    await store.mark_gone("past", EXPIRED)
    assert await store.expired_ids(now, 10) == ["at_now"]
    assert await store.count_unfinished() == 3


async def test_tombstones_are_forgotten_after_retention(store: Store) -> None:
    await store.create(Upload(id="old", length=1))
    await store.create(Upload(id="new", length=1))
    await store.create(Upload(id="live", length=1))
    await store.create(Upload(id="final", length=None, concat=ConcatKind.FINAL), ("live",))
    await store.mark_gone("old", TERMINATED)
    await store.mark_gone("new", EXPIRED)
    await store.mark_gone("final", TERMINATED)
    cutoff = time.time()
    assert await store.gone_before(cutoff - 3600, 10) == []
    assert len(await store.gone_before(cutoff + 1, 2)) == 2
    gone = await store.gone_before(cutoff + 1, 10)
    assert sorted(upload.id for upload in gone) == ["final", "new", "old"]
    await store.forget([upload.id for upload in gone])
    assert await store.get_many(("old", "new", "final")) == {}
    assert await store.parts("final") == ()
    live = await store.get("live")
    assert live is not None and live.status == ACTIVE
    await store.forget([])


# --- the outbox -------------------------------------------------------------------------


def ids(events: list[HookEvent]) -> list[str]:
    return [e.id for e in events]


async def test_events_are_claimed_one_upload_at_a_time_in_their_order(store: Store) -> None:
    now = time.time()
    a, b = Upload(id="a", length=10), Upload(id="b", length=10)
    await store.create(a, events=[event("a1", "a", created_at=now - 30)])
    await store.create(b, events=[event("b1", "b", created_at=now - 10)])
    await store.save_progress(replace(a, offset=1), [event("a2", "a", created_at=now - 20)])
    assert await event_ids(store) == ["a1", "b1", "a2"]
    assert await store.next_event_due(now) == now - 30
    assert ids(await store.claim_events(now - 25, 10, LEASE)) == ["a1"]  # b1 was not due
    assert await store.next_event_due(now) == now - 10  # a's head is claimed
    assert ids(await store.claim_events(now, 10, LEASE)) == ["b1"]  # a2 waits behind a1
    assert await store.next_event_due(now) is None
    assert await store.claim_events(now, 10, LEASE) == []
    (a1,) = [e for e in await store.hook_events() if e.id == "a1"]
    assert (a1.upload_id, a1.type, a1.payload) == ("a", "post-receive", b'{"id": "a1"}')
    await store.event_delivered(a1.seq)
    assert ids(await store.claim_events(now, 10, LEASE)) == ["a2"]
    assert await store.count_events() == (2, 0)


async def test_a_claim_takes_the_oldest_heads_up_to_its_limit(store: Store) -> None:
    for name in ("x", "y", "z"):
        await store.create(Upload(id=name, length=1), events=[event(name + "1", name)])
    assert ids(await store.claim_events(time.time(), 2, LEASE)) == ["x1", "y1"]
    assert ids(await store.claim_events(time.time(), 2, LEASE)) == ["z1"]


async def test_a_claim_whose_lease_ran_out_is_taken_again(store: Store) -> None:
    """A process that died delivering gives its events up after the lease."""
    await store.create(Upload(id="a", length=1), events=[event("a1", "a")])
    now = time.time()
    assert ids(await store.claim_events(now, 10, 30.0)) == ["a1"]
    assert await store.claim_events(now + 30, 10, 30.0) == []
    assert await store.next_event_due(now + 30) is None
    assert await store.next_event_due(now + 31) is not None
    (again,) = await store.claim_events(now + 31, 10, 30.0)
    await store.event_delivered(again.seq)
    assert await event_ids(store) == []


async def test_only_a_claimed_event_is_settled(store: Store) -> None:
    """Settling an event that this store does not hold changes nothing: one whose claim
    went to another store is that store's to settle."""
    await store.create(Upload(id="a", length=1), events=[event("a1", "a")])
    (unclaimed,) = await store.hook_events()
    await store.event_delivered(unclaimed.seq)
    unclaimed.attempts, unclaimed.dead = 1, True
    await store.event_failed(unclaimed)
    assert await store.count_events() == (1, 0)
    (claimed,) = await store.claim_events(time.time(), 10, LEASE)
    await store.event_delivered(claimed.seq)
    assert await store.count_events() == (0, 0)


async def test_a_failed_event_waits_and_a_dead_one_is_kept_aside_until_retried(
    store: Store,
) -> None:
    upload = Upload(id="a", length=10)
    await store.create(upload, events=[event("a1", "a"), event("a2", "a")])
    (first,) = await store.claim_events(time.time(), 10, LEASE)
    first.attempts, first.next_attempt_at, first.last_error = 1, time.time() + 3600, "answered 502"
    await store.event_failed(first)
    assert await store.claim_events(time.time(), 10, LEASE) == []  # a2 waits behind it
    (stored, _) = await store.hook_events()
    assert (stored.attempts, stored.last_error, stored.dead) == (1, "answered 502", False)
    (first,) = await store.claim_events(time.time() + 7200, 10, LEASE)  # its next attempt
    first.attempts, first.dead = 2, True
    await store.event_failed(first)
    assert await store.count_events() == (1, 1)
    assert await event_ids(store, dead_only=True) == ["a1"]
    (second,) = await store.claim_events(time.time(), 10, LEASE)
    assert second.id == "a2"
    second.attempts, second.next_attempt_at = 1, time.time() + 3600
    await store.event_failed(second)
    store.outbox_changed.clear()
    assert await store.retry_events("no-such-event") == 0
    before = time.time()
    assert await store.retry_events(None) == 1
    assert store.outbox_changed.is_set()
    assert await store.count_events() == (2, 0)
    (revived, _) = await store.hook_events()
    assert (revived.id, revived.attempts, revived.dead) == ("a1", 0, False)
    assert revived.since >= before and before <= revived.next_attempt_at <= time.time()
    assert ids(await store.claim_events(time.time(), 10, LEASE)) == ["a1"]
    assert await store.retry_events("a2") == 1


async def test_committed_events_wake_the_delivery(store: Store) -> None:
    upload = Upload(id="a", length=10)
    store.outbox_changed.clear()
    await store.create(upload, events=[event("a1", "a")])
    assert store.outbox_changed.is_set()
    store.outbox_changed.clear()
    await store.save_progress(replace(upload, offset=1), [event("a2", "a")])
    assert store.outbox_changed.is_set()
    store.outbox_changed.clear()
    await store.mark_gone("a", TERMINATED, [event("a3", "a")])
    assert store.outbox_changed.is_set()
    assert await event_ids(store) == ["a1", "a2", "a3"]


async def test_a_store_knows_its_schema_version(store: Store) -> None:
    assert await store.schema_version() >= 1
