"""Offset retrieval (``HEAD``), append (``PATCH``) and ``OPTIONS`` in the draft.
Cancellation (``DELETE``) and downloads (``GET``) are tus's own handlers: they answer
the same."""

from __future__ import annotations

from aiohttp import web

from ..context import CONTEXT
from ..digests import content_checksum, requested
from ..errors import (
    BadRequest,
    LengthMismatch,
    OffsetMismatch,
    PastLength,
    UnsupportedMediaType,
)
from ..events import PRE_ACCESS
from ..limits import LIMITS
from ..state import Upload
from ..uploads import append, current, load
from . import INTEROP_VERSION
from .answers import (
    DRAFT,
    completed_upload,
    digests_of,
    in_draft_terms,
    inconsistent_length,
    invalidated,
    offset_mismatch,
    server_limits,
    upload_limits,
)
from .codec import PARTIAL_UPLOAD, Codec, read_integer
from .create import complete_length, upload_length
from .interim import tell_progress


@in_draft_terms
async def head(request: web.Request) -> web.Response:
    """Where the upload stands: 204 with its offset, completeness, length and limits."""
    ctx = request.app[CONTEXT]
    codec = request[DRAFT]
    upload = await current(ctx, request, request.match_info["upload_id"], finish_full=False)
    headers = {
        "Upload-Offset": str(upload.offset),
        **codec.complete(upload.is_complete),
        **codec.limit(upload_limits(ctx, upload)),
        "Cache-Control": "no-store",
        **digests_of(upload),
    }
    if upload.length is not None:
        headers["Upload-Length"] = str(upload.length)
    return web.Response(status=204, headers=headers)


@in_draft_terms
async def patch(request: web.Request) -> web.Response:
    """Append the body, if one of the receiving slots is free (else 503)."""
    with request.app[LIMITS].receiving(request):
        return await _append(request, request[DRAFT])


async def _append(request: web.Request, codec: Codec) -> web.Response:
    ctx = request.app[CONTEXT]
    if codec.partial_upload and request.content_type != PARTIAL_UPLOAD:
        raise UnsupportedMediaType(f"Content-Type must be {PARTIAL_UPLOAD}")
    offset_header = request.headers.get("Upload-Offset")
    if offset_header is None:
        raise BadRequest("Upload-Offset header is required")
    offset = read_integer(offset_header, "Upload-Offset")
    length = upload_length(request)
    done = codec.read_complete(request)
    if done:
        length = complete_length(codec, length, offset, request)
    upload_id = request.match_info["upload_id"]
    await _refuse_if_complete(request, codec, upload_id)
    if codec.progress:
        tell_progress(request, {INTEROP_VERSION: str(codec.version)})
    try:
        upload = await append(ctx, request, upload_id, offset, length, content_checksum(request),
                              ends_upload=done, repr_digest=requested(request))
    except OffsetMismatch as exc:
        raise offset_mismatch(codec, exc) from None
    except LengthMismatch as exc:
        raise inconsistent_length(codec, exc.reason, exc.headers) from None
    except PastLength as exc:
        raise await invalidated(request, codec, upload_id, exc) from None
    return web.Response(status=204, headers=_appended(request, codec, upload))


def _appended(request: web.Request, codec: Codec, upload: Upload) -> dict[str, str]:
    """The answer to an append: whether the upload is complete, and up to version 6 its
    offset and limits (tus-js-client reads the offset from every append answer)."""
    headers = {**codec.complete(upload.is_complete), **digests_of(upload)}
    if codec.append_offset:
        headers["Upload-Offset"] = str(upload.offset)
        headers.update(codec.limit(upload_limits(request.app[CONTEXT], upload)))
    return headers


async def _refuse_if_complete(request: web.Request, codec: Codec, upload_id: str) -> None:
    """A complete upload takes nothing more (the draft: "MUST NOT modify ... and MUST
    reject"): content would make it longer than it is, none is a completed-upload refusal.
    Looked at before the lock: an upload never becomes incomplete again. The pre-access
    hook has its say first, as for any other answer about the upload."""
    ctx = request.app[CONTEXT]
    upload = await load(ctx, upload_id)
    if not upload.is_complete:
        return
    await ctx.hooks.before(PRE_ACCESS, upload, request)
    if request.body_exists:
        raise inconsistent_length(codec, "the upload is complete: nothing can be appended")
    raise completed_upload(codec, "the upload is already complete")


@in_draft_terms
async def options(request: web.Request) -> web.Response:
    """That uploads may be resumed here (``Accept-Patch``), within which limits."""
    codec = request[DRAFT]
    headers = {
        "Accept-Patch": PARTIAL_UPLOAD,
        **codec.limit(server_limits(request.app[CONTEXT])),
    }
    return web.Response(status=204, headers=headers)
