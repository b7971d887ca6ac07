"""Slow and silent clients cannot hold connections or receiving slots: the header timeout,
the keep-alive timeout, the least body rate and the send timeout, against real servers
on loopback driven over raw sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import ClientSession, web
from support.http import PATCH_HEADERS, TUS
from support.processes import free_port
from support.storage import data_file, file_size, payload
from support.waiting import poll

from server.app import create_app
from server.config import ConfigError, Settings, load_settings
from server.connections import AppRunner
from server.limits import LIMITS, Limits

HOST = "127.0.0.1"
DEADLINE = 10.0
"""Longest any one wait of these tests may take."""


@dataclasses.dataclass
class Served:
    """An app of :func:`create_app` behind :class:`AppRunner`, on a loopback port."""

    runner: AppRunner
    port: int
    settings: Settings

    @property
    def app(self) -> web.Application:
        return self.runner.app

    @property
    def limits(self) -> Limits:
        return self.app[LIMITS]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


@pytest.fixture
async def serve(settings: Settings) -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    """``await serve(header_timeout=1)``: the app as ``aiotusd`` serves it, in this process."""
    runners: list[AppRunner] = []

    async def start(**changes: Any) -> Served:
        changed = settings.with_values(**changes)
        runner = AppRunner(create_app(changed), handle_signals=False)
        runners.append(runner)
        await runner.setup()
        site = web.TCPSite(runner, HOST, 0)
        await site.start()
        return Served(runner, site.port, changed)

    yield start
    for runner in runners:
        await runner.cleanup()


async def connect(
    port: int, receive_buffer: int = 0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection; with ``receive_buffer``, a small one that fills up soon."""
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    async with asyncio.timeout(DEADLINE):
        await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
        return await asyncio.open_connection(sock=sock)


def head_of(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """The status and the (lower-case) headers of a response without a body."""
    async with asyncio.timeout(DEADLINE):
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *lines = head.rstrip("\r\n").split("\r\n")
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines)}
    length = int(headers.get("content-length", "0"))
    async with asyncio.timeout(DEADLINE):
        await reader.readexactly(length)
    return int(status_line.split()[1]), headers


async def seconds_until_closed(reader: asyncio.StreamReader, since: float) -> float:
    """Read (and drop) until the server closes the connection; the seconds since ``since``."""
    async with asyncio.timeout(DEADLINE):
        try:
            while await reader.read(65536):
                pass
        except ConnectionResetError:
            pass
    return time.monotonic() - since


