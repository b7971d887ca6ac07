"""What is particular to the PostgreSQL store: several stores (each its own pool, as
several processes would have) on one database, its migrations, its pool and its options.
What every store promises is in test_state_contract.py."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
from support.postgres import Cluster
from support.waiting import poll

from server.state import (
    DatabaseUnavailable,
    HookEvent,
    LeaseLost,
    PostgresStore,
    Store,
    Upload,
)
from server.state.postgresql import SCHEMA_VERSION
from server.state.postgresql.database import LISTENER_NAME
from server.state.postgresql.uploads import _SAVE_UNDER_LEASE

pytestmark = pytest.mark.postgres

LEASE = 60.0


@pytest.fixture
async def two_stores(postgres_url: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores on one database, each with its own pool: two processes, as far as the
    database can tell."""
    first = await PostgresStore.open(postgres_url, "first")
    second = await PostgresStore.open(postgres_url, "second")
    yield first, second
    await first.close()
    await second.close()


def event(hook_id: str, upload_id: str) -> HookEvent:
    return HookEvent(hook_id, upload_id, "post-receive", hook_id.encode())


async def record_events(store: Store, uploads: int, each: int) -> dict[str, list[str]]:
    """``each`` events of each of ``uploads`` uploads; their ids by upload, in order."""
    recorded: dict[str, list[str]] = {}
    for n in range(uploads):
        upload = Upload(id=f"u{n}", length=each)
        recorded[upload.id] = [f"u{n}e{k}" for k in range(each)]
        await store.create(upload, events=[event(recorded[upload.id][0], upload.id)])
        for k in range(1, each):
            upload = await store.save_progress(
                dataclasses.replace(upload, offset=k), [event(recorded[upload.id][k], upload.id)]
            )
    return recorded


class Receiver:
    """What a webhook receiver would see of the deliveries of several stores."""

    def __init__(self) -> None:
        self.delivered: list[str] = []
        self.by: collections.Counter[str] = collections.Counter()
        self.sending: set[str] = set()
        """Uploads one of whose events is being sent right now."""
        self.overlaps: list[str] = []

    async def send(self, name: str, sent: HookEvent) -> None:
        if sent.upload_id in self.sending:
            self.overlaps.append(sent.id)
        self.sending.add(sent.upload_id)
        for _ in range(3):  # let the other store run meanwhile
            await asyncio.sleep(0)
        self.sending.discard(sent.upload_id)
        self.delivered.append(sent.id)
        self.by[name] += 1


async def deliver_all(name: str, store: PostgresStore, receiver: Receiver, total: int) -> None:
    """Claim and deliver as the delivery worker does, several at once, until ``total``
    events were delivered by all stores (bounded in rounds and time)."""
    deadline = time.monotonic() + 60
    for _ in range(10_000):
        if len(receiver.delivered) >= total or time.monotonic() > deadline:
            return
        claimed = await store.claim_events(time.time(), 4, LEASE)

        async def one(claimed_event: HookEvent) -> None:
            await receiver.send(name, claimed_event)
            await store.event_delivered(claimed_event.seq)

        await asyncio.gather(*(one(e) for e in claimed))
        if not claimed:
            await asyncio.sleep(0.001)


async def test_two_stores_claiming_at_once_deliver_each_event_once_in_order(
    two_stores: tuple[PostgresStore, PostgresStore],
) -> None:
    first, second = two_stores
    recorded = await record_events(first, uploads=12, each=5)
    total = sum(len(ids) for ids in recorded.values())
    receiver = Receiver()
    await asyncio.gather(
        deliver_all("first", first, receiver, total),
        deliver_all("second", second, receiver, total),
    )
    assert sorted(receiver.delivered) == sorted(i for ids in recorded.values() for i in ids)
    assert receiver.overlaps == []
    for upload_id, ids in recorded.items():
        assert [i for i in receiver.delivered if i.startswith(upload_id + "e")] == ids
    assert receiver.by["first"] and receiver.by["second"], receiver.by
    assert await first.count_events() == (0, 0)


async def test_the_claim_of_a_store_that_died_lapses_and_it_settles_nothing_after(
    two_stores: tuple[PostgresStore, PostgresStore],
) -> None:
    first, second = two_stores
    await first.create(Upload(id="a", length=1), events=[event("a1", "a"), event("a2", "a")])
    now = time.time()
    (taken,) = await first.claim_events(now, 10, 30.0)
    assert await second.claim_events(now, 10, 30.0) == []
    (retaken,) = await second.claim_events(now + 31, 10, 30.0)
    assert retaken.id == taken.id == "a1"
    taken.attempts, taken.dead = 1, True
    await first.event_failed(taken)  # too late: the claim is the second store's now
    await first.event_delivered(taken.seq)
    assert [(e.id, e.dead) for e in await second.hook_events()] == [("a1", False), ("a2", False)]
    await second.event_delivered(retaken.seq)
    assert [e.id for e in await second.claim_events(now + 31, 10, 30.0)] == ["a2"]


