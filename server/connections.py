"""The connections under the application, where aiotusd uses aiohttp's internals.

aiohttp has no public API for what a server exposed to the internet needs at the level
of connections: a deadline for a request's headers and for a client that takes none
of its response, counting connections under ``max_connections`` (and making room),
a deadline for TLS handshakes, and answering requests it cannot parse in one line. So
this module subclasses its ``RequestHandler`` (the protocol of one connection),
``Server`` and ``AppRunner``, and its ``SockSite`` for TLS, and reads these private
attributes of theirs; nothing else in aiotusd does:

- ``RequestHandler``: ``_messages`` (requests parsed and waiting), ``_waiter`` (set
  while it waits for the next request), ``_current_request``, ``_request_in_progress``,
  ``_lingering_time``, ``_loop``;
- ``Server``: ``_kwargs``, ``_loop``; ``AppRunner._make_server``;
- ``SockSite``: ``_runner``, ``_sock``, ``_ssl_context``, ``_backlog``, ``_server``;
- ``BaseRequest._cache``, where its ``remote`` is kept (see :func:`client_address_middleware`).

``tests/test_connections.py`` checks that the installed aiohttp still has each of them,
and ``setup.cfg`` allows only the aiohttp releases this was written and tested against.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from .cors import CORS, CorsPolicy
from .errors import Overloaded, classify, error_response, one_line
from .expect import unknown_expectation
from .limits import BUSY_RETRY_AFTER, LIMITS, REFUSAL_GRACE, Admission, Limits
from .protocol import TUS_VERSION
from .proxy import PEER, client_address

log = logging.getLogger("aiotusd")


class _OneLineErrorHandler(RequestHandler):
    """Answers requests aiohttp cannot parse (bad framing, oversized headers) like the app
    answers bad requests: a one-line plain-text reason, not aiohttp's multi-line page.

    With ``limits``, also counts its connection against ``max_connections``: one over it
    gets :data:`~server.limits.REFUSAL_GRACE` seconds to send its request, which is
    answered 503 (see :func:`_one_line_http_errors`), and one beyond even the
    :data:`~server.limits.REFUSING_CONNECTIONS` is closed at once. And it closes a
    connection whose request headers do not come whole within ``header_timeout``, or
    whose client takes none of a response for ``send_timeout``.
    """

    def __init__(self, manager: web.Server, limits: Limits | None, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._counted = False
        self.admission = Admission.ADMITTED
        self._header_timeout = 0.0 if limits is None else limits.settings.limits.header_timeout
        self._header_due: float | None = None
        """When the headers must be in, while the header clock runs (see :meth:`due`)."""
        self._send_timeout = 0.0 if limits is None else limits.settings.limits.send_timeout
        self._send_deadline: asyncio.TimerHandle | None = None
        self._raw_transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._limits is not None:
            self.admission = self._limits.connection_opened(self)
            self._counted = True
            if self.admission is not Admission.ADMITTED:
                self._header_timeout = min(self._header_timeout, REFUSAL_GRACE)
                self._lingering_time = min(self._lingering_time, REFUSAL_GRACE)
        super().connection_made(transport)
        self._raw_transport = cast(asyncio.Transport, transport)
        if self.admission is Admission.DROPPED:
            self.force_close()
        else:
            self._start_header_clock()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_header_clock()
        self._stop_send_clock()
        self._raw_transport = None
        if self._limits is not None and self._counted:
            self._counted = False
            self._limits.connection_closed(self, self.admission)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Stops the header clock once a request's headers are in, and starts it when the
        first byte of a request comes on a connection that was idle between requests
        (the idle wait itself is ``keepalive_timeout``'s). Body chunks pass two tests."""
        super().data_received(data)
        if self._messages:
            if self._header_due is not None:  # on every request: no call when idle
                self._stop_header_clock()
        elif self._waiter is not None and data:
            self._start_header_clock()

    def _start_header_clock(self) -> None:
        if self._limits is not None and self._header_timeout and self._header_due is None:
            self._header_due = self._loop.time() + self._header_timeout
            self._limits.deadlines.watch(self)

    def _stop_header_clock(self) -> None:
        if self._limits is not None and self._header_due is not None:
            self._header_due = None
            self._limits.deadlines.unwatch(self)

    def due(self, now: float) -> bool:
        """The header clock (:class:`~server.deadlines.Deadline`): a connection whose
        request headers are not in by their time is closed."""
        if self._header_due is None or now < self._header_due:
            return self._header_due is None
        self._header_due = None
        if self._limits is not None:
            self._limits.cut_off(
                "header_timeout",
                f"header_timeout = {self._header_timeout:g} s: a connection sent no complete "
                "request headers in time; it is closed",
            )
        self._abort()
        return True

    def pause_writing(self) -> None:
        """The client takes the response slower than it is written: it gets
        ``send_timeout`` seconds to take enough for writing to go on."""
        super().pause_writing()
        self._start_send_clock()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stop_send_clock()

    def log_access(
        self, request: BaseRequest, response: web.StreamResponse, time: float | None
    ) -> None:
        """A response written whole but not yet taken whole gets ``send_timeout`` seconds
        too: a connection that closes waits for it to go out, for ever if the client
        takes nothing.

        aiohttp calls this once a response is written whole (or its client left): here
        rather than in an override of ``finish_response``, a coroutine, which would add
        a layer to every request."""
        super().log_access(request, response, time)
        if self._raw_transport is not None and self._raw_transport.get_write_buffer_size():
            self._start_send_clock()

    def _start_send_clock(self) -> None:
        if self._send_timeout:
            self._stop_send_clock()
            self._send_deadline = self._loop.call_later(self._send_timeout, self._send_timed_out)

    def _stop_send_clock(self) -> None:
        if self._send_deadline is not None:
            self._send_deadline.cancel()
            self._send_deadline = None

    def _send_timed_out(self) -> None:
        self._send_deadline = None
        transport = self._raw_transport
        if transport is None or not transport.get_write_buffer_size():
            return
        if self._current_request is not None and not self.writing_paused:
            # A handler is writing a response: it pauses, restarting the clock, if it must wait.
            self._start_send_clock()
            return
        if self._limits is not None:
            self._limits.cut_off(
                "send_timeout",
                f"send_timeout = {self._send_timeout:g} s: a client did not take its response "
                "in time; the connection is closed",
            )
        self._abort()

    def waiting_for_a_request(self) -> bool:
        """No request under way: none being handled or answered, none read and waiting,
        nothing left to send (see :meth:`Limits._make_room <server.limits.Limits>`)."""
        transport = self._raw_transport
        return (
            not self._request_in_progress
            and not self._messages
            and transport is not None
            and not transport.get_write_buffer_size()
        )

    def close_now(self) -> None:
        self._abort()

    def _abort(self) -> None:
        """Close the connection now: ``close`` would wait for the client to take what is
        still to be sent, and a client that takes nothing would keep it open for ever."""
        if self._raw_transport is not None:
            self._raw_transport.abort()

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        """Requests that are not valid HTTP, and clients gone before their answer, are the
        client's doing: logged at debug level, not as errors with a traceback that any
        client could flood the log with."""
        exc = kwargs.get("exc_info")
        if isinstance(exc, ConnectionError) or (
            isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500
        ):
            self.logger.debug(*args, **kwargs)
        else:
            super().log_exception(*args, **kwargs)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        response = super().handle_error(request, status, exc, message)
        if isinstance(response, web.Response) and 400 <= status < 500:
            first_line = (message or "").strip().splitlines()[:1]
            reason = first_line[0].rstrip(":") if first_line else "bad request"
            response.text = one_line(reason) + "\n"
            response.headers["Tus-Resumable"] = TUS_VERSION
        return response


