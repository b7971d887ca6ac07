"""Upload locks: one holder per upload, take-over on request, 423 when the holder hangs on;
concatenation locks: exclusive and shared, taken whole, in order of arrival."""

from __future__ import annotations

import asyncio

import pytest

from server.errors import Locked
from server.locks import ConcatLocks, UploadLocks


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
