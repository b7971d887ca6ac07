"""GET: downloading finished uploads, ranges, caching and safe content headers."""

from __future__ import annotations

import base64
import os
import re

import pytest
from support.http import (
    PATCH_HEADERS,
    TUS,
    assert_one_line_error,
    create_upload,
    path_of,
    raw_get,
)
from support.storage import data_file

pytestmark = pytest.mark.all_backends

DATA = b"0123456789"


def b64(value: str | bytes) -> str:
    raw = value.encode() if isinstance(value, str) else value
    return base64.b64encode(raw).decode()


async def finished(client, data: bytes = DATA, metadata: str | None = None) -> str:
    headers = {} if metadata is None else {"Upload-Metadata": metadata}
    path = await create_upload(client, len(data), **headers)
    if data:
        response = await client.patch(path, data=data, headers={**PATCH_HEADERS, "Upload-Offset": "0"})
        assert response.status == 204
    return path


async def test_get_finished_upload(client):
    path = await finished(client)
    response = await client.get(path)
    assert response.status == 200
    assert await response.read() == DATA
    assert response.headers["Content-Length"] == "10"
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Disposition"] == "attachment"
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "ETag" in response.headers
    assert "Last-Modified" in response.headers


async def test_get_needs_no_tus_resumable(client):
    path = await finished(client)
    response = await client.get(path, headers={"Tus-Resumable": "0.0.1"})
    assert response.status == 200
    assert await response.read() == DATA


