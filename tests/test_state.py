"""The SQLite state store: schema, migrations, the reader, and how writes share the one
connection (the write gate, the statement batch, transactions).

What every store promises, SQLite's included, is tested in test_state_contract.py."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from server.state import (
    SCHEMA_VERSION,
    DatabaseUnusable,
    HookEvent,
    SchemaTooNew,
    StateStore,
    Status,
    Upload,
)
from server.state.sqlite.database import CHECKPOINT_EVERY
from server.state.sqlite.writes import LOCKED_RETRIES, LOCKED_RETRY_SECONDS


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[StateStore]:
    opened = await StateStore.open(tmp_path / "state.sqlite3")
    yield opened
    await opened.close()


@pytest.fixture
async def store_checked_at_commit(store: StateStore) -> StateStore:
    """``store`` with a table ``dangling`` whose foreign key is checked only at COMMIT: a
    row that points nowhere fails there and, unlike a full disk, leaves the transaction
    open. (Foreign keys are a connection's setting: both writing connections get it.)"""
    await store._db.connection.execute("PRAGMA foreign_keys = ON")
    assert store._db._batch.here is not None
    store._db._batch.here.execute("PRAGMA foreign_keys = ON")
    await store._db.connection.execute(
        "CREATE TABLE dangling (upload_id TEXT REFERENCES uploads (id) "
        "DEFERRABLE INITIALLY DEFERRED)"
    )
    return store


async def test_new_database_is_wal_with_current_schema(tmp_path: Path) -> None:
    store = await StateStore.open(tmp_path / "nested" / "state.sqlite3")
    try:
        assert await store.schema_version() == SCHEMA_VERSION
    finally:
        await store.close()
    async with aiosqlite.connect(tmp_path / "nested" / "state.sqlite3") as db:
        async with db.execute("PRAGMA journal_mode") as cursor:
            assert (await cursor.fetchone())[0] == "wal"


async def test_reopening_keeps_uploads_and_does_not_migrate_twice(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = await StateStore.open(path)
    await store.create(Upload(id="abc", length=10, metadata="k dg=="))
    await store.close()
    store = await StateStore.open(path)
    try:
        upload = await store.get("abc")
        assert upload is not None and upload.length == 10 and upload.metadata == "k dg=="
        assert await store.schema_version() == SCHEMA_VERSION
    finally:
        await store.close()


async def test_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = await StateStore.open(path)
    await store.close()
    async with aiosqlite.connect(path) as db:
        await db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
        await db.commit()
    with pytest.raises(SchemaTooNew, match="newer") as raised:
        await StateStore.open(path)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize("damage", ["random", "truncated", "directory"])
async def test_a_database_that_cannot_be_used_is_refused_naming_it_and_leaves_no_thread(
    tmp_path: Path, damage: str
) -> None:
    path = tmp_path / "state.sqlite3"
    if damage == "directory":
        path.mkdir()
    else:
        store = await StateStore.open(path)
        for number in range(300):
            await store.create(Upload(id=f"u{number}", length=10, metadata="k " + "x" * 200))
        await store.close()
        damaged = b"\x42" * 20000 if damage == "random" else path.read_bytes()[:-40000]
        path.write_bytes(damaged)
    threads = set(threading.enumerate())
    with pytest.raises(DatabaseUnusable) as raised:
        await StateStore.open(path)
    assert str(raised.value).startswith(f"cannot use the database {path}: ")
    # An aiosqlite connection's thread that was not stopped would keep the process alive;
    # the event loop's executor keeps its own (asyncio_N) for the next call, and ends them.
    left = {t for t in set(threading.enumerate()) - threads if not t.name.startswith("asyncio_")}
    for thread in left:
        thread.join(timeout=5)
    assert not [thread for thread in left if thread.is_alive()]


async def test_a_failed_creation_leaves_the_store_usable(tmp_path: Path) -> None:
    store = await StateStore.open(tmp_path / "state.sqlite3")
    try:
        await store.create(Upload(id="p", length=1, concat="partial"))
        with pytest.raises(aiosqlite.IntegrityError):
            await store.create(Upload(id="p", length=5, concat="final"), ("p",))
        assert await store.parts("p") == ()
        await store.create(Upload(id="q", length=2))
        stored = await store.get("q")
        assert stored is not None and stored.length == 2
    finally:
        await store.close()


async def test_a_statement_alone_in_its_turn_is_written_without_waiting_for_the_next(
    store: StateStore,
) -> None:
    """Nothing else runs in the turn of the event loop: no other statement could join its
    batch, which is sent at once; statements of one turn still go together (below)."""
    await store.create(Upload(id="a", length=10))
    saving = store.save_progress(Upload(id="a", length=10, offset=4)).__await__()
    with pytest.raises(StopIteration):  # ended without suspending: nothing awaited
        saving.send(None)
    found = await store.get("a")
    assert found is not None and found.offset == 4


async def test_a_failing_statement_sent_with_others_fails_alone(store: StateStore) -> None:
    await store.create(Upload(id="taken", length=10))
    uploads = [Upload(id=f"u{n}", length=10) for n in range(5)]
    # Queued in one turn of the loop: they go to the database together.
    outcomes = await asyncio.gather(
        *(store.create(u) for u in uploads[:2]),
        store.create(Upload(id="taken", length=99)),
        *(store.create(u) for u in uploads[2:]),
        return_exceptions=True,
    )
    assert [type(o) for o in outcomes] == [
        type(None), type(None), sqlite3.IntegrityError, type(None), type(None), type(None)
    ]
    found = await store.get_many(("taken", *(u.id for u in uploads)))
    assert set(found) == {"taken", *(u.id for u in uploads)}
    assert found["taken"].length == 10


async def test_a_batch_whose_commit_fails_is_run_again_one_by_one(
    store_checked_at_commit: StateStore,
) -> None:
    store = store_checked_at_commit
    outcomes = await asyncio.gather(
        store.create(Upload(id="a", length=1)),
        store._db.statement("INSERT INTO dangling VALUES ('nowhere')", ()),
        store.create(Upload(id="b", length=1)),
        return_exceptions=True,
    )
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], sqlite3.IntegrityError)
    assert not store._db.connection.in_transaction
    assert set(await store.get_many(("a", "b"))) == {"a", "b"}
    assert await store._db.connection.execute_fetchall("SELECT * FROM dangling") == []


