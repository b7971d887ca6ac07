"""The background sweep that deletes expired unfinished uploads and forgets old tombstones."""

from __future__ import annotations

import asyncio
import logging
import time

from storage_backends.base import StorageError

from .context import Context
from .errors import Locked
from .state import EXPIRED, DatabaseUnavailable
from .uploads import is_expired, remove

log = logging.getLogger("aiotusd")
BATCH = 100


async def sweep(ctx: Context) -> int:
    """Expire what is due now; returns how many uploads were removed."""
    now = time.time()
    removed = 0
    for upload_id in await ctx.store.expired_ids(now, BATCH):
        if await ctx.locks.is_held(upload_id):
            # A request is writing to it right now: it is alive, whatever its clock says.
            continue
        try:
            async with ctx.locks.hold(upload_id) as holder:
                upload = await ctx.store.get(upload_id)
                if upload is not None and is_expired(upload, now):
                    await remove(ctx, upload, EXPIRED, holder=holder)
                    removed += 1
        except Locked:
            continue
    await forget_tombstones(ctx, now - ctx.settings.uploads.gone_retention)
    return removed


async def forget_tombstones(ctx: Context, before: float) -> None:
    """Forget tombstones older than ``before``, deleting their bytes once more first.

    Deleting is idempotent, and this second try is what cleans up after a removal
    whose delete failed (the store was down): nothing stays orphaned in storage.
    """
    forgettable = []
    for upload in await ctx.store.gone_before(before, BATCH):
        try:
            await ctx.backend.delete(ctx.stored(upload))
        except StorageError as exc:
            log.warning("deleting the bytes of upload %s failed again: %s", upload.id, exc)
            continue
        forgettable.append(upload.id)
    await ctx.store.forget(forgettable)


async def run_sweeper(ctx: Context) -> None:
    while True:
        await asyncio.sleep(ctx.settings.uploads.expiry_interval)
        try:
            removed = await sweep(ctx)
        except DatabaseUnavailable as exc:
            log.warning("expiration sweep failed: %s", exc)
            continue
        except Exception:
            log.exception("expiration sweep failed")
            continue
        if removed:
            log.info("expired %d unfinished uploads", removed)