async def test_get_unfinished_upload_is_409(client):
    path = await create_upload(client, 20)
    response = await client.get(path)
    await assert_one_line_error(response, 409)
    await client.patch(path, data=DATA, headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    response = await client.get(path)
    await assert_one_line_error(response, 409)


async def test_get_unknown_upload_is_404(client):
    response = await client.get("/files/" + "e" * 32)
    await assert_one_line_error(response, 404)


@pytest.mark.parametrize(
    "range_header, body, content_range",
    [
        ("bytes=0-3", b"0123", "bytes 0-3/10"),
        ("bytes=5-", b"56789", "bytes 5-9/10"),
        ("bytes=-3", b"789", "bytes 7-9/10"),
        ("bytes=0-0", b"0", "bytes 0-0/10"),
        ("bytes=9-9", b"9", "bytes 9-9/10"),
        ("bytes=2-100", b"23456789", "bytes 2-9/10"),
        ("bytes=-100", DATA, "bytes 0-9/10"),
        ("bytes=0-", DATA, "bytes 0-9/10"),
    ],
)
async def test_single_range(client, range_header, body, content_range):
    path = await finished(client)
    response = await client.get(path, headers={"Range": range_header})
    assert response.status == 206
    assert await response.read() == body
    assert response.headers["Content-Range"] == content_range
    assert response.headers["Content-Length"] == str(len(body))


@pytest.mark.parametrize("range_header", ["bytes=10-", "bytes=10-20", "bytes=100-200", "bytes=-0"])
async def test_unsatisfiable_range_is_416(client, range_header):
    path = await finished(client)
    response = await client.get(path, headers={"Range": range_header})
    await assert_one_line_error(response, 416)
    assert response.headers["Content-Range"] == "bytes */10"


async def test_range_on_empty_upload_is_416(client):
    path = await finished(client, b"")
    response = await client.get(path, headers={"Range": "bytes=0-"})
    await assert_one_line_error(response, 416)
    assert response.headers["Content-Range"] == "bytes */0"
    response = await client.get(path)
    assert response.status == 200
    assert await response.read() == b""


@pytest.mark.parametrize(
    "range_header",
    [
        "bytes=0-1,3-4",
        "bytes=0-1, 5-6",
        "bytes=5-2",
        "bytes=abc",
        "bytes=-",
        "items=0-3",
        "bytes 0-3",
        "0-3",
        "bytes=--3",
        "bytes=1-2-3",
        "bytes=\u00bd-1",
    ],
)
async def test_multi_or_malformed_range_sends_everything(client, range_header):
    path = await finished(client)
    response = await client.get(path, headers={"Range": range_header})
    assert response.status == 200
    assert await response.read() == DATA
    assert "Content-Range" not in response.headers


async def test_etag_and_if_none_match(client):
    path = await finished(client)
    response = await client.get(path)
    etag = response.headers["ETag"]
    assert re.fullmatch(r'(W/)?"[^"]+"', etag)
    response = await client.get(path, headers={"If-None-Match": etag})
    assert response.status == 304
    assert await response.read() == b""
    assert response.headers["ETag"] == etag
    response = await client.get(path, headers={"If-None-Match": f'"other", {etag}'})
    assert response.status == 304
    response = await client.get(path, headers={"If-None-Match": "*"})
    assert response.status == 304
    response = await client.get(path, headers={"If-None-Match": '"something-else"'})
    assert response.status == 200
    assert await response.read() == DATA


async def test_if_range(client):
    path = await finished(client)
    etag = (await client.get(path)).headers["ETag"]
    response = await client.get(path, headers={"Range": "bytes=0-1", "If-Range": etag})
    assert response.status == 206
    assert await response.read() == b"01"
    response = await client.get(path, headers={"Range": "bytes=0-1", "If-Range": '"stale"'})
    assert response.status == 200
    assert await response.read() == DATA


@pytest.mark.parametrize(
    "filetype, content_type, disposition",
    [
        ("image/png", "image/png", "inline"),
        ("IMAGE/PNG", "image/png", "inline"),
        ("image/png; charset=x", "image/png", "inline"),
        ("image/jpeg", "image/jpeg", "inline"),
        ("application/pdf", "application/pdf", "inline"),
        ("text/plain", "text/plain; charset=utf-8", "inline"),
        ("text/html", "application/octet-stream", "attachment"),
        ("image/svg+xml", "application/octet-stream", "attachment"),
        ("application/xhtml+xml", "application/octet-stream", "attachment"),
        ("application/javascript", "application/octet-stream", "attachment"),
        ("text/xml", "application/octet-stream", "attachment"),
        ("text/html\r\nX-Injected: 1", "application/octet-stream", "attachment"),
        ("", "application/octet-stream", "attachment"),
    ],
)
async def test_content_type_from_filetype(client, filetype, content_type, disposition):
    path = await finished(client, metadata=f"filetype {b64(filetype)}")
    response = await client.get(path)
    assert response.status == 200
    assert response.headers["Content-Type"] == content_type
    assert response.headers["Content-Disposition"] == disposition
    assert "X-Injected" not in response.headers
    assert await response.read() == DATA


async def test_plain_filename(client):
    path = await finished(client, metadata=f"filename {b64('report.pdf')},filetype {b64('application/pdf')}")
    response = await client.get(path)
    assert response.headers["Content-Disposition"] == 'inline; filename="report.pdf"'


async def test_utf8_filename_uses_rfc6266_filename_star(client):
    path = await finished(client, metadata=f"filename {b64('résumé ✓.txt')}")
    response = await client.get(path)
    disposition = response.headers["Content-Disposition"]
    assert disposition.isascii()
    assert disposition.startswith('attachment; filename="')
    match = re.search(r"filename\*=UTF-8''([A-Za-z0-9!#$&+.^_`|~%-]+)$", disposition)
    assert match, disposition
    from urllib.parse import unquote

    assert unquote(match.group(1), encoding="utf-8") == "résumé ✓.txt"
    fallback = re.search(r'filename="([^"]*)"', disposition).group(1)
    assert fallback.isascii() and fallback


@pytest.mark.parametrize(
    "filename",
    [
        'a"b.txt',
        "evil\r\nSet-Cookie: x=1.txt",
        "line\nbreak",
        'x"; filename*=UTF-8\'\'evil.html',
        "back\\slash",
        "../../etc/passwd",
        "\x00\x01\x7f",
        "tab\there",
        '"',
        "\u2028sep\u2029",
        "a" * 1000,
    ],
)
async def test_hostile_filename_never_breaks_header(client, filename):
    path = await finished(client, metadata=f"filename {b64(filename)}")
    response = await client.get(path)
    assert response.status == 200
    assert await response.read() == DATA
    assert "Set-Cookie" not in response.headers
    disposition = response.headers["Content-Disposition"]
    assert disposition.isascii() and disposition.isprintable()
    assert re.fullmatch(
        r"attachment(; filename=\"[^\"\\]*\")?(; filename\*=UTF-8''[A-Za-z0-9!#$&+.^_`|~%-]+)?",
        disposition,
    ), disposition
    assert "/" not in disposition.split("filename*")[0]


async def test_non_utf8_filename_bytes(client):
    path = await finished(client, metadata=f"filename {b64(bytes([0xff, 0xfe, 0x41]))}")
    response = await client.get(path)
    assert response.status == 200
    disposition = response.headers["Content-Disposition"]
    assert disposition.isascii() and disposition.isprintable()


async def test_final_upload_download(client):
    a = await create_upload(client, 3, **{"Upload-Concat": "partial"})
    await client.patch(a, data=b"abc", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    b = await create_upload(client, 3, **{"Upload-Concat": "partial"})
    await client.patch(b, data=b"def", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    response = await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{a} {b}"})
    response = await client.get(path_of(response), headers={"Range": "bytes=2-3"})
    assert response.status == 206
    assert await response.read() == b"cd"
    assert response.headers["Content-Range"] == "bytes 2-3/6"


@pytest.mark.filesystem_only("it cuts the upload's file short; test_s3.py breaks off an S3 download")
async def test_a_download_that_fails_midway_cuts_the_connection(client, settings):
    """The stored file is shorter than the upload: the 200 went out with the full
    Content-Length, so the connection is cut after what could be read, and no error
    response is written into the body."""
    data = os.urandom(3 * 1024 * 1024)
    path = await finished(client, data)
    os.truncate(data_file(settings, path), len(data) // 2)
    head, body, ended = await raw_get(client.port, path)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert f"Content-Length: {len(data)}".encode() in head
    assert len(body) < len(data)
    assert body == data[: len(body)]
    assert b"HTTP/1." not in body and b"internal server error" not in body
    assert ended
    # The server goes on serving.
    response = await client.get(path, headers={"Range": "bytes=0-9"})
    assert response.status == 206 and await response.read() == data[:10]


async def test_disable_download_refuses_get_but_head_still_answers(make_client):
    client = await make_client(disable_download=True)
    path = await finished(client)
    for response in (
        await client.get(path),
        await client.post(path, headers={**TUS, "X-HTTP-Method-Override": "GET"}),
    ):
        await assert_one_line_error(response, 405)
        allowed = {method.strip() for method in response.headers["Allow"].split(",")}
        assert allowed == {"HEAD", "PATCH", "DELETE", "OPTIONS"}
    head = await client.head(path, headers=TUS)
    assert head.status == 200
    assert head.headers["Upload-Offset"] == str(len(DATA))
    preflight = await client.options(
        path, headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"}
    )
    assert preflight.status == 204
    methods = {m.strip() for m in preflight.headers["Access-Control-Allow-Methods"].split(",")}
    assert methods == {"POST", "HEAD", "PATCH", "DELETE", "OPTIONS", "PUT"}  # PUT: the draft's
