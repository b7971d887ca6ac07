"""Shared fixtures: an in-process app behind aiohttp's test client, and real server processes."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.config import Settings

TUS = {"Tus-Resumable": "1.0.0"}
PATCH_HEADERS = {**TUS, "Content-Type": "application/offset+octet-stream"}

ClientFactory = Callable[..., Awaitable[TestClient]]
T = TypeVar("T")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), expiry_interval=3600)


@pytest.fixture
async def make_client(
    aiohttp_client: Any, settings: Settings
) -> AsyncIterator[ClientFactory]:
    """``await make_client(max_size=10)``: a test client for an app with changed settings."""

    async def make(**changes: Any) -> TestClient:
        return await aiohttp_client(create_app(dataclasses.replace(settings, **changes)))

    yield make


@pytest.fixture
async def client(make_client: ClientFactory) -> TestClient:
    return await make_client()


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


def data_file(owner: Settings | ServerProcess, path: str) -> Path:
    """The data file of upload ``path`` in the data directory of settings or a server."""
    return Path(owner.data_dir) / upload_id(path)


def data_files(settings: Settings) -> list[str]:
    """Sorted names of the data directory's upload files (the SQLite files left out)."""
    return sorted(p.name for p in Path(settings.data_dir).iterdir() if not p.name.startswith("aiotusd."))


def file_size(path: Path) -> int:
    """The size of the file at ``path``, or -1 if there is none."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def payload(size: int, seed: int) -> bytes:
    """``size`` pseudo-random bytes, the same for the same ``seed``."""
    return random.Random(seed).randbytes(size)


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


async def poll(
    probe: Callable[[], Awaitable[T] | T], what: str, timeout: float = 10.0, interval: float = 0.02
) -> T:
    """Call ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


async def wait_until_past(timestamp: float, timeout: float = 5.0) -> None:
    """Wait on the wall clock until ``timestamp`` has passed, bounded by ``timeout``."""
    await poll(lambda: time.time() > timestamp, f"the clock to pass {timestamp}", timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(
    process: subprocess.Popen[bytes], port: int, name: str, log: Callable[[], str],
    timeout: float = 20,
) -> None:
    """Wait until ``process`` accepts connections on loopback ``port``; fail with its ``log``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited early:\n{log()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not start listening:\n{log()}")


@dataclasses.dataclass
class ServerProcess:
    """A real ``aiotusd`` process on loopback, restartable on the same port and data."""

    data_dir: Path
    port: int
    extra_args: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/files/"

    def start(self, timeout: float = 20) -> None:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server", "--port", str(self.port),
             "--data-dir", str(self.data_dir), *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("AIOTUSD_")},
        )
        log.close()
        wait_listening(self.process, self.port, "aiotusd", self.log_path.read_text, timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Send ``sig`` and wait for the exit; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        self.process = None
        return code

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text()


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """``server_process("--max-size", "100")``: start a real aiotusd; stopped after the test."""
    started: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        index = len(started)
        server = ServerProcess(
            data_dir=tmp_path / f"server{index}",
            port=free_port(),
            extra_args=list(args),
            log_path=tmp_path / f"server{index}.log",
        )
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process is not None:
            server.stop(signal.SIGKILL)
