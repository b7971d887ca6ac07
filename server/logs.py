"""Logging set-up: text or JSON lines, one access-log line per request.

The access-log line and, in JSON logs, every line logged while a request runs carry the
request's id (see :mod:`server.request_ids`) as ``request_id``.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .errors import ERROR_CODE
from .receive import RECEIVED
from .request_ids import REQUEST_ID, current_request_id

_STANDARD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class _RequestIdFilter(logging.Filter):
    """Gives records logged while a request runs its ``request_id``."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = current_request_id()
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


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _WorkerFilter(logging.Filter):
    """Gives every record of a worker of ``--workers`` its index, as ``worker``."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def name_worker(index: int) -> None:
    """Make every line of this process, the worker ``index`` of ``--workers``, say so:
    ``worker N:`` before a text line's message, ``"worker": N`` in a JSON line. The
    workers write to one log: without it, which worker answered a request, or failed,
    cannot be told."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerFilter(index))
        if not isinstance(handler.formatter, JsonFormatter):
            handler.setFormatter(logging.Formatter(
                TEXT_FORMAT.replace("%(message)s", f"worker {index}: %(message)s")
            ))


def setup_logging(log_format: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # botocore tells at info level where it found credentials, on every start with S3: its
    # own business, not the server's, and a line before the one that says why a start failed.
    quiet = logging.WARNING if root.level > logging.DEBUG else logging.NOTSET
    for library in ("botocore", "aiobotocore"):
        logging.getLogger(library).setLevel(quiet)


class AccessLogger(AbstractAccessLogger):
    """``method path status upload=<id> received=<bytes> duration=<seconds> request=<id>``,
    and for a request answered with an error ``error=<code>`` (see :mod:`server.errors`)."""

    @property
    def enabled(self) -> bool:
        """aiohttp skips :meth:`log` when this is false: below ``info`` nothing is built."""
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        try:
            upload_id = request.match_info.get("upload_id", "-")  # type: ignore[attr-defined]
        except (AttributeError, AssertionError):
            # A request aiohttp could not parse is answered before routing: it has no match_info
            # (asking raises), and raising here would turn its 400 into a 500.
            upload_id = "-"
        received = request.get(RECEIVED, 0)
        request_id = request.get(REQUEST_ID, "-")
        message = "%s %s %s upload=%s received=%d duration=%.3f request=%s"
        args: list[object] = [
            request.method, request.path, response.status, upload_id, received, time, request_id,
        ]
        fields: dict[str, object] = {
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "upload_id": upload_id,
            "received": received,
            "duration": round(time, 6),
            "request_id": request_id,
        }
        if error := request.get(ERROR_CODE):
            message += " error=%s"
            args.append(error)
            fields["error"] = error
        self.logger.info(message, *args, extra=fields)
