"""What every state store that keeps leases promises (``LeasingStore`` in
server.state.interface), asked through the interface only: the stores that processes on
several hosts share. Each test runs once per implementation in ``LEASING``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import pytest
from test_state_contract import LEASE, SHORT, event, event_ids

from server.state import (
    ACTIVE,
    EXPIRED,
    TERMINATED,
    LeaseLost,
    LeasingStore,
    PostgresStore,
    Upload,
    UploadGone,
)


async def _postgresql(request: pytest.FixtureRequest) -> LeasingStore:
    url = request.getfixturevalue("postgres_url")
    return await PostgresStore.open(url, url)


LEASING: dict[str, Callable[[pytest.FixtureRequest], Awaitable[LeasingStore]]] = {
    "postgresql": _postgresql,
}
"""A fresh, empty store of each implementation that keeps leases."""


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[LeasingStore]:
    opened = await LEASING[request.param](request)
    yield opened
    await opened.close()


@pytest.fixture
async def other(
    store: LeasingStore, request: pytest.FixtureRequest
) -> AsyncIterator[LeasingStore]:
    """A second store on the database of ``store``: another process, as far as leases go."""
    opened = await LEASING[request.node.callspec.params["store"]](request)
    yield opened
    await opened.close()


# --- upload leases ---------------------------------------------------------------------


async def take_when_lapsed(store: LeasingStore, upload_id: str, length: float = LEASE) -> int:
    """Take the upload's lease as soon as the one on it lapses; its token."""
    deadline = time.monotonic() + 10
    while (lease := await store.take_lease(upload_id, length)) is None:
        assert time.monotonic() < deadline, "the lease never lapsed"
        await asyncio.sleep(0.02)
    return lease.token


async def test_a_lease_is_one_stores_until_it_is_released(store: LeasingStore, other: LeasingStore) -> None:
    assert store.owner != other.owner
    assert await store.lease_of("u") is None
    taken = await store.take_lease("u", LEASE)
    assert taken is not None and (taken.upload_id, taken.owner) == ("u", store.owner)
    assert 0 < taken.expires_in <= LEASE and not taken.release_requested
    assert await other.take_lease("u", LEASE) is None
    assert await store.take_lease("u", LEASE) is None  # not even its own store takes it twice
    seen = await other.lease_of("u")
    assert seen is not None and replace(seen, expires_in=taken.expires_in) == taken
    assert LEASE - 5 < seen.expires_in <= LEASE
    assert await other.take_lease("v", LEASE) is not None  # another upload's is another lease
    await other.release_lease("u", taken.token + 1000)  # not that lease's token: no effect
    assert await other.take_lease("u", LEASE) is None
    await store.release_lease("u", taken.token)
    assert await store.lease_of("u") is None
    again = await other.take_lease("u", LEASE)
    assert again is not None and again.owner == other.owner and again.token > taken.token


async def test_a_lapsed_lease_is_taken_over_with_a_greater_token(
    store: LeasingStore, other: LeasingStore
) -> None:
    first = await store.take_lease("u", SHORT)
    assert first is not None
    assert await other.take_lease("u", LEASE) is None
    token = await take_when_lapsed(other, "u")
    assert token > first.token
    assert await store.renew_leases([first.token], LEASE) == []  # lost: not renewed
    lease = await store.lease_of("u")
    assert lease is not None and (lease.owner, lease.token) == (other.owner, token)


async def test_renewed_leases_stay_and_lapse_once_no_longer_renewed(
    store: LeasingStore, other: LeasingStore
) -> None:
    leases = [await store.take_lease(upload_id, SHORT) for upload_id in ("a", "b")]
    tokens = [lease.token for lease in leases if lease is not None]
    until = time.monotonic() + 3 * SHORT
    while time.monotonic() < until:
        renewed = await store.renew_leases(tokens, SHORT)
        assert sorted(lease.token for lease in renewed) == sorted(tokens)
        assert all(lease.owner == store.owner for lease in renewed)
        assert await other.take_lease("a", LEASE) is None
        await asyncio.sleep(SHORT / 4)
    assert await store.renew_leases([], SHORT) == []
    # Another store's renewal does not renew this one's, and it lapses.
    assert await other.renew_leases(tokens, LEASE) == []
    assert await take_when_lapsed(other, "a") > max(tokens)


async def test_writes_under_a_lease_that_was_taken_over_change_nothing(
    store: LeasingStore, other: LeasingStore
) -> None:
    """The fence: once a lease is taken over, its holder's writes record nothing, events
    included, and say so; the new holder's land."""
    upload = Upload(id="u", length=10)
    await store.create(upload)
    old = await store.take_lease("u", SHORT)
    assert old is not None
    saved = await store.save_progress(replace(upload, offset=3), [event("e1", "u")], old.token)
    new = await take_when_lapsed(other, "u")
    with pytest.raises(LeaseLost):
        await store.save_progress(replace(saved, offset=8), [event("e2", "u")], old.token)
    with pytest.raises(LeaseLost):
        await store.mark_gone("u", TERMINATED, [event("e3", "u")], lease=old.token)
    found = await store.get("u")
    assert found is not None and (found.status, found.offset) == (ACTIVE, 3)
    assert await event_ids(store) == ["e1"]
    await other.save_progress(replace(saved, offset=5), [event("e4", "u")], new)
    await other.mark_gone("u", TERMINATED, [event("e5", "u")], lease=new)
    found = await store.get("u")
    assert found is not None and (found.status, found.offset) == (TERMINATED, 5)
    assert await event_ids(store) == ["e1", "e4", "e5"]
    # Under its lease still, a write for an upload that is gone is refused as gone.
    with pytest.raises(UploadGone):
        await other.save_progress(replace(saved, offset=6), lease=new)
    await other.mark_gone("u", EXPIRED, lease=new)  # nothing active: nothing changes
    assert (await store.get("u")).status == TERMINATED  # type: ignore[union-attr]


