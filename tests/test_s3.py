"""The S3 backend against a real S3 endpoint on loopback (moto in server mode).

moto enforces S3's 5 MiB minimum part size, so every multi-part upload here
really goes through the buffering into parts. In-process apps where that is
enough; real ``aiotusd`` processes for restarts, kill -9 and tuspy.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from support.http import PATCH_HEADERS, TUS, create_upload, raw_get
from support.s3 import (
    MIB,
    PART,
    multipart_uploads,
    object_bytes,
    object_keys,
    s3_settings,
    spooled_files,
    tail_objects,
)
from support.storage import payload
from support.waiting import wait_for

from server.config import Settings

pytestmark = pytest.mark.s3


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def upload_id(path: str) -> str:
    return path.rsplit("/", 1)[1]


async def patch(client: Any, path: str, offset: int, data: bytes, **headers: str) -> Any:
    return await client.patch(
        path, data=data, headers={**PATCH_HEADERS, "Upload-Offset": str(offset), **headers}
    )


async def head_offset(client: Any, path: str) -> int:
    response = await client.head(path, headers=TUS)
    assert response.status == 200
    return int(response.headers["Upload-Offset"])


@pytest.fixture
def data_dir(settings: Settings) -> Path:
    return Path(settings.storage.data_dir)


# --- in-process apps ----------------------------------------------------------------------


async def test_upload_in_1mib_patches(make_client, s3_endpoint, bucket, s3, data_dir):
    client = await make_client(**s3_settings(s3_endpoint, bucket))
    data = payload(12 * MIB + 123)
    metadata = f"filename {b64('report.pdf')},filetype {b64('application/pdf')},user {b64('ann')}"
    path = await create_upload(client, len(data), **{"Upload-Metadata": metadata})
    key = upload_id(path)
    offset = 0
    while offset < len(data):
        chunk = data[offset : offset + MIB]
        response = await patch(client, path, offset, chunk)
        assert response.status == 204, await response.text()
        offset += len(chunk)
        assert int(response.headers["Upload-Offset"]) == offset
        assert await head_offset(client, path) == offset
        if offset == 6 * MIB:
            # The first part is in S3, the 1 MiB after it in a tail object, of which the
            # spool keeps a copy for the next PATCH.
            (upload,) = multipart_uploads(s3, bucket)
            listed = s3.list_parts(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
            assert [(p["PartNumber"], p["Size"]) for p in listed["Parts"]] == [(1, PART)]
            assert tail_objects(s3, bucket, key) == [(2, 0, MIB)]
            assert sum(p.stat().st_size for p in spooled_files(data_dir)) == MIB
    response = await client.get(path)
    assert response.status == 200 and await response.read() == data
    assert object_bytes(s3, bucket, key) == data
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ETag"].endswith('-3"')  # 5 MiB + 5 MiB + the rest
    assert head["ContentType"] == "application/pdf"
    assert head["ContentDisposition"] == 'inline; filename="report.pdf"'
    assert head["Metadata"] == {"user": "ann"}
    assert multipart_uploads(s3, bucket) == []
    assert spooled_files(data_dir) == []


async def test_single_large_patch(make_client, s3_endpoint, bucket, s3, data_dir):
    client = await make_client(**s3_settings(s3_endpoint, bucket, s3_concurrency=2))
    data = payload(23 * MIB + 5, seed=1)
    path = await create_upload(client, len(data))

    async def body():
        for start in range(0, len(data), 64 * 1024):
            yield data[start : start + 64 * 1024]

    response = await client.patch(
        path, data=body(), headers={**PATCH_HEADERS, "Upload-Offset": "0"}
    )
    assert response.status == 204, await response.text()
    assert response.headers["Upload-Offset"] == str(len(data))
    key = upload_id(path)
    assert object_bytes(s3, bucket, key) == data
    assert s3.head_object(Bucket=bucket, Key=key)["ETag"].endswith('-5"')
    assert multipart_uploads(s3, bucket) == [] and spooled_files(data_dir) == []


async def test_small_and_empty_uploads_are_single_objects(make_client, s3_endpoint, bucket, s3):
    client = await make_client(**s3_settings(s3_endpoint, bucket))
    small = await create_upload(client, 1000)
    assert (await patch(client, small, 0, payload(1000))).status == 204
    empty = await create_upload(client, 0)
    assert object_bytes(s3, bucket, upload_id(small)) == payload(1000)
    assert "-" not in s3.head_object(Bucket=bucket, Key=upload_id(small))["ETag"]
    assert object_bytes(s3, bucket, upload_id(empty)) == b""
    assert (await client.get(empty)).status == 200
    assert multipart_uploads(s3, bucket) == []


class FailingOnce:
    """A reverse proxy in front of the S3 endpoint that answers the first attempt at every
    part and object body with S3's 500 InternalError, once it has read the whole body."""

    def __init__(self, upstream: str) -> None:
        self._upstream = upstream
        self.bodies: list[tuple[str, int, str]] = []
        """(what, status answered, MD5 of the body) of every UploadPart and PutObject."""
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        query = request.rel_url.query
        if request.method == "PUT" and "x-amz-copy-source" not in request.headers:
            what = f"part {query['partNumber']}" if "partNumber" in query else request.path
            digest = hashlib.md5(body).hexdigest()
            status = 200 if any(seen[0] == what for seen in self.bodies) else 500
            self.bodies.append((what, status, digest))
            if status == 500:
                return web.Response(status=500, content_type="application/xml", body=(
                    b"<Error><Code>InternalError</Code>"
                    b"<Message>We encountered an internal error.</Message></Error>"
                ))
        async with aiohttp.ClientSession(auto_decompress=False) as session, session.request(
            request.method, self._upstream + str(request.rel_url), data=body,
            headers={k: v for k, v in request.headers.items() if k.lower() != "transfer-encoding"},
        ) as answer:
            return web.Response(
                status=answer.status, body=await answer.read(),
                headers={k: v for k, v in answer.headers.items()
                         if k.lower() not in ("content-length", "transfer-encoding")},
            )


