"""The S3 backend across new clients, restarts, kill -9, an S3 outage and bad start-up settings.

Real ``aiotusd`` processes (``server_process``) where a process must go away;
an in-process app for the outage, with an endpoint of its own to stop.
"""

from __future__ import annotations

import contextlib
import io
import signal
import socket
import sqlite3
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from support.http import PATCH_HEADERS, TUS, create_upload
from support.processes import free_port
from support.s3 import (
    MIB,
    S3Endpoint,
    multipart_uploads,
    object_bytes,
    object_keys,
    s3_args,
    s3_client,
    s3_settings,
    spooled_files,
)
from support.storage import payload
from support.waiting import poll, wait_for
from tusclient import client as tus_client

from server.context import CONTEXT
from server.expiration import sweep

pytestmark = pytest.mark.s3


@pytest.fixture
def own_endpoint(aws_env: None) -> Iterator[tuple[S3Endpoint, Any, str]]:
    """An S3 endpoint of the test's own, which it may stop and start, with one bucket."""
    endpoint = S3Endpoint(free_port())
    endpoint.start()
    s3 = s3_client(endpoint.url)
    bucket = "own-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=bucket)
    yield endpoint, s3, bucket
    if endpoint.running:
        endpoint.stop()


def create(server: Any, length: int) -> str:
    response = requests.post(server.url, headers={**TUS, "Upload-Length": str(length)}, timeout=30)
    assert response.status_code == 201, response.text
    return str(response.headers["Location"])


def head_offset(url: str) -> int:
    response = requests.head(url, headers=TUS, timeout=30)
    assert response.status_code == 200, response.status_code
    return int(response.headers["Upload-Offset"])


def patch(url: str, offset: int, data: bytes) -> requests.Response:
    return requests.patch(
        url, data=data, headers={**PATCH_HEADERS, "Upload-Offset": str(offset)}, timeout=60
    )


def assert_stored_once(s3: Any, bucket: str, url: str, data: bytes, server: Any) -> None:
    """The upload is exactly ``data`` as one object, through S3 and through GET; no leftovers."""
    key = url.rsplit("/", 1)[1]
    assert object_bytes(s3, bucket, key) == data
    response = requests.get(url, timeout=60)
    assert response.status_code == 200 and response.content == data
    assert multipart_uploads(s3, bucket) == []
    assert object_keys(s3, bucket) == [key]
    assert spooled_files(server.data_dir) == []


@pytest.mark.e2e
def test_resume_with_a_new_tus_client(server_process, s3_endpoint, bucket, s3):
    server = server_process(*s3_args(s3_endpoint, bucket))
    data = payload(13 * MIB, seed=20)
    first = tus_client.TusClient(server.url).uploader(
        file_stream=io.BytesIO(data), chunk_size=MIB, metadata={"filename": "movie.mp4"}
    )
    first.upload(stop_at=7 * MIB)
    assert first.offset == 7 * MIB
    # Another client, knowing only the URL, asks where to go on and finishes the upload.
    second = tus_client.TusClient(server.url).uploader(
        file_stream=io.BytesIO(data), url=first.url, chunk_size=4 * MIB
    )
    assert second.offset == 7 * MIB
    second.upload()
    assert_stored_once(s3, bucket, first.url, data, server)


@pytest.mark.e2e
@pytest.mark.slow
def test_resume_after_server_restart(server_process, s3_endpoint, bucket, s3):
    server = server_process(*s3_args(s3_endpoint, bucket))
    data = payload(14 * MIB, seed=21)
    url = create(server, len(data))
    middle = 7 * MIB + MIB // 2  # one part in S3, a tail object of 2.5 MiB
    assert patch(url, 0, data[:middle]).status_code == 204
    server.restart()
    assert head_offset(url) == middle
    assert patch(url, middle, data[middle:]).status_code == 204
    assert_stored_once(s3, bucket, url, data, server)


def _stored_parts(s3: Any, bucket: str) -> list[dict[str, Any]]:
    uploads = multipart_uploads(s3, bucket)
    if len(uploads) != 1:
        return []
    upload = uploads[0]
    return list(
        s3.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]).get("Parts", [])
    )


TRICKLE = 16 * 1024


