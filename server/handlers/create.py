"""POST (creation, creation-with-upload, creation-defer-length, concatenation):
parse the request, create the upload (:mod:`server.uploads`), answer 201."""

from __future__ import annotations

from aiohttp import web

from ..checksum import ExpectedChecksum
from ..context import CONTEXT, Context
from ..errors import BadRequest, TusError
from ..limits import LIMITS
from ..protocol import (
    Concat,
    http_date,
    parse_concat,
    parse_metadata,
    parse_non_negative,
)
from ..proxy import base_paths, upload_location
from ..receive import check_content_type
from ..uploads import Creation, create, metadata_too_long, start


async def handle(request: web.Request) -> web.Response:
    """Create an upload, within the limits: a request with a body needs one of the
    receiving slots (else 503), then every request a token of its client's (else 429).
    In this order, so that a client retrying a 503 does not use up its tokens."""
    limits = request.app[LIMITS]
    with limits.receiving(request):
        limits.check_creation(request)
        return await _create(request)


async def _create(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    creation = parse_creation(request, ctx)
    upload = await create(ctx, request, creation)
    headers = {"Location": upload_location(request, ctx.settings, upload.id)}
    try:
        upload = await start(ctx, request, upload, creation)
    except TusError as exc:
        # The upload exists: its Location, and its offset unless the step said where it
        # stands now (bytes kept, or a finish refused).
        exc.headers.update(headers)
        if not upload.is_final:
            exc.headers.setdefault("Upload-Offset", str(upload.offset))
        raise
    if not upload.is_final:
        headers["Upload-Offset"] = str(upload.offset)
    if upload.expires_at is not None and not upload.is_complete:
        headers["Upload-Expires"] = http_date(upload.expires_at)
    return web.Response(status=201, headers=headers)


def parse_creation(request: web.Request, ctx: Context) -> Creation:
    """The creation a POST asks for, checked against what this server offers (400)."""
    settings = ctx.settings
    concat = _concat(request, ctx)
    length, defer = _requested_length(request, concat)
    if defer and ctx.can.length_deferrer is None:
        raise BadRequest("this server does not support deferred lengths")
    metadata = request.headers.get("Upload-Metadata", "")
    if metadata_too_long(metadata, settings.uploads.max_metadata_size):
        raise BadRequest(
            "Upload-Metadata is longer than the maximum of "
            f"{settings.uploads.max_metadata_size} bytes"
        )
    parse_metadata(metadata)
    has_body = request.body_exists
    if has_body:
        check_content_type(request)
        if concat is not None and concat.final:
            raise BadRequest("a final upload takes no body")
    checksum_header = request.headers.get("Upload-Checksum")
    checksum = ExpectedChecksum(checksum_header) if checksum_header and has_body else None
    return Creation(length, defer, metadata, concat, has_body, checksum)


def _concat(request: web.Request, ctx: Context) -> Concat | None:
    """``Upload-Concat``, if any, within ``max_concat_parts`` and each partial named once."""
    header = request.headers.get("Upload-Concat")
    if header is None:
        return None
    settings = ctx.settings
    concat = parse_concat(header, *base_paths(request, settings.server.base_path))
    if len(concat.parts) > settings.uploads.max_concat_parts:
        raise BadRequest(
            f"Upload-Concat names {len(concat.parts)} partial uploads; "
            f"at most {settings.uploads.max_concat_parts} are allowed"
        )
    if len(set(concat.parts)) != len(concat.parts):
        # One request would have the server copy the same bytes again and again.
        raise BadRequest("Upload-Concat names a partial upload more than once")
    if ctx.can.concatenator is None:
        raise BadRequest("this server does not support concatenation")
    return concat


def _requested_length(request: web.Request, concat: Concat | None) -> tuple[int | None, bool]:
    """The ``Upload-Length``, or None with True for ``Upload-Defer-Length: 1``."""
    length_header = request.headers.get("Upload-Length")
    defer_header = request.headers.get("Upload-Defer-Length")
    if concat is not None and concat.final:
        if length_header is not None or defer_header is not None:
            raise BadRequest("a final upload must not carry Upload-Length or Upload-Defer-Length")
        return None, False
    if length_header is not None and defer_header is not None:
        raise BadRequest("send either Upload-Length or Upload-Defer-Length, not both")
    if defer_header is not None:
        if defer_header.strip() != "1":
            raise BadRequest("Upload-Defer-Length must be 1")
        return None, True
    if length_header is None:
        raise BadRequest("Upload-Length or Upload-Defer-Length: 1 is required")
    return parse_non_negative(length_header, "Upload-Length"), False
