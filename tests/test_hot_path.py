"""What a small upload's requests do in Python, counted: work that is the same for every
request of a client or an upload is done once, not again on each request.

Server CPU per small upload is mostly Python function calls, so these tests profile
real requests against the in-process app (``cProfile``, on the thread the app runs on)
and count the calls made while they were answered: deterministic where a timing is not.
Each request is sent once first, so that what is rightly done once is done by then.
"""

from __future__ import annotations

import cProfile
import pstats
from collections import Counter
from collections.abc import Awaitable
from pathlib import Path

from aiohttp.test_utils import TestClient
from support.http import PATCH_HEADERS, create_upload

BODY = b"x" * 1024


async def calls_while(request: Awaitable[object]) -> Counter[tuple[str, str]]:
    """The Python functions called while ``request`` was awaited, as (file name, function
    name), with how many times each was called."""
    profile = cProfile.Profile()
    profile.enable()
    try:
        await request
    finally:
        profile.disable()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]  # not in the stubs
    return Counter({(Path(file).name, name): calls
                    for (file, _, name), (_, calls, *_) in stats.items()})


def calls_in(calls: Counter[tuple[str, str]], file_name: str) -> int:
    return sum(count for (file, _), count in calls.items() if file == file_name)


async def post_and_patch(client: TestClient) -> None:
    path = await create_upload(client, len(BODY))
    response = await client.patch(path, data=BODY, headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert response.status == 204, await response.text()


async def test_a_client_address_is_parsed_once_not_on_every_body(client: TestClient) -> None:
    await post_and_patch(client)
    calls = await calls_while(post_and_patch(client))
    assert calls[("limits.py", "_take_client_slot")] == 1  # the per-client share holds
    assert calls_in(calls, "ipaddress.py") == 0, calls


async def test_a_host_seen_before_is_not_validated_again(client: TestClient) -> None:
    await post_and_patch(client)
    calls = await calls_while(post_and_patch(client))
    assert calls[("__init__.py", "_check_host")] == 2  # each request's Host is checked
    assert calls[("protocol.py", "is_host")] == 0, calls
