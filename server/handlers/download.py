"""GET: the bytes of a finished upload, with ranges and safe content headers."""

from __future__ import annotations

from aiohttp import web

from ..content import content_disposition, content_type, parse_range
from ..context import CONTEXT
from ..errors import RangeNotSatisfiable
from ..protocol import http_date, metadata_text, parse_metadata
from ..uploads import readable


async def handle(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    upload = await readable(ctx, request, request.match_info["upload_id"])
    size = upload.length
    assert size is not None
    etag = f'"{upload.id}"'
    metadata = parse_metadata(upload.metadata)
    media_type, inline = content_type(metadata_text(metadata, "filetype"))
    headers = {
        "ETag": etag,
        "Last-Modified": http_date(upload.completed_at or upload.created_at),
        "Accept-Ranges": "bytes",
        "Content-Type": media_type,
        "Content-Disposition": content_disposition(metadata_text(metadata, "filename"), inline),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    if_none_match = request.headers.get("If-None-Match", "")
    if etag in if_none_match or if_none_match.strip() == "*":
        return web.Response(status=304, headers={"ETag": etag})
    if ctx.can.download_redirector is not None:
        url = await ctx.can.download_redirector.download_url(
            ctx.stored(upload), media_type, headers["Content-Disposition"]
        )
        if url is not None:
            return web.Response(status=302, headers={"Location": url, "Cache-Control": "no-store"})
    if_range = request.headers.get("If-Range")
    byte_range = parse_range(request.headers.get("Range"), size)
    if if_range is not None and if_range != etag:
        byte_range = None
    status = 200
    start, end = 0, size
    if byte_range is not None:
        start, end = byte_range
        if start >= end:
            raise RangeNotSatisfiable(
                "requested range is outside the upload", {"Content-Range": f"bytes */{size}"}
            )
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    chunks = aiter(ctx.backend.read(ctx.stored(upload), start, end))
    # The first chunk is fetched before the status goes out, so that a store that is
    # down is answered 503 rather than with a 200 that breaks off.
    first = await anext(chunks, b"")
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = end - start
    await response.prepare(request)
    await response.write(first)
    async for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response
