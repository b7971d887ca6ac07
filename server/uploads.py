"""An upload's life, as named steps: what each request does to an upload, in one place.

The handlers (:mod:`server.handlers`) parse requests and answer them; between the two
they call one step of this module, which takes the upload's lock where it needs it,
asks the hooks, and records each change in the state store. An upload is a value
(:class:`~server.state.Upload`): a step that changes it returns the new one, which the
handler answers from.

- creation: :func:`create` (a final's parts checked, the pre-create hook, the upload
  stored with its post-create event), then :func:`start` (a final assembled, a body
  received, an empty upload finished);
- appending: :func:`append` (lock, offset check, a declared length), :func:`receive`
  (the bytes, through :mod:`server.receive`, then finishing what they filled);
- looking: :func:`load`, :func:`current` (HEAD: finishing what is due first),
  :func:`readable` (GET);
- finishing: :func:`finish` = :func:`complete` (pre-finish hook, the backend's finish)
  + the write + :func:`finished` (counted, finals waiting on it assembled);
- concatenation: :func:`final_length` at creation, :func:`assemble_if_ready`;
- removal: :func:`terminate` (DELETE), :func:`remove` (also expiry), each under its
  lock; an upload past its expiry is removed when it is looked up.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass

from aiohttp import web

from storage_backends.base import StorageError

from . import digests
from .checksum import ExpectedChecksum
from .concatenation import concatenated_length, least_concatenated_length
from .context import Context
from .errors import (
    BadRequest,
    Conflict,
    Forbidden,
    Gone,
    HookFailed,
    LengthMismatch,
    NotFound,
    OffsetMismatch,
    ReprDigestMismatch,
    TooLarge,
    TusError,
    UploadStopped,
)
from .events import (
    POST_CREATE,
    POST_FINISH,
    POST_TERMINATE,
    PRE_ACCESS,
    PRE_CREATE,
    PRE_FINISH,
    PRE_TERMINATE,
)
from .locks import Holder
from .protocol import Concat, is_upload_id
from .receive import is_full, save_complete, write_body
from .state import (
    ACTIVE,
    EXPIRED,
    REFUSED,
    TERMINATED,
    ConcatKind,
    HookEvent,
    Status,
    Upload,
)

log = logging.getLogger("aiotusd")

ASSEMBLY = "assembly:"
"""The name of a final's assembly among the leases: no upload id has a colon."""


@dataclass(frozen=True)
class Creation:
    """A creation request as :mod:`server.handlers.create` parsed it."""

    length: int | None
    defer_length: bool
    metadata: str
    concat: Concat | None
    has_body: bool
    checksum: ExpectedChecksum | None
    ends_upload: bool | None = None
    """The IETF draft's ``Upload-Complete``: True, the upload ends where the body ends (see
    :func:`end_here`); False, it does not end even if the body fills it. None: tus's rule."""
    repr_digest: str | None = None
    """The digests of the whole upload to work out at its completion (:mod:`server.digests`)."""

    @property
    def is_final(self) -> bool:
        return self.concat is not None and self.concat.final


def is_expired(upload: Upload, now: float | None = None) -> bool:
    return (
        upload.expires_at is not None
        and not upload.is_complete
        and upload.expires_at <= (time.time() if now is None else now)
    )


def new_upload_id() -> str:
    """128 random bits, hex: URL-safe, and safe as a file name on any filesystem."""
    return secrets.token_hex(16)


def metadata_too_long(metadata: str, limit: int) -> bool:
    """Whether ``Upload-Metadata`` (as the client sent it, or as a hook replaced it) is over
    ``max_metadata_size``: it is stored and echoed on every HEAD."""
    return len(metadata.encode("utf-8", "surrogateescape")) > limit