async def test_a_store_that_closes_gives_its_claims_up(postgres_url: str) -> None:
    leaving = await PostgresStore.open(postgres_url, "leaving")
    staying = await PostgresStore.open(postgres_url, "staying")
    try:
        await leaving.create(Upload(id="a", length=1), events=[event("a1", "a")])
        assert [e.id for e in await leaving.claim_events(time.time(), 10, LEASE)] == ["a1"]
        assert await staying.claim_events(time.time(), 10, LEASE) == []
        await leaving.close()
        assert [e.id for e in await staying.claim_events(time.time(), 10, LEASE)] == ["a1"]
    finally:
        await staying.close()


async def test_stores_that_open_a_new_database_at_once_migrate_it_once(postgres_url: str) -> None:
    stores = await asyncio.gather(*(PostgresStore.open(postgres_url, "x") for _ in range(4)))
    try:
        assert [await store.schema_version() for store in stores] == [SCHEMA_VERSION] * 4
        rows = await stores[0]._db.rows("SELECT count(*) FROM schema_version")
        assert rows[0][0] == 1
    finally:
        await asyncio.gather(*(store.close() for store in stores))


async def prepared_statements(store: PostgresStore) -> int:
    """How many prepared statements the session of the store's one connection holds."""
    rows = await store._db.rows("SELECT count(*) FROM pg_prepared_statements")
    return int(rows[0][0])


@pytest.mark.parametrize(("query", "prepared"), [("", True), ("?statement_cache_size=0", False)])
async def test_statement_cache_size_0_leaves_no_prepared_statement_for_a_pooler(
    postgres_url: str, query: str, prepared: bool
) -> None:
    """With PgBouncer in transaction mode (before 1.21), a statement prepared on one
    server connection is not there on the next: the URL's option turns them off."""
    store = await PostgresStore.open(postgres_url + query, "x", pool_size=1)
    try:
        await store.create(Upload(id="a", length=1))
        assert await store.get("a") is not None
        assert (await prepared_statements(store) > 0) is prepared
    finally:
        await store.close()


async def test_a_pool_of_one_connection_serves_writes_that_come_at_once(postgres_url: str) -> None:
    store = await PostgresStore.open(postgres_url, "x", pool_size=1, timeout=10)
    try:
        uploads = [Upload(id=f"u{n}", length=9) for n in range(10)]
        await asyncio.gather(*(store.create(upload) for upload in uploads))
        saved = await asyncio.gather(
            *(store.save_progress(dataclasses.replace(upload, offset=4)) for upload in uploads)
        )
        assert [u.offset for u in saved] == [4] * 10
        stored = await store.get_many(tuple(u.id for u in uploads))
        assert sorted(u.offset for u in stored.values()) == [4] * 10
    finally:
        await store.close()


async def test_a_connection_whose_statement_outlasted_the_timeout_is_not_lent_again(
    postgres_url: str,
) -> None:
    """The server may still be running the statement given up on: the next borrower gets
    a new connection, at once, rather than one that waits for the old statement's end."""
    store = await PostgresStore.open(postgres_url, "x", pool_size=1, timeout=1.0)
    try:
        first = (await store._db.rows("SELECT pg_backend_pid()"))[0][0]
        with pytest.raises(DatabaseUnavailable, match="no answer within 1 s"):
            await store._db.rows("SELECT pg_sleep(30)")
        began = time.monotonic()
        second = (await store._db.rows("SELECT pg_backend_pid()"))[0][0]
        assert second != first and time.monotonic() - began < 5
        assert await store.get("u") is None
    finally:
        await store.close()


class Notices:
    """What a store's :meth:`watch_leases` heard."""

    def __init__(self, store: PostgresStore) -> None:
        self.asked: list[tuple[str, int]] = []
        self.freed: list[str] = []
        store.watch_leases(lambda upload, token: self.asked.append((upload, token)),
                           self.freed.append)


async def ask_until_heard(asking: Store, upload_id: str, notices: Notices, count: int) -> None:
    """Ask the upload's holder to let go until its store heard ``count`` requests: the
    listener connects in the background, and a notice sent before it listens is lost."""
    deadline = time.monotonic() + 20
    while len(notices.asked) < count:
        assert time.monotonic() < deadline, "the holder's store never heard the request"
        assert await asking.request_release(upload_id) is not None
        await asyncio.sleep(0.05)


