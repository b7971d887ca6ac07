"""Soak: many uploads against a real aiotusd while clients vanish and the server is killed.

N uploads (default 1,000) of random sizes go up at a given concurrency, in PATCHes
of random sizes. Some PATCHes are cut off halfway (the client closes the socket
mid-body), and the server is restarted at random moments, by SIGKILL or SIGTERM,
on the same port and data directory. Clients resume from HEAD. Throughout, every
HEAD is compared with the largest offset the server acknowledged (a 201/204's
``Upload-Offset``) for that upload: a shortfall counts as lost acknowledged bytes.
Every finished upload is downloaded and compared by sha256, and once more after a
last SIGKILL and restart at the end. One line is printed per backend::

    soak fs: uploads=1000 bytes=1048576000 restarts=14 disconnects=391 corrupt=0 lost_acknowledged_bytes=0 failed=0 seconds=95.2

and the exit code is 1 if anything was corrupt, lost or failed to complete.

    python bench/soak.py                      # 1,000 uploads on fs, then on s3 (moto)
    python bench/soak.py --backends fs --uploads 200 --concurrency 16

S3 runs against moto's server on loopback (``moto[server]``, a test dependency), started
as bench/run.py starts it (``harness.s3.moto``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from harness.common import KIB, MIB, REPO, free_port, parse_size
from harness.s3 import moto
from harness.targets import S3_CREDENTIALS

HOST = "127.0.0.1"
TUS = {"Tus-Resumable": "1.0.0"}
MAX_ATTEMPTS = 200
"""Requests one upload may try before it counts as failed."""
REQUEST_TIMEOUT = 30.0


async def spawn(args: list[str], log: Path) -> asyncio.subprocess.Process:
    """Start ``args`` with stdout and stderr appended to ``log``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        return await asyncio.create_subprocess_exec(*args, stdout=fd, stderr=fd, cwd=REPO)
    finally:
        os.close(fd)


