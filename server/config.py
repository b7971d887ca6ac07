"""Settings: defaults, a TOML file, ``AIOTUSD_*`` environment variables and flags.

Precedence is flag > environment > file > default. Defaults live on
:class:`Settings`; how each value is parsed and checked lives in
:data:`SETTINGS`. The CLI flags, the environment names and the file keys are
all derived from that table, so they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .events import EVENTS
from .protocol import is_header_name

ENV_PREFIX = "AIOTUSD_"
_SIZE_RE = re.compile(r"\s*([0-9]+)\s*([KMGT]?)(i?B)?\s*", re.IGNORECASE)
_SIZE_UNITS = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}


def parse_size(value: Any) -> int:
    """A byte count: an integer, or text such as ``512MiB`` or ``5GB``."""
    if isinstance(value, bool):
        raise ValueError("expected a size in bytes")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    match = _SIZE_RE.fullmatch(str(value))
    if not match:
        raise ValueError("expected a size such as 1048576, 512MiB or 5GB")
    number, unit, suffix = match.groups()
    base = 1024 if (suffix or "").lower() == "ib" or not suffix else 1000
    return int(number) * base ** _SIZE_UNITS[unit.upper()]


def _parse_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if not re.fullmatch(r"-?[0-9]+", text):
        raise ValueError("expected an integer")
    return int(text)


def _parse_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("expected a number") from None
    except OverflowError:  # an integer beyond any float, from a TOML file
        raise ValueError("expected a finite number") from None
    if not math.isfinite(number):
        raise ValueError("expected a finite number")
    return number


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _parse_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _parse_host(value: Any) -> str:
    """An address or host name to listen on. Empty is refused: aiohttp would take it for
    every interface, which an unset variable must not open up."""
    text = _parse_str(value).strip()
    if not text or not text.isprintable() or " " in text:
        raise ValueError("expected an address or host name, such as 127.0.0.1, :: or 0.0.0.0")
    return text


def _parse_path(value: Any) -> str:
    """A file system path, or empty; the operating system takes no NUL in one."""
    text = _parse_str(value)
    if "\0" in text:
        raise ValueError("a path cannot hold a NUL character")
    return text


def _parse_directory(value: Any) -> str:
    """A path that must be given: an empty one would be the working directory, unasked."""
    text = _parse_path(value)
    if not text.strip():
        raise ValueError("expected a directory path")
    return text


# A URL path segment: RFC 3986 ``pchar`` without percent-encoding, and without
# the braces that aiohttp's router would read as a variable.
_SEGMENT_RE = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@-]+")


def _parse_base_path(value: Any) -> str:
    """``files``, ``/files`` and ``/files/`` all become ``/files/``; empty is ``/``."""
    text = _parse_str(value).strip()
    segments = [segment for segment in text.split("/") if segment]
    for segment in segments:
        if segment in (".", "..") or not _SEGMENT_RE.fullmatch(segment):
            raise ValueError(
                "expected a URL path such as /files/ (letters, digits and -._~!$&'()*+,;=:@)"
            )
    return "/" + "".join(segment + "/" for segment in segments)


def _parse_url(value: Any) -> str:
    """Empty, or an absolute ``http://`` or ``https://`` URL with a host (and a valid port)."""
    text = _parse_str(value).strip()
    if text and not _is_http_url(text):
        raise ValueError("expected an http:// or https:// URL such as https://host:9000")
    return text


def _is_http_url(text: str) -> bool:
    """Whether ``text`` is a URL an HTTP client can be given: ``minio:9000`` (no scheme) or
    a port past 65535 would fail only once used, with a traceback."""
    if not text.isprintable() or " " in text:
        return False
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError unless it is a number from 0 to 65535
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _comma_list(value: Any) -> list[str]:
    return [item.strip() for item in _parse_str(value).split(",") if item.strip()]


def _parse_events(value: Any) -> str:
    """Comma-separated hook event names, normalised to the order of :data:`EVENTS`."""
    names = set(_comma_list(value))
    unknown = sorted(names - set(EVENTS))
    if unknown:
        raise ValueError(f"unknown hook event {unknown[0]!r}; expected some of {', '.join(EVENTS)}")
    return ",".join(event for event in EVENTS if event in names)


def _parse_header_names(value: Any) -> str:
    """Comma-separated HTTP header names."""
    names = _comma_list(value)
    for name in names:
        if not is_header_name(name):
            raise ValueError(f"{name!r} is not a header name")
    return ",".join(names)


def _parse_networks(value: Any) -> str:
    """Comma-separated IP networks (``10.0.0.0/8``) or addresses, normalised."""
    networks = []
    for item in _comma_list(value):
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(
                f"{item!r} is not an IP address or network such as 10.0.0.0/8"
            ) from None
    return ",".join(networks)


