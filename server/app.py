"""The aiohttp application: routes, middleware, and the start and stop of its parts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from storage_backends import make_backend

from . import handlers
from .capabilities import Capabilities
from .config import Settings
from .connections import client_address_middleware
from .context import CONTEXT, Context
from .cors import setup_cors
from .database import open_store, postgres_url, shared_locks
from .demo import setup_demo
from .errors import error_middleware
from .expect import close_after_unasked_body, defer_continue
from .expiration import run_sweeper
from .hooks import Hooks, PythonHook, make_transport
from .limits import LIMITS, Limits
from .locks import UploadLocks
from .metrics import Metrics, keep_published
from .ops import healthz, metrics_endpoint, readyz, request_metrics
from .outbox import Delivery
from .protocol import ID_PATTERN, TUS_VERSION
from .proxy import PROXY, ProxyPolicy
from .request_ids import add_request_id, request_id_middleware
from .workers import Worker

log = logging.getLogger("aiotusd")


async def _add_tus_resumable(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("Tus-Resumable", TUS_VERSION)


def create_app(
    settings: Settings, hooks: PythonHook | None = None, worker: Worker | None = None
) -> web.Application:
    """The server; ``hooks`` receives hook events in-process (see :mod:`server.hooks`);
    ``worker``: the app is one worker's of ``--workers``, with its share of the limits
    in ``settings`` (:func:`server.workers.share_of`).

    Raises :class:`~server.errors.ConfigError` when the hook settings cannot work.
    """
    transport = make_transport(settings, hooks)
    metrics = Metrics(None if worker is None else worker.metrics_dir)
    observe = request_metrics(metrics)
    app = web.Application()
    cors = setup_cors(app, settings)
    # Only behind a proxy can the client be another than the peer: a layer less otherwise.
    forwarded = [client_address_middleware] if settings.proxy.behind_proxy else []
    app.middlewares.extend([
        *forwarded, request_id_middleware, observe, *cors,
        error_middleware(metrics.storage_errors.inc),
    ])
    app[PROXY] = ProxyPolicy.from_settings(settings)
    app[LIMITS] = Limits(settings, metrics)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        backend = make_backend(settings)
        await backend.start()
        store = await open_store(settings)
        can = Capabilities.of(backend)
        ctx = Context(
            settings, store, backend,
            UploadLocks(settings.limits.lock_timeout, shared_locks(settings, store)),
            Hooks(settings, transport, store, can.locator), can, metrics=metrics,
        )
        app[CONTEXT] = ctx
        ctx.locks.start()
        sweeps = worker is None or worker.runs_sweeps
        sweeper = asyncio.create_task(run_sweeper(ctx)) if sweeps else None
        # Events left from an earlier run go out too, whatever hooks_events says now.
        # Claims on PostgreSQL's outbox are in the database, so every worker delivers;
        # SQLite's are in the store object, so the worker that sweeps delivers alone.
        delivers = sweeps or postgres_url(settings) is not None
        delivery = (
            Delivery(settings, ctx.hooks, store, metrics)
            if transport is not None and delivers else None
        )
        if delivery is not None:
            delivery.start()
        publishing = asyncio.create_task(keep_published()) if worker is not None else None
        try:
            yield
        finally:
            if sweeper is not None:
                sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper
            if delivery is not None:
                await delivery.stop()
            await ctx.hooks.close()
            await ctx.locks.stop()
            await store.close()
            await backend.stop()
            if publishing is not None:  # last: what the rest counted as it stopped too
                publishing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await publishing

    async def release_uploads(app: web.Application) -> None:
        app[CONTEXT].locks.release_all()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(release_uploads)
    app.on_response_prepare.append(_add_tus_resumable)
    app.on_response_prepare.append(add_request_id)
    app.on_response_prepare.append(close_after_unasked_body)
    # Before the uploads' routes, which with base_path "/" would take these paths as ids.
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if settings.metrics.enabled and not settings.metrics.port:
        app.router.add_get("/metrics", metrics_endpoint(app))
    if settings.server.demo:
        setup_demo(app, settings.server.base_path)
    base = settings.server.base_path
    app.router.add_route("*", base, handlers.collection, expect_handler=defer_continue)
    if base != "/":
        app.router.add_route(
            "*", base.rstrip("/"), handlers.collection, expect_handler=defer_continue
        )
    app.router.add_route(
        "*", base + "{upload_id:" + ID_PATTERN + "}", handlers.upload(settings.uploads),
        expect_handler=defer_continue,
    )
    return app
