"""The ``aiotusd`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from aiohttp import web

from storage_backends.base import StorageError

from . import __version__
from .app import AppRunner, create_app
from .config import ENV_PREFIX, SETTINGS, Setting, Settings, load_settings
from .errors import ConfigError
from .logs import AccessLogger, setup_logging
from .state import SchemaTooNew

log = logging.getLogger("aiotusd")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like the errors of bad setting values."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _metavar(setting: Setting) -> str:
    if setting.choices:
        return "{" + ",".join(setting.choices) + "}"
    if isinstance(getattr(Settings(), setting.name), bool):
        return "{true,false}"
    return setting.name.upper()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="aiotusd",
        description="A tus resumable-upload server. Every flag can also be set in the "
        f"config file or as {ENV_PREFIX}<NAME>; flags win over the environment, "
        "the environment over the file.",
    )
    parser.add_argument("--version", action="version", version=f"aiotusd {__version__}")
    parser.add_argument(
        "--config", metavar="FILE", help=f"TOML config file (default: ${ENV_PREFIX}CONFIG, if set)"
    )
    for setting in SETTINGS:
        parser.add_argument(
            "--" + setting.name.replace("_", "-"),
            dest=setting.name,
            default=None,
            metavar=_metavar(setting),
            help=f"{setting.help} (default: {getattr(Settings(), setting.name)!r})".replace(
                "%", "%%"
            ),
        )
    return parser


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then stop accepting and let uploads record their offsets."""
    # Handlers first: a signal that comes while starting up (even once the port is
    # open) then ends in the same clean stop, never in death by the default action.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    app = create_app(settings)
    runner = AppRunner(
        app, access_log_class=AccessLogger, shutdown_timeout=settings.shutdown_timeout,
        handle_signals=False,
    )
    await runner.setup()
    try:
        # Inside the try: when the port cannot be bound, the state store and the
        # backend that setup() started are still closed properly.
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        for sock in runner.addresses:
            host, port = sock[0], sock[1]
            log.info("aiotusd listening on http://%s:%d%s", host, port, settings.base_path,
                     extra={"host": host, "port": port})
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = vars(parser.parse_args(argv))
    config_file = arguments.pop("config") or os.environ.get(ENV_PREFIX + "CONFIG")
    try:
        settings = load_settings(arguments, os.environ, config_file)
    except ConfigError as exc:
        print(f"aiotusd: error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_format, settings.log_level)
    try:
        asyncio.run(serve(settings))
    except StorageError as exc:
        log.error("storage cannot be used: %s", exc)
        return 1
    except SchemaTooNew as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0