def recorded_offset(server: Any, upload_id: str) -> int:
    """The offset the running server's database holds for the upload."""
    path = server.data_dir / "aiotusd.sqlite3"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        row = db.execute('SELECT "offset" FROM uploads WHERE id = ?', (upload_id,)).fetchone()
    return int(row[0])


@pytest.mark.e2e
@pytest.mark.slow
def test_kill_9_in_the_middle_of_a_patch_then_resume(server_process, s3_endpoint, bucket, s3):
    server = server_process(*s3_args(s3_endpoint, bucket, "--commit-bytes", "1MiB"))
    data = payload(18 * MIB, seed=22)
    url = create(server, len(data))
    path = url[url.index("/files/") :]
    sent = 12 * MIB
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
            f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
        )
        for start in range(0, sent, 256 * 1024):
            sock.sendall(data[start : start + 256 * 1024])
        key = url.rsplit("/", 1)[1]

        def killable() -> bool:
            """Two parts are in S3 and a commit recorded bytes past the first. A commit
            begins only as bytes arrive, and the first may outlast 12 MiB of them on a
            slow disk: a few more trickle in until then (never the whole body)."""
            nonlocal sent
            if len(_stored_parts(s3, bucket)) >= 2 and recorded_offset(server, key) > 5 * MIB:
                return True
            if sent + TRICKLE < len(data):
                sock.sendall(data[sent : sent + TRICKLE])
                sent += TRICKLE
            return False

        # The request is still open: kill the server now.
        wait_for(killable, what="two parts in S3 and a commit past the first")
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    server.start()
    offset = head_offset(url)
    # Over 10 MiB had arrived; commits run behind receiving, by about one commit_bytes.
    assert 5 * MIB < offset <= sent
    assert patch(url, offset, data[offset:]).status_code == 204
    assert_stored_once(s3, bucket, url, data, server)


@pytest.mark.e2e
@pytest.mark.slow
def test_termination_after_restart_leaves_nothing(server_process, s3_endpoint, bucket, s3):
    server = server_process(*s3_args(s3_endpoint, bucket))
    url = create(server, 30 * MIB)
    assert patch(url, 0, payload(11 * MIB, seed=23)).status_code == 204
    server.restart()
    assert len(multipart_uploads(s3, bucket)) == 1
    response = requests.delete(url, headers=TUS, timeout=30)
    assert response.status_code == 204
    assert multipart_uploads(s3, bucket) == [] and object_keys(s3, bucket) == []
    assert spooled_files(server.data_dir) == []


@pytest.mark.slow
async def test_s3_outage_answers_503_then_the_upload_completes(make_client, own_endpoint):
    endpoint, s3, bucket = own_endpoint
    client = await make_client(**s3_settings(endpoint, bucket))
    data = payload(17 * MIB, seed=24)
    path = await create_upload(client, len(data))

    async def send(offset: int, size: int) -> Any:
        return await client.patch(
            path, data=data[offset : offset + size],
            headers={**PATCH_HEADERS, "Upload-Offset": str(offset)},
        )

    async def offset_now() -> int:
        response = await client.head(path, headers=TUS)
        assert response.status == 200
        return int(response.headers["Upload-Offset"])

    assert (await send(0, 6 * MIB)).status == 204
    assert (await client.get("/readyz")).status == 200
    endpoint.stop()
    # A client goes on from the offset the server answers until S3's absence shows.
    statuses = []
    for _ in range(4):
        response = await send(await offset_now(), 5 * MIB)
        statuses.append(response.status)
        if response.status == 503:
            assert int(response.headers["Retry-After"]) > 0
            break
    print("statuses while S3 is down:", statuses)
    assert statuses[-1] == 503, statuses
    endpoint.start()
    offset = await offset_now()
    while offset < len(data):
        response = await send(offset, 5 * MIB)
        assert response.status == 204, await response.text()
        offset = int(response.headers["Upload-Offset"])
    assert object_bytes(s3, bucket, path.rsplit("/", 1)[1]) == data
    response = await client.get(path)
    assert await response.read() == data
    assert multipart_uploads(s3, bucket) == []
    endpoint.stop()
    # A download while the store is down is a clean 503, not a 200 that breaks off.
    response = await client.get(path)
    assert response.status == 503, await response.text()
    assert int(response.headers["Retry-After"]) > 0
    response = await client.get("/readyz")
    assert response.status == 503 and "storage" in await response.text()


