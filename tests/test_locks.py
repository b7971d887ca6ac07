"""Upload locks: one holder per upload, take-over on request, 423 when the holder hangs on,
within a process and across processes (kernel locks for the workers of one host, leases
in PostgreSQL); concatenation locks: exclusive and shared, taken whole, in order of
arrival."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from server.config import Settings
from server.database import shared_locks
from server.errors import ConfigError, Locked
from server.host_locks import ASKED_POLL_SECONDS, HostLocks, byte_of
from server.leases import LeaseKeeper
from server.locks import ConcatLocks, Holder, SharedLocks, UploadLocks
from server.state import LeaseLost, PostgresStore, SQLiteStore, Store, Upload


async def test_a_new_request_asks_the_holder_to_let_go() -> None:
    locks = UploadLocks(timeout=5)
    asked = asyncio.Event()
    holding = asyncio.Event()

    async def stale_request() -> None:
        async with locks.hold("u") as holder:
            holder.on_release_request(asked.set)
            holding.set()
            await asyncio.wait_for(asked.wait(), 5)

    stale = asyncio.create_task(stale_request())
    await asyncio.wait_for(holding.wait(), 5)
    async with locks.hold("u") as holder:
        assert asked.is_set() and holder.release_requested is False
    await asyncio.wait_for(stale, 5)


async def test_a_holder_that_does_not_let_go_gives_423() -> None:
    locks = UploadLocks(timeout=0.2)
    async with locks.hold("u"):
        with pytest.raises(Locked):
            async with locks.hold("u"):
                pass
    async with locks.hold("u"):
        pass


async def test_locks_of_different_uploads_are_independent() -> None:
    locks = UploadLocks(timeout=0)
    async with locks.hold("a"), locks.hold("b") as holder_b:
        assert holder_b.release_requested is False


async def test_release_all_reaches_every_holder_even_one_registering_late() -> None:
    locks = UploadLocks(timeout=1)
    calls: list[str] = []
    async with locks.hold("a") as a, locks.hold("b") as b:
        a.on_release_request(lambda: calls.append("a"))
        locks.release_all()
        b.on_release_request(lambda: calls.append("b"))
    assert calls == ["a", "b"]


# --- across processes: two stores on one database, each with its own shared locks -------
#
# Each "process" here is a store and shared locks of its own in this one: the kernel locks
# of HostLocks belong to an open file description, not to a process, so two of them in
# one process exclude each other as two workers do.


ProcessLocks = Callable[..., Awaitable[tuple[UploadLocks, Store]]]
"""``await process_locks(timeout, lease)``: the upload locks of one more process on the
test's one database (``lease``: the length of its leases, where it has leases)."""


@contextlib.asynccontextmanager
async def _processes(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest | None = None
) -> AsyncIterator[ProcessLocks]:
    """The workers of one host on SQLite (``host``), or processes on PostgreSQL (whose
    fixture ``request`` gives)."""
    stores: list[Store] = []
    started: list[UploadLocks] = []

    async def make(timeout: float = 5.0, lease: float = 10.0) -> tuple[UploadLocks, Store]:
        shared: SharedLocks
        if kind == "host":
            store: Store = await SQLiteStore.open(tmp_path / "state.sqlite3")
            shared = HostLocks(store, tmp_path / "state.sqlite3.upload-locks")
        else:
            assert request is not None
            url = request.getfixturevalue("postgres_url")
            postgres = await PostgresStore.open(url, url)
            store, shared = postgres, LeaseKeeper(postgres, lease)
        stores.append(store)
        locks = UploadLocks(timeout, shared)
        locks.start()
        started.append(locks)
        return locks, store

    try:
        yield make
    finally:
        for locks in started:
            await locks.stop()
        for store in stores:
            await store.close()


