"""Real aiotusd processes with their state in PostgreSQL: the protocol end to end, hook
delivery from the outbox, the ``aiotusd hooks`` command, and two servers on one database.
"""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from support.hooks import Received, Receiver
from support.http import PATCH_HEADERS, TUS, upload_id
from support.postgres import Cluster
from support.processes import ServerProcess, run_cli
from support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

EVENTS = "post-create,post-receive,post-finish,post-terminate"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook receiver that takes a little time over each event, as real ones do: the
    deliveries of several servers overlap."""

    async def slowly(received: Received) -> web.Response:
        await asyncio.sleep(0.005)
        return web.Response()

    receiver = Receiver()
    receiver.respond = slowly
    await receiver.start()
    yield receiver
    await receiver.stop()


def on_postgres(
    server_process: Callable[..., ServerProcess], url: str, *args: str
) -> ServerProcess:
    return server_process("--database", url, "--expiry-interval", "3600", *args)


async def post(
    session: aiohttp.ClientSession, server: ServerProcess, body: bytes = b"", **headers: str
) -> str:
    """Create an upload (with ``body`` as its first bytes); its URL."""
    headers = {**PATCH_HEADERS, **headers}
    async with session.post(server.url, data=body, headers=headers) as response:
        assert response.status == 201, await response.text()
        return response.headers["Location"]


async def patch(session: aiohttp.ClientSession, url: str, offset: int, body: bytes) -> int:
    """Append ``body`` at ``offset``; the new offset."""
    headers = {**PATCH_HEADERS, "Upload-Offset": str(offset)}
    async with session.patch(url, data=body, headers=headers) as response:
        assert response.status == 204, await response.text()
        return int(response.headers["Upload-Offset"])


async def head(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str]]:
    async with session.head(url, headers=TUS) as response:
        return response.status, dict(response.headers)


async def get(session: aiohttp.ClientSession, url: str) -> bytes:
    async with session.get(url) as response:
        assert response.status == 200
        return await response.read()


def names_by_upload(receiver: Receiver) -> dict[str, list[tuple[str, int]]]:
    """The events each upload's receiver got, in the order they came: (name, offset)."""
    got: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
    for received in receiver.received:
        upload = received.json["upload"]
        got[upload["id"]].append((received.name, upload["offset"]))
    return got


async def test_uploads_on_postgresql_are_created_resumed_concatenated_and_terminated(
    server_process: Callable[..., ServerProcess], postgres_url: str, receiver: Receiver
) -> None:
    server = on_postgres(
        server_process, postgres_url, "--hooks-url", receiver.url, "--hooks-events", EVENTS,
        "--hooks-progress-interval", "0",
    )
    async with aiohttp.ClientSession() as session:
        url = await post(session, server, b"hello ", **{"Upload-Length": "11"})
        assert (await head(session, url))[1]["Upload-Offset"] == "6"
        # The offset is in the database, not in the process. In a thread: the receiver
        # runs on this loop, and the stopping server waits for its deliveries.
        await asyncio.to_thread(server.restart)
        status, headers = await head(session, url)
        assert (status, headers["Upload-Offset"], headers["Upload-Length"]) == (200, "6", "11")
        assert await patch(session, url, 6, b"world") == 11
        assert await get(session, url) == b"hello world"

        partials = [
            await post(session, server, part, **{"Upload-Length": str(len(part)),
                                                 "Upload-Concat": "partial"})
            for part in (b"abc", b"defg")
        ]
        final = await post(session, server, **{"Upload-Concat": "final;" + " ".join(partials)})
        assert (await head(session, final))[1]["Upload-Offset"] == "7"
        assert await get(session, final) == b"abcdefg"

        async with session.delete(url, headers=TUS) as response:
            assert response.status == 204
        assert (await head(session, url))[0] == 410

    def all_delivered() -> bool:
        return ("post-terminate", 11) in names_by_upload(receiver).get(upload_id(url), [])

    await receiver.wait(all_delivered, "the post-terminate event")
    assert names_by_upload(receiver)[upload_id(url)] == [
        ("post-create", 0), ("post-receive", 6), ("post-receive", 11), ("post-finish", 11),
        ("post-terminate", 11),
    ]
    assert len({r.id for r in receiver.received}) == len(receiver.received)
    listed = await asyncio.to_thread(
        run_cli, server.data_dir, "hooks", "list", "--database", postgres_url
    )
    assert (listed.returncode, listed.stdout, listed.stderr) == (0, "no hook events waiting\n", "")


