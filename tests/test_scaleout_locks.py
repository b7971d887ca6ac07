"""Upload locks across real server processes: two aiotusd on one PostgreSQL database and one
data directory, a client that goes from one to the other, stalls, races, and a holder that
is killed or paused.

What must hold whatever happens: the bytes stored are one client's, in order, and the
offset recorded never covers a byte that a stale request wrote after another took over.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    Response,
    assert_download,
    create,
    head,
    offset_of,
    patch,
    patch_log,
    request,
)
from support.storage import data_file, file_size, payload
from support.waiting import poll

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.also_workers]

LEASE = 2.0
LOCK_TIMEOUT = 3.0


def start_two(
    server_process: Callable[..., ServerProcess], postgres_url: str, tmp_path: Path, *args: str
) -> tuple[ServerProcess, ServerProcess]:
    """Two servers on one database and one data directory, as behind a load balancer."""
    shared = tmp_path / "shared"
    servers = []
    for _ in range(2):
        server = server_process(
            "--database", postgres_url, "--data-dir", str(shared), "--expiry-interval", "3600",
            "--lock-lease", str(LEASE), "--lock-timeout", str(LOCK_TIMEOUT), *args,
        )
        server.data_dir = shared  # where data_file() looks
        servers.append(server)
    return servers[0], servers[1]


@pytest.fixture
def two_servers(
    server_process: Callable[..., ServerProcess], postgres_url: str, tmp_path: Path
) -> tuple[ServerProcess, ServerProcess]:
    return start_two(server_process, postgres_url, tmp_path)


async def stall(server: ServerProcess, path: str, data: bytes, sent: int) -> OpenPatch:
    """A PATCH of all of ``data`` to ``server`` that stops after ``sent`` bytes, once they
    are in the file."""
    stale = await OpenPatch.start(server.port, path, 0, len(data))
    await stale.send(data[:sent])
    stored = data_file(server, path)
    await poll(lambda: file_size(stored) == sent, "the stalled body's bytes on disk")
    return stale


async def send_late(stale: OpenPatch, size: int) -> None:
    """The stalled client wakes and sends the rest of its body: bytes that must land
    nowhere (the server may have closed the connection by then)."""
    with contextlib.suppress(ConnectionError, TimeoutError):
        await stale.send(b"\xee" * size)
    await stale.abort()


async def head_when_free(server: ServerProcess, path: str, within: float) -> Response:
    """HEAD until the upload is no longer locked (423), for at most ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        response = await request(server.port, "HEAD", path)
        if response.status != 423:
            assert response.status == 200, response
            return response
        assert time.monotonic() < deadline, f"still locked after {within} s"