@pytest.mark.slow
async def test_a_body_that_s3_failed_is_sent_again_whole(
    make_client, aiohttp_server, s3_endpoint, bucket, s3
):
    proxy = FailingOnce(s3_endpoint.url)
    app = web.Application(client_max_size=2 * PART)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    proxy.url = str((await aiohttp_server(app, host="127.0.0.1")).make_url("")).rstrip("/")
    client = await make_client(**s3_settings(proxy, bucket))
    big, small = payload(12 * MIB, seed=40), payload(1000, seed=41)
    big_path, small_path = await create_upload(client, len(big)), await create_upload(client, 1000)
    assert (await patch(client, big_path, 0, big)).status == 204
    assert (await patch(client, small_path, 0, small)).status == 204
    assert object_bytes(s3, bucket, upload_id(big_path)) == big
    assert object_bytes(s3, bucket, upload_id(small_path)) == small
    expected = {
        "part 1": big[:PART], "part 2": big[PART : 2 * PART], "part 3": big[2 * PART :],
        f"/{bucket}/{upload_id(small_path)}": small,
    }
    assert sorted(proxy.bodies) == sorted(
        (what, status, hashlib.md5(data).hexdigest())
        for what, data in expected.items() for status in (200, 500)
    )


class CutsDownloads:
    """A reverse proxy in front of the S3 endpoint that breaks off every GetObject: it
    sends the status, the headers and ``keep`` bytes of the body, then resets."""

    def __init__(self, upstream: str, keep: int) -> None:
        self._upstream = upstream
        self._keep = keep
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() != "transfer-encoding"}
        async with aiohttp.ClientSession(auto_decompress=False) as session, session.request(
            request.method, self._upstream + str(request.rel_url), data=body, headers=headers,
        ) as answer:
            data = await answer.read()
            response = web.StreamResponse(status=answer.status, headers={
                k: v for k, v in answer.headers.items() if k.lower() != "transfer-encoding"
            })
            await response.prepare(request)
            if request.method != "GET" or "Range" not in request.headers:
                await response.write(data)
                return response
            await response.write(data[: self._keep])
            assert request.transport is not None
            request.transport.abort()
            return response


