"""Settings: defaults, a TOML file, ``AIOTUSD_*`` environment variables and flags.

Precedence is flag > environment > file > default. The settings come in sections
(:class:`Settings` holds one object per section); each field of a section declares its
default, its parser (:mod:`server.config_values`), its bounds and its help. Everything
else is derived from those fields, so nothing can drift apart: :data:`SETTINGS`, the
flat list of settings, gives every one its flag (``--hooks-url``), its environment
variable (``AIOTUSD_HOOKS_URL``) and its TOML key, either flat (``hooks_url = ...``) or
in its section's table (``[hooks]`` then ``url = ...``); ``--help`` and
``docs/configuration.md`` are rendered from it.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .config_values import (
    MAX_INTEGER,
    MAX_SECONDS,
    Network,
    format_duration,
    format_size,
    parse_base_path,
    parse_bool,
    parse_directory,
    parse_duration,
    parse_events,
    parse_header_names,
    parse_host,
    parse_int,
    parse_networks,
    parse_origins,
    parse_path,
    parse_rate,
    parse_size,
    parse_str,
    parse_url,
    parse_whole_seconds,
)
from .errors import ConfigError
from .events import EVENTS, PRE_ACCESS
from .signing import SIGNINGS

ENV_PREFIX = "AIOTUSD_"
_NOT_SETTINGS = frozenset({ENV_PREFIX + "CONFIG"})
"""``AIOTUSD_*`` variables the command reads itself, not settings."""
_FILE_SUFFIX = "_FILE"
"""``AIOTUSD_<NAME>_FILE``: the value of ``AIOTUSD_<NAME>`` is in the file it names."""
# What Kubernetes injects into a pod for a Service named ``aiotusd`` (or ``aiotusd-x``):
# ``AIOTUSD_SERVICE_HOST``, ``AIOTUSD_SERVICE_PORT(_<NAME>)``, ``AIOTUSD_PORT_1080_TCP(_PROTO
# |_PORT|_ADDR)``, and ``AIOTUSD_PORT=tcp://10.96.0.5:1080``, which shares its name with our
# ``port``: in that URL form it is Kubernetes', a number is ours.
_SERVICE_LINK = re.compile(
    r"(?:[A-Z0-9_]+_)?(?:SERVICE_HOST|SERVICE_PORT(?:_\w+)?|PORT_\d+_(?:TCP|UDP|SCTP)"
    r"(?:_PROTO|_PORT|_ADDR)?)"
)
_SERVICE_LINK_URL = re.compile(r"(?:tcp|udp|sctp)://\S+:\d+")
MAX_WORKERS = 64
"""Most ``workers``: more cores than a tus server's disk and network keep busy; beyond,
run several servers on PostgreSQL."""


def _option(
    default: Any,
    parse: Callable[[Any], Any],
    help: str,
    *,
    choices: tuple[str, ...] = (),
    minimum: float | None = None,
    maximum: float | None = None,
    name: str = "",
) -> Any:
    """A section's field: its default and how its value is read. ``name`` is the flat name
    when it is not the section's prefix followed by the field's name."""
    spec = {"parse": parse, "help": help, "choices": choices, "minimum": minimum,
            "maximum": maximum, "name": name}
    return field(default=default, metadata=spec)


def _seconds(default: float, help: str, minimum: float = 0.01) -> Any:
    return _option(default, parse_duration, help, minimum=minimum, maximum=MAX_SECONDS)


def _whole_seconds(default: int, help: str, minimum: int = 0) -> Any:
    return _option(default, parse_whole_seconds, help, minimum=minimum, maximum=MAX_SECONDS)


def _count(default: int, help: str, minimum: int = 1) -> Any:
    return _option(default, parse_int, help, minimum=minimum, maximum=MAX_INTEGER)


@dataclass(frozen=True)
class ServerSettings:
    """Where and how the server listens."""

    PREFIX: ClassVar[str] = ""
    host: str = _option("127.0.0.1", parse_host, "address to listen on")
    port: int = _option(1080, parse_int, "TCP port to listen on", minimum=0, maximum=65535)
    unix_socket: str = _option(
        "", parse_path,
        "path of a unix socket to serve HTTP on instead of host:port (every worker serves "
        "it; metrics_port stays a TCP port on host)")
    base_path: str = _option("/files/", parse_base_path, "URL path under which uploads live")
    relative_location: bool = _option(
        False, parse_bool,
        "answer a creation with Location: {base_path}{id} (below a proxy's X-Forwarded-Prefix) "
        "rather than an absolute URL")
    tls_cert: str = _option("", parse_path, "PEM certificate chain file: serve HTTPS")
    tls_key: str = _option("", parse_path, "PEM private key file of tls_cert")
    shutdown_timeout: float = _seconds(
        10.0, "seconds in-flight requests get to finish on SIGTERM", minimum=0)
    workers: int = _option(
        1, parse_int,
        "processes that serve the port, to use more cores; max_connections, "
        "max_uploads_receiving(_per_client), create_rate and create_burst stay the server's, "
        "divided between them", minimum=1, maximum=MAX_WORKERS)
    demo: bool = _option(False, parse_bool, "serve a demo upload page (Uppy) at /")


@dataclass(frozen=True)
class StorageSettings:
    """Where the bytes and the state are kept, and when they are made durable."""

    PREFIX: ClassVar[str] = ""
    backend: str = _option("filesystem", parse_str, "storage backend",
                           choices=("filesystem", "s3"), name="storage")
    data_dir: str = _option("./data", parse_directory,
                            "directory for uploaded files and the database")
    database: str = _option(
        "", parse_path,
        "SQLite file (default: {data_dir}/aiotusd.sqlite3), or a postgresql:// URL")
    database_pool_size: int = _option(
        10, parse_int, "most connections to a PostgreSQL database", minimum=1, maximum=1000)
    database_timeout: float = _seconds(
        10.0, "seconds to connect to PostgreSQL, to wait for a pooled connection, and for one "
        "statement")
    fsync: str = _option(
        "always", parse_str,
        "always: data is fdatasync'd before the offset that covers it is recorded (survives "
        "a power loss); none: the OS writes it back (survives a crash of aiotusd only)",
        choices=("always", "none"))
    commit_bytes: int = _option(
        8 * 1024 * 1024, parse_size,
        "during a long PATCH, make the offset durable after this many bytes", minimum=1,
        maximum=MAX_INTEGER)
    commit_seconds: float = _seconds(
        2.0, "during a long PATCH, make the offset durable after this many seconds")

    @property
    def database_path(self) -> Path:
        return Path(self.database) if self.database else Path(self.data_dir) / "aiotusd.sqlite3"


@dataclass(frozen=True)
class S3Section:
    """The S3 backend, with `storage = "s3"`.

    The backend takes them as its own :class:`~storage_backends.s3.settings.S3Settings`."""

    PREFIX: ClassVar[str] = "s3_"
    bucket: str = _option("", parse_str, "S3 bucket (storage = s3)")
    prefix: str = _option("", parse_str, "prefix of object keys in the bucket")
    endpoint: str = _option("", parse_url, "S3 endpoint URL, for stores other than AWS")
    region: str = _option("", parse_str, "S3 region")
    part_size: int = _option(8 * 1024 * 1024, parse_size, "multipart part size",
                             minimum=5 * 1024 * 1024, maximum=5 * 1024**3)
    max_parts: int = _count(10000, "most parts the store allows in one upload")
    concurrency: int = _count(4, "parts uploaded at once per upload")
    equal_parts: bool = _option(False, parse_bool,
                                "make every part but the last the same size (Cloudflare R2)")
    path_style: bool = _option(False, parse_bool,
                               "path-style bucket addressing (MinIO and others)")
    download_redirect: bool = _option(
        False, parse_bool, "answer GET with a redirect to a short-lived presigned URL")


@dataclass(frozen=True)
class UploadSettings:
    """What uploads may be, and how long they live."""

    PREFIX: ClassVar[str] = ""
    max_size: int = _option(0, parse_size, "largest upload in bytes, 0 for no limit",
                            minimum=0, maximum=MAX_INTEGER)
    max_metadata_size: int = _option(
        4096, parse_size,
        "longest Upload-Metadata header in bytes; longer ones are refused with 400",
        minimum=1, maximum=MAX_INTEGER)
    max_concat_parts: int = _count(
        100, "most partial uploads one final upload may concatenate")
    expiration: int = _whole_seconds(
        604800, "seconds an unfinished upload lives after its last write, 0 to keep forever")
    expiry_interval: float = _seconds(60.0, "seconds between sweeps for expired uploads")
    gone_retention: int = _whole_seconds(
        604800, "seconds a terminated or expired upload answers 410 before it is forgotten")
    disable_download: bool = _option(
        False, parse_bool, "refuse GET of an upload's bytes with 405 (HEAD still answers)")
    disable_termination: bool = _option(
        False, parse_bool,
        "refuse DELETE of an upload with 405 and do not announce termination (expired "
        "uploads are still removed)")
    ietf_draft: bool = _option(
        True, parse_bool,
        "serve requests that carry a supported Upload-Draft-Interop-Version as the IETF "
        "resumable uploads draft; off: they are tus requests")
    ietf_draft_interim: bool = _option(
        True, parse_bool,
        "send the IETF draft's 104 interim responses (where a new upload lives, how far a "
        "body got); off behind a proxy that takes a 104 for the final response, as nginx does")

    @property
    def disabled_methods(self) -> frozenset[str]:
        """The methods on an upload's URL that these settings turn off: its handler
        refuses them and CORS does not offer them."""
        return frozenset(
            {"GET"} if self.disable_download else ()
        ) | frozenset({"DELETE"} if self.disable_termination else ())


@dataclass(frozen=True)
class LimitSettings:
    """What one request, one client and all of them may take: time, rate and room."""

    PREFIX: ClassVar[str] = ""
    lock_timeout: float = _seconds(
        3.0, "seconds a request waits for another request on the same upload to let go",
        minimum=0)
    lock_lease: float = _seconds(
        10.0, "seconds an upload's lock lasts in a database that several processes share "
        "(PostgreSQL), renewed while held: how long a process that died keeps its uploads "
        "locked", minimum=1)
    idle_timeout: float = _seconds(
        60.0, "seconds a request body may stall before the connection is closed")
    body_min_rate: int = _option(
        1024, parse_size,
        "least bytes per second a request body must bring over each body_rate_window, or "
        "the connection is closed; 0 for no minimum", minimum=0, maximum=MAX_INTEGER)
    body_rate_window: float = _seconds(30.0, "seconds over which body_min_rate is measured")
    header_timeout: float = _seconds(
        10.0,
        "seconds a client gets to send a request's headers (from the connection's start or "
        "the request's first byte), the rest of a refused body, and with tls_cert the TLS "
        "handshake; then the connection is closed")
    keepalive_timeout: float = _seconds(
        75.0, "seconds an idle connection is kept open for the client's next request")
    send_timeout: float = _seconds(
        60.0, "seconds a client may take none of a response before the connection is closed")
    create_rate: float = _option(
        20.0, parse_rate,
        "uploads each client address may create per second, after create_burst; 0 for no "
        "limit (beyond it: 429)", minimum=0)
    create_burst: int = _count(
        3000, "uploads each client address may create at once before create_rate applies")
    max_uploads_receiving: int = _count(
        200, "most request bodies (PATCH, POST with data) received at once; 0 for no limit "
        "(beyond it: 503)", minimum=0)
    max_uploads_receiving_per_client: int = _count(
        32, "most request bodies one client address sends at once, once half of "
        "max_uploads_receiving are taken; 0 for no limit (beyond it: 503)", minimum=0)
    max_connections: int = _count(
        600, "most open client connections; at the limit a new one takes the place of the one "
        "that has waited longest without a request under way, else it gets 503 and is "
        "closed; 0 for no limit", minimum=0)


@dataclass(frozen=True)
class HookSettings:
    """Hooks: where events go, which fire, and how post events are delivered."""

    PREFIX: ClassVar[str] = "hooks_"
    url: str = _option("", parse_url, "URL that receives hook events as JSON POSTs")
    command: str = _option("", parse_str,
                           "program run for each hook event, JSON on stdin, answer on stdout")
    python: str = _option("", parse_str,
                          "in-process hooks: an async callable named module:attribute")
    dir: str = _option("", parse_path,
                       "directory of tusd's file hooks: the program named after each event, "
                       "tusd's JSON on stdin")
    format: str = _option(
        "aiotusd", parse_str, "JSON of hook events and answers: aiotusd's own, or tusd's (v2)",
        choices=("aiotusd", "tusd"))
    secret: str = _option("", parse_str, "key that signs hook requests (HMAC-SHA256)")
    signing: str = _option(
        "aiotusd", parse_str,
        "how hooks_url requests are signed: aiotusd (Hook-Signature), standard (Standard "
        "Webhooks: webhook-signature; a whsec_ secret is its base64 key) or both",
        choices=SIGNINGS)
    events: tuple[str, ...] = _option(
        tuple(event for event in EVENTS if event != PRE_ACCESS), parse_events,
        "hook events that fire")
    timeout: float = _seconds(10.0, "seconds a hook may take to answer")
    fail_open: bool = _option(
        False, parse_bool,
        "let requests through when a blocking hook times out or is unreachable")
    forward_headers: tuple[str, ...] = _option(
        ("Authorization", "Cookie", "Origin", "Referer", "User-Agent", "X-Forwarded-For",
         "X-Request-Id"),
        parse_header_names, "request headers passed to hooks")
    progress_interval: float = _seconds(
        1.0, "least seconds between post-receive events of one upload", minimum=0)
    max_attempts: int = _count(50, "delivery attempts before an event is dead")
    max_age: int = _whole_seconds(86400, "seconds an event is retried before it is dead",
                                  minimum=1)
    retry_delay: float = _seconds(
        1.0, "seconds before the first retry; doubles with each further one", minimum=0)
    concurrency: int = _count(4, "events delivered at once")


@dataclass(frozen=True)
class ProxySettings:
    """Whom to believe about the client's address and the URL it used."""

    PREFIX: ClassVar[str] = ""
    behind_proxy: bool = _option(
        False, parse_bool,
        "build URLs from Forwarded / X-Forwarded-* headers of a reverse proxy")
    trusted_proxies: tuple[Network, ...] = _option(
        (), parse_networks,
        "networks whose forwarded headers are believed (empty: any peer)")


