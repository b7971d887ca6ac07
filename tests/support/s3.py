"""S3 test fixtures: a real S3 endpoint on loopback (moto in server mode), buckets, helpers.

The endpoint is moto's ``ThreadedMotoServer`` in this process. Its state
(buckets, multipart uploads) lives in moto's backends, not in the server
object, so an endpoint that is stopped and started again on the same port
still holds it, like a store that was down for a while.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.server import ThreadedMotoServer
from werkzeug.serving import make_server

from support.processes import free_port

MIB = 1024 * 1024
PART = 5 * MIB

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    # Never ask an instance-metadata service (it is not on loopback), never read a profile.
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    # Few retries, so that a stopped endpoint shows within seconds.
    "AWS_MAX_ATTEMPTS": "2",
}


class S3Endpoint(ThreadedMotoServer):
    """moto in server mode that can really go down: :meth:`stop` closes the listening
    socket and every open connection, so clients see refused and reset connections."""

    def __init__(self, port: int) -> None:
        super().__init__(ip_address="127.0.0.1", port=port, verbose=False)
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def _server_entry(self) -> None:
        endpoint = self

        class TrackingHandler(MotoRequestHandler):
            def setup(self) -> None:
                super().setup()
                with endpoint._lock:
                    endpoint._connections.add(self.connection)

            def finish(self) -> None:
                with endpoint._lock:
                    endpoint._connections.discard(self.connection)
                super().finish()

        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(
            self._ip_address, self._port, app, True, request_handler=TrackingHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()

    @property
    def running(self) -> bool:
        return self._server_ready_event.is_set()

    def stop(self) -> None:
        self._server_ready_event.clear()
        super().stop()
        assert self._server is not None
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture(scope="session")
def aws_env() -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in AWS_ENV}
    os.environ.update(AWS_ENV)
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def s3_endpoint(aws_env: None) -> Iterator[S3Endpoint]:
    endpoint = S3Endpoint(free_port())
    endpoint.start()
    yield endpoint
    endpoint.stop()


def s3_client(endpoint_url: str) -> Any:
    return boto3.client(
        "s3", endpoint_url=endpoint_url, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )


@pytest.fixture
def s3(s3_endpoint: S3Endpoint) -> Any:
    """A plain (blocking) boto3 client of the endpoint, to look at what the server stored."""
    return s3_client(s3_endpoint.url)


@pytest.fixture
def bucket(s3: Any) -> str:
    name = "aiotusd-" + uuid.uuid4().hex[:16]
    s3.create_bucket(Bucket=name)
    return name


def s3_settings(endpoint: S3Endpoint, bucket: str, **changes: Any) -> dict[str, Any]:
    """Settings for ``make_client`` that store uploads in ``bucket``."""
    return {
        "storage": "s3", "s3_endpoint": endpoint.url, "s3_bucket": bucket,
        "s3_region": "us-east-1", "s3_part_size": PART, "s3_path_style": True, **changes,
    }


def s3_args(endpoint: S3Endpoint, bucket: str, *extra: str) -> list[str]:
    """Flags for ``server_process`` that store uploads in ``bucket``."""
    return [
        "--storage", "s3", "--s3-endpoint", endpoint.url, "--s3-bucket", bucket,
        "--s3-region", "us-east-1", "--s3-part-size", "5MiB", "--s3-path-style", "true", *extra,
    ]


def object_bytes(s3: Any, bucket: str, key: str) -> bytes:
    return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def multipart_uploads(s3: Any, bucket: str) -> list[dict[str, Any]]:
    return list(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def object_keys(s3: Any, bucket: str) -> list[str]:
    return [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def spooled_files(data_dir: Path) -> list[Path]:
    spool = data_dir / "s3-spool"
    return sorted(path for path in spool.rglob("*") if path.is_file()) if spool.exists() else []


def tail_objects(s3: Any, bucket: str, key: str) -> list[tuple[int, int, int]]:
    """The tail objects (``{key}.part{n}.{start}.{token}``) of the upload stored as ``key``:
    ``(n, start, size)`` of each, sorted."""
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=key + ".part").get("Contents", [])
    found = []
    for item in listed:
        part, start, _ = item["Key"].removeprefix(key + ".part").split(".")
        found.append((int(part), int(start), int(item["Size"])))
    return sorted(found)