async def test_a_client_alternating_between_servers_stores_its_bytes_whole(
    two_servers: tuple[ServerProcess, ServerProcess],
) -> None:
    async def upload(number: int) -> None:
        data = payload(3 * MIB + 4321, seed=900 + number)
        path = await create(two_servers[number % 2].port, len(data))
        offset, piece = 0, 200 * KIB + number
        for turn in range(len(data) // piece + 1):
            server = two_servers[(number + turn) % 2]
            response = await patch(server.port, path, offset, data[offset : offset + piece])
            assert response.status == 204, response
            offset = int(response.headers["upload-offset"])
        assert offset == len(data)
        for server in two_servers:
            await assert_download(server.port, path, data)
        assert data_file(two_servers[0], path).read_bytes() == data

    await asyncio.gather(*(upload(number) for number in range(4)))


@pytest.mark.parametrize("method", ["HEAD", "PATCH"])
async def test_a_stalled_patch_is_taken_over_from_the_other_server(
    two_servers: tuple[ServerProcess, ServerProcess], method: str
) -> None:
    holding, other = two_servers
    data = payload(3 * MIB, seed=910)
    path = await create(holding.port, len(data))
    sent = MIB + 777
    stale = await stall(holding, path, data, sent)

    started = time.monotonic()
    if method == "HEAD":
        response = await head(other.port, path)
        assert response.headers["upload-offset"] == str(sent)
    else:
        response = await patch(other.port, path, sent, data[sent:])
        assert response.status == 204, response
    took = time.monotonic() - started
    assert took < LOCK_TIMEOUT, f"{method} waited {took:.2f} s for the stalled PATCH"

    await send_late(stale, len(data) - sent)
    await poll(lambda: patch_log(holding, path), "the stalled PATCH's access-log line")
    assert patch_log(holding, path)[0][1] == sent  # it recorded what came before the take-over
    if method == "HEAD":
        response = await patch(other.port, path, sent, data[sent:])
        assert response.status == 204, response
    await assert_download(holding.port, path, data)
    assert data_file(other, path).read_bytes() == data


async def test_patches_racing_through_both_servers_never_mix_their_bytes(
    two_servers: tuple[ServerProcess, ServerProcess],
) -> None:
    length = 2 * MIB
    path = await create(two_servers[0].port, length)
    bodies = [payload(length, seed=920 + number) for number in range(4)]

    async def racer(number: int) -> int | None:
        server = two_servers[number % 2]
        try:
            racing = await OpenPatch.start(server.port, path, 0, length)
            try:
                await racing.send(bodies[number], piece=256 * KIB)
                return (await racing.response()).status
            finally:
                await racing.abort()
        except (ConnectionError, asyncio.IncompleteReadError):
            return None  # taken over by a newer request: cut off without an answer

    statuses = await asyncio.wait_for(asyncio.gather(*(racer(n) for n in range(4))), 30)
    assert set(statuses) <= {204, 409, 423, None}, statuses
    assert statuses.count(204) <= 1, statuses
    await poll(
        lambda: sum(len(patch_log(server, path)) for server in two_servers) == len(bodies),
        "an access-log line for every racing PATCH",
    )
    offset = await offset_of(two_servers[1].port, path)
    content = data_file(two_servers[0], path).read_bytes()
    assert len(content) == offset
    received = [got for server in two_servers for _, got in patch_log(server, path)]
    assert sum(received) == offset, (received, offset)
    owners = [number for number, body in enumerate(bodies) if body[:offset] == content]
    assert owners, f"the stored bytes are no single body's ({statuses})"
    if 204 in statuses:
        assert owners == [statuses.index(204)] and offset == length
    rest = await patch(two_servers[1].port, path, offset, bodies[owners[0]][offset:])
    assert rest.status == 204, rest
    await assert_download(two_servers[0].port, path, bodies[owners[0]])


async def test_an_upload_whose_holder_was_killed_resumes_on_the_other_server(
    two_servers: tuple[ServerProcess, ServerProcess],
) -> None:
    holding, other = two_servers
    data = payload(2 * MIB, seed=930)
    path = await create(holding.port, len(data))
    stale = await stall(holding, path, data, MIB)
    holding.stop(signal.SIGKILL)
    killed = time.monotonic()
    await stale.abort()

    response = await head_when_free(other, path, LEASE + LOCK_TIMEOUT)
    assert time.monotonic() - killed < LEASE + LOCK_TIMEOUT
    offset = int(response.headers["upload-offset"])
    response = await patch(other.port, path, offset, data[offset:])
    assert response.status == 204, response
    await assert_download(other.port, path, data)


async def test_a_paused_holder_loses_the_upload_and_after_it_writes_and_records_nothing(
    two_servers: tuple[ServerProcess, ServerProcess],
) -> None:
    holding, other = two_servers
    assert holding.process is not None
    data = payload(3 * MIB, seed=940)
    path = await create(holding.port, len(data))
    sent = MIB + 999
    stale = await stall(holding, path, data, sent)
    holding.send_signal(signal.SIGSTOP)
    try:
        paused = time.monotonic()
        # Its client goes on sending meanwhile: the bytes wait in the paused server's socket.
        stale.writer.write(b"\xee" * (256 * KIB))
        response = await head_when_free(other, path, LEASE + LOCK_TIMEOUT)
        assert time.monotonic() - paused < LEASE + LOCK_TIMEOUT
        offset = int(response.headers["upload-offset"])
        assert offset < sent  # nothing after the last commit counts
        response = await patch(other.port, path, offset, data[offset:])
        assert response.status == 204, response
    finally:
        holding.send_signal(signal.SIGCONT)
    await send_late(stale, 512 * KIB)
    await poll(lambda: patch_log(holding, path), "the paused PATCH's access-log line", 15)
    assert patch_log(holding, path)[0][1] == 0  # it recorded nothing
    assert data_file(other, path).read_bytes() == data
    assert await offset_of(other.port, path) == len(data)
    await assert_download(holding.port, path, data)
