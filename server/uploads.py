"""The life of an upload beyond one request: lookup, completion, assembly, removal."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from aiohttp import web

from storage_backends.base import StorageError

from .context import Context
from .errors import Gone, NotFound, TusError
from .hooks import POST_FINISH, POST_TERMINATE, PRE_FINISH
from .protocol import is_upload_id
from .state import ACTIVE, EXPIRED, REFUSED, TERMINATED, HookEvent, Upload

log = logging.getLogger("aiotusd")


def is_expired(upload: Upload, now: float | None = None) -> bool:
    return (
        upload.expires_at is not None
        and not upload.is_complete
        and upload.expires_at <= (time.time() if now is None else now)
    )


async def load(ctx: Context, upload_id: str, *, held: bool = False) -> Upload:
    """The active upload ``upload_id``, or 404 / 410 with a reason.

    An upload past its expiry is removed here, under its lock: ``held`` says that the
    caller holds it. One that another request holds is alive, whatever its clock says:
    that request is receiving its bytes, and its commit moves the expiry on.
    """
    if not is_upload_id(upload_id):
        raise NotFound("no such upload")
    upload = await ctx.store.get(upload_id)
    if upload is None:
        raise NotFound("no such upload")
    if upload.status == REFUSED:
        raise Gone(
            "upload was refused: its parts add up to more than the maximum size", code="refused"
        )
    if upload.status != ACTIVE:
        raise Gone(f"upload was {upload.status}", code=upload.status)
    if is_expired(upload):
        if not held:
            if ctx.locks.is_held(upload_id):
                return upload
            async with ctx.locks.hold(upload_id):
                return await load(ctx, upload_id, held=True)
        await remove(ctx, upload, EXPIRED)
        raise Gone("upload was expired", code=EXPIRED)
    return upload


async def remove(
    ctx: Context, upload: Upload, status: str, request: web.Request | None = None
) -> None:
    """Delete an upload's bytes and keep a tombstone with ``status``.

    The tombstone is written first: a crash in between leaves an orphaned
    file, never a live upload whose bytes are gone.

    Unfinished final uploads that wait on a removed partial can never be
    completed, so they go with it (with the same status), in the same
    transaction: a crash must not leave a final that waits for ever.

    A partial or final upload is removed under its concatenation lock (see
    :class:`~server.locks.ConcatLocks`): not while a final is assembled from it or
    created with it, nor, for a final, while it is assembled. It may be gone by the
    time the lock is had (it went with a partial): then there is nothing left to do.

    Every upload terminated here, a final that goes with its partial included,
    gets a post-terminate event; expired ones get none.
    """
    if upload.concat is None:
        await _remove(ctx, [upload], status, request)
        return
    async with ctx.concat_locks.hold(exclusive=[upload.id]):
        current = await ctx.store.get(upload.id)
        if current is None or current.status != ACTIVE:
            return
        # No final can be created with this partial now: the set is complete.
        final_ids = []
        if upload.concat == "partial":
            final_ids = await ctx.store.finals_waiting_on(upload.id)
        # Taken after the partial: the one nesting of these locks. Whoever holds a final
        # waits for no partial while holding it (an assembly takes its claim whole).
        async with ctx.concat_locks.hold(exclusive=final_ids):
            waiting = await ctx.store.get_many(tuple(final_ids))
            finals = [
                final for final in waiting.values()
                if final.status == ACTIVE and not final.is_complete
            ]
            await _remove(ctx, [current, *finals], status, request)


async def _remove(
    ctx: Context, uploads: list[Upload], status: str, request: web.Request | None
) -> None:
    """Tombstones for all of ``uploads`` in one transaction, then their bytes."""
    events: list[HookEvent] = []
    if status == TERMINATED:
        for upload in uploads:
            events += await ctx.hooks.post(POST_TERMINATE, upload, request)
    first, *others = uploads
    await ctx.store.mark_gone(first.id, status, events, also=[u.id for u in others])
    for upload in uploads:
        ctx.metrics.removed(status)
        upload.status = status
        try:
            await ctx.backend.delete(ctx.stored(upload))
        except StorageError as exc:
            # The upload is gone for clients all the same; the sweep deletes its bytes
            # again before it forgets the tombstone (see expiration.forget_tombstones).
            log.warning("deleting the bytes of upload %s failed: %s", upload.id, exc)


async def finish(ctx: Context, upload: Upload, request: web.Request) -> None:
    """Record that every byte of ``upload`` arrived, and assemble finals waiting on it.

    The pre-finish hook is asked first (not for a final upload: its parts were). When it
    refuses, the upload keeps its bytes and offset but stays unfinished: the client
    gets the hook's answer with ``Upload-Offset``, and the next PATCH or HEAD asks the
    hook again (see :func:`finish_if_full`).
    """
    await ctx.store.save_progress(upload, await complete(ctx, upload, request))
    await finished(ctx, upload, request)


async def complete(
    ctx: Context, upload: Upload, request: web.Request
) -> tuple[HookEvent, ...]:
    """The steps of :func:`finish` before its write: the pre-finish hook, the backend's
    finish, and ``upload`` marked complete. Returns the post-finish events of that write."""
    if not upload.is_final:
        try:
            await ctx.hooks.before(PRE_FINISH, upload, request)
        except TusError as exc:
            exc.headers.setdefault("Upload-Offset", str(upload.offset))
            raise
    if ctx.can.finisher is not None:
        await ctx.can.finisher.finish(ctx.stored(upload))
    upload.completed_at = time.time()
    upload.expires_at = None
    return await ctx.hooks.post(POST_FINISH, upload, request)


async def finished(ctx: Context, upload: Upload, request: web.Request) -> None:
    """The steps of :func:`finish` after its write: count it, assemble finals waiting on it."""
    ctx.metrics.uploads_finished.inc()
    if upload.concat == "partial":
        for final_id in await ctx.store.finals_waiting_on(upload.id):
            try:
                await assemble_if_ready(ctx, final_id, request)
            except Exception:
                log.exception("assembling final upload %s failed", final_id)


def is_full(upload: Upload) -> bool:
    """Whether every byte of an upload that takes bytes is stored, and it is not finished yet.

    A final upload takes none: it is finished by its assembly."""
    return not upload.is_complete and not upload.is_final and upload.offset == upload.length


async def finish_if_full(ctx: Context, upload: Upload, request: web.Request) -> None:
    """Finish an upload all of whose bytes are stored: right after its last byte arrived,
    or later, when finishing failed the first time (the store was down)."""
    if is_full(upload):
        await finish(ctx, upload, request)


async def partials_of(ctx: Context, final: Upload) -> list[Upload | None]:
    """The parts of a final upload in order; None for a part that no longer exists."""
    part_ids = await ctx.store.parts(final.id)
    found = await ctx.store.get_many(part_ids)
    return [found.get(part_id) for part_id in part_ids]


def concatenated_length(partials: Sequence[Upload | None]) -> int | None:
    """The length of a final upload, once every part's length is known."""
    total = 0
    for partial in partials:
        if partial is None or partial.length is None:
            return None
        total += partial.length
    return total


