"""tus 1.0.0 core protocol: OPTIONS, Tus-Resumable, HEAD, PATCH, method override, routing."""

from __future__ import annotations

import asyncio
import time

import pytest
from support.http import (
    PATCH_HEADERS,
    TUS,
    assert_one_line_error,
    create_upload,
    head_offset,
    path_of,
    upload_id,
)

from server.context import CONTEXT

pytestmark = pytest.mark.all_backends

EXPECTED_EXTENSIONS = {
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "expiration",
    "checksum",
    "termination",
    "concatenation",
    "concatenation-unfinished",
}


# --- OPTIONS ------------------------------------------------------------------------------


async def test_options_advertises_version_extensions_and_checksums(client):
    response = await client.options("/files/")
    assert response.status == 204
    assert response.headers["Tus-Version"] == "1.0.0"
    assert set(response.headers["Tus-Extension"].split(",")) == EXPECTED_EXTENSIONS
    algorithms = response.headers["Tus-Checksum-Algorithm"].split(",")
    assert "sha1" in algorithms
    assert {"md5", "sha256", "sha512", "crc32"} <= set(algorithms)
    assert "Tus-Max-Size" not in response.headers


async def test_options_has_max_size_when_configured(make_client):
    client = await make_client(max_size=1000)
    response = await client.options("/files/")
    assert response.status == 204
    assert response.headers["Tus-Max-Size"] == "1000"


async def test_options_without_expiration_does_not_advertise_it(make_client):
    client = await make_client(expiration=0)
    response = await client.options("/files/")
    assert "expiration" not in response.headers["Tus-Extension"].split(",")
    path = await create_upload(client, 5)
    response = await client.head(path, headers=TUS)
    assert "Upload-Expires" not in response.headers


async def test_options_ignores_bogus_tus_resumable(client):
    response = await client.options("/files/", headers={"Tus-Resumable": "0.1.2"})
    assert response.status == 204
    assert response.headers["Tus-Version"] == "1.0.0"
    response = await client.options("/files/")
    assert response.status == 204


async def test_options_on_upload_url(client):
    path = await create_upload(client, 5)
    response = await client.options(path)
    assert response.status == 204
    assert response.headers["Tus-Version"] == "1.0.0"


# --- Tus-Resumable ------------------------------------------------------------------------


@pytest.mark.parametrize("version", [None, "0.2.2", "1.0", "2.0.0", ""])
async def test_post_without_supported_version_is_412_and_creates_nothing(client, storage_view, version):
    headers = {"Upload-Length": "5"}
    if version is not None:
        headers["Tus-Resumable"] = version
    response = await client.post("/files/", headers=headers)
    assert response.status == 412
    assert response.headers["Tus-Version"] == "1.0.0"
    assert "Location" not in response.headers
    assert storage_view.ids() == []


