"""End-to-end uploads with the real tuspy client against real aiotusd processes.

The server runs as ``python -m server`` (fixture ``server_process``); tuspy
talks to it over loopback, directly or through a throttling TCP proxy that
slows the upload down enough to stop the server in the middle of a chunk.
Waiting is always a bounded poll with a deadline.
"""

from __future__ import annotations

import base64
import io
import re
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import requests
from support.http import TUS, upload_id
from support.storage import data_file, file_size, payload
from tusclient import client as tus_client
from tusclient.exceptions import TusCommunicationError, TusUploadFailed

pytestmark = [pytest.mark.e2e, pytest.mark.also_workers]

KIB = 1024
MIB = 1024 * KIB
T = TypeVar("T")


def poll(probe: Callable[[], T], what: str, timeout: float = 20.0, interval: float = 0.005) -> T:
    """Blocking twin of ``support.waiting.poll``, for these synchronous tests: fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def head(url: str) -> requests.Response:
    response = requests.head(url, headers=TUS, timeout=10)
    assert response.status_code == 200, response.text
    return response


def server_offset(url: str) -> int:
    return int(head(url).headers["Upload-Offset"])


def assert_stored(server: Any, url: str, data: bytes) -> None:
    """The upload is complete and holds exactly ``data``: by GET and in its data file."""
    response = head(url)
    assert response.headers["Upload-Offset"] == response.headers["Upload-Length"] == str(len(data))
    download = requests.get(url, timeout=60)
    assert download.status_code == 200
    assert len(download.content) == len(data)
    assert download.content == data
    assert data_file(server, url).read_bytes() == data


def received_by_server(server: Any, url: str) -> list[int]:
    """``received=`` of each PATCH of the upload, from the text access log."""
    path = "/files/" + upload_id(url)
    return [int(n) for n in re.findall(rf"PATCH {path} \d+ upload=\S+ received=(\d+) ", server.log())]


class ThrottlingProxy:
    """A loopback TCP proxy to ``target_port`` that passes client bytes at ``rate`` bytes/s.

    It stands for a slow network, so that a chunk is still in flight when the
    test stops the server. Each connection is forwarded by two threads; all of
    them end when either side closes or when the proxy is closed.
    """

    def __init__(self, target_port: int, rate: float) -> None:
        self.target_port = target_port
        self.rate = rate
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/files/"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                downstream, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                downstream.close()
                continue
            # Blocking with a generous timeout: a slow reader must not break the
            # connection, a dead one must not hang a thread for ever.
            for sock in (downstream, upstream):
                sock.settimeout(10)
            self._sockets += [downstream, upstream]
            for source, target, rate in ((downstream, upstream, self.rate), (upstream, downstream, 0)):
                thread = threading.Thread(target=self._pipe, args=(source, target, rate), daemon=True)
                self._threads.append(thread)
                thread.start()

    def _pipe(self, source: socket.socket, target: socket.socket, rate: float) -> None:
        try:
            while not self._closed.is_set():
                # A short wait, so that close() is noticed.
                readable, _, _ = select.select([source], [], [], 0.1)
                if not readable:
                    continue
                data = source.recv(64 * KIB)
                if not data:
                    break
                if rate:
                    time.sleep(len(data) / rate)  # throttling, not waiting for an event
                target.sendall(data)
        except OSError:
            pass
        finally:
            # Pass the hang-up on: a killed server resets the client's connection too.
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)
        for sock in self._sockets:
            sock.close()


@pytest.fixture
def proxy_to() -> Any:
    proxies: list[ThrottlingProxy] = []

    def make(port: int, rate: float) -> ThrottlingProxy:
        proxies.append(ThrottlingProxy(port, rate))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()


# --- 1. a large upload in many chunks ---------------------------------------------------


def test_tuspy_uploads_50_mib_in_1_mib_chunks_with_metadata(server_process):
    server = server_process()
    data = payload(50 * MIB, seed=1)
    metadata = {"filename": "holiday vidéo.bin", "filetype": "application/octet-stream"}
    uploader = tus_client.TusClient(server.url).uploader(
        file_stream=io.BytesIO(data), chunk_size=MIB, metadata=metadata
    )
    uploader.upload()
    assert uploader.offset == len(data)
    assert uploader.url.startswith(server.url)

    assert_stored(server, uploader.url, data)
    response = head(uploader.url)
    assert response.headers["Upload-Metadata"] == ",".join(uploader.encode_metadata())
    echoed = dict(pair.split(" ") for pair in response.headers["Upload-Metadata"].split(","))
    assert {key: base64.b64decode(value).decode() for key, value in echoed.items()} == metadata
    assert received_by_server(server, uploader.url) == [MIB] * 50


# --- 2. a new client resumes what another one started ----------------------------------


def test_a_new_tuspy_client_resumes_from_the_server_offset(server_process):
    server = server_process()
    data = payload(8 * MIB + 123, seed=2)
    first = tus_client.TusClient(server.url).uploader(
        file_stream=io.BytesIO(data), chunk_size=MIB, metadata={"filename": "a.bin"}
    )
    for _ in range(3):
        first.upload_chunk()
    assert first.offset == 3 * MIB
    assert server_offset(first.url) == 3 * MIB
    url = first.url
    del first  # the first client is gone; only the URL survives

    second = tus_client.TusClient(server.url).uploader(
        file_stream=io.BytesIO(data), url=url, chunk_size=MIB, upload_checksum=True
    )
    assert second.offset == 3 * MIB  # asked the server with HEAD
    second.upload()
    assert_stored(server, url, data)
    # Nothing was sent twice.
    assert sum(received_by_server(server, url)) == len(data)


# --- 3. resume across server restarts -------------------------------------------------


def test_tuspy_resumes_after_a_graceful_restart(server_process):
    server = server_process()
    data = payload(16 * MIB, seed=3)
    uploader = tus_client.TusClient(server.url).uploader(
        file_stream=io.BytesIO(data), chunk_size=2 * MIB
    )
    for _ in range(5):
        uploader.upload_chunk()
    assert server.stop(signal.SIGTERM) == 0
    assert "stopped" in server.log()
    server.start()  # same port, same data directory

    resumed = tus_client.TusClient(server.url).uploader(
        file_stream=io.BytesIO(data), url=uploader.url, chunk_size=2 * MIB
    )
    assert resumed.offset == 10 * MIB
    resumed.upload()
    assert_stored(server, uploader.url, data)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
@pytest.mark.slow
def test_tuspy_resumes_after_the_server_died_mid_chunk(server_process, proxy_to, sig):
    server = server_process("--commit-bytes", "1MiB")
    proxy = proxy_to(server.port, rate=24 * MIB)  # 8 MiB chunks take a third of a second
    data = payload(24 * MIB, seed=30)
    uploader = tus_client.TusClient(proxy.url).uploader(
        file_stream=io.BytesIO(data), chunk_size=8 * MIB, metadata={"filename": "big.bin"}
    )
    uploader.set_url(uploader.create_url())
    url = uploader.url
    stored = data_file(server, url)
    failure: list[BaseException] = []

    def upload() -> None:
        try:
            uploader.upload()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failure.append(exc)

    thread = threading.Thread(target=upload, daemon=True)
    thread.start()
    # Stop the server in the middle of the second chunk.
    poll(lambda: file_size(stored) >= 12 * MIB, "half of the second chunk on disk")
    code = server.stop(sig)
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert failure and isinstance(failure[0], (TusUploadFailed, TusCommunicationError)), failure
    assert uploader.offset == 8 * MIB  # the first chunk was acknowledged, the second not
    on_disk = file_size(stored)
    assert 12 * MIB <= on_disk < 16 * MIB

    server.start()
    offset = server_offset(url)
    assert stored.read_bytes()[:offset] == data[:offset]
    if sig == signal.SIGTERM:
        assert code == 0
        assert offset == on_disk  # a graceful stop commits all that arrived
    else:
        # Acknowledged bytes are durable; the rest may be lost, never invented.
        assert 8 * MIB <= offset <= on_disk
        # A commit every MiB (plus at most one read of the body) kept most of the chunk.
        assert offset >= 10 * MIB

    resumed = tus_client.TusClient(proxy.url).uploader(
        file_stream=io.BytesIO(data), url=url, chunk_size=8 * MIB
    )
    assert resumed.offset == offset
    resumed.upload()
    assert_stored(server, url, data)