def least_concatenated_length(partials: Sequence[Upload]) -> int:
    """What a final upload's length is at least: a part of a deferred length will hold
    at least the bytes it holds now."""
    return sum(p.offset if p.length is None else p.length for p in partials)


async def assemble_if_ready(
    ctx: Context, final_id: str, request: web.Request, *, wait: bool = True
) -> bool:
    """Concatenate a final upload if all its parts are finished; True once it is.

    Without ``wait``, a final or partial that another request is working on is left to
    it: that one sees the state this caller would (a HEAD changes nothing), whereas a
    partial that just finished must wait its turn, or a final whose assembly looked
    at the partial a moment too early would never be assembled.
    """
    concatenator = ctx.can.concatenator
    assert concatenator is not None, "finals exist only with a backend that concatenates"
    part_ids = await ctx.store.parts(final_id)
    if not wait and not ctx.concat_locks.is_free([final_id], part_ids):
        return False
    async with ctx.concat_locks.hold(exclusive=[final_id], shared=part_ids):
        final = await ctx.store.get(final_id)
        if final is None or final.status != ACTIVE:
            return False
        if final.is_complete:
            return True
        found = await ctx.store.get_many(part_ids)
        partials = [found.get(part_id) for part_id in part_ids]
        gone = [p for p in partials if p is None or p.status != ACTIVE]
        if gone:
            # Left by an older aiotusd, which removed a partial and its finals one at a time:
            # a crash in between left a final that could never be finished. It goes now.
            status = gone[0].status if gone[0] is not None else TERMINATED
            log.warning("final upload %s waits on a partial upload that is %s: removing it",
                        final.id, status)
            await _remove(ctx, [final], status, request)
            return False
        length = concatenated_length(partials)
        if length is not None and ctx.settings.max_size and length > ctx.settings.max_size:
            # A part's length was deferred when the final was created: it is known now, and
            # nothing may be assembled beyond max_size.
            log.warning("final upload %s would hold %d bytes, over max_size: refusing it",
                        final.id, length)
            await _remove(ctx, [final], REFUSED, request)
            return False
        ready = [p for p in partials if p is not None and p.is_complete]
        if len(ready) != len(partials):
            return False
        final.length = length
        await concatenator.concatenate(ctx.stored(final), [ctx.stored(p) for p in ready])
        final.offset = final.length or 0
        await finish(ctx, final, request)
        return True