async def test_a_holder_is_asked_to_let_go_through_the_database(
    store: LeasingStore, other: LeasingStore
) -> None:
    assert await other.request_release("u") is None  # nobody holds it
    taken = await store.take_lease("u", LEASE)
    assert taken is not None
    assert await store.asked_back() == []
    asked = await other.request_release("u")
    assert asked is not None and (asked.owner, asked.token) == (store.owner, taken.token)
    assert asked.release_requested
    assert [(lease.upload_id, lease.token) for lease in await store.asked_back()] == [
        ("u", taken.token)
    ]
    assert await other.asked_back() == []
    await store.release_lease("u", taken.token)
    assert await store.asked_back() == []
    assert await other.request_release("u") is None
    again = await other.take_lease("u", LEASE)
    assert again is not None and not again.release_requested


async def test_a_take_reads_the_upload_as_the_last_holder_left_it_if_at_all(
    store: LeasingStore, other: LeasingStore
) -> None:
    """A store may read the upload with the take, to spare the holder its lookup: then it
    is the upload as saved under the lease before."""
    upload = Upload(id="u", length=10)
    await store.create(upload)
    first = await store.take_lease("u", LEASE)
    assert first is not None and first.upload in (None, await store.get("u"))
    await store.save_progress(replace(upload, offset=4), lease=first.token)
    await store.release_lease("u", first.token)
    second = await other.take_lease("u", LEASE)
    assert second is not None and second.upload in (None, await other.get("u"))
    assert second.upload is None or second.upload.offset == 4
    none = await other.take_lease("v", LEASE)  # no such upload
    assert none is not None and none.upload is None


async def test_an_upload_created_leased_is_the_stores_at_once(
    store: LeasingStore, other: LeasingStore
) -> None:
    upload = Upload(id="u", length=10, repr_digest="sha-256")
    lease = await store.create_leased(upload, LEASE, [event("e1", "u")])
    assert (lease.upload_id, lease.owner) == ("u", store.owner)
    assert 0 < lease.expires_in <= LEASE and not lease.release_requested
    assert await other.get("u") == upload and await event_ids(other) == ["e1"]
    assert await other.take_lease("u", LEASE) is None
    seen = await other.lease_of("u")
    assert seen is not None and seen.token == lease.token
    await store.save_progress(replace(upload, offset=3, repr_digest="sha-512"), lease=lease.token)
    # An id that is taken: nothing is recorded, and no lease taken.
    with pytest.raises(Exception):  # noqa: B017 -- the database's own error, whichever
        await other.create_leased(Upload(id="u", length=5), LEASE, [event("e2", "u")])
    found = await other.get("u")
    assert found is not None and (found.length, found.offset) == (10, 3)
    assert found.repr_digest == "sha-512"
    assert await event_ids(other) == ["e1"]
    assert (await other.lease_of("u")).token == lease.token  # type: ignore[union-attr]


async def test_an_upload_created_leased_without_events_is_the_stores_at_once(
    store: LeasingStore, other: LeasingStore
) -> None:
    upload = Upload(id="u", length=10)
    lease = await store.create_leased(upload, LEASE)
    assert (lease.upload_id, lease.owner, lease.release_requested) == ("u", store.owner, False)
    assert await other.take_lease("u", LEASE) is None
    assert (await other.lease_of("u")).token == lease.token  # type: ignore[union-attr]
    assert await other.get("u") == upload
    with pytest.raises(Exception):  # noqa: B017 -- the database's own error, whichever
        await other.create_leased(Upload(id="u", length=5), LEASE)
    assert (await other.lease_of("u")).token == lease.token  # type: ignore[union-attr]
    assert (await other.get("u")).length == 10  # type: ignore[union-attr]


async def test_a_save_that_releases_the_lease_ends_it_only_when_it_lands(
    store: LeasingStore, other: LeasingStore
) -> None:
    upload = Upload(id="u", length=10)
    await store.create(upload)
    lease = await store.take_lease("u", LEASE)
    assert lease is not None
    await store.save_progress(replace(upload, offset=10, repr_digest="sha-256=:AAAA:"),
                              lease=lease.token, release=True)
    assert await other.lease_of("u") is None
    saved = await other.get("u")
    assert saved is not None and (saved.offset, saved.repr_digest) == (10, "sha-256=:AAAA:")
    # A lease that was lost: nothing is saved, and the new holder's lease stays.
    again = await other.take_lease("u", LEASE)
    assert again is not None
    with pytest.raises(LeaseLost):
        await store.save_progress(replace(upload, offset=4), lease=lease.token, release=True)
    assert (await other.lease_of("u")).token == again.token  # type: ignore[union-attr]
    # An upload that is gone: nothing is saved, and the lease stays for its release.
    await other.mark_gone("u", TERMINATED, lease=again.token)
    with pytest.raises(UploadGone):
        await other.save_progress(replace(upload, offset=5), lease=again.token, release=True)
    assert (await other.lease_of("u")).token == again.token  # type: ignore[union-attr]
    assert (await other.get("u")).offset == 10  # type: ignore[union-attr]


async def test_a_store_that_closes_gives_its_leases_up(
    store: LeasingStore, request: pytest.FixtureRequest
) -> None:
    closing = await LEASING[request.node.callspec.params["store"]](request)
    assert await closing.take_lease("u", LEASE) is not None
    await closing.close()
    assert await store.take_lease("u", LEASE) is not None
