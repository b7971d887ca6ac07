"""``Expect: 100-continue``: the client is told to send its body only once it will be read.

aiohttp would send ``100 Continue`` before any check, and a client refused with 404,
409, 413, 429 or 503 would have sent its whole body for nothing.
"""

from __future__ import annotations

from aiohttp import HttpVersion11, web

from .errors import one_line

CONTINUED = web.RequestKey("aiotusd.continued", bool)
"""Whether the client was told ``100 Continue``."""


def expects_continue(request: web.BaseRequest) -> bool:
    return (
        request.version == HttpVersion11
        and request.headers.get("Expect", "").lower() == "100-continue"
    )


def unknown_expectation(request: web.BaseRequest) -> str | None:
    """Why an ``Expect`` other than ``100-continue`` is refused (417), or None."""
    expect = request.headers.get("Expect")
    if expect and request.version == HttpVersion11 and not expects_continue(request):
        return one_line(f"unknown Expect: {expect[:100]}") + "\n"
    return None


async def defer_continue(request: web.Request) -> None:
    """The routes' ``Expect`` handler: ``100 Continue`` waits for :func:`continue_body`.
    An unknown expectation is refused (417) as aiohttp's own handler does."""
    if (reason := unknown_expectation(request)) is not None:
        raise web.HTTPExpectationFailed(text=reason)


async def continue_body(request: web.Request) -> None:
    """Tell a client that waits for ``100 Continue`` to send the body: it will be read."""
    if expects_continue(request) and not request.get(CONTINUED):
        request[CONTINUED] = True
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # An interim answer: an error may still be answered (see server.errors).
        request.writer.output_size = 0


async def close_after_unasked_body(request: web.Request, response: web.StreamResponse) -> None:
    """A request refused before its body was asked for ends its connection.

    The client may send the body or not (RFC 9110, section 10.1.1); either way, the
    next request on the connection cannot be told from it. ``Connection: close`` says
    so; aiohttp still reads what does come for a while, so that the close resets nothing.
    """
    if expects_continue(request) and request.body_exists and not request.get(CONTINUED):
        response.force_close()
        # The headers were made before this hook: say it there too.
        response.headers["Connection"] = "close"
