"""One timer for many deadlines (server/deadlines.py): each is met once it is due, within
the resolution; one called off is never met; one that fails does not stop the others;
and nothing runs while nothing is watched."""

from __future__ import annotations

import asyncio

from server.deadlines import MAX_RESOLUTION, Deadlines


class At:
    """A deadline at the event loop's time ``when``; ``met`` is set when it is met."""

    def __init__(self, when: float, fails: bool = False) -> None:
        self.when = when
        self.fails = fails
        self.met = asyncio.Event()
        self.met_at: float | None = None
        self.looks = 0

    def due(self, now: float) -> bool:
        self.looks += 1
        if now < self.when:
            return False
        self.met_at = now
        self.met.set()
        if self.fails:
            raise RuntimeError("this deadline fails")
        return True


def test_the_resolution_is_a_tenth_of_the_shortest_timeout_and_at_most_a_second() -> None:
    assert Deadlines(0.2).resolution == 0.02
    assert Deadlines(60).resolution == MAX_RESOLUTION == 1.0


async def test_a_deadline_is_met_once_due_within_the_resolution() -> None:
    deadlines = Deadlines(0.1)
    loop = asyncio.get_running_loop()
    deadline = At(loop.time() + 0.05)
    deadlines.watch(deadline)
    await asyncio.wait_for(deadline.met.wait(), 5)
    assert deadline.met_at is not None
    assert deadline.when <= deadline.met_at <= deadline.when + 0.5
    looks = deadline.looks
    met_later = At(loop.time() + 0.03)  # keeps the timer going: the first is not looked at
    deadlines.watch(met_later)
    await asyncio.wait_for(met_later.met.wait(), 5)
    assert deadline.looks == looks


async def test_a_deadline_called_off_is_never_met_and_a_failing_one_stops_no_other() -> None:
    deadlines = Deadlines(0.1)
    loop = asyncio.get_running_loop()
    called_off = At(loop.time() + 0.02)
    failing = At(loop.time() + 0.02, fails=True)
    later = At(loop.time() + 0.06)
    for deadline in (called_off, failing, later):
        deadlines.watch(deadline)
    deadlines.unwatch(called_off)
    await asyncio.wait_for(later.met.wait(), 5)
    assert failing.met.is_set() and failing.looks >= 1
    assert called_off.looks == 0 and not called_off.met.is_set()


async def test_the_timer_stops_when_nothing_is_watched_and_starts_again() -> None:
    deadlines = Deadlines(0.1)
    loop = asyncio.get_running_loop()
    first = At(loop.time() + 0.01)
    deadlines.watch(first)
    await asyncio.wait_for(first.met.wait(), 5)
    # The look that met it found nothing else: no timer is left on the loop.
    assert deadlines._timer is None
    again = At(loop.time() + 0.01)
    deadlines.watch(again)
    assert deadlines._timer is not None
    await asyncio.wait_for(again.met.wait(), 5)
