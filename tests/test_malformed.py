"""Malformed input: every bad request gets a 4xx with a one-line plain-text reason, never a 5xx.

Requests the aiohttp test client cannot (or will not) send are written byte by byte
to a raw loopback socket of the in-process test server, or of a real aiotusd process.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time

import pytest
from support.http import (
    PATCH_HEADERS,
    TUS,
    RawResponse,
    assert_one_line_error,
    create_upload,
    head_offset,
    parse_response,
    upload_id,
)
from support.processes import ServerProcess
from support.storage import data_file, data_files
from support.waiting import poll

from server.config import Settings
from server.context import CONTEXT


async def read_response(reader: asyncio.StreamReader, timeout: float = 5.0) -> RawResponse:
    """Read one response (headers plus Content-Length body), skipping 1xx interim responses."""
    while True:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        response = parse_response(head)
        if 100 <= response.status < 200:
            continue
        length = int(response.headers.get("content-length", "0"))
        body = await asyncio.wait_for(reader.readexactly(length), timeout) if length else b""
        return RawResponse(response.status, response.headers, body)


async def raw_request(host: str, port: int, data: bytes, timeout: float = 5.0) -> RawResponse:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_response(reader, timeout)
    finally:
        writer.close()


async def raw(client, data: bytes) -> RawResponse:
    return await raw_request(client.server.host, client.server.port, data)


def assert_one_line_4xx(response: RawResponse, status: int | None = None) -> None:
    assert 400 <= response.status < 500, (response.status, response.body)
    if status is not None:
        assert response.status == status, (response.status, response.body)
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    text = response.body.decode("utf-8")
    assert text.endswith("\n") and text.count("\n") == 1 and text.strip(), text


def request(method: str, path: str, *headers: bytes, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: localhost", *headers]
    if body and not any(h.lower().startswith((b"content-length", b"transfer-encoding")) for h in headers):
        lines.append(b"Content-Length: " + str(len(body)).encode())
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# --- headers with bytes that are not UTF-8 ------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        b"Upload-Metadata: k\xff\xfe YQ==",
        b"Upload-Metadata: key \xff\xfe==",
        b"Upload-Metadata: filename " + base64.b64encode(b"ok") + b",\xc3\x28 YQ==",
        b"Upload-Concat: final;/files/\xff\xfe",
        b"Upload-Concat: \xff",
        b"Upload-Length: \xd9\xa3",  # ARABIC-INDIC DIGIT THREE
        b"Upload-Length: \xef\xbc\x95",  # FULLWIDTH DIGIT FIVE
        b"Upload-Defer-Length: \xc2\xb9",  # SUPERSCRIPT ONE
        b"X-HTTP-Method-Override: \xff\xfe",
        b"X-HTTP-Method-Override: PATCH\xff",
        b"Upload-Checksum: \xff\xfe abc=",
    ],
)
async def test_non_utf8_header_on_post(client, settings, header):
    data = request("POST", "/files/", b"Tus-Resumable: 1.0.0", b"Upload-Length: 1", header)
    if header.startswith(b"Upload-Checksum"):
        data = request(
            "POST", "/files/", b"Tus-Resumable: 1.0.0", b"Upload-Length: 1",
            b"Content-Type: application/offset+octet-stream", header, body=b"x",
        )
    if header.startswith((b"Upload-Length", b"Upload-Defer-Length", b"Upload-Concat: final")):
        data = request("POST", "/files/", b"Tus-Resumable: 1.0.0", header)
    response = await raw(client, data)
    assert_one_line_4xx(response)
    assert data_files(settings) == []


@pytest.mark.parametrize(
    "header",
    [
        b"Upload-Offset: \xd9\xa0",  # ARABIC-INDIC DIGIT ZERO
        b"Upload-Offset: \xff",
        b"Upload-Checksum: sha1 \xff\xfe",
        b"Upload-Checksum: \xe2\x9c\x93 YQ==",
        b"Upload-Length: \xef\xbc\x95",
        b"X-HTTP-Method-Override: \xe2\x9c\x93",
        b"Tus-Resumable: 1.0.0\xff",
        b"Content-Type: application/offset+octet-stream\xff",
    ],
)
async def test_non_utf8_header_on_patch(client, header):
    path = await create_upload(client, 5)
    headers = {
        "tus-resumable": b"Tus-Resumable: 1.0.0",
        "content-type": b"Content-Type: application/offset+octet-stream",
        "upload-offset": b"Upload-Offset: 0",
    }
    name = header.split(b":")[0].decode().lower()
    headers[name] = header
    # The override is read on a POST only (a PATCH ignores it).
    method = "POST" if name == "x-http-method-override" else "PATCH"
    response = await raw(client, request(method, path, *headers.values(), body=b"hello"))
    assert_one_line_4xx(response)
    assert await head_offset(client, path) == "0"


async def test_non_utf8_metadata_value_is_stored_as_bytes(client):
    """Metadata values are base64, so any bytes are fine inside them."""
    value = base64.b64encode(b"\xff\xfe\x00\r\n").decode()
    path = await create_upload(client, 1, **{"Upload-Metadata": f"blob {value}"})
    response = await client.head(path, headers=TUS)
    assert response.headers["Upload-Metadata"] == f"blob {value}"


# --- huge and repeated headers ------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["Upload-Length", "Upload-Offset", "Upload-Defer-Length", "Upload-Checksum", "Upload-Concat"]
)
async def test_huge_header_values_are_400(client, name):
    path = await create_upload(client, 5)
    value = "9" * 8000
    if name == "Upload-Offset":
        response = await client.patch(path, data=b"hello", headers={**PATCH_HEADERS, name: value})
    elif name == "Upload-Checksum":
        response = await client.patch(
            path, data=b"hello", headers={**PATCH_HEADERS, "Upload-Offset": "0", name: "sha1 " + "A" * 8000}
        )
    else:
        response = await client.post("/files/", headers={**TUS, name: value})
    await assert_one_line_error(response, 400)
    assert await head_offset(client, path) == "0"


async def test_big_valid_metadata(client):
    pairs = [f"key{i} {base64.b64encode(b'v' * 30).decode()}" for i in range(85)]
    metadata = ",".join(pairs)
    assert len(metadata) <= Settings().uploads.max_metadata_size  # just below the default cap
    path = await create_upload(client, 1, **{"Upload-Metadata": metadata})
    response = await client.head(path, headers=TUS)
    assert response.headers["Upload-Metadata"] == metadata


async def test_final_with_many_unknown_parts_is_400(client):
    parts = " ".join(f"/files/{i:032x}" for i in range(180))
    response = await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{parts}"})
    await assert_one_line_error(response, 400)


@pytest.mark.parametrize(
    "headers",
    [
        [b"Upload-Offset: 0", b"Upload-Offset: 3"],
        [b"Upload-Offset: 0", b"Upload-Offset: 0"],
        [b"Upload-Offset: 0", b"upload-offset: 3"],  # names are without case
        [b"Upload-Offset: 0", b"Upload-Length: 5", b"Upload-Length: 6"],
        [b"Upload-Offset: 0", b"Upload-Checksum: sha1 qvTGHdzF6KLavt4PO0gs2a6pQ00=", b"Upload-Checksum: md5 XUFAKrxLKna5cZ2REBfFkg=="],
    ],
)
async def test_repeated_tus_headers_on_patch_are_400(client, headers):
    path = await create_upload(client, 5)
    response = await raw(
        client,
        request(
            "PATCH", path, b"Tus-Resumable: 1.0.0", b"Content-Type: application/offset+octet-stream",
            *headers, body=b"hello",
        ),
    )
    assert_one_line_4xx(response, 400)
    assert await head_offset(client, path) == "0"


@pytest.mark.parametrize(
    "headers",
    [
        [b"Upload-Length: 5", b"Upload-Length: 500"],
        [b"Upload-Defer-Length: 1", b"Upload-Defer-Length: 1"],
        [b"Upload-Length: 5", b"Upload-Metadata: a YQ==", b"Upload-Metadata: b Yg=="],
        [b"Upload-Length: 5", b"Upload-Concat: partial", b"Upload-Concat: partial"],
        [b"Upload-Length: 5", b"Tus-Resumable: 1.0.0"],
        [b"Upload-Length: 5", b"X-HTTP-Method-Override: POST", b"X-HTTP-Method-Override: DELETE"],
    ],
)
async def test_repeated_tus_headers_on_post_are_400(client, settings, headers):
    response = await raw(client, request("POST", "/files/", b"Tus-Resumable: 1.0.0", *headers))
    assert_one_line_4xx(response, 400)
    assert data_files(settings) == []


def creation(target: bytes = b"/files/", version: bytes = b"1.1", *headers: bytes) -> bytes:
    return b"\r\n".join(
        [b"POST " + target + b" HTTP/" + version, *headers, b"Tus-Resumable: 1.0.0",
         b"Upload-Length: 1", b"Content-Length: 0", b"Connection: close", b"", b""]
    )


@pytest.mark.parametrize(
    "host",
    [
        b"\xff\xfe", b"a b", b"x/y", b"a@b", b"[::1", b"evil.org/path?", b"a\\b", b"h:p0rt",
        b"", b":80", b"h:0", b"h:65536", b"h:99999", b"h:" + b"9" * 30, b"user@h",
        b"user:pw@h:80", b"::1", b"[::1]x", b"[zz::1]", b"[v1.x]", b"[::1%25eth0]", b"%zz.example",
        b"h:80:80",
    ],
)
@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
async def test_invalid_host_is_400_and_never_reaches_location(client, settings, host, version):
    response = await raw(client, creation(b"/files/", version, b"Host: " + host))
    assert_one_line_4xx(response, 400)
    assert "location" not in response.headers
    assert data_files(settings) == []


@pytest.mark.parametrize(
    ("host", "origin"),
    [
        (b"uploads.example.org", "uploads.example.org"),
        (b"127.0.0.1:8080", "127.0.0.1:8080"),
        (b"[::1]:1080", "[::1]:1080"),
        (b"[::1]", "[::1]"),
        (b"[::ffff:127.0.0.1]:8080", "[::ffff:127.0.0.1]:8080"),
        (b"xn--bcher-kva.example", "xn--bcher-kva.example"),
        (b"h:65535", "h:65535"),
        (b"h:", "h"),  # an empty port is the default one
        (b"h:80", "h"),
    ],
)
async def test_valid_host_is_used_in_location(client, host, origin):
    response = await raw(client, creation(b"/files/", b"1.1", b"Host: " + host))
    assert response.status == 201
    assert response.headers["location"].startswith(f"http://{origin}/files/")


async def test_http_1_0_without_host_gets_the_address_and_port_it_connected_to(client):
    response = await raw(client, creation(b"/files/", b"1.0"))
    assert response.status == 201, response.body
    location = response.headers["location"]
    assert location == f"http://127.0.0.1:{client.port}/files/{upload_id(location)}"
    assert (await client.head(f"/files/{upload_id(location)}", headers=TUS)).status == 200


async def test_http_1_1_without_host_is_400(client, settings):
    response = await raw(client, creation(b"/files/", b"1.1"))
    assert response.status == 400
    assert "location" not in response.headers
    assert data_files(settings) == []


@pytest.mark.parametrize(
    ("target", "origin"),
    [
        (b"http://up.example:8080/files/", "up.example:8080"),
        (b"http://[::1]:8080/files/", "[::1]:8080"),
        (b"http://up.example/files/", "up.example"),
        (b"https://up.example:80/files/", "up.example"),  # the scheme is the one served
    ],
)
async def test_an_absolute_form_target_names_the_host_over_the_host_header(
    client, target, origin
):
    response = await raw(client, creation(target, b"1.1", b"Host: other.example:81"))
    assert response.status == 201, response.body
    assert response.headers["location"].startswith(f"http://{origin}/files/")


@pytest.mark.parametrize(
    "target", [b"http://user@up.example/files/", b"http://user:pw@up.example:81/files/"]
)
async def test_an_absolute_form_target_with_userinfo_is_400(client, settings, target):
    response = await raw(client, creation(target, b"1.1", b"Host: up.example"))
    assert_one_line_4xx(response, 400)
    assert data_files(settings) == []


async def test_two_host_headers_are_400(client):
    response = await raw(
        client,
        b"POST /files/ HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nTus-Resumable: 1.0.0\r\n"
        b"Upload-Length: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    assert 400 <= response.status < 500
    assert "location" not in response.headers


# --- garbage in otherwise valid requests --------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Upload-Length": "5", "Upload-Concat": "partial;x"},
        {"Upload-Length": "5", "Upload-Metadata": "a YQ==;b Yg=="},
        {"Upload-Length": "5", "Upload-Metadata": "a " + "A" * 4001},
        {"Upload-Length": " ", "Upload-Metadata": "a YQ=="},
        {"Upload-Length": "5", "Upload-Checksum": "sha1 x", "Content-Type": "application/offset+octet-stream"},
        {"Upload-Concat": "final;" + "/files/" + "z" * 5000},
        {"Upload-Concat": "final;http://[::1"},
        {"Upload-Concat": "final;http://a:b:c/files/x"},
        {"Upload-Concat": "final;\\\\files\\x"},
    ],
)
async def test_garbage_values_on_post_are_4xx(client, headers):
    body = b"hello" if "Upload-Checksum" in headers else None
    response = await client.post("/files/", data=body, headers={**TUS, **headers})
    await assert_one_line_error(response)


@pytest.mark.parametrize(
    "override", ["", "   ", "GET", "OPTIONS", "patch", "Patch", "CONNECT", "X" * 2000]
)
async def test_odd_method_overrides_never_5xx(client, override):
    path = await create_upload(client, 5)
    response = await client.post(
        path, data=b"hello", headers={**PATCH_HEADERS, "Upload-Offset": "0", "X-HTTP-Method-Override": override}
    )
    assert response.status < 500
    if response.status >= 400:
        await assert_one_line_error(response)
    offset = await head_offset(client, path)
    assert offset in ("0", "5")
    if override.strip().upper() == "PATCH":
        assert response.status == 204 and offset == "5"


@pytest.mark.parametrize(
    "range_header", ["bytes=" + "9" * 5000, "bytes=0-" + "9" * 5000, "bytes=-" + "9" * 5000, "bytes=" + "0-1," * 1000]
)
async def test_huge_ranges_never_5xx(client, range_header):
    path = await create_upload(client, 3)
    await client.patch(path, data=b"abc", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    response = await client.get(path, headers={"Range": range_header})
    assert response.status in (200, 206, 416)
    if response.status == 416:
        await assert_one_line_error(response, 416)
    else:
        assert await response.read() in (b"abc",)


# --- bodies that break off or are badly framed --------------------------------------------


async def wait_for_offset(client, path: str, offset: int, timeout: float = 5.0) -> None:
    store = client.app[CONTEXT].store

    async def recorded() -> bool:
        return (await store.get(upload_id(path))).offset >= offset

    await poll(recorded, "the server to record the bytes", timeout=timeout, interval=0.01)


async def wait_for_file_size(
    owner: Settings | ServerProcess, path: str, size: int, timeout: float = 5.0
) -> None:
    file = data_file(owner, path)
    await poll(lambda: file.stat().st_size >= size, "the server to write the bytes", timeout=timeout, interval=0.01)


async def open_patch(
    host: str, port: int, path: str, *headers: bytes, body: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a raw connection and send the head of a PATCH at offset 0 with ``headers``, then ``body``."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        request(
            "PATCH", path, b"Tus-Resumable: 1.0.0", b"Content-Type: application/offset+octet-stream",
            b"Upload-Offset: 0", *headers,
        )
        + body
    )
    await writer.drain()
    return reader, writer


async def patch_cut_short(
    host: str, port: int, owner: Settings | ServerProcess, path: str, *headers: bytes
) -> None:
    """Send 5 bytes of a 10-byte PATCH body, wait until they are in the data file, and hang up."""
    _, writer = await open_patch(host, port, path, b"Content-Length: 10", *headers, body=b"hello")
    await wait_for_file_size(owner, path, 5)
    writer.close()
    await writer.wait_closed()


async def read_answer(reader: asyncio.StreamReader) -> RawResponse | None:
    """The response on a raw connection, or None if the server closed it without one."""
    try:
        return await read_response(reader)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


async def test_bad_chunk_after_good_chunk_keeps_good_bytes(make_client):
    """A chunk-size error in mid-body: the bytes before it stay, the upload stays usable.

    aiohttp's parser drops the body stream of a request whose chunk framing breaks
    without telling the handler, so the PATCH is ended by the take-over of the next
    HEAD (or the idle timeout); the client gets a 4xx or a closed connection.
    """
    client = await make_client(commit_bytes=1)
    path = await create_upload(client, 10)
    reader, writer = await open_patch(
        client.server.host, client.server.port, path, b"Transfer-Encoding: chunked", body=b"3\r\nabc\r\n"
    )
    try:
        await wait_for_offset(client, path, 3)
        writer.write(b"ZZ\r\nnot a chunk\r\n0\r\n\r\n")
        await writer.drain()
        assert await head_offset(client, path) == "3"
        response = await read_answer(reader)
        if response is not None:
            assert_one_line_4xx(response)
    finally:
        writer.close()
    response = await client.patch(path, data=b"defghij", headers={**PATCH_HEADERS, "Upload-Offset": "3"})
    assert response.status == 204
    assert await (await client.get(path)).read() == b"abcdefghij"


async def test_bad_chunk_ends_body_after_idle_timeout(make_client):
    client = await make_client(commit_bytes=1, idle_timeout=0.2)
    path = await create_upload(client, 10)
    reader, writer = await open_patch(
        client.server.host, client.server.port, path, b"Transfer-Encoding: chunked", body=b"3\r\nabc\r\n"
    )
    try:
        await wait_for_offset(client, path, 3)
        writer.write(b"3\r\ndefXX\r\n0\r\n\r\n")  # chunk data longer than its size
        await writer.drain()
        response = await read_answer(reader)
        if response is not None:
            assert_one_line_4xx(response)
    finally:
        writer.close()
    offset = await head_offset(client, path)
    assert offset in ("3", "6")
    rest = b"abcdefghij"[int(offset) :]
    response = await client.patch(path, data=rest, headers={**PATCH_HEADERS, "Upload-Offset": offset})
    assert response.status == 204
    assert await (await client.get(path)).read() == b"abcdefghij"


@pytest.mark.e2e
async def test_real_server_keeps_bytes_of_body_cut_short(server_process):
    """The same as below against a real aiotusd, whose handlers are not cancelled on disconnect."""
    server = server_process()

    async def call(*lines: bytes, body: bytes = b"", method: str = "HEAD", path: str = "/files/") -> RawResponse:
        return await raw_request("127.0.0.1", server.port, request(method, path, b"Tus-Resumable: 1.0.0", *lines, body=body))

    response = await call(b"Upload-Length: 10", b"Content-Length: 0", method="POST")
    assert response.status == 201
    path = response.headers["location"][response.headers["location"].index("/files/") :]
    await patch_cut_short("127.0.0.1", server.port, server, path)
    deadline = time.monotonic() + 5
    while (offset := (await call(path=path)).headers["upload-offset"]) != "5":
        assert offset == "0" and time.monotonic() < deadline, offset
        await asyncio.sleep(0.02)
    response = await call(
        b"Content-Type: application/offset+octet-stream", b"Upload-Offset: 5",
        method="PATCH", path=path, body=b"world",
    )
    assert response.status == 204
    assert response.headers["upload-offset"] == "10"


async def test_body_shorter_than_content_length_keeps_what_arrived(client, settings):
    """In-process: aiohttp's test server cancels the handler when the client goes away."""
    path = await create_upload(client, 10)
    await patch_cut_short(client.server.host, client.server.port, settings, path)
    deadline = time.monotonic() + 2
    while (offset := await head_offset(client, path)) != "5":
        assert offset == "0" and time.monotonic() < deadline, offset
        await asyncio.sleep(0.02)
    response = await client.patch(path, data=b"world", headers={**PATCH_HEADERS, "Upload-Offset": "5"})
    assert response.status == 204
    assert await (await client.get(path)).read() == b"helloworld"


