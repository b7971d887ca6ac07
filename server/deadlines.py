"""Deadlines that nearly every request sets and nearly none reaches, kept by one timer.

A request's header clock (:mod:`server.connections`) and its body's stall check
(:mod:`server.receive`) each need a deadline, and each is nearly always called off long
before it is due. An asyncio timer each is a handle made, pushed onto the event loop's
heap and taken off again, every comparison on the way a call in Python: with 32 small
uploads at once, 0.6-1.7 % of each one's instructions. Here a deadline is an entry in a
set, and one timer, running while any are watched, looks at them all every
``resolution`` seconds: a deadline is met up to that late, which for timeouts of
seconds is nothing. A look costs well under a microsecond a deadline: with 10,000 bodies
arriving at once and the default timeouts (one look a second), under 1 % of a core.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

log = logging.getLogger("aiotusd")

MAX_RESOLUTION = 1.0
"""Seconds between two looks at most: a timeout of ten seconds is met within a tenth."""


class Deadline(Protocol):
    def due(self, now: float) -> bool:
        """Called at each look while watched, ``now`` the event loop's time: act if the
        deadline has passed, and say whether it has (it is then watched no more)."""


class Deadlines:
    """The deadlines watched, and the one timer that looks at them."""

    def __init__(self, shortest: float) -> None:
        """``shortest``: the shortest timeout to be watched, met within a tenth of it."""
        self.resolution = min(MAX_RESOLUTION, shortest / 10)
        self._watched: set[Deadline] = set()
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, deadline: Deadline) -> None:
        self._watched.add(deadline)
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.resolution, self._look, loop)

    def unwatch(self, deadline: Deadline) -> None:
        self._watched.discard(deadline)

    def _look(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        for deadline in list(self._watched):
            if deadline not in self._watched:  # called off by one met before it
                continue
            try:
                met = deadline.due(now)
            except Exception:
                log.exception("a deadline failed as it was met")
                met = True
            if met:
                self._watched.discard(deadline)
        if self._watched:
            self._timer = loop.call_later(self.resolution, self._look, loop)
