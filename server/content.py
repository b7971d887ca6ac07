"""How a finished upload is served back: type, disposition and ranges.

Uploaded bytes are untrusted. Only types a browser cannot run as script in
the server's origin are served ``inline`` under their own type; everything
else is ``application/octet-stream`` and ``attachment``.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

INLINE_TYPES = frozenset(
    {
        "image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/bmp",
        "video/mp4", "video/webm", "video/ogg", "video/quicktime",
        "audio/mpeg", "audio/ogg", "audio/wav", "audio/webm", "audio/aac", "audio/flac",
        "audio/mp4", "text/plain", "application/pdf",
    }
)
_RANGE_RE = re.compile(r"bytes=\s*([0-9]*)\s*-\s*([0-9]*)\s*")
_FALLBACK_UNSAFE_RE = re.compile(r'[^A-Za-z0-9!#$&+.^_`|~ ()\[\]{}=@,;-]')


def content_type(filetype: str | None) -> tuple[str, bool]:
    """The Content-Type to send for a ``filetype`` and whether it may be shown inline."""
    if filetype:
        essence = filetype.split(";", 1)[0].strip().lower()
        if essence in INLINE_TYPES:
            return ("text/plain; charset=utf-8" if essence == "text/plain" else essence), True
    return "application/octet-stream", False


def content_disposition(filename: str | None, inline: bool) -> str:
    """An RFC 6266 header: an ASCII ``filename`` fallback and an RFC 8187 ``filename*``."""
    kind = "inline" if inline else "attachment"
    if not filename:
        return kind
    # Control, format and surrogate characters go; any other space (U+2028 LINE SEPARATOR
    # too) becomes a plain one, so that no client shows the name broken across lines.
    name = "".join(
        " " if unicodedata.category(ch)[0] == "Z" else ch
        for ch in filename
        if unicodedata.category(ch)[0] != "C"
    )
    name = name.replace("/", "_").replace("\\", "_").strip()
    if not name:
        return kind
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    fallback = _FALLBACK_UNSAFE_RE.sub("_", ascii_name).strip() or "download"
    header = f'{kind}; filename="{fallback}"'
    if fallback != name:
        header += f"; filename*=UTF-8''{quote(name, safe='')}"
    return header


def _position(digits: str) -> str:
    """A byte position of a Range header, capped so that ``int()`` stays cheap and legal.

    Python refuses to convert more than 4300 digits; any position that long is past
    every upload anyway, so it is replaced by a number that is just as far out.
    """
    digits = digits.lstrip("0") or ("0" if digits else "")
    return str(2**63) if len(digits) > 19 else digits


def _before(left: str, right: str) -> bool:
    """Whether decimal ``left`` is less than ``right``, compared exactly without ``int()``.

    Capped positions (see :func:`_position`) all look alike, so ``bytes=20...0-10...0``
    (past 19 digits) is compared here, where ``last < first`` must ignore the header.
    """
    left, right = left.lstrip("0"), right.lstrip("0")
    return (len(left), left) < (len(right), right)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The ``[start, end)`` of a single-range ``Range`` header, or None to send everything.

    Returns ``(size, size)`` for a range that cannot be satisfied. Malformed and
    multi-range headers are ignored, as RFC 9110 allows.
    """
    if not header:
        return None
    match = _RANGE_RE.fullmatch(header)
    if not match or match.group(1) == match.group(2) == "":
        return None
    first, last = (_position(group) for group in match.groups())
    if first == "":
        suffix = int(last)
        if suffix == 0:
            return size, size
        return max(size - suffix, 0), size
    if last != "" and _before(match.group(2), match.group(1)):
        return None
    start = int(first)
    end = size if last == "" else min(int(last) + 1, size)
    if start >= size:
        return size, size
    return start, end