async def test_a_failed_commit_leaves_no_transaction_open(
    store_checked_at_commit: StateStore,
) -> None:
    # The next write must still get a transaction of its own.
    store = store_checked_at_commit
    with pytest.raises(sqlite3.IntegrityError):
        async with store._db.transaction() as db:
            await db.execute("INSERT INTO dangling VALUES ('nowhere')")
    assert not store._db.connection.in_transaction
    await store.create(Upload(id="after", length=1))
    assert (await store.get("after")) is not None


async def test_a_statement_waits_for_a_transaction_and_is_not_rolled_back_with_it(store: StateStore) -> None:
    await store.create(Upload(id="a", length=10))
    other = Upload(id="b", length=10)
    await store.create(other)
    other = replace(other, offset=7)
    statement: asyncio.Task[Upload] | None = None
    with pytest.raises(RuntimeError):
        async with store._db.transaction() as db:
            await db.execute('UPDATE uploads SET "offset" = 5 WHERE id = ?', ("a",))
            statement = asyncio.create_task(store.save_progress(other))
            for _ in range(20):
                await asyncio.sleep(0)
            assert not statement.done()
            raise RuntimeError("roll back")
    assert statement is not None
    await asyncio.wait_for(statement, 5)
    found = await store.get_many(("a", "b"))
    assert (found["a"].offset, found["b"].offset) == (0, 7)


async def test_a_transaction_waits_for_the_statements_under_way(store: StateStore) -> None:
    uploads = [Upload(id=f"u{n}", length=10) for n in range(20)]
    for upload in uploads:
        await store.create(upload)
    uploads = [replace(upload, offset=3) for upload in uploads]
    statements = [asyncio.create_task(store.save_progress(u)) for u in uploads]
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        async with store._db.transaction() as db:
            # Every statement begun before the transaction has landed, outside it.
            assert all(task.done() for task in statements)
            await db.execute('UPDATE uploads SET "offset" = 9')
            raise RuntimeError("roll back")
    found = await store.get_many(tuple(u.id for u in uploads))
    assert {u.offset for u in found.values()} == {3}