async def test_an_s3_download_that_breaks_off_cuts_the_connection(
    make_client, aiohttp_server, s3_endpoint, bucket
):
    """The 200 went out when S3's stream broke: the client's connection is cut, and no
    error response is written into the body."""
    proxy = CutsDownloads(s3_endpoint.url, keep=2 * MIB)
    app = web.Application(client_max_size=2 * PART)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    proxy.url = str((await aiohttp_server(app, host="127.0.0.1")).make_url("")).rstrip("/")
    client = await make_client(**s3_settings(proxy, bucket))
    data = payload(4 * MIB, seed=42)
    path = await create_upload(client, len(data))
    assert (await patch(client, path, 0, data)).status == 204
    head, body, ended = await raw_get(client.port, path)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert len(body) < len(data) and body == data[: len(body)]
    assert b"HTTP/1." not in body
    assert ended


async def test_defer_length(make_client, s3_endpoint, bucket, s3):
    client = await make_client(**s3_settings(s3_endpoint, bucket))
    data = payload(13 * MIB, seed=2)
    path = await create_upload(client, None, **{"Upload-Defer-Length": "1"})
    response = await patch(client, path, 0, data[: 7 * MIB])
    assert response.status == 204
    response = await patch(
        client, path, 7 * MIB, data[7 * MIB :], **{"Upload-Length": str(len(data))}
    )
    assert response.status == 204, await response.text()
    response = await client.head(path, headers=TUS)
    assert response.headers["Upload-Length"] == str(len(data))
    assert object_bytes(s3, bucket, upload_id(path)) == data
    assert multipart_uploads(s3, bucket) == []


async def test_checksum(make_client, s3_endpoint, bucket, s3, data_dir):
    client = await make_client(**s3_settings(s3_endpoint, bucket))
    data = payload(9 * MIB, seed=3)
    path = await create_upload(client, len(data))

    def sha1(chunk: bytes) -> str:
        return "sha1 " + base64.b64encode(hashlib.sha1(chunk).digest()).decode()

    first = data[: 2 * MIB]
    response = await patch(client, path, 0, first, **{"Upload-Checksum": sha1(first)})
    assert response.status == 204
    # A bad body that crosses a part boundary: nothing of it is kept, no part is stored.
    rest = data[2 * MIB :]
    bad = rest[:-1] + bytes([rest[-1] ^ 1])
    response = await patch(client, path, 2 * MIB, bad, **{"Upload-Checksum": sha1(rest)})
    assert response.status == 460
    assert await head_offset(client, path) == 2 * MIB
    response = await patch(client, path, 2 * MIB, rest, **{"Upload-Checksum": sha1(rest)})
    assert response.status == 204, await response.text()
    assert object_bytes(s3, bucket, upload_id(path)) == data
    assert multipart_uploads(s3, bucket) == [] and spooled_files(data_dir) == []


async def test_termination_leaves_nothing(make_client, s3_endpoint, bucket, s3, data_dir):
    client = await make_client(**s3_settings(s3_endpoint, bucket))
    unfinished = await create_upload(client, 20 * MIB)
    assert (await patch(client, unfinished, 0, payload(7 * MIB))).status == 204
    assert len(multipart_uploads(s3, bucket)) == 1 and spooled_files(data_dir)
    assert tail_objects(s3, bucket, upload_id(unfinished)) == [(2, 0, 2 * MIB)]
    finished = await create_upload(client, 3)
    assert (await patch(client, finished, 0, b"abc")).status == 204
    assert [key for key in object_keys(s3, bucket) if ".part" not in key] == [upload_id(finished)]
    # An empty PATCH at the end of a finished upload changes nothing.
    response = await patch(client, finished, 3, b"")
    assert response.status == 204 and response.headers["Upload-Offset"] == "3"
    for path in (unfinished, finished):
        response = await client.delete(path, headers=TUS)
        assert response.status == 204
        assert (await client.head(path, headers=TUS)).status == 410
    assert multipart_uploads(s3, bucket) == []
    assert object_keys(s3, bucket) == []
    assert spooled_files(data_dir) == []


