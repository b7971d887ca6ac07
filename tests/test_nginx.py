"""aiotusd behind a real nginx, configured by the shipped ``deploy/nginx.conf``.

nginx (Debian's package; ``.ci/run`` installs it) runs as this test's own process on a
free loopback port with TLS (a self-signed certificate the clients trust), in front of a
real aiotusd process started with ``--behind-proxy``. nginx mounts aiotusd under
``/uploads/`` and sets the forwarded headers, so every URL the client gets must be
``https://127.0.0.1:{nginx port}/uploads/files/{id}``, and every request to it must work.
"""

from __future__ import annotations

import io
import os
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
import requests
from support.http import TUS, upload_id
from support.processes import ServerProcess, free_port, stop_process, wait_listening
from support.storage import data_file, file_size, payload
from support.tls import Certificate, self_signed
from tusclient import client as tus_client

pytestmark = pytest.mark.e2e

NGINX = Path("/usr/sbin/nginx")
SITE = Path(__file__).resolve().parent.parent / "deploy" / "nginx.conf"
KIB = 1024
MIB = 1024 * KIB
PATCH = {**TUS, "Content-Type": "application/offset+octet-stream"}


class Nginx:
    """nginx in the foreground, with its config, logs, pid and temp files in ``directory``."""

    def __init__(self, directory: Path, upstream_port: int, tls: Certificate) -> None:
        self.directory = directory
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "nginx.conf"
        self.config.write_text(self._config(upstream_port, tls))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}/uploads/"

    def _config(self, upstream_port: int, tls: Certificate) -> str:
        site = SITE.read_text()
        # Only where it listens, the upstream's port and the certificate change.
        for old, new in {
            "listen 443 ssl;": f"listen 127.0.0.1:{self.port} ssl;",
            "server 127.0.0.1:1080;": f"server 127.0.0.1:{upstream_port};",
            "/etc/ssl/certs/uploads.example.com.pem": str(tls.cert),
            "/etc/ssl/private/uploads.example.com.key": str(tls.key),
        }.items():
            assert site.count(old) == 1, f"deploy/nginx.conf no longer has {old!r} once"
            site = site.replace(old, new)
        d = self.directory
        # As root, workers would run as nobody and could not reach the test's directory.
        user = "user root;" if os.geteuid() == 0 else ""
        return f"""
{user}
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    log_format tus '$request_method $request_uri $status $request_id';
    access_log {d}/access.log tus;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
{site}
}}
"""

    def start(self, timeout: float = 20) -> None:
        log = open(self.directory / "stderr.log", "ab")
        self.process = subprocess.Popen(
            [
                str(NGINX),
                "-p",
                f"{self.directory}/",
                "-c",
                str(self.config),
                "-e",
                str(self.directory / "error.log"),
                "-g",
                "daemon off;",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_listening(self.process, self.port, "nginx", self.errors, timeout)

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def errors(self) -> str:
        parts = [self.directory / "stderr.log", self.directory / "error.log"]
        return "\n".join(p.read_text(errors="replace") for p in parts if p.exists())

    def access_log(self) -> list[tuple[str, str, int, str]]:
        """``(method, uri, status, request id)`` of each request nginx answered so far."""
        path = self.directory / "access.log"
        lines = path.read_text().splitlines() if path.exists() else []
        return [(m, u, int(s), i) for m, u, s, i in (line.split(" ") for line in lines)]


@pytest.fixture
def proxied(server_process, tmp_path, monkeypatch) -> Iterator[tuple[Nginx, ServerProcess]]:
    """aiotusd behind nginx; requests and tuspy trust nginx's certificate."""
    yield from behind_nginx(server_process, tmp_path, monkeypatch)


@pytest.fixture
def proxied_draft(server_process, tmp_path, monkeypatch) -> Iterator[tuple[Nginx, ServerProcess]]:
    """aiotusd behind nginx, set as docs/ietf-draft.md says: without 104s."""
    yield from behind_nginx(server_process, tmp_path, monkeypatch, "--no-ietf-draft-interim")


def behind_nginx(
    server_process, tmp_path, monkeypatch, *args: str
) -> Iterator[tuple[Nginx, ServerProcess]]:
    assert NGINX.is_file(), "nginx is not installed: .ci/run installs Debian's nginx-light"
    server = server_process("--behind-proxy", "true", "--trusted-proxies", "127.0.0.1/32",
                            *args)
    tls = self_signed(tmp_path / "tls")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.cert))
    nginx = Nginx(tmp_path / "nginx", server.port, tls)
    nginx.start()
    try:
        yield nginx, server
    finally:
        nginx.stop()


