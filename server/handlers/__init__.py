"""Request routing by method, with ``X-HTTP-Method-Override`` and the ``Tus-Resumable`` check."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import HttpVersion11, web

from ..config import UploadSettings
from ..context import CONTEXT
from ..draft import codec_of
from ..draft import create as draft_create
from ..draft import resume as draft
from ..draft.answers import DRAFT
from ..errors import BadRequest, MethodNotAllowed, PreconditionFailed
from ..protocol import TUS_VERSION, effective_method, is_host
from ..proxy import target_authority
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
# The same URLs serve the IETF draft's requests (see server.draft). The draft: "all
# request methods that allow content are possible, such as POST, PUT, and PATCH".
DRAFT_COLLECTION: dict[str, Handler] = {
    "POST": draft_create.handle,
    "PUT": draft_create.handle,
    "PATCH": draft_create.handle,
    "OPTIONS": draft.options,
}
DRAFT_UPLOAD: dict[str, Handler] = {
    "HEAD": draft.head,
    "PATCH": draft.patch,
    "DELETE": delete.handle,
    "GET": download.handle,
    "OPTIONS": draft.options,
}
# Plain downloads come from browsers and other HTTP clients that know nothing of tus.
_NOT_TUS = frozenset({"OPTIONS", "GET"})
# Headers that carry one value: a second copy makes the request ambiguous (which
# Upload-Offset did the client mean?), so it is refused rather than guessed at.
_SINGLE_HEADERS = (
    "Host",
    "X-HTTP-Method-Override",
    "Tus-Resumable",
    "Content-Type",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Defer-Length",
    "Upload-Metadata",
    "Upload-Checksum",
    "Upload-Concat",
    "Upload-Complete",
    "Upload-Incomplete",
    "Upload-Draft-Interop-Version",
)


def _check_request_headers(request: web.Request) -> None:
    headers = request.headers
    # Names compared without case: a request whose names are all different needs no
    # search of each single header (13 lookups, 2 % of a small upload's instructions).
    if len(headers) != len({name.lower() for name in headers}):
        for name in _SINGLE_HEADERS:
            if len(headers.getall(name, ())) > 1:
                raise BadRequest(f"{name} must be sent once")
    _check_host(request)


def _check_host(request: web.Request) -> None:
    """RFC 9112 section 3.2: 400 for an HTTP/1.1 request without ``Host`` (older aiohttp
    releases let it through) and for an invalid one, empty included: URLs handed out
    name this host. HTTP/1.0 may leave ``Host`` out (see :mod:`server.proxy`)."""
    host = request.headers.get("Host")
    if host is None and request.version >= HttpVersion11:
        raise BadRequest("Host header is required in HTTP/1.1")
    if host == "":
        raise BadRequest("Host header is empty")
    if host is not None and not is_host(host):
        raise BadRequest("Host header is not a valid host")
    authority = target_authority(request)
    if authority is not None and not is_host(authority):
        raise BadRequest("request target has no valid host (or has userinfo)")


def _dispatch(tus: dict[str, Handler], draft: dict[str, Handler]) -> Handler:
    """Dispatch by method, to the draft's handlers for a request of a supported interop
    version (which needs no ``Tus-Resumable``), to tus's otherwise."""

    async def dispatch(request: web.Request) -> web.StreamResponse:
        _check_request_headers(request)
        method = effective_method(request)
        codec = codec_of(request, request.app[CONTEXT].settings)
        handlers = tus if codec is None else draft
        handler = handlers.get(method)
        if handler is None:
            allowed = ", ".join(handlers)
            raise MethodNotAllowed(f"method {method[:16]} is not allowed here", {"Allow": allowed})
        if codec is not None:
            request[DRAFT] = codec
        elif method not in _NOT_TUS and request.headers.get("Tus-Resumable") != TUS_VERSION:
            raise PreconditionFailed(
                f"Tus-Resumable: {TUS_VERSION} is required", {"Tus-Version": TUS_VERSION}
            )
        return await handler(request)

    return dispatch


collection = _dispatch(COLLECTION, DRAFT_COLLECTION)


def upload(settings: UploadSettings) -> Handler:
    """The handler of an upload's URL, without the methods the settings turn off: they
    are answered 405 and left out of ``Allow``, as methods this server does not have."""
    disabled = settings.disabled_methods
    return _dispatch(
        {method: h for method, h in UPLOAD.items() if method not in disabled},
        {method: h for method, h in DRAFT_UPLOAD.items() if method not in disabled},
    )