async def load(ctx: Context, upload_id: str, *, holder: Holder | None = None) -> Upload:
    """The active upload ``upload_id``, or 404 / 410 with a reason.

    An upload past its expiry is removed here, under its lock: ``holder`` is the caller's,
    when it holds it (the upload its lease's take read, if any, spares a lookup). One
    that another request holds is alive, whatever its clock says: that request is
    receiving its bytes, and its commit moves the expiry on.
    """
    if not is_upload_id(upload_id):
        raise NotFound("no such upload")
    upload = holder.taken_upload() if holder is not None else None
    if upload is None:
        upload = await ctx.store.get(upload_id)
    if upload is None:
        raise NotFound("no such upload")
    if upload.status == REFUSED:
        raise Gone(
            "upload was refused: its parts add up to more than the maximum size", code="refused"
        )
    if upload.status != ACTIVE:
        raise Gone(f"upload was {upload.status}", code=upload.status)
    if is_expired(upload):
        if holder is None:
            if await ctx.locks.is_held(upload_id):
                return upload
            async with ctx.locks.hold(upload_id) as taken:
                return await load(ctx, upload_id, holder=taken)
        await remove(ctx, upload, EXPIRED, holder=holder)
        raise Gone("upload was expired", code=EXPIRED)
    return upload


async def create(ctx: Context, request: web.Request, creation: Creation) -> Upload:
    """Create an upload: check a final's parts, ask the pre-create hook (which may choose
    the id and metadata), store it with its post-create event."""
    length = creation.length
    if creation.concat is not None and creation.concat.final:
        length = await final_length(ctx, request, creation.concat)
    limit = ctx.settings.uploads.max_size
    if limit and length is not None and length > limit:
        raise TooLarge(f"Upload-Length exceeds the maximum size of {limit}")
    upload = Upload(
        id=new_upload_id(),
        length=length,
        defer_length=creation.defer_length,
        metadata=creation.metadata,
        concat=None if creation.concat is None else (
            ConcatKind.FINAL if creation.is_final else ConcatKind.PARTIAL
        ),
        # A final upload receives no bytes of its own: it lives as long as its
        # partials do (see remove), rather than expiring while they upload.
        expires_at=None if creation.is_final else ctx.expires_at(),
        repr_digest=creation.repr_digest,
    )
    parts = creation.concat.parts if creation.concat is not None else ()
    upload, chose_id = await _ask_pre_create(ctx, request, upload, parts)
    if not chose_id:
        # The body's receiving holds the upload next (see start): it is born held.
        return await _add(ctx, request, upload, parts, held=creation.has_body)
    # A random id is new, one that a hook chose may be taken: hold it while checking.
    async with ctx.locks.hold(upload.id):
        if await ctx.store.get(upload.id) is not None:
            raise Conflict(f"upload id {upload.id} is already taken", code="id-taken")
        return await _add(ctx, request, upload, parts)


async def _ask_pre_create(
    ctx: Context, request: web.Request, upload: Upload, parts: tuple[str, ...]
) -> tuple[Upload, bool]:
    """The pre-create hook's say: ``upload`` with the metadata and the id it set, and
    whether it chose the id."""
    change = await ctx.hooks.before(PRE_CREATE, upload, request, parts)
    if change.metadata is not None:
        limit = ctx.settings.uploads.max_metadata_size
        if metadata_too_long(change.metadata, limit):
            raise HookFailed(
                f"{PRE_CREATE} hook gave an invalid answer: change.metadata is longer than "
                f"the maximum of {limit} bytes"
            )
        upload = upload.but(metadata=change.metadata)
    if change.id is None:
        return upload, False
    return upload.but(id=change.id), True


async def start(ctx: Context, request: web.Request, upload: Upload, creation: Creation) -> Upload:
    """What a creation does once the upload exists: a final is assembled if its parts
    are done, a body is received, an empty upload is finished. Returns the upload as
    it then stands."""
    if creation.is_final:
        if await _assemble_new_final(ctx, upload, request):
            return await ctx.store.get(upload.id) or upload
    elif creation.has_body:
        # A body on an empty upload must still be refused (413), so this comes first;
        # receiving finishes an upload whose body fills it, Upload-Length: 0 included.
        async with ctx.locks.hold(upload.id) as holder:
            upload, broke_off = await receive(ctx, request, upload, holder, creation.checksum,
                                              upload.length, creation.ends_upload is not False)
            if broke_off is not None:
                if isinstance(broke_off, TusError) and not isinstance(broke_off, UploadStopped):
                    # What arrived is kept: the client resumes from there.
                    broke_off.headers["Upload-Offset"] = str(upload.offset)
                raise broke_off
            if creation.ends_upload:
                upload = await end_here(ctx, request, upload, holder)
    elif upload.length == 0 and creation.ends_upload is not False:
        upload = await finish(ctx, upload, request)
    return upload


