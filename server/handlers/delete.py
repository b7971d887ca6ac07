"""DELETE (termination): remove an upload and its bytes."""

from __future__ import annotations

from aiohttp import web

from ..context import CONTEXT
from ..state import TERMINATED
from ..uploads import load, remove


async def handle(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    upload_id = request.match_info["upload_id"]
    await load(ctx, upload_id)
    async with ctx.locks.hold(upload_id):
        upload = await load(ctx, upload_id)
        await remove(ctx, upload, TERMINATED)
    return web.Response(status=204)
