"""``unix_socket``: HTTP on a unix socket instead of host:port, in one process or several.

The socket file is removed when the server stops; one left by a server that died is
replaced, and one a server still listens on is refused, as is a file that is no socket.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from support.http import PATCH_HEADERS, TUS
from support.processes import clean_env, free_port, refused_start, wait_listening
from support.waiting import poll, wait_for

from server.metrics import PUBLISH_SECONDS

pytestmark = pytest.mark.e2e


def start(tmp_path: Path, path: Path, *args: str) -> subprocess.Popen[bytes]:
    """An aiotusd serving on the unix socket ``path``, once it accepts connections there."""
    log = tmp_path / "server.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "server", "--unix-socket", str(path),
             "--data-dir", str(tmp_path / "data"), *args],
            stdout=out, stderr=subprocess.STDOUT, env=clean_env(),
        )

    def accepts() -> bool:
        assert process.poll() is None, log.read_text()
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                return False
        return True

    wait_for(accepts, timeout=30, what=f"aiotusd to serve on {path}")
    return process


@pytest.fixture
def stop() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The processes a test started, killed after it if it did not stop them."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


async def upload_through(path: Path) -> None:
    """An upload over the unix socket: its Location names the host the client addressed."""
    connector = aiohttp.UnixConnector(path=str(path))
    async with aiohttp.ClientSession(connector=connector) as session:
        created = await session.post(
            "http://uploads.example/files/", headers={**TUS, "Upload-Length": "5"}
        )
        assert created.status == 201, await created.text()
        location = created.headers["Location"]
        assert location.startswith("http://uploads.example/files/")
        patched = await session.patch(
            location, data=b"hello", headers={**PATCH_HEADERS, "Upload-Offset": "0"}
        )
        assert patched.status == 204
        downloaded = await session.get(location)
        assert await downloaded.read() == b"hello"


async def test_a_server_on_a_unix_socket_serves_and_removes_its_file_on_stop(tmp_path, stop):
    path = tmp_path / "aiotusd.sock"
    process = start(tmp_path, path)
    stop.append(process)
    await upload_through(path)
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    assert not path.exists()
    assert "listening on unix socket " + str(path) in (tmp_path / "server.log").read_text()


async def test_workers_share_the_unix_socket_and_metrics_stay_on_their_tcp_port(tmp_path, stop):
    path = tmp_path / "aiotusd.sock"
    metrics_port = free_port()
    process = start(tmp_path, path, "--workers", "2", "--metrics", "true",
                    "--metrics-port", str(metrics_port))
    stop.append(process)
    for _ in range(4):
        await upload_through(path)
    wait_listening(process, metrics_port, "metrics", (tmp_path / "server.log").read_text)

    async def counted() -> bool:
        async with aiohttp.ClientSession() as session:
            metrics = await session.get(f"http://127.0.0.1:{metrics_port}/metrics")
            return "aiotusd_uploads_finished_total 4.0" in await metrics.text()

    # The other worker's counts, as of its last write (every PUBLISH_SECONDS).
    await poll(counted, "the four uploads in the metrics", timeout=10 * PUBLISH_SECONDS)
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    assert not path.exists()


async def test_a_socket_file_left_by_a_dead_server_is_replaced(tmp_path, stop):
    path = tmp_path / "aiotusd.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))  # closed without removing its file, as by a server killed
    assert path.is_socket()
    stop.append(start(tmp_path, path))
    await upload_through(path)


def test_a_socket_a_server_listens_on_or_a_plain_file_is_refused(tmp_path):
    path = tmp_path / "aiotusd.sock"
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen()
        line = refused_start(tmp_path, "--unix-socket", str(path))
        assert line.endswith(f"cannot listen on unix socket {path}: a server is listening on it")
        assert path.is_socket()
    plain = tmp_path / "not-a-socket"
    plain.write_text("keep me")
    line = refused_start(tmp_path, "--unix-socket", str(plain))
    assert line.endswith(f"cannot listen on unix socket {plain}: the file there is not a socket")
    assert plain.read_text() == "keep me"