async def final_length(ctx: Context, request: web.Request, concat: Concat) -> int | None:
    """Check the parts of a final upload; its length once all part lengths are known.

    Naming a partial upload in a final one gives access to its bytes, so each part is
    put to the pre-access hook, as a HEAD or GET of it would be.
    """
    partials = await _partials(ctx, concat.parts)
    for partial in partials:
        await ctx.hooks.before(PRE_ACCESS, partial, request)
    limit = ctx.settings.uploads.max_size
    if limit and (least := least_concatenated_length(partials)) > limit:
        raise TooLarge(f"the partial uploads add up to {least} bytes or more, over the "
                       f"maximum size of {limit}")
    return concatenated_length(partials)


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


async def _add(
    ctx: Context, request: web.Request, upload: Upload, parts: tuple[str, ...],
    held: bool = False,
) -> Upload:
    """Store a new upload; its post-create event is recorded with it. Returns it as
    stored, with the backend's record. ``held``: the caller holds it next (see
    :meth:`~server.locks.UploadLocks.create`).

    When the database refuses the row (its disk is full), the storage made for the
    upload goes again: no client will ever know its id.
    """
    if parts:
        # A partial may have been terminated since it was checked: look again, where no
        # termination can come between the look and the insert (uploads.remove).
        async with ctx.concat_locks.hold(shared=parts):
            await _partials(ctx, parts)
            upload = await _store(ctx, request, upload, parts)
    else:
        upload = await _store(ctx, request, upload, parts, held)
    ctx.metrics.uploads_created.inc()
    return upload


async def _store(
    ctx: Context, request: web.Request, upload: Upload, parts: tuple[str, ...],
    held: bool = False,
) -> Upload:
    upload = upload.but(storage=await ctx.backend.create(ctx.stored(upload)))
    try:
        events = await ctx.hooks.post(POST_CREATE, upload, request, parts)
        if held:
            await ctx.locks.create(ctx.store, upload, events)
        else:
            await ctx.store.create(upload, parts, events)
    except Exception:
        await ctx.backend.delete(ctx.stored(upload))
        raise
    return upload


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


async def append(
    ctx: Context,
    request: web.Request,
    upload_id: str,
    offset: int,
    length: int | None,
    checksum: ExpectedChecksum | None,
    *,
    ends_upload: bool | None = None,
    repr_digest: str | None = None,
) -> Upload:
    """PATCH: under the upload's lock, check the offset, apply the digests and the length
    declared, receive the body; ``ends_upload`` as :attr:`Creation.ends_upload` has it.
    Returns the upload as it then stands."""
    if PRE_ACCESS in ctx.hooks.events:
        # Outside the lock: a hook that takes its time must not hold up the upload's requests.
        await ctx.hooks.before(PRE_ACCESS, await load(ctx, upload_id), request)
    async with ctx.locks.hold(upload_id) as holder:
        upload = await load(ctx, upload_id, holder=holder)
        if upload.is_final:
            raise Forbidden("the final upload of a concatenation cannot be patched")
        if offset != upload.offset:
            raise OffsetMismatch(upload.offset, offset)
        if repr_digest is not None:
            upload = await digests.declare(ctx, upload, repr_digest, holder)
        recorded_length = upload.length
        if length is not None:
            upload = await declare_length(ctx, upload, length)
        upload, broke_off = await receive(ctx, request, upload, holder, checksum, recorded_length,
                                          ends_upload is not False)
        if broke_off is not None:
            raise broke_off
        if ends_upload:
            upload = await end_here(ctx, request, upload, holder)
    return upload


async def end_here(ctx: Context, request: web.Request, upload: Upload, holder: Holder) -> Upload:
    """Finish an upload at its offset, once a body that was to end it arrived whole: its
    length, unknown until then, is where the body ended. Under the caller's lock, so that no
    other body comes between. One whose recorded length is elsewhere keeps its bytes, unfinished."""
    if upload.is_complete:
        return upload
    if upload.length is None:
        upload = await declare_length(ctx, upload, upload.offset)
    if upload.offset != upload.length:
        raise LengthMismatch(
            f"the body ended at {upload.offset}, not at the upload's length {upload.length}",
            {"Upload-Offset": str(upload.offset)},
        )
    return await finish(ctx, upload, request, holder)


