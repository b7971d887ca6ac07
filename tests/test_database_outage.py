"""A database that goes away while the server runs: requests get ``503`` with
``Retry-After`` (never a ``500`` with a traceback), ``/readyz`` says not ready, the process
stays up, and once the database is back every request succeeds again, with every byte that
was acknowledged before still there.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator

import aiohttp
import pytest
from support.http import (
    PATCH_HEADERS,
    TUS,
    ClientFactory,
    assert_one_line_error,
    create_upload,
    head_offset,
)
from support.postgres import Cluster, throwaway_cluster
from support.processes import ServerProcess
from support.waiting import poll

from server.config import Settings

UNAVAILABLE = "the database is unavailable; try again later\n"


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    """A PostgreSQL cluster of this test's own, which it may stop and start again without
    disturbing the session's."""
    with throwaway_cluster() as cluster:
        yield cluster


async def answer(
    session: aiohttp.ClientSession, method: str, url: str, body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], str]:
    async with session.request(method, url, data=body or None, headers=headers) as response:
        return response.status, dict(response.headers), await response.text()


def assert_unavailable(
    status: int, headers: dict[str, str], text: str, head: bool = False
) -> None:
    assert (status, text) == (503, "" if head else UNAVAILABLE)
    assert headers["Retry-After"] == "5"


@pytest.mark.e2e
@pytest.mark.postgres
async def test_postgresql_stopped_under_a_running_server_gives_503_then_serves_on(
    server_process: Callable[..., ServerProcess], own_cluster: Cluster
) -> None:
    own_cluster.sql("CREATE DATABASE uploads")
    server = server_process(
        "--database", own_cluster.url("uploads"), "--database-timeout", "2",
        "--expiry-interval", "3600", "--metrics", "true",
    )
    root = f"http://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession() as session:
        status, headers, _ = await answer(
            session, "POST", server.url, b"hello", {**PATCH_HEADERS, "Upload-Length": "10"}
        )
        assert (status, headers["Upload-Offset"]) == (201, "5")
        url = headers["Location"]

        await asyncio.to_thread(own_cluster.stop, "fast")
        try:
            assert_unavailable(*await answer(session, "HEAD", url, headers=TUS), head=True)
            assert_unavailable(*await answer(
                session, "PATCH", url, b"world", {**PATCH_HEADERS, "Upload-Offset": "5"}
            ))
            assert_unavailable(*await answer(
                session, "POST", server.url, headers={**TUS, "Upload-Length": "3"}
            ))
            status, _, text = await answer(session, "GET", f"{root}/readyz")
            assert status == 503 and text.startswith("not ready: database: "), text
            assert (await answer(session, "GET", f"{root}/healthz"))[0] == 200
            status, _, text = await answer(session, "GET", f"{root}/metrics")
            assert status == 200 and "aiotusd_uploads_created_total 1.0" in text, text
            assert server.process is not None and server.process.poll() is None
        finally:
            await asyncio.to_thread(own_cluster.start)

        async def head_answers() -> tuple[int, dict[str, str], str] | None:
            got = await answer(session, "HEAD", url, headers=TUS)
            return got if got[0] == 200 else None

        status, headers, _ = await poll(head_answers, "HEAD to succeed again", timeout=20)
        assert headers["Upload-Offset"] == "5"  # what was acknowledged before
        status, headers, _ = await answer(
            session, "PATCH", url, b"world", {**PATCH_HEADERS, "Upload-Offset": "5"}
        )
        assert (status, headers["Upload-Offset"]) == (204, "10")
        async with session.get(url) as response:
            assert await response.read() == b"helloworld"
        status, _, text = await answer(session, "GET", f"{root}/readyz")
        assert (status, text) == (200, "ready\n")
    log = server.log()
    assert "Traceback" not in log, log
    assert "(database-unavailable): the database postgresql://postgres@127.0.0.1:" in log, log


@pytest.mark.slow
async def test_an_sqlite_database_locked_past_the_busy_timeout_gives_503_then_serves_on(
    make_client: ClientFactory, settings: Settings
) -> None:
    client = await make_client()
    path = await create_upload(client, 10)
    response = await client.patch(path, data=b"hello", headers={**PATCH_HEADERS,
                                                                "Upload-Offset": "0"})
    assert response.status == 204
    # Another program takes the database's write lock and keeps it past busy_timeout.
    other = sqlite3.connect(settings.storage.database_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        response = await client.patch(path, data=b"world", headers={**PATCH_HEADERS,
                                                                    "Upload-Offset": "5"})
        await assert_one_line_error(response, 503)
        assert (await response.text(), response.headers["Retry-After"]) == (UNAVAILABLE, "5")
        assert await head_offset(client, path) == "5"
    finally:
        other.execute("ROLLBACK")
        other.close()
    response = await client.patch(path, data=b"world", headers={**PATCH_HEADERS,
                                                                "Upload-Offset": "5"})
    assert (response.status, response.headers["Upload-Offset"]) == (204, "10")
    assert await (await client.get(path)).read() == b"helloworld"