async def test_turns_go_in_order_of_arrival_so_transactions_do_not_starve_a_statement(
    store: StateStore,
) -> None:
    upload = Upload(id="a", length=10)
    await store.create(upload)
    order: list[str] = []
    inside, first_may_end = asyncio.Event(), asyncio.Event()

    async def transaction(name: str) -> None:
        async with store._db.transaction() as db:
            order.append(name)
            inside.set()
            if name == "first":
                await asyncio.wait_for(first_may_end.wait(), 5)
            await db.execute("SELECT 1")

    async def statement() -> None:
        await store.save_progress(replace(upload, offset=4))
        order.append("statement")

    first = asyncio.create_task(transaction("first"))
    await asyncio.wait_for(inside.wait(), 5)
    waiting = [asyncio.create_task(statement())]
    await asyncio.sleep(0)
    waiting.append(asyncio.create_task(transaction("second")))
    await asyncio.sleep(0)
    first_may_end.set()
    await asyncio.wait_for(asyncio.gather(first, *waiting), 5)
    assert order == ["first", "statement", "second"]


async def test_a_statement_behind_a_cancelled_transaction_goes_on(store: StateStore) -> None:
    upload = Upload(id="a", length=10)
    await store.create(upload)

    async def transaction() -> None:
        async with store._db.transaction() as db:
            await db.execute('UPDATE uploads SET "offset" = 9')

    async with store._db.gate.statement():  # under way: the transaction waits for it
        queued = asyncio.create_task(transaction())
        await asyncio.sleep(0)
        behind = asyncio.create_task(store.save_progress(replace(upload, offset=3)))
        await asyncio.sleep(0)
        assert not behind.done()
        queued.cancel()
        await asyncio.wait_for(behind, 5)
    with pytest.raises(asyncio.CancelledError):
        await queued
    found = await store.get("a")
    assert found is not None and found.offset == 3


async def test_a_transaction_let_in_but_cancelled_before_it_goes_on_leaves_the_gate_open(
    store: StateStore,
) -> None:
    upload = Upload(id="a", length=10)
    await store.create(upload)
    ran = False

    async def transaction() -> None:
        nonlocal ran
        async with store._db.transaction():
            ran = True

    async with store._db.gate.statement():
        queued = asyncio.create_task(transaction())
        await asyncio.sleep(0)
    # The statement's end let the transaction in; it is cancelled before it could go on.
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert not ran
    await asyncio.wait_for(store.save_progress(replace(upload, offset=5)), 5)
    found = await store.get("a")
    assert found is not None and found.offset == 5


async def test_a_transaction_cancelled_as_it_begins_leaves_none_open(
    store: StateStore, tmp_path: Path
) -> None:
    upload = Upload(id="a", length=10)
    await store.create(upload)

    async def transaction() -> None:
        async with store._db.transaction() as db:
            await db.execute('UPDATE uploads SET "offset" = 9')

    task = asyncio.create_task(transaction())
    await asyncio.sleep(0)  # it awaits its BEGIN now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await store.save_progress(replace(upload, offset=4))
    # Committed, not inside a transaction nobody ends: another connection sees it.
    with contextlib.closing(sqlite3.connect(tmp_path / "state.sqlite3")) as other:
        assert other.execute('SELECT "offset" FROM uploads').fetchone() == (4,)


async def test_a_save_whose_caller_is_cancelled_lands_before_the_cancellation_goes_on(
    store: StateStore,
) -> None:
    upload = Upload(id="a", length=10)
    await store.create(upload)
    # The connection's thread is busy with this first, so the save waits in its queue.
    busy = asyncio.create_task(store._db.connection.execute_fetchall(
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 1000000) "
        "SELECT COUNT(*) FROM n"
    ))
    await asyncio.sleep(0)
    save = asyncio.create_task(store.save_progress(replace(upload, offset=6)))
    await asyncio.sleep(0)
    save.cancel()
    await asyncio.sleep(0)
    save.cancel()
    with pytest.raises(asyncio.CancelledError):
        await save
    # The caller would release the upload's lock now: the next request reads the offset.
    found = await store.get("a")
    assert found is not None and found.offset == 6
    assert await asyncio.wait_for(busy, 30) == [(1000000,)]


async def test_a_lookup_the_reader_cannot_answer_goes_to_the_connection(store: StateStore, tmp_path: Path) -> None:
    await store.create(Upload(id="a", length=10))
    store._db.reader.close()  # type: ignore[union-attr]
    # A reader on a database without the table fails as a busy or broken one would.
    store._db.reader = sqlite3.connect(tmp_path / "other.sqlite3")
    found = await store.get("a")
    assert found is not None and found.length == 10
    assert set(await store.get_many(("a", "b"))) == {"a"}