async def wait_listening(port: int, process: asyncio.subprocess.Process, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(HOST, port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing listened on port {port} within {timeout} s")


class UnexpectedAnswer(Exception):
    """The server answered what no client should ever get: the upload counts as failed."""


@dataclass
class Tally:
    uploads: int = 0
    bytes: int = 0
    restarts: int = 0
    disconnects: int = 0
    corrupt: int = 0
    lost_acknowledged_bytes: int = 0
    failed: int = 0

    def line(self, backend: str, seconds: float) -> str:
        fields = " ".join(f"{name}={value}" for name, value in vars(self).items())
        return f"soak {backend}: {fields} seconds={seconds:.1f}"


class Server:
    """``python -m server`` on a fixed port and data directory, restartable."""

    def __init__(self, data_dir: Path, args: list[str]) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.args = args
        self.log = data_dir.parent / "server.log"
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/files/"

    async def start(self) -> None:
        self.process = await spawn(
            [sys.executable, "-m", "server", "--host", HOST, "--port", str(self.port),
             "--data-dir", str(self.data_dir), *self.args],
            self.log,
        )
        await wait_listening(self.port, self.process)

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(sig)
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()


@dataclass
class Upload:
    index: int
    data: bytes
    url: str = ""
    acknowledged: int = 0
    attempts: int = field(default=0)


class Soak:
    def __init__(self, args: argparse.Namespace, server: Server, rng: random.Random) -> None:
        self.args = args
        self.server = server
        self.rng = rng
        self.tally = Tally()
        self.serving = asyncio.Event()
        self.serving.set()
        self.finished: list[Upload] = []

    # -- one upload

    async def run_upload(self, session: aiohttp.ClientSession, upload: Upload) -> None:
        while upload.attempts < MAX_ATTEMPTS:
            upload.attempts += 1
            await self.serving.wait()
            try:
                if not upload.url:
                    await self._create(session, upload)
                    continue
                offset = await self._head(session, upload)
                if offset == len(upload.data):
                    await self._verify(session, upload)
                    return
                await self._patch(session, upload, offset)
            except (TimeoutError, aiohttp.ClientError, OSError):
                await asyncio.sleep(0.05 * self.rng.random())
            except UnexpectedAnswer as exc:
                print(f"upload {upload.index} ({upload.url or 'not created'}): {exc}", file=sys.stderr)
                break
        self.tally.failed += 1

    async def _create(self, session: aiohttp.ClientSession, upload: Upload) -> None:
        headers = {**TUS, "Upload-Length": str(len(upload.data))}
        async with session.post(self.server.url, headers=headers) as response:
            if response.status == 201:
                upload.url = response.headers["Location"]
            elif response.status not in (429, 503):
                raise UnexpectedAnswer(f"POST answered {response.status}: {await response.text()}")

    async def _head(self, session: aiohttp.ClientSession, upload: Upload) -> int:
        async with session.head(upload.url, headers=TUS) as response:
            if response.status != 200:
                raise aiohttp.ClientResponseError(
                    response.request_info, (), status=response.status, message="HEAD"
                )
            offset = int(response.headers["Upload-Offset"])
        if offset < upload.acknowledged:
            self.tally.lost_acknowledged_bytes += upload.acknowledged - offset
            upload.acknowledged = offset  # count each loss once
        return offset

    async def _patch(self, session: aiohttp.ClientSession, upload: Upload, offset: int) -> None:
        size = min(self.rng.randint(16 * KIB, self.args.max_chunk), len(upload.data) - offset)
        body = upload.data[offset : offset + size]
        if self.rng.random() < self.args.disconnect_rate:
            await self._patch_and_vanish(upload, offset, body)
            return
        headers = {
            **TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"
        }
        async with session.patch(upload.url, data=body, headers=headers) as response:
            if response.status == 204:
                upload.acknowledged = max(upload.acknowledged, int(response.headers["Upload-Offset"]))
            elif response.status not in (409, 423, 429, 503):
                raise UnexpectedAnswer(f"PATCH answered {response.status}: {await response.text()}")

    async def _patch_and_vanish(self, upload: Upload, offset: int, body: bytes) -> None:
        """Send the headers and part of the body, then close the socket: a client that went away."""
        path = upload.url.split(f"{HOST}:{self.server.port}", 1)[1]
        head = (
            f"PATCH {path} HTTP/1.1\r\nHost: {HOST}:{self.server.port}\r\n"
            f"Tus-Resumable: 1.0.0\r\nUpload-Offset: {offset}\r\n"
            f"Content-Type: application/offset+octet-stream\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        _, writer = await asyncio.open_connection(HOST, self.server.port)
        try:
            writer.write(head + body[: self.rng.randint(0, len(body))])
            await writer.drain()
        finally:
            writer.transport.abort()
        self.tally.disconnects += 1

    async def _verify(self, session: aiohttp.ClientSession, upload: Upload) -> None:
        if not await self._downloads_intact(session, upload):
            self.tally.corrupt += 1
        self.finished.append(upload)
        self.tally.uploads += 1
        self.tally.bytes += len(upload.data)

    async def _downloads_intact(self, session: aiohttp.ClientSession, upload: Upload) -> bool:
        digest = hashlib.sha256()
        async with session.get(upload.url) as response:
            if response.status != 200:
                return False
            async for chunk in response.content.iter_chunked(256 * KIB):
                digest.update(chunk)
        return digest.digest() == hashlib.sha256(upload.data).digest()

    async def recheck_after_kill(self, session: aiohttp.ClientSession) -> None:
        """Kill -9 once more, then every finished upload must still be whole."""
        await self.server.stop(signal.SIGKILL)
        await self.server.start()
        self.tally.restarts += 1
        for upload in self.finished:
            try:
                whole = await self._head(session, upload) == len(upload.data)
            except aiohttp.ClientError:
                whole = False
            if not whole:
                self.tally.failed += 1
            elif not await self._downloads_intact(session, upload):
                self.tally.corrupt += 1

    # -- the whole run

    async def restarter(self, done: asyncio.Event) -> None:
        """Kill or stop the server at random moments and start it again, until ``done``."""
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), self.rng.uniform(*self.args.restart_every))
            if done.is_set():
                return
            self.serving.clear()
            await self.server.stop(self.rng.choice([signal.SIGKILL, signal.SIGTERM]))
            await self.server.start()
            self.serving.set()
            self.tally.restarts += 1

    async def run(self) -> Tally:
        sizes = [self._size() for _ in range(self.args.uploads)]
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in range(self.args.uploads):
            queue.put_nowait(index)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        done = asyncio.Event()
        restarts = asyncio.create_task(self.restarter(done))
        connector = aiohttp.TCPConnector(limit=self.args.concurrency)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

            async def worker() -> None:
                while not queue.empty():
                    index = queue.get_nowait()
                    data = random.Random(f"{self.args.seed}-{index}").randbytes(sizes[index])
                    await self.run_upload(session, Upload(index, data))

            try:
                await asyncio.gather(*(worker() for _ in range(self.args.concurrency)))
            finally:
                done.set()
                await restarts
            await self.recheck_after_kill(session)
        return self.tally

    def _size(self) -> int:
        """Mostly small files, some large: log-uniform between 0 and --max-size."""
        if self.rng.random() < 0.02:
            return 0
        return int(2 ** self.rng.uniform(10, self.args.max_size.bit_length() - 1))


async def soak(backend: str, args: argparse.Namespace) -> Tally:
    workdir = Path(tempfile.mkdtemp(prefix=f"aiotusd-soak-{backend}-"))
    server_args = ["--commit-bytes", "256KiB", "--idle-timeout", "10"]
    try:
        async with contextlib.AsyncExitStack() as stack:
            if backend == "s3":
                place = await stack.enter_async_context(moto(workdir / "moto.log"))
                os.environ.update(S3_CREDENTIALS)
                server_args += [
                    "--storage", "s3", "--s3-endpoint", place.endpoint, "--s3-bucket",
                    place.bucket, "--s3-region", "us-east-1", "--s3-path-style", "true",
                    "--s3-part-size", "5MiB",
                ]
            server = Server(workdir / "data", server_args)
            await server.start()
            try:
                return await Soak(args, server, random.Random(args.seed)).run()
            finally:
                await server.stop()
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="fs,s3", help="comma-separated: fs, s3")
    parser.add_argument("--uploads", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-size", type=parse_size, default=16 * MIB, help="largest upload")
    parser.add_argument("--max-chunk", type=parse_size, default=4 * MIB, help="largest PATCH")
    parser.add_argument("--disconnect-rate", type=float, default=0.05,
                        help="share of PATCHes whose client vanishes mid-body")
    parser.add_argument("--restart-every", type=float, nargs=2, default=(2.0, 8.0),
                        metavar=("MIN", "MAX"), help="seconds between server restarts")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--time-limit", type=float, default=1800.0, help="per backend, seconds")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    args = parser.parse_args()
    ok = True
    for backend in args.backends.split(","):
        started = time.monotonic()
        tally = asyncio.run(asyncio.wait_for(soak(backend, args), args.time_limit))
        print(tally.line(backend, time.monotonic() - started), flush=True)
        ok = ok and not (tally.corrupt or tally.lost_acknowledged_bytes or tally.failed)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
