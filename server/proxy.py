"""The URLs clients see for this server's resources."""

from __future__ import annotations

from aiohttp import web


def external_url(request: web.Request, path: str) -> str:
    """The absolute URL of ``path`` on this server, as the client addressed it."""
    return f"{request.scheme}://{request.host}{path}"
