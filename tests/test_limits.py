"""Overload protection: creation rate per client (429), bodies received at once (503) and
connections (503 and close), against real servers; the bucket arithmetic on a fake clock."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict
from support.http import (
    PATCH_HEADERS,
    TUS,
    assert_one_line_error,
    create_upload,
    head_offset,
)
from support.processes import free_port
from support.storage import data_file, data_files, payload
from support.waiting import poll

from server import limits as limits_module
from server.config import ConfigError, Settings, load_settings
from server.limits import (
    BUSY_RETRY_AFTER,
    LIMITS,
    REFUSING_CONNECTIONS,
    Admission,
    CreationRate,
    Limits,
    client_key,
)
from server.metrics import Metrics

TIMEOUT = 10.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- Raw HTTP/1.1 over loopback, to hold bodies and connections open at will.


@dataclasses.dataclass
class RawResponse:
    status: int
    headers: CIMultiDict[str]
    body: bytes


def request_head(method: str, path: str, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_response(reader: asyncio.StreamReader) -> RawResponse:
    async with asyncio.timeout(TIMEOUT):
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status_line, *lines = head.rstrip("\r\n").split("\r\n")
        headers = CIMultiDict(line.split(": ", 1) for line in lines)
        body = await reader.readexactly(int(headers.get("Content-Length", "0")))
    return RawResponse(int(status_line.split()[1]), headers, body)


class Connection:
    """One raw client connection to a server on loopback."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        async with asyncio.timeout(TIMEOUT):
            return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def request(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> RawResponse:
        await self.send(request_head(method, path, headers))
        return await read_response(self.reader)

    async def start_a_patch(self) -> None:
        """Create an upload of 2 bytes and send a PATCH with 1 byte of its body: a request
        under way, until :meth:`end_the_patch`."""
        created = await self.request("POST", "/files/", {**TUS, "Upload-Length": "2"})
        assert created.status == 201
        self.upload = urlsplit(created.headers["Location"]).path
        await self.send(request_head("PATCH", self.upload, {
            **TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0",
            "Content-Length": "2",
        }) + b"x")

    async def end_the_patch(self) -> None:
        await self.send(b"y")
        assert (await read_response(self.reader)).status == 204

    async def closed_by_server(self) -> bool:
        """Whether the server closes the connection (EOF) within the timeout."""
        async with asyncio.timeout(TIMEOUT):
            return await self.reader.read() == b""

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


@pytest.fixture
async def connections() -> AsyncIterator[list[Connection]]:
    """Raw connections a test opens; closed after it."""
    opened: list[Connection] = []
    yield opened
    for connection in opened:
        if not connection.writer.is_closing():
            connection.writer.close()


def refusals(metrics_text: str, reason: str) -> float:
    match = re.search(rf'^aiotusd_refusals_total{{reason="{reason}"}} (\S+)$', metrics_text, re.MULTILINE)
    assert match, metrics_text
    return float(match.group(1))


async def post(client: TestClient, **headers: str) -> int:
    response = await client.post("/files/", headers={**TUS, "Upload-Length": "3", **headers})
    return response.status


# --- The token bucket and the table of buckets, on a fake clock.


def test_bucket_allows_the_burst_then_the_rate():
    clock = FakeClock()
    bucket = CreationRate(rate=2.0, burst=3, clock=clock)
    assert [bucket.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take("a") == pytest.approx(0.5)
    assert bucket.take("a") == pytest.approx(0.5)  # a refusal takes nothing
    clock.now += 0.25
    assert bucket.take("a") == pytest.approx(0.25)
    clock.now += 0.25
    assert bucket.take("a") == 0.0
    assert bucket.take("a") == pytest.approx(0.5)
    assert bucket.take("b") == 0.0  # another client has a bucket of its own
    clock.now += 10
    assert [bucket.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]  # refilled to the burst
    assert bucket.take("a") > 0


def test_full_buckets_are_forgotten_and_the_table_is_capped():
    clock = FakeClock()
    bucket = CreationRate(rate=1.0, burst=2, max_clients=3, clock=clock)
    for client in ("a", "b", "c", "d"):
        assert bucket.take(client) == 0.0
        assert bucket.take(client) == 0.0
    assert len(bucket) == 3  # "a", the least recently used, went first
    assert bucket.take("a") == 0.0  # and so has a full bucket again
    assert bucket.take("d") == pytest.approx(1.0)
    clock.now += 2  # burst / rate: every bucket is full again
    assert bucket.take("e") == 0.0
    assert len(bucket) == 1


def test_a_flood_from_many_addresses_stays_within_the_cap():
    clock = FakeClock()
    bucket = CreationRate(rate=20.0, burst=3000, max_clients=1000, clock=clock)
    for number in range(5000):
        assert bucket.take(f"10.{number >> 16}.{(number >> 8) & 255}.{number & 255}") == 0.0
    assert len(bucket) == 1000


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("203.0.113.7:4711", "203.0.113.7"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("[2001:db8:1:2::9]:4711", "2001:db8:1:2::/64"),
        ("_hidden", "_hidden"),
        ("", ""),
        ("x" * 5000, "x" * 64),
    ],
)
def test_client_keys(address, key):
    assert client_key(address) == key


# --- Connection admission and the start-up check, on the limits object.


class FakeConnection:
    """What Limits sees of a connection; the real one is tested against real sockets below
    and in tests/test_slow_clients.py."""

    def __init__(self, busy: bool = True) -> None:
        self.busy = busy
        self.closed = False

    def waiting_for_a_request(self) -> bool:
        return not self.busy

    def close_now(self) -> None:
        self.closed = True


def test_busy_connections_over_the_limit_are_refused_then_dropped():
    metrics = Metrics()
    limits = Limits(Settings().with_values(max_connections=2), metrics)
    admitted = [FakeConnection() for _ in range(2)]
    assert [limits.connection_opened(c) for c in admitted] == [Admission.ADMITTED] * 2
    over = [limits.connection_opened(FakeConnection()) for _ in range(REFUSING_CONNECTIONS)]
    assert over == [Admission.REFUSED] * REFUSING_CONNECTIONS
    assert limits.connection_opened(FakeConnection()) is Admission.DROPPED
    limits.connection_closed(FakeConnection(), Admission.REFUSED)
    assert limits.connection_opened(FakeConnection()) is Admission.REFUSED
    limits.connection_closed(admitted[0], Admission.ADMITTED)
    assert limits.connection_opened(FakeConnection()) is Admission.ADMITTED
    assert refusals(metrics.exposition().decode(), "connections") == REFUSING_CONNECTIONS + 2
    assert not any(connection.closed for connection in admitted)


def test_a_new_connection_takes_the_place_of_the_longest_idle_one():
    metrics = Metrics()
    limits = Limits(Settings().with_values(max_connections=3), metrics)
    first_idle, busy, second_idle = FakeConnection(False), FakeConnection(), FakeConnection(False)
    for connection in (first_idle, busy, second_idle):
        assert limits.connection_opened(connection) is Admission.ADMITTED
    newcomer = FakeConnection(False)
    assert limits.connection_opened(newcomer) is Admission.ADMITTED
    assert (first_idle.closed, busy.closed, second_idle.closed) == (True, False, False)
    # The replaced connection gave its place away: its close frees none.
    limits.connection_closed(first_idle, Admission.ADMITTED)
    assert limits.connections.in_use == 3
    assert limits.connection_opened(FakeConnection()) is Admission.ADMITTED
    assert second_idle.closed
    assert refusals(metrics.exposition().decode(), "connections_replaced") == 2


def test_no_connection_limit_admits_every_connection():
    limits = Limits(Settings().with_values(max_connections=0), Metrics())
    assert {limits.connection_opened(FakeConnection()) for _ in range(1000)} == {Admission.ADMITTED}


def test_the_defaults_are_documented_and_fit_the_common_file_limit(monkeypatch):
    settings = load_settings()
    assert (settings.limits.create_rate, settings.limits.create_burst) == (20.0, 3000)
    assert (settings.limits.max_uploads_receiving, settings.limits.max_connections) == (200, 600)
    monkeypatch.setattr(limits_module.resource, "getrlimit", lambda _: (1024, 4096))
    assert Limits(settings, Metrics()).descriptor_shortfall() is None
    shortfall = Limits(Settings().with_values(max_connections=2000), Metrics()).descriptor_shortfall()
    assert shortfall is not None and "ulimit -n" in shortfall and "1024" in shortfall
    assert Limits(Settings().with_values(max_connections=0), Metrics()).descriptor_shortfall() is None


def test_limit_settings_from_the_environment_and_bad_values():
    settings = load_settings(environ={
        "AIOTUSD_CREATE_RATE": "0.5", "AIOTUSD_CREATE_BURST": "10",
        "AIOTUSD_MAX_UPLOADS_RECEIVING": "0", "AIOTUSD_MAX_CONNECTIONS": "50",
    })
    assert (settings.limits.create_rate, settings.limits.create_burst) == (0.5, 10)
    assert (settings.limits.max_uploads_receiving, settings.limits.max_connections) == (0, 50)
    for name, value in [("create_rate", "-1"), ("create_burst", "0"),
                        ("max_uploads_receiving", "-1"), ("max_connections", "many")]:
        with pytest.raises(ConfigError, match=name):
            load_settings({name: value})


# --- The creation rate against a running server.


async def test_creation_over_the_burst_gets_429_with_retry_after(make_client, settings):
    client = await make_client(create_rate=0.25, create_burst=2, metrics=True)
    path = await create_upload(client, 3)
    assert await post(client) == 201
    response = await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
    await assert_one_line_error(response, 429)
    assert response.headers["Retry-After"] == "4"  # one token every 4 s, none left
    assert "too many uploads created" in await response.text()
    # Creation with upload and a concatenation final draw on the same bucket.
    with_body = await client.post(
        "/files/", data=b"abc", headers={**PATCH_HEADERS, "Upload-Length": "3"}
    )
    assert with_body.status == 429
    final = await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{path}"})
    assert final.status == 429
    assert len(data_files(settings)) == 2  # nothing was created
    # The rest of the protocol is not rate limited.
    patched = await client.patch(
        path, data=b"abc", headers={**PATCH_HEADERS, "Upload-Offset": "0"}
    )
    assert patched.status == 204
    assert await head_offset(client, path) == "3"
    metrics = await (await client.get("/metrics")).text()
    assert refusals(metrics, "create_rate") == 3
    assert refusals(metrics, "uploads_receiving") == 0


async def test_a_client_gets_in_again_once_a_token_is_back(make_client):
    client = await make_client(create_rate=20.0, create_burst=1)
    assert await post(client) == 201
    response = await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
    assert response.status == 429
    assert response.headers["Retry-After"] == "1"  # 50 ms, rounded up to whole seconds
    await poll(lambda: post_created(client), "a token to come back", timeout=5)


async def post_created(client: TestClient) -> bool:
    return await post(client) == 201


async def test_other_clients_behind_a_trusted_proxy_are_not_affected(make_client):
    client = await make_client(
        create_rate=0.01, create_burst=1, behind_proxy=True, trusted_proxies="127.0.0.1/32"
    )
    first = {"X-Forwarded-For": "203.0.113.1"}
    assert await post(client, **first) == 201
    assert await post(client, **first) == 429
    assert await post(client, **{"X-Forwarded-For": "203.0.113.2"}) == 201
    # A hop a client put in front does not make it someone else: the last hop counts.
    assert await post(client, **{"X-Forwarded-For": "198.51.100.9, 203.0.113.1"}) == 429
    # RFC 7239 Forwarded, when there is no X-Forwarded-For.
    forwarded = {"Forwarded": 'for="[2001:db8:5::1]:4711"'}
    assert await post(client, **forwarded) == 201
    # The same /64 is the same client; another /64 is not.
    assert await post(client, Forwarded='for="[2001:db8:5::2]"') == 429
    assert await post(client, Forwarded='for="[2001:db8:6::1]"') == 201
    # Without forwarded headers the client is the proxy itself.
    assert await post(client) == 201
    assert await post(client) == 429


async def test_a_chain_is_followed_back_past_trusted_proxies(make_client):
    client = await make_client(
        create_rate=0.01, create_burst=1, behind_proxy=True,
        trusted_proxies="127.0.0.1/32,10.0.0.0/8",
    )
    assert await post(client, **{"X-Forwarded-For": "203.0.113.1, 10.1.1.1"}) == 201
    assert await post(client, **{"X-Forwarded-For": "203.0.113.1, 10.2.2.2"}) == 429
    assert await post(client, **{"X-Forwarded-For": "203.0.113.2, 10.1.1.1"}) == 201


async def test_forwarded_addresses_are_ignored_without_behind_proxy(make_client):
    client = await make_client(create_rate=0.01, create_burst=1)
    assert await post(client, **{"X-Forwarded-For": "203.0.113.1"}) == 201
    assert await post(client, **{"X-Forwarded-For": "203.0.113.2"}) == 429
    assert await post(client, Forwarded="for=198.51.100.1") == 429


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-For": "not an address"},
        {"X-Forwarded-For": "[::1"},
        {"X-Forwarded-For": "1.2.3.4:99999"},
        {"X-Forwarded-For": ",,,"},
        {"X-Forwarded-For": "x" * 5000},
        {"Forwarded": "for=_hidden"},
        {"Forwarded": "for=unknown;proto=https"},
        {"Forwarded": "nonsense"},
    ],
)
async def test_odd_forwarded_addresses_are_a_client_like_any_other(make_client, headers):
    client = await make_client(create_rate=0.01, create_burst=1, behind_proxy=True)
    assert await post(client, **headers) == 201
    response = await client.post("/files/", headers={**TUS, "Upload-Length": "3", **headers})
    await assert_one_line_error(response, 429)


