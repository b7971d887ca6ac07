"""The ``aiotusd`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import __version__
from .cli_args import plain, split_command
from .config import (
    ENV_PREFIX,
    SECTIONS,
    SETTINGS,
    Setting,
    Settings,
    aws_secrets_from_files,
    load_settings,
    shown,
    unknown_variables,
)
from .config_values import (
    parse_base_path,
    parse_directory,
    parse_duration,
    parse_events,
    parse_header_names,
    parse_int,
    parse_networks,
    parse_origins,
    parse_path,
    parse_rate,
    parse_size,
    parse_url,
    parse_whole_seconds,
)
from .database import open_store, own_database, sqlite_path
from .errors import ConfigError, one_line
from .healthcheck import probe, process_of
from .listeners import Listeners
from .logs import setup_logging
from .outbox import IDLE_POLL
from .serving import exit_status, serve, tls_context
from .state import HookEvent
from .supervisor import Supervisor

log = logging.getLogger("aiotusd")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like the errors of bad setting values."""

    def __init__(self, **kwargs: Any) -> None:
        # Room for "--database-timeout DURATION" beside its help, not above it.
        super().__init__(**kwargs, formatter_class=lambda prog: argparse.HelpFormatter(
            prog, max_help_position=36))

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


_METAVARS: dict[Callable[[Any], Any], str] = {
    parse_size: "SIZE", parse_duration: "DURATION", parse_whole_seconds: "DURATION",
    parse_int: "N", parse_rate: "PER_SECOND", parse_path: "PATH", parse_directory: "DIR",
    parse_url: "URL", parse_events: "EVENTS", parse_header_names: "HEADERS",
    parse_networks: "NETWORKS", parse_origins: "ORIGINS", parse_base_path: "PATH",
}


def _metavar(setting: Setting) -> str:
    """What a flag's value is (``SIZE``, ``DURATION``), shorter than its name in capitals."""
    if setting.choices:
        return "{" + ",".join(setting.choices) + "}"
    return _METAVARS.get(setting.parse, setting.name.upper())


def _add_setting(parser: argparse._ActionsContainer, setting: Setting, hidden: bool = False,
                 ) -> None:
    """The flag of ``setting``: a boolean as ``--x``/``--no-x`` (see :mod:`server.cli_args`),
    the default in its help once, in the form a flag takes. ``hidden``: left out of the
    help and absent from the result unless given (a subcommand's own options)."""
    default = shown(setting)
    help_text = setting.help + (f" (default: {default})" if default else "")
    options: dict[str, Any] = {
        "dest": setting.name,
        "default": argparse.SUPPRESS if hidden else None,
        "help": argparse.SUPPRESS if hidden else help_text.replace("%", "%%"),
    }
    if isinstance(setting.default, bool):
        options["action"] = argparse.BooleanOptionalAction
    else:
        options["metavar"] = _metavar(setting)
    parser.add_argument("--" + setting.name.replace("_", "-"), **options)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="aiotusd",
        usage="%(prog)s [--config FILE] [--SETTING VALUE ...] | %(prog)s hooks {list,retry} ... "
        "| %(prog)s healthcheck ...",
        description="A tus resumable-upload server. Every flag can also be set in the "
        f"config file or as {ENV_PREFIX}<NAME>; flags win over the environment, "
        "the environment over the file. Sizes take units (8MiB, 5GB), durations too "
        "(500ms, 15s, 2h, 7d); a boolean flag alone is true (--metrics, --no-metrics). "
        "tusd's flags (-upload-dir ...) are understood too: docs/coming-from-tusd.md.",
        epilog="aiotusd hooks {list,retry} --help: post-hook events that were not delivered; "
        "aiotusd healthcheck --help: whether the server answers",
    )
    parser.add_argument("--version", action="version", version=f"aiotusd {__version__}")
    parser.add_argument(
        "--config", metavar="FILE", help=f"TOML config file (default: ${ENV_PREFIX}CONFIG, if set)"
    )
    groups = {section: parser.add_argument_group(f"{section} settings") for section in SECTIONS}
    for setting in SETTINGS:
        _add_setting(groups[setting.section], setting)
    return parser


_HOOKS_OPTIONS = ("data_dir", "database")
"""The settings ``aiotusd hooks --help`` shows: those that find the database."""


def _add_global_options(parser: argparse.ArgumentParser) -> None:
    """The options of the server that a subcommand takes too, before or after its action:
    ``--config`` and the settings (only those of :data:`_HOOKS_OPTIONS` in its help)."""
    parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="TOML config file")
    for setting in SETTINGS:
        if setting.name in _HOOKS_OPTIONS:
            parser.add_argument("--" + setting.name.replace("_", "-"), dest=setting.name,
                                metavar=_metavar(setting), default=argparse.SUPPRESS,
                                help=setting.help)
        else:
            _add_setting(parser, setting, hidden=True)


def build_hooks_parser() -> argparse.ArgumentParser:
    """``aiotusd hooks``: the post-hook events still in the outbox of the server's database."""
    parser = _Parser(
        prog="aiotusd hooks",
        description="Post-hook events that were not delivered yet: list them, or send them "
        "again. The database is found as the server finds it: flags, "
        f"{ENV_PREFIX}<NAME> and the config file.",
    )
    _add_global_options(parser)
    actions = parser.add_subparsers(dest="action", metavar="{list,retry}", required=True)
    listing = actions.add_parser("list", help="events not delivered yet, oldest first")
    listing.add_argument("--dead", action="store_true", help="only the events given up on")
    retry = actions.add_parser("retry", help="send events again, with fresh attempts")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("hook_id", nargs="?", metavar="ID", help="the event's Hook-Id")
    which.add_argument("--all-dead", action="store_true", help="every dead event")
    for action in (listing, retry):
        _add_global_options(action)
    return parser