async def test_checksum_body_broken_off_keeps_nothing(make_client, settings):
    client = await make_client(commit_bytes=1)
    path = await create_upload(client, 10)
    checksum = b"Upload-Checksum: sha1 " + base64.b64encode(hashlib.sha1(b"helloworld").digest())
    await patch_cut_short(client.server.host, client.server.port, settings, path, checksum)
    # The server must answer HEAD with the offset from before the broken body.
    assert await head_offset(client, path) == "0"
    response = await client.patch(path, data=b"helloworld", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert response.status == 204
    assert await (await client.get(path)).read() == b"helloworld"


async def test_expect_100_continue_raw(client):
    path = await create_upload(client, 5)
    reader, writer = await open_patch(
        client.server.host, client.server.port, path, b"Content-Length: 5", b"Expect: 100-continue"
    )
    try:
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100")
        writer.write(b"hello")
        await writer.drain()
        response = await read_response(reader)
    finally:
        writer.close()
    assert response.status == 204
    assert response.headers["upload-offset"] == "5"


# --- framing errors, answered by the HTTP layer before the app sees the request -----------

FRAMING_ERRORS = {
    "garbage request line": b"GARBAGE\r\n\r\n",
    "TLS client hello": bytes.fromhex("16030100a5010000a10303") + b"\x00" * 40,
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "header too long": request("HEAD", "/files/x", b"Tus-Resumable: 1.0.0", b"X-Big: " + b"a" * 9000),
    "NUL in header": request("HEAD", "/files/x", b"Tus-Resumable: 1.0\x00.0"),
    "bad Content-Length": request("PATCH", "/files/x", b"Content-Length: abc"),
    "negative Content-Length": request("PATCH", "/files/x", b"Content-Length: -5"),
    "Content-Length and chunked": request(
        "PATCH", "/files/x", b"Content-Length: 3", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"
    ),
    "two Content-Lengths": request("PATCH", "/files/x", b"Content-Length: 3", b"Content-Length: 4", body=b"abc"),
    "non-ASCII path": b"HEAD /files/\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "bad chunk size": request(
        "PATCH", "/files/x", b"Transfer-Encoding: chunked", b"Tus-Resumable: 1.0.0",
        b"Content-Type: application/offset+octet-stream", b"Upload-Offset: 0", body=b"ZZ\r\nxx\r\n0\r\n\r\n",
    ),
    "header without colon": b"HEAD /files/x HTTP/1.1\r\nHost: x\r\nnot a header\r\n\r\n",
    "space before colon": b"HEAD /files/x HTTP/1.1\r\nHost: x\r\nTus-Resumable : 1.0.0\r\n\r\n",
    "bad HTTP version": b"HEAD /files/x HTTP/9.9\r\nHost: x\r\n\r\n",
    "two Content-Types": request(
        "PATCH", "/files/x", b"Content-Type: application/offset+octet-stream", b"Content-Type: text/plain",
        b"Tus-Resumable: 1.0.0", b"Upload-Offset: 0", body=b"x",
    ),
}


