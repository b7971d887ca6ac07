"""``Expect: 100-continue``: the body is asked for only once the request passed every check."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from support.http import (
    PATCH_HEADERS,
    ClientFactory,
    RawResponse,
    create_upload,
    head_offset,
    parse_response,
)


def head_of(method: str, path: str, *headers: str) -> bytes:
    """A request head on a keep-alive connection (no ``Connection: close``)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost", "Tus-Resumable: 1.0.0", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def first_answer(
    client: TestClient, head: bytes, body: bytes = b""
) -> tuple[RawResponse, asyncio.StreamReader, asyncio.StreamWriter]:
    """Send ``head`` (and ``body`` at once, if any); the first response, interim or final."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(head + body)
    await writer.drain()
    received = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return parse_response(received), reader, writer


@pytest.mark.parametrize("sent_at_once", [False, True], ids=["waiting", "sent at once"])
async def test_a_patch_at_the_wrong_offset_is_refused_before_its_body_is_asked_for(
    client: TestClient, sent_at_once: bool
) -> None:
    path = await create_upload(client, 10)
    response = await client.patch(path, data=b"ab", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert response.status == 204
    answer, reader, writer = await first_answer(client, head_of(
        "PATCH", path, "Content-Type: application/offset+octet-stream", "Upload-Offset: 0",
        "Content-Length: 8", "Expect: 100-continue",
    ), body=b"XXXXXXXX" if sent_at_once else b"")
    try:
        assert answer.status == 409
        # No byte after this answer is taken for a request: the client is to hang up.
        assert answer.headers["connection"] == "close"
        if sent_at_once:
            # The body is read and dropped, then the connection ends: no reset.
            await asyncio.wait_for(reader.readexactly(int(answer.headers["content-length"])), 5)
            assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()
    assert await head_offset(client, path) == "2"
    assert await (await client.patch(
        path, data=b"cdefghij", headers={**PATCH_HEADERS, "Upload-Offset": "2"}
    )).read() == b""
    assert await (await client.get(path)).read() == b"abcdefghij"


async def test_a_patch_of_a_missing_upload_is_refused_before_its_body_is_sent(
    client: TestClient,
) -> None:
    answer, _, writer = await first_answer(client, head_of(
        "PATCH", "/files/0123456789abcdef0123456789abcdef",
        "Content-Type: application/offset+octet-stream", "Upload-Offset: 0",
        "Content-Length: 5", "Expect: 100-continue",
    ))
    writer.close()
    assert answer.status == 404
    assert answer.headers["connection"] == "close"


async def test_a_creation_too_large_is_refused_before_its_body_is_sent(
    make_client: ClientFactory,
) -> None:
    client = await make_client(max_size=4)
    answer, _, writer = await first_answer(client, head_of(
        "POST", "/files/", "Upload-Length: 5", "Content-Type: application/offset+octet-stream",
        "Content-Length: 5", "Expect: 100-continue",
    ))
    writer.close()
    assert answer.status == 413
    assert answer.headers["connection"] == "close"


async def test_a_creation_with_upload_gets_100_continue_then_its_upload(client: TestClient) -> None:
    answer, reader, writer = await first_answer(client, head_of(
        "POST", "/files/", "Upload-Length: 5", "Content-Type: application/offset+octet-stream",
        "Content-Length: 5", "Expect: 100-continue",
    ))
    try:
        assert answer.status == 100
        writer.write(b"hello")
        await writer.drain()
        final = parse_response(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5))
    finally:
        writer.close()
    assert final.status == 201
    assert final.headers["upload-offset"] == "5"
    assert final.headers.get("connection") != "close"
    path = "/files/" + final.headers["location"].rsplit("/", 1)[1]
    assert await (await client.get(path)).read() == b"hello"


async def test_a_request_without_a_body_is_not_asked_to_close(client: TestClient) -> None:
    path = await create_upload(client, 5)
    answer, _, writer = await first_answer(client, head_of("HEAD", path, "Expect: 100-continue"))
    writer.close()
    assert answer.status == 200
    assert answer.headers.get("connection") != "close"


async def curl_patch(client: TestClient, path: str, offset: int, payload: Path) -> tuple[str, int]:
    """PATCH ``payload`` with curl, which waits for ``100 Continue``; its status and the body
    bytes it sent."""
    process = await asyncio.create_subprocess_exec(
        "curl", "--silent", "--show-error", "--request", "PATCH", "--upload-file", str(payload),
        "--header", "Tus-Resumable: 1.0.0",
        "--header", "Content-Type: application/offset+octet-stream",
        "--header", f"Upload-Offset: {offset}", "--header", "Expect: 100-continue",
        "--expect100-timeout", "30", "--output", "/dev/null",
        "--write-out", "%{http_code} %{size_upload}",
        str(client.make_url(path)),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err
    status, sent = out.decode().split()
    return status, int(float(sent))


@pytest.mark.e2e
async def test_curl_sends_no_byte_of_a_refused_patch_and_all_of_an_accepted_one(
    client: TestClient, tmp_path: Path
) -> None:
    payload = tmp_path / "payload"
    payload.write_bytes(bytes(range(256)) * 8192)  # 2 MiB
    path = await create_upload(client, 2 * 1024 * 1024)
    assert await curl_patch(client, path, 5, payload) == ("409", 0)
    assert await curl_patch(client, path, 0, payload) == ("204", 2 * 1024 * 1024)
    assert await (await client.get(path)).read() == payload.read_bytes()
