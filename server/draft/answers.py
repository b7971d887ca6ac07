"""What the draft's answers share: the limits, the problem documents, refusals in the
draft's terms."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..context import CONTEXT, Context
from ..errors import (
    BadRequest,
    ChecksumMismatch,
    Conflict,
    OffsetMismatch,
    PastLength,
    Problem,
    TusError,
)
from ..state import TERMINATED, Upload
from ..uploads import load, remove
from .codec import Codec, Limits

DRAFT = web.RequestKey("aiotusd.draft", Codec)
"""The codec of a request served as the draft (see :func:`server.handlers.upload`)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def server_limits(ctx: Context) -> Limits:
    """The limits of any upload, before there is one: ``max_size`` and ``expiration``."""
    uploads = ctx.settings.uploads
    return Limits(uploads.max_size or None, uploads.expiration or None)


def upload_limits(ctx: Context, upload: Upload) -> Limits:
    """The limits of ``upload``: its lifetime is what is left of it (none once complete)."""
    age = None
    if upload.expires_at is not None and not upload.is_complete:
        age = max(0, int(upload.expires_at - time.time()))
    return Limits(ctx.settings.uploads.max_size or None, age)


def digests_of(upload: Upload) -> dict[str, str]:
    """``Repr-Digest`` of a complete upload whose client gave or wanted digests: those of
    its stored bytes (the draft's "Integrity Digests", on its state too as its "Responses
    to Uploads" suggests)."""
    if not upload.is_complete or upload.repr_digest is None:
        return {}
    return {"Repr-Digest": upload.repr_digest}


def offset_mismatch(codec: Codec, exc: OffsetMismatch) -> TusError:
    """409 with the right offset, and from version 6 the ``mismatching-upload-offset``
    problem naming both offsets."""
    headers = {"Upload-Offset": str(exc.expected), **codec.complete(False)}
    if not codec.problems:
        return Conflict(exc.reason, headers, code=exc.code)
    return Problem(409, "mismatching-upload-offset", exc.reason, headers,
                   {"expected-offset": exc.expected, "provided-offset": exc.provided},
                   code=exc.code)


def inconsistent_length(
    codec: Codec, reason: str, headers: dict[str, str] | None = None
) -> TusError:
    """400: the lengths a request gives contradict each other or the one recorded."""
    return _bad_request(
        codec, "inconsistent-upload-length", reason, dict(headers or {}), "length-mismatch"
    )


async def invalidated(
    request: web.Request, codec: Codec, upload_id: str, exc: PastLength
) -> TusError:
    """A request took the upload past its length. The draft: the server "MUST prevent the
    offset from exceeding the upload length by rejecting the request ..., marking the
    upload resource invalid and rejecting any further interaction with it": it is removed
    as a DELETE removes it (410 from then on), and the request is an inconsistent length."""
    ctx = request.app[CONTEXT]
    async with ctx.locks.hold(upload_id) as holder:
        await remove(ctx, await load(ctx, upload_id, holder=holder), TERMINATED, request,
                     holder)
    return inconsistent_length(codec, exc.reason)


def completed_upload(codec: Codec, reason: str) -> TusError:
    """400: the upload is complete and takes nothing more."""
    return _bad_request(codec, "completed-upload", reason, codec.complete(True), "completed")


def _bad_request(
    codec: Codec, kind: str, reason: str, headers: dict[str, str], code: str
) -> TusError:
    """A 400 of a problem type: its document from version 6 on, a line of text before."""
    if not codec.problems:
        return BadRequest(reason, headers, code=code)
    return Problem(400, kind, reason, headers, code=code)


def in_draft_terms(handler: Handler) -> Handler:
    """A draft handler whose refusals speak the draft: a 413 carries ``Upload-Limit``; a
    digest that does not match is a 400 (460 is tus's own status)."""

    @functools.wraps(handler)
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except TusError as exc:
            if exc.status == 413:
                exc.headers.update(request[DRAFT].limit(server_limits(request.app[CONTEXT])))
            if isinstance(exc, ChecksumMismatch):
                exc.status = 400
            raise

    return handle