@pytest.fixture(params=[
    pytest.param("host"), pytest.param("postgresql", marks=pytest.mark.postgres)
])
async def process_locks(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[ProcessLocks]:
    async with _processes(request.param, tmp_path, request) as make:
        yield make


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres)])
async def lease_locks(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[ProcessLocks]:
    """``process_locks`` of processes that share leases in a database."""
    async with _processes(request.param, tmp_path, request) as make:
        yield make


class _Stale:
    """A request that holds an upload in one process until it is told to stop (never,
    unless ``lets_go``), as a stalled PATCH does."""

    def __init__(self, locks: UploadLocks, upload_id: str, lets_go: bool = True) -> None:
        self.holding = asyncio.Event()
        self.stopped = asyncio.Event()
        self._leave = asyncio.Event()
        self.holder: Holder | None = None
        self.task = asyncio.create_task(self._hold(locks, upload_id, lets_go))

    async def _hold(self, locks: UploadLocks, upload_id: str, lets_go: bool) -> None:
        async with locks.hold(upload_id) as holder:
            self.holder = holder
            holder.on_release_request(self.stopped.set)
            self.holding.set()
            await (self.stopped if lets_go else self._leave).wait()

    async def leave(self) -> None:
        self._leave.set()
        await asyncio.wait_for(self.task, 5)


async def _stale(locks: UploadLocks, upload_id: str, lets_go: bool = True) -> _Stale:
    stale = _Stale(locks, upload_id, lets_go)
    await asyncio.wait_for(stale.holding.wait(), 5)
    return stale


async def test_a_holder_in_another_process_is_asked_to_let_go(
    process_locks: ProcessLocks
) -> None:
    (here, _), (there, _) = await process_locks(), await process_locks()
    stale = await _stale(there, "u")
    started = time.monotonic()
    async with here.hold("u") as holder:
        took = time.monotonic() - started
        assert stale.stopped.is_set()
        assert holder is not None
    assert took < 2, f"the take-over across processes took {took:.2f} s"
    await asyncio.wait_for(stale.task, 5)


async def test_a_holder_of_this_process_is_told_directly_even_with_leases(
    process_locks: ProcessLocks
) -> None:
    locks, _ = await process_locks()
    stale = await _stale(locks, "u")
    started = time.monotonic()
    async with locks.hold("u"):
        took = time.monotonic() - started
    assert stale.stopped.is_set()
    assert took < 0.1, f"a take-over within the process took {took:.3f} s"


async def test_a_holder_in_another_process_that_does_not_let_go_gives_423(
    process_locks: ProcessLocks
) -> None:
    (here, _), (there, _) = await process_locks(timeout=0.5), await process_locks()
    stale = await _stale(there, "u", lets_go=False)
    started = time.monotonic()
    with pytest.raises(Locked):
        async with here.hold("u"):
            pass
    assert 0.5 <= time.monotonic() - started < 2
    assert stale.stopped.is_set()  # it was asked, and did not let go
    assert await here.is_held("u")
    await stale.leave()
    assert not await here.is_held("u")
    async with here.hold("u"):
        pass


async def lapse_leases(store: Store) -> None:
    """Make every lease in the database lapse now, as the holder's being paused would."""
    assert isinstance(store, PostgresStore)
    await store._db.write(
        lambda connection: connection.execute("UPDATE upload_leases SET expires_at = 0")
    )


async def test_a_holder_whose_lease_was_taken_over_stops_and_records_nothing(
    lease_locks: ProcessLocks
) -> None:
    (here, store), (there, _) = await lease_locks(), await lease_locks(lease=1.5)
    await store.create(Upload(id="u", length=10))
    stale = await _stale(there, "u", lets_go=False)
    await lapse_leases(store)
    async with here.hold("u") as holder:
        assert not stale.stopped.is_set()  # a lapsed lease is taken without asking
        # The stale holder's renewal finds its lease gone: it is stopped at once ...
        await asyncio.wait_for(stale.stopped.wait(), 5)
        assert stale.holder is not None
        with pytest.raises(LeaseLost):
            stale.holder.check()
        # ... and whatever it still writes records nothing.
        upload = await store.get("u")
        assert upload is not None
        with pytest.raises(LeaseLost):
            await store.save_progress(upload, lease=stale.holder.token)
        await store.save_progress(upload, lease=holder.token)
    await stale.leave()


async def test_a_holder_that_cannot_renew_its_lease_stops_before_it_lapses(
    lease_locks: ProcessLocks
) -> None:
    """A paused process, or one that lost the database: its holders stop by their own
    clock, before the database lets another process take the upload."""
    (here, _), (there, _) = await lease_locks(), await lease_locks(lease=1)
    stale = await _stale(there, "u", lets_go=False)
    await there.stop()  # no renewal from now on
    assert stale.holder is not None
    taken_over = time.monotonic()
    async with here.hold("u"):
        taken_over = time.monotonic()
    assert stale.holder.deadline <= taken_over
    with pytest.raises(LeaseLost):
        stale.holder.check()
    await stale.leave()


# --- the workers of one host: kernel locks ------------------------------------------


_CHILD = """
import fcntl, os, sys
from server.host_locks import _FLOCK
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
kind = fcntl.F_WRLCK if sys.argv[3] == "write" else fcntl.F_RDLCK
fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(kind, os.SEEK_SET, int(sys.argv[2]), 1, 0))
print("locked", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def _locked_by_a_process(path: Path, byte: int, kind: str) -> Iterator[subprocess.Popen[str]]:
    """Another process that locks ``byte`` of the lock file (``write``: holds the upload
    whose byte it is; ``read`` on the byte after: asks for it) until it is killed."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), str(byte), kind],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "locked\n"
        yield child
    finally:
        child.kill()
        child.wait(10)


async def test_a_worker_killed_while_it_holds_an_upload_leaves_it_free_at_once(
    tmp_path: Path,
) -> None:
    """The kernel drops the locks of a process that ends, ``kill -9`` included: no lease
    to wait out."""
    async with _processes("host", tmp_path) as process_locks:
        here, _ = await process_locks(timeout=0.3)
        path = tmp_path / "state.sqlite3.upload-locks"
        with _locked_by_a_process(path, byte_of("u"), "write") as holder:
            with pytest.raises(Locked):
                async with here.hold("u"):
                    pass
            assert await here.is_held("u")
            holder.kill()
            holder.wait(10)
            started = time.monotonic()
            async with here.hold("u"):
                assert time.monotonic() - started < 0.05
        assert not await here.is_held("u")


async def test_a_holder_is_asked_by_a_waiter_in_another_process_and_not_after_it_died(
    tmp_path: Path,
) -> None:
    """A waiter's ask is a lock of its process: the holder sees it within a poll, and
    once the waiter is gone (killed even) nobody is asked any more."""
    async with _processes("host", tmp_path) as process_locks:
        locks, _ = await process_locks()
        path = tmp_path / "state.sqlite3.upload-locks"
        stale = await _stale(locks, "u")
        with _locked_by_a_process(path, byte_of("u") + 1, "read"):
            await asyncio.wait_for(stale.stopped.wait(), 4 * ASKED_POLL_SECONDS)
        await asyncio.wait_for(stale.task, 5)
        kept = await _stale(locks, "u")
        await asyncio.sleep(3 * ASKED_POLL_SECONDS)  # three polls that find no ask
        assert not kept.stopped.is_set()
        kept.stopped.set()
        await asyncio.wait_for(kept.task, 5)


async def test_the_shared_locks_are_chosen_at_start_by_the_database_and_the_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One process on SQLite keeps its locks to itself; its workers share kernel locks on
    a file beside the database, which needs Linux (told at start, in one line)."""
    one = Settings().with_values(data_dir=str(tmp_path))
    store = await SQLiteStore.open(one.storage.database_path)
    try:
        assert shared_locks(one, store) is None
        workers = one.with_values(workers=2)
        chosen = shared_locks(workers, store)
        assert isinstance(chosen, HostLocks)
        assert chosen.path == tmp_path / "aiotusd.sqlite3.upload-locks"
        monkeypatch.delattr(fcntl, "F_OFD_SETLK")
        with pytest.raises(ConfigError, match="'workers'.*open file description locks"):
            shared_locks(workers, store)
    finally:
        await store.close()


class _Claimant:
    """A task that holds a claim on ``locks`` from when it gets it until :meth:`leave`."""

    def __init__(self, locks: ConcatLocks, **claim: list[str]) -> None:
        self.entered = asyncio.Event()
        self._leave = asyncio.Event()
        self.task = asyncio.create_task(self._hold(locks, claim))

    async def _hold(self, locks: ConcatLocks, claim: dict[str, list[str]]) -> None:
        async with locks.hold(**claim):
            self.entered.set()
            await self._leave.wait()

    def leave(self) -> None:
        self._leave.set()


async def _enter(locks: ConcatLocks, **claim: list[str]) -> _Claimant:
    """A claimant that has got its claim, or waits for it."""
    claimant = _Claimant(locks, **claim)
    await asyncio.sleep(0)  # runs until it holds the claim or waits for it
    return claimant


async def test_concat_locks_share_readers_and_exclude_a_writer() -> None:
    locks = ConcatLocks()
    reader_a = await _enter(locks, shared=["p"])
    reader_b = await _enter(locks, shared=["p"])
    assert reader_a.entered.is_set() and reader_b.entered.is_set()
    writer = await _enter(locks, exclusive=["p"])
    assert not writer.entered.is_set()
    # A reader that comes after the waiting writer waits behind it: no starvation.
    late_reader = await _enter(locks, shared=["p"])
    assert not late_reader.entered.is_set()
    # An unrelated claim goes in at once.
    other = await _enter(locks, exclusive=["q"])
    assert other.entered.is_set()
    reader_a.leave()
    reader_b.leave()
    await asyncio.wait_for(writer.entered.wait(), 5)
    assert not late_reader.entered.is_set()
    writer.leave()
    await asyncio.wait_for(late_reader.entered.wait(), 5)
    late_reader.leave()
    other.leave()
    everyone = (reader_a, reader_b, writer, late_reader, other)
    await asyncio.wait_for(asyncio.gather(*(c.task for c in everyone)), 5)
    assert locks.is_free(["p", "q"])


async def test_a_concat_claim_is_taken_whole_so_overlapping_claims_cannot_deadlock() -> None:
    locks = ConcatLocks()
    first = await _enter(locks, exclusive=["b"])
    # Waits for b, and holds nothing of its claim meanwhile.
    both = await _enter(locks, exclusive=["b", "a"])
    assert not both.entered.is_set()
    assert not locks.is_free(["a"])  # behind the waiter it conflicts with, in order
    first.leave()
    await asyncio.wait_for(both.entered.wait(), 5)
    both.leave()
    await asyncio.wait_for(asyncio.gather(first.task, both.task), 5)
    assert locks.is_free(["a", "b"])


async def test_a_cancelled_concat_waiter_lets_those_behind_it_in() -> None:
    locks = ConcatLocks()
    holder = await _enter(locks, shared=["p"])
    writer = await _enter(locks, exclusive=["p"])
    reader = await _enter(locks, shared=["p"])
    assert not reader.entered.is_set()
    writer.task.cancel()
    await asyncio.wait_for(reader.entered.wait(), 5)
    holder.leave()
    reader.leave()
    await asyncio.wait_for(asyncio.gather(holder.task, reader.task), 5)
    with pytest.raises(asyncio.CancelledError):
        await writer.task
    assert locks.is_free(["p"])