@pytest.mark.e2e
def test_missing_bucket_stops_start_up(server_process, s3_endpoint):
    with pytest.raises(RuntimeError) as failure:
        server_process(*s3_args(s3_endpoint, "no-such-bucket-" + uuid.uuid4().hex[:8]))
    assert "does not exist" in str(failure.value)


@pytest.mark.e2e
def test_missing_credentials_stop_start_up(server_process, s3_endpoint, bucket, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(RuntimeError) as failure:
        server_process(*s3_args(s3_endpoint, bucket))
    assert "storage cannot be used" in str(failure.value)
    assert "credentials" in str(failure.value)


@pytest.mark.slow
async def test_bytes_s3_did_not_take_are_not_acknowledged(make_client, own_endpoint):
    """The offset never runs ahead of what S3 holds: a body whose bytes cannot be put
    (as the whole object here) records nothing, and the client sends it again."""
    endpoint, s3, bucket = own_endpoint
    client = await make_client(**s3_settings(endpoint, bucket))
    data = payload(MIB, seed=30)
    path = await create_upload(client, len(data))
    endpoint.stop()
    response = await client.patch(path, data=data, headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert response.status == 503, await response.text()
    response = await client.head(path, headers=TUS)
    assert response.status == 200 and response.headers["Upload-Offset"] == "0"
    endpoint.start()
    response = await client.patch(path, data=data, headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert response.status == 204, await response.text()
    assert object_bytes(s3, bucket, path.rsplit("/", 1)[1]) == data


@pytest.mark.slow
async def test_a_finish_that_failed_while_s3_was_down_completes_later(make_client, own_endpoint):
    endpoint, s3, bucket = own_endpoint
    client = await make_client(**s3_settings(endpoint, bucket))
    data = payload(MIB, seed=31)
    path = await create_upload(client, None, **{"Upload-Defer-Length": "1"})
    response = await client.patch(path, data=data, headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert response.status == 204
    endpoint.stop()
    # Every byte is stored (in a tail object), but the finish, which makes it the last
    # part, cannot go.
    response = await client.patch(path, data=b"", headers={
        **PATCH_HEADERS, "Upload-Offset": str(len(data)), "Upload-Length": str(len(data)),
    })
    assert response.status == 503, await response.text()
    response = await client.head(path, headers=TUS)
    assert response.status == 503
    assert (await client.get(path)).status == 409
    endpoint.start()
    # Once the store is back, the HEAD a resuming client sends finishes the upload.
    response = await client.head(path, headers=TUS)
    assert response.status == 200
    assert response.headers["Upload-Offset"] == str(len(data))
    response = await client.get(path)
    assert response.status == 200 and await response.read() == data
    key = path.rsplit("/", 1)[1]
    assert object_bytes(s3, bucket, key) == data
    assert object_keys(s3, bucket) == [key]


@pytest.mark.slow
async def test_termination_while_s3_is_down_leaves_nothing_once_it_is_back(make_client, own_endpoint):
    endpoint, s3, bucket = own_endpoint
    client = await make_client(**s3_settings(endpoint, bucket), gone_retention=0)
    data = payload(7 * MIB, seed=32)
    path = await create_upload(client, 2 * len(data))
    response = await client.patch(path, data=data, headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert response.status == 204
    await poll(lambda: len(multipart_uploads(s3, bucket)) == 1, "the multipart upload in S3")
    endpoint.stop()
    # For the client the upload is gone at once, though its bytes could not be deleted.
    assert (await client.delete(path, headers=TUS)).status == 204
    assert (await client.head(path, headers=TUS)).status == 410
    endpoint.start()
    assert multipart_uploads(s3, bucket) != []
    # The sweep deletes the bytes again before it forgets the tombstone.
    await sweep(client.app[CONTEXT])
    assert multipart_uploads(s3, bucket) == []
    assert object_keys(s3, bucket) == []
    assert (await client.head(path, headers=TUS)).status == 404