"""The aiohttp application: routes, middleware, and the start and stop of its parts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from storage_backends import make_backend

from . import handlers
from .config import Settings
from .context import CONTEXT, Context
from .errors import error_middleware
from .expiration import run_sweeper
from .locks import UploadLocks
from .protocol import ID_PATTERN, TUS_VERSION
from .state import StateStore


async def _add_tus_resumable(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("Tus-Resumable", TUS_VERSION)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[error_middleware])

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        backend = make_backend(settings)
        await backend.start()
        store = await StateStore.open(settings.database_path)
        ctx = Context(settings, store, backend, UploadLocks(settings.lock_timeout))
        app[CONTEXT] = ctx
        sweeper = asyncio.create_task(run_sweeper(ctx))
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await store.close()
            await backend.stop()

    async def release_uploads(app: web.Application) -> None:
        app[CONTEXT].locks.release_all()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(release_uploads)
    app.on_response_prepare.append(_add_tus_resumable)
    base = settings.base_path
    app.router.add_route("*", base, handlers.collection)
    if base != "/":
        app.router.add_route("*", base.rstrip("/"), handlers.collection)
    app.router.add_route("*", base + "{upload_id:" + ID_PATTERN + "}", handlers.upload)
    return app
