"""What operators ask of a running server: ``/healthz``, ``/readyz`` and ``/metrics``,
and the middlewares that count requests for the metrics.

The endpoints live outside ``base_path`` and answer plain text:

- ``/healthz``: ``200`` while the process serves requests (a liveness probe);
- ``/readyz``: ``200`` when the database answers a query and the storage takes writes
  (a readiness probe), else ``503`` saying what is wrong;
- ``/metrics``: Prometheus text (with ``--metrics``), on the main port or ``metrics_port``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import Histogram

from .context import CONTEXT
from .errors import one_line
from .metrics import CONTENT_TYPE, Metrics
from .protocol import effective_method
from .receive import RECEIVED
from .state import DatabaseUnavailable

log = logging.getLogger("aiotusd")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

READY_TIMEOUT = 5.0
"""Seconds each of the database and the storage get to answer ``/readyz``."""
_METHODS = frozenset({"GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS", "PUT"})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n", headers={"Cache-Control": "no-store"})


async def readyz(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    problems = []
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await ctx.store.schema_version()
    except Exception as exc:
        problems.append(f"database: {_reason(exc)}")
    if ctx.can.health_checker is not None:
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await ctx.can.health_checker.check()
        except Exception as exc:
            problems.append(f"storage: {_reason(exc)}")
    if problems:
        reason = one_line("not ready: " + "; ".join(problems))
        log.warning("%s", reason)
        return web.Response(status=503, text=reason + "\n", headers={"Cache-Control": "no-store"})
    return web.Response(text="ready\n", headers={"Cache-Control": "no-store"})


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {READY_TIMEOUT:g} s"
    return str(exc) or type(exc).__name__


def metrics_endpoint(app: web.Application) -> Handler:
    """``GET /metrics`` of the server ``app`` (which may be another app than the caller's)."""

    async def handle(request: web.Request) -> web.Response:
        ctx = app[CONTEXT]
        try:
            ctx.metrics.uploads_in_progress.set(await ctx.store.count_unfinished())
            ctx.metrics.hook_outbox(*await ctx.store.count_events())
        except DatabaseUnavailable as exc:
            # An outage is when the counters matter most: they go out, and the gauges
            # counted in the database keep their last values.
            log.warning("metrics: the gauges counted in the database are not updated: %s", exc)
        return web.Response(body=ctx.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    return handle


def metrics_app(app: web.Application) -> web.Application:
    """A bare app that serves the metrics of ``app``, for ``metrics_port``."""
    metrics = web.Application()
    metrics.router.add_get("/metrics", metrics_endpoint(app))
    return metrics


def request_metrics(metrics: Metrics) -> Middleware:
    """The middleware (around the error middleware) that observes every request's
    latency, status and body bytes. Storage failures are counted where errors become
    answers (:func:`server.errors.error_middleware`).

    The histogram of each method and status is looked up once: prometheus_client's
    ``labels`` checks and converts the values under a lock, some five calls a request.
    There are at most eight methods and the statuses aiotusd answers with.
    """
    durations: dict[tuple[str, str], Histogram] = {}

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.monotonic()
        status = "500"
        try:
            response = await handler(request)
            status = str(response.status)
            return response
        except (ConnectionError, asyncio.CancelledError):
            status = "499"  # the client left before its answer: nginx's number for that
            raise
        finally:
            method = effective_method(request)
            labels = (method if method in _METHODS else "other", status)
            duration = durations.get(labels)
            if duration is None:
                duration = durations[labels] = metrics.request_duration.labels(*labels)
            duration.observe(time.monotonic() - start)
            received = request.get(RECEIVED, 0)
            if received > 0:
                metrics.received_bytes.inc(received)

    return observe
