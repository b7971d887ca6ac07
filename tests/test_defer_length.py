"""creation-defer-length: uploads whose length is told on a later PATCH."""

from __future__ import annotations

import base64
import hashlib

import pytest
from support.http import (
    PATCH_HEADERS,
    TUS,
    assert_one_line_error,
    create_upload,
    path_of,
)

pytestmark = pytest.mark.all_backends


async def create_deferred(client, **headers: str) -> str:
    return await create_upload(client, **{"Upload-Defer-Length": "1", **headers})


async def test_head_of_deferred_upload(client):
    path = await create_deferred(client)
    response = await client.head(path, headers=TUS)
    assert response.status == 200
    assert response.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in response.headers
    assert response.headers["Upload-Offset"] == "0"


async def test_patch_without_length_then_declare_it(client):
    path = await create_deferred(client)
    response = await client.patch(path, data=b"hello", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert response.status == 204
    assert response.headers["Upload-Offset"] == "5"
    response = await client.head(path, headers=TUS)
    assert response.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in response.headers
    response = await client.get(path)
    assert response.status == 409

    response = await client.patch(
        path, data=b" world", headers={**PATCH_HEADERS, "Upload-Offset": "5", "Upload-Length": "11"}
    )
    assert response.status == 204
    assert response.headers["Upload-Offset"] == "11"
    response = await client.head(path, headers=TUS)
    assert response.headers["Upload-Length"] == "11"
    assert response.headers["Upload-Offset"] == "11"
    assert "Upload-Defer-Length" not in response.headers
    response = await client.get(path)
    assert response.status == 200
    assert await response.read() == b"hello world"


async def test_declare_length_on_first_patch(client):
    path = await create_deferred(client)
    response = await client.patch(
        path, data=b"abc", headers={**PATCH_HEADERS, "Upload-Offset": "0", "Upload-Length": "6"}
    )
    assert response.status == 204
    response = await client.head(path, headers=TUS)
    assert response.headers["Upload-Length"] == "6"
    assert "Upload-Defer-Length" not in response.headers
    response = await client.patch(path, data=b"defg", headers={**PATCH_HEADERS, "Upload-Offset": "3"})
    await assert_one_line_error(response, 413)
    response = await client.patch(path, data=b"def", headers={**PATCH_HEADERS, "Upload-Offset": "3"})
    assert response.status == 204
    assert await (await client.get(path)).read() == b"abcdef"


async def test_declare_length_equal_to_offset_with_empty_patch_completes(client):
    path = await create_deferred(client)
    await client.patch(path, data=b"abc", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    response = await client.patch(
        path, data=b"", headers={**PATCH_HEADERS, "Upload-Offset": "3", "Upload-Length": "3"}
    )
    assert response.status == 204
    assert "Upload-Expires" not in response.headers
    response = await client.get(path)
    assert response.status == 200
    assert await response.read() == b"abc"


async def test_changing_declared_length_is_400(client):
    path = await create_deferred(client)
    response = await client.patch(
        path, data=b"ab", headers={**PATCH_HEADERS, "Upload-Offset": "0", "Upload-Length": "10"}
    )
    assert response.status == 204
    response = await client.patch(
        path, data=b"cd", headers={**PATCH_HEADERS, "Upload-Offset": "2", "Upload-Length": "12"}
    )
    await assert_one_line_error(response, 400)
    response = await client.head(path, headers=TUS)
    assert response.headers["Upload-Length"] == "10"
    assert response.headers["Upload-Offset"] == "2"
    # repeating the same length is harmless
    response = await client.patch(
        path, data=b"cd", headers={**PATCH_HEADERS, "Upload-Offset": "2", "Upload-Length": "10"}
    )
    assert response.status == 204
    assert response.headers["Upload-Offset"] == "4"


async def test_upload_length_on_patch_of_non_deferred_upload_must_match(client):
    response = await client.post("/files/", headers={**TUS, "Upload-Length": "4"})
    path = path_of(response)
    response = await client.patch(
        path, data=b"ab", headers={**PATCH_HEADERS, "Upload-Offset": "0", "Upload-Length": "5"}
    )
    await assert_one_line_error(response, 400)
    response = await client.head(path, headers=TUS)
    assert response.headers["Upload-Offset"] == "0"
    assert response.headers["Upload-Length"] == "4"


async def test_length_below_offset_is_400(client):
    path = await create_deferred(client)
    await client.patch(path, data=b"hello", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    response = await client.patch(
        path, data=b"", headers={**PATCH_HEADERS, "Upload-Offset": "5", "Upload-Length": "4"}
    )
    await assert_one_line_error(response, 400)
    response = await client.head(path, headers=TUS)
    assert response.headers["Upload-Defer-Length"] == "1"
    assert response.headers["Upload-Offset"] == "5"


async def test_bad_declared_length_is_400(client):
    path = await create_deferred(client)
    for value in ("-1", "abc", "1.5", ""):
        response = await client.patch(
            path, data=b"x", headers={**PATCH_HEADERS, "Upload-Offset": "0", "Upload-Length": value}
        )
        await assert_one_line_error(response, 400)
    response = await client.head(path, headers=TUS)
    assert response.headers["Upload-Defer-Length"] == "1"
    assert response.headers["Upload-Offset"] == "0"


async def test_declared_length_over_max_size_is_413(make_client):
    client = await make_client(max_size=10)
    path = await create_deferred(client)
    response = await client.patch(
        path, data=b"abc", headers={**PATCH_HEADERS, "Upload-Offset": "0", "Upload-Length": "11"}
    )
    await assert_one_line_error(response, 413)
    response = await client.head(path, headers=TUS)
    assert response.headers["Upload-Defer-Length"] == "1"
    assert response.headers["Upload-Offset"] == "0"


async def test_deferred_data_beyond_max_size_is_413(make_client):
    client = await make_client(max_size=10)
    path = await create_deferred(client)
    response = await client.patch(path, data=b"0123456", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert response.status == 204
    response = await client.patch(path, data=b"7890", headers={**PATCH_HEADERS, "Upload-Offset": "7"})
    await assert_one_line_error(response, 413)
    response = await client.head(path, headers=TUS)
    assert response.headers["Upload-Offset"] == "7"

    async def body():
        yield b"78"
        yield b"90"

    response = await client.patch(path, data=body(), headers={**PATCH_HEADERS, "Upload-Offset": "7"})
    await assert_one_line_error(response, 413)
    response = await client.head(path, headers=TUS)
    assert response.headers["Upload-Offset"] == "7"
    response = await client.patch(
        path, data=b"789", headers={**PATCH_HEADERS, "Upload-Offset": "7", "Upload-Length": "10"}
    )
    assert response.status == 204
    assert await (await client.get(path)).read() == b"0123456789"


async def test_deferred_partial_upload(client):
    path = await create_deferred(client, **{"Upload-Concat": "partial"})
    response = await client.head(path, headers=TUS)
    assert response.headers["Upload-Concat"] == "partial"
    assert response.headers["Upload-Defer-Length"] == "1"
    response = await client.patch(
        path, data=b"part", headers={**PATCH_HEADERS, "Upload-Offset": "0", "Upload-Length": "4"}
    )
    assert response.status == 204
    response = await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{path}"})
    assert response.status == 201
    response = await client.get(path_of(response))
    assert await response.read() == b"part"


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_patch_refused_for_its_body_records_no_length(make_client, chunked):
    """Upload-Length comes with the PATCH's bytes: a PATCH refused with 413 or 460 leaves
    the length deferred, and a later PATCH may declare another."""
    client = await make_client()
    path = await create_upload(client, None, **{"Upload-Defer-Length": "1"})

    async def chunks(data: bytes):
        yield data

    def body(data: bytes):
        return chunks(data) if chunked else data

    response = await client.patch(path, data=body(b"0123456789"), headers={
        **PATCH_HEADERS, "Upload-Offset": "0", "Upload-Length": "5",
    })
    await assert_one_line_error(response, 413)
    response = await client.patch(path, data=body(b"01234"), headers={
        **PATCH_HEADERS, "Upload-Offset": "0", "Upload-Length": "5",
        "Upload-Checksum": "sha1 " + base64.b64encode(hashlib.sha1(b"other").digest()).decode(),
    })
    await assert_one_line_error(response, 460)
    response = await client.head(path, headers=TUS)
    assert response.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in response.headers
    response = await client.patch(path, data=body(b"0123456"), headers={
        **PATCH_HEADERS, "Upload-Offset": "0", "Upload-Length": "7",
    })
    assert response.status == 204
    assert await (await client.get(path)).read() == b"0123456"