async def test_get_with_range(make_client, s3_endpoint, bucket, s3):
    client = await make_client(**s3_settings(s3_endpoint, bucket))
    data = payload(11 * MIB, seed=4)
    path = await create_upload(client, len(data))
    assert (await patch(client, path, 0, data)).status == 204
    start, end = PART - 100, 2 * PART + 100  # across both part boundaries
    response = await client.get(path, headers={"Range": f"bytes={start}-{end - 1}"})
    assert response.status == 206
    assert response.headers["Content-Range"] == f"bytes {start}-{end - 1}/{len(data)}"
    assert await response.read() == data[start:end]
    response = await client.get(path, headers={"Range": "bytes=-10"})
    assert response.status == 206 and await response.read() == data[-10:]


async def test_download_redirect(make_client, s3_endpoint, bucket, s3):
    client = await make_client(**s3_settings(s3_endpoint, bucket, s3_download_redirect=True))
    data = payload(1234, seed=5)
    path = await create_upload(client, len(data), **{"Upload-Metadata": f"filename {b64('a.bin')}"})
    assert (await patch(client, path, 0, data)).status == 204
    response = await client.get(path, allow_redirects=False)
    assert response.status == 302
    location = response.headers["Location"]
    assert location.startswith(s3_endpoint.url) and "Signature" in location
    async with (
        aiohttp.ClientSession() as session,
        session.get(location, headers={"Range": "bytes=10-19"}) as direct,
    ):
        assert direct.status == 206 and await direct.read() == data[10:20]
        assert direct.headers["Content-Disposition"] == 'attachment; filename="a.bin"'
        assert direct.headers["Content-Type"] == "application/octet-stream"


async def test_concatenation_by_server_side_copy(make_client, s3_endpoint, bucket, s3):
    client = await make_client(**s3_settings(s3_endpoint, bucket))
    first, second = payload(6 * MIB, seed=6), payload(MIB + 7, seed=7)
    paths = []
    for data in (first, second):
        path = await create_upload(client, len(data), **{"Upload-Concat": "partial"})
        assert (await patch(client, path, 0, data)).status == 204
        paths.append(path)
    response = await client.post(
        "/files/", headers={**TUS, "Upload-Concat": "final;" + " ".join(paths)}
    )
    assert response.status == 201, await response.text()
    final = response.headers["Location"]
    final_id = final.rsplit("/", 1)[1]
    assert object_bytes(s3, bucket, final_id) == first + second
    # Two parts copied inside S3: no byte went through the server.
    assert s3.head_object(Bucket=bucket, Key=final_id)["ETag"].endswith('-2"')
    response = await client.get("/files/" + final_id)
    assert await response.read() == first + second
    assert multipart_uploads(s3, bucket) == []


async def test_concatenation_streamed_when_parts_are_small(make_client, s3_endpoint, bucket, s3):
    client = await make_client(**s3_settings(s3_endpoint, bucket))
    pieces = [payload(2 * MIB, seed=8), payload(5 * MIB, seed=9), payload(MIB, seed=10)]
    small = [payload(1000, seed=11), payload(2000, seed=12)]

    async def concatenate(datas: list[bytes], before: bool) -> str:
        paths = [
            await create_upload(client, len(data), **{"Upload-Concat": "partial"})
            for data in datas
        ]
        if not before:
            for path, data in zip(paths, datas, strict=True):
                assert (await patch(client, path, 0, data)).status == 204
        response = await client.post(
            "/files/", headers={**TUS, "Upload-Concat": "final;" + " ".join(paths)}
        )
        assert response.status == 201
        if before:  # concatenation-unfinished: assembled when the last partial finishes
            for path, data in zip(paths, datas, strict=True):
                assert (await patch(client, path, 0, data)).status == 204
        return response.headers["Location"].rsplit("/", 1)[1]

    big_id = await concatenate(pieces, before=True)
    small_id = await concatenate(small, before=False)
    assert object_bytes(s3, bucket, big_id) == b"".join(pieces)
    assert s3.head_object(Bucket=bucket, Key=big_id)["ETag"].endswith('-2"')  # 5 MiB + 3 MiB
    assert object_bytes(s3, bucket, small_id) == b"".join(small)
    assert multipart_uploads(s3, bucket) == []


