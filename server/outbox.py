"""Delivery of post-hook events from the outbox: at least once, in order per upload.

Events reach the outbox in the transaction of the change they report (a promise
of every store, see :mod:`server.state.interface`), so one that was recorded is sent
however the server stopped. The worker sends the oldest event of each upload, and the
next one of that upload only once it was delivered or given up on. A failed
attempt (no answer, or not 2xx) is retried after ``hooks_retry_delay``,
doubled for each further attempt up to :data:`MAX_DELAY` and jittered, until
``hooks_max_attempts`` or ``hooks_max_age`` says the event is dead. Dead events
stay in the outbox for ``aiotusd hooks list --dead`` and ``aiotusd hooks retry``.
Several servers may deliver from one outbox (on PostgreSQL): each sends only the
events its store claimed, so none is sent by two at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import TYPE_CHECKING

from .errors import one_line
from .hooks import HookCallError, Hooks
from .metrics import Metrics
from .state import DatabaseUnavailable, HookEvent, Outbox

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger("aiotusd")

MAX_DELAY = 600.0
"""The longest wait between two attempts, in seconds."""
IDLE_POLL = 5.0
"""With nothing due, look at the outbox this often anyway: ``aiotusd hooks retry``, and
other servers on a shared database, run in other processes and cannot wake this one."""
CLAIM_MARGIN = 60.0
"""Seconds a claim on an event lasts beyond ``hooks_timeout``: time enough to record how
its delivery went. A process that dies delivering gives its events up after that."""


class Delivery:
    def __init__(
        self, settings: Settings, hooks: Hooks, store: Outbox, metrics: Metrics
    ) -> None:
        self._settings = settings
        self._hooks = hooks
        self._store = store
        self._metrics = metrics
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        """Deliveries under way, by upload: one at a time per upload keeps its events in order
        (and the store's claims keep other processes off them)."""
        self._lease = settings.hooks.timeout + CLAIM_MARGIN
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop sending; give deliveries in flight up to ``hooks_timeout`` to end.

        What they do not finish stays in the outbox and goes out after a restart.
        """
        self._stopping = True
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        tasks = list(self._in_flight.values())
        if tasks:
            await asyncio.wait(tasks, timeout=self._settings.hooks.timeout)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        changed = self._store.outbox_changed
        while not self._stopping:
            changed.clear()
            try:
                wait = await self._start_due()
            except DatabaseUnavailable as exc:
                log.warning("reading the hook outbox failed: %s", exc)
                wait = IDLE_POLL
            except Exception:
                log.exception("reading the hook outbox failed")
                wait = IDLE_POLL
            # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that comes as
            # the event is set, and stop() would then wait for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await changed.wait()

    async def _start_due(self) -> float:
        """Start what is due; returns how long until something else may be."""
        free = self._settings.hooks.concurrency - len(self._in_flight)
        if free <= 0:
            return IDLE_POLL  # a delivery that ends sets outbox_changed
        claimed = await self._store.claim_events(time.time(), free, self._lease)
        for event in claimed:
            # An upload still in flight here had its last event settled (or its lease ran
            # out) as this claim ran: this one goes out once that delivery has ended.
            previous = self._in_flight.get(event.upload_id)
            self._in_flight[event.upload_id] = asyncio.create_task(self._deliver(event, previous))
        if len(claimed) == free:
            # Every free place taken: more may be due now, and the next claim is made as
            # soon as a delivery ends, without asking when (a scan of the whole outbox).
            return IDLE_POLL
        due = await self._store.next_event_due(time.time())
        return IDLE_POLL if due is None else min(max(due - time.time(), 0.0), IDLE_POLL)

    async def _deliver(self, event: HookEvent, after: asyncio.Task[None] | None = None) -> None:
        if after is not None:
            await asyncio.wait([after])
        try:
            try:
                reply = await self._hooks.call(event.type, event.id, event.payload)
                error = "" if 200 <= reply.status < 300 else f"answered {reply.status}"
            except HookCallError as exc:
                error = str(exc)
            if error:
                self._schedule_retry(event, error)
                await self._store.event_failed(event)
                self._metrics.hook_delivery(event.type, "dead" if event.dead else "failed")
            else:
                await self._store.event_delivered(event.seq)
                self._metrics.hook_delivery(event.type, "delivered")
        except DatabaseUnavailable as exc:
            # Delivered or not, it is due again once its claim lapses: at least once.
            log.warning("recording the delivery of %s event %s failed: %s",
                        event.type, event.id, exc)
        except Exception:
            log.exception("delivering %s event %s failed", event.type, event.id)
        finally:
            if self._in_flight.get(event.upload_id) is asyncio.current_task():
                del self._in_flight[event.upload_id]
            self._store.outbox_changed.set()

    def _schedule_retry(self, event: HookEvent, error: str) -> None:
        settings = self._settings
        event.attempts += 1
        event.last_error = one_line(error)
        delay = min(settings.hooks.retry_delay * 2 ** min(event.attempts - 1, 30), MAX_DELAY)
        event.next_attempt_at = time.time() + delay * random.uniform(0.5, 1.0)
        event.dead = (
            event.attempts >= settings.hooks.max_attempts
            or event.next_attempt_at - event.since > settings.hooks.max_age
        )
        if event.dead:
            log.error(
                "%s event %s of upload %s is dead after %d attempts: %s (aiotusd hooks retry %s)",
                event.type, event.id, event.upload_id, event.attempts, event.last_error, event.id,
            )
        else:
            log.warning(
                "%s event %s of upload %s: attempt %d failed: %s",
                event.type, event.id, event.upload_id, event.attempts, event.last_error,
            )
