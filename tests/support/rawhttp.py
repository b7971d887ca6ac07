"""A minimal HTTP/1.1 client over asyncio streams, for the end-to-end tests of real servers.

It does what well-behaved clients never do: stops sending in the middle of a body, hangs
up, races. Requests go to 127.0.0.1 only; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass
from typing import Any

KIB = 1024
MIB = 1024 * KIB
HOST = "127.0.0.1"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    """Header names in lower case."""
    body: bytes


def request_head(method: str, path: str, port: int, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def read_response(
    reader: asyncio.StreamReader, method: str, timeout: float = 10.0
) -> Response:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ")[1])
    headers: dict[str, str] = {}
    for line in header_lines:
        if line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    assert "chunked" not in headers.get("transfer-encoding", ""), "chunked replies not expected"
    body = b""
    length = int(headers.get("content-length", "0"))
    if method != "HEAD" and length:
        body = await asyncio.wait_for(reader.readexactly(length), timeout)
    return Response(status, headers, body)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, asyncio.TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 5)


async def request(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    timeout: float = 10.0,
) -> Response:
    """One request on a fresh connection."""
    all_headers = {"Tus-Resumable": "1.0.0", "Connection": "close", **(headers or {})}
    if body or method in ("PATCH", "POST"):
        all_headers["Content-Length"] = str(len(body))
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    try:
        writer.write(request_head(method, path, port, all_headers) + body)
        await asyncio.wait_for(writer.drain(), timeout)
        return await read_response(reader, method, timeout)
    finally:
        await close_writer(writer)


class OpenPatch:
    """A PATCH whose body the test sends piece by piece, and may never finish."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.sent = 0

    @classmethod
    async def start(
        cls, port: int, path: str, offset: int, content_length: int, **headers: str
    ) -> OpenPatch:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 10)
        head = request_head("PATCH", path, port, {
            "Tus-Resumable": "1.0.0",
            "Content-Type": "application/offset+octet-stream",
            "Upload-Offset": str(offset),
            "Content-Length": str(content_length),
            **headers,
        })
        writer.write(head)
        await asyncio.wait_for(writer.drain(), 10)
        return cls(reader, writer)

    async def send(self, data: bytes, piece: int = 64 * KIB) -> None:
        for start in range(0, len(data), piece):
            self.writer.write(data[start : start + piece])
            await asyncio.wait_for(self.writer.drain(), 10)
        self.sent += len(data)

    async def response(self, timeout: float = 10.0) -> Response:
        return await read_response(self.reader, "PATCH", timeout)

    async def closed_by_server(self, timeout: float = 10.0) -> bytes:
        """Wait until the server closes the connection; returns whatever it sent before."""
        received = b""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            assert remaining > 0, "the server did not close the stalled connection"
            try:
                data = await asyncio.wait_for(self.reader.read(64 * KIB), remaining)
            except ConnectionError:
                return received
            if not data:
                return received
            received += data

    async def abort(self) -> None:
        await close_writer(self.writer)


# --- helpers ----------------------------------------------------------------------------


async def create(port: int, length: int, **headers: str) -> str:
    """POST an upload; returns its path."""
    response = await request(port, "POST", "/files/", {"Upload-Length": str(length), **headers})
    assert response.status == 201, response
    location = response.headers["location"]
    assert location.startswith(f"http://{HOST}:{port}/files/")
    return location[location.index("/files/") :]


async def head(port: int, path: str) -> Response:
    response = await request(port, "HEAD", path)
    assert response.status == 200, response
    return response


async def offset_of(port: int, path: str) -> int:
    return int((await head(port, path)).headers["upload-offset"])


async def patch(port: int, path: str, offset: int, body: bytes, **headers: str) -> Response:
    return await request(port, "PATCH", path, {
        "Content-Type": "application/offset+octet-stream",
        "Upload-Offset": str(offset),
        **headers,
    }, body)


async def assert_download(port: int, path: str, expected: bytes) -> None:
    response = await request(port, "GET", path, timeout=30)
    assert response.status == 200, response
    assert len(response.body) == len(expected)
    assert response.body == expected


async def finish_upload(port: int, path: str, data: bytes) -> None:
    """Resume from the server's offset with the rest of ``data``; check the stored bytes."""
    offset = await offset_of(port, path)
    response = await patch(port, path, offset, data[offset:])
    assert response.status == 204, response
    assert response.headers["upload-offset"] == str(len(data))
    await assert_download(port, path, data)


def patch_log(server: Any, path: str) -> list[tuple[int, int]]:
    """(status, received) of each PATCH of ``path`` in the text access log, in order."""
    pattern = rf"PATCH {re.escape(path)} (\d+) upload=\S+ received=(\d+) "
    return [(int(status), int(received)) for status, received in re.findall(pattern, server.log())]
