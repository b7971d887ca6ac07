"""The IETF draft's progress ``104 (Upload Resumption Supported)`` interim responses:
"While the request content is being processed, the server SHOULD send interim responses
with a 104 ... and the Upload-Offset header field set to the current offset" (appends;
creations MAY). One after each periodic commit, whose offset is durable, three at most;
on a raw socket, since Python's HTTP clients drop them."""

from __future__ import annotations

import asyncio
import os

import pytest
from aiohttp.test_utils import TestClient
from support.draft import draft_headers, path_of, responses
from support.http import ClientFactory, upload_id
from support.rawhttp import HOST, Response, close_writer, read_response, request_head
from test_ietf_draft import create, download, patch_headers, port_of

from server.context import CONTEXT

PIECE = 64 * 1024
"""``commit_bytes`` of these tests' servers: each piece sent makes a commit due."""


async def progress_client(make_client: ClientFactory) -> TestClient:
    return await make_client(commit_bytes=PIECE, commit_seconds=600)


async def send_in_pieces(
    port: int, method: str, path: str, headers: dict[str, str], data: bytes,
    paced: int, first: list[int] | None = None,
) -> tuple[list[Response], list[Response]]:
    """Send ``data`` a piece at a time: after each of the first ``paced`` pieces, wait for
    the 104 that its commit sends; then the rest at once. The interim responses read while
    paced, and those that came with the final response (then the final one, last)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(request_head(method, path, port, {
            **headers, "Content-Length": str(len(data))}))
        paced_answers = [await read_response(reader, method) for _ in first or []]
        for n in range(paced):
            writer.write(data[n * PIECE:(n + 1) * PIECE])
            await writer.drain()
            paced_answers.append(await read_response(reader, method))
        writer.write(data[paced * PIECE:])
        await writer.drain()
        rest = await responses(reader, method)
    finally:
        await close_writer(writer)
    return paced_answers, [*rest.interim, rest.final]


@pytest.mark.parametrize("version", [8, 6, 5])
async def test_an_append_tells_its_progress_in_104s_after_its_commits(
    make_client: ClientFactory, version: int
) -> None:
    client = await progress_client(make_client)
    data = os.urandom(6 * PIECE)
    path = await create(client, version, Upload_Length=str(len(data)))
    headers = patch_headers(version, 0, True, Expect="100-continue")
    paced, rest = await send_in_pieces(port_of(client), "PATCH", path, headers, data, 3,
                                       first=[100])
    continued, *progress = paced
    assert continued.status == 100  # the 104s never stand in for it
    offsets = [int(r.headers["upload-offset"]) for r in progress]
    assert [r.status for r in progress] == [104, 104, 104]
    assert all(n * PIECE <= offset <= (n + 1) * PIECE for n, offset in enumerate(offsets, 1))
    assert all("location" not in r.headers for r in progress)  # the draft: "MUST NOT"
    assert {r.headers["upload-draft-interop-version"] for r in progress} == {str(version)}
    # Three at most: more commits follow, but no more 104s.
    [final] = rest
    assert final.status == 204
    assert final.headers["upload-complete"] == "?1"
    assert await download(client, path) == data


async def test_a_creation_tells_its_progress_with_its_location(
    make_client: ClientFactory,
) -> None:
    client = await progress_client(make_client)
    data = os.urandom(3 * PIECE + 100)
    headers = draft_headers(8, Upload_Complete="?1")
    paced, rest = await send_in_pieces(port_of(client), "POST", "/files/", headers, data, 2,
                                       first=[104])
    created, *progress = paced
    location = created.headers["location"]
    assert "upload-offset" not in created.headers
    assert [r.status for r in progress] == [104, 104]
    assert [r.headers["location"] for r in progress] == [location, location]
    assert all(int(r.headers["upload-offset"]) >= n * PIECE for n, r in enumerate(progress, 1))
    assert rest[-1].status == 201
    assert rest[-1].headers["location"] == location
    assert await download(client, path_of(location)) == data


async def test_interop_version_3_gets_no_progress(make_client: ClientFactory) -> None:
    """Progress 104s came with draft -03 (interop version 5)."""
    client = await progress_client(make_client)
    port = port_of(client)
    data = os.urandom(3 * PIECE)
    path = await create_v3(client, len(data))
    headers = draft_headers(3, Upload_Offset="0", Upload_Incomplete="?0",
                            Content_Length=str(len(data)))
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(request_head("PATCH", path, port, headers) + data[:2 * PIECE])
        await writer.drain()
        # As recorded (a HEAD would take the upload over from the PATCH).
        store = client.app[CONTEXT].store
        deadline = asyncio.get_running_loop().time() + 10
        while getattr(await store.get(upload_id(path)), "offset", 0) < PIECE:
            assert asyncio.get_running_loop().time() < deadline, "no commit came"
            await asyncio.sleep(0.02)
        writer.write(data[2 * PIECE:])
        await writer.drain()
        answer = await responses(reader, "PATCH")
    finally:
        await close_writer(writer)
    assert answer.interim == []
    assert answer.final.status == 204
    assert await download(client, path) == data


async def create_v3(client: TestClient, length: int) -> str:
    port = port_of(client)
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(request_head("POST", "/files/", port, draft_headers(
            3, Upload_Incomplete="?1", Upload_Length=str(length), Content_Length="0")))
        answer = await responses(reader, "POST")
    finally:
        await close_writer(writer)
    assert answer.final.status == 201
    return path_of(answer.final.headers["location"])


async def test_the_104s_can_be_turned_off(make_client: ClientFactory) -> None:
    """``ietf_draft_interim = false``, behind a proxy that takes a 104 for the final
    response (nginx): neither the creation's 104 nor progress ones."""
    client = await make_client(commit_bytes=PIECE, commit_seconds=600, ietf_draft_interim=False)
    data = os.urandom(3 * PIECE)
    headers = draft_headers(8, Upload_Complete="?1", Expect="100-continue")
    _, answers = await send_in_pieces(port_of(client), "POST", "/files/", headers, data, 0,
                                      first=[100])
    [final] = answers
    assert final.status == 201
    assert await download(client, path_of(final.headers["location"])) == data