async def test_a_transaction_waits_for_another_process_s_write_though_a_read_came_first(
    store: StateStore, tmp_path: Path
) -> None:
    """Workers share the file: a read of another task that runs on the connection between
    a transaction's BEGIN and its first write (a hook delivery's query), then another
    process's write, must not make that first write fail at once (SQLite does not wait to
    turn a read into a write over a newer commit): the transaction holds the write lock
    from its BEGIN, and the other process waits for its COMMIT."""
    await store.create(Upload(id="a", length=10))
    other = sqlite3.connect(
        tmp_path / "state.sqlite3", isolation_level=None, timeout=10, check_same_thread=False
    )

    def write_from_another_process() -> None:
        other.execute("UPDATE uploads SET length = 20 WHERE id = 'a'")

    try:
        async with store._db.transaction() as transaction:
            assert await store._db.rows("SELECT COUNT(*) FROM uploads") == [(1,)]
            writing = asyncio.ensure_future(asyncio.to_thread(write_from_another_process))
            await asyncio.wait([writing], timeout=0.5)
            await transaction.execute("UPDATE uploads SET length = 30 WHERE id = 'a'")
            assert not writing.done(), "the other process wrote inside the transaction"
        await asyncio.wait_for(writing, 30)
    finally:
        other.close()
    # The other's write, after the commit (made outside aiotusd: it left no mark to see).
    assert await store._db.rows("SELECT length FROM uploads WHERE id = 'a'") == [(20,)]


@contextlib.contextmanager
def write_lock_held_elsewhere(path: Path) -> Iterator[None]:
    """Another process's connection holds the database's write lock within the block."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


async def save_that_waits(store: StateStore, seconds: float) -> asyncio.Future[Upload]:
    """A save of upload ``a``'s offset 4, still waiting after ``seconds``."""
    saving = asyncio.ensure_future(store.save_progress(Upload(id="a", length=10, offset=4)))
    done, _ = await asyncio.wait([saving], timeout=seconds)
    assert not done, "the statement did not wait for the other process's lock"
    return saving


async def test_a_statement_that_finds_the_database_locked_waits_for_it_on_the_thread(
    store: StateStore, tmp_path: Path
) -> None:
    """Single statements run on the event loop's thread, which must never wait for a lock:
    while another process (of ``--workers``) holds the write lock, they go to the
    connection's thread, which waits for it (``busy_timeout``), and land once it is free."""
    await store.create(Upload(id="a", length=10))
    with write_lock_held_elsewhere(tmp_path / "state.sqlite3"):
        saving = await save_that_waits(store, 0.3)
        assert store._db._batch.here is not None  # still used for the next statements
    saved = await asyncio.wait_for(saving, 30)
    found = await store.get("a")
    assert found is not None and (found.offset, saved.offset) == (4, 4)


async def test_a_save_cancelled_while_the_database_is_locked_lands_before_it_goes_on(
    store: StateStore, tmp_path: Path
) -> None:
    """A caller cancelled while its statement waits for another process's lock is not let
    go before the statement has run: the upload's lock would be released with the offset
    not yet recorded, and the next request would read the old one."""
    await store.create(Upload(id="a", length=10))
    with write_lock_held_elsewhere(tmp_path / "state.sqlite3"):
        saving = await save_that_waits(store, 0.1)
        saving.cancel()
        done, _ = await asyncio.wait([saving], timeout=0.1)
        assert not done, "the cancelled caller went on before its statement ran"
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(saving, 30)
    found = await store.get("a")
    assert found is not None and found.offset == 4