@dataclass(frozen=True)
class CorsSettings:
    """Which browser pages may upload."""

    PREFIX: ClassVar[str] = "cors_"
    origins: tuple[str, ...] = _option(
        ("*",), parse_origins, "origins browsers may upload from: * or a list; empty: no CORS")
    credentials: bool = _option(
        False, parse_bool,
        "let browsers send cookies and credentials (the origin is echoed instead of *)")
    expose_headers: tuple[str, ...] = _option(
        (), parse_header_names,
        "response headers pages may read, besides tus's own (Access-Control-Expose-Headers)")
    allow_headers: tuple[str, ...] = _option(
        (), parse_header_names,
        "request headers pages may send, besides tus's own (Access-Control-Allow-Headers)")


@dataclass(frozen=True)
class MetricsSettings:
    """Prometheus metrics."""

    PREFIX: ClassVar[str] = "metrics_"
    enabled: bool = _option(False, parse_bool, "serve Prometheus metrics at /metrics",
                            name="metrics")
    port: int = _option(0, parse_int, "separate port for /metrics, 0 for the main port",
                        minimum=0, maximum=65535)


@dataclass(frozen=True)
class LogSettings:
    """The log on standard error."""

    PREFIX: ClassVar[str] = "log_"
    format: str = _option("text", parse_str, "log line format", choices=("text", "json"))
    level: str = _option("info", parse_str, "log level",
                         choices=("debug", "info", "warning", "error"))


