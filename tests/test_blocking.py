"""The threads that run blocking calls (fdatasync, a directory's fsync) for the event loop
(storage_backends/blocking.py)."""

from __future__ import annotations

import asyncio
import errno
import multiprocessing
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from storage_backends.blocking import CALLS, BlockingCalls

T = TypeVar("T")


async def on_thread(calls: BlockingCalls, function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` on one of ``calls``' threads, awaited as the syncs await it."""
    return await calls.submit(function, *args)


async def test_a_call_returns_its_result_and_raises_its_error() -> None:
    calls = BlockingCalls(threads=2)
    assert await on_thread(calls, threading.current_thread) is not threading.current_thread()

    def failing() -> None:
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError, match="Input/output error"):
        await on_thread(calls, failing)


async def test_calls_run_side_by_side() -> None:
    """Syncs of different files must not queue behind one another: a journaling file
    system commits the ones that run together at once."""
    calls = BlockingCalls(threads=3)
    barrier = threading.Barrier(3, timeout=10)
    # Each waits for the other two: this returns only if all three run at the same time.
    assert await asyncio.wait_for(asyncio.gather(*(on_thread(calls, barrier.wait) for _ in range(3))),
                                  20) is not None


async def test_a_cancelled_caller_waits_for_its_call_to_end() -> None:
    """A sync still running must not find its file closed by a caller that went on."""
    calls = BlockingCalls(threads=1)
    started, release = threading.Event(), threading.Event()
    ended: list[bool] = []

    def held() -> None:
        started.set()
        assert release.wait(10)
        ended.append(True)

    caller = asyncio.ensure_future(on_thread(calls, held))
    assert await asyncio.to_thread(started.wait, 10)
    caller.cancel()
    done, _ = await asyncio.wait([caller], timeout=0.2)
    assert not done, "the caller went on while its call ran"
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(caller, 10)
    assert ended == [True]


def _call_in_child(results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    results.put(asyncio.run(on_thread(CALLS, os.getpid)))


async def test_a_forked_process_gets_threads_of_its_own() -> None:
    """Threads do not survive a fork (--workers forks the supervisor): a worker's first call
    starts them anew instead of waiting for ever on threads it does not have."""
    await on_thread(CALLS, os.getpid)  # this process has its threads
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_call_in_child, args=(results,))
    child.start()
    try:
        child.join(20)
        assert child.exitcode == 0
    finally:
        if child.is_alive():
            child.kill()
    assert results.get(timeout=5) == child.pid
