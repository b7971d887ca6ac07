"""The ``104 (Upload Resumption Supported)`` interim response.

aiohttp has no API for interim responses: the status line and headers are written on
the request's writer before the final response is prepared, the way aiohttp writes
``100 Continue`` itself (see :mod:`server.expect`). HTTP/1.1 only: an HTTP/1.0 client
does not expect 1xx answers.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import HttpVersion11, web

STATUS_LINE = "HTTP/1.1 104 Upload Resumption Supported\r\n"


async def send_104(request: web.Request, headers: Mapping[str, str]) -> None:
    """Tell the client where its upload lives, before its body is read, so that a creation
    cut off mid-body can be resumed. A ``100 Continue`` the client asked for still follows
    (the draft forbids a 104 in its place)."""
    if request.version != HttpVersion11:
        return
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    await request.writer.write((STATUS_LINE + lines + "\r\n").encode("latin-1"))
    # An interim answer: an error may still be answered (see server.errors).
    request.writer.output_size = 0
