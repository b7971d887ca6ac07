"""DELETE (termination): remove an upload and its bytes."""

from __future__ import annotations

from aiohttp import web

from ..context import CONTEXT
from ..hooks import PRE_ACCESS, PRE_TERMINATE
from ..state import TERMINATED
from ..uploads import load, remove


async def handle(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    upload_id = request.match_info["upload_id"]
    upload = await load(ctx, upload_id)
    # Outside the lock: a hook that takes its time must not hold up the upload's requests.
    await ctx.hooks.before(PRE_ACCESS, upload, request)
    await ctx.hooks.before(PRE_TERMINATE, upload, request)
    async with ctx.locks.hold(upload_id):
        upload = await load(ctx, upload_id, held=True)
        await remove(ctx, upload, TERMINATED, request)
    return web.Response(status=204)
