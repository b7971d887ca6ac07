"""Logging set-up: text or JSON lines, and one access-log line per request."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .receive import RECEIVED

_STANDARD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


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
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class AccessLogger(AbstractAccessLogger):
    """``method path status upload=<id> received=<bytes> duration=<seconds>``."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        upload_id = request.match_info.get("upload_id", "-") if isinstance(request, web.Request) else "-"
        received = request.get(RECEIVED, 0)
        self.logger.info(
            "%s %s %s upload=%s received=%d duration=%.3f",
            request.method, request.path, response.status, upload_id, received, time,
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "upload_id": upload_id,
                "received": received,
                "duration": round(time, 6),
            },
        )