async def declare_length(ctx: Context, upload: Upload, length: int) -> Upload:
    """Apply ``Upload-Length`` sent on a PATCH; it may set a deferred length once. Returns
    the upload with it, and with the backend's record for it.

    The length is recorded with the PATCH's bytes (see :func:`~server.receive.write_body`),
    so that a PATCH refused for its body records none of it."""
    if upload.length is not None:
        if length != upload.length:
            raise LengthMismatch("Upload-Length cannot be changed once known")
        return upload
    if ctx.can.length_deferrer is None:
        raise BadRequest("this server does not support deferred lengths")
    if length < upload.offset:
        raise LengthMismatch(
            f"Upload-Length {length} is below the upload's offset {upload.offset}"
        )
    if ctx.settings.uploads.max_size and length > ctx.settings.uploads.max_size:
        raise TooLarge(f"Upload-Length exceeds the maximum size of {ctx.settings.uploads.max_size}")
    storage = await ctx.can.length_deferrer.declare_length(ctx.stored(upload), length)
    return upload.but(length=length, storage=storage)


async def receive(
    ctx: Context,
    request: web.Request,
    upload: Upload,
    holder: Holder,
    checksum: ExpectedChecksum | None,
    recorded_length: int | None,
    finish_full: bool = True,
) -> tuple[Upload, BaseException | None]:
    """Append the request body (see :func:`server.receive.write_body`), then finish an
    upload that its bytes filled (unless not ``finish_full``: an IETF draft request that
    does not complete it), however the body ended: the connection may drop once the last
    byte is in, and an upload whose offset reached its length must not wait for a PATCH
    that never comes. Returns the upload as it then stands, and why the body broke off,
    if it did, for the caller to raise.

    A body that a hook stopped (tusd's ``StopUpload``) ends its upload as a DELETE does:
    its client is answered what the hook chose, and the upload is gone."""
    was_complete = upload.is_complete
    upload, broke_off = await write_body(ctx, request, upload, holder, checksum, recorded_length,
                                         finish_full)
    if isinstance(broke_off, UploadStopped):
        await remove(ctx, upload, TERMINATED, request, holder)
        return upload, broke_off
    if upload.is_complete and not was_complete:
        await finished(ctx, upload, request)
    elif finish_full:
        upload = await finish_if_full(ctx, upload, request, holder)
    return upload, broke_off


async def current(
    ctx: Context, request: web.Request, upload_id: str, finish_full: bool = True
) -> Upload:
    """HEAD: the upload as it stands, once what is due is done (a full upload is not
    finished without ``finish_full``: the IETF draft's are finished when told).

    Taking the lock makes a PATCH on this upload (a stale one, maybe) record its bytes
    first. Without one, the row just read is current, and only a full upload or a final
    one has anything left to do: a crash between the last part's finish and the
    assembly leaves a final whose parts are all finished but which nothing else would
    ever assemble, and a final one of whose parts is gone is removed (410).
    """
    upload = await load(ctx, upload_id)
    await ctx.hooks.before(PRE_ACCESS, upload, request)
    if upload.is_complete or not (
        upload.is_final or upload.offset == upload.length or await ctx.locks.is_held(upload_id)
    ):
        return upload
    async with ctx.locks.hold(upload_id) as holder:
        upload = await load(ctx, upload_id, holder=holder)
        if finish_full:
            upload = await finish_if_full(ctx, upload, request, holder)
        if upload.is_final:
            await assemble_if_ready(ctx, upload_id, request, wait=False)
            upload = await load(ctx, upload_id, holder=holder)
    return upload


async def readable(ctx: Context, request: web.Request, upload_id: str) -> Upload:
    """GET: a finished upload whose bytes the client may read (409 before then)."""
    upload = await load(ctx, upload_id)
    await ctx.hooks.before(PRE_ACCESS, upload, request)
    if not upload.is_complete or upload.length is None:
        raise Conflict("upload is not finished yet", code="not-finished")
    return upload


async def terminate(ctx: Context, request: web.Request, upload_id: str) -> None:
    """DELETE: remove the upload and its bytes (410 from then on)."""
    upload = await load(ctx, upload_id)
    # Outside the lock: a hook that takes its time must not hold up the upload's requests.
    await ctx.hooks.before(PRE_ACCESS, upload, request)
    await ctx.hooks.before(PRE_TERMINATE, upload, request)
    async with ctx.locks.hold(upload_id) as holder:
        upload = await load(ctx, upload_id, holder=holder)
        await remove(ctx, upload, TERMINATED, request, holder)


