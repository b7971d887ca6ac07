"""Three real servers on one PostgreSQL database and one data directory, as behind a load
balancer that sends each request anywhere: clients that spread their PATCHes over all
three, at once, and one server killed in the middle of a PATCH.

What must hold: every upload ends with exactly its client's bytes and offsets; a request
to a killed server is resumed through another within ``lock_lease`` + ``lock_timeout``;
and no server answers a 5xx (none of the documented ones applies: the database and the
disk stay up).
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.processes import ServerProcess
from support.rawhttp import (
    KIB,
    MIB,
    OpenPatch,
    assert_download,
    create,
    offset_of,
    patch,
    request,
)
from support.storage import data_file, file_size, payload
from support.waiting import poll

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

LEASE = 2.0
LOCK_TIMEOUT = 3.0
SERVERS = 3


@pytest.fixture
def servers(
    server_process: Callable[..., ServerProcess], postgres_url: str, tmp_path: Path
) -> list[ServerProcess]:
    """Three servers on one database and one data directory."""
    shared = tmp_path / "shared"
    started = []
    for _ in range(SERVERS):
        server = server_process(
            "--database", postgres_url, "--data-dir", str(shared), "--expiry-interval", "3600",
            "--lock-lease", str(LEASE), "--lock-timeout", str(LOCK_TIMEOUT),
        )
        server.data_dir = shared  # where data_file() looks
        started.append(server)
    return started


def statuses(server: ServerProcess) -> list[int]:
    """The status of every request in the server's access log."""
    return [int(status) for status in re.findall(r"[A-Z]+ /\S* (\d{3}) upload=", server.log())]


def assert_no_5xx(servers: list[ServerProcess]) -> None:
    for server in servers:
        answered = statuses(server)
        assert answered, f"no access-log line in {server.log_path}"
        assert all(status < 500 for status in answered), server.log()


async def test_one_client_round_robin_over_three_servers_stores_its_bytes_whole(
    servers: list[ServerProcess],
) -> None:
    """Each PATCH goes to the next server; every server then reports the same offset."""
    data = payload(2 * MIB + 4321, seed=950)
    path = await create(servers[0].port, len(data))
    offset, piece = 0, 150 * KIB + 7
    for turn in range(len(data) // piece + 1):
        response = await patch(servers[turn % SERVERS].port, path, offset,
                               data[offset : offset + piece])
        assert response.status == 204, response
        assert int(response.headers["upload-offset"]) == min(offset + piece, len(data))
        offset = int(response.headers["upload-offset"])
        assert [await offset_of(server.port, path) for server in servers] == [offset] * SERVERS
    assert offset == len(data)
    for server in servers:
        await assert_download(server.port, path, data)
    assert data_file(servers[0], path).read_bytes() == data
    assert_no_5xx(servers)


async def test_concurrent_clients_spread_over_three_servers_each_store_their_own_bytes(
    servers: list[ServerProcess],
) -> None:
    async def upload(number: int) -> None:
        data = payload(MIB + 1000 * number, seed=960 + number)
        path = await create(servers[number % SERVERS].port, len(data))
        offset, piece = 0, 96 * KIB + 13 * number
        for turn in range(len(data) // piece + 1):
            server = servers[(number + turn * (1 + number % 2)) % SERVERS]
            response = await patch(server.port, path, offset, data[offset : offset + piece])
            assert response.status == 204, response
            offset = int(response.headers["upload-offset"])
        assert offset == len(data)
        await assert_download(servers[(number + 1) % SERVERS].port, path, data)
        assert data_file(servers[0], path).read_bytes() == data

    await asyncio.wait_for(asyncio.gather(*(upload(number) for number in range(6))), 120)
    assert_no_5xx(servers)


async def offset_when_free(alive: list[ServerProcess], path: str, deadline: float) -> int:
    """The upload's offset from the first live server that answers HEAD with it (not
    423: its lease still held by a killed server), before ``deadline`` (monotonic)."""
    for turn in range(100):
        assert time.monotonic() < deadline, f"{path} still locked"
        response = await request(alive[turn % len(alive)].port, "HEAD", path)
        if response.status == 200:
            return int(response.headers["upload-offset"])
        assert response.status == 423, response
    raise AssertionError(f"{path}: no HEAD answered 200")


async def spread_upload(
    servers: list[ServerProcess], number: int, progress: asyncio.Event
) -> None:
    """Upload in pieces over the servers that live; after a request that broke off (its
    server killed) or met the lock of one, resume from the offset HEAD reports."""
    data = payload(MIB + 777 * number, seed=970 + number)
    path = await create(servers[number % SERVERS].port, len(data))
    offset, piece = 0, 64 * KIB + 11 * number
    deadline = time.monotonic() + 60
    for turn in range(1000):
        if offset == len(data):
            break
        alive = [server for server in servers if server.process is not None]
        server = alive[(number + turn) % len(alive)]
        try:
            response = await patch(server.port, path, offset, data[offset : offset + piece])
        except (ConnectionError, asyncio.IncompleteReadError):
            response = None
        if response is not None and response.status == 204:
            offset = int(response.headers["upload-offset"])
            progress.set()
            continue
        assert response is None or response.status == 423, response
        alive = [server for server in servers if server.process is not None]
        offset = await offset_when_free(alive, path, deadline)
    assert offset == len(data)
    await assert_download(servers[-1].port, path, data)
    assert data_file(servers[-1], path).read_bytes() == data


async def test_a_server_killed_mid_patch_leaves_its_uploads_to_the_other_two(
    servers: list[ServerProcess],
) -> None:
    """A PATCH streams to the first server, which is killed mid-body while other clients
    upload through all three: the upload is finished through another server within
    lock_lease + lock_timeout, from the offset recorded; every upload ends whole."""
    killed, *others = servers
    data = payload(4 * MIB, seed=980)
    path = await create(killed.port, len(data))
    stale = await OpenPatch.start(killed.port, path, 0, len(data))
    sent = 2 * MIB + 555
    await stale.send(data[:sent])
    await poll(lambda: file_size(data_file(killed, path)) == sent, "the streamed bytes on disk")
    progress = [asyncio.Event() for _ in range(4)]
    clients = [asyncio.create_task(spread_upload(servers, number, progress[number]))
               for number in range(4)]
    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in progress)), 30)

    assert killed.stop(signal.SIGKILL) == -signal.SIGKILL
    at = time.monotonic()
    await stale.abort()
    offset = await offset_when_free(others, path, at + LEASE + LOCK_TIMEOUT)
    assert time.monotonic() - at < LEASE + LOCK_TIMEOUT
    assert offset <= sent
    response = await patch(others[1].port, path, offset, data[offset:])
    assert response.status == 204, response
    assert response.headers["upload-offset"] == str(len(data))
    await asyncio.wait_for(asyncio.gather(*clients), 90)
    await assert_download(others[0].port, path, data)
    assert data_file(others[0], path).read_bytes() == data
    assert_no_5xx(servers)
