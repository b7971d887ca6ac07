"""creation and creation-with-upload extensions."""

from __future__ import annotations

import asyncio

import pytest
from support.http import (
    PATCH_HEADERS,
    TUS,
    assert_one_line_error,
    create_upload,
    path_of,
    upload_id,
)

from server.context import CONTEXT

pytestmark = pytest.mark.all_backends

# --- creation -----------------------------------------------------------------------------


@pytest.mark.filesystem_only("the filesystem makes the upload's file at creation; S3 nothing yet")
async def test_post_creates_upload_with_absolute_location(client, storage_view):
    response = await client.post("/files/", headers={**TUS, "Upload-Length": "42"})
    assert response.status == 201
    location = response.headers["Location"]
    assert location.startswith(str(client.make_url("/files/")))
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert response.headers["Upload-Offset"] == "0"
    assert await response.read() == b""
    assert storage_view.ids() == [upload_id(location)]
    response = await client.head(path_of(response), headers=TUS)
    assert response.status == 200
    assert response.headers["Upload-Length"] == "42"
    assert response.headers["Upload-Offset"] == "0"


async def test_each_post_gets_its_own_upload(client):
    first = await create_upload(client, 1)
    second = await create_upload(client, 1)
    assert first != second


async def test_location_honours_host_header(client):
    response = await client.post(
        "/files/", headers={**TUS, "Upload-Length": "1", "Host": "uploads.example.org"}
    )
    assert response.status == 201
    assert response.headers["Location"].startswith("http://uploads.example.org/files/")


@pytest.mark.parametrize(
    "headers", [{}, {"Upload-Length": "5", "Upload-Defer-Length": "1"}], ids=["neither", "both"]
)
async def test_neither_or_both_length_headers_is_400(client, storage_view, headers):
    response = await client.post("/files/", headers={**TUS, **headers})
    await assert_one_line_error(response, 400)
    assert storage_view.ids() == []


@pytest.mark.parametrize("value", ["0", "2", "true", "", "-1", "1.0", "yes"])
async def test_defer_length_other_than_1_is_400(client, storage_view, value):
    response = await client.post("/files/", headers={**TUS, "Upload-Defer-Length": value})
    await assert_one_line_error(response, 400)
    assert storage_view.ids() == []


@pytest.mark.parametrize(
    "value", ["-1", "abc", "1.5", "", "0x10", "+5", "1e3", "5 5", "99999999999999999999", "9223372036854775808"]
)
async def test_bad_upload_length_is_400(client, storage_view, value):
    response = await client.post("/files/", headers={**TUS, "Upload-Length": value})
    await assert_one_line_error(response, 400)
    assert storage_view.ids() == []


async def test_length_over_max_size_is_413(make_client, storage_view):
    client = await make_client(max_size=100)
    response = await client.post("/files/", headers={**TUS, "Upload-Length": "101"})
    await assert_one_line_error(response, 413)
    assert storage_view.ids() == []
    response = await client.post("/files/", headers={**TUS, "Upload-Length": "100"})
    assert response.status == 201


@pytest.mark.all_databases
async def test_zero_length_upload_is_complete_at_once(client):
    path = await create_upload(client, 0)
    response = await client.head(path, headers=TUS)
    assert response.status == 200
    assert response.headers["Upload-Offset"] == "0"
    assert response.headers["Upload-Length"] == "0"
    assert "Upload-Expires" not in response.headers
    response = await client.get(path)
    assert response.status == 200
    assert await response.read() == b""
    response = await client.patch(path, data=b"", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert response.status == 204
    assert response.headers["Upload-Offset"] == "0"


# --- metadata -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [
        "filename d29ybGQ=",
        "filename d29ybGQ=,filetype dGV4dC9wbGFpbg==",
        "is_confidential",
        "a YQ==,b,c Yw==",
        "key ",
        "k!#$%&'*+-.^_`|~ YQ==",
        "empty ,x eA==",
    ],
)
async def test_valid_metadata_is_echoed_verbatim(client, metadata):
    response = await client.post("/files/", headers={**TUS, "Upload-Length": "1", "Upload-Metadata": metadata})
    assert response.status == 201, await response.text()
    response = await client.head(path_of(response), headers=TUS)
    assert response.headers["Upload-Metadata"] == metadata.strip()


@pytest.mark.parametrize(
    "metadata",
    [
        "filename d29ybGQ",  # missing padding
        "filename d29y*GQ=",  # not base64
        "filename d29ybGQ===",
        "a YQ==,a Yg==",  # duplicate key
        "a,a",
        "my key YQ==",  # key with a space
        "a YQ==,,b Yg==",  # empty pair
        "a YQ==,",
        ",",
        "a  YQ==",  # two spaces
        "a YQ== extra",
        "k\u00e9y YQ==",  # non-ASCII key
        "a\tb YQ==",
    ],
)
async def test_invalid_metadata_is_400(client, storage_view, metadata):
    response = await client.post(
        "/files/", headers={**TUS, "Upload-Length": "1", "Upload-Metadata": metadata}
    )
    await assert_one_line_error(response, 400)
    assert storage_view.ids() == []


# --- creation-with-upload -----------------------------------------------------------------


@pytest.mark.all_databases
async def test_post_with_body(client):
    response = await client.post(
        "/files/", data=b"hello", headers={**PATCH_HEADERS, "Upload-Length": "11"}
    )
    assert response.status == 201
    assert response.headers["Upload-Offset"] == "5"
    assert "Upload-Expires" in response.headers
    path = path_of(response)
    response = await client.head(path, headers=TUS)
    assert response.headers["Upload-Offset"] == "5"
    response = await client.patch(path, data=b" world", headers={**PATCH_HEADERS, "Upload-Offset": "5"})
    assert response.status == 204
    assert await (await client.get(path)).read() == b"hello world"


