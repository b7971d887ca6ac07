"""Serving the app on the bound ports until told to stop, and the exit status of a run.

:func:`serve` is the life of one server process: the only one, or one of the workers of
``--workers`` (:mod:`server.supervisor`). :func:`exit_status` turns how a run ended into
the one line and the status the command exits with, in either.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from typing import NoReturn

from aiohttp import web

from storage_backends.base import StorageError

from .app import create_app
from .config import Settings
from .connections import AppRunner, SocketSite
from .database import postgres_url
from .errors import ConfigError, one_line
from .listeners import CannotListen, Listeners
from .logs import AccessLogger
from .ops import metrics_app
from .startup_lines import startup_lines
from .state import DatabaseUnusable, SchemaTooNew
from .workers import Worker

log = logging.getLogger("aiotusd")


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server's TLS context with ``tls_cert`` and ``tls_key``; None without them."""
    cert, key = settings.server.tls_cert, settings.server.tls_key
    if not cert and not key:
        return None
    if not cert or not key:
        raise ConfigError("tls_cert and tls_key must be set together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError:
        raise ConfigError(
            f"cannot load tls_cert {cert} with tls_key {key}: they are "
            "not a PEM certificate chain and its private key"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot load tls_cert {cert} with tls_key {key}: {exc.strerror or exc}"
        ) from None
    return context


def _root(scheme: str, sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def announce(settings: Settings, listeners: Listeners, tls: bool) -> None:
    """The start-up lines, once every port serves: where, how many processes, and what is
    served (:mod:`server.startup_lines`)."""
    scheme = "https" if tls else "http"
    workers = settings.server.workers
    if listeners.unix_file is not None:
        path = listeners.unix_file[0]
        log.info("aiotusd listening on unix socket %s (%s, %s), workers %d", path, scheme,
                 settings.server.base_path, workers,
                 extra={"unix_socket": path, "workers": workers})
        root = f"{scheme}+unix://{path}"
    else:
        for sock in listeners.main:
            host, port = sock.getsockname()[:2]
            log.info("aiotusd listening on %s://%s:%d%s, workers %d", scheme, host, port,
                     settings.server.base_path, workers,
                     extra={"host": host, "port": port, "workers": workers})
        root = _root(scheme, listeners.main[0])
    metrics = None
    if settings.metrics.enabled:
        metrics = (_root("http", listeners.metrics[0]) if listeners.metrics else root) + "/metrics"
    for message, fields in startup_lines(settings, root, metrics):
        log.info("%s", message, extra=fields)
    if postgres_url(settings) and settings.storage.backend == "filesystem":
        log.info("filesystem storage with a PostgreSQL database: every server that shares the "
                 "database must use this one data_dir (%s), on storage they all mount",
                 settings.storage.data_dir)


async def _start_sites(
    runner: web.BaseRunner, sockets: list[socket.socket], tls: ssl.SSLContext | None = None,
    handshake_timeout: float = 0.0,
) -> None:
    for sock in sockets:
        await SocketSite(runner, sock, tls, handshake_timeout).start()


async def serve(
    settings: Settings, listeners: Listeners, tls: ssl.SSLContext | None = None,
    worker: Worker | None = None,
) -> None:
    """Serve on the bound ``listeners`` (with ``tls``: HTTPS) until SIGTERM or SIGINT, then
    stop accepting and let uploads record their offsets. As a ``worker`` of ``--workers``,
    tell the supervisor once serving (it announces the server), and stop when it is gone."""
    # Handlers first, never death by the default action. Until the server is announced a
    # signal ends the start at once (see _interrupted); a worker's start is the supervisor's.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in _SIGNALS:
        if worker is None:
            loop.add_signal_handler(signum, _interrupted, signum)
        else:
            loop.add_signal_handler(signum, stop.set)
    app = create_app(settings, worker=worker)
    runner = AppRunner(
        app, access_log_class=AccessLogger, shutdown_timeout=settings.server.shutdown_timeout,
        handle_signals=False,
    )
    metrics_runner = None
    if listeners.metrics:
        metrics_runner = web.AppRunner(metrics_app(app), access_log=None, handle_signals=False)
    # A worker's start and stop are the supervisor's to tell, once for all of them.
    level = logging.INFO if worker is None else logging.DEBUG
    await runner.setup()
    try:
        # Inside the try: the state store and the backend that setup() started are
        # closed properly, whatever happens next.
        await _start_sites(runner, listeners.main, tls, settings.limits.header_timeout)
        if metrics_runner is not None:
            await metrics_runner.setup()
            await _start_sites(metrics_runner, listeners.metrics)
        if worker is None:
            announce(settings, listeners, tls is not None)
            for signum in _SIGNALS:  # from now on a signal is a clean stop
                loop.add_signal_handler(signum, stop.set)
        else:
            _serving_under(worker, stop)
        await stop.wait()
        log.log(level, "shutting down")
    finally:
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await runner.cleanup()
    log.log(level, "stopped")


_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _interrupted(signum: int) -> NoReturn:
    """A signal before the server serves (Ctrl-C while the database does not answer, say):
    exit now, in one line. Waiting for a clean stop would wait out what the start is blocked
    in (database_timeout, S3's retries, a thread that opens SQLite), and there is nothing
    to stop cleanly: nothing was served, and a migration begun is a transaction."""
    log.error("interrupted by %s while starting; nothing was served",
              signal.Signals(signum).name)
    sys.stderr.flush()
    os._exit(128 + signum)


def _serving_under(worker: Worker, stop: asyncio.Event) -> None:
    """Tell the supervisor that this worker serves, and stop when the supervisor is gone
    (its end of the lifeline closes: it died, or was killed with SIGKILL)."""
    os.write(worker.ready, b".")
    os.close(worker.ready)
    loop = asyncio.get_running_loop()

    def orphaned() -> None:
        loop.remove_reader(worker.lifeline)
        log.warning("the supervising process is gone; stopping")
        stop.set()

    loop.add_reader(worker.lifeline, orphaned)


def exit_status(run: Callable[[], int | None]) -> int:
    """Run ``run``: its status, or the status of the failure it raised, which is reported
    in one line without a traceback (2 for a setting, 1 for what cannot be used)."""
    try:
        return run() or 0
    except ConfigError as exc:
        print(f"aiotusd: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except StorageError as exc:
        log.error("storage cannot be used: %s", one_line(str(exc)))
        return 1
    except SchemaTooNew as exc:
        log.error("%s", one_line(str(exc)))
        return 2
    except (DatabaseUnusable, CannotListen) as exc:
        log.error("%s", one_line(str(exc)))
        return 1
    except OSError as exc:
        log.error("cannot start: %s", one_line(str(exc)))
        return 1
