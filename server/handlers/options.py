"""OPTIONS: what this server supports."""

from __future__ import annotations

from aiohttp import web

from ..checksum import ALGORITHMS
from ..context import CONTEXT, Context
from ..protocol import EXTENSIONS, TUS_VERSION


def extensions(ctx: Context) -> list[str]:
    """The extensions this server, with its settings and backend, really offers."""
    unavailable: set[str] = set()
    if not ctx.settings.uploads.expiration:
        unavailable.add("expiration")
    if ctx.can.concatenator is None:
        unavailable |= {"concatenation", "concatenation-unfinished"}
    if ctx.can.length_deferrer is None:
        unavailable.add("creation-defer-length")
    if ctx.settings.uploads.disable_termination:
        unavailable.add("termination")
    return [name for name in EXTENSIONS if name not in unavailable]


async def handle(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    headers = {
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": ",".join(extensions(ctx)),
        "Tus-Checksum-Algorithm": ",".join(ALGORITHMS),
    }
    if ctx.settings.uploads.max_size:
        headers["Tus-Max-Size"] = str(ctx.settings.uploads.max_size)
    return web.Response(status=204, headers=headers)
