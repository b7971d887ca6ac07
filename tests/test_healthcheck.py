"""``aiotusd healthcheck`` against a real server whose port is given each way: a flag, a
variable, the config file; from the same settings, or from the server's process (--pid)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.processes import clean_env, free_port, run_cli, wait_listening
from support.tls import self_signed

from server.healthcheck import _server_arguments

pytestmark = pytest.mark.e2e


@contextmanager
def server(cwd: Path, port: int, *args: str, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """A real server in ``cwd`` that listens on ``port`` (given by ``args`` or ``env``)."""
    log = cwd / "server.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "server", "--data-dir", str(cwd / "data"), *args],
            cwd=cwd, env=clean_env(**env), stdout=log_file, stderr=subprocess.STDOUT,
        )
    try:
        wait_listening(process, port, "aiotusd", log.read_text)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, log.read_text()


def healthy(cwd: Path, *args: str, **env: str) -> bool:
    result = run_cli(cwd, "healthcheck", *args, **env)
    assert result.stdout == "" and "Traceback" not in result.stderr, result.stderr
    assert result.returncode in (0, 1), result.stderr
    return result.returncode == 0


def test_the_port_given_as_a_flag(tmp_path):
    port = free_port()
    with server(tmp_path, port, "--port", str(port)) as process:
        assert healthy(tmp_path, "--port", str(port))
        assert healthy(tmp_path / "data", "--pid", str(process.pid))  # from another directory
        assert not healthy(tmp_path, "--port", str(free_port()))


def test_the_port_given_as_a_variable_kubernetes_form_ignored(tmp_path):
    port = free_port()
    env = {"AIOTUSD_PORT": str(port), "AIOTUSD_SERVICE_HOST": "10.96.0.5"}
    with server(tmp_path, port, **env) as process:
        assert healthy(tmp_path, **env)
        assert healthy(tmp_path, "--pid", str(process.pid))  # the server's environment
    config = tmp_path / "c.toml"
    config.write_text(f"port = {port}\n")
    env = {"AIOTUSD_PORT": "tcp://10.96.0.5:1080", "AIOTUSD_CONFIG": str(config)}
    with server(tmp_path, port, **env) as process:
        assert healthy(tmp_path, **env)
        assert healthy(tmp_path, "--pid", str(process.pid))


def test_the_port_given_in_a_config_file_relative_to_the_servers_directory(tmp_path):
    port = free_port()
    (tmp_path / "c.toml").write_text(f'port = {port}\nhost = "0.0.0.0"\n')
    with server(tmp_path, port, "--config", "c.toml") as process:
        assert healthy(tmp_path, "--config", "c.toml")
        assert healthy(tmp_path / "data", "--pid", str(process.pid))


def test_a_tls_server_is_probed_over_tls(tmp_path):
    certificate = self_signed(tmp_path)
    port = free_port()
    tls = ["--tls-cert", str(certificate.cert), "--tls-key", str(certificate.key)]
    with server(tmp_path, port, "--port", str(port), *tls) as process:
        assert healthy(tmp_path, "--pid", str(process.pid))
        assert healthy(tmp_path, "--port", str(port), *tls)
        assert not healthy(tmp_path, "--port", str(port))  # plain HTTP to a TLS port


def test_nothing_listening_is_unhealthy_in_one_line(tmp_path):
    port = free_port()
    result = run_cli(tmp_path, "healthcheck", "--port", str(port))
    assert result.returncode == 1
    assert result.stderr == (
        f"aiotusd: unhealthy: http://127.0.0.1:{port}/healthz: Connection refused\n")


@pytest.mark.parametrize(("args", "line"), [
    (["--port", "0"], "aiotusd: unhealthy: port 0 is picked by the server when it starts"),
    (["--pid", "999999999"], "aiotusd: error: cannot read the command line of process 999999999"),
    (["--pid", "{self}"], "aiotusd: error: process {self} does not run aiotusd: "),
])
def test_what_cannot_be_probed_is_one_line(tmp_path, args, line):
    me = str(os.getpid())  # pytest: no aiotusd
    args, line = [arg.replace("{self}", me) for arg in args], line.replace("{self}", me)
    result = run_cli(tmp_path, "healthcheck", *args)
    assert result.returncode in (1, 2) and result.stderr.startswith(line), result.stderr
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("command_line", [
    ["/usr/local/bin/python3.12", "/usr/local/bin/aiotusd", "--port", "8080"],  # the image's
    ["/sbin/docker-init", "--", "aiotusd", "--port", "8080"],  # docker run --init
    ["python", "-m", "server", "--port", "8080"],
])
def test_the_servers_arguments_are_found_in_its_command_line(command_line):
    assert _server_arguments(1, command_line) == ["--port", "8080"]


def test_the_dockerfiles_health_check_probes_the_port_given_after_the_image_name(tmp_path):
    """The image's ENTRYPOINT with a --port after it, as `docker run aiotusd --port P` runs
    it (on loopback here), and its HEALTHCHECK command aimed at that process."""
    dockerfile = (Path(__file__).resolve().parent.parent / "Dockerfile").read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.MULTILINE)[1])
    check = json.loads(re.search(r"^    CMD (\[.*\])$", dockerfile, re.MULTILINE)[1])
    assert entrypoint[0] == check[0] == "aiotusd" and check[-2:] == ["--pid", "1"]
    port = free_port()
    flags = [*entrypoint[1:], "--host", "127.0.0.1", "--port", str(port)]
    with server(tmp_path, port, *flags) as process:
        assert healthy(tmp_path, *check[2:-1], str(process.pid))
