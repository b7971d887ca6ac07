"""DELETE (termination): remove an upload and its bytes (:func:`server.uploads.terminate`)."""

from __future__ import annotations

from aiohttp import web

from ..context import CONTEXT
from ..uploads import terminate


async def handle(request: web.Request) -> web.Response:
    await terminate(request.app[CONTEXT], request, request.match_info["upload_id"])
    return web.Response(status=204)