@pytest.mark.parametrize("version", [None, "0.2.2"])
async def test_patch_without_supported_version_is_412_and_writes_nothing(client, version):
    path = await create_upload(client, 5)
    headers = {"Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}
    if version is not None:
        headers["Tus-Resumable"] = version
    response = await client.patch(path, data=b"hello", headers=headers)
    assert response.status == 412
    assert response.headers["Tus-Version"] == "1.0.0"
    assert "Upload-Offset" not in response.headers
    assert await head_offset(client, path) == "0"


@pytest.mark.parametrize("version", [None, "0.2.2"])
async def test_head_without_supported_version_is_412(client, version):
    path = await create_upload(client, 5)
    headers = {} if version is None else {"Tus-Resumable": version}
    response = await client.head(path, headers=headers)
    assert response.status == 412
    assert response.headers["Tus-Version"] == "1.0.0"
    assert "Upload-Offset" not in response.headers


@pytest.mark.parametrize("version", [None, "0.2.2"])
async def test_delete_without_supported_version_is_412_and_deletes_nothing(client, version):
    path = await create_upload(client, 5)
    headers = {} if version is None else {"Tus-Resumable": version}
    response = await client.delete(path, headers=headers)
    assert response.status == 412
    assert response.headers["Tus-Version"] == "1.0.0"
    assert await head_offset(client, path) == "0"


async def test_responses_carry_tus_resumable(client):
    response = await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
    assert response.status == 201
    assert response.headers["Tus-Resumable"] == "1.0.0"
    path = path_of(response)
    for response in (
        await client.head(path, headers=TUS),
        await client.patch(path, data=b"abc", headers={**PATCH_HEADERS, "Upload-Offset": "0"}),
        await client.head("/files/" + "0" * 32, headers=TUS),
        await client.post("/files/", headers={"Upload-Length": "3"}),
    ):
        assert response.headers["Tus-Resumable"] == "1.0.0", response.status


# --- HEAD ---------------------------------------------------------------------------------


@pytest.mark.all_databases
async def test_head_of_fresh_upload(client):
    metadata = "filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential,empty "
    path = await create_upload(client, 100, **{"Upload-Metadata": metadata})
    response = await client.head(path, headers=TUS)
    assert response.status == 200
    assert response.headers["Upload-Offset"] == "0"
    assert response.headers["Upload-Length"] == "100"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Upload-Metadata"] == metadata.strip()
    assert "Upload-Defer-Length" not in response.headers
    assert await response.read() == b""


async def test_head_without_metadata_has_no_metadata_header(client):
    path = await create_upload(client, 1)
    response = await client.head(path, headers=TUS)
    assert "Upload-Metadata" not in response.headers


@pytest.mark.all_databases
async def test_head_of_complete_upload(client):
    path = await create_upload(client, 4)
    response = await client.patch(path, data=b"data", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert response.status == 204
    response = await client.head(path, headers=TUS)
    assert response.status == 200
    assert response.headers["Upload-Offset"] == "4"
    assert response.headers["Upload-Length"] == "4"
    assert response.headers["Cache-Control"] == "no-store"
    assert "Upload-Expires" not in response.headers
    assert await response.read() == b""


async def test_head_of_unknown_upload_is_404_without_offset(client):
    response = await client.head("/files/" + "a" * 32, headers=TUS)
    assert response.status == 404
    assert "Upload-Offset" not in response.headers


# --- PATCH --------------------------------------------------------------------------------


@pytest.mark.all_databases
async def test_patch_appends_and_reports_offset(client):
    path = await create_upload(client, 10)
    response = await client.patch(path, data=b"01234", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert response.status == 204
    assert response.headers["Upload-Offset"] == "5"
    assert await response.read() == b""
    response = await client.patch(path, data=b"56789", headers={**PATCH_HEADERS, "Upload-Offset": "5"})
    assert response.status == 204
    assert response.headers["Upload-Offset"] == "10"
    response = await client.get(path)
    assert await response.read() == b"0123456789"


@pytest.mark.parametrize(
    "content_type", [None, "application/octet-stream", "text/plain", "application/offset+octet"]
)
async def test_patch_with_wrong_content_type_is_415(client, content_type):
    path = await create_upload(client, 5)
    headers = {**TUS, "Upload-Offset": "0"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = await client.patch(
        path, data=b"hello", headers=headers, skip_auto_headers=["Content-Type"]
    )
    await assert_one_line_error(response, 415)
    assert await head_offset(client, path) == "0"


async def test_patch_content_type_with_parameters_is_accepted(client):
    path = await create_upload(client, 2)
    headers = {**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream; x=y"}
    response = await client.patch(path, data=b"ok", headers=headers)
    assert response.status == 204
    assert response.headers["Upload-Offset"] == "2"


@pytest.mark.parametrize(
    "offset", [None, "-1", "abc", "1.5", "0x0", "", "+0", "99999999999999999999999", "1e3", "0 1"]
)
async def test_patch_with_bad_upload_offset_is_400(client, offset):
    path = await create_upload(client, 5)
    headers = dict(PATCH_HEADERS)
    if offset is not None:
        headers["Upload-Offset"] = offset
    response = await client.patch(path, data=b"hello", headers=headers)
    await assert_one_line_error(response, 400)
    assert await head_offset(client, path) == "0"


@pytest.mark.all_databases
@pytest.mark.parametrize("offset", ["0", "2", "7"])
async def test_patch_at_wrong_offset_is_409_and_changes_nothing(client, offset):
    path = await create_upload(client, 10)
    response = await client.patch(path, data=b"abcd", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert response.headers["Upload-Offset"] == "4"
    response = await client.patch(path, data=b"xyz", headers={**PATCH_HEADERS, "Upload-Offset": offset})
    await assert_one_line_error(response, 409)
    assert await head_offset(client, path) == "4"
    response = await client.patch(path, data=b"efghij", headers={**PATCH_HEADERS, "Upload-Offset": "4"})
    assert response.status == 204
    assert await (await client.get(path)).read() == b"abcdefghij"


async def test_zero_byte_patch_keeps_offset(client):
    path = await create_upload(client, 5)
    response = await client.patch(path, data=b"", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert response.status == 204
    assert response.headers["Upload-Offset"] == "0"
    assert await head_offset(client, path) == "0"


async def test_zero_byte_patch_on_complete_upload(client):
    path = await create_upload(client, 3)
    await client.patch(path, data=b"abc", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    response = await client.patch(path, data=b"", headers={**PATCH_HEADERS, "Upload-Offset": "3"})
    assert response.status == 204
    assert response.headers["Upload-Offset"] == "3"
    response = await client.patch(path, data=b"x", headers={**PATCH_HEADERS, "Upload-Offset": "3"})
    await assert_one_line_error(response, 413)
    assert await (await client.get(path)).read() == b"abc"


async def test_patch_longer_than_length_is_413_and_stores_nothing(client, storage_view):
    path = await create_upload(client, 5)
    response = await client.patch(path, data=b"123456", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    await assert_one_line_error(response, 413)
    assert await head_offset(client, path) == "0"
    response = await client.patch(path, data=b"12", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert response.headers["Upload-Offset"] == "2"
    response = await client.patch(path, data=b"3456", headers={**PATCH_HEADERS, "Upload-Offset": "2"})
    await assert_one_line_error(response, 413)
    assert await head_offset(client, path) == "2"
    assert storage_view.size(path) == 2


async def chunks(*parts: bytes):
    for part in parts:
        await asyncio.sleep(0)
        yield part


async def test_chunked_patch(client):
    path = await create_upload(client, 14)
    response = await client.patch(
        path, data=chunks(b"hello ", b"chunked", b"!"), headers={**PATCH_HEADERS, "Upload-Offset": "0"}
    )
    assert response.status == 204
    assert response.headers["Upload-Offset"] == "14"
    assert await (await client.get(path)).read() == b"hello chunked!"


async def test_chunked_patch_longer_than_length_is_413_and_stores_nothing(client):
    path = await create_upload(client, 10)
    response = await client.patch(
        path, data=chunks(b"12345", b"67890", b"X"), headers={**PATCH_HEADERS, "Upload-Offset": "0"}
    )
    await assert_one_line_error(response, 413)
    assert await head_offset(client, path) == "0"
    response = await client.patch(path, data=b"0123456789", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert response.status == 204
    assert await (await client.get(path)).read() == b"0123456789"


async def test_chunked_patch_too_long_after_intermediate_commits(make_client):
    """A body that breaks the length after some of it was committed must leave a usable upload.

    With ``commit_bytes=1`` every chunk is committed as it arrives; the generator waits
    (bounded) until the server recorded the first chunk before it sends the excess.
    """
    client = await make_client(commit_bytes=1)
    path = await create_upload(client, 10)
    store = client.app[CONTEXT].store
    ident = upload_id(path)

    async def body():
        yield b"12345"
        deadline = time.monotonic() + 5
        while (await store.get(ident)).offset < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        yield b"67890X"

    response = await client.patch(path, data=body(), headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    await assert_one_line_error(response, 413)
    offset = await head_offset(client, path)
    remaining = b"1234567890"[int(offset) :]
    response = await client.patch(path, data=remaining, headers={**PATCH_HEADERS, "Upload-Offset": offset})
    assert response.status == 204, await response.text()
    assert await (await client.get(path)).read() == b"1234567890"


async def test_patch_with_expect_100_continue(client):
    path = await create_upload(client, 5)
    response = await client.patch(
        path, data=b"hello", headers={**PATCH_HEADERS, "Upload-Offset": "0"}, expect100=True
    )
    assert response.status == 204
    assert response.headers["Upload-Offset"] == "5"
    assert await (await client.get(path)).read() == b"hello"


async def test_patch_on_unknown_upload_is_404(client):
    response = await client.patch(
        "/files/" + "b" * 32, data=b"x", headers={**PATCH_HEADERS, "Upload-Offset": "0"}
    )
    await assert_one_line_error(response, 404)
    assert "Upload-Offset" not in response.headers


# --- X-HTTP-Method-Override ---------------------------------------------------------------


async def test_method_override_patch(client):
    path = await create_upload(client, 5)
    response = await client.post(
        path,
        data=b"hello",
        headers={**PATCH_HEADERS, "Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"},
    )
    assert response.status == 204
    assert response.headers["Upload-Offset"] == "5"
    assert await head_offset(client, path) == "5"


async def test_method_override_head(client):
    path = await create_upload(client, 5, **{"Upload-Metadata": "a YQ=="})
    response = await client.post(path, headers={**TUS, "X-HTTP-Method-Override": "HEAD"})
    assert response.status == 200
    assert response.headers["Upload-Offset"] == "0"
    assert response.headers["Upload-Length"] == "5"
    assert response.headers["Upload-Metadata"] == "a YQ=="
    assert response.headers["Cache-Control"] == "no-store"


async def test_method_override_delete(client):
    path = await create_upload(client, 5)
    response = await client.post(path, headers={**TUS, "X-HTTP-Method-Override": "DELETE"})
    assert response.status == 204
    response = await client.head(path, headers=TUS)
    assert response.status == 410


async def test_method_override_needs_tus_resumable(client):
    path = await create_upload(client, 5)
    response = await client.post(path, headers={"X-HTTP-Method-Override": "DELETE"})
    assert response.status == 412
    assert await head_offset(client, path) == "0"


async def test_method_override_only_overrides_a_post(client):
    """A HEAD that names GET stays a HEAD: the answer has no body, and the next response
    on the same connection is read as that response, not as leftover upload bytes."""
    path = await create_upload(client, 10)
    response = await client.patch(path, data=b"HTTP/1.1 x", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert response.status == 204
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(
            f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
            f"X-HTTP-Method-Override: GET\r\n\r\n"
            f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        async with asyncio.timeout(5):
            received = await reader.read()
    finally:
        writer.close()
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Upload-Offset: 10" in head
    assert rest.startswith(b"HTTP/1.1 200 OK") and rest.endswith(b"\r\n\r\nok\n")


async def test_method_override_unknown_method_is_405(client):
    path = await create_upload(client, 5)
    response = await client.post(path, headers={**TUS, "X-HTTP-Method-Override": "FROB"})
    await assert_one_line_error(response, 405)
    assert "PATCH" in response.headers["Allow"]


# --- routing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/files/..%2f..",
        "/files/..%2F..%2Fetc%2Fpasswd",
        "/files/a.b",
        "/files/" + "a" * 200,
        "/files/-abc",
        "/files/abc%00",
        "/files/abc/def",
        "/files/%2e%2e",
    ],
)
@pytest.mark.parametrize("method", ["HEAD", "PATCH", "DELETE", "GET"])
async def test_invalid_upload_paths_are_404(client, path, method):
    from yarl import URL

    response = await client.request(
        method, URL(path, encoded=True), headers={**PATCH_HEADERS, "Upload-Offset": "0"}
    )
    assert response.status == 404
    assert "Upload-Offset" not in response.headers
    if method != "HEAD":
        await assert_one_line_error(response, 404)


@pytest.mark.parametrize("method", ["PUT", "PROPFIND", "TRACE", "MKCOL"])
async def test_unknown_method_on_upload_is_405(client, method):
    path = await create_upload(client, 5)
    response = await client.request(method, path, headers=TUS)
    await assert_one_line_error(response, 405)
    assert "Allow" in response.headers
    assert await head_offset(client, path) == "0"


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE", "PUT"])
async def test_unsupported_method_on_collection_is_405(client, method):
    response = await client.request(method, "/files/", headers=TUS)
    await assert_one_line_error(response, 405)
    assert set(response.headers["Allow"].replace(" ", "").split(",")) == {"POST", "OPTIONS"}


async def test_collection_without_trailing_slash(client):
    response = await client.post("/files", headers={**TUS, "Upload-Length": "1"})
    assert response.status == 201
    assert "/files/" in response.headers["Location"]


async def test_custom_base_path(make_client):
    client = await make_client(base_path="/api/uploads/")
    response = await client.post("/api/uploads/", headers={**TUS, "Upload-Length": "2"})
    assert response.status == 201
    location = response.headers["Location"]
    assert location.startswith(str(client.make_url("/api/uploads/")))
    path = location[location.index("/api/uploads/") :]
    response = await client.patch(path, data=b"hi", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert response.status == 204
    assert await (await client.get(path)).read() == b"hi"
    response = await client.post("/files/", headers={**TUS, "Upload-Length": "2"})
    assert response.status == 404
