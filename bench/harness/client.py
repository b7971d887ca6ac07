"""The load generator: tus requests from this process (aiohttp), or from curl for one big PATCH.

Bodies are slices of memory-mapped or in-memory bytes, streamed in 1 MiB pieces with a
Content-Length, so the client copies nothing and holds no body twice. Every request has a
time limit; every loop runs over a fixed count. Responses are checked: a wrong status or
an offset that does not add up raises :class:`TusFailure`.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urljoin

import aiohttp

from .common import MIB

TUS = {"Tus-Resumable": "1.0.0"}
BODY = {**TUS, "Content-Type": "application/offset+octet-stream"}
PIECE = MIB


class TusFailure(RuntimeError):
    """A server answered something a tus client cannot go on with."""


def session(connections: int, timeout: float) -> aiohttp.ClientSession:
    """Keep-alive connections, at most ``connections`` at once."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections),
        timeout=aiohttp.ClientTimeout(total=timeout),
        auto_decompress=False,
    )


async def _pieces(body: memoryview) -> AsyncIterator[memoryview]:
    for start in range(0, len(body), PIECE):
        yield body[start : start + PIECE]


async def _fail(response: aiohttp.ClientResponse) -> TusFailure:
    text = (await response.text(errors="replace"))[:200]
    return TusFailure(f"{response.method} {response.url.path}: {response.status} {text}")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _metadata(number: int) -> str:
    # aiohttp-tus wants a file name and refuses one that an earlier upload has;
    # tuspyserver answers HEAD only for uploads with a filename and a filetype.
    return f"filename {_b64(f'bench-{number}.bin')},filetype {_b64('application/octet-stream')}"


async def extensions(client: aiohttp.ClientSession, url: str) -> set[str]:
    async with client.options(url, headers=TUS) as response:
        return {name.strip() for name in response.headers.get("Tus-Extension", "").split(",")}


async def create(
    client: aiohttp.ClientSession, url: str, length: int, number: int,
    body: memoryview | None = None,
) -> tuple[str, int]:
    """POST an upload (with ``body``: creation-with-upload); its absolute URL and offset."""
    headers = {**TUS, "Upload-Length": str(length), "Upload-Metadata": _metadata(number)}
    data = None
    if body is not None:
        headers |= {**BODY, "Content-Length": str(len(body))}
        data = _pieces(body)
    async with client.post(url, headers=headers, data=data) as response:
        if response.status != 201:
            raise await _fail(response)
        await response.read()
        return urljoin(url, response.headers["Location"]), int(
            response.headers.get("Upload-Offset", 0))


async def patch(client: aiohttp.ClientSession, location: str, offset: int, body: memoryview) -> int:
    """PATCH ``body`` at ``offset``; the new offset, which must be right after it."""
    headers = {**BODY, "Upload-Offset": str(offset), "Content-Length": str(len(body))}
    async with client.patch(location, headers=headers, data=_pieces(body)) as response:
        if response.status != 204:
            raise await _fail(response)
        await response.read()
        new_offset = int(response.headers.get("Upload-Offset", -1))
    if new_offset != offset + len(body):
        raise TusFailure(f"PATCH at {offset} of {len(body)} bytes answered offset {new_offset}")
    return new_offset


async def upload_in_patches(url: str, data: memoryview, chunk: int, timeout: float) -> None:
    """One upload (POST) of ``data`` in PATCHes of ``chunk`` bytes, on one connection."""
    async with session(1, timeout) as client:
        location, offset = await create(client, url, len(data), 0)
        while offset < len(data):
            offset = await patch(client, location, offset, data[offset : offset + chunk])


async def upload_with_curl(url: str, payload: Path, size: int, timeout: float) -> None:
    """One upload (POST) of the file ``payload`` in a single PATCH sent by curl."""
    async with session(1, timeout) as client:
        location, _ = await create(client, url, size, 0)
    argv = ["curl", "--silent", "--show-error", "--max-time", str(int(timeout)),
            "--request", "PATCH", "--upload-file", str(payload),
            "--header", "Expect:", "--dump-header", "-", "--output", "/dev/null"]
    for name, value in {**BODY, "Upload-Offset": "0"}.items():
        argv += ["--header", f"{name}: {value}"]
    process = await asyncio.create_subprocess_exec(
        *argv, location, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    _check_curl(process.returncode, out.decode(errors="replace"), err.decode(errors="replace"),
                size)


def _check_curl(code: int | None, headers: str, errors: str, size: int) -> None:
    lines = headers.strip().splitlines()
    status = lines[0] if lines else ""
    offsets = [line.split(":", 1)[1].strip() for line in lines
               if line.lower().startswith("upload-offset:")]
    if code != 0 or " 204" not in status or offsets != [str(size)]:
        raise TusFailure(f"curl PATCH: exit {code}, {status!r}, offset {offsets}, {errors.strip()}")


async def many_uploads(
    url: str, body: memoryview, count: int, concurrency: int, timeout: float,
    with_upload: bool = False,
) -> list[float]:
    """``count`` uploads of ``body``, ``concurrency`` at a time; the latency of each.

    An upload is POST + PATCH, or with ``with_upload`` one POST that carries the body.
    """
    numbers = iter(range(count))
    latencies: list[float] = []

    async def one(client: aiohttp.ClientSession, number: int) -> None:
        started = time.perf_counter()
        if with_upload:
            _, offset = await create(client, url, len(body), number, body)
            if offset != len(body):
                raise TusFailure(f"creation-with-upload answered offset {offset}")
        else:
            location, _ = await create(client, url, len(body), number)
            await patch(client, location, 0, body)
        latencies.append(time.perf_counter() - started)

    async def worker(client: aiohttp.ClientSession) -> None:
        for number in numbers:
            await one(client, number)

    async with session(concurrency, timeout) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return latencies


async def unfinished_uploads(url: str, count: int, timeout: float) -> list[str]:
    """``count`` uploads of 1 MiB that got no byte yet; their URLs."""
    async with session(1, timeout) as client:
        return [(await create(client, url, MIB, number))[0] for number in range(count)]


async def head_latencies(
    locations: list[str], count: int, concurrency: int, timeout: float
) -> list[float]:
    """HEAD ``count`` times, round-robin over ``locations``, ``concurrency`` at once."""
    numbers = iter(range(count))
    latencies: list[float] = []

    async def worker(client: aiohttp.ClientSession) -> None:
        for number in numbers:
            started = time.perf_counter()
            async with client.head(locations[number % len(locations)], headers=TUS) as response:
                if response.status != 200 or "Upload-Offset" not in response.headers:
                    raise await _fail(response)
            latencies.append(time.perf_counter() - started)

    async with session(concurrency, timeout) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return latencies
