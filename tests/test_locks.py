"""Upload locks: one holder per upload, take-over on request, 423 when the holder hangs on."""

from __future__ import annotations

import asyncio

import pytest

from server.errors import Locked
from server.locks import UploadLocks


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
