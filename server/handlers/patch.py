"""PATCH: parse the request, append its body (:mod:`server.uploads`), answer 204."""

from __future__ import annotations

from aiohttp import web

from ..checksum import ExpectedChecksum
from ..context import CONTEXT
from ..errors import BadRequest
from ..limits import LIMITS
from ..protocol import http_date, parse_non_negative
from ..receive import check_content_type
from ..uploads import append


async def handle(request: web.Request) -> web.Response:
    """Append the body, if one of the receiving slots is free (else 503, before the upload's
    lock is taken or its state read)."""
    with request.app[LIMITS].receiving(request):
        return await _append(request)


async def _append(request: web.Request) -> web.Response:
    check_content_type(request)
    offset_header = request.headers.get("Upload-Offset")
    if offset_header is None:
        raise BadRequest("Upload-Offset header is required")
    offset = parse_non_negative(offset_header, "Upload-Offset")
    length_header = request.headers.get("Upload-Length")
    length = None if length_header is None else parse_non_negative(length_header, "Upload-Length")
    checksum_header = request.headers.get("Upload-Checksum")
    checksum = None if checksum_header is None else ExpectedChecksum(checksum_header)
    upload = await append(
        request.app[CONTEXT], request, request.match_info["upload_id"], offset, length, checksum
    )
    headers = {"Upload-Offset": str(upload.offset)}
    if upload.expires_at is not None and not upload.is_complete:
        headers["Upload-Expires"] = http_date(upload.expires_at)
    return web.Response(status=204, headers=headers)