def _parse_origins(value: Any) -> str:
    """``*``, or comma-separated origins such as ``https://app.example.com``, normalised."""
    origins = []
    for item in _comma_list(value):
        if item == "*":
            return "*"
        parts = urlsplit(item.lower().rstrip("/"))
        if not parts.scheme or not parts.netloc or parts.path or parts.query or parts.fragment:
            raise ValueError(f"{item!r} is not an origin such as https://app.example.com")
        origins.append(f"{parts.scheme}://{parts.netloc}")
    return ",".join(origins)


# Largest integer SQLite stores, and so the largest size an upload can have.
_MAX_INTEGER = 2**63 - 1
# Longest duration: a century. Beyond it is a typo, and a time that far ahead still fits
# an HTTP date (Upload-Expires), a float and an SQLite integer.
_MAX_SECONDS = 100 * 365 * 86400


def _parse_rate(value: Any) -> float:
    """Per second: 0, or at least once a century, so that one over it is a sane wait."""
    rate = _parse_float(value)
    if 0 < rate < 1 / _MAX_SECONDS:
        raise ValueError(f"expected 0 or at least {1 / _MAX_SECONDS:.3g}")
    return rate


@dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[Any], Any]
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None


SETTINGS: tuple[Setting, ...] = (
    Setting("host", _parse_host, "address to listen on"),
    Setting("port", _parse_int, "TCP port to listen on", minimum=0, maximum=65535),
    Setting("base_path", _parse_base_path, "URL path under which uploads live"),
    Setting("data_dir", _parse_directory, "directory for uploaded files and the database"),
    Setting("database", _parse_path, "SQLite file (default: {data_dir}/aiotusd.sqlite3)"),
    Setting("storage", _parse_str, "storage backend", choices=("filesystem", "s3")),
    Setting("max_size", parse_size, "largest upload in bytes, 0 for no limit", minimum=0,
            maximum=_MAX_INTEGER),
    Setting("max_metadata_size", parse_size,
            "longest Upload-Metadata header in bytes; longer ones are refused with 400",
            minimum=1, maximum=_MAX_INTEGER),
    Setting("max_concat_parts", _parse_int,
            "most partial uploads one final upload may concatenate", minimum=1,
            maximum=_MAX_INTEGER),
    Setting("expiration", _parse_int,
        "seconds an unfinished upload lives after its last write, 0 to keep forever", minimum=0,
        maximum=_MAX_SECONDS,
    ),
    Setting("expiry_interval", _parse_float, "seconds between sweeps for expired uploads",
            minimum=0.01, maximum=_MAX_SECONDS),
    Setting("gone_retention", _parse_int,
            "seconds a terminated or expired upload answers 410 before it is forgotten", minimum=0,
            maximum=_MAX_SECONDS),
    Setting("lock_timeout", _parse_float,
            "seconds a request waits for another request on the same upload to let go",
            minimum=0, maximum=_MAX_SECONDS),
    Setting("idle_timeout", _parse_float,
            "seconds a request body may stall before the connection is closed", minimum=0.01,
            maximum=_MAX_SECONDS),
    Setting("body_min_rate", parse_size,
            "least bytes per second a request body must bring over each body_rate_window, or "
            "the connection is closed; 0 for no minimum", minimum=0, maximum=_MAX_INTEGER),
    Setting("body_rate_window", _parse_float,
            "seconds over which body_min_rate is measured", minimum=0.01, maximum=_MAX_SECONDS),
    Setting("header_timeout", _parse_float,
            "seconds a client gets to send a request's headers (from the connection's start or "
            "the request's first byte), the rest of a refused body, and with tls_cert the TLS "
            "handshake; then the connection is closed", minimum=0.01, maximum=_MAX_SECONDS),
    Setting("keepalive_timeout", _parse_float,
            "seconds an idle connection is kept open for the client's next request", minimum=0.01,
            maximum=_MAX_SECONDS),
    Setting("send_timeout", _parse_float,
            "seconds a client may take none of a response before the connection is closed",
            minimum=0.01, maximum=_MAX_SECONDS),
    Setting("fsync", _parse_str,
            "always: data is fdatasync'd before the offset that covers it is recorded (survives "
            "a power loss); none: the OS writes it back (survives a crash of aiotusd only)",
            choices=("always", "none")),
    Setting("commit_bytes", parse_size,
            "during a long PATCH, make the offset durable after this many bytes", minimum=1,
            maximum=_MAX_INTEGER),
    Setting("commit_seconds", _parse_float,
            "during a long PATCH, make the offset durable after this many seconds",
            minimum=0.01, maximum=_MAX_SECONDS),
    Setting("shutdown_timeout", _parse_float,
            "seconds in-flight requests get to finish on SIGTERM", minimum=0,
            maximum=_MAX_SECONDS),
    Setting("create_rate", _parse_rate,
            "uploads each client address may create per second, after create_burst; 0 for no "
            "limit (beyond it: 429)", minimum=0),
    Setting("create_burst", _parse_int,
            "uploads each client address may create at once before create_rate applies",
            minimum=1, maximum=_MAX_INTEGER),
    Setting("max_uploads_receiving", _parse_int,
            "most request bodies (PATCH, POST with data) received at once; 0 for no limit "
            "(beyond it: 503)", minimum=0, maximum=_MAX_INTEGER),
    Setting("max_uploads_receiving_per_client", _parse_int,
            "most request bodies one client address sends at once, once half of "
            "max_uploads_receiving are taken; 0 for no limit (beyond it: 503)", minimum=0,
            maximum=_MAX_INTEGER),
    Setting("max_connections", _parse_int,
            "most open client connections; at the limit a new one takes the place of the one "
            "that has waited longest without a request under way, else it gets 503 and is "
            "closed; 0 for no limit", minimum=0, maximum=_MAX_INTEGER),
    Setting("s3_bucket", _parse_str, "S3 bucket (storage = s3)"),
    Setting("s3_prefix", _parse_str, "prefix of object keys in the bucket"),
    Setting("s3_endpoint", _parse_url, "S3 endpoint URL, for stores other than AWS"),
    Setting("s3_region", _parse_str, "S3 region"),
    Setting("s3_part_size", parse_size, "multipart part size", minimum=5 * 1024 * 1024,
            maximum=5 * 1024**3),
    Setting("s3_max_parts", _parse_int, "most parts the store allows in one upload",
            minimum=1, maximum=_MAX_INTEGER),
    Setting("s3_concurrency", _parse_int, "parts uploaded at once per upload", minimum=1,
            maximum=_MAX_INTEGER),
    Setting("s3_equal_parts", _parse_bool,
            "make every part but the last the same size (Cloudflare R2)"),
    Setting("s3_path_style", _parse_bool, "path-style bucket addressing (MinIO and others)"),
    Setting("s3_download_redirect", _parse_bool,
            "answer GET with a redirect to a short-lived presigned URL"),
    Setting("hooks_url", _parse_url, "URL that receives hook events as JSON POSTs"),
    Setting("hooks_command", _parse_str,
            "program run for each hook event, JSON on stdin, answer on stdout"),
    Setting("hooks_python", _parse_str,
            "in-process hooks: an async callable named module:attribute"),
    Setting("hooks_secret", _parse_str, "key that signs hook requests (HMAC-SHA256)"),
    Setting("hooks_events", _parse_events, "comma-separated hook events that fire"),
    Setting("hooks_timeout", _parse_float, "seconds a hook may take to answer", minimum=0.01,
            maximum=_MAX_SECONDS),
    Setting("hooks_fail_open", _parse_bool,
            "let requests through when a blocking hook times out or is unreachable"),
    Setting("hooks_forward_headers", _parse_header_names,
            "comma-separated request headers passed to hooks"),
    Setting("hooks_progress_interval", _parse_float,
            "least seconds between post-receive events of one upload", minimum=0,
            maximum=_MAX_SECONDS),
    Setting("hooks_max_attempts", _parse_int, "delivery attempts before an event is dead",
            minimum=1, maximum=_MAX_INTEGER),
    Setting("hooks_max_age", _parse_int,
            "seconds an event is retried before it is dead", minimum=1, maximum=_MAX_SECONDS),
    Setting("hooks_retry_delay", _parse_float,
            "seconds before the first retry; doubles with each further one", minimum=0,
            maximum=_MAX_SECONDS),
    Setting("hooks_concurrency", _parse_int, "events delivered at once", minimum=1,
            maximum=_MAX_INTEGER),
    Setting("behind_proxy", _parse_bool,
            "build URLs from Forwarded / X-Forwarded-* headers of a reverse proxy"),
    Setting("trusted_proxies", _parse_networks,
            "comma-separated networks whose forwarded headers are believed (empty: any peer)"),
    Setting("cors_origins", _parse_origins,
            "origins browsers may upload from: * or a comma-separated list; empty: no CORS"),
    Setting("cors_credentials", _parse_bool,
            "let browsers send cookies and credentials (the origin is echoed instead of *)"),
    Setting("metrics", _parse_bool, "serve Prometheus metrics at /metrics"),
    Setting("metrics_port", _parse_int, "separate port for /metrics, 0 for the main port",
            minimum=0, maximum=65535),
    Setting("demo", _parse_bool, "serve a demo upload page (Uppy) at /"),
    Setting("tls_cert", _parse_path, "PEM certificate chain file: serve HTTPS"),
    Setting("tls_key", _parse_path, "PEM private key file of tls_cert"),
    Setting("log_format", _parse_str, "log line format", choices=("text", "json")),
    Setting("log_level", _parse_str, "log level",
            choices=("debug", "info", "warning", "error")),
)
_BY_NAME = {setting.name: setting for setting in SETTINGS}


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 1080
    base_path: str = "/files/"
    data_dir: str = "./data"
    database: str = ""
    storage: str = "filesystem"
    max_size: int = 0
    max_metadata_size: int = 4096
    max_concat_parts: int = 100
    expiration: int = 604800
    expiry_interval: float = 60.0
    gone_retention: int = 604800
    lock_timeout: float = 3.0
    idle_timeout: float = 60.0
    body_min_rate: int = 1024
    body_rate_window: float = 30.0
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    send_timeout: float = 60.0
    fsync: str = "always"
    commit_bytes: int = 8 * 1024 * 1024
    commit_seconds: float = 2.0
    shutdown_timeout: float = 10.0
    create_rate: float = 20.0
    create_burst: int = 3000
    max_uploads_receiving: int = 200
    max_uploads_receiving_per_client: int = 32
    max_connections: int = 600
    s3_bucket: str = ""
    s3_prefix: str = ""
    s3_endpoint: str = ""
    s3_region: str = ""
    s3_part_size: int = 8 * 1024 * 1024
    s3_max_parts: int = 10000
    s3_concurrency: int = 4
    s3_equal_parts: bool = False
    s3_path_style: bool = False
    s3_download_redirect: bool = False
    hooks_url: str = ""
    hooks_command: str = ""
    hooks_python: str = ""
    hooks_secret: str = ""
    hooks_events: str = (
        "pre-create,post-create,post-receive,pre-finish,post-finish,pre-terminate,post-terminate"
    )
    hooks_timeout: float = 10.0
    hooks_fail_open: bool = False
    hooks_forward_headers: str = (
        "Authorization,Cookie,Origin,Referer,User-Agent,X-Forwarded-For,X-Request-Id"
    )
    hooks_progress_interval: float = 1.0
    hooks_max_attempts: int = 50
    hooks_max_age: int = 86400
    hooks_retry_delay: float = 1.0
    hooks_concurrency: int = 4
    behind_proxy: bool = False
    trusted_proxies: str = ""
    cors_origins: str = "*"
    cors_credentials: bool = False
    metrics: bool = False
    metrics_port: int = 0
    demo: bool = False
    tls_cert: str = ""
    tls_key: str = ""
    log_format: str = "text"
    log_level: str = "info"

    @property
    def database_path(self) -> Path:
        return Path(self.database) if self.database else Path(self.data_dir) / "aiotusd.sqlite3"


