"""HEAD: where an upload stands, so a client knows where to resume."""

from __future__ import annotations

from aiohttp import web

from ..concatenation import concatenated_length, partials_of
from ..context import CONTEXT, Context
from ..protocol import http_date
from ..proxy import external_path
from ..state import Upload
from ..uploads import current


async def upload_headers(ctx: Context, upload: Upload, request: web.Request) -> dict[str, str]:
    headers = {"Cache-Control": "no-store"}
    length = upload.length
    if upload.is_final:
        base = external_path(request, ctx.settings.server.base_path)
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
    upload = await current(ctx, request, request.match_info["upload_id"])
    return web.Response(status=200, headers=await upload_headers(ctx, upload, request))
