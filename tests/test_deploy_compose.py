"""deploy/compose.yaml: checked without a container engine, and run where one is.

Without an engine, the file is read as Compose reads it (``${VAR:-default}`` and ``$$``,
``env_file`` then ``environment``) and aiotusd's environment is loaded with the server's
own :func:`~server.config.load_settings`: a value it cannot parse would stop the container
at every start with status 2, and a variable it does not know (a typo) would be ignored
with a warning; either fails the check. The ports, the
health checks and the order of the start are checked against the settings, and the hook
receiver's script runs as a real process in front of a real aiotusd: it must take the
events aiotusd signs and refuse forged ones.

With a reachable Docker or Podman engine, the stack itself is built and started, and an
upload goes through it into MinIO and to the receiver.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
import requests
import yaml
from botocore.config import Config
from support.processes import ServerProcess, clean_env, free_port, wait_listening
from support.storage import payload
from support.waiting import wait_for

from server.config import ConfigError, Settings, load_settings, unknown_variables
from server.ops import READY_TIMEOUT

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
RECEIVER = DEPLOY / "hook-receiver" / "receiver.py"
DATA_DIR = "/data"
"""The data_dir the image's entrypoint sets (``--data-dir /data``)."""
SERVICES = {"minio", "createbucket", "hook-receiver", "aiotusd"}
LONG_RUNNING = ("minio", "hook-receiver", "aiotusd")
PATCH = {"Tus-Resumable": "1.0.0", "Content-Type": "application/offset+octet-stream"}

Document = dict[str, Any]
_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?::-([^}]*))?\}")


