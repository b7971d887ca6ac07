"""The start-up lines of a real server: where it listens, its storage and database, its
hooks, the limits changed, the demo and metrics pages; nothing secret; JSON records with
``--log-format json``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.postgres import PASSWORD, PASSWORD_ROLE, Cluster
from support.processes import Served, free_port
from support.s3 import AWS_ENV, S3Endpoint, s3_args

pytestmark = pytest.mark.e2e


def startup_log(tmp_path: Path, port: int, *args: str, **env: str) -> list[str]:
    """Start a server on ``port`` with ``args``, stop it once it listens; the messages it
    logged up to "shutting down", without time and level."""
    with Served(tmp_path, port, "--port", str(port), *args, **env) as served:
        pass
    log = served.log
    lines = log.read_text().splitlines()
    end = next(index for index, line in enumerate(lines) if "shutting down" in line)
    return [line.split(" INFO aiotusd: ", 1)[-1] for line in lines[:end]]


def test_filesystem_sqlite_hooks_limits_demo_and_metrics_are_told(tmp_path):
    port, data = free_port(), tmp_path / "data"
    lines = startup_log(
        tmp_path, port, "--data-dir", str(data), "--hooks-url",
        "https://user:pass@hooks.example.com:8443/tus?token=secret", "--hooks-events",
        "post-finish,pre-create", "--max-size", "5GiB", "--lock-timeout", "5s", "--demo",
        "--metrics",
    )
    root = f"http://127.0.0.1:{port}"
    assert lines == [
        f"aiotusd listening on {root}/files/, workers 1",
        f"storage: filesystem at {data}",
        f"database: sqlite at {data / 'aiotusd.sqlite3'}",
        ("hooks: url https://hooks.example.com:8443/tus, format aiotusd, "
         "events pre-create,post-finish"),
        "limits changed: max_size 5GiB, lock_timeout 5s",
        f"demo page at {root}/",
        f"metrics at {root}/metrics",
    ]


def test_defaults_tell_no_hooks_no_limits_and_a_command_is_a_target(tmp_path):
    port, data = free_port(), tmp_path / "data"
    hook = tmp_path / "hook.sh"
    hook.write_text("#!/bin/sh\n")
    hook.chmod(0o755)
    lines = startup_log(tmp_path, port, "--data-dir", str(data), "--hooks-command", str(hook),
                        "--hooks-events", "post-create")
    assert lines[1:] == [
        f"storage: filesystem at {data}",
        f"database: sqlite at {data / 'aiotusd.sqlite3'}",
        f"hooks: command {hook}, format aiotusd, events post-create",
    ]


def test_json_lines_are_records_with_fields(tmp_path):
    port, data = free_port(), tmp_path / "data"
    metrics_port = free_port()
    lines = startup_log(tmp_path, port, "--data-dir", str(data), "--log-format", "json",
                        "--metrics", "--metrics-port", str(metrics_port), "--max-size", "1KiB")
    records = [json.loads(line) for line in lines if line.startswith("{")]
    by_message = {record["message"].split(":")[0]: record for record in records}
    assert by_message["storage"]["storage"] == "filesystem"
    assert by_message["storage"]["path"] == str(data)
    assert by_message["database"]["database"] == "sqlite"
    assert by_message["limits changed"]["limits"] == {"max_size": "1KiB"}
    assert by_message["metrics at http"]["metrics"] == (
        f"http://127.0.0.1:{metrics_port}/metrics")


@pytest.mark.s3
def test_s3_storage_is_told_with_bucket_prefix_and_endpoint(
    tmp_path, s3_endpoint: S3Endpoint, bucket: str
):
    port = free_port()
    lines = startup_log(tmp_path, port, "--data-dir", str(tmp_path / "data"),
                        *s3_args(s3_endpoint, bucket, "--s3-prefix", "up/"), **AWS_ENV)
    assert lines[1] == (f"storage: s3 bucket {bucket}, prefix up/, at {s3_endpoint.url}"
                        " (us-east-1)")


@pytest.mark.postgres
def test_a_postgresql_database_is_told_without_its_password(tmp_path, postgres_cluster: Cluster):
    database = f"startup_lines_{free_port()}"
    postgres_cluster.sql(f"CREATE DATABASE {database} OWNER {PASSWORD_ROLE}")
    url = postgres_cluster.url(database, PASSWORD_ROLE, PASSWORD)
    port = free_port()
    lines = startup_log(tmp_path, port, "--data-dir", str(tmp_path / "data"),
                        AIOTUSD_DATABASE=url + "?application_name=x")
    assert lines[2] == f"database: postgresql at {postgres_cluster.url(database, PASSWORD_ROLE)}"
    assert not any(PASSWORD in line for line in lines)
