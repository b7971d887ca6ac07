"""POST (creation, creation-with-upload, creation-defer-length, concatenation)."""

from __future__ import annotations

import logging
import secrets

from aiohttp import web

from storage_backends.base import StorageError

from ..checksum import ExpectedChecksum
from ..context import CONTEXT, Context
from ..errors import BadRequest, Conflict, HookFailed, TooLarge, TusError
from ..hooks import POST_CREATE, PRE_ACCESS, PRE_CREATE
from ..limits import LIMITS
from ..protocol import (
    Concat,
    http_date,
    parse_concat,
    parse_metadata,
    parse_non_negative,
)
from ..proxy import base_paths, external_url
from ..receive import append_body, check_content_type
from ..state import ACTIVE, Upload
from ..uploads import (
    assemble_if_ready,
    concatenated_length,
    finish,
    is_expired,
    least_concatenated_length,
)

log = logging.getLogger("aiotusd")

def new_upload_id() -> str:
    """128 random bits, hex: URL-safe, and safe as a file name on any filesystem."""
    return secrets.token_hex(16)


def _too_long(metadata: str, limit: int) -> bool:
    """Whether ``Upload-Metadata`` (as the client sent it, or as a hook replaced it) is over
    ``max_metadata_size``: it is stored and echoed on every HEAD."""
    return len(metadata.encode("utf-8", "surrogateescape")) > limit


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


async def _partials(ctx: Context, part_ids: tuple[str, ...]) -> list[Upload]:
    """The partial uploads a final upload names, all active; 400 otherwise."""
    found = await ctx.store.get_many(part_ids)
    partials: list[Upload] = []
    for part_id in part_ids:
        partial = found.get(part_id)
        if partial is None:
            raise BadRequest(f"partial upload {part_id} does not exist")
        if partial.status != ACTIVE:
            raise BadRequest(f"partial upload {part_id} was {partial.status}")
        if is_expired(partial):
            # Not swept yet, but gone for its own client: a final must not outlive it.
            raise BadRequest(f"partial upload {part_id} was expired")
        if partial.concat != "partial":
            raise BadRequest(f"upload {part_id} was not created with Upload-Concat: partial")
        partials.append(partial)
    return partials


async def _final_length(ctx: Context, request: web.Request, concat: Concat) -> int | None:
    """Check the parts of a final upload; its length once all part lengths are known.

    Naming a partial upload in a final one gives access to its bytes, so each part is
    put to the pre-access hook, as a HEAD or GET of it would be.
    """
    partials = await _partials(ctx, concat.parts)
    for partial in partials:
        await ctx.hooks.before(PRE_ACCESS, partial, request)
    limit = ctx.settings.max_size
    if limit and (least := least_concatenated_length(partials)) > limit:
        raise TooLarge(f"the partial uploads add up to {least} bytes or more, over the "
                       f"maximum size of {limit}")
    return concatenated_length(partials)


async def _add(
    ctx: Context, request: web.Request, upload: Upload, parts: tuple[str, ...]
) -> None:
    """Store a new upload; its post-create event is recorded with it.

    When the database refuses the row (its disk is full), the storage made for the
    upload goes again: no client will ever know its id.
    """
    if parts:
        # A partial may have been terminated since it was checked: look again, where no
        # termination can come between the look and the insert (uploads.remove).
        async with ctx.concat_locks.hold(shared=parts):
            await _partials(ctx, parts)
            await _store(ctx, request, upload, parts)
    else:
        await _store(ctx, request, upload, parts)
    ctx.metrics.uploads_created.inc()


async def _store(
    ctx: Context, request: web.Request, upload: Upload, parts: tuple[str, ...]
) -> None:
    await ctx.backend.create(ctx.stored(upload))
    try:
        await ctx.store.create(
            upload, parts, await ctx.hooks.post(POST_CREATE, upload, request, parts)
        )
    except Exception:
        await ctx.backend.delete(ctx.stored(upload))
        raise


