"""Parsing and formatting of the tus 1.0.0 headers.

Every function here either returns a well-formed value or raises a
:class:`~server.errors.TusError` with a one-line reason, so handlers never
see a malformed header.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import functools
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .errors import BadRequest

if TYPE_CHECKING:
    from aiohttp import web

TUS_VERSION = "1.0.0"
UPLOAD_CONTENT_TYPE = "application/offset+octet-stream"
EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "expiration",
    "checksum",
    "termination",
    "concatenation",
    "concatenation-unfinished",
)

# Largest length we accept: SQLite's INTEGER is a signed 64-bit number.
MAX_INTEGER = 2**63 - 1
ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}"
_ID_RE = re.compile(ID_PATTERN)
_DIGITS_RE = re.compile(r"[0-9]{1,19}")
# Metadata keys: visible ASCII except the comma that separates pairs.
_METADATA_KEY_RE = re.compile(r"[!-+\--~]+")
_BASE64_RE = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# RFC 3986 ``uri-host [ ":" port ]``: an IPv6 literal or a reg-name (unreserved,
# pct-encoded and sub-delims). RFC 9112 section 3.2 wants 400 for anything else;
# it also keeps a hostile Host (``a/b``, ``x@y``) out of the Location header.
_HOST_RE = re.compile(
    r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?:[A-Za-z0-9._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})+)"
    r"(?::(?P<port>[0-9]{0,5}))?"
)


def is_upload_id(value: str) -> bool:
    return _ID_RE.fullmatch(value) is not None


@functools.lru_cache(maxsize=256)
def is_host(value: str) -> bool:
    """A host that URLs of this server can name: ``host``, ``host:port`` or ``[v6]:port``.

    Not empty: RFC 9110 section 4.2.1 makes an ``http`` URL with an empty host
    invalid. The port is 1 to 65535, or empty (RFC 3986: the scheme's default).

    The answers for the last 256 values are remembered: every request's ``Host`` is
    checked before it is handled and again for a URL it is given, and clients send the
    same few, so most requests find their answer without the match (headers are at most
    8 KiB: at worst 2 MiB kept).
    """
    match = _HOST_RE.fullmatch(value)
    if match is None:
        return False
    if match["ipv6"] is not None:
        try:
            ipaddress.IPv6Address(match["ipv6"])
        except ValueError:
            return False
    return not match["port"] or 0 < int(match["port"]) < 65536


def is_header_name(value: str) -> bool:
    """An RFC 9110 token, as header names are."""
    return _TOKEN_RE.fullmatch(value) is not None


def effective_method(request: web.Request) -> str:
    """The request method, or for a ``POST`` the one ``X-HTTP-Method-Override`` names.

    Only a ``POST``: the header is for clients that can send nothing but ``GET`` and
    ``POST``, and any other method keeps its meaning for the connection. A ``HEAD``
    served as a ``GET`` would send a body that the client does not read, and the
    connection would be out of step from there on.
    """
    override = request.headers.get("X-HTTP-Method-Override")
    if override and request.method == "POST":
        return override.strip().upper()
    return request.method


def parse_non_negative(value: str, header: str) -> int:
    """A header holding a non-negative decimal integer, as tus requires."""
    value = value.strip()
    if not _DIGITS_RE.fullmatch(value) or int(value) > MAX_INTEGER:
        raise BadRequest(f"{header} must be a non-negative integer")
    return int(value)


def parse_metadata(value: str) -> dict[str, bytes]:
    """Decode ``Upload-Metadata``: ``key base64,key2 base64,key3``.

    The last 256 values of up to 4 KiB are decoded once, and the caller gets its own
    copy: an upload's metadata is decoded for its creation and again for every call to
    the storage backend and every hook event of its requests, and decoding (base64 and
    the checks of each pair, in Python) cost a small upload more than anything else it
    does with its metadata.
    """
    if len(value) > _REMEMBERED_METADATA:
        return _decode_metadata(value)
    return dict(_remembered_metadata(value))


_REMEMBERED_METADATA = 4096


def _decode_metadata(value: str) -> dict[str, bytes]:
    metadata: dict[str, bytes] = {}
    if not value.strip():
        return metadata
    for pair in value.split(","):
        parts = pair.strip().split(" ")
        if len(parts) > 2:
            raise BadRequest("Upload-Metadata pairs must be 'key base64value'")
        key = parts[0]
        _check_metadata_key(key)
        if key in metadata:
            raise BadRequest(f"Upload-Metadata key {key!r} appears twice")
        encoded = parts[1] if len(parts) == 2 else ""
        if not _BASE64_RE.fullmatch(encoded) or len(encoded) % 4:
            raise BadRequest(f"Upload-Metadata value of {key!r} is not valid base64")
        try:
            metadata[key] = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise BadRequest(f"Upload-Metadata value of {key!r} is not valid base64") from None
    return metadata


_remembered_metadata = functools.lru_cache(maxsize=256)(_decode_metadata)


def format_metadata(metadata: Mapping[str, str]) -> str:
    """The ``Upload-Metadata`` header of text values: the inverse of :func:`parse_metadata`."""
    pairs = []
    for key, value in metadata.items():
        _check_metadata_key(key)
        pairs.append(f"{key} {base64.b64encode(value.encode()).decode()}" if value else key)
    return ",".join(pairs)


def _check_metadata_key(key: str) -> None:
    if not _METADATA_KEY_RE.fullmatch(key):
        raise BadRequest("Upload-Metadata keys must be non-empty and without spaces or commas")


def metadata_text(metadata: dict[str, bytes], key: str) -> str | None:
    """A metadata value as text (undecodable bytes replaced), or None."""
    raw = metadata.get(key)
    return None if raw is None else raw.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Concat:
    """A parsed ``Upload-Concat`` header: ``partial``, or ``final`` with its parts."""

    final: bool
    parts: tuple[str, ...] = ()


def parse_concat(value: str, *base_paths: str) -> Concat:
    """Parse ``Upload-Concat``; the parts' URLs may lie below any of ``base_paths``."""
    value = value.strip()
    if value == "partial":
        return Concat(final=False)
    if not value.startswith("final;"):
        raise BadRequest("Upload-Concat must be 'partial' or 'final;<upload URLs>'")
    urls = value[len("final;") :].split()
    if not urls:
        raise BadRequest("Upload-Concat final must name at least one partial upload")
    return Concat(final=True, parts=tuple(_upload_id_from_url(url, base_paths) for url in urls))


def _upload_id_from_url(url: str, base_paths: tuple[str, ...]) -> str:
    """The upload id in an absolute or relative upload URL below one of ``base_paths``."""
    try:
        path = urlsplit(url).path
    except ValueError:
        raise BadRequest(f"Upload-Concat names an invalid URL: {url[:100]}") from None
    for base_path in base_paths:
        if path.startswith(base_path) and is_upload_id(path[len(base_path) :]):
            return path[len(base_path) :]
    raise BadRequest(f"Upload-Concat names no upload of this server: {url[:100]}")


def parse_checksum(value: str) -> tuple[str, bytes]:
    """Split ``Upload-Checksum: <algorithm> <base64 digest>``."""
    parts = value.strip().split(" ")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise BadRequest("Upload-Checksum must be '<algorithm> <base64 digest>'")
    algorithm, encoded = parts
    if not _BASE64_RE.fullmatch(encoded):
        # Also keeps non-ASCII text away from b64decode, which raises a bare ValueError on it.
        raise BadRequest("Upload-Checksum digest is not valid base64")
    try:
        digest = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise BadRequest("Upload-Checksum digest is not valid base64") from None
    return algorithm, digest


def http_date(timestamp: float) -> str:
    """RFC 9110 IMF-fixdate, e.g. ``Wed, 25 Jun 2014 16:00:00 GMT``."""
    return email.utils.formatdate(timestamp, usegmt=True)
