"""Durable post-hooks: the outbox, retries, order per upload, dead events and the
``aiotusd hooks`` command, and delivery across a kill -9 of a real server process."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from support.hooks import Received, Receiver
from support.http import (
    PATCH_HEADERS,
    TUS,
    ClientFactory,
    create_upload,
    path_of,
    upload_id,
)
from support.processes import ServerProcess, run_cli
from support.waiting import poll

from server.capabilities import Capabilities
from server.config import Settings
from server.context import CONTEXT
from server.hooks import Hooks, make_transport
from server.metrics import Metrics
from server.outbox import Delivery
from server.state import MIGRATIONS, HookEvent, PostgresStore, StateStore, Upload
from storage_backends import make_backend

FAST_RETRIES = {"hooks_retry_delay": 0.01}


async def outbox(client: TestClient) -> list[HookEvent]:
    return await client.app[CONTEXT].store.hook_events()


async def test_no_outbox_rows_when_hooks_are_off_or_the_event_does_not_fire(
    make_client: ClientFactory, receiver: Receiver
) -> None:
    for client in (
        await make_client(),
        await make_client(hooks_url=receiver.url, hooks_events="pre-create"),
    ):
        response = await client.post(
            "/files/", data=b"abc", headers={**PATCH_HEADERS, "Upload-Length": "6"}
        )
        path = path_of(response)
        await client.patch(path, data=b"def", headers={**PATCH_HEADERS, "Upload-Offset": "3"})
        assert (await client.delete(path, headers=TUS)).status == 204
        assert await outbox(client) == []
    assert [r.name for r in receiver.received] == ["pre-create"]


@pytest.mark.all_databases
async def test_a_failing_receiver_gets_the_event_again_until_it_takes_it(
    make_client: ClientFactory, receiver: Receiver
) -> None:
    receiver.respond = lambda r: web.Response(status=500 if len(receiver.received) <= 3 else 200)
    client = await make_client(hooks_url=receiver.url, hooks_events="post-create", **FAST_RETRIES)
    await create_upload(client, 1)

    attempts = await receiver.wait(
        lambda: len(receiver.received) >= 4 and receiver.received, "4 attempts"
    )
    await poll(lambda: _empty(client), "the delivered event to leave the outbox")
    assert len(receiver.received) == 4  # nothing left to send: delivered exactly once more
    assert len({r.id for r in attempts}) == 1
    assert len({r.body for r in attempts}) == 1


async def _empty(client: TestClient) -> bool:
    return not await outbox(client)


@pytest.mark.all_databases
async def test_events_of_one_upload_go_out_in_order_each_after_the_last_was_taken(
    make_client: ClientFactory, receiver: Receiver
) -> None:
    # Every event is refused once: the next one of the upload must wait for its retry.
    refused: set[str] = set()

    def respond(r: Received) -> web.Response:
        if r.id in refused:
            return web.Response()
        refused.add(r.id)
        return web.Response(status=503)

    receiver.respond = respond
    client = await make_client(
        hooks_url=receiver.url,
        hooks_events="post-create,post-receive,post-finish",
        hooks_progress_interval=0,
        **FAST_RETRIES,
    )
    path = await create_upload(client, 6)
    for offset in range(0, 6, 2):
        patched = await client.patch(
            path, data=b"xy", headers={**PATCH_HEADERS, "Upload-Offset": str(offset)}
        )
        assert patched.status == 204

    await receiver.wait(lambda: len(receiver.received) == 10, "two attempts of five events")
    arrivals = [(r.name, r.json["upload"]["offset"]) for r in receiver.received]
    expected = [
        ("post-create", 0),
        ("post-receive", 2),
        ("post-receive", 4),
        ("post-receive", 6),
        ("post-finish", 6),
    ]
    assert arrivals == [event for event in expected for _ in range(2)]
    assert all(r.json["upload"]["id"] == upload_id(path) for r in receiver.received)


@pytest.mark.e2e
@pytest.mark.slow
async def test_dead_events_are_listed_and_retried_from_the_command_line(
    make_client: ClientFactory, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.respond = lambda r: web.Response(status=500, text="down for maintenance")
    settings_changes = dict(
        hooks_url=receiver.url, hooks_events="post-create", hooks_max_attempts=2, **FAST_RETRIES
    )
    client = await make_client(**settings_changes)
    first = upload_id(await create_upload(client, 1))
    second = upload_id(await create_upload(client, 1))
    events = await poll(lambda: _dead(client, 2), "two dead events")
    data_dir = client.app[CONTEXT].settings.storage.data_dir
    await client.close()
    assert {e.upload_id for e in events} == {first, second}
    assert all(e.attempts == 2 and e.last_error == "answered 500" for e in events)

    listing = run_cli(tmp_path, "hooks", "list", "--dead", "--data-dir", data_dir)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split()[:4] == ["HOOK", "ID", "EVENT", "UPLOAD"]
    for event in events:
        (line,) = [line for line in lines if event.id in line]
        assert line.split()[1:5] == ["post-create", event.upload_id, "dead", "2"]
        assert line.endswith("answered 500")

    retried = run_cli(tmp_path, "hooks", "retry", events[0].id, "--data-dir", data_dir)
    assert retried.returncode == 0 and retried.stdout.startswith("1 hook event(s)"), retried.stderr
    unknown = run_cli(tmp_path, "hooks", "retry", "no-such-event", "--data-dir", data_dir)
    assert unknown.returncode == 1 and "no-such-event" in unknown.stderr
    listing = run_cli(tmp_path, "hooks", "list", "--data-dir", data_dir)
    assert [line.split()[3] for line in listing.stdout.splitlines()[1:]] == ["pending", "dead"]

    # A server started now sends the retried event, with its Hook-Id, and only it.
    receiver.respond = None
    receiver.received.clear()
    client = await make_client(**settings_changes)
    (delivered,) = await receiver.wait(lambda: receiver.received, "the retried event")
    assert delivered.id == events[0].id
    await poll(lambda: _count(client, 1), "the delivered event to leave the outbox")
    await client.close()

    retried = run_cli(tmp_path, "hooks", "retry", "--all-dead", "--data-dir", data_dir)
    assert retried.returncode == 0 and retried.stdout.startswith("1 hook event(s)")
    listing = run_cli(tmp_path, "hooks", "list", "--dead", "--data-dir", data_dir)
    assert listing.stdout == "no dead hook events\n"


async def _dead(client: TestClient, count: int) -> list[HookEvent]:
    events = await outbox(client)
    return events if len(events) == count and all(e.dead for e in events) else []


async def _count(client: TestClient, count: int) -> bool:
    return len(await outbox(client)) == count


async def test_an_event_past_its_max_age_is_dead_after_one_attempt(
    make_client: ClientFactory, receiver: Receiver
) -> None:
    receiver.respond = lambda r: web.Response(status=502)
    client = await make_client(
        hooks_url=receiver.url, hooks_events="post-create", hooks_max_age=1, hooks_retry_delay=5
    )
    await create_upload(client, 1)
    (event,) = await poll(lambda: _dead(client, 1), "a dead event")
    assert event.attempts == 1 and len(receiver.received) == 1


async def test_an_event_is_recorded_only_with_its_state_change(tmp_path: Path) -> None:
    store = await StateStore.open(tmp_path / "state.sqlite3")
    try:
        upload = Upload(id="u1", length=1)
        await store.create(upload, events=[HookEvent("e1", "u1", "post-create", b"{}")])
        with pytest.raises(sqlite3.IntegrityError):  # the same id again: the insert fails
            await store.create(upload, events=[HookEvent("e2", "u1", "post-create", b"{}")])
        assert [e.id for e in await store.hook_events()] == ["e1"]
        await store.save_progress(
            dataclasses.replace(upload, offset=1), [HookEvent("e3", "u1", "post-receive", b"{}")]
        )
        await store.mark_gone("u1", "terminated", [HookEvent("e4", "u1", "post-terminate", b"{}")])
        assert [e.id for e in await store.hook_events()] == ["e1", "e3", "e4"]
    finally:
        await store.close()


async def test_stop_ends_the_worker_when_the_outbox_changes_as_it_is_cancelled(
    settings: Settings, receiver: Receiver, tmp_path: Path
) -> None:
    # The worker is cancelled in the same turn of the loop as its wake-up event is set:
    # Python 3.11's asyncio.wait_for swallowed that cancellation and stop() never returned.
    settings = settings.with_values(hooks_url=receiver.url)
    store = await StateStore.open(tmp_path / "state.sqlite3")
    locator = Capabilities.of(make_backend(settings)).locator
    hooks = Hooks(settings, make_transport(settings), store, locator)
    delivery = Delivery(settings, hooks, store, Metrics())
    stopping = None
    try:
        delivery.start()
        await poll(lambda: store.outbox_changed._waiters, "the worker waiting for a change")
        store.outbox_changed.set()
        stopping = asyncio.create_task(delivery.stop())
        done, _ = await asyncio.wait([stopping], timeout=3)
        assert done, "Delivery.stop() did not return"
    finally:
        if stopping is not None and not stopping.done():
            stopping.cancel()  # a second cancel reaches the worker
            await asyncio.gather(stopping, return_exceptions=True)
        await hooks.close()
        await store.close()


class CountingDueAsks(StateStore):
    """A store that counts how often the delivery asks it when the next event is due."""

    asks = 0

    async def next_event_due(self, now: float) -> float | None:
        self.asks += 1
        return await super().next_event_due(now)


async def test_a_backlog_goes_out_claim_after_claim_without_asking_when_the_next_is_due(
    settings: Settings, receiver: Receiver, tmp_path: Path
) -> None:
    """While claims take every free place, more is due now: the next claim comes as a
    delivery ends. Asking when the next event is due is a scan of the whole outbox, and
    with thousands waiting it cost more than the claims."""
    settings = settings.with_values(hooks_url=receiver.url, hooks_concurrency=4)
    store = await CountingDueAsks.open(tmp_path / "state.sqlite3")
    assert isinstance(store, CountingDueAsks)
    hooks = Hooks(settings, make_transport(settings), store,
                  Capabilities.of(make_backend(settings)).locator)
    delivery = Delivery(settings, hooks, store, Metrics())
    for number in range(80):
        await store.create(Upload(id=f"u{number}", length=1), events=[
            HookEvent(f"e{number}", f"u{number}", "post-create", b'{"upload": {"offset": 0}}')
        ])
    try:
        delivery.start()
        await receiver.wait(lambda: len(receiver.received) == 80, "80 events to go out")
        await poll(lambda: _none_left(store), "the outbox to empty")
    finally:
        await delivery.stop()
        await hooks.close()
        await store.close()
    assert sorted(r.id for r in receiver.received) == sorted(f"e{n}" for n in range(80))
    # At least 20 claims of at most 4 each; asked only once the claims came up short.
    assert store.asks <= 8, store.asks


async def _none_left(store: StateStore) -> bool:
    return await store.count_events() == (0, 0)


class HeldAfterDelivered(PostgresStore):
    """A store that, once it has dropped a delivered event, holds the delivery back until
    the test lets it go: the worker hears late that its delivery is over."""

    dropped: asyncio.Event
    release: asyncio.Event

    async def event_delivered(self, seq: int) -> None:
        await super().event_delivered(seq)
        self.dropped.set()
        await self.release.wait()


@pytest.mark.postgres
async def test_the_next_event_claimed_as_the_last_delivery_ends_goes_out_at_once(
    settings: Settings, receiver: Receiver, postgres_url: str
) -> None:
    """The worker may claim an upload's next event while the task that delivered the last
    one has not ended yet; that event must go out after it, not wait for its lease."""
    settings = settings.with_values(hooks_url=receiver.url)
    store = await HeldAfterDelivered.open(postgres_url, "x")
    store.dropped, store.release = asyncio.Event(), asyncio.Event()
    hooks = Hooks(settings, make_transport(settings), store,
                  Capabilities.of(make_backend(settings)).locator)
    delivery = Delivery(settings, hooks, store, Metrics())
    body = b'{"upload": {"offset": 0}}'
    await store.create(Upload(id="a", length=1), events=[
        HookEvent("a1", "a", "post-create", body), HookEvent("a2", "a", "post-receive", body)
    ])
    try:
        delivery.start()
        await asyncio.wait_for(store.dropped.wait(), 10)
        store.outbox_changed.set()  # as a commit of another upload's event would

        async def a2_claimed() -> bool:
            rows = await store._db.rows("SELECT claimed_by FROM hook_outbox WHERE id = 'a2'")
            return rows[0][0] is not None

        await poll(a2_claimed, "the worker to claim a2")
        store.release.set()
        await receiver.wait(lambda: len(receiver.received) == 2, "a2 to go out")
        assert [r.id for r in receiver.received] == ["a1", "a2"]
    finally:
        store.release.set()
        await delivery.stop()
        await hooks.close()
        await store.close()


async def test_a_version_1_database_gains_the_outbox_and_keeps_its_uploads(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(
            MIGRATIONS[0] + "; CREATE TABLE schema_version (version INTEGER NOT NULL);"
            " INSERT INTO schema_version VALUES (1);"
            " INSERT INTO uploads (id, length, created_at, updated_at) VALUES ('old', 5, 0, 0);"
        )
    db.close()
    store = await StateStore.open(path)
    try:
        assert await store.schema_version() == len(MIGRATIONS)
        assert (await store.get("old")).length == 5  # type: ignore[union-attr]
        assert await store.hook_events() == []
    finally:
        await store.close()


@pytest.mark.all_databases
async def test_post_receive_is_throttled_per_upload(
    make_client: ClientFactory, receiver: Receiver
) -> None:
    client = await make_client(
        hooks_url=receiver.url,
        hooks_events="post-receive",
        hooks_progress_interval=3600,
        commit_bytes=1,
    )
    path = await create_upload(client, 9)
    other = await create_upload(client, 3)
    for offset in range(0, 9, 3):
        patched = await client.patch(
            path, data=b"abc", headers={**PATCH_HEADERS, "Upload-Offset": str(offset)}
        )
        assert patched.status == 204
    await client.patch(other, data=b"abc", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    await receiver.wait(lambda: len(receiver.received) == 2, "one post-receive per upload")
    await poll(lambda: _empty(client), "an empty outbox")
    assert sorted(r.json["upload"]["id"] for r in receiver.received) == sorted(
        [upload_id(path), upload_id(other)]
    )


async def test_shutdown_lets_a_delivery_in_flight_finish(
    make_client: ClientFactory, receiver: Receiver, tmp_path: Path
) -> None:
    arrived = asyncio.Event()

    async def slow(r: Received) -> web.Response:
        arrived.set()
        await asyncio.sleep(0.3)  # the receiver is slow; the server must wait for it
        return web.Response()

    receiver.respond = slow
    client = await make_client(hooks_url=receiver.url, hooks_events="post-create")
    await create_upload(client, 1)
    database = client.app[CONTEXT].settings.storage.database_path
    await asyncio.wait_for(arrived.wait(), 10)
    await client.close()
    store = await StateStore.open(database)
    try:
        assert await store.hook_events() == []
    finally:
        await store.close()
    assert len(receiver.received) == 1


@pytest.mark.e2e
@pytest.mark.also_workers
async def test_post_finish_survives_kill_9_while_the_receiver_is_down(
    server_process: Callable[..., ServerProcess],
) -> None:
    receiver = Receiver()  # not started yet: its port refuses connections
    server = server_process(
        "--hooks-url", receiver.url, "--hooks-events", "post-finish", "--hooks-retry-delay", "0.05"
    )
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            server.url, data=b"payload", headers={**PATCH_HEADERS, "Upload-Length": "7"}
        ) as response,
    ):
        assert response.status == 201
        uid = upload_id(response.headers["Location"])
    await poll(lambda: "attempt 1 failed" in server.log(), "a delivery to the absent receiver")
    server.stop(signal.SIGKILL)

    await receiver.start()
    try:
        server.start()
        (delivered,) = await receiver.wait(
            lambda: receiver.received, "post-finish after restart", 20
        )
        event = delivered.json
        assert event["type"] == "post-finish"
        assert event["upload"]["id"] == uid and event["upload"]["offset"] == 7
    finally:
        await receiver.stop()


async def test_deliveries_and_the_outbox_are_in_the_metrics(
    make_client: ClientFactory, receiver: Receiver
) -> None:
    refused: set[str] = set()

    def respond(r: Received) -> web.Response:
        taken = r.json["upload"]["size"] == 1 and r.id in refused
        refused.add(r.id)
        return web.Response(status=200 if taken else 500)

    receiver.respond = respond
    client = await make_client(
        metrics=True, hooks_url=receiver.url, hooks_events="post-create", hooks_max_attempts=2,
        **FAST_RETRIES,
    )
    await create_upload(client, 1)  # refused once, then taken
    await create_upload(client, 2)  # refused twice: dead
    await poll(lambda: _dead(client, 1), "the dead event")
    await poll(lambda: len(receiver.received) == 4, "four delivery attempts")

    async def scraped() -> str:
        text = await (await client.get("/metrics")).text()
        delivered = 'aiotusd_hook_deliveries_total{event="post-create",outcome="delivered"} 1.0'
        return text if delivered in text else ""

    text = await poll(scraped, "the delivery in the metrics")
    assert 'aiotusd_hook_deliveries_total{event="post-create",outcome="failed"} 2.0' in text
    assert 'aiotusd_hook_deliveries_total{event="post-create",outcome="dead"} 1.0' in text
    assert 'aiotusd_hook_outbox_events{state="pending"} 0.0' in text
    assert 'aiotusd_hook_outbox_events{state="dead"} 1.0' in text