async def test_part_size_grows_to_stay_within_max_parts(make_client, s3_endpoint, bucket, s3):
    client = await make_client(**s3_settings(s3_endpoint, bucket, s3_max_parts=2))
    data = payload(11 * MIB, seed=13)
    path = await create_upload(client, len(data))
    for offset in range(0, len(data), 2 * MIB):
        assert (await patch(client, path, offset, data[offset : offset + 2 * MIB])).status == 204
    key = upload_id(path)
    assert object_bytes(s3, bucket, key) == data
    assert s3.head_object(Bucket=bucket, Key=key)["ETag"].endswith('-2"')  # 6 MiB + 5 MiB


async def test_equal_parts_with_deferred_length(make_client, s3_endpoint, bucket, s3):
    client = await make_client(**s3_settings(s3_endpoint, bucket, s3_equal_parts=True))
    data = payload(16 * MIB, seed=14)
    path = await create_upload(client, None, **{"Upload-Defer-Length": "1"})
    for offset in range(0, len(data), 3 * MIB):
        headers = {"Upload-Length": str(len(data))} if offset + 3 * MIB >= len(data) else {}
        response = await patch(client, path, offset, data[offset : offset + 3 * MIB], **headers)
        assert response.status == 204
    key = upload_id(path)
    assert object_bytes(s3, bucket, key) == data
    assert s3.head_object(Bucket=bucket, Key=key)["ETag"].endswith('-4"')  # 5+5+5+1 MiB


async def test_body_dropped_after_periodic_commits(make_client, s3_endpoint, bucket, s3, data_dir):
    """A body that overruns the length is dropped whole, even the parts already committed
    and stored: the offset goes back to where the request started, and the upload goes on."""
    client = await make_client(**s3_settings(s3_endpoint, bucket, commit_bytes=MIB))
    data = payload(8 * MIB, seed=15)
    path = await create_upload(client, len(data))
    assert (await patch(client, path, 0, data[: 3 * MIB])).status == 204

    def part_one_stored() -> bool:
        (upload,) = multipart_uploads(s3, bucket)
        listed = s3.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        return bool(listed.get("Parts"))

    async def too_long():  # chunked, so the size shows only at the end
        wrong = payload(5 * MIB + 256 * 1024, seed=16)
        for start in range(0, len(wrong), 256 * 1024):
            if start == 2 * MIB:  # part 1 (3 MiB before, 2 MiB of this body) is full
                await asyncio.to_thread(wait_for, part_one_stored, 30, "part 1 in S3")
            yield wrong[start : start + 256 * 1024]

    response = await client.patch(
        path, data=too_long(), headers={**PATCH_HEADERS, "Upload-Offset": str(3 * MIB)}
    )
    assert response.status == 413
    assert await head_offset(client, path) == 3 * MIB
    assert (await patch(client, path, 3 * MIB, data[3 * MIB :])).status == 204
    assert object_bytes(s3, bucket, upload_id(path)) == data
    assert multipart_uploads(s3, bucket) == [] and spooled_files(data_dir) == []


async def test_post_finish_hook_names_the_object(make_client, s3_endpoint, bucket, s3, receiver):
    client = await make_client(
        **s3_settings(s3_endpoint, bucket), s3_prefix="in/", hooks_url=receiver.url,
        hooks_events="post-finish",
    )
    path = await create_upload(client, 1000)
    assert (await patch(client, path, 0, payload(1000))).status == 204
    (event,) = await receiver.wait_for_names("post-finish")
    key = "in/" + upload_id(path)
    assert event.json["upload"]["storage"] == {"type": "s3", "bucket": bucket, "key": key}
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == payload(1000)
