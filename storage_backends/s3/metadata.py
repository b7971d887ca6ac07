"""The headers an upload's object gets: its content type, disposition and user metadata."""

from __future__ import annotations

import base64
import re
from typing import Any

USER_METADATA_LIMIT = 2048
"""S3 user metadata: keys and values together, in UTF-8 bytes."""
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")


def _metadata_text(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _header_value(text: str) -> str:
    """``text`` as an S3 metadata value: plain printable ASCII, or an RFC 2047 encoded word."""
    if all(" " <= ch <= "~" for ch in text) and text == text.strip():
        return text
    return "=?UTF-8?B?" + base64.b64encode(text.encode("utf-8")).decode() + "?="


def object_headers(metadata: dict[str, bytes]) -> dict[str, Any]:
    """Content-Type, Content-Disposition and user metadata of the object for tus metadata.

    The type and disposition are the ones the server's own GET answers (an
    unsafe type becomes ``application/octet-stream``, ``attachment``). Other
    keys become user metadata while they fit in S3's 2 KB; the rest is left
    out, never failing the upload (the full metadata stays in the database).
    """
    from server.content import content_disposition, content_type

    media_type, inline = content_type(_metadata_text(metadata.get("filetype")))
    headers: dict[str, Any] = {
        "ContentType": media_type,
        "ContentDisposition": content_disposition(
            _metadata_text(metadata.get("filename")), inline
        ),
    }
    user: dict[str, str] = {}
    used = 0
    for key, raw in metadata.items():
        name = key.lower()
        if name in ("filename", "filetype") or name in user or not _TOKEN_RE.fullmatch(name):
            continue
        text = _metadata_text(raw)
        if text is None:
            continue
        value = _header_value(text)
        cost = len(name.encode()) + len(value.encode())
        if used + cost > USER_METADATA_LIMIT:
            continue
        user[name] = value
        used += cost
    headers["Metadata"] = user
    return headers