def poll(probe, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (result := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)
    return result


def test_tuspy_uploads_in_chunks_through_nginx_under_a_prefix(proxied):
    nginx, server = proxied
    data = payload(2 * MIB + 300 * KIB, seed=11)
    uploader = tus_client.TusClient(nginx.base + "files/").uploader(
        file_stream=io.BytesIO(data), chunk_size=MIB, metadata={"filename": "through-nginx.bin"}
    )
    uploader.upload()

    ident = upload_id(uploader.url)
    assert uploader.url == f"{nginx.base}files/{ident}"
    upload_path = f"/uploads/files/{ident}"
    expected = [
        ("POST", "/uploads/files/", 201),
        ("PATCH", upload_path, 204),
        ("PATCH", upload_path, 204),
        ("PATCH", upload_path, 204),
    ]
    poll(lambda: len(nginx.access_log()) >= len(expected), "nginx's access log of the upload")
    assert [(m, u, s) for m, u, s, _ in nginx.access_log()] == expected
    # aiotusd got each chunk whole, at its own path (nginx stripped the prefix).
    # aiohttp writes an access log line after its response went out: wait for the last.
    pattern = rf"PATCH /files/{ident} 204 upload=\S+ received=(\d+) "
    poll(lambda: len(re.findall(pattern, server.log())) >= 3, "aiotusd's access log")
    received = re.findall(pattern, server.log())
    assert [int(n) for n in received] == [MIB, MIB, 300 * KIB]

    head = requests.head(uploader.url, headers=TUS, timeout=10)
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(len(data))
    download = requests.get(uploader.url, timeout=30)
    assert download.status_code == 200 and download.content == data
    assert data_file(server, uploader.url).read_bytes() == data


def test_request_ids_of_nginx_reach_aiotusd_and_come_back(proxied):
    nginx, server = proxied
    response = requests.post(
        nginx.base + "files/", headers={**TUS, "Upload-Length": "1"}, timeout=10
    )
    assert response.status_code == 201
    request_id = response.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    poll(lambda: f"request={request_id}" in server.log(), "the id in aiotusd's access log")
    poll(
        lambda: any(line[3] == request_id for line in nginx.access_log()),
        "the same id in nginx's access log",
    )


def test_clients_cannot_choose_the_location_through_nginx(proxied):
    nginx, _ = proxied
    spoofed = {
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "http",
        "X-Forwarded-Port": "81",
        "X-Forwarded-Prefix": "/evil",
        "Forwarded": "proto=http;host=evil.example",
    }
    response = requests.post(
        nginx.base + "files/", headers={**TUS, "Upload-Length": "5", **spoofed}, timeout=10
    )
    assert response.status_code == 201
    assert response.headers["Location"].startswith(nginx.base + "files/")


def test_nginx_streams_a_patch_body_to_aiotusd_as_it_arrives(proxied):
    """``proxy_request_buffering off``: bytes reach the disk while the PATCH still runs."""
    nginx, server = proxied
    created = requests.post(
        nginx.base + "files/", headers={**TUS, "Upload-Length": str(2 * MIB)}, timeout=10
    )
    url = created.headers["Location"]
    first, second = payload(MIB, seed=1), payload(MIB, seed=2)
    go_on = threading.Event()

    def body() -> Iterator[bytes]:
        yield first
        assert go_on.wait(timeout=30), "the test did not let the body go on"
        yield second

    result: dict[str, requests.Response] = {}
    sender = threading.Thread(
        target=lambda: result.update(
            response=requests.patch(
                url, data=body(), headers={**PATCH, "Upload-Offset": "0"}, timeout=60
            )
        )
    )
    sender.start()
    try:
        poll(
            lambda: file_size(data_file(server, url)) >= MIB,
            "the first half on aiotusd's disk while the request is open",
        )
        assert sender.is_alive()
    finally:
        go_on.set()
        sender.join(timeout=60)
    assert result["response"].status_code == 204
    assert result["response"].headers["Upload-Offset"] == str(2 * MIB)
    assert data_file(server, url).read_bytes() == first + second


def test_concatenation_through_nginx_with_the_urls_clients_got(proxied):
    nginx, server = proxied
    parts = [payload(1000, seed=21), payload(777, seed=22)]
    locations = []
    for part in parts:
        created = requests.post(
            nginx.base + "files/",
            headers={**TUS, "Upload-Length": str(len(part)), "Upload-Concat": "partial"},
            timeout=10,
        )
        assert created.status_code == 201
        location = created.headers["Location"]
        patched = requests.patch(
            location, data=part, headers={**PATCH, "Upload-Offset": "0"}, timeout=10
        )
        assert patched.status_code == 204
        locations.append(location)

    final = requests.post(
        nginx.base + "files/",
        headers={**TUS, "Upload-Concat": "final;" + " ".join(locations)},
        timeout=10,
    )
    assert final.status_code == 201, final.text
    final_url = final.headers["Location"]
    assert final_url.startswith(nginx.base + "files/")
    head = requests.head(final_url, headers=TUS, timeout=10)
    paths = " ".join(f"/uploads/files/{upload_id(location)}" for location in locations)
    assert head.headers["Upload-Concat"] == f"final;{paths}"
    assert head.headers["Upload-Offset"] == str(sum(map(len, parts)))
    assert requests.get(final_url, timeout=10).content == b"".join(parts)
    assert data_file(server, final_url).read_bytes() == b"".join(parts)



def read_message(stream: BinaryIO) -> tuple[int, dict[str, str]]:
    """The status and headers (names in lower case) of one response; its body is read."""
    status = int(stream.readline().split(b" ")[1])
    headers = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, value = line.decode("latin-1").split(":", 1)
        headers[name.strip().lower()] = value.strip()
    stream.read(int(headers.get("content-length", "0")))
    return status, headers


def draft_creation(nginx: Nginx, data: bytes) -> bytes:
    return (
        f"POST /uploads/files/ HTTP/1.1\r\nHost: 127.0.0.1:{nginx.port}\r\n"
        "Upload-Draft-Interop-Version: 8\r\nUpload-Complete: ?1\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode() + data


def test_nginx_takes_a_104_for_the_final_response(proxied):
    """What docs/ietf-draft.md says of nginx: the 104 reaches the client as nginx's own
    response (its Server and Connection headers on it), aiotusd's 201 follows as its body."""
    nginx, _ = proxied
    context = ssl.create_default_context(cafile=os.environ["REQUESTS_CA_BUNDLE"])
    with socket.create_connection(("127.0.0.1", nginx.port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls, \
            tls.makefile("rb") as stream:
        tls.sendall(draft_creation(nginx, b"through nginx"))
        status, headers = read_message(stream)
        assert status == 104
        assert headers["server"].startswith("nginx/") and headers["connection"] == "keep-alive"
        status, headers = read_message(stream)
        assert status == 201 and "aiohttp" in headers["server"]


def test_a_draft_creation_through_nginx_without_104s_is_answered_whole(proxied_draft):
    """nginx 1.22 takes an upstream's 104 for its final response: it sends it on, then the
    real answer as its body, and holds the connection until the upstream closes its own.
    With ``ietf_draft_interim`` off, a creation gets its 201, and the connection its next
    request's answer."""
    nginx, _ = proxied_draft
    data = payload(3 * MIB, seed=31)
    context = ssl.create_default_context(cafile=os.environ["REQUESTS_CA_BUNDLE"])
    with socket.create_connection(("127.0.0.1", nginx.port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls, \
            tls.makefile("rb") as stream:
        tls.sendall(draft_creation(nginx, data))
        status, headers = read_message(stream)
        assert (status, headers["upload-complete"]) == (201, "?1")
        location = headers["location"]
        assert location.startswith(nginx.base + "files/")
        path = location[location.index("/uploads/"):]
        tls.sendall(
            f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1:{nginx.port}\r\n"
            "Upload-Draft-Interop-Version: 8\r\n\r\n".encode()
        )
        status, headers = read_message(stream)
        assert (status, headers["upload-offset"]) == (204, str(len(data)))
    assert requests.get(location, timeout=30).content == data