async def test_post_with_whole_body_completes(client):
    response = await client.post("/files/", data=b"abc", headers={**PATCH_HEADERS, "Upload-Length": "3"})
    assert response.status == 201
    assert response.headers["Upload-Offset"] == "3"
    assert "Upload-Expires" not in response.headers
    response = await client.get(path_of(response))
    assert response.status == 200
    assert await response.read() == b"abc"


async def test_post_with_chunked_body(client):
    async def body():
        for part in (b"ab", b"cd", b"ef"):
            await asyncio.sleep(0)
            yield part

    response = await client.post("/files/", data=body(), headers={**PATCH_HEADERS, "Upload-Length": "6"})
    assert response.status == 201
    assert response.headers["Upload-Offset"] == "6"
    assert await (await client.get(path_of(response))).read() == b"abcdef"


async def test_post_body_longer_than_length_is_413_with_location(client):
    response = await client.post(
        "/files/", data=b"0123456789", headers={**PATCH_HEADERS, "Upload-Length": "5"}
    )
    await assert_one_line_error(response, 413)
    assert response.headers["Upload-Offset"] == "0"
    path = path_of(response)
    response = await client.head(path, headers=TUS)
    assert response.status == 200
    assert response.headers["Upload-Offset"] == "0"
    response = await client.patch(path, data=b"01234", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert response.status == 204
    assert await (await client.get(path)).read() == b"01234"


async def test_post_body_with_zero_length_is_413(client):
    response = await client.post("/files/", data=b"xyz", headers={**PATCH_HEADERS, "Upload-Length": "0"})
    await assert_one_line_error(response, 413)
    path = path_of(response)
    response = await client.patch(path, data=b"", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert response.status == 204
    response = await client.get(path)
    assert response.status == 200
    assert await response.read() == b""


async def test_post_body_over_max_size_with_deferred_length_is_413(make_client):
    client = await make_client(max_size=4)
    response = await client.post(
        "/files/", data=b"12345", headers={**PATCH_HEADERS, "Upload-Defer-Length": "1"}
    )
    await assert_one_line_error(response, 413)


@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "text/plain"])
async def test_post_body_with_wrong_content_type_is_415(client, storage_view, content_type):
    headers = {**TUS, "Upload-Length": "5"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = await client.post("/files/", data=b"hello", headers=headers, skip_auto_headers=["Content-Type"])
    await assert_one_line_error(response, 415)
    assert storage_view.ids() == []


async def test_post_with_empty_body_and_offset_content_type(client):
    response = await client.post("/files/", data=b"", headers={**PATCH_HEADERS, "Upload-Length": "5"})
    assert response.status == 201
    assert response.headers["Upload-Offset"] == "0"


async def test_post_with_body_and_expect_100_continue(client):
    response = await client.post(
        "/files/", data=b"hello", headers={**PATCH_HEADERS, "Upload-Length": "5"}, expect100=True
    )
    assert response.status == 201
    assert response.headers["Upload-Offset"] == "5"
    assert await (await client.get(path_of(response))).read() == b"hello"


async def test_post_with_body_and_checksum(client):
    import base64
    import hashlib

    digest = base64.b64encode(hashlib.sha1(b"hello").digest()).decode()
    response = await client.post(
        "/files/",
        data=b"hello",
        headers={**PATCH_HEADERS, "Upload-Length": "5", "Upload-Checksum": f"sha1 {digest}"},
    )
    assert response.status == 201
    assert response.headers["Upload-Offset"] == "5"
    bad = base64.b64encode(hashlib.sha1(b"other").digest()).decode()
    response = await client.post(
        "/files/",
        data=b"hello",
        headers={**PATCH_HEADERS, "Upload-Length": "5", "Upload-Checksum": f"sha1 {bad}"},
    )
    await assert_one_line_error(response, 460)
    response = await client.head(path_of(response), headers=TUS)
    assert response.headers["Upload-Offset"] == "0"


# --- the writes of an upload ------------------------------------------------------------


@pytest.mark.filesystem_only("a backend with a Finisher (S3) records the completion apart")
async def test_an_upload_filled_by_its_body_is_recorded_complete_in_the_same_write(client):
    """With the filesystem backend, nothing is left to do once the last bytes are synced:
    their offset and the completion go to the database in one statement."""
    statements: list[str] = []
    database = client.app[CONTEXT].store._db
    await database.connection.set_trace_callback(statements.append)
    database._batch.here.set_trace_callback(statements.append)  # single writes run there
    created = await client.post(
        "/files/", data=b"hello", headers={**PATCH_HEADERS, "Upload-Length": "5"}
    )
    assert created.status == 201 and created.headers["Upload-Offset"] == "5"
    path = await create_upload(client, 5)
    patched = await client.patch(path, data=b"world", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert patched.status == 204
    await database.connection.set_trace_callback(None)
    database._batch.here.set_trace_callback(None)
    writes = [s.split()[0] for s in statements if s.startswith(("INSERT", "UPDATE", "BEGIN"))]
    # Each upload: its row, then its last offset together with its completion.
    assert writes == ["INSERT", "UPDATE", "INSERT", "UPDATE"]
    for filled in (upload_id(path_of(created)), upload_id(path)):
        upload = await client.app[CONTEXT].store.get(filled)
        assert upload is not None and upload.is_complete and upload.offset == 5
    assert await (await client.get(path)).read() == b"world"
