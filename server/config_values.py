"""How a setting's value is written: sizes, numbers, paths, URLs, lists; one parser each.

Every parser takes what a flag, an environment variable or a TOML file gives (text, or
TOML's own types) and returns the typed value, or raises ``ValueError`` with the reason;
:mod:`server.config` adds which setting and which source it came from.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Any
from urllib.parse import urlsplit

from .events import EVENTS
from .protocol import is_header_name

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


def format_size(size: int) -> str:
    """``size`` as :func:`parse_size` reads it back, in the largest binary unit that holds
    it whole: ``8MiB``, ``4KiB``, ``1000``."""
    for power, unit in ((4, "TiB"), (3, "GiB"), (2, "MiB"), (1, "KiB")):
        if size and size % 1024**power == 0:
            return f"{size // 1024**power}{unit}"
    return str(size)


def parse_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if not re.fullmatch(r"-?[0-9]+", text):
        raise ValueError("expected an integer")
    return int(text)


def parse_float(value: Any) -> float:
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


_DURATION_PART = r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)"
_DURATION_RE = re.compile(f"(?:{_DURATION_PART})+")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> float:
    """Seconds: a number (``2.5``, from text or TOML), or text with units as operators
    and Go's ``time.Duration`` write them: ``500ms``, ``15s``, ``1m``, ``2h``, ``7d``,
    ``1h30m``."""
    text = value.strip() if isinstance(value, str) else None
    if text is None or not _DURATION_RE.fullmatch(text):
        try:
            return parse_float(value)
        except ValueError as exc:
            if text is None or "finite" in str(exc):
                raise
            raise ValueError(
                "expected seconds, or a duration such as 500ms, 15s, 1m, 2h, 7d or 1h30m"
            ) from None
    seconds = sum(float(number) * _DURATION_UNITS[unit]
                  for number, unit in re.findall(_DURATION_PART, text))
    return parse_float(seconds)


def parse_whole_seconds(value: Any) -> int:
    """A duration (:func:`parse_duration`) of whole seconds, for what is stored as such."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    seconds = parse_duration(value)
    if not seconds.is_integer():
        raise ValueError("expected whole seconds")
    return int(seconds)


def format_duration(seconds: float) -> str:
    """``seconds`` as :func:`parse_duration` reads it back, shortest first: ``7d``,
    ``1m30s``, ``500ms``."""
    if not float(seconds).is_integer():
        millis = seconds * 1000
        return f"{millis:g}ms" if seconds < 1 and millis.is_integer() else f"{seconds:g}s"
    rest, parts = int(seconds), []
    for unit in ("d", "h", "m", "s"):
        count, rest = divmod(rest, int(_DURATION_UNITS[unit]))
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def parse_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def parse_host(value: Any) -> str:
    """An address or host name to listen on. Empty is refused: aiohttp would take it for
    every interface, which an unset variable must not open up."""
    text = parse_str(value).strip()
    if not text or not text.isprintable() or " " in text:
        raise ValueError("expected an address or host name, such as 127.0.0.1, :: or 0.0.0.0")
    return text


def parse_path(value: Any) -> str:
    """A file system path, or empty; the operating system takes no NUL in one."""
    text = parse_str(value)
    if "\0" in text:
        raise ValueError("a path cannot hold a NUL character")
    return text


def parse_directory(value: Any) -> str:
    """A path that must be given: an empty one would be the working directory, unasked."""
    text = parse_path(value)
    if not text.strip():
        raise ValueError("expected a directory path")
    return text


# A URL path segment: RFC 3986 ``pchar`` without percent-encoding, and without
# the braces that aiohttp's router would read as a variable.
_SEGMENT_RE = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@-]+")


def parse_base_path(value: Any) -> str:
    """``files``, ``/files`` and ``/files/`` all become ``/files/``; empty is ``/``."""
    text = parse_str(value).strip()
    segments = [segment for segment in text.split("/") if segment]
    for segment in segments:
        if segment in (".", "..") or not _SEGMENT_RE.fullmatch(segment):
            raise ValueError(
                "expected a URL path such as /files/ (letters, digits and -._~!$&'()*+,;=:@)"
            )
    return "/" + "".join(segment + "/" for segment in segments)


def parse_url(value: Any) -> str:
    """Empty, or an absolute ``http://`` or ``https://`` URL with a host (and a valid port)."""
    text = parse_str(value).strip()
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


def _items(value: Any) -> list[str]:
    """A list's items: a TOML array of strings, or text separated by commas (a flag, a
    variable, or a TOML string), each stripped, empty ones dropped."""
    if isinstance(value, list | tuple):
        if not all(isinstance(item, str) for item in value):
            raise ValueError("expected a list of strings")
        items = value
    else:
        items = parse_str(value).split(",")
    return [item.strip() for item in items if item.strip()]


def parse_events(value: Any) -> tuple[str, ...]:
    """Hook event names, in the order of :data:`EVENTS` and each once."""
    names = set(_items(value))
    unknown = sorted(names - set(EVENTS))
    if unknown:
        raise ValueError(f"unknown hook event {unknown[0]!r}; expected some of {', '.join(EVENTS)}")
    return tuple(event for event in EVENTS if event in names)


def parse_header_names(value: Any) -> tuple[str, ...]:
    """HTTP header names."""
    names = _items(value)
    for name in names:
        if not is_header_name(name):
            raise ValueError(f"{name!r} is not a header name")
    return tuple(names)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(value: Any) -> tuple[Network, ...]:
    """IP networks (``10.0.0.0/8``) or addresses (a network of one)."""
    networks = []
    for item in _items(value):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(
                f"{item!r} is not an IP address or network such as 10.0.0.0/8"
            ) from None
    return tuple(networks)


def parse_origins(value: Any) -> tuple[str, ...]:
    """``*`` (any origin, alone), or origins such as ``https://app.example.com``, in
    lower case without a trailing slash, as browsers send them."""
    origins = []
    for item in _items(value):
        if item == "*":
            return ("*",)
        parts = urlsplit(item.lower().rstrip("/"))
        if not parts.scheme or not parts.netloc or parts.path or parts.query or parts.fragment:
            raise ValueError(f"{item!r} is not an origin such as https://app.example.com")
        origins.append(f"{parts.scheme}://{parts.netloc}")
    return tuple(origins)


# Largest integer SQLite stores, and so the largest size an upload can have.
MAX_INTEGER = 2**63 - 1
# Longest duration: a century. Beyond it is a typo, and a time that far ahead still fits
# an HTTP date (Upload-Expires), a float and an SQLite integer.
MAX_SECONDS = 100 * 365 * 86400


def parse_rate(value: Any) -> float:
    """Per second: 0, or at least once a century, so that one over it is a sane wait."""
    rate = parse_float(value)
    if 0 < rate < 1 / MAX_SECONDS:
        raise ValueError(f"expected 0 or at least {1 / MAX_SECONDS:.3g}")
    return rate