async def test_a_statement_that_finds_the_database_locked_for_a_moment_tries_again_here(
    store: StateStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another worker's commit holds the write lock for a moment: the statement tries
    again on the event loop's thread shortly after (a round trip to the connection's
    thread hands the GIL back and forth), and lands once the lock is free."""
    await store.create(Upload(id="a", length=10))
    batch = store._db._batch
    sent_to_thread: list[object] = []
    send = batch._send_to_thread

    def counted(*arguments: Any) -> None:
        sent_to_thread.append(arguments)
        send(*arguments)

    monkeypatch.setattr(batch, "_send_to_thread", counted)
    other = sqlite3.connect(tmp_path / "state.sqlite3", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        # Before the last try (which comes LOCKED_RETRIES pauses later at the earliest).
        asyncio.get_running_loop().call_later(
            LOCKED_RETRY_SECONDS * LOCKED_RETRIES / 2, other.execute, "COMMIT"
        )
        saved = await asyncio.wait_for(store.save_progress(Upload(id="a", length=10, offset=4)), 5)
    finally:
        other.close()
    assert sent_to_thread == []
    found = await store.get("a")
    assert found is not None and (found.offset, saved.offset) == (4, 4)


async def test_the_log_of_writes_made_on_the_event_loop_is_checkpointed_and_starts_anew(
    store: StateStore, tmp_path: Path
) -> None:
    """That connection never checkpoints by itself: the database does, every few hundred
    commits, so that the log is started anew instead of growing for as long as writes
    come. Each of these commits adds a page of 4 KiB to the log."""
    commits = 5 * CHECKPOINT_EVERY
    await store.create(Upload(id="a", length=commits))
    for offset in range(1, commits + 1):
        await store.save_progress(Upload(id="a", length=commits, offset=offset))
    log_size = (tmp_path / "state.sqlite3-wal").stat().st_size
    assert log_size < 2 * CHECKPOINT_EVERY * 4096, log_size
    found = await store.get("a")
    assert found is not None and found.offset == commits


async def test_the_store_keeps_no_leases_and_refuses_a_write_that_names_one(
    store: StateStore, tmp_path: Path
) -> None:
    """Only the workers of one host share an SQLite file, and they lock uploads in the
    kernel (server/host_locks.py): the lease table of schema 4 is gone, and a write under
    a lease (meant for a store that keeps them) is refused, not run unfenced."""
    upload = Upload(id="u", length=10)
    await store.create(upload)
    with pytest.raises(ValueError, match="no leases"):
        await store.save_progress(replace(upload, offset=4), lease=7)
    with pytest.raises(ValueError, match="no leases"):
        await store.mark_gone("u", Status.TERMINATED, lease=7)
    found = await store.get("u")
    assert found is not None and (found.offset, found.status) == (0, Status.ACTIVE)
    with contextlib.closing(sqlite3.connect(tmp_path / "state.sqlite3")) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert "upload_leases" not in tables and "uploads" in tables


async def test_a_long_reader_does_not_hold_up_the_writes_at_each_checkpoint(
    store: StateStore, tmp_path: Path
) -> None:
    """Another program that reads the file for long (a backup, a query by hand) keeps the
    checkpoint from copying the whole log: the checkpoint gives up after a moment rather
    than waiting busy_timeout (5 s) while every write of the server waits behind it."""
    await store.create(Upload(id="a", length=10**6))
    reader = sqlite3.connect(tmp_path / "state.sqlite3", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM uploads").fetchall()
    try:
        started = time.monotonic()
        for offset in range(1, 2 * CHECKPOINT_EVERY + 2):  # two checkpoints
            await store.save_progress(Upload(id="a", length=10**6, offset=offset))
        took = time.monotonic() - started
    finally:
        reader.execute("COMMIT")
        reader.close()
    assert took < 5, f"{2 * CHECKPOINT_EVERY} writes took {took:.1f} s behind a reader"
    found = await store.get("a")
    assert found is not None and found.offset == 2 * CHECKPOINT_EVERY + 1


async def _steps_of_a_claim(store: StateStore, waiting: int) -> int:
    """SQLite's virtual-machine steps (in hundreds) of a claim of 4 events, with
    ``waiting`` events due, two of each upload: the work of the query itself, whatever
    the machine (a timing would not be)."""
    for number in range(waiting // 2):
        upload_id = f"w{waiting}-{number}"
        await store.create(Upload(id=upload_id, length=1), events=[
            HookEvent(f"{upload_id}-{k}", upload_id, "post-finish", b"{}") for k in (1, 2)
        ])
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0  # go on

    sqlite = store._db.connection._connection  # the connection the claims' queries run on
    assert sqlite is not None
    await store._db.connection._execute(sqlite.set_progress_handler, count, 100)
    try:
        claimed = await store.claim_events(time.time() + 1, 4, 60.0)
    finally:
        await store._db.connection._execute(sqlite.set_progress_handler, None, 0)
    assert len(claimed) == 4 and all(event.id.endswith("-1") for event in claimed)
    await store._db.connection.execute("DELETE FROM hook_outbox")
    for event in claimed:
        await store.event_delivered(event.seq)  # settles the claims: the next one is alone
    return steps


async def test_a_claim_of_hook_events_reads_what_it_claims_not_the_whole_outbox(
    store: StateStore,
) -> None:
    """A receiver that is slow or away lets thousands of events wait. The delivery claims
    a few at a time (``hooks_concurrency``): a claim that first grouped the whole outbox
    by upload cost 4.2 ms with 6,000 waiting, on every delivery, and a backlog took
    minutes to go out."""
    few, many = await _steps_of_a_claim(store, 20), await _steps_of_a_claim(store, 2000)
    assert many < 2 * few + 10, (few, many)