async def test_create_rate_0_is_no_limit(make_client):
    client = await make_client(create_rate=0, create_burst=1)
    assert [await post(client) for _ in range(5)] == [201] * 5


# --- Bodies received at once, against a running server.


def patch_head(path: str, length: int, offset: int = 0) -> bytes:
    return request_head("PATCH", path, {
        **PATCH_HEADERS, "Upload-Offset": str(offset), "Content-Length": str(length),
    })


async def test_bodies_over_the_limit_get_503_and_the_held_ones_complete(
    make_client, connections, settings
):
    client = await make_client(max_uploads_receiving=2, metrics=True)
    limits = client.app[LIMITS]
    held = [await create_upload(client, 10) for _ in range(2)]
    other = await create_upload(client, 10)
    data = {path: payload(10, seed) for seed, path in enumerate([*held, other])}
    for path in held:
        connection = await Connection.open(client.port)
        connections.append(connection)
        await connection.send(patch_head(path, 10) + data[path][:4])
    await poll(lambda: limits.bodies.in_use == 2, "both bodies to be received")

    refused = await client.patch(
        other, data=data[other], headers={**PATCH_HEADERS, "Upload-Offset": "0"}
    )
    await assert_one_line_error(refused, 503)
    assert refused.headers["Retry-After"] == str(BUSY_RETRY_AFTER)
    assert "too many uploads in progress" in await refused.text()
    # A PATCH of a held upload is refused before the lock: it does not cut the body off.
    again = await client.patch(
        held[0], data=data[held[0]], headers={**PATCH_HEADERS, "Upload-Offset": "0"}
    )
    assert again.status == 503
    files_before = data_files(settings)
    with_body = await client.post(
        "/files/", data=b"abc", headers={**PATCH_HEADERS, "Upload-Length": "3"}
    )
    assert with_body.status == 503 and "Location" not in with_body.headers
    assert data_files(settings) == files_before
    # Nothing else is limited.
    assert await head_offset(client, other) == "0"
    assert (await client.options("/files/")).status == 204
    assert (await client.get("/healthz")).status == 200
    assert await post(client) == 201
    assert limits.bodies.in_use == 2

    # One held body finishes; then a new PATCH is taken, and the other held one finishes.
    first, second = connections
    await first.send(data[held[0]][4:])
    finished = await read_response(first.reader)
    assert (finished.status, finished.headers["Upload-Offset"]) == (204, "10")
    patched = await client.patch(
        other, data=data[other], headers={**PATCH_HEADERS, "Upload-Offset": "0"}
    )
    assert patched.status == 204
    await second.send(data[held[1]][4:])
    assert (await read_response(second.reader)).status == 204
    for path, body in data.items():
        assert await head_offset(client, path) == "10"
        assert data_file(settings, path).read_bytes() == body
    assert limits.bodies.in_use == 0
    metrics = await (await client.get("/metrics")).text()
    assert refusals(metrics, "uploads_receiving") == 3


