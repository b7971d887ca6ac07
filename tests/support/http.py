"""Talking tus to the server: headers, uploads made through a test client, raw HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

TUS = {"Tus-Resumable": "1.0.0"}
PATCH_HEADERS = {**TUS, "Content-Type": "application/offset+octet-stream"}

ClientFactory = Callable[..., Awaitable[TestClient]]
"""The ``make_client`` fixture: ``await make_client(max_size=10)``."""


async def create_upload(client: TestClient, length: int | None = None, **headers: str) -> str:
    """POST an upload and return its path (``/files/<id>``)."""
    request_headers = {**TUS, **headers}
    if length is not None:
        request_headers["Upload-Length"] = str(length)
    response = await client.post("/files/", headers=request_headers)
    assert response.status == 201, await response.text()
    return path_of(response)


def path_of(response: ClientResponse) -> str:
    """The path (``/files/<id>``) of the upload in a response's ``Location``."""
    location = response.headers["Location"]
    return location[location.index("/files/") :]


def upload_id(path: str) -> str:
    """The upload id: the last segment of an upload's path or URL."""
    return path.rstrip("/").rsplit("/", 1)[1]


async def head_offset(client: TestClient, path: str) -> str:
    """HEAD an upload, assert 200 and return its ``Upload-Offset``."""
    response = await client.head(path, headers=TUS)
    assert response.status == 200
    return response.headers["Upload-Offset"]


async def assert_one_line_error(response: ClientResponse, status: int | None = None) -> None:
    """Assert a one-line ``text/plain`` error body with ``status`` (any 4xx when None)."""
    if status is None:
        assert 400 <= response.status < 500, response.status
    else:
        assert response.status == status, response.status
    assert response.content_type == "text/plain"
    text = await response.text()
    assert text.endswith("\n") and text.count("\n") == 1 and text.strip(), text


# --- raw HTTP: what the aiohttp client cannot send or would not show ------------------------


async def raw_get(port: int, path: str, timeout: float = 5.0) -> tuple[bytes, bytes, bool]:
    """GET ``path`` on a fresh connection: (status line and headers, body bytes, whether the
    server ended the connection), reading for at most ``timeout`` seconds."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    received = bytearray()
    ended = True
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        ended = False
    finally:
        writer.close()
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    return head, body, ended


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    """Lower-case names."""
    body: bytes


def parse_response(data: bytes) -> RawResponse:
    """The response at the start of ``data``."""
    return parse_responses(data)[0]


def parse_responses(data: bytes) -> list[RawResponse]:
    """The responses in what a server wrote on one connection, interim ones included:
    bodies by ``Content-Length``; a chunked or unframed body takes the rest."""
    responses = []
    while data.startswith(b"HTTP/"):
        head, separator, rest = data.partition(b"\r\n\r\n")
        if not separator:
            break
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status < 200 or status in (204, 304):
            length = 0
        elif "content-length" in headers and "transfer-encoding" not in headers:
            length = int(headers["content-length"])
        else:
            length = len(rest)
        responses.append(RawResponse(status, headers, rest[:length]))
        data = rest[length:]
    return responses
