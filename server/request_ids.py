"""Request ids: one per request, to find its lines in the logs and its hook events.

A request's id is the client's (or proxy's) ``X-Request-ID`` when it sends one (its
characters ``A-Za-z0-9._~:/+=@-``, at most 128 of them), else a fresh one. The response
carries it back in ``X-Request-ID``.
"""

from __future__ import annotations

import contextvars
import os
import re
from collections.abc import Awaitable, Callable

from aiohttp import web

REQUEST_ID = web.RequestKey("aiotusd.request_id", str)
MAX_REQUEST_ID = 128
_NOT_IN_REQUEST_ID = re.compile(r"[^A-Za-z0-9._~:/+=@-]")
_current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "aiotusd_request_id", default=None
)


def request_id_of(header: str | None) -> str:
    """The id of a request with this ``X-Request-ID``: its safe characters, or a new id.

    A new id is 128 random bits in hex, as ``uuid4().hex`` was without its version bits:
    the uuid module built a UUID object (a few Python calls) only to print it.
    """
    kept = _NOT_IN_REQUEST_ID.sub("", header or "")[:MAX_REQUEST_ID]
    return kept or os.urandom(16).hex()


def current_request_id() -> str | None:
    """The id of the request being handled, if any (for log records)."""
    return _current_request_id.get()


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
