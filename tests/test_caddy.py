"""aiotusd behind a real Caddy, configured by the shipped ``deploy/Caddyfile``: the IETF
draft's 104s reach the client through it.

Caddy (Debian's package; ``.ci/run`` installs it) runs as this test's own process, plain
HTTP on a free loopback port, without its admin endpoint, its state in the test's
directory, in front of a real aiotusd started with ``--behind-proxy``; it mounts aiotusd
under ``/uploads/``. Caddy forwards the 1xx responses of its upstream, but Debian's is
built with Go 1.19, whose HTTP client breaks off a response after its fifth 1xx: the most
a draft request gets (a ``100 Continue``, the creation's ``104``, three progress ``104``s)
must pass.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import ClientSession
from support.draft import draft_headers, exchange
from support.processes import ServerProcess, free_port, stop_process, wait_listening
from support.rawhttp import HOST, Response, close_writer, read_response, request_head

pytestmark = pytest.mark.e2e

CADDY = Path("/usr/bin/caddy")
SITE = Path(__file__).resolve().parent.parent / "deploy" / "Caddyfile"
PIECE = 64 * 1024
"""The ``--commit-bytes`` of aiotusd here: each piece sent makes a commit (and a 104) due."""


class Caddy:
    """Caddy in the foreground, with its Caddyfile, data and config in ``directory``."""

    def __init__(self, directory: Path, upstream_port: int) -> None:
        self.directory = directory
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "Caddyfile"
        site = SITE.read_text()
        # Only where it listens and the upstream's port change.
        for old, new in {
            "uploads.example.com {": f"http://127.0.0.1:{self.port} {{",
            "reverse_proxy 127.0.0.1:1080 {": f"reverse_proxy 127.0.0.1:{upstream_port} {{",
        }.items():
            assert site.count(old) == 1, f"deploy/Caddyfile no longer has {old!r} once"
            site = site.replace(old, new)
        # No admin endpoint: tests run side by side, and it would take the same port.
        self.config.write_text("{\n\tadmin off\n}\n" + site)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/uploads/"

    def start(self, timeout: float = 20) -> None:
        home = str(self.directory)
        with open(self.directory / "stderr.log", "ab") as log:
            self.process = subprocess.Popen(
                [str(CADDY), "run", "--config", str(self.config), "--adapter", "caddyfile"],
                stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "HOME": home, "XDG_DATA_HOME": home,
                     "XDG_CONFIG_HOME": home},
            )
        wait_listening(self.process, self.port, "caddy", self.log, timeout)

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def log(self) -> str:
        path = self.directory / "stderr.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def caddy(server_process, tmp_path) -> Iterator[tuple[Caddy, ServerProcess]]:
    assert CADDY.is_file(), "caddy is not installed: .ci/run installs Debian's caddy"
    server = server_process("--behind-proxy", "true", "--trusted-proxies", "127.0.0.1/32",
                            "--commit-bytes", str(PIECE), "--commit-seconds", "600")
    proxy = Caddy(tmp_path / "caddy", server.port)
    proxy.start()
    try:
        yield proxy, server
    finally:
        proxy.stop()


async def downloaded(url: str) -> bytes:
    async with ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return await response.read()


async def until_104(reader: asyncio.StreamReader, method: str) -> list[Response]:
    """The interim responses up to a 104 (``100 Continue``s may come first)."""
    seen: list[Response] = []
    for _ in range(5):
        seen.append(await read_response(reader, method))
        if seen[-1].status != 100:
            return seen
    raise AssertionError(f"no 104 among {seen}")


async def test_a_creations_104s_reach_the_client_through_caddy(caddy) -> None:
    """The creation's 104 and its three progress 104s, with Expect: 100-continue: the
    most 1xx a draft request gets, which Go 1.19's client (the fifth at most) lets by."""
    proxy, _ = caddy
    data = os.urandom(5 * PIECE)
    reader, writer = await asyncio.open_connection(HOST, proxy.port)
    try:
        writer.write(request_head("POST", "/uploads/files/", proxy.port, draft_headers(
            8, Upload_Complete="?1", Expect="100-continue", Content_Length=str(len(data)))))
        interim = await until_104(reader, "POST")
        for n in range(3):
            writer.write(data[n * PIECE:(n + 1) * PIECE])
            await writer.drain()
            interim += await until_104(reader, "POST")
        writer.write(data[3 * PIECE:])
        await writer.drain()
        final = await read_response(reader, "POST", timeout=30)
    finally:
        await close_writer(writer)
    announced, *progress = [r for r in interim if r.status != 100]
    assert {r.status for r in interim} <= {100, 104}
    location = announced.headers["location"]
    assert location.startswith(proxy.base + "files/")
    assert [r.status for r in progress] == [104, 104, 104]
    assert [r.headers["location"] for r in progress] == [location] * 3
    assert all(int(r.headers["upload-offset"]) >= n * PIECE for n, r in enumerate(progress, 1))
    assert final.status == 201, (final, proxy.log())
    assert final.headers["location"] == location
    assert await downloaded(location) == data


async def test_a_creation_cut_off_behind_caddy_is_resumed_from_its_104(caddy) -> None:
    """What the 104 is for: the client learns where its upload lives before it breaks."""
    proxy, _ = caddy
    data = os.urandom(3 * PIECE)
    reader, writer = await asyncio.open_connection(HOST, proxy.port)
    try:
        writer.write(request_head("POST", "/uploads/files/", proxy.port, draft_headers(
            8, Upload_Complete="?1", Content_Length=str(len(data)))) + data[:PIECE])
        await writer.drain()
        announced, progress = await until_104(reader, "POST") + await until_104(reader, "POST")
    finally:
        await close_writer(writer)
    location = announced.headers["location"]
    assert location.startswith(proxy.base + "files/")
    path = location[location.index("/uploads/"):]
    offset = int(progress.headers["upload-offset"])
    state = await exchange(proxy.port, "HEAD", path, draft_headers(8))
    assert state.final.status == 204
    assert int(state.final.headers["upload-offset"]) >= offset
    offset = int(state.final.headers["upload-offset"])
    # On a raw socket too: Python's http.client would take a progress 104 for the answer.
    rest = await exchange(proxy.port, "PATCH", path, draft_headers(
        8, Upload_Offset=str(offset), Upload_Complete="?1",
        Content_Type="application/partial-upload"), data[offset:])
    assert {r.status for r in rest.interim} <= {104}
    assert all("upload-offset" in r.headers for r in rest.interim)
    assert rest.final.status == 204 and rest.final.headers["upload-complete"] == "?1"
    assert await downloaded(location) == data
