"""Errors, and the one place that says what each becomes for the client.

Handlers raise a :class:`TusError` subclass with a one-line reason; the class gives
the HTTP status and a stable error code (``code``, which a raise site may make more
precise). :func:`classify` turns any exception into an :class:`ErrorAnswer`: status,
code, reason, headers, and whether it counts as a storage failure. It is the table of
this module, like tusd's ``error.go``: every place that answers an error uses it
(the error middleware below, and the answers :mod:`server.app` makes before the app).
A :class:`HookRejected` is answered with what the hook chose. Anything unforeseen is
logged with its traceback and answered 500 without one.

Codes are kebab-case words that never change once released: logs (the access log's
``error=``) and monitoring may match on them.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import NoReturn

from aiohttp import web
from aiohttp.typedefs import Middleware

from storage_backends.base import StorageError, StorageUnavailable

from .request_ids import REQUEST_ID
from .state import DatabaseUnavailable, LeaseLost, Upload, UploadGone

log = logging.getLogger("aiotusd")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class TusError(Exception):
    """A request the server refuses: ``status`` to answer, ``code`` to log and match on."""

    status = 400
    code = "bad-request"

    def __init__(
        self, reason: str, headers: dict[str, str] | None = None, *, code: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.headers = headers or {}
        if code is not None:
            self.code = code


class BadRequest(TusError):
    status, code = 400, "bad-request"


class Forbidden(TusError):
    status, code = 403, "forbidden"


class NotFound(TusError):
    status, code = 404, "not-found"


class MethodNotAllowed(TusError):
    status, code = 405, "method-not-allowed"


class Conflict(TusError):
    status, code = 409, "conflict"


class OffsetMismatch(Conflict):
    """``Upload-Offset`` is not where the upload stands: the IETF draft answers it with a
    problem document naming both offsets, so they travel with the error."""

    code = "offset-mismatch"

    def __init__(self, expected: int, provided: int) -> None:
        super().__init__(
            f"Upload-Offset {provided} does not match the upload's offset {expected}"
        )
        self.expected = expected
        self.provided = provided


class LengthMismatch(BadRequest):
    """A length that contradicts the one recorded or sent alongside: the IETF draft has a
    problem type of its own for it."""


class ReprDigestMismatch(BadRequest):
    """The stored bytes of an upload do not match the ``Repr-Digest`` its client gave: the
    upload failed (the IETF draft's "Integrity Digests"). Carries the upload as it stood,
    its storage finished, for its removal."""

    code = "repr-digest-mismatch"

    def __init__(self, reason: str, upload: Upload) -> None:
        super().__init__(reason)
        self.upload = upload


class Gone(TusError):
    status, code = 410, "gone"


class PreconditionFailed(TusError):
    status, code = 412, "unsupported-version"


class TooLarge(TusError):
    status, code = 413, "too-large"


class PastLength(TooLarge):
    """A body that would take an upload past its known length: too large for tus; for the
    IETF draft, an inconsistent length that invalidates the upload."""


class UnsupportedMediaType(TusError):
    status, code = 415, "wrong-content-type"


class RangeNotSatisfiable(TusError):
    status, code = 416, "range-not-satisfiable"


class Locked(TusError):
    status, code = 423, "locked"


class TooManyRequests(TusError):
    """A client went over a rate limit (``create_rate``); ``Retry-After`` says when it may again."""

    status, code = 429, "rate-limited"


class ChecksumMismatch(TusError):
    status, code = 460, "checksum-mismatch"


class InsufficientStorage(TusError):
    status, code = 507, "storage-full"


class Overloaded(TusError):
    """The server is at a capacity limit (bodies being received, connections): try again later."""

    status, code = 503, "overloaded"


class Problem(TusError):
    """A refusal answered with an RFC 9457 problem document (the IETF draft's problem types),
    rather than with a line of text; ``members`` are the type's extension members."""

    def __init__(
        self,
        status: int,
        kind: str,
        reason: str,
        headers: dict[str, str],
        members: dict[str, int] | None = None,
        *,
        code: str,
    ) -> None:
        super().__init__(reason, headers, code=code)
        self.status = status
        document = {"type": PROBLEM_TYPES + kind, "title": reason, **(members or {})}
        self.body = json.dumps(document).encode()


PROBLEM_TYPES = "https://iana.org/assignments/http-problem-types#"


class HookFailed(TusError):
    """A blocking hook could not be asked or answered nonsense: the request fails closed.

    Its reason names the hook (a URL may hold a token) and says what went wrong with it:
    the server's business. It goes to the log; the client gets :data:`HOOK_FAILED`."""

    status, code = 503, "hook-failed"


HOOK_FAILED = "hook failed"
"""All that a client is told of a hook that failed, with its request's id to ask about."""


class HookRejected(TusError):
    """A blocking hook refused the request; the client gets exactly its status, body and headers."""

    code = "hook-rejected"

    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        super().__init__(f"refused by a hook with status {status}", headers)
        self.status = status
        self.body = body


class UploadStopped(HookRejected):
    """A post-receive hook stopped the body under way (tusd's ``StopUpload``): the upload
    is terminated, and the client gets the hook's status, body and headers."""

    code = "upload-stopped"


def storage_full(exc: BaseException) -> bool:
    """Whether ``exc`` says that the disk or the quota is full: ``ENOSPC`` or ``EDQUOT`` from
    the data files, or SQLite's "database or disk is full" from the database."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(exc, sqlite3.Error) and exc.sqlite_errorcode == sqlite3.SQLITE_FULL


class ConfigError(Exception):
    """A setting is unknown or has a bad value; the message names the key."""


@dataclass(frozen=True)
class ErrorAnswer:
    """What a failure becomes for the client, and how the server reports it."""

    status: int
    code: str
    reason: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    """A hook's own body, sent as it is; otherwise the reason, as one line of text."""
    storage: bool = False
    """Counted in ``aiotusd_storage_errors_total``."""
    public: str | None = None
    """What the client gets instead of the reason, which is for the log only."""
    log_level: int | None = None
    """Logged at this level (with the traceback when ``ERROR`` and unforeseen); None: the
    client's doing, in the access log only."""
    unforeseen: bool = False


def classify(exc: BaseException) -> ErrorAnswer:
    """The answer to ``exc``: the one table from failures to statuses and codes."""
    if isinstance(exc, HookRejected):
        return ErrorAnswer(exc.status, exc.code, exc.reason, exc.headers, body=exc.body)
    if isinstance(exc, HookFailed):
        return ErrorAnswer(exc.status, exc.code, exc.reason, exc.headers,
                           public=HOOK_FAILED, log_level=logging.WARNING)
    if isinstance(exc, Problem):
        headers = {**exc.headers, "Content-Type": "application/problem+json"}
        return ErrorAnswer(exc.status, exc.code, exc.reason, headers, body=exc.body)
    if isinstance(exc, TusError):
        return ErrorAnswer(exc.status, exc.code, exc.reason, exc.headers,
                           storage=isinstance(exc, InsufficientStorage))
    if isinstance(exc, UploadGone):
        return ErrorAnswer(410, "gone", "upload was removed while this request was under way")
    if isinstance(exc, DatabaseUnavailable):
        return ErrorAnswer(503, "database-unavailable", "the database is unavailable; try again "
                           "later", {"Retry-After": str(exc.retry_after)},
                           log_level=logging.WARNING)
    if isinstance(exc, LeaseLost):
        return ErrorAnswer(423, "taken-over", "another request took this upload over; nothing "
                           "more of this one was kept")
    if isinstance(exc, web.HTTPException):
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
        return ErrorAnswer(exc.status, _HTTP_CODES.get(exc.status, "bad-request"), exc.reason,
                           allow)
    if isinstance(exc, StorageUnavailable):
        return ErrorAnswer(503, "storage-unavailable", "storage is unavailable; try again later",
                           {"Retry-After": str(exc.retry_after)}, storage=True,
                           log_level=logging.WARNING)
    if storage_full(exc):
        return ErrorAnswer(507, "storage-full", "storage is full; try again later",
                           storage=True, log_level=logging.WARNING)
    if isinstance(exc, StorageError):
        return ErrorAnswer(500, "storage-failed", "storage failed", storage=True,
                           log_level=logging.ERROR)
    return ErrorAnswer(500, "internal-error", "internal server error",
                       storage=isinstance(exc, OSError) and not isinstance(exc, ConnectionError),
                       log_level=logging.ERROR, unforeseen=True)


_HTTP_CODES = {404: "not-found", 405: "method-not-allowed", 413: "too-large", 417: "bad-expect"}
"""Codes of aiohttp's own refusals (no route, a body over its limit, an unknown Expect)."""

ERROR_CODE = web.RequestKey("aiotusd.error_code", str)
"""The code of the error a request was answered with, for the access log."""


def error_middleware(count_storage_error: Callable[[], None]) -> Middleware:
    """The middleware that answers every failure of a handler as :func:`classify` says:
    with its status and a one-line plain-text reason. Failures of storage are counted
    with ``count_storage_error``.

    A failure after the response began (a download whose stored bytes turn out to be
    missing, or whose S3 stream breaks) cannot be answered any more: see
    :func:`abort_response`.
    """

    @web.middleware
    async def answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            answer = classify(exc)
            failure: Exception = exc
        except Exception as exc:
            answer = classify(exc)
            failure = exc
        if answer.storage:
            count_storage_error()
        if request.writer.output_size > 0:
            abort_response(request, failure, answer)
        request[ERROR_CODE] = answer.code
        _log(request, answer, failure)
        if answer.public is not None:
            answer = replace(answer, reason=f"{answer.public}; request id {request.get(REQUEST_ID)}")
        return error_response(answer)

    return answer_errors


def _log(request: web.Request, answer: ErrorAnswer, exc: BaseException) -> None:
    if answer.log_level is None:
        return
    if answer.public is not None:
        # The client was told only the request id: the line must carry it, in text logs too.
        log.log(answer.log_level, "request %s: %s %s: %s (%s)", request.get(REQUEST_ID),
                request.method, request.path, one_line(answer.reason), answer.code)
        return
    log.log(answer.log_level, "%s %s: %s (%s): %s", request.method, request.path,
            answer.reason, answer.code, one_line(str(exc) or type(exc).__name__),
            exc_info=exc if answer.unforeseen else None)


class ResponseAborted(ConnectionResetError):
    """The response had begun when its request failed, so its connection was cut."""


def abort_response(request: web.Request, exc: BaseException, answer: ErrorAnswer) -> NoReturn:
    """End a request that failed after its status line went out: cut the connection.

    A second response written into the body of the first would reach the client as
    data under a ``200``, with the right ``Content-Length`` at that, and leave the
    connection out of step for whoever uses it next (a proxy reuses upstream
    connections). A connection reset is the one thing every client and proxy reads as
    "this response is broken". aiohttp takes the :class:`ConnectionResetError` raised
    here for a client that left, and writes nothing more.
    """
    log.warning("%s %s failed after its response began (%s); connection closed: %s",
                request.method, request.path, answer.code,
                one_line(str(exc) or type(exc).__name__),
                exc_info=exc if answer.unforeseen else None)
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


def error_response(answer: ErrorAnswer) -> web.Response:
    """The response of an :class:`ErrorAnswer`: its status and headers, and its body or
    its reason as one line of plain text."""
    if answer.body is not None:
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)
    return web.Response(
        status=answer.status, text=one_line(answer.reason) + "\n", headers=answer.headers
    )