def interpolated(value: Any, env: dict[str, str]) -> Any:
    """``value`` with Compose's interpolation done: ``${NAME:-default}`` from ``env``
    and ``$$`` for a dollar sign. A variable without a default must be in ``env``."""
    if isinstance(value, dict):
        return {key: interpolated(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolated(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        assert name in env or default is not None, f"${{{name}}} has no default"
        return env.get(name, default or "")

    return _VARIABLE.sub(substitute, value)


def compose(env: dict[str, str] | None = None) -> Document:
    with COMPOSE.open(encoding="utf-8") as file:
        return interpolated(yaml.safe_load(file), env or {})  # type: ignore[no-any-return]


def env_file(path: Path) -> dict[str, str]:
    """A Compose env file: ``NAME=value`` lines, ``#`` comments and blank lines."""
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, separator, value = line.partition("=")
            assert separator, f"{path.name}: not NAME=value: {line!r}"
            values[name.strip()] = value
    return values


def environment(service: Document) -> dict[str, str]:
    """A container's variables: its env files in order, then ``environment``."""
    env: dict[str, str] = {}
    for name in service.get("env_file", []):
        env.update(env_file(DEPLOY / name))
    env.update({name: str(value) for name, value in service.get("environment", {}).items()})
    return env


def aiotusd_settings(doc: Document) -> Settings:
    """aiotusd's settings, loaded as the server loads them; a variable the server would
    warn about as no setting fails the check too."""
    env = environment(doc["services"]["aiotusd"])
    warnings = unknown_variables(env)
    if warnings:
        raise ConfigError("; ".join(warnings))
    return load_settings(environ=env)


def seconds(value: str) -> float:
    """A Compose duration of the forms this file uses: ``30s``, ``1m``."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(s|m)", value)
    assert match, f"not a duration this test reads: {value!r}"
    return float(match.group(1)) * (60 if match.group(2) == "m" else 1)


def published(port: str) -> tuple[str, int, int]:
    """A short-syntax port: ``(host address, host port, container port)``."""
    host, host_port, container_port = port.rsplit(":", 2)
    return host, int(host_port), int(container_port)


@pytest.fixture(scope="module")
def doc() -> Document:
    return compose()


def test_the_stack_has_its_services_and_their_files(doc):
    assert set(doc["services"]) == SERVICES
    for service in doc["services"].values():
        for name in service.get("env_file", []):
            assert (DEPLOY / name).is_file(), name
    assert (DEPLOY / doc["services"]["hook-receiver"]["build"] / "Dockerfile").is_file()


def test_every_aiotusd_variable_loads_as_a_setting(doc):
    settings = aiotusd_settings(doc)
    assert settings.storage.backend == "s3" and settings.s3.path_style
    endpoint = urlsplit(settings.s3.endpoint)
    assert (endpoint.hostname, endpoint.port) == ("minio", 9000)
    assert "minio/minio:" in doc["services"]["minio"]["image"]
    assert settings.s3.bucket == doc["services"]["createbucket"]["environment"]["BUCKET"]
    assert settings.hooks.secret and "post-finish" in settings.hooks.events


def test_an_unknown_variable_fails_the_check(doc):
    broken = copy.deepcopy(doc)
    broken["services"]["aiotusd"]["environment"]["AIOTUSD_NO_SUCH_SETTING"] = "1"
    with pytest.raises(ConfigError, match="AIOTUSD_NO_SUCH_SETTING"):
        aiotusd_settings(broken)


def test_hooks_go_to_the_receiver_with_the_secret_it_checks(doc):
    settings = aiotusd_settings(doc)
    receiver = doc["services"]["hook-receiver"]
    url = urlsplit(settings.hooks.url)
    dockerfile = (DEPLOY / receiver["build"] / "Dockerfile").read_text(encoding="utf-8")
    assert url.hostname == "hook-receiver" and url.path == "/hook"
    assert f'"--port", "{url.port}"' in dockerfile and "FROM python:3.12-slim" in dockerfile
    assert environment(receiver)["AIOTUSD_HOOKS_SECRET"] == settings.hooks.secret


def test_aiotusd_uses_its_own_minio_user_that_createbucket_makes(doc):
    services = doc["services"]
    aiotusd, minio = environment(services["aiotusd"]), environment(services["minio"])
    assert aiotusd["AWS_ACCESS_KEY_ID"] != minio["MINIO_ROOT_USER"]
    assert "MINIO_ROOT_PASSWORD" not in aiotusd
    made = environment(services["createbucket"])
    assert made["AWS_ACCESS_KEY_ID"] == aiotusd["AWS_ACCESS_KEY_ID"]
    assert made["MINIO_ROOT_PASSWORD"] == minio["MINIO_ROOT_PASSWORD"]


def test_ports_are_published_on_loopback_only(doc):
    settings = aiotusd_settings(doc)
    for name, service in doc["services"].items():
        for port in service.get("ports", []):
            assert published(port)[0] == "127.0.0.1", f"{name} publishes {port}"
    ((_, host_port, container_port),) = map(published, doc["services"]["aiotusd"]["ports"])
    assert container_port == settings.server.port and host_port == 1080
    moved = compose({"TUS_PORT": "18080"})
    assert published(moved["services"]["aiotusd"]["ports"][0])[1] == 18080


def test_services_start_in_order_once_what_they_need_is_healthy(doc):
    services = doc["services"]
    for name in LONG_RUNNING:
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
        assert services[name]["restart"] == "unless-stopped"
    assert services["createbucket"]["restart"] == "no"
    assert services["createbucket"]["depends_on"] == {"minio": {"condition": "service_healthy"}}
    assert services["aiotusd"]["depends_on"] == {
        "minio": {"condition": "service_healthy"},
        "createbucket": {"condition": "service_completed_successfully"},
        "hook-receiver": {"condition": "service_healthy"},
    }


def test_aiotusd_is_healthy_when_ready_and_gets_time_to_stop(doc):
    """``up --wait`` returns once /readyz answers (database, then bucket, each within
    READY_TIMEOUT); ``stop`` waits for requests and then hook deliveries to end."""
    settings = aiotusd_settings(doc)
    service = doc["services"]["aiotusd"]
    check = service["healthcheck"]
    command = check["test"][-1]
    assert "'/readyz'" in command and f"'127.0.0.1', {settings.server.port}," in command
    assert seconds(check["timeout"]) > 2 * READY_TIMEOUT
    needed = settings.server.shutdown_timeout + settings.hooks.timeout
    assert seconds(service["stop_grace_period"]) > needed


def test_aiotusd_is_the_repository_image_with_its_data_in_a_volume(doc):
    service = doc["services"]["aiotusd"]
    assert (DEPLOY / service["build"]["context"]).resolve() == ROOT
    dockerfile = ROOT / service["build"]["dockerfile"]
    assert f'"--data-dir", "{DATA_DIR}"' in dockerfile.read_text(encoding="utf-8")
    volume, path = service["volumes"][0].split(":")
    assert path == DATA_DIR and volume in doc["volumes"]


# -- the receiver's script, as a real process in front of a real aiotusd


class ReceiverProcess:
    """deploy/hook-receiver/receiver.py on a free loopback port, its output in a file."""

    def __init__(self, directory: Path, secret: str) -> None:
        self.port = free_port()
        self.secret = secret
        self.log_path = directory / "receiver.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(RECEIVER), "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT,
                env=clean_env(AIOTUSD_HOOKS_SECRET=secret),
            )
        wait_listening(self.process, self.port, "the hook receiver", self.log)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(timeout=20)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[ReceiverProcess]:
    process = ReceiverProcess(tmp_path, "receiver-test-secret")
    yield process
    if process.process.poll() is None:
        process.process.kill()
        process.process.wait(timeout=20)


def signed(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The headers aiotusd sends with ``body`` when ``secret`` is its hooks_secret."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    mac = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256)
    return {"Hook-Name": "post-finish", "Hook-Timestamp": stamp,
            "Hook-Signature": "sha256=" + mac.hexdigest(), "Content-Type": "application/json"}


@pytest.mark.e2e
@pytest.mark.slow
def test_the_receiver_takes_the_events_aiotusd_signs(doc, receiver, server_process):
    events = aiotusd_settings(doc).hooks.events
    server: ServerProcess = server_process(
        "--hooks-url", receiver.url, "--hooks-secret", receiver.secret,
        "--hooks-events", ",".join(events))
    created = requests.post(server.url, data=b"hello", timeout=10,
                            headers={**PATCH, "Upload-Length": "5"})
    assert created.status_code == 201, created.text
    upload = created.headers["Location"].rsplit("/", 1)[1]
    wait_for(lambda: f"upload={upload} offset=5 size=5" in receiver.log(), 20,
             "the receiver to log post-finish")
    lines = [line for line in receiver.log().splitlines() if f"upload={upload}" in line]
    assert [line.split()[:2] for line in lines] == [
        ["accepted", "post-create"], ["accepted", "post-finish"]]
    assert "refused" not in receiver.log()


@pytest.mark.e2e
def test_the_receiver_refuses_what_aiotusd_did_not_sign(receiver):
    event = json.dumps({"id": "e1", "type": "post-finish",
                        "upload": {"id": "forged", "offset": 1, "size": 1}}).encode()
    good = signed(receiver.secret, event)
    forged = {
        "another key": (event, signed("not-the-secret", event)),
        "another body": (event.replace(b"forged", b"changed"), good),
        "too old": (event, signed(receiver.secret, event, int(time.time()) - 3600)),
        "unsigned": (event, {"Hook-Name": "post-finish"}),
        "not ASCII": (event, {**good, "Hook-Signature": "sha256=\u00e9"}),
    }
    for what, (body, headers) in forged.items():
        answer = requests.post(receiver.url, data=body, headers=headers, timeout=10)
        assert answer.status_code == 401, what
    assert "accepted" not in receiver.log()
    assert len(re.findall(r"^refused post-finish from 127\.0\.0\.1: ", receiver.log(),
                          re.MULTILINE)) == len(forged)
    assert requests.post(receiver.url, data=event, headers=good, timeout=10).status_code == 200
    assert "accepted post-finish hook_id=e1 upload=forged offset=1 size=1" in receiver.log()
    assert receiver.stop() == 0


@pytest.mark.e2e
def test_the_receiver_will_not_start_without_the_secret(tmp_path):
    result = subprocess.run(
        [sys.executable, str(RECEIVER), "--port", str(free_port())],
        env=clean_env(), capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "receiver: error: AIOTUSD_HOOKS_SECRET is not set: it must be aiotusd's hooks_secret"]


# -- the stack itself, where a container engine runs

ENGINES = (("docker", "compose"), ("podman", "compose"))


def engine() -> tuple[list[str], str]:
    """The compose command of an engine that answers, or (``[]``, why there is none)."""
    reasons = []
    for program, subcommand in ENGINES:
        path = shutil.which(program)
        if path is None:
            reasons.append(f"no {program} command")
            continue
        version = subprocess.run([path, subcommand, "version"], capture_output=True,
                                 text=True, timeout=60, check=False)
        if version.returncode != 0:
            reasons.append(f"no `{program} {subcommand}`")
            continue
        info = subprocess.run([path, "info"], capture_output=True, text=True, timeout=60,
                              check=False)
        if info.returncode != 0:
            last = (info.stderr.strip().splitlines() or ["no answer"])[-1]
            reasons.append(f"{program}'s engine cannot be reached ({last})")
            continue
        return [path, subcommand], ""
    return [], "; ".join(reasons)


class Stack:
    """deploy/compose.yaml as a project of its own, its ports free ones on loopback."""

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.project = f"aiotusd-test-{uuid.uuid4().hex[:8]}"
        self.ports = {name: free_port() for name in ("TUS_PORT", "MINIO_PORT",
                                                     "MINIO_CONSOLE_PORT")}

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **{name: str(port) for name, port in self.ports.items()}}
        return subprocess.run(
            [*self.command, "-f", str(COMPOSE), "-p", self.project, *args],
            env=env, capture_output=True, text=True, timeout=timeout, check=False,
        )

    def logs(self, service: str) -> str:
        return self.run("logs", "--no-color", service, timeout=60).stdout


def until(probe: Callable[[], bool], what: str, timeout: float, interval: float = 0.5) -> None:
    """Wait for ``probe()`` with a deadline, asking at most every ``interval`` seconds
    (each probe here is a command of the engine)."""
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(interval)


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_stack_stores_an_upload_in_minio_and_tells_the_receiver(doc):
    command, reason = engine()
    if not command:
        pytest.skip(f"no container engine to run deploy/compose.yaml: {reason}")
    stack = Stack(command)
    try:
        up = stack.run("up", "--build", "--wait", "--wait-timeout", "600", timeout=1200)
        assert up.returncode == 0, up.stderr[-4000:] + stack.logs("aiotusd")[-4000:]
        upload_through(stack, aiotusd_settings(doc), environment(doc["services"]["aiotusd"]))
    finally:
        down = stack.run("down", "--volumes", "--rmi", "local", "--remove-orphans")
    assert down.returncode == 0, down.stderr


def upload_through(stack: Stack, settings: Settings, env: dict[str, str]) -> None:
    """Create, PATCH in two halves, HEAD between, download; the object in MinIO through
    the S3 API with aiotusd's keys; post-finish in the receiver's log, signature good."""
    base = f"http://127.0.0.1:{stack.ports['TUS_PORT']}{settings.server.base_path}"
    data = payload(3 * 1024 * 1024 + 5, seed=7)
    half = len(data) // 2
    created = requests.post(base, headers={"Tus-Resumable": "1.0.0",
                                           "Upload-Length": str(len(data))}, timeout=30)
    assert created.status_code == 201, created.text
    url = created.headers["Location"]
    assert url.startswith(base)
    for offset, chunk in ((0, data[:half]), (half, data[half:])):
        head = requests.head(url, headers={"Tus-Resumable": "1.0.0"}, timeout=30)
        assert (head.status_code, head.headers["Upload-Offset"]) == (200, str(offset))
        patched = requests.patch(url, data=chunk, timeout=120,
                                 headers={**PATCH, "Upload-Offset": str(offset)})
        assert patched.status_code == 204, patched.text
        assert patched.headers["Upload-Offset"] == str(offset + len(chunk))
    assert requests.get(url, timeout=120).content == data

    upload = url.rsplit("/", 1)[1]
    s3 = boto3.client(
        "s3", endpoint_url=f"http://127.0.0.1:{stack.ports['MINIO_PORT']}",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=settings.s3.region,
        config=Config(s3={"addressing_style": "path"}),
    )
    stored = s3.get_object(Bucket=settings.s3.bucket, Key=settings.s3.prefix + upload)
    assert stored["Body"].read() == data

    line = "accepted post-finish hook_id="
    tail = f"upload={upload} offset={len(data)} size={len(data)}"
    until(lambda: any(line in entry and tail in entry
                      for entry in stack.logs("hook-receiver").splitlines()),
          "the receiver to log post-finish", timeout=60)
    assert "refused" not in stack.logs("hook-receiver")
