"""Blocking calls that must not hold up the event loop, on threads of their own: the syncs
that the kernel does not take as asynchronous requests (:mod:`.kernel_syncs`).

``asyncio.to_thread`` goes through ``concurrent.futures``: a future with a condition
variable, the executor's locks and semaphore, and an asyncio future chained to it. Measured
with callgrind, that cost a small upload with ``fsync always`` more instructions than its
steps in Python. Here a call is one put on a :class:`queue.SimpleQueue` and one
``call_soon_threadsafe`` back. Several threads take calls, so that the syncs of different
files run side by side: a journaling file system commits those together.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

THREADS = min(32, (os.cpu_count() or 1) + 4)
"""As many as asyncio's default executor would run."""

_Call = tuple[asyncio.AbstractEventLoop, "Uncancellable[Any]", Callable[..., Any], tuple[Any, ...]]


class Uncancellable(asyncio.Future[T]):
    """A future that the cancellation of the task waiting for it does not cancel: asyncio's
    ``Task.cancel`` then leaves the task waiting, and raises ``CancelledError`` in it once
    the future is settled. So a cancelled caller waits for the work it started to have
    run (a sync, a database write), at no cost to the callers that are not cancelled;
    ``asyncio.shield`` cost each a future more, two callbacks and a turn of the event loop.
    """

    def cancel(self, msg: Any | None = None) -> bool:
        return False

    def abandon(self) -> None:
        """Cancel it after all: the event loop is closing, and nothing will settle it."""
        super().cancel()


class BlockingCalls:
    """Threads that run blocking calls for the event loop, started at the first call (and
    again in a process forked from one that had them: threads do not survive a fork)."""

    def __init__(self, threads: int = THREADS) -> None:
        self._count = threads
        self._calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._started = False
        os.register_at_fork(after_in_child=self._forget_threads)

    def submit(self, function: Callable[..., T], *args: Any) -> Uncancellable[T]:
        """``function(*args)`` sent to one of the threads; settled with what it returned or
        raised, unless something settled it first (a deadline: see :mod:`.kernel_syncs`).
        A cancelled caller waits for the call to have run all the same: a sync still
        running must not find its file closed."""
        if not self._started:
            self._start()
        done: Uncancellable[T] = Uncancellable(loop=asyncio.get_running_loop())
        self._calls.put((done.get_loop(), done, function, args))
        return done

    def _start(self) -> None:
        for number in range(self._count):
            threading.Thread(
                target=self._work, name=f"aiotusd-sync-{number}", daemon=True
            ).start()
        self._started = True

    def _forget_threads(self) -> None:
        self._calls = queue.SimpleQueue()
        self._started = False

    def _work(self) -> None:
        calls = self._calls
        while True:
            loop, done, function, args = calls.get()
            try:
                outcome: tuple[bool, Any] = (True, function(*args))
            except Exception as exc:  # noqa: BLE001 -- the call's own error: the caller's
                outcome = (False, exc)
            with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, done, outcome)


def _settle(done: Uncancellable[Any], outcome: tuple[bool, Any]) -> None:
    succeeded, value = outcome
    if done.done():  # given up on (a deadline): nobody waits for it any more
        return
    if succeeded:
        done.set_result(value)
    else:
        done.set_exception(value)


CALLS = BlockingCalls()
"""This process's threads for blocking calls."""