async def finish(
    ctx: Context, upload: Upload, request: web.Request, holder: Holder | None = None
) -> Upload:
    """Record that every byte of ``upload`` arrived, and assemble finals waiting on it;
    returns the upload as recorded complete. ``holder``: the caller's lock on it, if it
    holds it, whose lease the write names.

    The pre-finish hook is asked first (not for a final upload: its parts were). When it
    refuses, the upload keeps its bytes and offset but stays unfinished: the client
    gets the hook's answer with ``Upload-Offset``, and the next PATCH or HEAD asks the
    hook again (see :func:`finish_if_full`).
    """
    try:
        upload, events = await complete(ctx, upload, request)
    except ReprDigestMismatch as exc:
        # Failed, as the draft's "Integrity Digests" has it: gone, as a DELETE takes it.
        await remove(ctx, exc.upload, TERMINATED, request, holder)
        raise
    upload = await save_complete(ctx, upload, events, holder)
    await finished(ctx, upload, request)
    return upload


async def complete(
    ctx: Context, upload: Upload, request: web.Request
) -> tuple[Upload, tuple[HookEvent, ...]]:
    """The steps of :func:`finish` before its write: the pre-finish hook, the backend's
    finish, the digests of the stored bytes. Returns ``upload`` marked complete, with the
    backend's record, and the post-finish events of that write."""
    if not upload.is_final:
        try:
            await ctx.hooks.before(PRE_FINISH, upload, request)
        except TusError as exc:
            exc.headers.setdefault("Upload-Offset", str(upload.offset))
            raise
    if ctx.can.finisher is not None:
        upload = upload.but(storage=await ctx.can.finisher.finish(ctx.stored(upload)))
    if upload.repr_digest is not None:
        upload = await digests.worked_out(ctx, upload)
    upload = upload.completed()
    return upload, await ctx.hooks.post(POST_FINISH, upload, request)


async def finished(ctx: Context, upload: Upload, request: web.Request) -> None:
    """The steps of :func:`finish` after its write: count it, assemble finals waiting on it."""
    ctx.metrics.uploads_finished.inc()
    if upload.concat == "partial":
        for final_id in await ctx.store.finals_waiting_on(upload.id):
            try:
                await assemble_if_ready(ctx, final_id, request)
            except Exception:
                log.exception("assembling final upload %s failed", final_id)


async def finish_if_full(
    ctx: Context, upload: Upload, request: web.Request, holder: Holder | None = None
) -> Upload:
    """Finish an upload all of whose bytes are stored: right after its last byte arrived,
    or later, when finishing failed the first time (the store was down). Returns the
    upload as it then stands."""
    if is_full(upload):
        return await finish(ctx, upload, request, holder)
    return upload


def _lease(holder: Holder | None) -> int | None:
    """The lease a write under ``holder`` names: None without one (see :mod:`server.leases`)."""
    return None if holder is None else holder.token


async def remove(
    ctx: Context,
    upload: Upload,
    status: Status,
    request: web.Request | None = None,
    holder: Holder | None = None,
) -> None:
    """Delete an upload's bytes and keep a tombstone with ``status``.

    The tombstone is written first: a crash in between leaves an orphaned
    file, never a live upload whose bytes are gone.

    Unfinished final uploads that wait on a removed partial can never be
    completed, so they go with it (with the same status), in the same
    transaction: a crash must not leave a final that waits for ever.

    A partial or final upload is removed under its concatenation lock (see
    :class:`~server.locks.ConcatLocks`): not while a final is assembled from it or
    created with it, nor, for a final, while it is assembled. It may be gone by the
    time the lock is had (it went with a partial): then there is nothing left to do.

    Every upload terminated here, a final that goes with its partial included,
    gets a post-terminate event; expired ones get none. ``holder``: the caller's lock on
    ``upload``, whose lease the tombstone's write names.
    """
    if upload.concat is None:
        await _remove(ctx, [upload], status, request, _lease(holder))
        return
    async with ctx.concat_locks.hold(exclusive=[upload.id]):
        current = await ctx.store.get(upload.id)
        if current is None or current.status != ACTIVE:
            return
        # No final can be created with this partial now: the set is complete.
        final_ids = []
        if upload.concat == "partial":
            final_ids = await ctx.store.finals_waiting_on(upload.id)
        # Taken after the partial: the one nesting of these locks. Whoever holds a final
        # waits for no partial while holding it (an assembly takes its claim whole).
        async with ctx.concat_locks.hold(exclusive=final_ids):
            waiting = await ctx.store.get_many(tuple(final_ids))
            finals = [
                final for final in waiting.values()
                if final.status == ACTIVE and not final.is_complete
            ]
            await _remove(ctx, [current, *finals], status, request, _lease(holder))


