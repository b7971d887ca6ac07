"""Upload creation in the draft: a ``POST`` with ``Upload-Complete``, with or without
content, announced by a ``104`` before its body is read."""

from __future__ import annotations

from aiohttp import web
from aiohttp.multipart import content_disposition_filename, parse_content_disposition

from ..context import CONTEXT, Context
from ..digests import content_checksum, requested
from ..errors import BadRequest, LengthMismatch, PastLength, TusError
from ..limits import LIMITS
from ..protocol import UPLOAD_CONTENT_TYPE, format_metadata, parse_metadata
from ..proxy import upload_location
from ..uploads import Creation, create, metadata_too_long, start
from . import INTEROP_VERSION
from .answers import (
    DRAFT,
    digests_of,
    in_draft_terms,
    inconsistent_length,
    invalidated,
    upload_limits,
)
from .codec import PARTIAL_UPLOAD, Codec, read_integer
from .interim import send_104, tell_progress

# What clients label a piece of an upload with, rather than the file's media type.
_NOT_MEDIA_TYPES = frozenset({PARTIAL_UPLOAD, UPLOAD_CONTENT_TYPE})


@in_draft_terms
async def handle(request: web.Request) -> web.Response:
    """Create an upload within the limits, as a tus creation is (see
    :func:`server.handlers.create.handle`)."""
    limits = request.app[LIMITS]
    with limits.receiving(request):
        limits.check_creation(request)
        return await _create(request, request[DRAFT])


async def _create(request: web.Request, codec: Codec) -> web.Response:
    ctx = request.app[CONTEXT]
    creation = _parse(request, ctx, codec)
    upload = await create(ctx, request, creation)
    headers = {"Location": upload_location(request, ctx.settings, upload.id)}
    limit = codec.limit(upload_limits(ctx, upload))
    await send_104(request, {**headers, INTEROP_VERSION: str(codec.version), **limit})
    if codec.progress:
        # Every response to a creation carries its Location, as the draft requires.
        tell_progress(request, {**headers, INTEROP_VERSION: str(codec.version)})
    try:
        upload = await start(ctx, request, upload, creation)
    except PastLength as exc:
        raise await invalidated(request, codec, upload.id, exc) from None
    except TusError as exc:
        # The upload exists: the client resumes it from where it stands.
        error = exc
        if isinstance(exc, LengthMismatch):
            error = inconsistent_length(codec, exc.reason, exc.headers)
        error.headers.update(headers)
        error.headers.setdefault("Upload-Offset", str(upload.offset))
        error.headers.update(codec.complete(False))
        raise error from None
    headers["Upload-Offset"] = str(upload.offset)
    headers.update(codec.complete(upload.is_complete))
    headers.update(codec.limit(upload_limits(ctx, upload)))
    headers.update(digests_of(upload))
    return web.Response(status=201, headers=headers)


def _parse(request: web.Request, ctx: Context, codec: Codec) -> Creation:
    """The creation a draft request asks for: its length from ``Upload-Length`` or from a
    complete body's ``Content-Length``, which must agree; deferred when neither is known."""
    done = codec.read_complete(request)
    length = upload_length(request)
    if done:
        length = complete_length(codec, length, 0, request)
    elif length is not None and (request.content_length or 0) > length:
        raise inconsistent_length(codec, f"a body of {request.content_length} bytes is "
                                         f"longer than Upload-Length {length}")
    if length is None and ctx.can.length_deferrer is None:
        raise BadRequest("this server needs the length of an upload when it is created")
    return Creation(
        length, length is None, _metadata(request, ctx), None, request.body_exists,
        content_checksum(request) if request.body_exists else None, ends_upload=done,
        repr_digest=requested(request),
    )


def upload_length(request: web.Request) -> int | None:
    value = request.headers.get("Upload-Length")
    return None if value is None else read_integer(value, "Upload-Length")


def complete_length(
    codec: Codec, declared: int | None, offset: int, request: web.Request
) -> int | None:
    """The length of an upload that a request completes: where its body ends; None when
    only the body's end will tell (chunked, without ``Upload-Length``)."""
    if request.content_length is None and request.body_exists:
        return declared
    ends_at = offset + (request.content_length or 0)
    if declared is not None and declared != ends_at:
        raise inconsistent_length(
            codec, f"Upload-Length {declared} does not match the body's end at {ends_at}"
        )
    return ends_at


def _metadata(request: web.Request, ctx: Context) -> str:
    """``Upload-Metadata`` if sent (tus-js-client sends it in its draft modes too), else
    the draft's own: the media type of ``Content-Type`` and the file name of
    ``Content-Disposition``, which a download gives back."""
    metadata = request.headers.get("Upload-Metadata")
    if metadata is None:
        values = {}
        content_type = request.headers.get("Content-Type", "").strip()
        if content_type and request.content_type not in _NOT_MEDIA_TYPES:
            values["filetype"] = content_type
        if disposition := request.headers.get("Content-Disposition"):
            _, params = parse_content_disposition(disposition)
            if filename := content_disposition_filename(params, "filename"):
                values["filename"] = filename
        metadata = format_metadata(values)
    limit = ctx.settings.uploads.max_metadata_size
    if metadata_too_long(metadata, limit):
        raise BadRequest(f"the upload's metadata is longer than the maximum of {limit} bytes")
    parse_metadata(metadata)
    return metadata

