"""Waiting on a condition with a deadline: the tests never sleep and hope."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def poll(
    probe: Callable[[], Awaitable[T] | T], what: str, timeout: float = 10.0, interval: float = 0.02
) -> T:
    """Call ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


async def wait_until_past(timestamp: float, timeout: float = 5.0) -> None:
    """Wait on the wall clock until ``timestamp`` has passed, bounded by ``timeout``."""
    await poll(lambda: time.time() > timestamp, f"the clock to pass {timestamp}", timeout=timeout)


def wait_for(condition: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    """Blocking :func:`poll`, for threads and code outside the event loop; returns the value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
