"""The IETF draft's completeness and lengths, to the letter: an upload is complete when a
request with ``Upload-Complete: ?1`` was processed, never because its bytes reached its
length ("The offset could match the length, but the upload can still be incomplete"), and
a request that takes an upload past its length invalidates it."""

from __future__ import annotations

import json

import pytest
from aiohttp.test_utils import TestClient
from support.draft import chunked, draft_headers, exchange, path_of
from support.hooks import Receiver
from support.http import ClientFactory
from test_ietf_draft import PROBLEM, VERSIONS, create, download, patch_headers, port_of

ALL_VERSIONS = [*VERSIONS, 3]


def completeness(version: int, done: bool) -> dict[str, str]:
    """``Upload-Complete`` (``Upload-Incomplete``, inverted, in version 3)."""
    if version == 3:
        return {"Upload-Incomplete": "?0" if done else "?1"}
    return {"Upload-Complete": "?1" if done else "?0"}


def append(version: int, offset: int, done: bool, **more: str) -> dict[str, str]:
    headers = patch_headers(version, offset, done, **more)
    if version == 3:
        del headers["Upload-Complete"]
        headers.update(completeness(3, done))
    return headers


def says_complete(headers: dict[str, str], version: int, done: bool) -> None:
    [(name, value)] = completeness(version, done).items()
    assert headers[name.lower()] == value


async def state(client: TestClient, version: int, path: str) -> dict[str, str]:
    answer = await exchange(port_of(client), "HEAD", path, draft_headers(version))
    assert answer.final.status == 204
    return answer.final.headers


@pytest.mark.parametrize("version", ALL_VERSIONS)
async def test_an_append_that_reaches_the_length_without_completing_leaves_it_incomplete(
    make_client: ClientFactory, receiver: Receiver, version: int
) -> None:
    client = await make_client(hooks_url=receiver.url, hooks_events="post-finish")
    port = port_of(client)
    path = await create_incomplete(client, version, Upload_Length="6")
    filled = await exchange(port, "PATCH", path, append(version, 0, False), b"abcdef")
    assert filled.final.status == 204
    says_complete(filled.final.headers, version, False)
    now = await state(client, version, path)
    assert now["upload-offset"] == "6"
    says_complete(now, version, False)
    assert (await client.get(path)).status == 409  # not finished: nothing to download
    assert receiver.received == []
    done = await exchange(port, "PATCH", path, append(version, 6, True))
    assert done.final.status == 204
    says_complete(done.final.headers, version, True)
    assert await download(client, path) == b"abcdef"
    await receiver.wait_for_names("post-finish")


@pytest.mark.parametrize("version", ALL_VERSIONS)
async def test_a_creation_that_does_not_complete_stays_incomplete_whatever_its_length(
    client: TestClient, version: int
) -> None:
    port = port_of(client)
    for length, body in [(5, b"whole"), (0, b"")]:
        path = await create_incomplete(client, version, body, Upload_Length=str(length))
        now = await state(client, version, path)
        assert now["upload-offset"] == str(length)
        says_complete(now, version, False)
        done = await exchange(port, "PATCH", path, append(version, length, True))
        assert done.final.status == 204
        says_complete(done.final.headers, version, True)
        assert await download(client, path) == body


async def create_incomplete(
    client: TestClient, version: int, body: bytes = b"", **headers: str
) -> str:
    if version != 3:
        return await create(client, version, body, **headers)
    answer = await exchange(port_of(client), "POST", "/files/", draft_headers(
        3, **completeness(3, False), **{k.replace("_", "-"): v for k, v in headers.items()}),
        body)
    assert answer.final.status == 201
    return path_of(answer.final.headers["location"])


@pytest.mark.parametrize("version", [8, 6])
async def test_an_append_past_the_length_invalidates_the_upload(
    client: TestClient, version: int
) -> None:
    """The draft: the server "MUST prevent the offset from exceeding the upload length by
    rejecting the request once the offset exceeds the length, marking the upload resource
    invalid and rejecting any further interaction with it"."""
    port = port_of(client)
    for framing in [{}, {"Transfer-Encoding": "chunked"}]:
        path = await create(client, version, b"abc", Upload_Length="5")
        body = chunked(b"de", b"fgh") if framing else b"defgh"
        past = await exchange(port, "PATCH", path, patch_headers(version, 3, False, **framing),
                              body)
        assert past.final.status == 400
        assert json.loads(past.final.body)["type"] == PROBLEM + "inconsistent-upload-length"
        gone = await exchange(port, "HEAD", path, draft_headers(version))
        assert gone.final.status == 410


@pytest.mark.parametrize("version", [8, 6])
async def test_a_creation_whose_content_is_longer_than_its_length_is_inconsistent(
    client: TestClient, version: int
) -> None:
    port = port_of(client)
    known = await exchange(port, "POST", "/files/", draft_headers(
        version, Upload_Complete="?0", Upload_Length="3"), b"abcde")
    assert known.interim == []  # refused before any upload exists
    assert known.final.status == 400
    assert json.loads(known.final.body)["type"] == PROBLEM + "inconsistent-upload-length"
    streamed = await exchange(port, "POST", "/files/", draft_headers(
        version, Upload_Complete="?0", Upload_Length="3", Transfer_Encoding="chunked"),
        chunked(b"ab", b"cde"))
    assert streamed.final.status == 400
    assert json.loads(streamed.final.body)["type"] == PROBLEM + "inconsistent-upload-length"
    [interim] = streamed.interim
    gone = await exchange(port, "HEAD", path_of(interim.headers["location"]),
                          draft_headers(version))
    assert gone.final.status == 410


@pytest.mark.parametrize("version", [8, 6])
async def test_a_length_below_the_offset_is_inconsistent(client: TestClient, version: int) -> None:
    path = await create(client, version, b"abcd")
    answer = await exchange(port_of(client), "PATCH", path, patch_headers(
        version, 4, False, Upload_Length="2"))
    assert answer.final.status == 400
    assert json.loads(answer.final.body)["type"] == PROBLEM + "inconsistent-upload-length"
    assert (await state(client, version, path))["upload-offset"] == "4"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_an_upload_may_be_created_by_put_or_patch_too(
    client: TestClient, version: int, method: str
) -> None:
    """The draft's "Upload Creation": "all request methods that allow content are possible,
    such as POST, PUT, and PATCH"."""
    port = port_of(client)
    whole = await exchange(port, method, "/files/", draft_headers(
        version, Upload_Complete="?1", Content_Type="text/plain"), b"put whole")
    assert [r.status for r in whole.interim] == [104]
    assert whole.final.status == 201
    assert whole.final.headers["upload-complete"] == "?1"
    assert await download(client, path_of(whole.final.headers["location"])) == b"put whole"
    first = await exchange(port, method, "/files/", draft_headers(
        version, Upload_Complete="?0"), b"first ")
    assert first.final.status == 201
    path = path_of(first.final.headers["location"])
    rest = await exchange(port, "PATCH", path, patch_headers(version, 6, True), b"then rest")
    assert rest.final.headers["upload-complete"] == "?1"
    assert await download(client, path) == b"first then rest"


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_tus_creates_by_post_only(client: TestClient, method: str) -> None:
    answer = await client.request(method, "/files/", headers={
        "Tus-Resumable": "1.0.0", "Upload-Length": "3"})
    assert answer.status == 405
    assert answer.headers["Allow"] == "POST, OPTIONS"