def _one_line_http_errors(
    handler: Callable[[BaseRequest], Awaitable[web.StreamResponse]],
    cors: CorsPolicy | None,
) -> Callable[[BaseRequest], Awaitable[web.StreamResponse]]:
    """Refusals raised outside the middlewares in one line too: aiohttp checks ``Expect``
    before them, and answers ``Expect: nonsense`` with a bare ``Unknown Expect: ...``.
    Requests on a connection over ``max_connections`` are refused here, before the app.
    Both refusals carry the CORS headers, so that a browser's client can read them."""

    async def handle(request: BaseRequest) -> web.StreamResponse:
        protocol = request.protocol
        if (
            isinstance(protocol, _OneLineErrorHandler)
            and protocol.admission is not Admission.ADMITTED
        ):
            response = await _over_connection_limit(request, handler)
        elif "Expect" in request.headers and (reason := unknown_expectation(request)):
            # aiohttp's own answer puts the value into its body and fails on undecodable bytes.
            response = web.Response(status=417, text=reason)
        else:
            try:
                return await handler(request)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                answer = dataclasses.replace(classify(exc), reason=exc.text or exc.reason)
                return error_response(answer)
        if cors is not None:
            await cors.add_headers(request, response)
        return response

    return handle


async def _over_connection_limit(
    request: BaseRequest, handler: Callable[[BaseRequest], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The answer on a connection over ``max_connections``, which then closes: 503, but
    ``/healthz`` as ever, so that a liveness probe does not restart a server for being busy."""
    if request.path == "/healthz":
        response = await handler(request)
    else:
        response = error_response(classify(Overloaded(
            "too many connections; try again later", {"Retry-After": str(BUSY_RETRY_AFTER)}
        )))
        response.headers["Tus-Resumable"] = TUS_VERSION
    response.force_close()
    return response


class _Server(web.Server):
    def __init__(self, *args: Any, limits: Limits | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits

    def __call__(self) -> RequestHandler:
        return _OneLineErrorHandler(self, self.limits, loop=self._loop, **self._kwargs)


class AppRunner(web.AppRunner):
    """aiohttp's runner, with protocol-level errors answered in one line and, for an app
    of :func:`create_app`, ``max_connections``, ``header_timeout``, ``keepalive_timeout``
    and ``send_timeout`` kept."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        limits = self.app.get(LIMITS)
        if limits is not None and (shortfall := limits.descriptor_shortfall()):
            log.warning("%s", shortfall)
        kwargs = dict(server._kwargs)
        if limits is not None:
            # The rest of a refused body is read and dropped for as long as headers may take.
            kwargs["keepalive_timeout"] = limits.settings.limits.keepalive_timeout
            kwargs["lingering_time"] = limits.settings.limits.header_timeout
        return _Server(
            _one_line_http_errors(server.request_handler, self.app.get(CORS)),
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=asyncio.get_running_loop(),
            limits=limits,
            **kwargs,
        )


class SocketSite(web.SockSite):
    """aiohttp's site on a bound socket (see :mod:`server.listeners`), with a deadline for
    the TLS handshake.

    asyncio gives a handshake 60 s, and a connection becomes the server's (counted under
    ``max_connections``, its header clock running) only once it is done: a client that
    opens connections and never says hello would hold a descriptor each for a minute.
    aiohttp's site passes no handshake deadline, so this one opens the server itself.
    """

    def __init__(
        self, runner: web.BaseRunner, sock: socket.socket, tls: ssl.SSLContext | None = None,
        handshake_timeout: float = 0.0,
    ) -> None:
        super().__init__(runner, sock, ssl_context=tls)
        self._handshake_timeout = handshake_timeout if tls is not None else None

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            server, sock=self._sock, ssl=self._ssl_context, backlog=self._backlog,
            ssl_handshake_timeout=self._handshake_timeout,
        )


@web.middleware
async def client_address_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """``request.remote`` becomes the client's address that a trusted proxy tells
    (:func:`server.proxy.client_address`), once, for all that read it: hooks, the
    per-client limits; the proxy's is kept as :data:`~server.proxy.PEER`.

    aiohttp sets ``remote`` only in a ``clone(remote=...)``: a new request with a copy of
    the state, while the access log and the response signals get the request aiohttp made,
    without what the handlers recorded (bytes received, the error). So the address goes
    where ``clone`` puts it, in the request's cache of ``remote``.
    """
    address = client_address(request)
    if address != request.remote:
        request[PEER] = request.remote or ""
        request._cache["remote"] = address
    return await handler(request)