async def test_one_client_gets_its_share_of_the_bodies_received(make_client, connections):
    """Once half the receiving slots are taken, one client address (here told by a trusted
    proxy) may send max_uploads_receiving_per_client bodies at once; beyond them it gets
    503, while other clients are served."""
    client = await make_client(
        max_uploads_receiving=4, max_uploads_receiving_per_client=2, behind_proxy=True,
        trusted_proxies="127.0.0.1/32", metrics=True,
    )
    limits = client.app[LIMITS]
    one, other = {"X-Forwarded-For": "127.0.0.2"}, {"X-Forwarded-For": "127.0.0.3"}
    held = [await create_upload(client, 4) for _ in range(2)]
    for path in held:
        connection = await Connection.open(client.port)
        connections.append(connection)
        await connection.send(request_head("PATCH", path, {
            **PATCH_HEADERS, **one, "Upload-Offset": "0", "Content-Length": "4",
        }) + b"ab")
    await poll(lambda: limits.bodies.in_use == 2, "both bodies to be received")
    third, fourth = await create_upload(client, 4), await create_upload(client, 4)
    refused = await client.patch(
        third, data=b"abcd", headers={**PATCH_HEADERS, **one, "Upload-Offset": "0"}
    )
    await assert_one_line_error(refused, 503)
    assert "from this client" in await refused.text()
    served = await client.patch(
        fourth, data=b"abcd", headers={**PATCH_HEADERS, **other, "Upload-Offset": "0"}
    )
    assert served.status == 204
    for connection in connections:
        await connection.send(b"cd")
        assert (await read_response(connection.reader)).status == 204
    again = await client.patch(
        third, data=b"abcd", headers={**PATCH_HEADERS, **one, "Upload-Offset": "0"}
    )
    assert again.status == 204
    assert limits.bodies.in_use == 0
    assert refusals(await (await client.get("/metrics")).text(), "uploads_receiving") == 1


