"""HEAD: where an upload stands, so a client knows where to resume."""

from __future__ import annotations

from aiohttp import web

from ..context import CONTEXT, Context
from ..hooks import PRE_ACCESS
from ..protocol import http_date
from ..proxy import external_path
from ..state import Upload
from ..uploads import (
    assemble_if_ready,
    concatenated_length,
    finish_if_full,
    load,
    partials_of,
)


async def upload_headers(ctx: Context, upload: Upload, request: web.Request) -> dict[str, str]:
    headers = {"Cache-Control": "no-store"}
    length = upload.length
    if upload.is_final:
        base = external_path(request, ctx.settings.base_path)
        parts = await ctx.store.parts(upload.id)
        headers["Upload-Concat"] = "final;" + " ".join(base + part for part in parts)
        if length is None:
            length = concatenated_length(await partials_of(ctx, upload))
    elif upload.concat:
        headers["Upload-Concat"] = upload.concat
    if not upload.is_final or upload.is_complete:
        headers["Upload-Offset"] = str(upload.offset)
    if length is not None:
        headers["Upload-Length"] = str(length)
    elif upload.defer_length:
        headers["Upload-Defer-Length"] = "1"
    if upload.metadata:
        headers["Upload-Metadata"] = upload.metadata
    if upload.expires_at is not None and not upload.is_complete:
        headers["Upload-Expires"] = http_date(upload.expires_at)
    return headers


async def handle(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    upload_id = request.match_info["upload_id"]
    upload = await load(ctx, upload_id)
    await ctx.hooks.before(PRE_ACCESS, upload, request)
    if not upload.is_complete and (
        ctx.locks.is_held(upload_id) or upload.is_final or upload.offset == upload.length
    ):
        # Taking the lock makes a PATCH on this upload (a stale one, maybe) record its bytes
        # first. Without one, the row just read is current, and only a full upload or a
        # final one has anything left to do.
        async with ctx.locks.hold(upload_id):
            upload = await load(ctx, upload_id, held=True)
            await finish_if_full(ctx, upload, request)
            # A crash between the last part's finish and the assembly leaves a final whose
            # parts are all finished but which nothing else would ever assemble.
            # And a final one of whose parts is gone is removed (410).
            if upload.is_final:
                await assemble_if_ready(ctx, upload_id, request, wait=False)
                upload = await load(ctx, upload_id, held=True)
    return web.Response(status=200, headers=await upload_headers(ctx, upload, request))
