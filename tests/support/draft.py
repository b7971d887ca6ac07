"""Talking the IETF resumable uploads draft on a raw socket: Python's HTTP clients drop
the ``104`` interim responses that these tests look for."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from support.rawhttp import HOST, Response, close_writer, read_response, request_head

PARTIAL = "application/partial-upload"


@dataclass
class Exchange:
    interim: list[Response]
    """The 1xx responses, in order."""
    final: Response


def draft_headers(version: int, **headers: str) -> dict[str, str]:
    """A draft request's headers (no ``Tus-Resumable``): ``Upload_Complete="?1"`` style
    keyword names become ``Upload-Complete``."""
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    return {"Upload-Draft-Interop-Version": str(version), "Connection": "close", **named}


async def exchange(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes = b"",
    *,
    version: str = "HTTP/1.1",
    timeout: float = 10.0,
) -> Exchange:
    """One request on a fresh connection; its interim responses and its final one."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    try:
        framing = {} if "Transfer-Encoding" in headers else {"Content-Length": str(len(body))}
        head = request_head(method, path, port, {**framing, **headers})
        if version != "HTTP/1.1":
            head = head.replace(b" HTTP/1.1\r\n", f" {version}\r\n".encode(), 1)
        writer.write(head + body)
        await asyncio.wait_for(writer.drain(), timeout)
        return await responses(reader, method, timeout)
    finally:
        await close_writer(writer)


async def responses(
    reader: asyncio.StreamReader, method: str, timeout: float = 10.0
) -> Exchange:
    """Read interim responses up to the final one (at most 10 of them)."""
    interim: list[Response] = []
    for _ in range(10):
        response = await read_response(reader, method, timeout)
        if response.status >= 200:
            return Exchange(interim, response)
        interim.append(response)
    raise AssertionError(f"more than 10 interim responses: {interim}")


def chunked(*pieces: bytes) -> bytes:
    """A body in chunked transfer coding: its length is known at its end only."""
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


def path_of(location: str) -> str:
    return location[location.index("/files/") :]
