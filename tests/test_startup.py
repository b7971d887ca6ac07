"""A start that cannot succeed: the real ``aiotusd`` process exits promptly, non-zero, with one
line on stderr that names what cannot be used (the file, the database, the directory,
host:port, the bucket), and no traceback. Also a server with every setting at its bounds,
which must start.

Each failing start runs under a deadline: a process that hangs (an aiosqlite thread left
open keeps it alive, not listening) fails the test when ``subprocess.run`` times out.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from support.http import TUS
from support.postgres import PASSWORD_ROLE
from support.processes import free_port, wait_listening
from support.s3 import AWS_ENV, S3Endpoint

from server.config import SETTINGS
from server.state import SCHEMA_VERSION
from server.state.postgresql import SCHEMA_VERSION as PG_SCHEMA_VERSION

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 10.0
"""Seconds a failing start may take, Python's own start-up included."""


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIOTUSD_", "AWS_"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def failed_start(cwd: Path, *args: str, status: int = 1, **env: str) -> str:
    """Run ``aiotusd *args``, which must fail within :data:`DEADLINE` with exit ``status``
    and a single stderr line; returns that line."""
    result = subprocess.run(
        [sys.executable, "-m", "server", "--port", "0", *args],
        check=False, cwd=cwd, env=clean_env(**env), capture_output=True, text=True,
        timeout=DEADLINE,
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == status, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def assert_names(line: str, *needles: str) -> None:
    assert " ERROR aiotusd: " in line, line
    for needle in needles:
        assert needle in line, (needle, line)


def unwritable_directory(tmp_path: Path) -> Path:
    """A directory this process cannot make files in: a read-only one of its own, or for
    root, whom permissions do not stop, one of sysfs (which takes no new files)."""
    candidate = tmp_path / "read-only"
    candidate.mkdir()
    candidate.chmod(0o555)
    for directory in (candidate, Path("/sys/kernel")):
        try:
            tempfile.TemporaryFile(dir=directory).close()
        except OSError:
            return directory
    raise AssertionError("found no directory this process cannot write to")


# --- the database ----------------------------------------------------------------------


def test_a_database_of_random_bytes_stops_the_start_in_one_line(tmp_path):
    database = tmp_path / "state.sqlite3"
    database.write_bytes(os.urandom(20000))
    line = failed_start(tmp_path, "--data-dir", str(tmp_path / "data"), "--database", str(database))
    assert_names(line, f"cannot use the database {database}: file is not a database")


def test_a_file_name_with_a_line_break_still_gives_one_line(tmp_path):
    database = tmp_path / "two\nlines.sqlite3"
    database.write_bytes(os.urandom(20000))
    line = failed_start(tmp_path, "--data-dir", str(tmp_path / "data"), "--database", str(database))
    assert_names(line, "lines.sqlite3: file is not a database")


def test_a_truncated_database_stops_the_start_in_one_line(tmp_path):
    database = tmp_path / "state.sqlite3"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE t (x TEXT)")
        db.executemany("INSERT INTO t VALUES (?)", [("x" * 1000,)] * 200)
    db.close()
    database.write_bytes(database.read_bytes()[: database.stat().st_size // 2])
    line = failed_start(tmp_path, "--data-dir", str(tmp_path / "data"), "--database", str(database))
    assert_names(line, f"cannot use the database {database}: database disk image is malformed")


def test_a_database_that_is_a_directory_stops_the_start_in_one_line(tmp_path):
    database = tmp_path / "state.sqlite3"
    database.mkdir()
    line = failed_start(tmp_path, "--data-dir", str(tmp_path / "data"), "--database", str(database))
    assert_names(line, f"cannot use the database {database}: it is a directory")


def test_a_database_whose_directory_cannot_be_made_stops_the_start_in_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    database = tmp_path / "file" / "db" / "state.sqlite3"
    line = failed_start(tmp_path, "--data-dir", str(tmp_path / "data"), "--database", str(database))
    assert_names(line, f"cannot use the database {database}: cannot make its directory")


def test_a_database_in_an_unwritable_directory_stops_the_start_in_one_line(tmp_path):
    database = unwritable_directory(tmp_path) / "state.sqlite3"
    line = failed_start(tmp_path, "--data-dir", str(tmp_path / "data"), "--database", str(database))
    assert_names(line, f"cannot use the database {database}: ")


def test_a_database_of_a_newer_schema_stops_the_start_in_one_line(tmp_path):
    database = tmp_path / "state.sqlite3"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    db.close()
    line = failed_start(
        tmp_path, "--data-dir", str(tmp_path / "data"), "--database", str(database), status=2
    )
    assert_names(line, f"cannot use the database {database}: its schema version")


@pytest.mark.parametrize("action", [["list"], ["retry", "--all-dead"]])
def test_hooks_commands_on_a_corrupt_database_fail_in_one_line(tmp_path, action):
    database = tmp_path / "state.sqlite3"
    database.write_bytes(os.urandom(20000))
    result = subprocess.run(
        [sys.executable, "-m", "server", "hooks", *action, "--database", str(database)],
        check=False, cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
        timeout=DEADLINE,
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert_names(lines[0], f"cannot use the database {database}: file is not a database")


# --- a PostgreSQL database ------------------------------------------------------------------


def test_a_postgresql_database_nothing_listens_for_stops_the_start_in_one_line(tmp_path):
    url = f"postgresql://aiotusd@127.0.0.1:{free_port()}/uploads"
    line = failed_start(tmp_path, "--data-dir", str(tmp_path / "data"), "--database", url)
    assert_names(line, f"cannot use the database {url}: cannot connect: Connection refused")


def test_a_postgresql_database_that_never_answers_stops_the_start_within_its_timeout(tmp_path):
    with socket.socket() as silent:  # the kernel accepts connections; nobody answers them
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"postgresql://aiotusd@127.0.0.1:{silent.getsockname()[1]}/uploads"
        line = failed_start(
            tmp_path, "--data-dir", str(tmp_path / "data"), "--database", url,
            "--database-timeout", "1",
        )
    assert_names(line, f"cannot use the database {url}: no answer within 1 s")


@pytest.mark.parametrize(("url", "reason"), [
    ("postgresql://aiotusd:secret@127.0.0.1:port/uploads", "the port 'port' is not a number"),
    ("postgres://aiotusd@127.0.0.1/uploads?statement_cache_size=some",
     "statement_cache_size must be a number of statements, not 'some'"),
    ("postgresql://aiotusd@127.0.0.1:99999/uploads", "the port 99999 is not one of 0 to 65535"),
])
def test_a_postgresql_url_that_names_no_database_is_a_bad_setting(tmp_path, url, reason):
    line = failed_start(
        tmp_path, "--data-dir", str(tmp_path / "data"), "--database", url, status=2
    )
    named = url.replace(":secret", "").partition("?")[0]
    assert line == f"aiotusd: error: bad value {named!r} for 'database': {reason}"


def test_a_postgresql_host_that_does_not_resolve_stops_the_start_in_one_line(tmp_path):
    url = "postgresql://aiotusd@no-such-host.invalid/uploads"  # .invalid never resolves
    line = failed_start(tmp_path, "--data-dir", str(tmp_path / "data"), "--database", url)
    assert_names(line, f"cannot use the database {url}: cannot connect: ")
    assert "Unknown error" not in line, line


@pytest.mark.postgres
def test_a_postgresql_login_refused_stops_the_start_in_one_line_without_the_password(
    tmp_path, postgres_cluster
):
    url = postgres_cluster.url("postgres", PASSWORD_ROLE, "not-the-password")
    line = failed_start(tmp_path, "--data-dir", str(tmp_path / "data"), AIOTUSD_DATABASE=url)
    named = postgres_cluster.url("postgres", PASSWORD_ROLE)
    assert_names(line, f"cannot use the database {named}: ", "password authentication failed")
    assert "not-the-password" not in line


@pytest.mark.postgres
def test_a_missing_postgresql_database_stops_the_start_in_one_line(tmp_path, postgres_cluster):
    url = postgres_cluster.url("no_such_database")
    line = failed_start(tmp_path, "--data-dir", str(tmp_path / "data"), "--database", url)
    assert_names(line, f"cannot use the database {url}: ", '"no_such_database" does not exist')


@pytest.mark.postgres
def test_a_postgresql_database_of_a_newer_schema_stops_the_start_in_one_line(
    tmp_path, postgres_cluster, postgres_url
):
    database = postgres_url.rsplit("/", 1)[1]
    postgres_cluster.sql(
        "CREATE TABLE schema_version (version integer NOT NULL); "
        f"INSERT INTO schema_version VALUES ({PG_SCHEMA_VERSION + 1})", database
    )
    line = failed_start(
        tmp_path, "--data-dir", str(tmp_path / "data"), "--database", postgres_url, status=2
    )
    assert_names(line, f"cannot use the database {postgres_url}: its schema version")


# --- the data directory and the ports --------------------------------------------------------


def test_a_data_dir_that_is_a_file_stops_the_start_in_one_line(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.write_text("")
    line = failed_start(tmp_path, "--data-dir", str(data_dir))
    assert_names(line, f"the data directory {data_dir} is not a directory")
    line = failed_start(tmp_path, "--data-dir", str(data_dir / "sub"))
    assert_names(line, f"cannot make the data directory {data_dir / 'sub'}: Not a directory")


def test_an_unwritable_data_dir_stops_the_start_in_one_line(tmp_path):
    data_dir = unwritable_directory(tmp_path)
    line = failed_start(tmp_path, "--data-dir", str(data_dir))
    assert_names(line, f"cannot write to the data directory {data_dir}: ")


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port that another socket listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_a_port_in_use_stops_the_start_in_one_line_naming_host_and_port(tmp_path, taken_port):
    line = failed_start(tmp_path, "--data-dir", str(tmp_path / "data"), "--port", str(taken_port))
    assert_names(line, f"cannot listen on 127.0.0.1:{taken_port}: Address already in use")


def test_a_metrics_port_in_use_stops_the_start_in_one_line(tmp_path, taken_port):
    line = failed_start(
        tmp_path, "--data-dir", str(tmp_path / "data"), "--metrics", "true",
        "--metrics-port", str(taken_port),
    )
    assert_names(line, f"cannot listen on 127.0.0.1:{taken_port}: Address already in use")


def test_a_metrics_port_that_is_the_main_port_is_a_bad_setting(tmp_path):
    port = str(free_port())
    line = failed_start(tmp_path, "--data-dir", str(tmp_path / "data"), "--metrics", "--port",
                        port, "--metrics-port", port, status=2)
    assert line == (f"aiotusd: error: metrics_port {port} is the port of uploads too: give "
                    "metrics_port 0 to serve /metrics there, or another port")


def test_a_host_that_is_no_address_of_this_machine_stops_the_start_in_one_line(tmp_path):
    # 192.0.2.0/24 is TEST-NET-1, documentation only: never an address of this machine.
    line = failed_start(tmp_path, "--data-dir", str(tmp_path / "data"), "--host", "192.0.2.1")
    assert_names(line, "cannot listen on 192.0.2.1:0: Cannot assign requested address")


# --- S3 --------------------------------------------------------------------------------------


def test_an_s3_endpoint_that_refuses_stops_the_start_at_once_in_one_line(tmp_path):
    closed = free_port()
    endpoint = f"http://127.0.0.1:{closed}"
    started = time.monotonic()
    line = failed_start(
        tmp_path, "--data-dir", str(tmp_path / "data"), "--storage", "s3", "--s3-bucket", "b",
        "--s3-endpoint", endpoint, **{**AWS_ENV, "AWS_MAX_ATTEMPTS": "5"},
    )
    # No retries at start-up: those of a running server (5 here) would take 10 s and more.
    assert time.monotonic() - started < 5
    assert_names(line, f"storage cannot be used: cannot use S3 bucket 'b' at {endpoint}: ")


@pytest.mark.s3
def test_a_missing_s3_bucket_stops_the_start_in_one_line(tmp_path, s3_endpoint: S3Endpoint):
    line = failed_start(
        tmp_path, "--data-dir", str(tmp_path / "data"), "--storage", "s3",
        "--s3-bucket", "no-such-bucket", "--s3-endpoint", s3_endpoint.url, **AWS_ENV,
    )
    assert_names(line, f"S3 bucket 'no-such-bucket' does not exist at {s3_endpoint.url}")


def test_an_s3_spool_that_cannot_be_made_stops_the_start_in_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    spool = tmp_path / "file" / "data" / "s3-spool"  # under a file: refused to root too
    line = failed_start(
        tmp_path, "--data-dir", str(tmp_path / "file" / "data"), "--storage", "s3",
        "--s3-bucket", "b", "--s3-endpoint", f"http://127.0.0.1:{free_port()}", **AWS_ENV,
    )
    assert_names(line, f"storage cannot be used: cannot make the spool directory {spool}: "
                       "Not a directory")


def test_an_s3_endpoint_botocore_refuses_stops_the_start_in_one_line(tmp_path):
    endpoint = f"http://bad_host:{free_port()}"  # a URL, but "_" is no host name character
    line = failed_start(
        tmp_path, "--data-dir", str(tmp_path / "data"), "--storage", "s3", "--s3-bucket", "b",
        "--s3-endpoint", endpoint, **AWS_ENV,
    )
    assert_names(line, f"cannot use S3 bucket 'b' at {endpoint}: Invalid endpoint")


def test_a_bad_aws_max_attempts_stops_the_start_in_one_line(tmp_path):
    line = failed_start(
        tmp_path, "--data-dir", str(tmp_path / "data"), "--storage", "s3", "--s3-bucket", "b",
        "--s3-endpoint", f"http://127.0.0.1:{free_port()}", **{**AWS_ENV, "AWS_MAX_ATTEMPTS": "x"},
    )
    assert_names(line, "AWS_MAX_ATTEMPTS 'x' is not a whole number")


# --- every setting at its bounds -------------------------------------------------------------


def bound_flags(bound: str) -> list[str]:
    """A flag for every bounded setting, at its minimum or maximum; the ports (which must be
    free) and the S3 part sizes (S3 only) left out."""
    flags = []
    for setting in SETTINGS:
        value = getattr(setting, bound)
        if value is None or setting.name in ("port", "metrics_port", "s3_part_size"):
            continue
        as_float = isinstance(setting.default, float)
        flags += ["--" + setting.name.replace("_", "-"), repr(float(value)) if as_float else str(value)]
    return flags


@pytest.mark.parametrize("bound", ["minimum", "maximum"])
def test_a_server_with_every_setting_at_its_bound_serves_an_upload(tmp_path, bound):
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "server", "--port", str(port), "--data-dir",
             str(tmp_path / "data"), *bound_flags(bound)],
            env=clean_env(), stdout=log_file, stderr=subprocess.STDOUT,
        )
    try:
        wait_listening(process, port, "aiotusd", log.read_text)
        url = f"http://127.0.0.1:{port}/files/"
        created = requests.post(url, headers={**TUS, "Upload-Length": "5"}, timeout=10)
        assert created.status_code == 201, created.text
        if bound == "maximum":  # an upload that lives a century still has a date
            assert created.headers["Upload-Expires"].endswith(" GMT")
        location = created.headers["Location"]
        patched = requests.patch(location, data=b"hello", timeout=10, headers={
            **TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream",
        })
        assert patched.status_code == 204, patched.text
        assert requests.get(location, timeout=10).content == b"hello"
        assert requests.delete(location, headers=TUS, timeout=10).status_code == 204
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text()


# --- a signal while starting -----------------------------------------------------------------


def _interrupt(process: subprocess.Popen[str], signum: int) -> tuple[int, str]:
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=DEADLINE)
    assert "Traceback" not in stderr, stderr
    return process.returncode, stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_database_does_not_answer_ends_the_start_at_once(tmp_path, signum):
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        silent.settimeout(DEADLINE)
        url = f"postgresql://aiotusd@127.0.0.1:{silent.getsockname()[1]}/uploads"
        process = subprocess.Popen(
            [sys.executable, "-m", "server", "--port", "0", "--data-dir", str(tmp_path / "d"),
             "--database", url, "--database-timeout", "60"],
            cwd=tmp_path, env=clean_env(), stderr=subprocess.PIPE, text=True,
        )
        connection, _ = silent.accept()  # the start is under way, waiting for the database
        with connection:
            started = time.monotonic()
            status, stderr = _interrupt(process, signum)
    assert time.monotonic() - started < 5
    assert status == 128 + signum
    (line,) = stderr.splitlines()
    name = signal.Signals(signum).name
    assert_names(line, f"interrupted by {name} while starting; nothing was served")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_before_the_server_has_its_handlers_is_one_line(tmp_path, signum):
    fifo = tmp_path / "config.toml"
    os.mkfifo(fifo)  # reading the config blocks until a writer comes: a start held still
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "--config", str(fifo)],
        cwd=tmp_path, env=clean_env(), stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + DEADLINE
    while True:  # a writer can open the FIFO once the server has it open to read
        try:
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.02)
    try:
        status, stderr = _interrupt(process, signum)
    finally:
        os.close(writer)
    assert status == 128 + signum
    assert stderr == f"aiotusd: error: interrupted by {signal.Signals(signum).name}\n"
