"""The uploads an SQLite store keeps from its writes, to answer lookups without reading
the row: unchecked in a process alone on its file, checked against the marks of every
worker's writes with ``--workers`` (server/state/sqlite/marks.py).

Every test compares a store's lookups with what a fresh read of the file gives."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from server.state import DatabaseUnusable, HookEvent, StateStore, Status, Upload
from server.state.sqlite.marks import MARKS_SUFFIX, WriteMarks
from server.state.sqlite.recent import RECENT_UPLOADS
from server.state.sqlite.writes import LOCKED_RETRIES, LOCKED_RETRY_SECONDS

IDS = [f"u{n}" for n in range(8)]


async def _write_at_random(
    writers: list[StateStore], fresh: StateStore, rng: random.Random, step: int
) -> None:
    """Up to three writes of one upload, side by side (one batch, in this order), by one
    of ``writers``, a creation, a save (with or without an event), a removal or its
    forgetting; sometimes the last one cancelled."""
    upload_id = rng.choice(IDS)
    store = rng.choice(writers)
    current = await fresh.get(upload_id)
    writes: list[Coroutine[Any, Any, object]] = []
    for _ in range(rng.randint(1, 3)):
        operation = rng.choice(("create", "save", "save-event", "gone", "forget"))
        if operation == "create" and current is None:
            writes.append(store.create(Upload(id=upload_id, length=100)))
        elif operation.startswith("save") and current is not None:
            events = [HookEvent(f"e{step}", upload_id, "post-receive", b"{}")]
            writes.append(store.save_progress(
                current.but(offset=rng.randint(0, 100), storage={"n": [step]}),
                events if operation == "save-event" else (),
            ))
        elif operation == "gone":
            writes.append(store.mark_gone(upload_id, Status.TERMINATED))
        elif operation == "forget":
            writes.append(store.forget([upload_id]))
    tasks = [asyncio.ensure_future(write) for write in writes]
    if tasks and rng.random() < 0.3:
        for _ in range(rng.randint(0, 3)):
            await asyncio.sleep(0)
        tasks[-1].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _kept_and_checked(readers: list[StateStore], fresh: StateStore) -> int:
    """Assert that every lookup of ``readers`` gives what ``fresh`` reads; how many of
    them were answered from what a reader kept."""
    answered = 0
    for upload_id in IDS:
        expected = await fresh.get(upload_id)
        for reader in readers:
            answered += reader._recent.get(upload_id) is not None
            assert await reader.get(upload_id) == expected, upload_id
    return answered


async def test_the_uploads_a_sole_writer_keeps_are_always_what_the_file_says(
    tmp_path: Path,
) -> None:
    """A store that is its file's only writer answers lookups from the uploads it wrote
    last: after any mix of creations, saves (cancelled ones too, with and without events),
    removals and forgetting, some of them in one batch, every lookup gives what a fresh
    read of the file gives."""
    path = tmp_path / "state.sqlite3"
    store = await StateStore.open(path, sole_writer=True)
    fresh = await StateStore.open(path)  # reads the file; writes nothing
    rng = random.Random(7)
    answered = 0
    try:
        for step in range(300):
            await _write_at_random([store], fresh, rng, step)
            answered += await _kept_and_checked([store], fresh)
        assert answered > 300  # the lookups were answered from what it kept
    finally:
        await store.close()
        await fresh.close()


async def test_a_sole_writer_keeps_at_most_its_share_of_uploads(tmp_path: Path) -> None:
    store = await StateStore.open(tmp_path / "state.sqlite3", sole_writer=True)
    try:
        for number in range(RECENT_UPLOADS + 10):
            await store.create(Upload(id=f"u{number}", length=1))
        kept = store._recent._uploads
        assert len(kept) == RECENT_UPLOADS
        assert "u0" not in kept and f"u{RECENT_UPLOADS + 9}" in kept
        found = await store.get("u0")  # from the file
        assert found is not None and (found.id, found.length) == ("u0", 1)
    finally:
        await store.close()


async def _hold_the_write_lock(path: Path, seconds: float) -> None:
    """Another program holds the file's write lock for ``seconds``: longer than the
    batch tries on the event loop's thread, so that its statements go to the thread."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        await asyncio.sleep(seconds)
        other.execute("COMMIT")
    finally:
        other.close()