async def test_two_servers_on_one_database_share_uploads_and_send_each_event_once_in_order(
    server_process: Callable[..., ServerProcess], postgres_url: str, receiver: Receiver,
    tmp_path: Path,
) -> None:
    hooks = ("--hooks-url", receiver.url, "--hooks-events", EVENTS,
             "--hooks-progress-interval", "0", "--hooks-concurrency", "2")
    shared = str(tmp_path / "shared")  # the uploads' files, which both servers serve
    servers = [
        on_postgres(server_process, postgres_url, *hooks, "--data-dir", shared) for _ in range(2)
    ]
    async with aiohttp.ClientSession() as session:

        async def upload(number: int) -> str:
            # Made on one server, finished on the other: both read the one database.
            url = await post(session, servers[number % 2], b"ab", **{"Upload-Length": "6"})
            other = url.replace(str(servers[number % 2].port), str(servers[(number + 1) % 2].port))
            assert await patch(session, other, 2, b"cd") == 4
            assert await patch(session, url, 4, b"ef") == 6
            return upload_id(url)

        ids = await asyncio.gather(*(upload(n) for n in range(12)))

    expected = [("post-create", 0), ("post-receive", 2), ("post-receive", 4),
                ("post-receive", 6), ("post-finish", 6)]
    await receiver.wait(
        lambda: len(receiver.received) >= len(ids) * len(expected), "every event", 30
    )
    assert len({r.id for r in receiver.received}) == len(receiver.received) == 60
    got = names_by_upload(receiver)
    assert {upload: got[upload] for upload in ids} == {upload: expected for upload in ids}


def test_filesystem_storage_on_postgresql_says_the_data_dir_must_be_shared(
    server_process: Callable[..., ServerProcess], postgres_url: str
) -> None:
    """Several servers on one database with filesystem storage must share one directory;
    nothing can check that, so the start-up says it, naming the directory."""
    server = on_postgres(server_process, postgres_url)
    line = wait_for(
        lambda: next((line for line in server.log().splitlines() if "data_dir" in line), None),
        10, "the start-up line about the data directory",
    )
    assert "must use this one data_dir" in line and str(server.data_dir) in line


def logging_statements(cluster: Cluster, url: str) -> None:
    """Have the database of ``url`` log every statement of the connections made from now
    on (see :func:`statements_naming`)."""
    cluster.sql(f"ALTER DATABASE {url.rsplit('/', 1)[1]} SET log_statement = 'all'")


def statements_naming(cluster: Cluster, since: int, upload: str) -> list[str]:
    """The statements logged past ``since`` whose parameters name ``upload``, in order."""
    with open(cluster.directory / "server.log", encoding="utf-8", errors="replace") as log:
        log.seek(since)
        lines = log.read().splitlines()
    last: dict[str, str] = {}
    naming = []
    for line in lines:
        if found := re.search(r"\[(\d+)\] LOG:  execute [^:]*: (.*)", line):
            last[found[1]] = found[2]
        elif (found := re.search(r"\[(\d+)\] DETAIL:  parameters: ", line)) and (
            f"'{upload}'" in line
        ):
            naming.append(last.pop(found[1]))
    return naming


async def test_a_patch_reads_its_upload_with_the_take_of_its_lease(
    server_process: Callable[..., ServerProcess], postgres_url: str, postgres_cluster: Cluster
) -> None:
    """A PATCH that completes its upload makes two statements: the take of the lease,
    which reads the upload too (no lookup of its own), and the save under the lease,
    which releases it too (no release of its own)."""
    logging_statements(postgres_cluster, postgres_url)
    server = on_postgres(server_process, postgres_url)
    async with aiohttp.ClientSession() as session:
        url = await post(session, server, **{"Upload-Length": "5"})
        since = (postgres_cluster.directory / "server.log").stat().st_size
        assert await patch(session, url, 0, b"hello") == 5
    statements = statements_naming(postgres_cluster, since, upload_id(url))
    assert [statement.split()[:3] for statement in statements] == [
        ["WITH", "taken", "AS"], ["WITH", "saved", "AS"],
    ], statements


async def test_a_creation_with_upload_is_born_leased(
    server_process: Callable[..., ServerProcess], postgres_url: str, postgres_cluster: Cluster
) -> None:
    """A creation-with-upload that completes its upload makes two statements: the
    upload's insert, which takes its lease too (no take of its own), and the save under
    the lease, which releases it too."""
    logging_statements(postgres_cluster, postgres_url)
    server = on_postgres(server_process, postgres_url)
    async with aiohttp.ClientSession() as session:
        since = (postgres_cluster.directory / "server.log").stat().st_size
        url = await post(session, server, b"hello", **{"Upload-Length": "5"})
        assert (await head(session, url))[1]["Upload-Offset"] == "5"
    statements = statements_naming(postgres_cluster, since, upload_id(url))
    assert [statement.split()[:3] for statement in statements][:2] == [
        ["WITH", "created", "AS"], ["WITH", "saved", "AS"],
    ], statements
    assert len(statements) == 3 and statements[2].startswith("SELECT"), statements  # HEAD
