"""The IETF resumable uploads draft, per interop version, on a raw socket (so that the
``104 (Upload Resumption Supported)`` interim responses are seen)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import subprocess
import sys

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from support.draft import PARTIAL, chunked, draft_headers, exchange, path_of, responses
from support.hooks import Receiver
from support.http import TUS, ClientFactory, create_upload
from support.rawhttp import HOST, close_writer, read_response, request_head

VERSIONS = [8, 6, 5]
WITH_LIMITS = {8: "max-age", 6: "expires"}
"""The versions that have ``Upload-Limit``, with the name of its lifetime."""
PROBLEM = "https://iana.org/assignments/http-problem-types#"


def patch_headers(version: int, offset: int, complete: bool, **more: str) -> dict[str, str]:
    headers = draft_headers(version, Upload_Offset=str(offset),
                            Upload_Complete="?1" if complete else "?0", **more)
    if version >= 6:
        headers.setdefault("Content-Type", PARTIAL)
    return headers


async def create(client: TestClient, version: int, body: bytes = b"", **headers: str) -> str:
    """A draft creation that leaves the upload incomplete; returns its path."""
    answer = await exchange(port_of(client), "POST", "/files/",
                            draft_headers(version, Upload_Complete="?0", **headers), body)
    assert answer.final.status == 201, answer.final
    return path_of(answer.final.headers["location"])


def port_of(client: TestClient) -> int:
    port = client.server.port
    assert port is not None
    return port


def limits(header: str) -> dict[str, int]:
    return {k.strip(): int(v) for k, v in (m.split("=") for m in header.split(","))}


async def download(client: TestClient, path: str) -> bytes:
    response = await client.get(path)
    assert response.status == 200
    return await response.read()


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_creation_with_all_its_content_is_announced_by_a_104_then_complete(
    make_client: ClientFactory, version: int
) -> None:
    client = await make_client(max_size=1000)
    answer = await exchange(port_of(client), "POST", "/files/", draft_headers(
        version, Upload_Complete="?1", Content_Type="text/plain",
        Content_Disposition='inline; filename="notes.txt"'), b"hello draft")
    [interim] = answer.interim
    assert interim.status == 104
    assert interim.headers["upload-draft-interop-version"] == str(version)
    location = interim.headers["location"]
    assert answer.final.status == 201
    assert answer.final.headers["location"] == location
    assert answer.final.headers["upload-complete"] == "?1"
    assert answer.final.headers["upload-offset"] == "11"
    if version in WITH_LIMITS:
        assert limits(interim.headers["upload-limit"])["max-size"] == 1000
        assert limits(interim.headers["upload-limit"])["min-size"] == 0
    else:
        assert "upload-limit" not in interim.headers
    response = await client.get(path_of(location))
    assert await response.read() == b"hello draft"
    assert response.headers["Content-Type"].startswith("text/plain")
    assert "notes.txt" in response.headers["Content-Disposition"]


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_creation_without_content_gives_the_upload_its_limits(
    make_client: ClientFactory, version: int
) -> None:
    client = await make_client(max_size=500, expiration=3600)
    answer = await exchange(port_of(client), "POST", "/files/",
                            draft_headers(version, Upload_Complete="?0"))
    assert [r.status for r in answer.interim] == [104]
    final = answer.final
    assert final.status == 201
    assert final.headers["upload-complete"] == "?0"
    assert final.headers["upload-offset"] == "0"
    if version in WITH_LIMITS:
        limit = limits(final.headers["upload-limit"])
        assert limit["max-size"] == 500 and limit["min-size"] == 0
        assert 3590 <= limit[WITH_LIMITS[version]] <= 3600
    else:
        assert "upload-limit" not in final.headers


async def test_interop_version_3_speaks_upload_incomplete(client: TestClient) -> None:
    answer = await exchange(port_of(client), "POST", "/files/",
                            draft_headers(3, Upload_Incomplete="?0"), b"whole")
    assert answer.interim[0].status == 104
    assert answer.final.status == 201
    assert answer.final.headers["upload-incomplete"] == "?0"
    assert "upload-complete" not in answer.final.headers
    assert await download(client, path_of(answer.final.headers["location"])) == b"whole"


@pytest.mark.parametrize("version", ["7", "99", "x"])
async def test_an_unsupported_interop_version_gets_no_104_and_is_a_tus_request(
    client: TestClient, version: str
) -> None:
    headers = {"Upload-Draft-Interop-Version": version, "Upload-Complete": "?1",
               "Connection": "close"}
    answer = await exchange(port_of(client), "POST", "/files/", headers, b"abc")
    assert answer.interim == []
    assert answer.final.status == 412


async def test_the_setting_turns_the_draft_off(make_client: ClientFactory) -> None:
    client = await make_client(ietf_draft=False)
    answer = await exchange(port_of(client), "POST", "/files/",
                            draft_headers(8, Upload_Complete="?1"), b"abc")
    assert answer.interim == []
    assert answer.final.status == 412


async def test_no_104_for_http_1_0(client: TestClient) -> None:
    answer = await exchange(port_of(client), "POST", "/files/",
                            draft_headers(8, Upload_Complete="?1"), b"abc", version="HTTP/1.0")
    assert answer.interim == []
    assert answer.final.status == 201


async def test_the_104_comes_before_and_not_instead_of_the_100_asked_for(
    client: TestClient,
) -> None:
    reader, writer = await asyncio.open_connection(HOST, port_of(client))
    try:
        writer.write(request_head("POST", "/files/", port_of(client), draft_headers(
            8, Upload_Complete="?1", Content_Length="4", Expect="100-continue")))
        first = await read_response(reader, "POST")
        second = await read_response(reader, "POST")
        assert (first.status, second.status) == (104, 100)
        assert "location" in first.headers
        writer.write(b"body")
        final = await responses(reader, "POST")
    finally:
        await close_writer(writer)
    assert final.interim == []
    assert final.final.status == 201
    assert final.final.headers["upload-complete"] == "?1"


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_creation_cut_off_mid_body_is_resumed_from_the_104s_location(
    client: TestClient, version: int
) -> None:
    port = port_of(client)
    data = bytes(range(256)) * 64
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(request_head("POST", "/files/", port, draft_headers(
        version, Upload_Complete="?1", Content_Length=str(len(data)))) + data[:5000])
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 104 ")
    location = next(line for line in head.decode().split("\r\n") if line.lower().startswith(
        "location:")).split(":", 1)[1].strip()
    await close_writer(writer)
    path = path_of(location)
    state = await exchange(port, "HEAD", path, draft_headers(version))
    assert state.final.status == 204
    offset = int(state.final.headers["upload-offset"])
    assert offset == 5000
    assert state.final.headers["upload-complete"] == "?0"
    assert state.final.headers["upload-length"] == str(len(data))
    assert state.final.headers["cache-control"] == "no-store"
    rest = await exchange(port, "PATCH", path, patch_headers(version, offset, True), data[offset:])
    assert rest.final.status == 204
    assert rest.final.headers["upload-complete"] == "?1"
    assert await download(client, path) == data


@pytest.mark.parametrize("version", VERSIONS)
async def test_appends_answer_what_their_version_reads(client: TestClient, version: int) -> None:
    path = await create(client, version, Upload_Length="6")
    port = port_of(client)
    first = await exchange(port, "PATCH", path, patch_headers(version, 0, False), b"abc")
    assert first.final.status == 204
    assert first.final.headers["upload-complete"] == "?0"
    if version == 8:
        assert "upload-offset" not in first.final.headers
    else:
        assert first.final.headers["upload-offset"] == "3"
    last = await exchange(port, "PATCH", path, patch_headers(version, 3, True), b"def")
    assert last.final.status == 204
    assert last.final.headers["upload-complete"] == "?1"
    assert await download(client, path) == b"abcdef"


@pytest.mark.parametrize("version", [8, 6])
async def test_an_append_must_be_a_partial_upload(client: TestClient, version: int) -> None:
    path = await create(client, version)
    headers = patch_headers(version, 0, False, Content_Type="application/offset+octet-stream")
    answer = await exchange(port_of(client), "PATCH", path, headers, b"abc")
    assert answer.final.status == 415


async def test_version_5_appends_take_any_content_type(client: TestClient) -> None:
    path = await create(client, 5)
    answer = await exchange(port_of(client), "PATCH", path, patch_headers(5, 0, True), b"x")
    assert answer.final.status == 204
    assert answer.final.headers["upload-complete"] == "?1"


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_wrong_offset_is_a_409_with_the_right_one(client: TestClient, version: int) -> None:
    path = await create(client, version, b"abcd")
    answer = await exchange(port_of(client), "PATCH", path, patch_headers(version, 2, False),
                            b"zz")
    final = answer.final
    assert final.status == 409
    assert final.headers["upload-offset"] == "4"
    assert final.headers["upload-complete"] == "?0"
    if version >= 6:
        assert final.headers["content-type"] == "application/problem+json"
        problem = json.loads(final.body)
        assert problem["type"] == PROBLEM + "mismatching-upload-offset"
        assert (problem["expected-offset"], problem["provided-offset"]) == (4, 2)
    else:
        assert final.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize("version", [8, 6])
async def test_inconsistent_lengths_are_problems(client: TestClient, version: int) -> None:
    port = port_of(client)
    creation = await exchange(port, "POST", "/files/", draft_headers(
        version, Upload_Complete="?1", Upload_Length="9"), b"abc")
    assert creation.final.status == 400
    assert creation.interim == []
    problem = json.loads(creation.final.body)
    assert problem["type"] == PROBLEM + "inconsistent-upload-length"
    path = await create(client, version, Upload_Length="10")
    answer = await exchange(port, "PATCH", path, patch_headers(version, 0, False,
                                                                Upload_Length="11"), b"ab")
    assert answer.final.status == 400
    assert json.loads(answer.final.body)["type"] == PROBLEM + "inconsistent-upload-length"
    last = await exchange(port, "PATCH", path, patch_headers(version, 0, True), b"ab")
    assert last.final.status == 400
    assert json.loads(last.final.body)["type"] == PROBLEM + "inconsistent-upload-length"


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_complete_upload_takes_nothing_more(client: TestClient, version: int) -> None:
    port = port_of(client)
    path = await create(client, version)
    done = await exchange(port, "PATCH", path, patch_headers(version, 0, True), b"all")
    assert done.final.headers["upload-complete"] == "?1"
    more = await exchange(port, "PATCH", path, patch_headers(version, 3, True), b"more")
    empty = await exchange(port, "PATCH", path, patch_headers(version, 3, True))
    assert (more.final.status, empty.final.status) == (400, 400)
    if version >= 6:
        assert json.loads(more.final.body)["type"] == PROBLEM + "inconsistent-upload-length"
        assert json.loads(empty.final.body)["type"] == PROBLEM + "completed-upload"
    assert await download(client, path) == b"all"


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_deleted_upload_is_gone(client: TestClient, version: int) -> None:
    path = await create(client, version, b"abc")
    port = port_of(client)
    assert (await exchange(port, "DELETE", path, draft_headers(version))).final.status == 204
    assert (await exchange(port, "HEAD", path, draft_headers(version))).final.status == 410


@pytest.mark.parametrize("version", VERSIONS)
async def test_options_announces_appends_and_the_limits(
    make_client: ClientFactory, version: int
) -> None:
    client = await make_client(max_size=2048, expiration=600)
    answer = await exchange(port_of(client), "OPTIONS", "/files/", draft_headers(version))
    assert answer.final.status == 204
    assert answer.final.headers["accept-patch"] == PARTIAL
    if version in WITH_LIMITS:
        assert limits(answer.final.headers["upload-limit"]) == {
            "min-size": 0, "max-size": 2048, WITH_LIMITS[version]: 600}
    else:
        assert "upload-limit" not in answer.final.headers


@pytest.mark.parametrize("version", [8, 6])
async def test_a_creation_over_the_maximum_is_a_413_with_the_limits(
    make_client: ClientFactory, version: int
) -> None:
    client = await make_client(max_size=10)
    answer = await exchange(port_of(client), "POST", "/files/",
                            draft_headers(version, Upload_Complete="?0", Upload_Length="11"))
    assert answer.interim == []
    assert answer.final.status == 413
    assert limits(answer.final.headers["upload-limit"])["max-size"] == 10


@pytest.mark.parametrize("version", [8, 6])
async def test_a_content_digest_is_checked(client: TestClient, version: int) -> None:
    port = port_of(client)
    good = base64.b64encode(hashlib.sha256(b"digest me").digest()).decode()
    bad = base64.b64encode(hashlib.sha256(b"not this").digest()).decode()
    ok = await exchange(port, "POST", "/files/", draft_headers(
        version, Upload_Complete="?1", Content_Digest=f"sha-256=:{good}:"), b"digest me")
    assert ok.final.status == 201
    path = await create(client, version)
    refused = await exchange(port, "PATCH", path, patch_headers(
        version, 0, True, Content_Digest=f"sha-256=:{bad}:"), b"digest me")
    assert refused.final.status == 400
    state = await exchange(port, "HEAD", path, draft_headers(version))
    assert state.final.headers["upload-offset"] == "0"


@pytest.mark.parametrize("version", VERSIONS)
async def test_one_upload_through_both_protocols(client: TestClient, version: int) -> None:
    port = port_of(client)
    path = await create(client, version, b"draft,", Upload_Length="9")
    tus_head = await client.head(path, headers=TUS)
    assert tus_head.status == 200
    assert (tus_head.headers["Upload-Offset"], tus_head.headers["Upload-Length"]) == ("6", "9")
    tus_patch = await client.patch(path, data=b"tus", headers={
        **TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "6"})
    assert tus_patch.status == 204
    state = await exchange(port, "HEAD", path, draft_headers(version))
    assert state.final.headers["upload-offset"] == "9"
    assert state.final.headers["upload-complete"] == "?1"
    tus_path = await create_upload(client, 4)
    draft_state = await exchange(port, "HEAD", tus_path, draft_headers(version))
    assert draft_state.final.status == 204
    assert draft_state.final.headers["upload-offset"] == "0"
    assert draft_state.final.headers["upload-length"] == "4"
    assert draft_state.final.headers["upload-complete"] == "?0"


@pytest.mark.parametrize("version", [8, 6])
async def test_bad_draft_headers_are_refused_with_a_reason(
    client: TestClient, version: int
) -> None:
    port = port_of(client)
    no_complete = await exchange(port, "POST", "/files/", draft_headers(version))
    assert no_complete.final.status == 400
    assert b"Upload-Complete" in no_complete.final.body
    bad_length = await exchange(port, "POST", "/files/", draft_headers(
        version, Upload_Complete="?0", Upload_Length="-1"))
    assert bad_length.final.status == 400
    path = await create(client, version)
    no_offset = patch_headers(version, 0, False)
    del no_offset["Upload-Offset"]
    assert (await exchange(port, "PATCH", path, no_offset, b"a")).final.status == 400


async def test_hooks_see_draft_requests_as_they_see_tus_ones(
    make_client: ClientFactory, receiver: Receiver
) -> None:
    client = await make_client(hooks_url=receiver.url,
                               hooks_events="pre-create,post-create,pre-access,post-finish")
    port = port_of(client)
    receiver.respond = lambda r: (
        web.Response(status=403, text="no creations today") if r.name == "pre-create"
        and r.json["request"]["headers"].get("Authorization") == "sunday" else web.Response())
    refused = await exchange(port, "POST", "/files/", draft_headers(
        8, Upload_Complete="?1", Authorization="sunday"), b"abc")
    assert refused.interim == []  # no upload, nothing to resume
    assert refused.final.status == 403
    path = await create(client, 8)
    receiver.respond = lambda r: (
        web.Response(status=403, text="not yours") if r.name == "pre-access"
        and r.json["request"]["headers"].get("Authorization") != "owner" else web.Response())
    assert (await exchange(port, "HEAD", path, draft_headers(8))).final.status == 403
    stranger = await exchange(port, "PATCH", path, patch_headers(8, 0, True), b"abc")
    assert stranger.final.status == 403
    owner = await exchange(port, "PATCH", path, patch_headers(8, 0, True, Authorization="owner"),
                           b"abc")
    assert owner.final.status == 204
    again = await exchange(port, "PATCH", path, patch_headers(8, 3, True), b"")
    assert again.final.status == 403  # a complete upload, but not the stranger's to know
    await receiver.wait_for_names("post-create", "post-finish")
    # Pre-hooks are asked in the request, in order; post events are delivered in the
    # background, each once, whenever they get there.
    names = [r.name for r in receiver.received]
    assert [name for name in names if name.startswith("pre-")] == [
        "pre-create", "pre-create", "pre-access", "pre-access", "pre-access", "pre-access",
    ]
    assert sorted(name for name in names if name.startswith("post-")) == [
        "post-create", "post-finish",
    ]


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_new_request_stops_the_stale_append(client: TestClient, version: int) -> None:
    port = port_of(client)
    path = await create(client, version, Upload_Length="100")
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(request_head("PATCH", path, port, patch_headers(
            version, 0, True, Content_Length="100")) + b"x" * 40)
        await writer.drain()
        deadline = asyncio.get_running_loop().time() + 10
        while (await client.head(path, headers=TUS)).headers["Upload-Offset"] != "40":
            assert asyncio.get_running_loop().time() < deadline, "the bytes never arrived"
            await asyncio.sleep(0.05)
        state = await exchange(port, "HEAD", path, draft_headers(version))
        assert state.final.headers["upload-offset"] == "40"
        # The stale request's connection was closed for the new one.
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        await close_writer(writer)
    rest = await exchange(port, "PATCH", path, patch_headers(version, 40, True), b"y" * 60)
    assert rest.final.headers["upload-complete"] == "?1"


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_body_of_unknown_length_that_completes_the_upload_ends_it(
    client: TestClient, version: int
) -> None:
    port = port_of(client)
    whole = await exchange(port, "POST", "/files/", draft_headers(
        version, Upload_Complete="?1", Transfer_Encoding="chunked"), chunked(b"one ", b"go"))
    assert whole.final.status == 201
    assert whole.final.headers["upload-complete"] == "?1"
    assert await download(client, path_of(whole.final.headers["location"])) == b"one go"
    path = await create(client, version, b"first, ")
    rest = await exchange(port, "PATCH", path, patch_headers(
        version, 7, True, Transfer_Encoding="chunked"), chunked(b"then ", b"the rest"))
    assert rest.final.status == 204
    assert rest.final.headers["upload-complete"] == "?1"
    assert await download(client, path) == b"first, then the rest"


@pytest.mark.parametrize("version", [8, 6])
async def test_a_completing_body_that_ends_short_of_the_length_is_inconsistent(
    client: TestClient, version: int
) -> None:
    port = port_of(client)
    path = await create(client, version, Upload_Length="10")
    short = await exchange(port, "PATCH", path, patch_headers(
        version, 0, True, Transfer_Encoding="chunked"), chunked(b"only6b"))
    assert short.final.status == 400
    assert json.loads(short.final.body)["type"] == PROBLEM + "inconsistent-upload-length"
    assert short.final.headers["upload-offset"] == "6"
    state = await exchange(port, "HEAD", path, draft_headers(version))
    assert state.final.headers["upload-offset"] == "6"
    assert state.final.headers["upload-complete"] == "?0"
    creation = await exchange(port, "POST", "/files/", draft_headers(
        version, Upload_Complete="?1", Upload_Length="10", Transfer_Encoding="chunked"),
        chunked(b"4byt"))
    assert creation.final.status == 400
    assert json.loads(creation.final.body)["type"] == PROBLEM + "inconsistent-upload-length"
    assert creation.final.headers["upload-offset"] == "4"
    assert creation.final.headers["location"] == creation.interim[0].headers["location"]


async def test_draft_creations_draw_on_the_creation_rate_and_are_counted(
    make_client: ClientFactory,
) -> None:
    client = await make_client(create_rate=0.25, create_burst=1, metrics=True)
    port = port_of(client)
    await create(client, 8, b"abc")
    refused = await exchange(port, "POST", "/files/", draft_headers(8, Upload_Complete="?1"),
                             b"abc")
    assert refused.interim == []
    assert refused.final.status == 429
    assert refused.final.headers["retry-after"] == "4"
    metrics = await (await client.get("/metrics")).text()
    assert 'aiotusd_uploads_created_total 1.0' in metrics
    assert 'reason="create_rate"} 1.0' in metrics


@pytest.mark.parametrize("module", ["server.draft.create", "server.draft.resume", "server.handlers"])
def test_each_module_imports_on_its_own(module: str) -> None:
    """The tus and draft handlers share the upload's URL and its steps, not an import cycle."""
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


async def test_a_head_stops_a_stale_creation_and_the_upload_goes_on(client: TestClient) -> None:
    port = port_of(client)
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(request_head("POST", "/files/", port, draft_headers(
            8, Upload_Complete="?1", Content_Length="100")) + b"x" * 30)
        await writer.drain()
        interim = await read_response(reader, "POST")
        assert interim.status == 104
        path = path_of(interim.headers["location"])
        deadline = asyncio.get_running_loop().time() + 10
        while (await client.head(path, headers=TUS)).headers["Upload-Offset"] != "30":
            assert asyncio.get_running_loop().time() < deadline, "the bytes never arrived"
            await asyncio.sleep(0.05)
        state = await exchange(port, "HEAD", path, draft_headers(8))
        assert state.final.headers["upload-offset"] == "30"
        assert state.final.headers["upload-length"] == "100"
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        await close_writer(writer)
    rest = await exchange(port, "PATCH", path, patch_headers(8, 30, True), b"y" * 70)
    assert rest.final.headers["upload-complete"] == "?1"
    assert await download(client, path) == b"x" * 30 + b"y" * 70