def _validated(name: str, raw: Any, source: str) -> Any:
    setting = _BY_NAME.get(name)
    if setting is None:
        raise ConfigError(f"unknown setting {name!r} in {source}")
    try:
        value = setting.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"bad value {raw!r} for {name!r} in {source}: {exc}") from None
    if setting.choices and value not in setting.choices:
        raise ConfigError(
            f"bad value {raw!r} for {name!r} in {source}: expected one of "
            + ", ".join(setting.choices)
        )
    if setting.minimum is not None and value < setting.minimum:
        raise ConfigError(
            f"bad value {raw!r} for {name!r} in {source}: must be at least {setting.minimum}"
        )
    if setting.maximum is not None and value > setting.maximum:
        raise ConfigError(
            f"bad value {raw!r} for {name!r} in {source}: must be at most {setting.maximum}"
        )
    return value


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Settings:
    """Merge the sources; unknown keys and bad values raise :class:`ConfigError`."""
    values: dict[str, Any] = {}
    if config_file:
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
        for key, raw in document.items():
            values[key] = _validated(key, raw, f"config file {config_file}")
    for env_name, raw in (environ or {}).items():
        if env_name.startswith(ENV_PREFIX) and env_name != ENV_PREFIX + "CONFIG":
            key = env_name[len(ENV_PREFIX) :].lower()
            values[key] = _validated(key, raw, f"environment variable {env_name}")
    for key, raw in (flags or {}).items():
        if raw is not None:
            values[key] = _validated(key, raw, f"flag --{key.replace('_', '-')}")
    return dataclasses.replace(Settings(), **values)