async def test_lease_notices_reach_the_holder_and_the_waiters_even_after_a_lost_connection(
    two_stores: tuple[PostgresStore, PostgresStore], postgres_cluster: Cluster, postgres_url: str
) -> None:
    holding, waiting = two_stores
    held, waited = Notices(holding), Notices(waiting)
    lease = await holding.take_lease("u", LEASE)
    assert lease is not None
    await ask_until_heard(waiting, "u", held, 1)
    assert set(held.asked) == {("u", lease.token)}
    assert waited.asked == []  # a request to let go is only for the holder's store
    await holding.release_lease("u", lease.token)
    await poll(lambda: waited.freed == held.freed == ["u"], "the notice of the release")

    # The listener's connection dies (a restarted server, a lost network): it connects
    # and listens again by itself.
    terminated = postgres_cluster.sql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        f"WHERE application_name = '{LISTENER_NAME}' AND datname = current_database()",
        database=postgres_url.rsplit("/", 1)[1],
    )
    assert terminated == "2"
    lease = await holding.take_lease("u", LEASE)
    assert lease is not None
    heard = len(held.asked)
    await ask_until_heard(waiting, "u", held, heard + 1)
    assert held.asked[-1] == ("u", lease.token)


async def test_a_save_that_releases_the_lease_tells_the_waiters_it_was_freed(
    two_stores: tuple[PostgresStore, PostgresStore]
) -> None:
    holding, waiting = two_stores
    held, waited = Notices(holding), Notices(waiting)
    upload = Upload(id="u", length=3)
    await holding.create(upload)
    lease = await holding.take_lease("u", LEASE)
    assert lease is not None
    await ask_until_heard(waiting, "u", held, 1)
    await holding.save_progress(
        dataclasses.replace(upload, offset=3), lease=lease.token, release=True
    )
    await poll(lambda: waited.freed == ["u"], "the notice of the release")
    assert await waiting.take_lease("u", LEASE) is not None


async def test_a_take_over_waits_for_a_write_under_the_old_lease_that_is_under_way(
    two_stores: tuple[PostgresStore, PostgresStore], postgres_url: str
) -> None:
    """Read committed lets a write check the lease with what it saw when it began: were
    it not put in turn with the take-over, it could land after the new holder looked up
    the offset it resumes from."""
    old_store, new_store = two_stores
    await old_store.create(Upload(id="u", length=10))
    old = await old_store.take_lease("u", 0.5)
    assert old is not None
    connection = await asyncpg.connect(postgres_url)
    try:
        async with connection.transaction():  # the old holder's save, not committed yet
            status = await connection.execute(
                _SAVE_UNDER_LEASE, 7, 10, None, None, "{}", time.time(), "u", "active", None,
                old.token,
            )
            assert status == "UPDATE 1"

            async def lapsed() -> bool:
                return await old_store.lease_of("u") is None

            await poll(lapsed, "the old lease to lapse")
            taking = asyncio.create_task(new_store.take_lease("u", LEASE))
            await asyncio.wait([taking], timeout=1)
            assert not taking.done(), "the lease was taken over under a write of the old one"
        new = await asyncio.wait_for(taking, 10)
    finally:
        await connection.close()
    assert new is not None and new.token > old.token
    found = await new_store.get("u")
    assert found is not None and found.offset == 7  # the old holder's write came first
    # The take read the upload too, after that write, though it began before its commit.
    assert new.upload is not None and new.upload.offset == 7
    with pytest.raises(LeaseLost):
        await old_store.save_progress(dataclasses.replace(found, offset=9), lease=old.token)


async def test_a_connection_goes_back_to_the_pool_without_a_reset_query(
    postgres_url: str, postgres_cluster: Cluster
) -> None:
    """No state lives in a pooled connection's session, so none is reset: asyncpg's reset
    query would be one more round trip after every statement. The idle connection's last
    query (pg_stat_activity) is the store's own statement."""
    store = await PostgresStore.open(postgres_url, "x", pool_size=1)
    try:
        await store.create(Upload(id="a", length=1))
        assert await store.get("a") is not None
        database = postgres_url.rsplit("/", 1)[1]
        last = postgres_cluster.sql(
            "SELECT query FROM pg_stat_activity WHERE state = 'idle' "
            f"AND datname = '{database}' AND application_name <> '{LISTENER_NAME}'"
        )
        assert "uploads" in last and "pg_advisory_unlock_all" not in last, last
    finally:
        await store.close()
