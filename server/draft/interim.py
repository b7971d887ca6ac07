"""The ``104 (Upload Resumption Supported)`` interim response: where a new upload lives,
and how far a body got.

aiohttp has no API for interim responses: the status line and headers are written on
the request's writer before the final response is prepared, the way aiohttp writes
``100 Continue`` itself (see :mod:`server.expect`). HTTP/1.1 only: an HTTP/1.0 client
does not expect 1xx answers.

While a body arrives, the draft's server "SHOULD send interim responses with a ``104``
status code and the ``Upload-Offset`` header field set to the current offset": one after
each periodic commit (``commit_bytes``, ``commit_seconds``), whose offset is durable, as
the draft's ``Upload-Offset`` promises. At most :data:`MAX_PROGRESS` a request: Go's HTTP
client before Go 1.24, which reverse proxies such as Caddy are built with, breaks off a
response after its fifth 1xx (a ``100 Continue`` and the creation's ``104`` count too).
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import HttpVersion11, web

from ..context import CONTEXT
from ..receive import PROGRESS

STATUS_LINE = "HTTP/1.1 104 Upload Resumption Supported\r\n"
MAX_PROGRESS = 3
"""Progress ``104``s a request gets at most (see above)."""


async def send_104(request: web.Request, headers: Mapping[str, str]) -> None:
    """Send a ``104`` with ``headers``: where a new upload lives, before its body is read,
    so that a creation cut off mid-body can be resumed, or how far a body got. A
    ``100 Continue`` the client asked for still follows (the draft forbids a 104 in its
    place)."""
    if not may_send(request):
        return
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    # A few bytes: the writer waits for the client to read only past 64 KiB unread.
    await request.writer.write((STATUS_LINE + lines + "\r\n").encode("latin-1"))
    # An interim answer: an error may still be answered (see server.errors).
    request.writer.output_size = 0


def may_send(request: web.Request) -> bool:
    """Whether ``request`` may get interim responses: on HTTP/1.1, unless the
    ``ietf_draft_interim`` setting is off (behind nginx, which takes a ``104`` for the final
    response and then holds the connection until the upstream's closes)."""
    settings = request.app[CONTEXT].settings
    return request.version == HttpVersion11 and settings.uploads.ietf_draft_interim


def tell_progress(request: web.Request, headers: Mapping[str, str]) -> None:
    """Send ``request`` a progress ``104`` with ``headers`` and the offset after each
    periodic commit of its body, up to :data:`MAX_PROGRESS` (see :mod:`server.receive`)."""
    if not may_send(request):
        return
    sent = 0

    async def progress(offset: int) -> None:
        nonlocal sent
        if sent == MAX_PROGRESS:
            return
        sent += 1
        try:
            await send_104(request, {**headers, "Upload-Offset": str(offset)})
        except ConnectionError:
            pass  # the client left: its body breaks off, which says the rest

    request[PROGRESS] = progress
