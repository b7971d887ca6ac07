"""Logging set-up: text or JSON lines, one access-log line per request, and request ids.

Every request gets an id: the client's (or proxy's) ``X-Request-ID`` when it sends one
(its characters ``A-Za-z0-9._~:/+=@-``, at most 128 of them), else a fresh one. The response carries it
back in ``X-Request-ID``; the access-log line and, in JSON logs, every line logged while
the request runs carry it as ``request_id``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .receive import RECEIVED

_STANDARD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

REQUEST_ID = web.RequestKey("aiotusd.request_id", str)
MAX_REQUEST_ID = 128
_NOT_IN_REQUEST_ID = re.compile(r"[^A-Za-z0-9._~:/+=@-]")
_current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "aiotusd_request_id", default=None
)


def request_id_of(header: str | None) -> str:
    """The id of a request with this ``X-Request-ID``: its safe characters, or a new id."""
    kept = _NOT_IN_REQUEST_ID.sub("", header or "")[:MAX_REQUEST_ID]
    return kept or uuid.uuid4().hex


@web.middleware
async def request_id_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    request_id = request_id_of(request.headers.get("X-Request-ID"))
    request[REQUEST_ID] = request_id
    token = _current_request_id.set(request_id)
    try:
        return await handler(request)
    finally:
        _current_request_id.reset(token)


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the request id goes back to the client."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers["X-Request-ID"] = request_id


class _RequestIdFilter(logging.Filter):
    """Gives records logged while a request runs its ``request_id``."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = _current_request_id.get()
        if request_id is not None and not hasattr(record, "request_id"):
            record.request_id = request_id
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra=`` fields become keys of their own."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRIBUTES:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(log_format: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class AccessLogger(AbstractAccessLogger):
    """``method path status upload=<id> received=<bytes> duration=<seconds> request=<id>``."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        try:
            upload_id = request.match_info.get("upload_id", "-")  # type: ignore[attr-defined]
        except (AttributeError, AssertionError):
            # A request aiohttp could not parse is answered before routing: it has no match_info
            # (asking raises), and raising here would turn its 400 into a 500.
            upload_id = "-"
        received = request.get(RECEIVED, 0)
        request_id = request.get(REQUEST_ID, "-")
        self.logger.info(
            "%s %s %s upload=%s received=%d duration=%.3f request=%s",
            request.method, request.path, response.status, upload_id, received, time, request_id,
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "upload_id": upload_id,
                "received": received,
                "duration": round(time, 6),
                "request_id": request_id,
            },
        )
