"""The demo page (``--demo``): ``/`` serves an Uppy Dashboard that uploads to this server.

The page is ``static/index.html`` with the tus endpoint filled in: the absolute URL of
``base_path`` as the client addressed the server (so behind a reverse proxy too, see
:mod:`server.proxy`). Its script, styles and the Uppy bundle are served from
``static/demo/`` under ``/_demo/``; the bundle is ``dist/uppy.min.js`` and
``dist/uppy.min.css`` of the npm package ``uppy`` 6.0.1 (MIT, ``static/demo/uppy/LICENSE``),
shipped with the package: the page loads nothing from other sites.
"""

from __future__ import annotations

import html
from pathlib import Path

from aiohttp import web

from .proxy import external_url

STATIC = Path(__file__).resolve().parent / "static"
ASSETS_PATH = "/_demo/"
"""Where the page's script, styles and the Uppy bundle are served (relative to the page)."""
_PLACEHOLDER = "{{ endpoint }}"


def setup_demo(app: web.Application, base_path: str) -> None:
    """Serve the demo page at ``/`` and its assets under :data:`ASSETS_PATH`."""
    template = (STATIC / "index.html").read_text(encoding="utf-8")

    async def page(request: web.Request) -> web.Response:
        endpoint = external_url(request, base_path)
        return web.Response(
            text=template.replace(_PLACEHOLDER, html.escape(endpoint, quote=True)),
            content_type="text/html",
            headers={"Cache-Control": "no-store"},
        )

    app.router.add_get("/", page)
    app.router.add_static(ASSETS_PATH, STATIC / "demo")
