"""Appending a request body to an upload: the hot path of PATCH and creation-with-upload.

The body is streamed in the chunks aiohttp hands over and written to the
backend as it arrives, so memory stays bounded whatever the body's size.
Offsets are committed only after the backend's ``sync``: at the end of the
request, and every ``commit_bytes`` / ``commit_seconds`` during a long one,
so an interrupted request keeps what arrived. With ``Upload-Checksum`` the
body is all or nothing: a body that does not match, or that was cut off and
so cannot be verified, is discarded and the offset stays where it was.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Callable

from aiohttp import HttpVersion11, StreamReader, web

from storage_backends.base import UploadWriter

from .checksum import ExpectedChecksum
from .config import Settings
from .context import Context
from .errors import (
    BadRequest,
    ChecksumMismatch,
    InsufficientStorage,
    TooLarge,
    TusError,
    UnsupportedMediaType,
    one_line,
    storage_full,
)
from .hooks import POST_RECEIVE, PRE_FINISH
from .limits import LIMITS
from .locks import Holder
from .protocol import MAX_INTEGER, UPLOAD_CONTENT_TYPE
from .state import Upload
from .uploads import complete, finish_if_full, finished, is_full

log = logging.getLogger("aiotusd")

RECEIVED = web.RequestKey("aiotusd.received", int)
"""Bytes of the body appended to the upload, for the access log."""
CONTINUED = web.RequestKey("aiotusd.continued", bool)
"""Whether the client was told ``100 Continue``."""


def expects_continue(request: web.BaseRequest) -> bool:
    return (
        request.version == HttpVersion11
        and request.headers.get("Expect", "").lower() == "100-continue"
    )


def unknown_expectation(request: web.BaseRequest) -> str | None:
    """Why an ``Expect`` other than ``100-continue`` is refused (417), or None."""
    expect = request.headers.get("Expect")
    if expect and request.version == HttpVersion11 and not expects_continue(request):
        return one_line(f"unknown Expect: {expect[:100]}") + "\n"
    return None


async def defer_continue(request: web.Request) -> None:
    """The routes' ``Expect`` handler: ``100 Continue`` waits for :func:`continue_body`.

    aiohttp would send it before any check, and a client refused with 404, 409, 413,
    429 or 503 would have sent its whole body for nothing. An unknown expectation is
    refused (417) as aiohttp's own handler does.
    """
    if (reason := unknown_expectation(request)) is not None:
        raise web.HTTPExpectationFailed(text=reason)


async def continue_body(request: web.Request) -> None:
    """Tell a client that waits for ``100 Continue`` to send the body: it will be read."""
    if expects_continue(request) and not request.get(CONTINUED):
        request[CONTINUED] = True
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0


async def close_after_unasked_body(request: web.Request, response: web.StreamResponse) -> None:
    """A request refused before its body was asked for ends its connection.

    The client may send the body or not (RFC 9110, section 10.1.1); either way, the
    next request on the connection cannot be told from it. ``Connection: close`` says
    so; aiohttp still reads what does come for a while, so that the close resets nothing.
    """
    if expects_continue(request) and request.body_exists and not request.get(CONTINUED):
        response.force_close()
        # The headers were made before this hook: say it there too.
        response.headers["Connection"] = "close"


class BodyInterrupted(BadRequest):
    """The body stopped before its end: disconnect, bad chunk, stall or take-over."""


class _BodyWatchdog:
    """Calls ``on_stall`` with the reason once a body stalls: no chunk came for
    ``idle_timeout`` seconds, or less than ``body_min_rate`` bytes a second arrived over a
    ``body_rate_window``, so that a drip cannot hold a receiving slot for ever.

    One timer per request, re-armed lazily, so that ``touch`` is a single assignment:
    cheap enough for every body chunk. What arrived is the reader's own count. A window
    in which the server did not keep up (bytes arrived but not written yet) blames no
    one: a slow disk or store holds the client back, not the other way round.
    """

    def __init__(
        self,
        settings: Settings,
        reader: StreamReader,
        written: Callable[[], int],
        on_stall: Callable[[str], None],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._idle = settings.idle_timeout
        self._window = settings.body_rate_window
        self._rate = settings.body_min_rate
        self._reader = reader
        self._written = written
        self._on_stall = on_stall
        self.last = self._loop.time()
        self._window_end = self.last + self._window if self._rate else math.inf
        self._window_start = reader.total_bytes
        self._handle = self._loop.call_at(self._next_check(), self._check)

    def touch(self) -> None:
        self.last = self._loop.time()

    def _next_check(self) -> float:
        return min(self.last + self._idle, self._window_end)

    def _check(self) -> None:
        now = self._loop.time()
        if now - self.last >= self._idle:
            self._on_stall(f"no byte of the body came for {self._idle:g} s (idle_timeout)")
            return
        if now >= self._window_end:
            arrived = self._reader.total_bytes
            came = arrived - self._window_start
            if came < self._rate * self._window and arrived <= self._written():
                self._on_stall(
                    f"{came} bytes of the body came in {self._window:g} s "
                    f"(body_min_rate = {self._rate} bytes a second)"
                )
                return
            self._window_start = arrived
            self._window_end = now + self._window
        self._handle = self._loop.call_at(self._next_check(), self._check)

    def cancel(self) -> None:
        self._handle.cancel()


def room_left(ctx: Context, upload: Upload) -> int:
    """How many more bytes the upload may take."""
    if upload.length is not None:
        return upload.length - upload.offset
    if ctx.settings.max_size:
        return ctx.settings.max_size - upload.offset
    return MAX_INTEGER - upload.offset


async def _commit(
    ctx: Context, request: web.Request, upload: Upload, writer: UploadWriter, *, last: bool = False
) -> None:
    """Record the synced offset; a due post-receive event rides along in the same write.

    The ``last`` commit of a body that fills the upload also records it complete, when
    nothing is left to do first (no :class:`Finisher` backend, no pre-finish hook to
    ask): one write instead of two; :func:`~server.uploads.finished` is then due.

    When the write fails (a full disk under the database), ``upload`` keeps the offset
    and expiry that stay recorded, so that nothing reports bytes the database lost.
    When it is cancelled, it has run all the same (see :mod:`server.state`) but may
    have failed: ``upload`` takes its completion from the row, so that what follows
    neither skips the steps after a completion nor records one without its event.
    """
    recorded = upload.offset, upload.expires_at, upload.completed_at
    upload.offset = await writer.sync()
    upload.expires_at = ctx.expires_at()
    events = await ctx.hooks.progress(upload, request)
    completing = last and _completes_with_its_bytes(ctx, upload)
    if completing:
        events += await complete(ctx, upload, request)
    try:
        await ctx.store.save_progress(upload, events)
    except asyncio.CancelledError:
        if completing:
            row = await ctx.store.get(upload.id)
            if row is not None:
                upload.expires_at, upload.completed_at = row.expires_at, row.completed_at
        raise
    except Exception:
        upload.offset, upload.expires_at, upload.completed_at = recorded
        raise


def _completes_with_its_bytes(ctx: Context, upload: Upload) -> bool:
    return is_full(upload) and ctx.can.finisher is None and PRE_FINISH not in ctx.hooks.events


class _PeriodicCommit:
    """The commits made while a long body arrives: one at a time, in the background.

    Receiving goes on while the data file syncs (a sync that held up the body would
    cost a third of a single large PATCH's throughput), so a commit records the bytes
    written when its sync began, never more. Every other step of the body waits for
    the commit under way first (:meth:`wait`, :meth:`settle`).
    """

    def __init__(
        self, ctx: Context, request: web.Request, upload: Upload, writer: UploadWriter
    ) -> None:
        self._commit = functools.partial(_commit, ctx, request, upload, writer)
        self._task: asyncio.Task[None] | None = None
        self.began_at = upload.offset
        """The offset written when the last commit began."""

    def start_if_free(self, offset: int) -> bool:
        """Begin a commit unless one is under way; raise what the last one raised."""
        if self._task is not None:
            if not self._task.done():
                return False
            task, self._task = self._task, None
            task.result()
        self.began_at = offset
        self._task = asyncio.create_task(self._commit())
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
        waiting leaves the commit to the next call (``append_body`` has one in ``finally``),
        so the writer is never synced twice at once nor closed under a sync."""
        task = self._task
        if task is None:
            return
        await asyncio.wait([task])
        self._task = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("a periodic commit of an upload failed: %s", exc)


async def _drop_body(
    ctx: Context,
    request: web.Request,
    upload: Upload,
    writer: UploadWriter,
    start: int,
    recorded_length: int | None,
) -> None:
    """Forget the whole body, including what periodic commits already recorded of it, and
    the ``Upload-Length`` that came with it (``recorded_length`` is the one before).

    The recorded offset goes back first, then the bytes: a crash in between leaves
    bytes past the offset, which the next writer drops, never an offset past the bytes.
    Periodic commits may have told post-receive hooks of bytes that are gone now: the
    offset that stands goes out with a post-receive of its own.

    The expiry moves on all the same: the upload was receiving until now, and a body
    with a checksum records nothing while it arrives, so the expiry recorded may have
    passed meanwhile (a request that takes over from this one must find it alive).
    """
    rolled_back = upload.offset != start
    upload.expires_at = ctx.expires_at()
    upload.length = recorded_length
    if rolled_back:
        upload.offset = start
        await ctx.store.save_progress(upload, await ctx.hooks.post(POST_RECEIVE, upload, request))
    await writer.discard()
    # The backend's record in ``upload.storage`` went back with the discard.
    await ctx.store.save_progress(upload)


async def _keep_what_arrived(
    ctx: Context,
    request: web.Request,
    upload: Upload,
    writer: UploadWriter,
    checksum: ExpectedChecksum | None,
    start: int,
    recorded_length: int | None,
) -> None:
    """After a body broke off: commit what arrived, or drop it when it cannot be verified."""
    if checksum is not None:
        await _drop_body(ctx, request, upload, writer, start, recorded_length)
    else:
        await _commit(ctx, request, upload, writer)


async def append_body(
    ctx: Context,
    request: web.Request,
    upload: Upload,
    holder: Holder,
    checksum: ExpectedChecksum | None,
    recorded_length: int | None,
) -> None:
    """Append the request body to ``upload`` and commit its new offset.

    ``upload.length`` may have been declared by this request (``Upload-Length`` on a
    PATCH): ``recorded_length`` is the length recorded before, which stays when the body
    is refused.

    Raises a 4xx :class:`~server.errors.TusError` for a body that is too long
    or fails its checksum (nothing of it is kept), 507 when storage is full
    (what was stored is kept), and :class:`BodyInterrupted` when the body was
    cut off (what arrived is kept, unless a checksum was sent). Kept bytes that
    fill the upload finish it, however the request ended; a cancelled request
    records what arrived before the cancellation goes on.
    """
    room = room_left(ctx, upload)
    if request.content_length is not None and request.content_length > room:
        raise TooLarge(f"body of {request.content_length} bytes exceeds the {room} bytes left")
    await continue_body(request)
    start = upload.offset
    settings = ctx.settings
    loop = asyncio.get_running_loop()
    transport = request.transport
    reader = request.content

    def stop_receiving() -> None:
        # A body that already arrived whole is not cut off: finishing it waits on
        # no client, and its client then gets its answer instead of a reset.
        if transport is not None and not reader.is_eof():
            transport.close()

    def stalled(reason: str) -> None:
        if not reader.is_eof():
            request.app[LIMITS].cut_off("body_timeout", f"upload {upload.id}: {reason}")
        stop_receiving()

    writer = await ctx.backend.open_writer(ctx.stored(upload))
    watchdog = _BodyWatchdog(settings, reader, lambda: writer.offset - start, stalled)
    holder.on_release_request(stop_receiving)
    limit = start + room
    committed_at = loop.time()
    commits = _PeriodicCommit(ctx, request, upload, writer)
    broke_off: TusError | asyncio.CancelledError | None = None
    was_complete = upload.is_complete
    try:
        while True:
            try:
                chunk = await reader.readany()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise BodyInterrupted(f"request body broke off: {exc or type(exc).__name__}") from None
            if not chunk:
                break
            watchdog.touch()
            if writer.offset + len(chunk) > limit:
                await commits.settle()
                await _drop_body(ctx, request, upload, writer, start, recorded_length)
                raise TooLarge(f"body exceeds the {room} bytes left in the upload")
            if checksum is not None:
                checksum.hasher.update(chunk)
            await writer.write(chunk)
            if (
                checksum is None
                and (
                    writer.offset - commits.began_at >= settings.commit_bytes
                    or watchdog.last - committed_at >= settings.commit_seconds
                )
                and commits.start_if_free(writer.offset)
            ):
                committed_at = watchdog.last
        await commits.wait()
        if checksum is not None and not checksum.matches():
            await _drop_body(ctx, request, upload, writer, start, recorded_length)
            raise ChecksumMismatch(f"{checksum.algorithm} checksum of the body does not match")
        await _commit(ctx, request, upload, writer, last=True)
    except BodyInterrupted as exc:
        await commits.settle()
        await _keep_what_arrived(ctx, request, upload, writer, checksum, start, recorded_length)
        broke_off = exc
    except asyncio.CancelledError as exc:
        # Not cut off but cancelled: aiohttp cancels the handler of a client that left
        # when handler_cancellation is on, and every handler when the shutdown timeout
        # runs out. What arrived is recorded all the same, then the cancellation goes on.
        broke_off = exc
        try:
            await commits.settle()
            await _keep_what_arrived(ctx, request, upload, writer, checksum, start, recorded_length)
        except Exception:
            log.exception("recording the offset of cancelled upload %s failed", upload.id)
    except Exception as exc:
        if not storage_full(exc):
            raise
        try:
            await commits.settle()
            await _keep_what_arrived(ctx, request, upload, writer, checksum, start, recorded_length)
        except Exception as again:
            # The disk under the database is full too, or the data file could not be
            # synced: the recorded offset stays where it was, below what the file holds.
            if not storage_full(again):
                raise
            log.warning("upload %s keeps offset %d: %s", upload.id, upload.offset, again)
        broke_off = InsufficientStorage("storage is full; try again later")
    finally:
        await commits.settle()
        watchdog.cancel()
        holder.on_release_request(None)
        request[RECEIVED] = upload.offset - start
        await writer.close()
    if upload.is_complete and not was_complete:
        await finished(ctx, upload, request)
    else:
        # Also after a break-off: the connection may drop once the last byte is in, and
        # an upload whose offset reached its length must not wait for a PATCH that never comes.
        await finish_if_full(ctx, upload, request)
    if broke_off is not None:
        raise broke_off


def check_content_type(request: web.Request) -> None:
    """Only ``application/offset+octet-stream`` bodies are upload data."""
    if request.content_type != UPLOAD_CONTENT_TYPE:
        raise UnsupportedMediaType(f"Content-Type must be {UPLOAD_CONTENT_TYPE}")
