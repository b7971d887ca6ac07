"""A final's assembly with two servers on one PostgreSQL database: two apps in this process,
each with its own store, locks and concatenation locks, as two processes would have.

Each process's concatenation locks are its own; what keeps two of them from assembling one
final at once is the assembly's lease in the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from support.http import PATCH_HEADERS, TUS, path_of, upload_id
from support.waiting import poll

from server.app import create_app
from server.config import Settings
from server.context import CONTEXT

pytestmark = pytest.mark.postgres


async def test_a_final_is_assembled_by_one_server_at_a_time(
    aiohttp_client: Callable[..., Awaitable[TestClient]], postgres_url: str, tmp_path: Path
) -> None:
    """One server copies the parts into the final (the last part finished there) while a
    HEAD of the final on the other asks for the assembly too: that one waits for the first
    one's, and finds the final done; it is finished once, with one post-finish event."""
    settings = Settings().with_values(
        data_dir=str(tmp_path / "shared"), database=postgres_url, expiry_interval=3600,
        lock_timeout=30,
    )
    finished: list[str] = []

    async def hooks(event: dict[str, Any]) -> None:
        if event["type"] == "post-finish":
            finished.append(event["upload"]["id"])

    here, there = [await aiohttp_client(create_app(settings, hooks=hooks)) for _ in range(2)]
    partials = []
    for part in (b"abc", b"defg"):
        response = await here.post("/files/", headers={
            **TUS, "Upload-Length": str(len(part)), "Upload-Concat": "partial"})
        partials.append(path_of(response))
    response = await here.post("/files/", headers={
        **TUS, "Upload-Concat": "final;" + " ".join(partials)})
    final = path_of(response)

    backend = there.app[CONTEXT].backend
    concatenate, copying, go_on = backend.concatenate, asyncio.Event(), asyncio.Event()

    async def slow_concatenate(*args: Any) -> Any:
        copying.set()
        await go_on.wait()
        return await concatenate(*args)

    backend.concatenate = slow_concatenate
    response = await here.patch(partials[0], data=b"abc",
                                headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert response.status == 204
    last = asyncio.create_task(there.patch(
        partials[1], data=b"defg", headers={**PATCH_HEADERS, "Upload-Offset": "0"}))
    await asyncio.wait_for(copying.wait(), 10)
    head = asyncio.create_task(here.head(final, headers=TUS))
    await asyncio.wait([head], timeout=1)
    assert not head.done(), "the HEAD assembled the final beside the other server"
    go_on.set()
    assert (await head).headers["Upload-Offset"] == "7"
    assert (await last).status == 204
    assert await (await here.get(final)).read() == b"abcdefg"

    store = here.app[CONTEXT].store
    await poll(lambda: len(finished) >= 3, "a post-finish of each upload")

    async def no_event_waits() -> bool:
        return await store.count_events() == (0, 0)

    await poll(no_event_waits, "every event to go out")
    assert sorted(finished) == sorted(upload_id(path) for path in (*partials, final))