async def test_max_uploads_receiving_0_is_no_limit(make_client, connections):
    client = await make_client(max_uploads_receiving=0)
    paths = [await create_upload(client, 4) for _ in range(3)]
    for path in paths:
        connection = await Connection.open(client.port)
        connections.append(connection)
        await connection.send(patch_head(path, 4) + b"ab")
    await poll(lambda: client.app[LIMITS].bodies.in_use == 3, "three bodies to be received")
    for connection in connections:
        await connection.send(b"cd")
        assert (await read_response(connection.reader)).status == 204


# --- Connections, against a real server process.


@pytest.mark.e2e
async def test_refusals_made_before_the_app_carry_cors_headers(server_process, connections):
    """A browser's client can read a refusal only with CORS headers: the 503 over
    ``max_connections`` and the 417 for an unknown ``Expect`` are made outside the app."""
    origin = "https://app.example"
    server = server_process("--max-connections", "1", "--cors-origins", origin)
    admitted: list[Connection] = []

    async def admit() -> bool:
        # The start-up probe's connection may not be counted out yet.
        connection = await Connection.open(server.port)
        connections.append(connection)
        if (await connection.request("OPTIONS", "/files/", TUS)).status == 204:
            admitted.append(connection)
        return bool(admitted)

    await poll(admit, "a connection to be admitted", timeout=TIMEOUT)
    # Busy: a new connection cannot take its place.
    await admitted[0].start_a_patch()

    for sent, allowed in ((origin, origin), ("https://elsewhere.example", None)):
        over = await Connection.open(server.port)
        connections.append(over)
        refused = await over.request("GET", "/files/abc", {**TUS, "Origin": sent})
        assert refused.status == 503
        assert refused.headers.get("Access-Control-Allow-Origin") == allowed
        assert "Origin" in refused.headers["Vary"]
        if allowed is not None:
            exposed = refused.headers["Access-Control-Expose-Headers"].split(", ")
            assert {"Retry-After", "Tus-Resumable"} <= set(exposed)

    await admitted[0].end_the_patch()
    expectation = await admitted[0].request(
        "POST", "/files/", {**TUS, "Origin": origin, "Upload-Length": "1", "Expect": "nonsense"}
    )
    assert expectation.status == 417
    assert expectation.headers["Access-Control-Allow-Origin"] == origin