async def test_the_uploads_workers_keep_are_always_what_the_file_says(
    tmp_path: Path,
) -> None:
    """Each worker answers lookups from the uploads it wrote last, which another worker
    may have written since: after any mix of writes by either of two stores on one file
    (see the test above), some of them sent to the connection's thread because the
    database was locked, every lookup of either gives what a fresh read gives."""
    path = tmp_path / "state.sqlite3"
    stores = [await StateStore.open(path), await StateStore.open(path)]
    fresh = await StateStore.open(path)
    rng = random.Random(11)
    answered = 0
    try:
        for step in range(400):
            locked = None
            if rng.random() < 0.1:
                seconds = LOCKED_RETRIES * LOCKED_RETRY_SECONDS * 4
                locked = asyncio.ensure_future(_hold_the_write_lock(path, seconds))
                await asyncio.sleep(0)
            await _write_at_random(stores, fresh, rng, step)
            if locked is not None:
                await locked
            answered += await _kept_and_checked(stores, fresh)
        assert answered > 200  # the lookups were answered from what the stores kept
    finally:
        for store in (*stores, fresh):
            await store.close()


async def test_a_worker_reads_an_upload_it_kept_once_another_worker_wrote_it(
    tmp_path: Path,
) -> None:
    """Another worker's save, as a single statement or as a transaction with its events,
    on the event loop's thread or on the connection's (the file locked), and its removal
    of the upload (a termination, the expiry sweep) each make the next lookup read the
    row; a lookup answered from what a worker kept reads no row."""
    path = tmp_path / "state.sqlite3"
    store, other = await StateStore.open(path), await StateStore.open(path)
    try:
        created = Upload(id="a", length=10)
        await store.create(created)
        store._db.reader.close()  # type: ignore[union-attr]
        assert await store.get("a") == created  # kept: the closed reader is not asked
        store._db.reader = sqlite3.connect(path, isolation_level=None)
        await other.save_progress(created.but(offset=4))
        found = await store.get("a")
        assert found is not None and found.offset == 4
        saved = await store.save_progress(found.but(offset=6))
        assert await store.get("a") == saved
        event = HookEvent("e1", "a", "post-receive", b"{}")
        await other.save_progress(saved.but(offset=8), [event])
        found = await store.get("a")
        assert found is not None and found.offset == 8
        saved = await store.save_progress(found.but(offset=9))
        locked = asyncio.ensure_future(_hold_the_write_lock(path, 0.1))
        await asyncio.sleep(0.01)
        await other.save_progress(saved.but(offset=10))  # on the connection's thread
        await locked
        found = await store.get("a")
        assert found is not None and found.offset == 10
        await store.save_progress(found.but(offset=11))
        await other.mark_gone("a", Status.EXPIRED)
        found = await store.get("a")
        assert found is not None and found.status == Status.EXPIRED
    finally:
        await store.close()
        await other.close()


async def test_workers_whose_ids_share_a_slot_read_the_row(tmp_path: Path) -> None:
    """Two uploads in one slot of the file of marks: a write of either makes a kept copy
    of the other read its row again, which is all that costs. (A creation leaves no mark:
    the other worker's save of its new upload does.)"""
    path = tmp_path / "state.sqlite3"
    store, other = await StateStore.open(path), await StateStore.open(path)
    try:
        first = "a"
        slot = WriteMarks.stamps([first])[0][0]
        second = next(
            f"b{n}" for n in range(10**6) if WriteMarks.stamps([f"b{n}"])[0][0] == slot
        )
        await store.create(Upload(id=first, length=10))
        await other.create(Upload(id=second, length=10))
        assert store._recent.get(first) is not None
        await other.save_progress(Upload(id=second, length=10, offset=5))
        assert store._recent.get(first) is None  # its mark is gone
        found = await store.get(first)
        assert found is not None and found.id == first
    finally:
        await store.close()
        await other.close()


async def test_a_worker_that_cannot_make_the_file_of_marks_does_not_start(
    tmp_path: Path,
) -> None:
    """Without the file a worker's writes would leave no marks, and the other workers
    would answer from what they kept after it wrote: it must not run."""
    path = tmp_path / "state.sqlite3"
    marks = tmp_path / f"state.sqlite3{MARKS_SUFFIX}"
    marks.mkdir()  # cannot be opened as a file
    with pytest.raises(DatabaseUnusable) as raised:
        await StateStore.open(path)
    assert str(raised.value).startswith(f"cannot use the database {path}: cannot make {marks}: ")
    store = await StateStore.open(path, sole_writer=True)  # one process alone needs none
    await store.close()
