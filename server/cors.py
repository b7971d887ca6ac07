"""CORS: browser pages on other origins may use the tus endpoint and read its answers.

``cors_origins`` names the origins (``*`` for any, the default; empty turns CORS off).
A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) from an
allowed origin is answered here with ``204``, the tus methods and request headers, and a
max-age; a tus ``OPTIONS`` (without ``Access-Control-Request-Method``) is answered by
tus as ever. Every other response to a request with an ``Origin``, errors included so
that a page can read the reason, carries ``Access-Control-Allow-Origin`` and
``Access-Control-Expose-Headers`` listing every tus response header. With
``cors_credentials`` (or a list of origins) the request's origin is echoed instead of
``*``, with ``Vary: Origin``. ``cors_allow_headers``
and ``cors_expose_headers`` add an application's own headers to tus's, and the methods
that ``disable_download`` and ``disable_termination`` turn off are not offered.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp.web_request import BaseRequest

from .protocol import is_header_name

if TYPE_CHECKING:
    from .config import Settings

METHODS = ("POST", "HEAD", "PATCH", "DELETE", "GET", "OPTIONS", "PUT")
"""The methods of tus and of the IETF draft, whose creations may also be a ``PUT``."""
ALLOW_HEADERS = (
    "Authorization",
    "Content-Type",
    "Tus-Resumable",
    "Upload-Checksum",
    "Upload-Concat",
    "Upload-Defer-Length",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Offset",
    # The IETF draft's (server.draft).
    "Upload-Complete",
    "Upload-Incomplete",
    "Upload-Draft-Interop-Version",
    "Content-Disposition",
    "Content-Digest",
    "Repr-Digest",
    "Want-Repr-Digest",
    "X-HTTP-Method-Override",
    "X-Request-ID",
    "X-Requested-With",
)
EXPOSE_HEADERS = (
    "Location",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Defer-Length",
    "Upload-Concat",
    "Upload-Expires",
    # The IETF draft's (server.draft).
    "Upload-Complete",
    "Upload-Incomplete",
    "Upload-Limit",
    "Accept-Patch",
    "Repr-Digest",
    "Tus-Resumable",
    "Tus-Version",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Checksum-Algorithm",
    "X-Request-ID",
    "Content-Range",
    "Accept-Ranges",
    "Content-Disposition",
    "ETag",
    "Retry-After",
    "Allow",
)
MAX_AGE = "86400"
# Request headers a preflight may ask for beyond the allowed ones (an uploader's own
# authentication header, say): at most this many, each a valid header name.
_MAX_EXTRA_HEADERS = 32

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class CorsPolicy:
    origins: frozenset[str] | None
    """The allowed origins, lower-case; None for any."""
    credentials: bool
    methods: str = ", ".join(METHODS)
    """``Access-Control-Allow-Methods``: the tus methods the server has."""
    allow_headers: tuple[str, ...] = ALLOW_HEADERS
    """The request headers a preflight is always told are allowed."""
    expose_headers: str = ", ".join(EXPOSE_HEADERS)
    """``Access-Control-Expose-Headers``."""

    @classmethod
    def from_settings(cls, settings: Settings) -> CorsPolicy | None:
        """The policy, or None when ``cors_origins`` is empty (no CORS at all)."""
        if not settings.cors.origins:
            return None
        origins = settings.cors.origins
        disabled = settings.uploads.disabled_methods
        if not settings.uploads.ietf_draft:
            disabled |= {"PUT"}
        return cls(
            None if "*" in origins else frozenset(origins), settings.cors.credentials,
            ", ".join(method for method in METHODS if method not in disabled),
            _joined(ALLOW_HEADERS, settings.cors.allow_headers),
            ", ".join(_joined(EXPOSE_HEADERS, settings.cors.expose_headers)),
        )

    @property
    def echoes(self) -> bool:
        """Whether the answer depends on the request's ``Origin``."""
        return self.origins is not None or self.credentials

    def allowed_origin(self, origin: str | None) -> str | None:
        """The ``Access-Control-Allow-Origin`` for a request from ``origin``, or None."""
        if not self.echoes:
            return "*"
        if origin is None or (self.origins is not None and origin.lower() not in self.origins):
            return None
        return origin

    @web.middleware
    async def preflight(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Answer a preflight from an allowed origin; pass everything else on."""
        if (
            request.method != "OPTIONS"
            or "Access-Control-Request-Method" not in request.headers
            or self.allowed_origin(request.headers.get("Origin")) is None
        ):
            return await handler(request)
        headers = {
            "Access-Control-Allow-Methods": self.methods,
            "Access-Control-Allow-Headers": ", ".join(
                _joined(
                    self.allow_headers,
                    _requested(request.headers.get("Access-Control-Request-Headers", "")),
                )[: len(self.allow_headers) + _MAX_EXTRA_HEADERS]
            ),
            "Access-Control-Max-Age": MAX_AGE,
        }
        response = web.Response(status=204, headers=headers)
        if self.echoes:
            _vary(response, "Access-Control-Request-Method", "Access-Control-Request-Headers")
        return response

    async def add_headers(self, request: BaseRequest, response: web.StreamResponse) -> None:
        """``on_response_prepare``: the CORS headers of a response to a request with an
        ``Origin``, as every browser's request from another origin has. A response to a
        request without one gets ``Vary: Origin`` alone, so that no cache hands it to a
        page (tusd does the same). The headers left out cost 1.2-1.6 % of a small upload's
        instructions, mostly the long ``Access-Control-Expose-Headers``."""
        origin = request.headers.get("Origin")
        if origin is None or self.echoes:
            _vary(response, "Origin")
        allowed = None if origin is None else self.allowed_origin(origin)
        if allowed is None:
            return
        response.headers["Access-Control-Allow-Origin"] = allowed
        if self.credentials:
            response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers["Access-Control-Expose-Headers"] = self.expose_headers


CORS = web.AppKey("cors", CorsPolicy)
"""The app's policy, for the answers made before the app sees a request (see
:func:`server.connections.AppRunner`): they get no ``on_response_prepare``."""


def setup_cors(app: web.Application, settings: Settings) -> list[Middleware]:
    """Hook CORS into ``app``; returns the middleware to add (none when CORS is off)."""
    policy = CorsPolicy.from_settings(settings)
    if policy is None:
        return []
    app[CORS] = policy
    app.on_response_prepare.append(policy.add_headers)
    return [policy.preflight]


def _requested(requested: str) -> list[str]:
    """The valid header names a preflight asks for, lower-case."""
    names = [name.strip().lower() for name in requested.split(",")]
    return [name for name in names if is_header_name(name)]


def _joined(ours: tuple[str, ...], more: Iterable[str]) -> tuple[str, ...]:
    """``ours`` followed by those of ``more`` that are not among them, each once (header
    names are compared without regard to case)."""
    seen = {name.lower() for name in ours}
    added = []
    for name in more:
        if name.lower() not in seen:
            seen.add(name.lower())
            added.append(name)
    return (*ours, *added)


def _vary(response: web.StreamResponse, *names: str) -> None:
    if "Vary" not in response.headers:
        response.headers["Vary"] = ", ".join(names)
        return
    present = [v.strip() for v in response.headers.get("Vary", "").split(",") if v.strip()]
    lower = {v.lower() for v in present}
    present += [name for name in names if name.lower() not in lower]
    response.headers["Vary"] = ", ".join(present)
