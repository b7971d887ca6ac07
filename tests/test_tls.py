"""TLS without a proxy: ``--tls-cert`` and ``--tls-key``, and real uploads over https."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time

import pytest
import requests
from support.http import TUS
from support.storage import data_file, payload
from support.tls import self_signed
from tusclient import client as tus_client

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024


def test_tuspy_uploads_over_https_and_verifies_the_certificate(
    server_process, tmp_path, monkeypatch
):
    tls = self_signed(tmp_path / "tls")
    server = server_process("--tls-cert", str(tls.cert), "--tls-key", str(tls.key))
    endpoint = f"https://127.0.0.1:{server.port}/files/"
    # requests (under tuspy) verifies against this bundle: the test's own certificate.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.cert))
    data = payload(2 * MIB + 4321, seed=7)
    uploader = tus_client.TusClient(endpoint).uploader(
        file_stream=io.BytesIO(data), chunk_size=MIB, metadata={"filename": "secret.bin"}
    )
    uploader.upload()

    assert uploader.url.startswith(endpoint)
    head = requests.head(uploader.url, headers=TUS, timeout=10)
    assert head.headers["Upload-Offset"] == str(len(data))
    assert requests.get(uploader.url, timeout=30).content == data
    assert data_file(server, uploader.url).read_bytes() == data
    assert f"listening on https://127.0.0.1:{server.port}/files/" in server.log()


def test_a_client_that_does_not_trust_the_certificate_is_refused(
    server_process, tmp_path, monkeypatch
):
    other = self_signed(tmp_path / "other")
    tls = self_signed(tmp_path / "tls")
    server = server_process("--tls-cert", str(tls.cert), "--tls-key", str(tls.key))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other.cert))
    with pytest.raises(requests.exceptions.SSLError):
        requests.options(f"https://127.0.0.1:{server.port}/files/", timeout=10)


def run_server(*args: str, data_dir: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", "--port", "0", "--data-dir", data_dir, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if not k.startswith("AIOTUSD_")},
    )


def test_bad_tls_settings_stop_the_server_with_a_reason(tmp_path):
    tls = self_signed(tmp_path / "tls")
    data_dir = str(tmp_path / "data")
    alone = run_server("--tls-cert", str(tls.cert), data_dir=data_dir)
    assert alone.returncode == 2
    assert "tls_cert and tls_key must be set together" in alone.stderr
    swapped = run_server("--tls-cert", str(tls.key), "--tls-key", str(tls.cert), data_dir=data_dir)
    assert swapped.returncode == 2
    assert "cannot load tls_cert" in swapped.stderr
    missing = run_server(
        "--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", str(tls.key), data_dir=data_dir
    )
    assert missing.returncode == 2
    assert "nope.pem" in missing.stderr and "No such file" in missing.stderr


@pytest.mark.slow
def test_a_connection_that_never_starts_its_handshake_is_closed(server_process, tmp_path):
    """A TLS connection becomes the server's (counted, its header clock running) only once
    its handshake is done: the handshake has header_timeout too, not asyncio's minute."""
    tls = self_signed(tmp_path / "tls")
    server = server_process(
        "--tls-cert", str(tls.cert), "--tls-key", str(tls.key), "--header-timeout", "1"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as silent:
        opened = time.monotonic()
        silent.settimeout(5)
        assert silent.recv(1) == b""  # closed: EOF, not a timeout
        assert time.monotonic() - opened < 4