@pytest.mark.e2e
@pytest.mark.slow
async def test_connections_over_busy_ones_get_503_and_the_others_are_served(
    server_process, connections
):
    """Over max_connections that all have a request under way, a new connection is
    refused; the idle case (a new connection takes an idle one's place) is in
    tests/test_slow_clients.py."""
    metrics_port = free_port()
    server = server_process(
        "--max-connections", "3", "--metrics", "true", "--metrics-port", str(metrics_port)
    )
    options = ("OPTIONS", "/files/", TUS)
    for _ in range(3):
        connection = await Connection.open(server.port)
        connections.append(connection)
        assert (await connection.request(*options)).status == 204
        await connection.start_a_patch()
    admitted = list(connections)

    over = await Connection.open(server.port)
    connections.append(over)
    refused = await over.request(*options)
    assert refused.status == 503
    assert refused.headers["Connection"] == "close"
    assert refused.headers["Retry-After"] == str(BUSY_RETRY_AFTER)
    assert refused.headers["Content-Type"].startswith("text/plain")
    assert refused.body == b"too many connections; try again later\n"
    assert await over.closed_by_server()
    # A liveness probe is still answered, on a connection that is then closed.
    probe = await Connection.open(server.port)
    connections.append(probe)
    healthz = await probe.request("GET", "/healthz")
    assert (healthz.status, healthz.body, healthz.headers["Connection"]) == (200, b"ok\n", "close")
    assert await probe.closed_by_server()
    # One that sends nothing is closed after a short grace, not kept.
    silent = await Connection.open(server.port)
    connections.append(silent)
    assert await silent.closed_by_server()

    for connection in admitted:
        await connection.end_the_patch()
        assert (await connection.request(*options)).status == 204
        await connection.start_a_patch()
    await admitted[0].close()

    async def served() -> bool:
        connection = await Connection.open(server.port)
        connections.append(connection)
        return (await connection.request(*options)).status == 204

    await poll(served, "a new connection to be served once one closed", timeout=TIMEOUT)
    for connection in admitted[1:]:
        await connection.end_the_patch()

    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    async with ClientSession() as session, session.get(metrics_url) as response:
        assert refusals(await response.text(), "connections") >= 3
    assert "limit reached: max_connections = 3" in server.log()
