"""Request routing by method, with ``X-HTTP-Method-Override`` and the ``Tus-Resumable`` check."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from ..errors import MethodNotAllowed, PreconditionFailed
from ..protocol import TUS_VERSION
from . import create, delete, download, head, options, patch

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

COLLECTION: dict[str, Handler] = {"POST": create.handle, "OPTIONS": options.handle}
UPLOAD: dict[str, Handler] = {
    "HEAD": head.handle,
    "PATCH": patch.handle,
    "DELETE": delete.handle,
    "GET": download.handle,
    "OPTIONS": options.handle,
}
# Plain downloads come from browsers and other HTTP clients that know nothing of tus.
_NOT_TUS = frozenset({"OPTIONS", "GET"})


def effective_method(request: web.Request) -> str:
    """The request method, or the one ``X-HTTP-Method-Override`` names instead."""
    override = request.headers.get("X-HTTP-Method-Override")
    return override.strip().upper() if override else request.method


def _dispatch(handlers: dict[str, Handler]) -> Handler:
    allowed = ", ".join(handlers)

    async def dispatch(request: web.Request) -> web.StreamResponse:
        method = effective_method(request)
        handler = handlers.get(method)
        if handler is None:
            raise MethodNotAllowed(f"method {method[:16]} is not allowed here", {"Allow": allowed})
        if method not in _NOT_TUS and request.headers.get("Tus-Resumable") != TUS_VERSION:
            raise PreconditionFailed(
                f"Tus-Resumable: {TUS_VERSION} is required", {"Tus-Version": TUS_VERSION}
            )
        return await handler(request)

    return dispatch


collection = _dispatch(COLLECTION)
upload = _dispatch(UPLOAD)
