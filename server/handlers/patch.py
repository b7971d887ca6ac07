"""PATCH: append bytes at the upload's offset."""

from __future__ import annotations

from aiohttp import web

from ..checksum import ExpectedChecksum
from ..context import CONTEXT, Context
from ..errors import BadRequest, Conflict, Forbidden, TooLarge
from ..hooks import PRE_ACCESS
from ..limits import LIMITS
from ..protocol import http_date, parse_non_negative
from ..receive import append_body, check_content_type
from ..state import Upload
from ..uploads import load


async def declare_length(ctx: Context, upload: Upload, length: int) -> None:
    """Apply ``Upload-Length`` sent on a PATCH; it may set a deferred length once.

    The length is recorded with the PATCH's bytes (see :func:`~server.receive.append_body`),
    so that a PATCH refused for its body records none of it."""
    if upload.length is not None:
        if length != upload.length:
            raise BadRequest("Upload-Length cannot be changed once known")
        return
    if ctx.can.length_deferrer is None:
        raise BadRequest("this server does not support deferred lengths")
    if length < upload.offset:
        raise BadRequest(f"Upload-Length {length} is below the upload's offset {upload.offset}")
    if ctx.settings.max_size and length > ctx.settings.max_size:
        raise TooLarge(f"Upload-Length exceeds the maximum size of {ctx.settings.max_size}")
    await ctx.can.length_deferrer.declare_length(ctx.stored(upload), length)
    upload.length = length


async def handle(request: web.Request) -> web.Response:
    """Append the body, if one of the receiving slots is free (else 503, before the upload's
    lock is taken or its state read)."""
    with request.app[LIMITS].receiving(request):
        return await _append(request)


async def _append(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    upload_id = request.match_info["upload_id"]
    check_content_type(request)
    offset_header = request.headers.get("Upload-Offset")
    if offset_header is None:
        raise BadRequest("Upload-Offset header is required")
    offset = parse_non_negative(offset_header, "Upload-Offset")
    length_header = request.headers.get("Upload-Length")
    length = None if length_header is None else parse_non_negative(length_header, "Upload-Length")
    checksum_header = request.headers.get("Upload-Checksum")
    checksum = None if checksum_header is None else ExpectedChecksum(checksum_header)

    if PRE_ACCESS in ctx.hooks.events:
        # Outside the lock: a hook that takes its time must not hold up the upload's requests.
        await ctx.hooks.before(PRE_ACCESS, await load(ctx, upload_id), request)
    async with ctx.locks.hold(upload_id) as holder:
        upload = await load(ctx, upload_id, held=True)
        if upload.is_final:
            raise Forbidden("the final upload of a concatenation cannot be patched")
        if offset != upload.offset:
            raise Conflict(
                f"Upload-Offset {offset} does not match the upload's offset {upload.offset}",
                code="offset-mismatch",
            )
        recorded_length = upload.length
        if length is not None:
            await declare_length(ctx, upload, length)
        await append_body(ctx, request, upload, holder, checksum, recorded_length)

    headers = {"Upload-Offset": str(upload.offset)}
    if upload.expires_at is not None and not upload.is_complete:
        headers["Upload-Expires"] = http_date(upload.expires_at)
    return web.Response(status=204, headers=headers)
