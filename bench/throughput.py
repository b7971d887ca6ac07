"""Throughput of a real aiotusd process on loopback.

Usage: python bench/throughput.py [--large-mib 512] [--small-count 2000]

Starts ``python -m server`` on a free loopback port with a temporary data
directory and measures, one after another:

- large: one upload of ``--large-mib`` MiB in a single PATCH, streamed;
- chunked: the same size in 1 MiB PATCHes;
- small: ``--small-count`` uploads of 1 KiB each (POST + PATCH), 16 at a time.

Each figure is printed as one line. Every phase has a time limit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator

import aiohttp

TUS = {"Tus-Resumable": "1.0.0"}
PATCH = {**TUS, "Content-Type": "application/offset+octet-stream"}
MIB = 1024 * 1024
PHASE_LIMIT = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("server exited during start-up")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise SystemExit("server did not start listening")


async def create(session: aiohttp.ClientSession, url: str, length: int) -> str:
    async with session.post(url, headers={**TUS, "Upload-Length": str(length)}) as response:
        assert response.status == 201, response.status
        return response.headers["Location"]


async def body(size: int, block: bytes) -> AsyncIterator[bytes]:
    sent = 0
    while sent < size:
        piece = block[: size - sent]
        sent += len(piece)
        yield piece


async def large(session: aiohttp.ClientSession, url: str, size: int, block: bytes) -> float:
    location = await create(session, url, size)
    started = time.perf_counter()
    async with session.patch(
        location, data=body(size, block), headers={**PATCH, "Upload-Offset": "0"}
    ) as response:
        assert response.status == 204, await response.text()
    return size / MIB / (time.perf_counter() - started)


async def chunked(session: aiohttp.ClientSession, url: str, size: int, block: bytes) -> float:
    location = await create(session, url, size)
    started = time.perf_counter()
    for offset in range(0, size, MIB):
        async with session.patch(
            location, data=block[:MIB], headers={**PATCH, "Upload-Offset": str(offset)}
        ) as response:
            assert response.status == 204, await response.text()
    return size / MIB / (time.perf_counter() - started)


async def small(session: aiohttp.ClientSession, url: str, count: int) -> float:
    payload = os.urandom(1024)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for number in range(count):
        queue.put_nowait(number)

    async def worker() -> None:
        while not queue.empty():
            queue.get_nowait()
            location = await create(session, url, len(payload))
            async with session.patch(
                location, data=payload, headers={**PATCH, "Upload-Offset": "0"}
            ) as response:
                assert response.status == 204, await response.text()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(16)))
    return count / (time.perf_counter() - started)


async def run(args: argparse.Namespace) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/files/"
    with tempfile.TemporaryDirectory() as data_dir:
        process = subprocess.Popen(
            [sys.executable, "-m", "server", "--port", str(port), "--data-dir", data_dir,
             "--log-level", "warning"],
        )
        try:
            await wait_listening(port, process)
            block = os.urandom(4 * MIB)
            size = args.large_mib * MIB
            timeout = aiohttp.ClientTimeout(total=PHASE_LIMIT)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                rate = await asyncio.wait_for(large(session, url, size, block), PHASE_LIMIT)
                print(f"large: {args.large_mib} MiB in one PATCH: {rate:.0f} MiB/s")
                rate = await asyncio.wait_for(chunked(session, url, size, block), PHASE_LIMIT)
                print(f"chunked: {args.large_mib} MiB in 1 MiB PATCHes: {rate:.0f} MiB/s")
                rate = await asyncio.wait_for(small(session, url, args.small_count), PHASE_LIMIT)
                print(f"small: {args.small_count} uploads of 1 KiB: {rate:.0f} uploads/s")
        finally:
            process.terminate()
            process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large-mib", type=int, default=512)
    parser.add_argument("--small-count", type=int, default=2000)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
