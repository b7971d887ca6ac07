"""A real webhook receiver on loopback, for the hook tests."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from aiohttp import ClientResponse, web
from multidict import CIMultiDictProxy

from support.processes import free_port

T = TypeVar("T")


@dataclass
class Received:
    """One request the receiver got."""

    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]

    @property
    def name(self) -> str:
        return self.headers["Hook-Name"]

    @property
    def id(self) -> str:
        return self.headers["Hook-Id"]

    @property
    def offset(self) -> int:
        """The upload's offset, in either format (aiotusd's own, tusd's)."""
        document = self.json
        if "Event" in document:
            return int(document["Event"]["Upload"]["Offset"])
        return int(document["upload"]["offset"])


Responder = Callable[[Received], web.StreamResponse | Awaitable[web.StreamResponse]]


class Receiver:
    """An aiohttp app on 127.0.0.1 that records every hook request and answers with
    ``respond`` (200 with no body when it is None). Restartable on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[Received] = []
        self.respond: Responder | None = None
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received = Received(request.headers, await request.read())
        self.received.append(received)
        async with self._changed:
            self._changed.notify_all()
        if self.respond is None:
            return web.Response()
        answer = self.respond(received)
        return await answer if inspect.isawaitable(answer) else answer

    def named(self, *names: str) -> list[Received]:
        return [r for r in self.received if r.name in names]

    async def wait(self, probe: Callable[[], T], what: str, timeout: float = 10) -> T:
        """Wait until ``probe()`` is truthy, re-checked on every request; fail after ``timeout``."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(probe)
        except TimeoutError:
            got = [(r.name, r.offset) for r in self.received]
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what}; got {got}"
            ) from None
        return probe()

    async def wait_for_names(self, *names: str, timeout: float = 10) -> list[Received]:
        """Wait until one request of each event in ``names`` (counted with repeats) arrived."""

        def probe() -> list[Received]:
            got = [r.name for r in self.received]
            return self.received if all(got.count(n) >= names.count(n) for n in names) else []

        return await self.wait(probe, f"events {names}", timeout)


RawAnswer = bytes | Callable[[asyncio.StreamWriter], Awaitable[None]]


class RawReceiver:
    """A webhook receiver on 127.0.0.1 that answers each request with ``answer``: exact
    bytes, or a coroutine that writes them. For answers an aiohttp app will not send."""

    def __init__(self) -> None:
        self.answer: RawAnswer = b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
        self.requests = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/hook"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = next(
                int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await asyncio.wait_for(reader.readexactly(length), 10)
            self.requests += 1
            if isinstance(self.answer, bytes):
                writer.write(self.answer)
                await writer.drain()
            else:
                await self.answer(writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the server hung up: what some answers are for
        finally:
            writer.close()


@pytest.fixture
async def raw_receiver() -> AsyncIterator[RawReceiver]:
    receiver = RawReceiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


def verify(secret: str, received: Received) -> bool:
    """What a receiver does: recompute the HMAC of timestamp + "." + body and compare."""
    timestamp = received.headers["Hook-Timestamp"]
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + received.body, hashlib.sha256)
    return hmac.compare_digest("sha256=" + expected.hexdigest(), received.headers["Hook-Signature"])


async def assert_hook_failed(
    response: ClientResponse, caplog: pytest.LogCaptureFixture, *details: str
) -> str:
    """A blocking hook's failure as the client sees it (503, a body that names only the
    request id: no hook URL, no error) and as the server's log has it (one line with the
    request id and every one of ``details``). Returns that line."""
    assert response.status == 503, response.status
    request_id = response.headers["X-Request-ID"]
    assert await response.text() == f"hook failed; request id {request_id}\n"
    lines = [r.getMessage() for r in caplog.records if request_id in r.getMessage()]
    assert len(lines) == 1, lines
    assert all(detail in lines[0] for detail in details), (lines[0], details)
    return lines[0]