def _print_events(events: list[HookEvent], dead_only: bool) -> None:
    if not events:
        print("no dead hook events" if dead_only else "no hook events waiting")
        return
    rows = [("HOOK ID", "EVENT", "UPLOAD", "STATUS", "ATTEMPTS", "CREATED (UTC)", "LAST ERROR")]
    for event in events:
        rows.append((
            event.id, event.type, event.upload_id, "dead" if event.dead else "pending",
            str(event.attempts), time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(event.created_at)),
            event.last_error,
        ))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for *cells, last_error in rows:
        padded = (cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
        print("  ".join([*padded, last_error]))


async def hooks_command(
    settings: Settings, action: str, dead: bool = False, hook_id: str | None = None
) -> int:
    """``aiotusd hooks list|retry``, on the database the server with these settings uses."""
    path = sqlite_path(settings)
    if path is not None and not path.is_file():
        print(f"aiotusd: error: no database at {path}", file=sys.stderr)
        return 1
    store = await open_store(settings)
    try:
        if action == "list":
            _print_events(await store.hook_events(dead_only=dead), dead)
            return 0
        count = await store.retry_events(hook_id)
    finally:
        await store.close()
    if hook_id is not None and not count:
        print(f"aiotusd: error: no hook event {hook_id} in the outbox", file=sys.stderr)
        return 1
    if not count:
        print("no dead hook events")
        return 0
    print(f"{count} hook event(s) will be sent again (by a running server within "
          f"{IDLE_POLL:g} s, else when the server starts)")
    return 0


def _serve(settings: Settings) -> int | None:
    """Serve with these settings until told to stop: in this process, or in the workers
    of a :class:`Supervisor`; the exit status of the supervisor."""
    tls = tls_context(settings)  # a bad certificate is told before anything is taken
    port, metrics_port = settings.server.port, settings.metrics.port
    if settings.metrics.enabled and metrics_port and metrics_port == port:
        raise ConfigError(f"metrics_port {metrics_port} is the port of uploads too: give "
                          "metrics_port 0 to serve /metrics there, or another port")
    if settings.proxy.trusted_proxies and not settings.proxy.behind_proxy:
        log.warning("trusted_proxies is set without behind_proxy: forwarded headers are ignored")
    # Before anything of the database is touched, and held for the process's life (and
    # the workers', who inherit it).
    own_database(settings)
    listeners = Listeners.bind(settings)
    try:
        if settings.server.workers > 1:
            return Supervisor(settings, listeners, tls).run()
        asyncio.run(serve(settings, listeners, tls))
        return None
    finally:
        listeners.close()


def build_healthcheck_parser() -> argparse.ArgumentParser:
    """``aiotusd healthcheck``: GET /healthz of the server these settings describe."""
    parser = _Parser(
        prog="aiotusd healthcheck",
        description="Exit 0 when the server answers GET /healthz with 200, else 1 with the "
        "reason. The port (and TLS) come from the settings, loaded as the server loads "
        "them: the server's flags given here, AIOTUSD_<NAME> and the config file.",
    )
    parser.add_argument("--pid", type=int, metavar="PID", default=argparse.SUPPRESS,
                        help="take the flags, the environment and the working directory of "
                        "the server's process PID (1 in a container)")
    _add_global_options(parser)
    return parser


_PARSERS = {"hooks": build_hooks_parser, "healthcheck": build_healthcheck_parser}


def _arguments(argv: list[str]) -> tuple[str | None, dict[str, Any]]:
    """The subcommand (None: serve) and the parsed arguments of the command line."""
    command, argv = split_command(plain(argv))
    parser = _PARSERS[command]() if command is not None else build_parser()
    return command, vars(parser.parse_args(argv))


def _healthcheck(arguments: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The settings' arguments and the environment a health check loads: its own, or
    with ``--pid`` those of the server's process (whose working directory it takes)."""
    pid = arguments.pop("pid", None)
    if pid is None:
        return arguments, dict(os.environ)
    argv, environ, cwd = process_of(pid)
    try:
        os.chdir(cwd)
    except OSError as exc:
        raise ConfigError(f"cannot enter {cwd}, the directory of process {pid}: "
                          f"{exc.strerror}") from None
    command, server = _arguments(argv)
    if command is not None:
        raise ConfigError(f"process {pid} is no aiotusd server: it runs aiotusd {command}")
    return server, environ


def main(argv: Sequence[str] | None = None) -> int:
    try:
        command, arguments = _arguments(sys.argv[1:] if argv is None else list(argv))
        environ = dict(os.environ)
        if command == "healthcheck":
            arguments, environ = _healthcheck(arguments)
    except ConfigError as exc:
        print(f"aiotusd: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    options = {
        key: arguments.pop(key) for key in ("action", "dead", "hook_id") if key in arguments
    }
    arguments.pop("all_dead", None)  # retry without an ID is retry of every dead event
    config_file = arguments.pop("config", None) or environ.get(ENV_PREFIX + "CONFIG")
    try:
        settings = load_settings(arguments, environ, config_file)
        os.environ.update(aws_secrets_from_files(os.environ))  # where botocore reads them
    except ConfigError as exc:
        print(f"aiotusd: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    if command == "healthcheck":
        failure = probe(settings)
        if failure is not None:
            print(f"aiotusd: unhealthy: {one_line(failure)}", file=sys.stderr)
        return 0 if failure is None else 1
    setup_logging(settings.log.format, settings.log.level)
    for warning in unknown_variables(os.environ):
        log.warning("%s", warning)
    if command == "hooks":
        return exit_status(lambda: asyncio.run(hooks_command(settings, **options)))
    return exit_status(lambda: _serve(settings))
