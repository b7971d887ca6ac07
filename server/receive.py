"""Where an upload's bytes go: a request body streamed to storage, its offset committed.

The body is streamed in the chunks aiohttp hands over and written to the
backend as it arrives, so memory stays bounded whatever the body's size.
Offsets are committed only after the backend's ``sync``: at the end of the
request, and every ``commit_bytes`` / ``commit_seconds`` during a long one,
so an interrupted request keeps what arrived. With ``Upload-Checksum`` the
body is all or nothing: a body that does not match, or that was cut off and
so cannot be verified, is discarded and the offset stays where it was.

This is the hot path of PATCH and creation-with-upload: per chunk, a read, a
write and a few comparisons. What happens once the bytes are in (finishing the
upload, assembling finals) is the upload's life, in :mod:`server.uploads`.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from typing import Protocol

from aiohttp import StreamReader, web

from storage_backends.base import UploadWriter

from .checksum import ExpectedChecksum
from .config import Settings
from .context import Context
from .deadlines import Deadlines
from .errors import (
    BadRequest,
    ChecksumMismatch,
    InsufficientStorage,
    PastLength,
    TooLarge,
    UnsupportedMediaType,
    UploadStopped,
    storage_full,
)
from .events import POST_FINISH, POST_RECEIVE, PRE_FINISH
from .expect import continue_body
from .limits import LIMITS
from .locks import Holder
from .protocol import MAX_INTEGER, UPLOAD_CONTENT_TYPE
from .state import HookEvent, Upload

log = logging.getLogger("aiotusd")

RECEIVED = web.RequestKey("aiotusd.received", int)
"""Bytes of the body appended to the upload, for the access log."""


class Progress(Protocol):
    """Told the upload's offset each time a periodic commit made more of a body durable,
    while the body goes on (the IETF draft's progress ``104``, :mod:`server.draft.interim`).
    Raises nothing: the body goes on whatever becomes of it."""

    async def __call__(self, offset: int) -> None: ...


PROGRESS = web.RequestKey("aiotusd.progress", Progress)
"""The request's :class:`Progress`, if it has one: looked up at periodic commits only."""


class BodyInterrupted(BadRequest):
    """The body stopped before its end: disconnect, bad chunk, stall or take-over."""


def check_content_type(request: web.Request) -> None:
    """Only ``application/offset+octet-stream`` bodies are upload data."""
    if request.content_type != UPLOAD_CONTENT_TYPE:
        raise UnsupportedMediaType(f"Content-Type must be {UPLOAD_CONTENT_TYPE}")


def is_full(upload: Upload) -> bool:
    """Whether every byte of an upload that takes bytes is stored, and it is not finished yet.

    A final upload takes none: it is finished by its assembly."""
    return not upload.is_complete and not upload.is_final and upload.offset == upload.length


async def save_complete(
    ctx: Context, upload: Upload, events: Sequence[HookEvent], holder: Holder | None
) -> Upload:
    """Record ``upload`` complete, with ``events``; returns it as saved. Its holder's
    lease, if it has one, ends in the same write: nothing is written under it after an
    upload's completion (what follows, the assembly of finals, holds locks of its own),
    and a release of its own would be one more round trip to the database."""
    lease = None if holder is None else holder.token
    saved = await ctx.store.save_progress(upload, events, lease, release=lease is not None)
    if holder is not None and lease is not None:
        holder.wrote_last()
    return saved


def room_left(ctx: Context, upload: Upload) -> int:
    """How many more bytes the upload may take (see :func:`too_long`)."""
    if upload.length is not None:
        return upload.length - upload.offset
    if ctx.settings.uploads.max_size:
        return ctx.settings.uploads.max_size - upload.offset
    return MAX_INTEGER - upload.offset


def too_long(upload: Upload, reason: str) -> TooLarge:
    """The refusal of a body longer than :func:`room_left`: past the upload's length, or
    past the maximum size of one whose length is not known yet."""
    return TooLarge(reason) if upload.length is None else PastLength(reason)


class _BodyWatchdog:
    """Calls ``on_stall`` with the reason once a body stalls: no chunk came for
    ``idle_timeout`` seconds, or less than ``body_min_rate`` bytes a second arrived over a
    ``body_rate_window``, so that a drip cannot hold a receiving slot for ever.

    Looked at on the server's :class:`~server.deadlines.Deadlines` rather than on a timer
    of its own, so that ``touch`` is a single assignment: cheap enough for every body
    chunk. What arrived is the reader's own count. A window in which the server did not
    keep up (bytes arrived but not written yet) blames no one: a slow disk or store holds
    the client back, not the other way round.
    """

    def __init__(
        self,
        settings: Settings,
        deadlines: Deadlines,
        reader: StreamReader,
        written: Callable[[], int],
        on_stall: Callable[[str], None],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._deadlines = deadlines
        self._idle = settings.limits.idle_timeout
        self._window = settings.limits.body_rate_window
        self._rate = settings.limits.body_min_rate
        self._reader = reader
        self._written = written
        self._on_stall = on_stall
        self.last = self._loop.time()
        self._window_end = self.last + self._window if self._rate else math.inf
        self._window_start = reader.total_bytes
        deadlines.watch(self)

    def touch(self) -> None:
        self.last = self._loop.time()

    def due(self, now: float) -> bool:
        """Whether the body stalled by ``now`` (then ``on_stall`` was called)."""
        if now - self.last >= self._idle:
            self._on_stall(f"no byte of the body came for {self._idle:g} s (idle_timeout)")
            return True
        if now >= self._window_end:
            arrived = self._reader.total_bytes
            came = arrived - self._window_start
            if came < self._rate * self._window and arrived <= self._written():
                self._on_stall(
                    f"{came} bytes of the body came in {self._window:g} s "
                    f"(body_min_rate = {self._rate} bytes a second)"
                )
                return True
            self._window_start = arrived
            self._window_end = now + self._window
        return False

    def cancel(self) -> None:
        self._deadlines.unwatch(self)


class _PeriodicCommit:
    """The commits made while a long body arrives: one at a time, in the background.

    Receiving goes on while the data file syncs (a sync that held up the body would
    cost a third of a single large PATCH's throughput), so a commit records the bytes
    written when its sync began, never more. Every other step of the body waits for
    the commit under way first (:meth:`wait`, :meth:`settle`).
    """

    def __init__(self, body: _Body) -> None:
        self._body = body
        self._task: asyncio.Task[None] | None = None
        self.began_at = body.start
        """The offset written when the last commit began."""

    def start_if_free(self, offset: int) -> bool:
        """Begin a commit unless one is under way; raise what the last one raised."""
        if self._task is not None:
            if not self._task.done():
                return False
            task, self._task = self._task, None
            task.result()
        self.began_at = offset
        self._task = asyncio.create_task(self._body.commit(body_goes_on=True))
        return True

    async def wait(self) -> None:
        """Let the commit under way end; raise what it raised."""
        task = self._task
        if task is None:
            return
        try:
            await asyncio.shield(task)
        finally:
            if task.done():
                self._task = None

    async def settle(self) -> None:
        """Let the commit under way end, come what may: the caller commits (or drops)
        the body next, and that reports whatever is still wrong. A cancellation while
        waiting leaves the commit to the next call (:func:`write_body` has one at its
        end), so the writer is never synced twice at once nor closed under a sync."""
        task = self._task
        if task is None:
            return
        await asyncio.wait([task])
        self._task = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("a periodic commit of an upload failed: %s", exc)


class _Body:
    """One request body on its way into an upload: what its commits and its end need.

    ``upload`` is the upload as recorded: each write that lands replaces it with the
    value written, one that fails leaves it as it was (periodic commits write it from
    the background, so it lives here rather than being handed back)."""

    def __init__(
        self,
        ctx: Context,
        request: web.Request,
        upload: Upload,
        holder: Holder,
        writer: UploadWriter,
        checksum: ExpectedChecksum | None,
        recorded_length: int | None,
        finish_full: bool,
    ) -> None:
        self.ctx = ctx
        self.request = request
        self.upload = upload
        self.holder = holder
        """Its lock: each write names its lease, if it has one (see :mod:`server.leases`)."""
        self.writer = writer
        self.checksum = checksum
        self.recorded_length = recorded_length
        self.finish_full = finish_full
        """A body that fills the upload finishes it (see :func:`~server.uploads.receive`)."""
        self.start = upload.offset
        self.commits = _PeriodicCommit(self)

    async def commit(self, *, last: bool = False, body_goes_on: bool = False) -> None:
        """Record the synced offset, with the writer's record that goes with it; a due
        post-receive event rides along in the same write. A periodic commit, while the
        ``body_goes_on``, records what the backend holds without extra work (see
        :meth:`~storage_backends.base.UploadWriter.sync`).

        The ``last`` commit of a body that fills the upload also records it complete, when
        nothing is left to do first (no :class:`Finisher` backend, no pre-finish hook to
        ask): one write instead of two; :func:`~server.uploads.finished` is then due.

        When the write fails (a full disk under the database), ``upload`` stays the one
        recorded, so that nothing reports bytes the database lost. When it is cancelled,
        it has run all the same (see :mod:`server.state`) but may have failed: ``upload``
        becomes the row, so that what follows neither skips the steps after a completion
        nor records one without its event.

        A holder whose lease is lost (or may have lapsed) neither syncs nor records: its
        sync would store bytes (S3's parts in flight, a tail object) in an upload that is
        another request's by now, and its write would be refused all the same.
        """
        ctx = self.ctx
        self.holder.check()
        offset = await self.writer.sync(body_goes_on=body_goes_on)
        upload = self.upload.but(
            offset=offset, expires_at=ctx.expires_at(), storage=self.writer.storage
        )
        events = await ctx.hooks.progress(upload, self.request)
        completes = last and self._completes_with_its_bytes(upload)
        if completes:
            upload = upload.completed()
            events += await ctx.hooks.post(POST_FINISH, upload, self.request)
        try:
            if completes:
                self.upload = await save_complete(ctx, upload, events, self.holder)
            else:
                self.upload = await ctx.store.save_progress(upload, events, self.holder.token)
        except asyncio.CancelledError:
            self.upload = await ctx.store.get(upload.id) or self.upload
            raise
        if body_goes_on:
            ctx.hooks.ask_progress(events, self.holder.stop)
            if (progress := self.request.get(PROGRESS)) is not None:
                await progress(self.upload.offset)

    def _completes_with_its_bytes(self, upload: Upload) -> bool:
        """Whether the last commit may record ``upload`` complete: it is full, and
        :func:`~server.uploads.complete` would do nothing but that (no backend's finish,
        no pre-finish hook, no digest to work out)."""
        ctx = self.ctx
        return (
            self.finish_full
            and is_full(upload)
            and ctx.can.finisher is None
            and PRE_FINISH not in ctx.hooks.events
            and upload.repr_digest is None
        )

    async def drop(self) -> None:
        """Forget the whole body, including what periodic commits already recorded of it,
        and the ``Upload-Length`` that came with it (``recorded_length`` is the one before).

        The recorded offset goes back first, then the bytes: a crash in between leaves
        bytes past the offset, which the next writer drops, never an offset past the bytes.
        Periodic commits may have told post-receive hooks of bytes that are gone now: the
        offset that stands goes out with a post-receive of its own.

        The expiry moves on all the same: the upload was receiving until now, and a body
        with a checksum records nothing while it arrives, so the expiry recorded may have
        passed meanwhile (a request that takes over from this one must find it alive).

        A holder whose lease is lost drops nothing: the bytes past its start may be the
        next holder's by now.
        """
        ctx, lease = self.ctx, self.holder.token
        rolled_back = self.upload.offset != self.start
        upload = self.upload.but(
            offset=self.start, length=self.recorded_length, expires_at=ctx.expires_at()
        )
        if rolled_back:
            events = await ctx.hooks.post(POST_RECEIVE, upload, self.request)
            self.upload = await ctx.store.save_progress(upload, events, lease)
        self.holder.check()
        await self.writer.discard()
        # The backend's record went back with the discard, to the offset it opened at.
        self.upload = await ctx.store.save_progress(
            upload.but(storage=self.writer.storage), lease=lease
        )

    async def keep_what_arrived(self) -> None:
        """After the body broke off: commit what arrived, or drop it when it cannot be
        verified. Lets a periodic commit under way end first."""
        await self.commits.settle()
        if self.checksum is not None:
            await self.drop()
        else:
            await self.commit()


async def write_body(
    ctx: Context,
    request: web.Request,
    upload: Upload,
    holder: Holder,
    checksum: ExpectedChecksum | None,
    recorded_length: int | None,
    finish_full: bool = True,
) -> tuple[Upload, BaseException | None]:
    """Append the request body to ``upload`` and commit its new offset; returns the upload
    as then recorded (complete, when its bytes fill it and ``finish_full``).

    ``upload.length`` may have been declared by this request (``Upload-Length`` on a
    PATCH): ``recorded_length`` is the length recorded before, which stays when the body
    is refused.

    Raises a 4xx :class:`~server.errors.TusError` for a body that is too long or fails
    its checksum (nothing of it is kept). Returns, rather than raises, why a body broke
    off after what arrived was recorded (kept, unless a checksum was sent): a
    :class:`BodyInterrupted`, a 507 when storage is full, or the cancellation of a
    request whose client left. The caller finishes an upload that its kept bytes filled
    either way, then raises it.
    """
    room = room_left(ctx, upload)
    if request.content_length is not None and request.content_length > room:
        raise too_long(upload, f"body of {request.content_length} bytes exceeds the {room} "
                               "bytes left")
    await continue_body(request)
    writer = await ctx.backend.open_writer(ctx.stored(upload))
    body = _Body(ctx, request, upload, holder, writer, checksum, recorded_length, finish_full)
    stop_receiving = _stopper(request)
    watchdog = _BodyWatchdog(
        ctx.settings, request.app[LIMITS].deadlines, request.content,
        lambda: writer.offset - body.start,
        _on_stall(request, upload, stop_receiving),
    )
    holder.on_release_request(stop_receiving)
    try:
        broke_off = await _receive(body, watchdog, room)
    finally:
        ctx.hooks.stop_asking(upload.id)
        await body.commits.settle()
        watchdog.cancel()
        holder.on_release_request(None)
        request[RECEIVED] = body.upload.offset - body.start
        await writer.close()
    return body.upload, broke_off


def _stopper(request: web.Request) -> Callable[[], None]:
    """What stops receiving a body: its connection is closed."""
    transport, reader = request.transport, request.content

    def stop_receiving() -> None:
        # A body that already arrived whole is not cut off: finishing it waits on
        # no client, and its client then gets its answer instead of a reset.
        if transport is not None and not reader.is_eof():
            transport.close()

    return stop_receiving


def _on_stall(
    request: web.Request, upload: Upload, stop_receiving: Callable[[], None]
) -> Callable[[str], None]:
    def stalled(reason: str) -> None:
        if not request.content.is_eof():
            request.app[LIMITS].cut_off("body_timeout", f"upload {upload.id}: {reason}")
        stop_receiving()

    return stalled


async def _receive(body: _Body, watchdog: _BodyWatchdog, room: int) -> BaseException | None:
    """Stream the body and commit it; what broke it off, after what arrived was recorded."""
    try:
        await _stream(body, watchdog, room)
        await body.commits.wait()
        checksum = body.checksum
        if checksum is not None and not checksum.matches():
            await body.drop()
            raise ChecksumMismatch(f"{checksum.algorithm} checksum of the body does not match")
        await body.commit(last=True)
        return None
    except (BodyInterrupted, UploadStopped) as exc:
        await body.keep_what_arrived()
        return exc
    except asyncio.CancelledError as exc:
        # Not cut off but cancelled: aiohttp cancels the handler of a client that left
        # when handler_cancellation is on, and every handler when the shutdown timeout
        # runs out. What arrived is recorded all the same, then the cancellation goes on.
        try:
            await body.keep_what_arrived()
        except Exception:
            log.exception("recording the offset of cancelled upload %s failed", body.upload.id)
        return exc
    except Exception as exc:
        if not storage_full(exc):
            raise
        await _keep_on_a_full_disk(body)
        return InsufficientStorage("storage is full; try again later")


async def _keep_on_a_full_disk(body: _Body) -> None:
    try:
        await body.keep_what_arrived()
    except Exception as again:
        # The disk under the database is full too, or the data file could not be
        # synced: the recorded offset stays where it was, below what the file holds.
        if not storage_full(again):
            raise
        log.warning("upload %s keeps offset %d: %s", body.upload.id, body.upload.offset, again)


async def _stream(body: _Body, watchdog: _BodyWatchdog, room: int) -> None:
    """The loop over the body's chunks: write each, start periodic commits when due.
    Locals, not attributes, in the loop: it runs for every chunk.

    Each chunk is written only while the lock's lease holds (:meth:`Holder.check`), right
    before the write and with nothing awaited in between: once another process may have
    taken the upload over, not one more byte goes to its storage."""
    reader, writer, checksum, holder = (
        body.request.content, body.writer, body.checksum, body.holder
    )
    commits, settings = body.commits, body.ctx.settings
    limit = body.start + room
    committed_at = watchdog.last
    while True:
        try:
            chunk = await reader.readany()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise BodyInterrupted(f"request body broke off: {exc or type(exc).__name__}") from None
        if not chunk:
            return
        watchdog.touch()
        if writer.offset + len(chunk) > limit:
            await commits.settle()
            await body.drop()
            raise too_long(body.upload, f"body exceeds the {room} bytes left in the upload")
        if checksum is not None:
            checksum.hasher.update(chunk)
        holder.check()
        if holder.stopped is not None:
            raise holder.stopped
        await writer.write(chunk)
        if (
            checksum is None
            and (
                writer.offset - commits.began_at >= settings.storage.commit_bytes
                or watchdog.last - committed_at >= settings.storage.commit_seconds
            )
            and commits.start_if_free(writer.offset)
        ):
            committed_at = watchdog.last
