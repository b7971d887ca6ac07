"""Protocol errors and the one place that maps them to HTTP responses.

Handlers raise a :class:`TusError` subclass with a one-line reason; the error
middleware in :mod:`server.app` turns it into a plain-text response with the
status of the class; a :class:`HookRejected` is answered with what the hook
chose instead. Anything else that escapes a handler is logged and
answered with a generic 500 that carries no traceback.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from typing import NoReturn

from aiohttp import web

from storage_backends.base import StorageError, StorageUnavailable

from .state import UploadGone

log = logging.getLogger("aiotusd")


class TusError(Exception):
    """A request the server refuses; ``status`` is the HTTP status to answer."""

    status = 400

    def __init__(self, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.headers = headers or {}


class BadRequest(TusError):
    status = 400


class Forbidden(TusError):
    status = 403


class NotFound(TusError):
    status = 404


class MethodNotAllowed(TusError):
    status = 405


class Conflict(TusError):
    status = 409


class Gone(TusError):
    status = 410


class PreconditionFailed(TusError):
    status = 412


class TooLarge(TusError):
    status = 413


class UnsupportedMediaType(TusError):
    status = 415


class RangeNotSatisfiable(TusError):
    status = 416


class Locked(TusError):
    status = 423


class TooManyRequests(TusError):
    """A client went over a rate limit (``create_rate``); ``Retry-After`` says when it may again."""

    status = 429


class ChecksumMismatch(TusError):
    status = 460


class InsufficientStorage(TusError):
    status = 507


class Overloaded(TusError):
    """The server is at a capacity limit (bodies being received, connections): try again later."""

    status = 503


class HookFailed(TusError):
    """A blocking hook could not be asked or answered nonsense: the request fails closed."""

    status = 503


class HookRejected(TusError):
    """A blocking hook refused the request; the client gets exactly its status, body and headers."""

    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        super().__init__(f"refused by a hook with status {status}", headers)
        self.status = status
        self.body = body


def storage_full(exc: BaseException) -> bool:
    """Whether ``exc`` says that the disk or the quota is full: ``ENOSPC`` or ``EDQUOT`` from
    the data files, or SQLite's "database or disk is full" from the database."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(exc, sqlite3.Error) and exc.sqlite_errorcode == sqlite3.SQLITE_FULL


class ConfigError(Exception):
    """A setting is unknown or has a bad value; the message names the key."""


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Answer every refusal with its status and a one-line plain-text reason.

    A failure after the response began (a download whose stored bytes turn out to be
    missing, or whose S3 stream breaks) cannot be answered any more: see
    :func:`abort_response`.
    """
    try:
        return await handler(request)
    except (ConnectionError, asyncio.CancelledError):
        raise
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if request.writer.output_size > 0:
            abort_response(request, exc)
        return _plain(exc.status, exc.reason, {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {})
    except Exception as exc:
        if request.writer.output_size > 0:
            abort_response(request, exc)
        return _answer(request, exc)


def _answer(request: web.Request, exc: Exception) -> web.Response:
    if isinstance(exc, HookRejected):
        return web.Response(status=exc.status, body=exc.body, headers=exc.headers)
    if isinstance(exc, TusError):
        return error_response(exc)
    if isinstance(exc, UploadGone):
        return _plain(Gone.status, "upload was removed while this request was under way")
    if isinstance(exc, StorageUnavailable):
        log.warning("%s %s: storage unavailable: %s", request.method, request.path, exc)
        return _plain(503, "storage is unavailable; try again later",
                      {"Retry-After": str(exc.retry_after)})
    if storage_full(exc):
        log.warning("%s %s: storage is full: %s", request.method, request.path, exc)
        return _plain(InsufficientStorage.status, "storage is full; try again later")
    if isinstance(exc, StorageError):
        log.error("%s %s: storage failed: %s", request.method, request.path, exc)
        return _plain(500, "storage failed")
    log.exception("%s %s failed", request.method, request.path)
    return _plain(500, "internal server error")


class ResponseAborted(ConnectionResetError):
    """The response had begun when its request failed, so its connection was cut."""


def abort_response(request: web.Request, exc: BaseException) -> NoReturn:
    """End a request that failed after its status line went out: cut the connection.

    A second response written into the body of the first would reach the client as
    data under a ``200``, with the right ``Content-Length`` at that, and leave the
    connection out of step for whoever uses it next (a proxy reuses upstream
    connections). A connection reset is the one thing every client and proxy reads as
    "this response is broken". aiohttp takes the :class:`ConnectionResetError` raised
    here for a client that left, and writes nothing more.
    """
    expected = isinstance(exc, (TusError, StorageError, OSError, web.HTTPException))
    log.warning("%s %s failed after its response began; connection closed: %s",
                request.method, request.path, one_line(str(exc) or type(exc).__name__),
                exc_info=None if expected else exc)
    if request.transport is not None:
        request.transport.abort()
    raise ResponseAborted("the response was cut off") from exc


def one_line(reason: str) -> str:
    """``reason`` as one line of printable text, whatever bytes a client put into it.

    Reasons may quote request headers, which aiohttp decodes with
    ``surrogateescape``: such characters (and control characters) are escaped,
    so the body always encodes and never breaks the line.
    """
    line = " ".join(reason.split())
    if not line.isprintable():
        line = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in line)
    return line or "error"


def error_response(exc: TusError) -> web.Response:
    """The answer to a refusal: its status, headers and one-line plain-text reason."""
    return _plain(exc.status, exc.reason, exc.headers)


def _plain(status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=one_line(reason) + "\n", headers=headers)