async def still_open_after(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Whether the connection stays open, and silent, for ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            await reader.read(1)
    except TimeoutError:
        return True
    return False


DRIBBLED = b"PATCH /files/abc HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"x" * 200
"""The start of a request whose headers never end."""


async def dribble(writer: asyncio.StreamWriter, interval: float, data: bytes = DRIBBLED) -> None:
    """Send ``data`` a byte each ``interval`` seconds, until the server hangs up."""
    for index in range(len(data)):
        try:
            writer.write(data[index : index + 1])
            await writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(interval)


async def refusals(served: Served, reason: str) -> float:
    async with ClientSession() as session, session.get(served.url + "/metrics") as response:
        text = await response.text()
    match = re.search(rf'^aiotusd_refusals_total{{reason="{reason}"}} (\S+)$', text, re.MULTILINE)
    assert match, text
    return float(match.group(1))


async def options(port: int) -> int:
    """The status of ``OPTIONS`` on a new connection, which is then closed."""
    reader, writer = await connect(port)
    try:
        writer.write(head_of("OPTIONS", "/files/", TUS))
        return (await read_head(reader))[0]
    finally:
        writer.close()


# --- The settings.


def test_the_defaults_protect_a_server_without_a_proxy():
    settings = load_settings()
    assert settings.limits.header_timeout == 10.0
    assert settings.limits.keepalive_timeout == 75.0
    assert (settings.limits.body_min_rate, settings.limits.body_rate_window) == (1024, 30.0)
    assert settings.limits.send_timeout == 60.0
    changed = load_settings(environ={
        "AIOTUSD_HEADER_TIMEOUT": "2.5", "AIOTUSD_KEEPALIVE_TIMEOUT": "5",
        "AIOTUSD_BODY_MIN_RATE": "2KiB", "AIOTUSD_BODY_RATE_WINDOW": "10",
        "AIOTUSD_SEND_TIMEOUT": "7",
    })
    assert (changed.limits.header_timeout, changed.limits.keepalive_timeout) == (2.5, 5)
    assert changed.limits.send_timeout == 7
    assert (changed.limits.body_min_rate, changed.limits.body_rate_window) == (2048, 10)
    assert load_settings({"body_min_rate": "0"}).limits.body_min_rate == 0
    for name, value in [("header_timeout", "0"), ("keepalive_timeout", "-1"),
                        ("body_min_rate", "-5"), ("body_rate_window", "0"),
                        ("send_timeout", "soon")]:
        with pytest.raises(ConfigError, match=name):
            load_settings({name: value})


# --- Request headers: from the connection's start, or the first byte of the next request.


@pytest.mark.e2e
@pytest.mark.slow
async def test_a_silent_connection_is_closed_at_the_header_timeout(server_process):
    metrics_port = free_port()
    server = server_process(
        "--header-timeout", "1", "--metrics", "true", "--metrics-port", str(metrics_port)
    )
    reader, writer = await connect(server.port)
    waited = await seconds_until_closed(reader, time.monotonic())
    writer.close()
    assert 0.8 <= waited < 4, waited
    metrics_url = f"http://{HOST}:{metrics_port}/metrics"

    async def counted() -> bool:
        async with ClientSession() as session, session.get(metrics_url) as response:
            return 'aiotusd_refusals_total{reason="header_timeout"} 1.0' in await response.text()

    await poll(counted, "the closed connection in the metrics", timeout=DEADLINE)


@pytest.mark.slow
async def test_a_client_dribbling_its_headers_is_closed_at_the_header_timeout(serve):
    served = await serve(header_timeout=1.0)
    reader, writer = await connect(served.port)
    started = time.monotonic()
    writer.write(DRIBBLED[:40])
    sending = asyncio.create_task(dribble(writer, 0.05, DRIBBLED[40:]))  # 10 s, if let
    waited = await seconds_until_closed(reader, started)
    await sending
    writer.close()
    assert 0.8 <= waited < 3, waited


@pytest.mark.slow
async def test_the_header_clock_of_a_next_request_starts_with_its_first_byte(serve):
    """Between requests the wait is ``keepalive_timeout``'s; the headers then get
    ``header_timeout`` from their first byte, however slowly they come."""
    served = await serve(header_timeout=1.0, keepalive_timeout=6.0)

    async def idle_until_closed() -> float:
        reader, writer = await connect(served.port)
        writer.write(head_of("OPTIONS", "/files/", TUS))
        assert (await read_head(reader))[0] == 204
        waited = await seconds_until_closed(reader, time.monotonic())
        writer.close()
        return waited

    async def idle_then_dribble() -> float:
        reader, writer = await connect(served.port)
        writer.write(head_of("OPTIONS", "/files/", TUS))
        assert (await read_head(reader))[0] == 204
        assert await still_open_after(reader, 2.0)  # past header_timeout: idle is not late
        first_byte = time.monotonic()
        sending = asyncio.create_task(dribble(writer, 0.05))
        waited = await seconds_until_closed(reader, first_byte)
        await sending
        writer.close()
        return waited

    idle, dribbled = await asyncio.gather(idle_until_closed(), idle_then_dribble())
    assert 5.5 <= idle < 9, idle
    assert 0.8 <= dribbled < 2.5, dribbled


@pytest.mark.slow
async def test_silent_connections_at_max_connections_make_room_and_are_closed(serve):
    """At max_connections, a new client takes the place of the silent connection that has
    waited longest, at once; the other silent ones are closed at the header timeout."""
    served = await serve(max_connections=3, header_timeout=3.0, metrics=True)
    silent = []
    for count in range(1, 4):
        silent.append(await connect(served.port))
        await poll(lambda: served.limits.connections.in_use == count, "a silent connection counted")
    opened = time.monotonic()
    assert await options(served.port) == 204
    assert await seconds_until_closed(silent[0][0], opened) < 2
    for reader, writer in silent[1:]:
        assert 2 < await seconds_until_closed(reader, opened) < 6
        writer.close()
    silent[0][1].close()
    await poll(lambda: served.limits.connections.in_use == 0, "the silent connections gone")
    assert await options(served.port) == 204
    assert await refusals(served, "connections_replaced") == 1
    assert await refusals(served, "header_timeout") == 2


@pytest.mark.slow
async def test_a_refused_body_is_waited_for_no_longer_than_the_header_timeout(serve):
    """Refused before its body was asked for (``Expect: 100-continue``), a client that
    neither sends the body nor closes is closed once ``header_timeout`` is up."""
    served = await serve(header_timeout=1.0)
    reader, writer = await connect(served.port)
    writer.write(head_of("PATCH", "/files/0123456789abcdef", {
        **PATCH_HEADERS, "Upload-Offset": "0", "Content-Length": "1000", "Expect": "100-continue",
    }))
    status, headers = await read_head(reader)
    assert (status, headers["connection"]) == (404, "close")
    waited = await seconds_until_closed(reader, time.monotonic())
    writer.close()
    assert waited < 3, waited


# --- Request bodies: the least rate over a window.


async def create(served: Served, length: int) -> str:
    async with ClientSession() as session, session.post(
        served.url + "/files/", headers={**TUS, "Upload-Length": str(length)}
    ) as response:
        assert response.status == 201
        location = response.headers["Location"]
    return location[location.index("/files/") :]


async def offset_of(served: Served, path: str) -> int:
    async with ClientSession() as session, session.head(served.url + path, headers=TUS) as response:
        return int(response.headers["Upload-Offset"])


async def test_a_body_dripped_below_the_least_rate_is_cut_off_and_kept(serve):
    served = await serve(
        max_uploads_receiving=1, body_min_rate=1000, body_rate_window=0.5, idle_timeout=60,
        metrics=True,
    )
    data = payload(100_000, seed=4)
    path = await create(served, len(data))
    reader, writer = await connect(served.port)
    writer.write(head_of("PATCH", path, {
        **PATCH_HEADERS, "Upload-Offset": "0", "Content-Length": str(len(data)),
    }) + data[:3000])
    await poll(lambda: served.limits.bodies.in_use == 1, "the body to be received")
    started = time.monotonic()
    sent = 3000

    async def drip() -> None:
        nonlocal sent
        for _ in range(200):
            try:
                writer.write(data[sent : sent + 1])
                await writer.drain()
            except ConnectionError:
                return
            sent += 1
            await asyncio.sleep(0.05)

    dripping = asyncio.create_task(drip())
    waited = await seconds_until_closed(reader, started)
    dripping.cancel()
    writer.close()
    assert waited < 3, waited
    await poll(lambda: served.limits.bodies.in_use == 0, "the receiving slot to be free")
    offset = await offset_of(served, path)
    assert 3000 <= offset <= sent
    assert data_file(served.settings, path).read_bytes() == data[:offset]
    assert await refusals(served, "body_timeout") == 1
    headers = {**PATCH_HEADERS, "Upload-Offset": str(offset)}
    async with ClientSession() as session, session.patch(
        served.url + path, data=data[offset:], headers=headers
    ) as response:
        assert (response.status, response.headers["Upload-Offset"]) == (204, str(len(data)))


@pytest.mark.slow
async def test_a_slow_but_steady_body_is_not_cut_off(serve):
    served = await serve(body_min_rate=1000, body_rate_window=0.5, idle_timeout=60)
    data = payload(10_000, seed=5)
    path = await create(served, len(data))
    reader, writer = await connect(served.port)
    writer.write(head_of("PATCH", path, {
        **PATCH_HEADERS, "Upload-Offset": "0", "Content-Length": str(len(data)),
    }))
    for start in range(0, len(data), 250):  # 2500 bytes a second, over 8 windows
        writer.write(data[start : start + 250])
        await writer.drain()
        await asyncio.sleep(0.1)
    status, headers = await read_head(reader)
    writer.close()
    assert (status, headers["upload-offset"]) == (204, str(len(data)))
    assert data_file(served.settings, path).read_bytes() == data


# --- Responses: a client that takes none of its response.


async def finished_upload(served: Served, size: int) -> str:
    data = payload(size, seed=6)
    path = await create(served, len(data))
    async with ClientSession() as session, session.patch(
        served.url + path, data=data, headers={**PATCH_HEADERS, "Upload-Offset": "0"}
    ) as response:
        assert response.status == 204
    assert file_size(data_file(served.settings, path)) == len(data)
    return path


@pytest.mark.parametrize("pauses", [True, False], ids=["writing waits", "written whole"])
@pytest.mark.slow
async def test_a_download_the_client_does_not_read_is_cut_off_at_the_send_timeout(serve, pauses):
    """Writing waits for a client that takes nothing; and a response written whole into
    the buffer (here with its limit raised) waits to go out, on a connection that would
    otherwise wait for ever to close."""
    served = await serve(send_timeout=1.0, metrics=True)
    size = 16 * 1024 * 1024
    path = await finished_upload(served, size)
    reader, writer = await connect(served.port, receive_buffer=4096)
    if not pauses:
        server = served.runner.server
        assert server is not None
        client = writer.get_extra_info("sockname")
        ours = await poll(
            lambda: [c for c in server.connections if c.peername == client],
            "the server to see the connection",
        )
        assert ours[0].transport is not None
        ours[0].transport.set_write_buffer_limits(high=2 * size)
    writer.write(head_of("GET", path, {**TUS, "Connection": "close"}))
    await poll(
        lambda: refusals(served, "send_timeout"), "the download to be cut off", timeout=DEADLINE
    )
    received = 0
    async with asyncio.timeout(DEADLINE):
        try:
            while chunk := await reader.read(65536):
                received += len(chunk)
        except ConnectionResetError:
            pass
    writer.close()
    assert 0 < received < size
    await poll(lambda: served.limits.connections.in_use == 0, "the connection to be gone")