async def test_framing_errors_are_4xx_never_5xx(client):
    failures = []
    for name, data in FRAMING_ERRORS.items():
        try:
            response = await raw(client, data)
        except (asyncio.IncompleteReadError, ConnectionError):
            continue  # closing the connection is an acceptable answer to garbage
        if not 400 <= response.status < 500:
            failures.append(f"{name}: {response.status}")
    assert not failures, failures


@pytest.mark.e2e
async def test_framing_error_bodies_are_one_line(server_process):
    """Errors found while parsing the HTTP framing must be one line too (real aiotusd process)."""
    server = server_process()
    failures = []
    for name, data in FRAMING_ERRORS.items():
        try:
            response = await raw_request("127.0.0.1", server.port, data)
        except (asyncio.IncompleteReadError, ConnectionError):
            continue
        try:
            assert_one_line_4xx(response)
        except AssertionError:
            failures.append(f"{name}: {response.status} {response.body!r}")
    assert not failures, "\n".join(failures)


async def test_server_keeps_working_after_garbage(client):
    for data in FRAMING_ERRORS.values():
        try:
            await raw(client, data)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
    path = await create_upload(client, 2)
    response = await client.patch(path, data=b"ok", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert response.status == 204


# --- every 4xx the app produces is one line -----------------------------------------------


async def test_all_app_errors_are_one_line(client):
    """A sweep over the app's refusals: each is a 4xx with a one-line text/plain body."""
    path = await create_upload(client, 5)
    cases = [
        client.post("/files/", headers={"Upload-Length": "1"}),
        client.post("/files/", headers=TUS),
        client.post("/files/", headers={**TUS, "Upload-Length": "x"}),
        client.post("/files/", headers={**TUS, "Upload-Length": "1", "Upload-Metadata": "a b c"}),
        client.patch(path, data=b"x", headers=TUS),
        client.patch(path, data=b"x", headers={**PATCH_HEADERS}),
        client.patch(path, data=b"x", headers={**PATCH_HEADERS, "Upload-Offset": "3"}),
        client.patch(path, data=b"x" * 6, headers={**PATCH_HEADERS, "Upload-Offset": "0"}),
        client.patch(path, data=b"x", headers={**PATCH_HEADERS, "Upload-Offset": "0", "Upload-Checksum": "md5 AA=="}),
        client.get(path),
        client.get("/files/" + "f" * 32),
        client.request("PUT", path, headers=TUS),
        client.get("/nowhere"),
        client.get("/files/a.b"),
    ]
    for coroutine in cases:
        response = await coroutine
        await assert_one_line_error(response)