async def _assemble_new_final(ctx: Context, final: Upload, request: web.Request) -> bool:
    """Assemble a final upload just created, if its parts are finished; whether it is.

    The final exists once stored, so a failed assembly still answers 201 with its
    ``Location`` (without ``Upload-Offset``: not finished). A HEAD of it tries again;
    an error here would leave an upload that no client could ever name.
    """
    try:
        return await assemble_if_ready(ctx, final.id, request)
    except StorageError as exc:
        log.warning("final upload %s was created but not assembled: %s", final.id, exc)
        return False


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
    settings = ctx.settings
    concat_header = request.headers.get("Upload-Concat")
    concat = None
    if concat_header is not None:
        concat = parse_concat(concat_header, *base_paths(request, settings.base_path))
        if len(concat.parts) > settings.max_concat_parts:
            raise BadRequest(
                f"Upload-Concat names {len(concat.parts)} partial uploads; "
                f"at most {settings.max_concat_parts} are allowed"
            )
        if len(set(concat.parts)) != len(concat.parts):
            # One request would have the server copy the same bytes again and again.
            raise BadRequest("Upload-Concat names a partial upload more than once")
    if concat is not None and ctx.can.concatenator is None:
        raise BadRequest("this server does not support concatenation")
    length, defer = _requested_length(request, concat)
    if defer and ctx.can.length_deferrer is None:
        raise BadRequest("this server does not support deferred lengths")
    metadata = request.headers.get("Upload-Metadata", "")
    if _too_long(metadata, settings.max_metadata_size):
        raise BadRequest(
            f"Upload-Metadata is longer than the maximum of {settings.max_metadata_size} bytes"
        )
    parse_metadata(metadata)
    has_body = request.body_exists
    if has_body:
        check_content_type(request)
        if concat is not None and concat.final:
            raise BadRequest("a final upload takes no body")
    checksum_header = request.headers.get("Upload-Checksum")
    checksum = ExpectedChecksum(checksum_header) if checksum_header and has_body else None
    if concat is not None and concat.final:
        length = await _final_length(ctx, request, concat)
    if settings.max_size and length is not None and length > settings.max_size:
        raise TooLarge(f"Upload-Length exceeds the maximum size of {settings.max_size}")

    upload = Upload(
        id=new_upload_id(),
        length=length,
        defer_length=defer,
        metadata=metadata,
        concat=None if concat is None else ("final" if concat.final else "partial"),
        # A final upload receives no bytes of its own: it lives as long as its
        # partials do (see uploads.remove), rather than expiring while they upload.
        expires_at=None if concat is not None and concat.final else ctx.expires_at(),
    )
    parts = concat.parts if concat is not None else ()
    change = await ctx.hooks.before(PRE_CREATE, upload, request, parts)
    if change.metadata is not None:
        if _too_long(change.metadata, settings.max_metadata_size):
            raise HookFailed(
                f"{PRE_CREATE} hook gave an invalid answer: change.metadata is longer than "
                f"the maximum of {settings.max_metadata_size} bytes"
            )
        upload.metadata = change.metadata
    if change.id is None:
        await _add(ctx, request, upload, parts)
    else:
        upload.id = change.id
        # A random id is new, one that a hook chose may be taken: hold it while checking.
        async with ctx.locks.hold(upload.id):
            if await ctx.store.get(upload.id) is not None:
                raise Conflict(f"upload id {upload.id} is already taken", code="id-taken")
            await _add(ctx, request, upload, parts)
    headers = {"Location": external_url(request, settings.base_path + upload.id)}

    if concat is not None and concat.final:
        if await _assemble_new_final(ctx, upload, request):
            upload = await ctx.store.get(upload.id) or upload
    elif has_body or upload.length == 0:
        try:
            if has_body:
                # A body on an empty upload must still be refused (413), so this comes first;
                # append_body finishes an upload whose body fills it, Upload-Length: 0 included.
                async with ctx.locks.hold(upload.id) as holder:
                    await append_body(ctx, request, upload, holder, checksum, upload.length)
            else:
                await finish(ctx, upload, request)
        except TusError as exc:
            exc.headers.update(headers, **{"Upload-Offset": str(upload.offset)})
            raise
    if upload.concat != "final":
        headers["Upload-Offset"] = str(upload.offset)
    if upload.expires_at is not None and not upload.is_complete:
        headers["Upload-Expires"] = http_date(upload.expires_at)
    return web.Response(status=201, headers=headers)