async def _remove(
    ctx: Context,
    uploads: list[Upload],
    status: Status,
    request: web.Request | None,
    lease: int | None = None,
) -> None:
    """Tombstones for all of ``uploads`` in one transaction (under the first one's
    ``lease``, if any), then their bytes."""
    events: list[HookEvent] = []
    if status == TERMINATED:
        for upload in uploads:
            events += await ctx.hooks.post(POST_TERMINATE, upload, request)
    first, *others = uploads
    await ctx.store.mark_gone(first.id, status, events, also=[u.id for u in others],
                              lease=lease)
    for upload in uploads:
        ctx.metrics.removed(status)
        try:
            await ctx.backend.delete(ctx.stored(upload))
        except StorageError as exc:
            # The upload is gone for clients all the same; the sweep deletes its bytes
            # again before it forgets the tombstone (see expiration.forget_tombstones).
            log.warning("deleting the bytes of upload %s failed: %s", upload.id, exc)


async def assemble_if_ready(
    ctx: Context, final_id: str, request: web.Request, *, wait: bool = True
) -> bool:
    """Concatenate a final upload if all its parts are finished; True once it is.

    Without ``wait``, a final or partial that another request is working on is left to
    it: that one sees the state this caller would (a HEAD changes nothing), whereas a
    partial that just finished must wait its turn, or a final whose assembly looked
    at the partial a moment too early would never be assembled.

    The concatenation locks are this process's own. Processes that share the database
    also take a lease on the assembly (:meth:`UploadLocks.alone`), so that no two of them
    assemble one final at once; one that finds another process at it leaves it to that
    one (False), which reads the parts after this caller's write.
    """
    concatenator = ctx.can.concatenator
    assert concatenator is not None, "finals exist only with a backend that concatenates"
    part_ids = await ctx.store.parts(final_id)
    if not wait and not ctx.concat_locks.is_free([final_id], part_ids):
        return False
    async with (
        ctx.concat_locks.hold(exclusive=[final_id], shared=part_ids),
        ctx.locks.alone(ASSEMBLY + final_id) as alone,
    ):
        if not alone:
            return False
        final = await ctx.store.get(final_id)
        if final is None or final.status != ACTIVE:
            return False
        if final.is_complete:
            return True
        found = await ctx.store.get_many(part_ids)
        partials = [found.get(part_id) for part_id in part_ids]
        if await _removed_as_impossible(ctx, final, partials, request):
            return False
        ready = [p for p in partials if p is not None and p.is_complete]
        if len(ready) != len(partials):
            return False
        final = final.but(length=concatenated_length(partials))
        storage = await concatenator.concatenate(
            ctx.stored(final), [ctx.stored(p) for p in ready]
        )
        await finish(ctx, final.but(offset=final.length or 0, storage=storage), request)
        return True


async def _removed_as_impossible(
    ctx: Context, final: Upload, partials: list[Upload | None], request: web.Request
) -> bool:
    """Remove a final upload that can never be assembled; whether it was.

    One of its partials is gone: left by an older aiotusd, which removed a partial and
    its finals one at a time, so that a crash in between left a final that could never
    be finished. Or its length is known now (a part's was deferred when the final was
    created) and over ``max_size``: nothing may be assembled beyond it.
    """
    gone = [p for p in partials if p is None or p.status != ACTIVE]
    if gone:
        status = gone[0].status if gone[0] is not None else TERMINATED
        log.warning("final upload %s waits on a partial upload that is %s: removing it",
                    final.id, status)
        await _remove(ctx, [final], status, request)
        return True
    length = concatenated_length(partials)
    limit = ctx.settings.uploads.max_size
    if length is not None and limit and length > limit:
        log.warning("final upload %s would hold %d bytes, over max_size: refusing it",
                    final.id, length)
        await _remove(ctx, [final], REFUSED, request)
        return True
    return False