@dataclass(frozen=True)
class Settings:
    """Every setting, by section: ``settings.hooks.url``, ``settings.limits.lock_timeout``."""

    server: ServerSettings = field(default_factory=ServerSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    s3: S3Section = field(default_factory=S3Section)
    uploads: UploadSettings = field(default_factory=UploadSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    hooks: HookSettings = field(default_factory=HookSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    cors: CorsSettings = field(default_factory=CorsSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    log: LogSettings = field(default_factory=LogSettings)

    def with_values(self, **values: Any) -> Settings:
        """These settings with some changed, by flat name (``max_size=10``,
        ``hooks_events="pre-create"``), each parsed and checked as a flag's value is."""
        return _assembled(self, {
            name: _validated(name, raw, "settings given in code") for name, raw in values.items()
        })


@dataclass(frozen=True)
class Setting:
    """One setting as users name it: flat ``name`` (flag, variable, TOML key), or ``key``
    in the table of its ``section``."""

    name: str
    section: str
    key: str
    default: Any
    parse: Callable[[Any], Any]
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None

    def get(self, settings: Settings) -> Any:
        return getattr(getattr(settings, self.section), self.key)


def shown(setting: Setting) -> str:
    """The default of ``setting`` as a flag would give it (``8MiB``, ``10s``, a list with
    commas), or empty when there is nothing to show: no value, or the help tells it."""
    return "" if "default" in setting.help else formatted(setting, setting.default)


def formatted(setting: Setting, value: Any) -> str:
    """A value of ``setting`` as a flag would give it: ``8MiB``, ``10s``, ``a,b``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    if setting.parse is parse_size:
        return format_size(value)
    if setting.parse in (parse_duration, parse_whole_seconds):
        return format_duration(value)
    return str(value)


def _settings_of(section: dataclasses.Field[Any]) -> Iterator[Setting]:
    kind = section.default_factory
    assert callable(kind)
    for option in dataclasses.fields(kind):  # type: ignore[arg-type]
        spec = option.metadata
        yield Setting(
            name=spec["name"] or kind.PREFIX + option.name,  # type: ignore[attr-defined]
            section=section.name, key=option.name, default=option.default,
            parse=spec["parse"], help=spec["help"], choices=spec["choices"],
            minimum=spec["minimum"], maximum=spec["maximum"],
        )


SETTINGS: tuple[Setting, ...] = tuple(
    setting for section in dataclasses.fields(Settings) for setting in _settings_of(section)
)
SECTIONS: tuple[str, ...] = tuple(section.name for section in dataclasses.fields(Settings))
_BY_NAME = {setting.name: setting for setting in SETTINGS}
_BY_KEY = {(setting.section, setting.key): setting for setting in SETTINGS}


def _validated(name: str, raw: Any, source: str, label: str = "", secret: bool = False) -> Any:
    """The parsed value of setting ``name``; ``label`` is how the source names it
    (``hooks.url`` in a TOML table), by default its flat name. A ``secret`` value (from a
    ``*_FILE``) is not repeated in the message."""
    label = label or name
    setting = _BY_NAME.get(name)
    if setting is None:
        raise ConfigError(f"unknown setting {label!r} in {source}")
    bad = f"bad value {'' if secret else repr(raw) + ' '}for {label!r} in {source}"
    try:
        value = setting.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{bad}: {exc}") from None
    if setting.choices and value not in setting.choices:
        raise ConfigError(f"{bad}: expected one of " + ", ".join(setting.choices))
    if setting.minimum is not None and value < setting.minimum:
        raise ConfigError(f"{bad}: must be at least {setting.minimum}")
    if setting.maximum is not None and value > setting.maximum:
        raise ConfigError(f"{bad}: must be at most {setting.maximum}")
    return value


def _assembled(base: Settings, values: Mapping[str, Any]) -> Settings:
    """``base`` with the checked ``values`` (by flat name) put into their sections."""
    changes: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        setting = _BY_NAME[name]
        changes.setdefault(setting.section, {})[setting.key] = value
    return dataclasses.replace(base, **{
        section: dataclasses.replace(getattr(base, section), **keys)
        for section, keys in changes.items()
    })


def _read_file(config_file: str) -> dict[str, Any]:
    """The settings of a TOML file, by flat name: top-level keys, and the keys of the
    section tables (``[hooks]``)."""
    source = f"config file {config_file}"
    try:
        with open(config_file, "rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {config_file} is not valid TOML: not UTF-8 at byte {exc.start}"
        ) from None
    values: dict[str, Any] = {}
    for key, raw in document.items():
        if not isinstance(raw, dict):
            values[key] = _validated(key, raw, source)
            continue
        if key not in SECTIONS:
            raise ConfigError(
                f"unknown section [{key}] in {source}; sections are {', '.join(SECTIONS)}"
            )
        for inner, inner_raw in raw.items():
            label = f"{key}.{inner}"
            setting = _BY_KEY.get((key, inner))
            if setting is None:
                raise ConfigError(f"unknown setting {label!r} in {source}")
            if setting.name in values:
                raise ConfigError(f"{setting.name!r} and {label!r} both set in {source}")
            values[setting.name] = _validated(setting.name, inner_raw, source, label)
    return values


def _is_service_link(env_name: str, raw: str) -> bool:
    """Whether ``env_name`` is one of the variables Kubernetes makes for a Service."""
    name = env_name[len(ENV_PREFIX) :]
    if _SERVICE_LINK.fullmatch(name):
        return True
    return name.endswith("PORT") and bool(_SERVICE_LINK_URL.fullmatch(raw.strip()))


def read_secret_file(env_name: str, path: str) -> str:
    """The text of the file that ``env_name`` names (Docker's and Kubernetes' secrets are
    files), without its trailing line break."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {path} named by {env_name}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read {path} named by {env_name}: not UTF-8 at byte "
                          f"{exc.start}") from None
    return text.removesuffix("\n").removesuffix("\r")


def _file_variable(env_name: str, environ: Mapping[str, str]) -> str | None:
    """The variable that ``env_name`` (``AIOTUSD_HOOKS_SECRET_FILE``) holds the value of in
    a file; None when it is no such ``*_FILE`` variable. Both set is refused."""
    if not env_name.endswith(_FILE_SUFFIX):
        return None
    named = env_name.removesuffix(_FILE_SUFFIX)
    if named.startswith(ENV_PREFIX) and named[len(ENV_PREFIX) :].lower() not in _BY_NAME:
        return None
    if named in environ:
        raise ConfigError(f"{named} and {env_name} are both set: set one of them")
    return named


def _settings_in(environ: Mapping[str, str]) -> Iterator[tuple[str, str, str, bool]]:
    """``(setting name, where, value, secret)`` of each variable that sets a setting,
    the value of a ``*_FILE`` variable read from its file."""
    for env_name, raw in environ.items():
        if not env_name.startswith(ENV_PREFIX) or env_name in _NOT_SETTINGS:
            continue
        named = _file_variable(env_name, environ)
        if named is not None:
            yield (named[len(ENV_PREFIX) :].lower(), f"file {raw} named by {env_name}",
                   read_secret_file(env_name, raw), True)
            continue
        key = env_name[len(ENV_PREFIX) :].lower()
        if key in _BY_NAME and not _is_service_link(env_name, raw):
            yield key, f"environment variable {env_name}", raw, False


AWS_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
"""The S3 credentials (read by botocore from the environment) that may come in files."""


def aws_secrets_from_files(environ: Mapping[str, str]) -> dict[str, str]:
    """``AWS_ACCESS_KEY_ID`` and the others of :data:`AWS_SECRETS` read from the files
    their ``*_FILE`` variables name, for the environment botocore reads them from."""
    return {
        name: read_secret_file(name + _FILE_SUFFIX, environ[name + _FILE_SUFFIX])
        for name in AWS_SECRETS
        if name + _FILE_SUFFIX in environ and _file_variable(name + _FILE_SUFFIX, environ)
    }


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """What to warn about: one line for each ``AIOTUSD_*`` variable that is no setting
    (a typo, or one of a newer version), and not one of Kubernetes' service links, which
    a pod gets without asking. Not an error: one stray variable in a shared environment
    must not keep the server down."""
    warnings = []
    for env_name, raw in sorted(environ.items()):
        key = env_name[len(ENV_PREFIX) :].lower()
        known = key in _BY_NAME or key.removesuffix(_FILE_SUFFIX.lower()) in _BY_NAME
        if (not env_name.startswith(ENV_PREFIX) or env_name in _NOT_SETTINGS or known
                or _is_service_link(env_name, raw)):
            continue
        close = difflib.get_close_matches(key, _BY_NAME, n=1, cutoff=0.75)
        hint = f"; did you mean {ENV_PREFIX}{close[0].upper()}?" if close else ""
        warnings.append(f"ignoring environment variable {env_name}: no such setting{hint}")
    return warnings


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Settings:
    """Merge the sources; unknown keys (but for variables: see :func:`unknown_variables`)
    and bad values raise :class:`ConfigError`."""
    values: dict[str, Any] = _read_file(config_file) if config_file else {}
    for key, source, raw, secret in _settings_in(environ or {}):
        values[key] = _validated(key, raw, source, secret=secret)
    for key, raw in (flags or {}).items():
        if raw is not None:
            values[key] = _validated(key, raw, f"flag --{key.replace('_', '-')}")
    return _assembled(Settings(), values)
